"""Faults and bad input on the virtual serial robot: each gives a HardwareError/ConfigError naming
the cause and the fix, leaves the arm safe (torque off, or never enabled), and loses no committed
episode. Faults are injected by `reverie sim serve-bus` options (robot_io/virtual/bus.py)."""

import numpy as np
import pytest

from reverie.cli import main as cli
from reverie.datasets.store import EpisodeStore
from reverie.errors import ConfigError, HardwareError
from reverie.robot_io.bus import ServoAlarm, ServoBus
from reverie.robot_io.config import load_arm
from reverie.robot_io.arm_bus import make_bus
from reverie.robot_io.robot import Robot
from reverie.robot_io.virtual.launcher import VirtualArm


def _robot(virtual, arm="so101_virtual", **overrides):
    return Robot(load_arm(arm, port=virtual.link, **overrides))


# Where no servo can answer, short timeouts keep the test quick (and cannot cause flakiness).
SILENT = {"timeout_s": 0.05, "retries": 1}


def _connect_error(tmp_path, protocol="feetech", arm="so101_virtual", bus=None, **faults) -> tuple[str, Robot]:
    with VirtualArm(protocol, link=tmp_path / "arm", camera_fps=0, **faults) as v:
        robot = _robot(v, arm, **(bus or {}))
        with pytest.raises(HardwareError) as e:
            robot.connect()
    assert not robot._torque  # never enabled: a limp arm cannot be driven anywhere
    return str(e.value), robot


def test_corrupt_replies_name_the_checksum(tmp_path):
    # Koch (Dynamixel 2.0): a ping reply carries data, so the damaged byte fails the CRC.
    message, _ = _connect_error(tmp_path, "dynamixel", "koch_virtual", SILENT, corrupt=1.0)
    assert "failed its checksum" in message and "after 2 tries" in message and "baudrate" in message


def test_occasional_corruption_is_retried_transparently(tmp_path):
    with VirtualArm("feetech", link=tmp_path / "arm", camera_fps=0, corrupt=0.01, seed=3) as v:
        robot = _robot(v)
        robot.connect()
        try:
            robot.reset(instruction="noisy line")
            for _ in range(15):
                robot.step(np.zeros(6, np.float32))
            assert robot.bus.stats.crc_errors > 0 and robot.bus.stats.retries > 0
        finally:
            assert "torque released" in robot.disconnect()


def test_reply_timeouts_say_how_long_was_waited(tmp_path):
    # Replies held back far longer than the 50 ms timeout, so none arrives in time.
    message, _ = _connect_error(tmp_path, bus=SILENT, delay_ms=5000)
    assert "gave no reply to PING" in message and "50 ms timeout" in message


def test_no_servo_answering_points_at_baud_rate_and_power(tmp_path):
    # A pty has no baud rate, so a wrong baud is emulated by what it causes: no servo answers.
    message, _ = _connect_error(tmp_path, bus=SILENT, drop=1.0)
    assert "no servo answered" in message and "Baud_Rate" in message and "power" in message


def test_missing_servo_id_names_the_id_and_its_joint(tmp_path):
    message, _ = _connect_error(tmp_path, ids=[1, 2, 3, 4, 5], models=["sts3215"] * 5)
    assert "servo id(s) [6] did not answer" in message and "joint gripper" in message


def test_wrong_servo_model_names_both_models(tmp_path):
    # A Koch whose shoulder servos are XL330s instead of the configured XL430-W250.
    message, _ = _connect_error(tmp_path, "dynamixel", "koch_virtual", models=["xl330-m288"] * 6)
    assert "wrong servo model" in message
    assert "id 1 (joint shoulder_pan) is model number 1200 (xl330-m288), the config says xl430-w250 (1060)" in message
    assert "id 3" not in message


def test_servo_alarm_bits_name_the_servo_and_leave_torque_off(tmp_path):
    with VirtualArm("feetech", link=tmp_path / "arm", camera_fps=0, alarm_ids=[3]) as v:
        robot = _robot(v)
        with pytest.raises(HardwareError, match=r"servo 3 \(joint elbow_flex\) reports overload"):
            robot.connect()
        arm = robot.arm
        with make_bus(arm) as bus:
            with pytest.raises(ServoAlarm) as alarm:
                bus.sync_read("Torque_Enable", arm.ids)
        assert set(alarm.value.values.values()) == {0}


