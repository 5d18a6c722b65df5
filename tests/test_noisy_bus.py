"""Riding out a noisy bus: per-servo retries that keep the replies that came, a step whose read
fails holds the last goal, the run stops only past max_fault_rate, and parking never drops the arm
away from its safe pose. Noise comes from `reverie sim serve-bus corrupt=/drop=` (robot_io/virtual/bus.py)
or, where a test needs a lost read at a chosen moment, from LossyBus over the same virtual robot."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reverie.errors import ConfigError, HardwareError
from reverie.robot_io.arm_bus import make_bus
from reverie.robot_io.bus import MissingReply, ServoBus
from reverie.robot_io.config import load_arm
from reverie.robot_io.robot import Robot
from reverie.robot_io.virtual.launcher import VirtualArm

sys.path.insert(0, str(Path(__file__).parent))
import export_setup  # noqa: E402


def _spy_attempts(bus: ServoBus) -> list[tuple[list[int], set[int]]]:
    """Record (servos asked, servos that answered) for every packet the bus sends."""
    attempts = []
    send = bus._send_and_collect

    def spy(packet, expect, expected_bytes, what):
        got, received, bad = send(packet, expect, expected_bytes, what)
        attempts.append((list(expect), set(got)))
        return got, received, bad

    bus._send_and_collect = spy
    return attempts


def test_sync_read_retries_only_the_servos_whose_reply_was_lost(tmp_path):
    with VirtualArm("feetech", link=tmp_path / "arm", camera_fps=0, corrupt=0.2, seed=1) as v:
        bus = ServoBus(v.link, "feetech", timeout_s=0.25, retries=6)
        bus.connect()
        attempts = _spy_attempts(bus)
        ids = [1, 2, 3, 4, 5, 6]
        for _ in range(40):
            assert sorted(bus.sync_read("Present_Position", ids)) == ids
        bus.close()
    retried = 0
    for (asked, answered), (next_asked, _) in zip(attempts, attempts[1:]):
        if answered != set(asked):  # a retry follows: it asks exactly the servos still missing
            assert next_asked == [i for i in asked if i not in answered]
            retried += 1
        else:
            assert next_asked == ids  # the next read starts fresh
    assert retried > 5 and bus.stats.retries == retried and bus.stats.crc_errors >= retried
    assert any(len(asked) < len(ids) for asked, _ in attempts)  # kept the replies that arrived


def test_a_servo_that_never_answers_leaves_the_others_values_on_the_error(tmp_path):
    with VirtualArm("feetech", link=tmp_path / "arm", camera_fps=0) as v:
        bus = ServoBus(v.link, "feetech", timeout_s=0.05, retries=2)
        bus.connect()
        attempts = _spy_attempts(bus)
        with pytest.raises(MissingReply, match=r"servo\(s\) \[7\] gave no reply .*servo\(s\) \[1, 2\] did") as e:
            bus.sync_read("Present_Position", [1, 2, 7])
        bus.close()
    assert e.value.missing == [7] and sorted(e.value.values) == [1, 2]
    assert [asked for asked, _ in attempts] == [[1, 2, 7], [7], [7]]


class LossyBus(ServoBus):
    """The real bus to the virtual robot, except that the next `lose_next` position reads (every
    one while `lose_all`) lose servo 6's reply after every retry, as a bad connector can."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lose_next, self.lose_all = 0, False

    def sync_read(self, name, ids):
        values = super().sync_read(name, ids)
        if name == "Present_Position" and (self.lose_all or self.lose_next > 0):
            self.lose_next -= 1
            error = MissingReply("servo(s) [6] gave no reply to SYNC_READ Present_Position", [6], {})
            error.values = {i: v for i, v in values.items() if i != 6}
            raise error
        return values


def _lossy_robot(v, **overrides) -> tuple[Robot, LossyBus]:
    arm = load_arm("so101_virtual", port=v.link, **overrides)
    bus = LossyBus(v.link, "feetech", timeout_s=arm.timeout_s, retries=arm.retries)
    return Robot(arm, bus=bus), bus


