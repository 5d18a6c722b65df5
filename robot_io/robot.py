"""The physical (or virtual serial) arm as an environment: the same reset/step API as the simulator.

    robot = Robot(load_arm("so101", port="/dev/ttyACM0"))
    robot.connect()                         # checks every servo, enables torque where the arm is
    ts = robot.reset(instruction="pick up the red cube")
    ts = robot.step(action)                 # float32 [-1, 1] per joint, paced at control_hz
    robot.disconnect()                      # safe pose first, then torque off

Every goal passes through the SafetyFilter; a watchdog holds position if step() stops coming.

A noisy bus is ridden out: a position read that still misses a servo after the bus's per-servo
retries keeps that joint at its last known position, and the next step holds the last goal instead
of acting on a guess (`faults` counts both). Only when more than `max_fault_rate` of the last
`fault_window` reads failed, or on any other bus fault (an alarm, a vanished port), does reset/step
stop: the arm goes to its safe pose, torque is released there, and a HardwareError says what
happened and where the arm was left. Parking rides out lost replies too; torque is released away
from the safe pose only when the bus is gone or the operator asks (disconnect(limp=True)), and
the message says which. connect() never prompts: calibration is `reverie robot calibrate`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections import deque

import numpy as np

from reverie.errors import HardwareError, ReverieError
from reverie.robot_io.arm_bus import connect_bus, first_line, make_bus
from reverie.robot_io.bus import MissingReply, ServoAlarm
from reverie.robot_io.config import ArmConfig
from reverie.robot_io.safety import SafetyFilter, Watchdog
from reverie.specs import ArraySpec, StepType, TextSpec, TimeStep

log = logging.getLogger(__name__)


class Robot:
    def __init__(self, arm: ArmConfig, bus=None, cameras: dict | None = None, max_steps: int | None = None,
                 control_hz: float | None = None):
        self.arm = arm
        self.cameras = dict(cameras or {})
        self.max_steps = max_steps
        self.control_hz = float(control_hz or arm.control_hz)
        self.safety = SafetyFilter.from_arm(arm)
        self._bus = bus
        self._lock = threading.RLock()  # the watchdog thread shares the bus with the control loop
        self._watchdog: Watchdog | None = None
        self._connected = False
        self._closed = False
        self.parked = ""  # what the last disconnect or fault did with the arm, for messages
        self._torque = False
        self._state: np.ndarray | None = None
        self._ticks: dict[int, int] | None = None  # last position heard from each servo
        self.stale: list[int] = []                  # servos the last read did not hear from
        self._read_error: MissingReply | None = None
        self._recent_faults: deque[bool] = deque(maxlen=arm.fault_window)
        self.faults = {"read_faults": 0, "steps_held": 0, "watchdog_holds": 0}
        self._goal: np.ndarray | None = None
        self._deadline = 0.0
        self._t = 0
        self._instruction = ""
        self._camera_shapes: dict[str, tuple[int, int, int]] = {}

    # --- specs -----------------------------------------------------------------------------
    def observation_spec(self) -> dict:
        spec = {f"image/{name}": ArraySpec(shape, "uint8", 0, 255, "rgb")
                for name, shape in sorted(self._camera_shapes.items())}
        spec["state"] = ArraySpec((len(self.arm.joints),), "float32", units="rad; gripper opening in [0, 1]")
        spec["instruction"] = TextSpec()
        return spec

    def action_spec(self) -> ArraySpec:
        return ArraySpec((len(self.arm.joints),), "float32", -1.0, 1.0, f"{self.arm.action_mode} command")

    # --- lifecycle -------------------------------------------------------------------------
    def connect(self) -> None:
        if self._connected:
            return
        if self._bus is None:
            self._bus = make_bus(self.arm)
        self._closed = False
        self._ticks, self.stale = None, []
        self._recent_faults.clear()
        connect_bus(self._bus, self.arm)
        try:
            state = self._read_state()
            # Goal := present before torque on, so enabling torque never jumps to a stale goal.
            self._write_goal(state)
            self._bus.set_torque(self.arm.ids, True)
            self._torque = True
            for camera in self.cameras.values():
                if hasattr(camera, "connect"):
                    camera.connect()
            for name, camera in self.cameras.items():
                self._camera_shapes[name] = tuple(np.asarray(camera.read().image).shape)
        except ReverieError as e:
            outcome = self._release(move=self._torque) or "torque was never enabled"
            raise HardwareError(f"{e}\n(while connecting {self.arm.name!r}; {outcome})") from e
        except BaseException:
            self._release(move=self._torque)
            raise
        self._connected = True
        self._watchdog = Watchdog(self.arm.watchdog_s, self._watchdog_hold, name=f"{self.arm.name}-watchdog").start()

    def disconnect(self, limp: bool = False) -> str:
        """Safe pose, torque off, close. Safe to call twice and after a fault. Says what it did.
        Torque stays on where the safe pose is not reached, unless `limp` (the operator asks for a
        limp arm wherever it is: they are holding it)."""
        if self._bus is None or self._closed:
            return ""
        outcome = self._release(move=True, limp=limp)
        log.debug("%s: %s", self.arm.name, outcome)
        return outcome

    close = disconnect

    # --- environment API -------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, instruction: str | None = None) -> TimeStep:
        self._require_connected()
        if instruction is not None:
            self._instruction = TextSpec().validate(instruction)
        with self._faults_stop_the_arm("moving to the home pose"):
            self._watchdog.pause()
            self.move_to(self.arm.home_pose, what="home pose")
            self._t = 0
            obs, info = self._observe()
            self._deadline = time.monotonic() + 1.0 / self.control_hz
        return TimeStep(StepType.FIRST, 0.0, 1.0, obs, info)

    def step(self, action) -> TimeStep:
        self._require_connected()
        action = self.action_spec().validate(np.asarray(action, np.float32).reshape(-1), "action")
        if self._watchdog.error is not None:
            error, self._watchdog.error = self._watchdog.error, None
            with self._faults_stop_the_arm("holding position after a stalled loop"):
                raise error
        with self._faults_stop_the_arm(f"step {self._t + 1}"):
            held = bool(self.stale)
            if held:  # the last read lost a servo: where the arm is is unknown, so hold the last goal
                safe, clamped = self._goal, False
                self.faults["steps_held"] += 1
            else:
                goal = self.goal_from_action(action, self._state)
                safe, clamps = self.safety.filter(goal, self._state, self._goal, 1.0 / self.control_hz)
                clamped = clamps.any
            with self._lock:
                self._write_goal(safe)
            self._watchdog.kick()
            late = self._wait_for_tick()
            self._t += 1
            obs, info = self._observe()
        info.update(clamped=clamped, late=late, goal=safe, held=held, read_failed=bool(self.stale))
        last = self.max_steps is not None and self._t >= self.max_steps
        return TimeStep(StepType.LAST if last else StepType.MID, 0.0, 1.0, obs, info)

    def idle(self) -> None:
        """Between episodes: hold where the arm is and stop the watchdog until the next step()."""
        self._require_connected()
        self._watchdog.pause()
        with self._faults_stop_the_arm("holding position between episodes"):
            self._hold()

    # --- action space ----------------------------------------------------------------------
    def _delta_base(self, present: np.ndarray) -> np.ndarray:
        """Deltas accumulate on the last goal, not the measured angle (as in the sim arm), so a zero
        action holds a pose against gravity instead of letting the sag of each step add up."""
        return present if self._goal is None else self._goal

    def goal_from_action(self, action: np.ndarray, present: np.ndarray) -> np.ndarray:
        action = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        if self.arm.action_mode == "delta":
            scale = self.arm.vector("action_scale")
            goal = self._delta_base(present) + action * scale
            # The goal may lead the measured angle by at most two steps, so a blocked joint (a
            # gripper closed on a cube, a link against the table) does not wind up without limit.
            return np.clip(goal, present - 2 * scale, present + 2 * scale)
        lo, hi = self.arm.lower, self.arm.upper
        return lo + (action + 1.0) / 2.0 * (hi - lo)

    def action_for_target(self, target: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
        """Inverse of goal_from_action: the action that asks for `target` (clipped to [-1, 1])."""
        present = self._state if present is None else present
        target = np.asarray(target, np.float64)
        if self.arm.action_mode == "delta":
            action = (target - self._delta_base(present)) / self.arm.vector("action_scale")
        else:
            lo, hi = self.arm.lower, self.arm.upper
            action = 2.0 * (target - lo) / (hi - lo) - 1.0
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    @property
    def goal(self) -> np.ndarray | None:
        """The last goal written to the servos (joint values)."""
        return None if self._goal is None else self._goal.copy()

    @property
    def bus(self):
        return self._bus

    @property
    def state(self) -> np.ndarray:
        return self._state.astype(np.float32)

    # --- motion ----------------------------------------------------------------------------
    def move_to(self, pose, what: str = "pose", timeout_s: float = 10.0, stopping: bool = False) -> None:
        """Drive to `pose` through the safety filter (so at the velocity limit) and wait to settle."""
        pose = np.asarray(pose, np.float64)
        period = 1.0 / self.control_hz
        start = time.monotonic()
        with self._lock:
            state = self._read_state(tolerate_alarms=stopping, parking=stopping)
            goal = self._goal if self.stale and self._goal is not None else state
            while True:
                err = np.abs(state - pose)
                if np.all(err <= self.arm.settle_tol) and not self.stale:  # settled by a fresh read
                    return
                if time.monotonic() - start > timeout_s:
                    worst = int(np.argmax(err))
                    raise HardwareError(
                        f"arm did not reach the {what} within {timeout_s:g} s: joint "
                        f"{self.arm.names[worst]} is {err[worst]:.3f} away (blocked, overloaded, or "
                        f"the pose is outside what it can reach); clear the workspace and check the pose")
                new, _ = self.safety.filter(pose, state, goal, period)
                goal = np.where(self._stale_mask(), goal, new)  # a joint not heard from holds its goal
                self._write_goal(goal)
                time.sleep(period)
                state = self._read_state(tolerate_alarms=stopping, parking=stopping)

    # --- internals -------------------------------------------------------------------------
    def _stale_mask(self) -> np.ndarray:
        return np.isin(self.arm.ids, self.stale)

    def _require_connected(self) -> None:
        if not self._connected:
            raise HardwareError(f"robot {self.arm.name!r} is not connected: call connect() first "
                                "(a fault disconnects it; reconnect after fixing the cause)")

    def _read_state(self, tolerate_alarms: bool = False, parking: bool = False) -> np.ndarray:
        """Present positions. A servo whose reply is lost after every retry keeps its last known
        position and is listed in `stale`; more lost reads than the fault rate allows raise,
        except while parking, which must not give up on a noisy bus."""
        with self._lock:  # the watchdog's thread reads too: one read and its bookkeeping at a time
            return self._read_state_locked(tolerate_alarms, parking)

    def _read_state_locked(self, tolerate_alarms: bool, parking: bool) -> np.ndarray:
        try:
            ticks = self._bus.sync_read("Present_Position", self.arm.ids)
            self.stale = []
        except ServoAlarm as e:
            # A servo flags overload/overheating in every reply until the cause is gone. When we are
            # already stopping the arm, positions that came with the alarm still guide it home.
            if not tolerate_alarms or set(e.values) != set(self.arm.ids):
                raise
            ticks, self.stale = e.values, []
        except MissingReply as e:
            if self._ticks is None:
                raise  # nothing known to fall back on (the first read after connect)
            ticks, self.stale, self._read_error = {**self._ticks, **e.values}, list(e.missing), e
            self.faults["read_faults"] += 1
            log.warning("%s: %s; holding the last goal", self.arm.name, first_line(e))
        self._recent_faults.append(bool(self.stale))
        if not parking and sum(self._recent_faults) > self.arm.max_fault_rate * self.arm.fault_window:
            raise HardwareError(
                f"{sum(self._recent_faults)} of the last {len(self._recent_faults)} position reads lost a "
                f"servo's reply after every retry, more than max_fault_rate={self.arm.max_fault_rate:g} of "
                f"fault_window={self.arm.fault_window} allows; last: {first_line(self._read_error)}. Check "
                f"the bus cable, connectors and servo power, or raise max_fault_rate in the arm config")
        self._ticks = dict(ticks)
        self._state = self.arm.ticks_to_values(ticks)
        return self._state

    def _write_goal(self, goal: np.ndarray) -> None:
        with self._lock:
            self._bus.sync_write("Goal_Position", self.arm.values_to_ticks(goal))
        self._goal = np.asarray(goal, np.float64).copy()

    def _observe(self) -> tuple[dict, dict]:
        t0 = time.time()
        state = self._read_state()
        t1 = time.time()
        obs, info = {}, {"timestamp": (t0 + t1) / 2}  # the state read straddles [t0, t1]
        for name, camera in sorted(self.cameras.items()):
            frame = camera.read()
            obs[f"image/{name}"] = np.asarray(frame.image, np.uint8)
            info[f"frame/{name}"] = (int(frame.index), float(frame.age_s), float(frame.capture_time))
        obs["state"] = state.astype(np.float32)
        obs["instruction"] = self._instruction
        return obs, info

    def _wait_for_tick(self) -> bool:
        """Sleep to the next control tick; a late loop restarts its schedule instead of bursting."""
        now = time.monotonic()
        if now < self._deadline:
            time.sleep(self._deadline - now)
            self._deadline += 1.0 / self.control_hz
            return False
        self._deadline = now + 1.0 / self.control_hz
        return True

    def _hold(self) -> None:
        """The goal becomes wherever the arm is now, inside its limits (the last goal again where a
        servo's reply was lost)."""
        with self._lock:
            if self._connected:
                state = self._read_state()
                # Through the filter too: a joint pressed a tick past its limit is held at the limit.
                here, _ = self.safety.filter(state, state)
                self._write_goal(self._goal if self.stale and self._goal is not None else here)

    def _watchdog_hold(self) -> None:
        """Watchdog: the loop went quiet (a stalled policy, or a read waiting out a lost reply)."""
        self.faults["watchdog_holds"] += 1
        self._hold()

    def fault_counts(self) -> dict[str, int]:
        """Bus noise ridden out since connect: packets re-sent, replies lost or corrupt, reads
        that failed after every retry, steps that held the last goal, watchdog holds."""
        stats = getattr(self._bus, "stats", None)
        bus = {k: int(getattr(stats, k, 0)) for k in ("retries", "timeouts", "crc_errors")}
        return {"reads_retried": bus["retries"], "reply_timeouts": bus["timeouts"],
                "corrupt_replies": bus["crc_errors"], **self.faults}

    def _faults_stop_the_arm(self, doing: str):
        return _FaultGuard(self, doing)

    def _release(self, move: bool, limp: bool = False) -> str:
        """Best effort: safe pose, torque off, close bus and cameras. Returns what happened."""
        with _ctrl_c_deferred(self.arm.name):
            self.parked = self._release_now(move, limp)
        return self.parked

    def _release_now(self, move: bool, limp: bool = False) -> str:
        self._connected = False
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        notes = []
        parked = False
        if move and self._torque:
            try:
                self.move_to(self.arm.safe_pose, what="safe pose", timeout_s=5.0, stopping=True)
                notes.append("arm moved to its safe pose")
                parked = True
            except ReverieError as e:
                notes.append(f"could not reach the safe pose ({first_line(e)})")
        if self._torque and not getattr(self._bus, "is_connected", True):
            notes.append("the bus is gone, so torque could not be released: the servos hold their last "
                         "goal while powered; support the arm and switch its power off")
            self._torque = False
        elif self._torque and move and not parked and not limp:
            # A limp arm away from its rest pose falls: keep it holding where it is.
            notes.append("torque left on so the arm does not drop: the servos hold their last goal; support "
                         "the arm, then switch its power off (or disconnect(limp=True) to release it)")
            self._torque = False
        if self._torque:
            failed = []
            for servo_id in self.arm.ids:  # one by one: a servo that fails must not keep the rest on
                try:
                    self._bus.set_torque([servo_id], False)
                except ServoAlarm:
                    pass  # acknowledged (torque is off); the reply merely repeats the alarm
                except ReverieError as e:
                    failed.append((servo_id, e))
            if failed:
                ids = [i for i, _ in failed]
                notes.append(f"could not release torque on servo(s) {ids} ({first_line(failed[0][1])}): "
                             f"they may still hold their last goal; support the arm and switch its power off")
            else:
                notes.append("torque released")
            self._torque = False
        for camera in self.cameras.values():
            try:
                camera.close()
            except Exception as e:  # a camera must not stop the bus from closing
                log.warning("camera close failed: %s", e)
        try:
            self._bus.close()
        except Exception as e:
            log.warning("bus close failed: %s", e)
        self._closed = True
        return "; ".join(notes)


class _FaultGuard:
    """Context manager: a HardwareError inside reset/step stops the arm safely and is re-raised
    with what the arm did in response. KeyboardInterrupt also stops the arm, then propagates."""

    def __init__(self, robot: Robot, doing: str):
        self.robot, self.doing = robot, doing

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if error is None:
            return False
        if isinstance(error, (ReverieError, KeyboardInterrupt)):
            try:
                outcome = self.robot._release(move=True)
            except KeyboardInterrupt:  # pressed again while parking: parking finished, report it
                log.debug("interrupted while %s: %s", self.doing, self.robot.parked)
                raise
            if isinstance(error, KeyboardInterrupt):
                log.debug("interrupted while %s: %s", self.doing, outcome)
                return False
            raise HardwareError(f"{error}\n(while {self.doing} on {self.robot.arm.name!r}; {outcome})") from error
        return False


@contextlib.contextmanager
def _ctrl_c_deferred(name: str):
    """A second Ctrl-C while the arm is being parked would abort the move half-way and leave torque
    on; hold it until parking is done (seconds at most), then raise it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed = []

    def later(signum, frame):
        pressed.append(signum)
        print(f"\n{name}: parking the arm safely first; Ctrl-C takes effect in a moment", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, later)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt
