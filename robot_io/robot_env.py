"""A physical or virtual servo arm as an episodic Env, `make("robot/<arm config>", ...)`.

    env = make("robot/so101_sim", link="/tmp/reverie-arm")            # `reverie sim serve-bus` on a pty
    env = make("robot/so101", port="/dev/ttyACM0", calibration="calib/so101.json", operator="keyboard")

The same contract as the sim arm (reverie/specs.py): observations image/<camera>, state, instruction;
episodes end at `time_limit` control steps (LAST, discount 1) or on success (LAST, discount 0, reward 1,
the sim's sparse reward); `info["success"]` on every step. robot_io.Robot underneath does the servo
work (safety filter, watchdog, safe stop on any fault); this module adds what makes an episode:

- reset() moves to the home pose. On a physical arm it then waits for the operator to reset the
  scene and press Enter (start="key"). The virtual robot resets its own scene (robot_io/virtual/scene.py):
  the cubes the sim env lays out for reset's seed, scoring reset's instruction (or the env's, or,
  with neither, the one the sim draws for that seed), so eval meets the sim eval's episodes; it
  starts at once (start="auto").
- Success: the virtual robot scores its own instruction (`serve-bus instruction=...` keeps
  `<link>.status`); a physical arm has only the operator's `+`/`-` keys, asked for at the end of an
  episode that had none. Unknown stays `info["success"] = None`; stores keep it unlabelled.
- Operator events (robot_io/teleop.py keys): Space ends the episode, `+`/`-` end it labelled, Esc ends
  it and sets `quit` (callers stop after this episode), `c` toggles a takeover. While a takeover is on,
  `info["operator_action"]` holds the teleop device's command and `info["correction"]` is True: the
  rollout loop sends that action instead of the controller's and stores the row as a correction.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from reverie.errors import ConfigError, HardwareError
from reverie.robot_io.virtual.scene import reset_scene
from reverie.robot_io.teleop import Event
from reverie.specs import StepType, TimeStep

log = logging.getLogger(__name__)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class RobotEnv:
    corrections = True  # timesteps carry info["correction"] (operator takeover); recorders store it

    def __init__(self, robot, time_limit: int = 80, operator=None, status: Path | None = None,
                 instruction: str | None = None, start: str = "auto", label_timeout_s: float | None = 60.0,
                 say=_say, keys=None):
        if start not in ("key", "auto"):
            raise ConfigError(f"start must be key or auto, got {start!r}")
        if start == "key" and operator is None:
            raise ConfigError("start=key waits for the operator's Enter, but there is no operator: pass "
                              "operator=keyboard (or start=auto)")
        self.robot, self.time_limit, self.operator = robot, int(time_limit), operator
        self.status, self.instruction, self.start = status, instruction, start
        self.label_timeout_s, self.say, self._keys = label_timeout_s, say, keys
        self.scene_timeout_s = 10.0  # the virtual robot's scene reset takes milliseconds once it runs
        self.control_hz = robot.control_hz
        self.quit = False  # the operator pressed Esc: callers finish this episode and stop
        self._t, self._since, self._takeover, self._done = 0, 0.0, False, True
        robot.connect()  # checks every servo, enables torque where the arm stands: no motion yet
        try:
            if operator is not None:
                operator.connect()
            if keys is not None:
                keys.__enter__()
        except BaseException:
            self.close()
            raise

    def observation_spec(self) -> dict:
        return self.robot.observation_spec()

    def action_spec(self):
        return self.robot.action_spec()

    # --- episode --------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, instruction: str | None = None) -> TimeStep:
        """`seed` places the virtual robot's cubes; a real table's are the operator's to set."""
        instruction = instruction or self.instruction
        if self.status is not None:  # the virtual robot: a fresh scene, as the sim's reset(seed) makes
            self.robot.reset(instruction=instruction)  # home first, clear of where the cubes appear
            # None asks the server to draw the instruction the sim draws for this seed
            instruction = reset_scene(self.status.with_suffix(""), seed, instruction,
                                      self.scene_timeout_s)["instruction"]
        instruction = self._instruction(instruction)
        ts = self.robot.reset(instruction=instruction)  # after a scene reset: already home, a fresh o_0
        if self.start == "key":
            self.robot.idle()  # hold still while the operator arranges the scene
            self._wait_for_start(instruction)
            ts = self.robot.reset(instruction=instruction)  # back home if the arm was bumped; a fresh o_0
        if self.operator is not None:
            self.operator.events.drain()  # keys pressed during the home move are not for this episode
        self._t, self._since, self._takeover, self._done = 0, time.time(), False, False
        return self._annotate(ts, success=False)

    def step(self, action) -> TimeStep:
        if self._done:
            raise HardwareError("the episode is over: call reset() before step()")
        ts = self.robot.step(action)
        self._t += 1
        label, end = None, self._t >= self.time_limit or self.quit  # quit: Esc while waiting to start
        for event in self.operator.events.drain() if self.operator is not None else ():
            if event in (Event.SUCCESS, Event.FAILURE):
                label, end = event is Event.SUCCESS, True
            elif event in (Event.STOP, Event.QUIT):
                end, self.quit = True, self.quit or event is Event.QUIT
            elif event is Event.CORRECTION:
                self._takeover = not self._takeover
                if self._takeover:
                    # keyboard targets start at the arm's goal, so taking over by itself moves nothing
                    goal = self.robot.goal
                    self.operator.begin(ts.observation["state"] if goal is None else goal)
                self.say(f"  takeover {'started' if self._takeover else 'ended'} at step {self._t}")
            # RERECORD means nothing here: a policy episode is kept whatever happens in it
        scored = self._scored()  # the virtual robot's judgement; None on a physical arm
        success = label if scored is None else (scored or bool(label))
        if not (end or success):
            return self._annotate(ts, success=False)
        self._done = True
        self.robot.idle()  # saving the episode may outlast the watchdog; hold where the arm is
        if success is None and not self.quit:
            success = self._ask_label()
        return self._annotate(TimeStep(StepType.LAST, 1.0 if success else 0.0, 0.0 if success else 1.0,
                                       ts.observation, ts.info), success)

    def close(self) -> None:
        """Safe pose, torque off (robot_io.Robot.disconnect), then the operator's devices."""
        parked = self.robot.disconnect()
        if parked:
            self.say(f"{self.robot.arm.name}: {parked}")
        if self._keys is not None:
            self._keys.__exit__(None, None, None)
            self._keys = None
        if self.operator is not None:
            self.operator.close()

    # --- internals ------------------------------------------------------------------------
    def _annotate(self, ts: TimeStep, success: bool | None) -> TimeStep:
        takeover = self._takeover and not ts.last()
        ts.info.update(success=success, correction=takeover)
        if takeover:  # the operator's command for this observation, in the robot's action space
            state = np.asarray(ts.observation["state"], np.float64)
            ts.info["operator_action"] = self.robot.action_for_target(self.operator.target(state), state)
        return ts

    def _served(self) -> dict | None:
        """The virtual robot's score record, or None (a physical arm, or serve-bus without instruction=)."""
        if self.status is None or not self.status.exists():
            return None
        try:
            return json.loads(self.status.read_text())
        except (OSError, ValueError):
            return None  # caught mid-replace; the next step reads it again

    def _scored(self) -> bool | None:
        served = self._served()
        if served is None:
            return None
        # success_time is the latest onset of success, so an earlier episode's success never counts
        return bool(served.get("success")) and float(served.get("success_time") or 0) >= self._since

    def _instruction(self, asked: str | None) -> str:
        instruction = asked or self.instruction
        if not instruction:
            raise ConfigError("the robot env needs an instruction: pass instruction=\"...\" (the task the "
                              "operator sets up)")
        return instruction

    def _wait_for_start(self, instruction: str) -> None:
        self.say(f"reset the scene for {instruction!r}, then press Enter ({self.operator.help()})")
        while True:
            event = self.operator.events.get()
            if event is Event.START:
                return
            if event is Event.QUIT:
                self.quit = True
                return  # the episode runs to its first step, which ends it; callers then stop

    def _ask_label(self) -> bool | None:
        if self.operator is None or self.start != "key":
            return None  # nobody to ask (a scripted run): the episode stays unlabelled
        self.say(f"episode over: + success, - failure, Space unlabelled (waits {self.label_timeout_s} s)")
        deadline = None if self.label_timeout_s is None else time.monotonic() + self.label_timeout_s
        while deadline is None or time.monotonic() < deadline:
            event = self.operator.events.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            if event in (Event.SUCCESS, Event.FAILURE):
                return event is Event.SUCCESS
            if event in (Event.STOP, Event.QUIT, None):
                self.quit = self.quit or event is Event.QUIT
                return None
        return None