def _torque_and_pose(v) -> tuple[set[int], np.ndarray]:
    arm = load_arm("so101_virtual", port=v.link)
    with make_bus(arm) as bus:
        return set(bus.sync_read("Torque_Enable", arm.ids).values()), \
            arm.ticks_to_values(bus.sync_read("Present_Position", arm.ids))


def test_a_lost_read_holds_the_last_goal_and_the_run_goes_on(tmp_path):
    with VirtualArm("feetech", link=tmp_path / "arm", camera_fps=0) as v:
        robot, bus = _lossy_robot(v)
        robot.connect()
        try:
            robot.reset(instruction="reach through the noise")
            action = np.full(6, 0.5, np.float32)
            before = robot.step(action)
            bus.lose_next = 1  # this step's observation loses servo 6
            lost = robot.step(action)
            assert lost.info["read_failed"] and not lost.info["held"]
            assert lost.observation["state"][5] == before.observation["state"][5]  # its last known position
            goal = robot.goal
            held = robot.step(action)  # the arm's pose is not known: the last goal again, not a guess
            assert held.info["held"] and not held.info["read_failed"]
            np.testing.assert_array_equal(held.info["goal"], goal)
            moved = robot.step(action)  # heard from every servo again: acting resumes
            assert not moved.info["held"] and np.all(moved.info["goal"][:5] > goal[:5])
            counts = robot.fault_counts()
            assert counts["read_faults"] == 1 and counts["steps_held"] == 1
        finally:
            assert robot.disconnect() == "arm moved to its safe pose; torque released"


def test_past_the_fault_rate_the_run_stops_and_parks_through_the_noise(tmp_path):
    with VirtualArm("feetech", link=tmp_path / "arm", camera_fps=0) as v:
        robot, bus = _lossy_robot(v, max_fault_rate=0.1, fault_window=20)  # at most 2 of 20 reads
        robot.connect()
        robot.reset(instruction="reach through the noise")
        for _ in range(5):
            robot.step(np.zeros(6, np.float32))
        bus.lose_next = 2
        for _ in range(4):  # two lost reads are ridden out
            robot.step(np.zeros(6, np.float32))
        bus.lose_next = 10**6  # from here every read loses servo 6, parking's too
        with pytest.raises(HardwareError) as e:
            for _ in range(5):
                robot.step(np.zeros(6, np.float32))
        message = str(e.value)
        assert re.search(r"3 of the last \d+ position reads", message) and "max_fault_rate=0.1" in message
        # Parking heard servos 1-5 and kept servo 6 at its last known position and goal.
        assert "arm moved to its safe pose" not in message and "torque left on so the arm does not drop" in message
        torque, pose = _torque_and_pose(v)
        assert torque == {1}  # holding, not limp away from the safe pose
        np.testing.assert_allclose(pose[:5], robot.arm.safe_pose[:5], atol=robot.arm.settle_tol + 0.02)


def test_parking_rides_out_lost_reads_and_releases_torque_at_the_safe_pose(tmp_path):
    with VirtualArm("feetech", link=tmp_path / "arm", camera_fps=0) as v:
        robot, bus = _lossy_robot(v)
        robot.connect()
        robot.reset(instruction="park through the noise")
        bus.lose_next = 8  # parking's first eight reads lose servo 6
        assert robot.disconnect() == "arm moved to its safe pose; torque released"
        torque, pose = _torque_and_pose(v)
        assert torque == {0}
        np.testing.assert_allclose(pose[:5], robot.arm.safe_pose[:5], atol=0.3)  # parked (then limp)


def test_torque_is_released_away_from_the_safe_pose_only_when_the_operator_asks(tmp_path):
    with VirtualArm("feetech", link=tmp_path / "arm", camera_fps=0) as v:
        robot, bus = _lossy_robot(v)
        robot.connect()
        robot.reset(instruction="hold on")
        bus.lose_all = True
        outcome = robot.disconnect(limp=True)
        assert outcome.startswith("could not reach the safe pose") and outcome.endswith("torque released")
        assert _torque_and_pose(v)[0] == {0}



def test_a_watchdog_hold_keeps_its_goal_inside_the_limits(tmp_path):
    # The virtual arm rests folded with elbow_flex beyond its 1.6 rad limit: a hold there must not
    # command the joint's own out-of-limit position, only bring it back, at most max_step at once.
    with VirtualArm("feetech", link=tmp_path / "arm", camera_fps=0) as v:
        robot, bus = _lossy_robot(v)
        robot.connect()
        try:
            elbow, limit, max_step = robot.state[2], robot.arm.upper[2], robot.arm.joints[2].max_step
            assert elbow > limit + 0.01
            robot._watchdog_hold()
            assert limit <= robot.goal[2] < elbow and elbow - robot.goal[2] <= max_step + 1e-9
            ticks = bus.sync_read("Goal_Position", [3])[3]
            assert ticks == robot.arm.values_to_ticks(robot.goal)[3]
            assert robot.fault_counts()["watchdog_holds"] == 1
        finally:
            robot.disconnect()

def test_fault_rate_keys_are_checked():
    with pytest.raises(ConfigError, match=r"max_fault_rate=1.5 must be in \[0, 1\)"):
        load_arm("so101_virtual", max_fault_rate=1.5)
    with pytest.raises(ConfigError, match="fault_window=0 must be a whole number"):
        load_arm("so101_virtual", fault_window=0)
    assert load_arm("so101_virtual").max_fault_rate == 0.1


def test_deploy_rides_out_a_noisy_bus_and_reports_its_faults(quick, tmp_path):
    link, report = tmp_path / "arm", tmp_path / "report.json"
    with VirtualArm("feetech", link=link, corrupt=0.05, drop=0.05, seed=2):
        run = subprocess.run(export_setup.cli("deploy", f"bundle={quick}", "robot=virtual", f"link={link}",
                                              "instruction=touch the red cube", "steps=120", "stdin=false",
                                              f"report={report}"),
                             capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    episode = json.loads(report.read_text())[0]
    assert episode["steps"] == 120
    faults = episode["faults"]
    assert faults["reads_retried"] > 0 and faults["corrupt_replies"] > 0 and faults["reply_timeouts"] > 0
    assert {"read_faults", "steps_held", "watchdog_holds"} <= set(faults)
    assert episode["stopped"] == "arm moved to its safe pose; torque released"
    assert f"bus: {faults['reads_retried']} reads retried" in run.stdout
    assert "arm: arm moved to its safe pose; torque released" in run.stdout


def test_serve_bus_logs_every_goal_a_servo_accepts(tmp_path):
    log = tmp_path / "goals.txt"
    with VirtualArm("feetech", link=tmp_path / "arm", camera_fps=0, goal_log=log) as v:
        bus = ServoBus(v.link, "feetech", timeout_s=0.25, retries=3)
        bus.connect()
        present = bus.sync_read("Present_Position", [1, 2])
        bus.sync_write("Goal_Position", {1: 2100, 2: 2000})
        bus.write(2, "Goal_Position", 1990)
        bus.write(1, "Torque_Enable", 1)  # not a goal
        bus.sync_read("Present_Position", [1, 2])  # the server has handled the writes
        bus.close()
    lines = log.read_text().splitlines()
    assert lines[0] == "time id goal present"
    rows = [tuple(int(x) for x in line.split()[1:]) for line in lines[1:]]
    assert [r[:2] for r in rows] == [(1, 2100), (2, 2000), (2, 1990)]
    assert abs(rows[0][2] - present[1]) <= 2  # the servo's position when it took the goal


@pytest.mark.slow
def test_soak_on_a_five_percent_noisy_bus_runs_to_the_end_within_limits_and_parks(quick, tmp_path):
    """benchmarks/faults.py, shortened (the committed results are its 10,000-step run)."""
    out = tmp_path / "faults.json"
    run = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "faults.py"),
                          "--steps", "900", "--cases", "drop=0.05", "corrupt=0.05", "--bundle", str(quick),
                          "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for case in json.loads(out.read_text())["cases"]:
        assert case["steps"] == 900 and case["parked"]["ok"]
        assert case["goal_check"]["outside_limits"] == 0 and case["goal_check"]["beyond_max_step"] == 0
