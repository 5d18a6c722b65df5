"""The Robot env on the virtual serial robot (a `reverie sim serve-bus` child process on a pty),
keyboard and leader teleop, and the calibration command driven by scripted input."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from reverie.errors import ConfigError
from reverie.robot_io.calibrate import main as calibrate_main
from reverie.robot_io.camera_setup import build_cameras
from reverie.robot_io.config import load_arm
from reverie.robot_io.arm_bus import make_bus
from reverie.robot_io.robot import Robot
from reverie.robot_io.keys import TerminalKeys
from reverie.robot_io.teleop import Event, KeyboardTeleop, LeaderFollower
from reverie.robot_io.virtual.launcher import LAUNCH, VirtualArm
from reverie.specs import StepType


@pytest.fixture(scope="module")
def so101(tmp_path_factory):
    with VirtualArm("feetech", link=tmp_path_factory.mktemp("so101") / "so101") as v:
        yield v


def _robot(virtual, name="so101_virtual", **kwargs):
    arm = load_arm(name, port=virtual.link, cameras=virtual.camera_config(), **kwargs)
    return Robot(arm, cameras=build_cameras(arm.cameras))


def _torque(virtual, arm_name="so101_virtual"):
    arm = load_arm(arm_name, port=virtual.link)
    with make_bus(arm) as bus:
        return bus.sync_read("Torque_Enable", arm.ids)


def test_reset_and_step_follow_the_env_api_with_measured_timestamps(so101):
    robot = _robot(so101)
    robot.connect()
    try:
        spec = robot.observation_spec()
        assert spec["image/front"].shape == (64, 64, 3) and spec["state"].shape == (6,)
        ts = robot.reset(instruction="wave at the camera")
        assert ts.step_type == StepType.FIRST and ts.observation["instruction"] == "wave at the camera"
        for key, s in spec.items():
            s.validate(ts.observation[key], key)
        start = ts.observation["state"].copy()
        stamps = [ts.info["timestamp"]]
        action = np.zeros(6, np.float32)
        action[0] = 1.0  # shoulder_pan at full delta speed
        for _ in range(10):
            ts = robot.step(action)
            stamps.append(ts.info["timestamp"])
        assert ts.step_type == StepType.MID
        # 10 steps of +0.05 rad, with some servo lag: clearly moved the right way, nothing else did much.
        moved = ts.observation["state"] - start
        assert 0.25 < moved[0] < 0.55, moved
        assert np.all(np.abs(moved[1:5]) < 0.1), moved
        periods = np.diff(stamps)
        assert np.all(periods > 0)
        assert len(set(np.round(periods, 6))) > 1  # measured, not index * period
        assert ts.info["frame/front"][0] > 0  # a camera frame index
    finally:
        robot.disconnect()
    assert set(_torque(so101).values()) == {0}


def test_absolute_actions_pass_through_the_safety_filter(so101):
    robot = _robot(so101, action_mode="absolute")
    robot.connect()
    try:
        ts = robot.reset(instruction="reach")
        present = ts.observation["state"].astype(np.float64)
        previous = robot.goal
        ts = robot.step(np.ones(6, np.float32))  # every joint to its upper limit at once
        assert ts.info["clamped"]
        assert np.all(ts.info["goal"] - present <= robot.arm.vector("max_step") + 1e-9)
        velocity = (ts.info["goal"] - previous) * robot.control_hz
        assert np.all(velocity <= robot.arm.vector("max_velocity") + 1e-6)
        np.testing.assert_allclose(robot.goal, ts.info["goal"])
    finally:
        robot.disconnect()


def test_watchdog_holds_position_when_steps_stop(so101):
    robot = _robot(so101)
    robot.connect()
    try:
        robot.reset(instruction="stall")
        action = np.zeros(6, np.float32)
        action[0] = 1.0
        for _ in range(3):
            robot.step(action)
        time.sleep(robot.arm.watchdog_s * 3)  # the loop "stalls"
        assert robot._watchdog.stalls >= 1
        goal = robot.bus.sync_read("Goal_Position", robot.arm.ids)
        present = robot.bus.sync_read("Present_Position", robot.arm.ids)
        assert all(abs(goal[i] - present[i]) <= 25 for i in robot.arm.ids), (goal, present)
        robot.step(np.zeros(6, np.float32))  # the loop resumes normally
    finally:
        outcome = robot.disconnect()
    assert "safe pose" in outcome and "torque released" in outcome


def test_disconnect_brings_the_arm_to_its_safe_pose_before_releasing_torque(so101):
    robot = _robot(so101)
    robot.connect()
    robot.reset(instruction="park")
    seen = []
    release = robot.bus.set_torque

    def spy(ids, enabled):  # record where the arm is when torque goes off
        if not enabled and not seen:
            seen.append(robot.arm.ticks_to_values(robot.bus.sync_read("Present_Position", robot.arm.ids)))
        release(ids, enabled)

    robot.bus.set_torque = spy
    outcome = robot.disconnect()
    assert "arm moved to its safe pose; torque released" == outcome
    np.testing.assert_allclose(seen[0], robot.arm.safe_pose, atol=robot.arm.settle_tol + 0.02)
    assert robot.disconnect() == ""  # twice is harmless


def test_dynamixel_koch_arm_connects_and_steps(tmp_path):
    with VirtualArm("dynamixel", link=tmp_path / "koch", camera_fps=0) as v:
        robot = _robot(v, "koch_virtual")
        robot.connect()
        try:
            ts = robot.reset(instruction="koch")
            ts = robot.step(np.full(6, -0.5, np.float32))
            assert ts.observation["state"].shape == (6,) and "image/front" not in ts.observation
        finally:
            robot.disconnect()
        assert set(_torque(v, "koch_virtual").values()) == {0}


def test_keyboard_teleop_keys_move_targets_within_limits_and_queue_operator_events():
    arm = load_arm("so101")
    teleop = KeyboardTeleop(arm)
    present = np.array(arm.home_pose)
    teleop.begin(present)
    teleop.press("q")
    teleop.press("q")
    teleop.press("s")
    teleop.press("?")  # unknown: ignored
    target = teleop.target(present)
    np.testing.assert_allclose(target - present, [0.1, -0.05, 0, 0, 0, 0])
    for _ in range(200):
        teleop.press("y")  # gripper open, far past its limit
    assert teleop.target(present)[5] == arm.upper[5]
    for key in "\r+c -x\x1b":
        teleop.press(key)
    assert teleop.events.drain() == [Event.START, Event.SUCCESS, Event.CORRECTION, Event.STOP,
                                     Event.FAILURE, Event.RERECORD, Event.QUIT]


def test_terminal_keys_reach_the_teleop_and_the_terminal_is_restored():
    import os
    import pty
    import termios

    master, slave = pty.openpty()
    stream = os.fdopen(slave, "r")
    before = termios.tcgetattr(slave)
    teleop = KeyboardTeleop(load_arm("so101"))
    try:
        assert TerminalKeys.available(stream)
        with TerminalKeys(teleop.press, stream=stream):
            assert not termios.tcgetattr(slave)[3] & termios.ICANON  # keys arrive without Enter
            os.write(master, b"+\x1b[A ")  # success, an arrow key (ignored), stop
            deadline = time.monotonic() + 5
            events = []
            while len(events) < 2 and time.monotonic() < deadline:
                events += teleop.events.drain()
                time.sleep(0.01)
        assert events == [Event.SUCCESS, Event.STOP]
        assert termios.tcgetattr(slave) == before
    finally:
        stream.close()
        os.close(master)


def test_leader_arm_positions_become_follower_targets(so101, tmp_path):
    with VirtualArm("feetech", link=tmp_path / "leader", camera_fps=0) as leader_v:
        leader = load_arm("so101_leader_virtual", port=leader_v.link)
        follower = load_arm("so101_virtual", port=so101.link)
        teleop = LeaderFollower(leader, follower)
        teleop.connect()
        try:
            target = teleop.target(np.zeros(6))
            ticks = teleop._bus.sync_read("Present_Position", leader.ids)
            np.testing.assert_allclose(target, leader.ticks_to_values(ticks), atol=0.02)
            assert set(teleop._bus.sync_read("Torque_Enable", leader.ids).values()) == {0}  # hand-movable
        finally:
            teleop.close()


def test_calibrate_command_records_middle_and_range_with_scripted_input(so101, tmp_path, monkeypatch):
    """The operator is played by code: at each prompt it moves the (virtual) arm the way a person
    would by hand, here by writing goal positions over a second connection with torque on."""
    out = tmp_path / "calib.json"
    arm = load_arm("so101_virtual", port=so101.link)
    lines = []
    # The command and the "hand" share one bus object: a pty serves one client at a time.
    hand = make_bus(arm)
    monkeypatch.setattr("reverie.robot_io.calibrate.make_bus", lambda a, role="arm": hand)

    def prompt(text):
        lines.append(text)
        if text.startswith("Step 2/2"):
            for offset in (-400, 400, 0):  # sweep every joint around the middle, then back
                hand.set_torque(arm.ids, True)
                hand.sync_write("Goal_Position", {i: 2048 + offset for i in arm.ids})
                time.sleep(0.6)
            hand.set_torque(arm.ids, False)
        elif text.startswith("Step 1/2"):
            hand.set_torque(arm.ids, True)
            hand.sync_write("Goal_Position", {i: 2048 for i in arm.ids})
            time.sleep(1.0)
            hand.set_torque(arm.ids, False)
        return ""

    assert calibrate_main(["robot=so101_virtual", f"port={so101.link}", f"out={out}"],
                          prompt=prompt, say=lines.append) == 0
    assert any("Step 1/2" in line for line in lines) and any("Step 2/2" in line for line in lines)
    data = json.loads(out.read_text())
    for name, joint in data["joints"].items():
        lo, hi = joint["range_ticks"]
        assert hi - lo > 300, (name, joint)  # the sweep was seen
        if name != "gripper":
            assert abs(joint["zero_ticks"] - 2048) < 120, (name, joint)
    calibrated = load_arm("so101_virtual", port=so101.link, calibration=str(out))
    assert calibrated.joints[0].range_ticks == tuple(data["joints"]["shoulder_pan"]["range_ticks"])


@pytest.mark.parametrize("stdin", ["closed", "devnull"])
def test_calibrate_without_a_terminal_refuses_before_touching_the_arm(so101, tmp_path, stdin):
    """From a script or CI: `<&-` (no stdin at all) or `</dev/null` (not a terminal, EOF at once)."""
    out = tmp_path / "calib.json"
    args = ["robot", "calibrate", "robot=so101_virtual", f"port={so101.link}", f"out={out}"]
    run = subprocess.run([sys.executable, "-c", LAUNCH, *args], capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL if stdin == "devnull" else None,
                         preexec_fn=(lambda: os.close(0)) if stdin == "closed" else None)
    assert run.returncode == 2, run.stderr
    assert "needs an operator at a terminal" in run.stderr and "Traceback" not in run.stderr
    assert not out.exists() and set(_torque(so101).values()) == {0}


def test_input_ending_mid_calibration_is_a_clear_error(so101, tmp_path):
    def prompt(text):
        if text.startswith("Step 1/2"):
            raise EOFError
        return ""

    out = tmp_path / "calib.json"
    with pytest.raises(ConfigError, match="input ended .* at \"Step 1/2\"; nothing was written and torque is off"):
        calibrate_main(["robot=so101_virtual", f"port={so101.link}", f"out={out}"], prompt=prompt, say=print)
    assert not out.exists() and set(_torque(so101).values()) == {0}
