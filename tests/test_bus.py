"""ServoBus against `reverie sim serve-bus` in a subprocess, over a real pseudo-terminal."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from reverie.errors import HardwareError
from reverie.robot_io.bus import ServoBus, ServoAlarm

IDS = [1, 2, 3, 4, 5, 6]
MODELS = {
    "feetech": {i: "sts3215" for i in IDS},
    "dynamixel": {1: "xl430-w250", 2: "xl430-w250", 3: "xl330-m288", 4: "xl330-m288",
                  5: "xl330-m288", 6: "xl330-m288"},
}
NUMBERS = {"feetech": 777, "dynamixel": 1060}


@contextmanager
def server(tmp_path, protocol, *options):
    link = tmp_path / f"arm-{protocol}"
    cmd = [sys.executable, "-m", "reverie.cli", "sim", "serve-bus", f"protocol={protocol}",
           f"link={link}", "camera_fps=0", *options]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
    try:
        line = proc.stdout.readline()
        if not line.startswith("ready"):
            proc.kill()
            pytest.fail(f"serve-bus did not start: {line}{proc.communicate(timeout=10)[1][-2000:]}")
        yield str(link)
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=10)
        assert not link.exists() and not link.is_symlink(), "serve-bus left its link behind"


@pytest.fixture(scope="module", params=["feetech", "dynamixel"])
def arm(request, tmp_path_factory):
    protocol = request.param
    with server(tmp_path_factory.mktemp(protocol), protocol) as link:
        bus = ServoBus(link, protocol, timeout_s=0.2, retries=2, models=MODELS[protocol])
        bus.connect()
        yield bus
        bus.close()


def test_ping_read_and_sync_read(arm):
    assert arm.ping(1) == NUMBERS[arm.protocol]
    sent = arm.stats.packets_sent
    positions = arm.sync_read("Present_Position", IDS)
    assert arm.stats.packets_sent == sent + 1  # one packet out for six servos
    assert sorted(positions) == IDS and all(0 <= v < 4096 for v in positions.values())
    assert abs(arm.read(3, "Present_Position") - positions[3]) < 100
    assert arm.read(2, "Return_Delay_Time") == 250  # the factory default both families ship with


def test_sync_write_moves_the_joint_only_with_torque(arm):
    start = arm.read(1, "Present_Position")
    goal = start + 300
    arm.sync_write("Goal_Position", {1: goal})
    time.sleep(0.3)
    assert abs(arm.read(1, "Present_Position") - start) < 30, "torque off: the goal must not move it"
    arm.set_torque(IDS, True)
    assert arm.read(1, "Torque_Enable") == 1
    arm.sync_write("Goal_Position", {1: goal})
    deadline = time.monotonic() + 5.0
    while abs(arm.sync_read("Present_Position", [1])[1] - goal) > 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert abs(arm.read(1, "Present_Position") - goal) <= 20
    arm.set_torque(IDS, False)


def test_missing_servo_is_named(arm):
    with pytest.raises(HardwareError, match=r"servo\(s\) \[7\] gave no reply to PING"):
        arm.ping(7)
    # Feetech: the sync read itself goes unanswered; Dynamixel: the bus first pings 7 to learn
    # its model (register layouts differ between models), and that ping goes unanswered.
    with pytest.raises(HardwareError, match=r"\[7\] gave no reply to (SYNC_READ Present_Position|PING)"):
        arm.sync_read("Present_Position", [1, 7])
    assert arm.stats.timeouts >= 6 and arm.stats.retries >= 4


def test_model_mismatch_is_named(arm):
    if arm.protocol != "dynamixel":
        pytest.skip("one Feetech model in the tables: nothing to mismatch")
    wrong = ServoBus(arm.port, "dynamixel", timeout_s=0.2, models={1: "xl330-m288"})
    with pytest.raises(HardwareError, match=r"servo 1 .* model number 1060 \(xl430-w250\).*says xl330-m288"):
        wrong.connect()


def test_read_only_register_and_out_of_range_value(arm):
    with pytest.raises(HardwareError, match="read-only"):
        arm.write(1, "Present_Position", 5)
    with pytest.raises(HardwareError, match="does not fit Goal_Position of servo 2"):
        arm.write(2, "Goal_Position", 1 << 40)


def test_connect_errors_name_the_port(tmp_path):
    with pytest.raises(HardwareError, match="does not exist"):
        ServoBus(str(tmp_path / "ttyACM9"), "feetech", models={1: "sts3215"}).connect()
    # A port no servo answers on: on hardware that is a wrong baud rate (or no power); a pty has
    # no baud, so the virtual robot shows it by dropping every packet.
    with server(tmp_path, "feetech", "drop=1.0") as link:
        bus = ServoBus(link, "feetech", timeout_s=0.03, retries=1, models={1: "sts3215", 2: "sts3215"})
        with pytest.raises(HardwareError, match=r"no servo answered on .* at 1000000 baud.*Baud_Rate"):
            bus.connect()
        assert not bus.is_connected


def test_corrupt_replies_are_retried_then_reported(tmp_path):
    with server(tmp_path, "dynamixel", "corrupt=1.0") as link:
        bus = ServoBus(link, "dynamixel", timeout_s=0.5, retries=2)
        bus.connect()  # no models configured: opens the port without pinging
        with pytest.raises(HardwareError) as err:
            bus.ping(1)
        message = str(err.value)
        assert "[1]" in message and "failed its checksum" in message and "PING" in message
        assert "ff ff fd 00 01" in message  # the bytes that came back
        assert bus.stats.crc_errors == 3 and bus.stats.retries == 2
        bus.close()


def test_wrong_protocol_alarm_and_unplug(tmp_path):
    with server(tmp_path, "feetech", "alarm_ids=[3]", "disconnect_after_s=4") as link:
        with pytest.raises(HardwareError, match="no servo answered.*protocol=dynamixel is right"):
            ServoBus(link, "dynamixel", timeout_s=0.05, retries=0, models={1: "xl330-m288"}).connect()
        bus = ServoBus(link, "feetech", timeout_s=0.2, models={i: "sts3215" for i in (1, 2, 3)})
        bus.connect()  # an alarm is logged at connect, not fatal: safety code must still reach it
        with pytest.raises(ServoAlarm, match="servo 3 .*overload") as err:
            bus.sync_read("Present_Position", [1, 2, 3])
        assert sorted(err.value.values) == [1, 2, 3]  # what was read travels with the alarm
        deadline = time.monotonic() + 15
        with pytest.raises(HardwareError, match="failed during SYNC_READ.*unplugged"):
            while time.monotonic() < deadline:  # until the server pulls the plug at 4 s
                bus.sync_read("Present_Position", [1, 2])
                time.sleep(0.05)
        assert not bus.is_connected