def make_robot_env(arm_name: str, port: str | None = None, link: str | None = None,
                   cameras: dict | None = None, time_limit: int = 80, operator=None,
                   instruction: str | None = None, start: str | None = None, calibration: str | None = None,
                   control_hz: float | None = None, leader: str = "so101_leader", leader_port: str | None = None,
                   **unknown) -> RobotEnv:
    """`robot/<arm config name or YAML path>`. link=PATH: the virtual robot of `reverie sim serve-bus
    link=PATH` (cameras from its frame files, success from `<link>.status`); port=: a physical arm.
    operator: None, "keyboard", "leader" (leader=/leader_port=), or a teleop device object."""
    from reverie.robot_io.camera_setup import build_cameras
    from reverie.robot_io.config import load_arm
    from reverie.robot_io.robot import Robot

    if unknown:
        raise ConfigError(f"robot env: unknown option(s) {sorted(unknown)}; known: port, link, cameras, "
                          "time_limit, operator, instruction, start, calibration, control_hz, leader, leader_port")
    if port and link:
        raise ConfigError("pass link= (the virtual robot) or port= (a physical arm), not both")
    arm = load_arm(arm_name, port=link or port, calibration=calibration)
    where = arm.port
    if not where or not Path(where).exists():
        fix = (f"start `reverie sim serve-bus protocol={arm.protocol} link={where} instruction=\"...\"` first"
               if link else "check the cable, `ls /dev/tty*` and pass port=... (or link=PATH for the virtual robot)")
        raise HardwareError(f"{'link' if link else 'port'} {where} does not exist: {fix}")
    status = Path(f"{where}.status")
    virtual = bool(link) or status.exists()  # only serve-bus writes a .status beside its port
    cams = dict(cameras) if cameras is not None else dict(arm.cameras)
    if link and cameras is None:  # the shipped config names one link; read this server's frames
        cams = {name: {"type": "frame_file", "path": f"{link}.frames.{name}"} for name in cams}
    device = _operator(operator, arm, leader, leader_port)
    start = start or ("auto" if virtual or device is None else "key")
    keys = None
    if isinstance(operator, str):  # a named operator (robot_io/teleop.py OPERATORS): a human at the keys
        from reverie.robot_io.keys import TerminalKeys

        if TerminalKeys.available():
            keys = TerminalKeys(device.press)
        elif start == "key":
            raise ConfigError("stdin is not a terminal, so no key can start an episode: pass start=auto")
    robot = Robot(arm, cameras=build_cameras(cams), control_hz=control_hz)
    return RobotEnv(robot, time_limit, device, status if virtual else None, instruction, start, keys=keys)


def _operator(operator, arm, leader: str, leader_port: str | None):
    from reverie.robot_io.teleop import make_operator

    if operator is None or not isinstance(operator, str):
        return operator  # None (no operator) or a device object (tests, scripts)
    return make_operator(operator, arm, leader=leader, leader_port=leader_port)