def test_inverted_limits_stop_before_the_arm_is_touched(tmp_path, capsys):
    arm_file = tmp_path / "bent.yaml"
    arm_file.write_text("defaults: [so101_virtual]\njoints:\n"
                        "  - {name: shoulder_pan, id: 1, limits: [-1.9, 1.9]}\n"
                        "  - {name: elbow_flex, id: 3, limits: [1.6, -1.6]}\n")
    with pytest.raises(ConfigError, match=r"joint 'elbow_flex'.*inverted.*swap them"):
        load_arm(arm_file)
    out = tmp_path / "never.zarr"
    code = cli(["record", f"robot_file={arm_file}", "instruction=x", "start=auto", f"out={out}"])
    assert code == 2 and "inverted" in capsys.readouterr().err and not out.exists()


def test_port_vanishing_mid_recording_keeps_committed_episodes(tmp_path, capsys):
    out = tmp_path / "vanish.zarr"
    with VirtualArm("feetech", link=tmp_path / "arm", disconnect_after_s=7) as v:
        code = cli(["record", f"robot.port={v.link}", f"robot.cameras.front.path={v.frames_prefix}.front",
                    "instruction=reach", "episodes=50", "episode_s=0.3", "start=auto", f"out={out}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "recording stopped" in err and "unplugged" in err
    assert "committed to" in err and "are intact" in err and "unfinished episode was discarded" in err
    assert "could not reach the safe pose" in err  # the port is gone: said, not hidden
    assert "the bus is gone, so torque could not be released" in err
    store = EpisodeStore.open(out)
    assert store.num_episodes >= 1
    assert store.num_frames == sum(store.meta(i).length for i in range(store.num_episodes))
    assert f"{store.num_episodes} in total" in err


class AlarmingBus(ServoBus):
    """The real bus to the virtual robot, except that after `healthy` position reads every reply
    carries an overload alarm, as a real STS3215 does once it overloads mid-episode (serve-bus can
    only inject alarms from the start, which connect() already refuses)."""

    def __init__(self, *args, healthy: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.healthy = healthy

    def _alarm(self, what, values=None):
        raise ServoAlarm(f"servo 3 reports a hardware alarm in its reply to {what}: overload", 3, "overload",
                         values or {})

    def sync_read(self, name, ids):
        values = super().sync_read(name, ids)
        if name == "Present_Position":
            self.healthy -= 1
            if self.healthy < 0:
                self._alarm(f"SYNC_READ {name}", values)
        return values

    def write(self, servo_id, name, value):
        super().write(servo_id, name, value)
        if self.healthy < 0:
            self._alarm(f"WRITE {name}")


def test_alarm_mid_episode_parks_the_arm_and_releases_torque(tmp_path):
    with VirtualArm("feetech", link=tmp_path / "arm", camera_fps=0) as v:
        arm = load_arm("so101_virtual", port=v.link)
        bus = AlarmingBus(v.link, "feetech", timeout_s=arm.timeout_s, retries=arm.retries, healthy=10**6)
        robot = Robot(arm, bus=bus)
        robot.connect()
        robot.reset(instruction="lift something heavy")
        bus.healthy = 3  # steps 1-3 read cleanly, step 4 meets the alarm
        with pytest.raises(HardwareError, match="overload") as e:
            for _ in range(10):
                robot.step(np.ones(6, np.float32))
        assert "while step 4" in str(e.value) and "arm moved to its safe pose; torque released" in str(e.value)
        with make_bus(arm) as check:
            assert set(check.sync_read("Torque_Enable", arm.ids).values()) == {0}
            near = arm.ticks_to_values(check.sync_read("Present_Position", arm.ids))
        np.testing.assert_allclose(near[:5], arm.safe_pose[:5], atol=0.3)  # parked (then limp)
