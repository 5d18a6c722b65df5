"""Teleoperation devices: they turn an operator's input into joint targets for the follower arm.

A device exposes `connect()`, `begin(present)` at the start of each episode, `target(present) ->
joint values` once per control step, `close()`, and `events`, the queue of operator decisions
(start, stop, re-record, success, failure, correction). The recorder converts targets into the
robot's action space and sends them through `Robot.step`, so what is stored is exactly what was
commanded. Nothing here blocks on a human: keys arrive through `press()` (from a terminal reader,
see keys.py, or from code in tests) and are consumed at the next control step.
"""

from __future__ import annotations

import enum
import queue
import threading

import numpy as np

from reverie.errors import ConfigError, HardwareError, did_you_mean
from reverie.robot_io.config import ArmConfig, load_arm


class Event(enum.Enum):
    START = "start episode"
    STOP = "stop episode (keep it)"
    RERECORD = "discard this episode and record it again"
    SUCCESS = "label the episode a success"
    FAILURE = "label the episode a failure"
    CORRECTION = "toggle a correction segment (operator takes over)"
    QUIT = "stop this episode (kept) and quit"


# Operator keys, the same for every device. Chosen away from the joint keys below.
OPERATOR_KEYS = {"\r": Event.START, "\n": Event.START, " ": Event.STOP, "x": Event.RERECORD,
                 "+": Event.SUCCESS, "-": Event.FAILURE, "c": Event.CORRECTION, "\x1b": Event.QUIT}
KEY_NAMES = {"\r": "Enter", "\n": "Enter", " ": "Space", "\x1b": "Esc"}

# Keyboard teleop: one (increase, decrease) pair per joint, in the arm's joint order.
JOINT_KEYS = ("qa", "ws", "ed", "rf", "tg", "yh", "uj", "ik")


class EventQueue:
    """Thread-safe queue of operator events; the control loop drains it once per step."""

    def __init__(self):
        self._q: queue.Queue[Event] = queue.Queue()

    def put(self, event: Event) -> None:
        self._q.put(event)

    def get(self, timeout: float | None = None) -> Event | None:
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def drain(self) -> list[Event]:
        out = []
        while True:
            try:
                out.append(self._q.get_nowait())
            except queue.Empty:
                return out


def operator_help() -> str:
    seen = {}
    for key, event in OPERATOR_KEYS.items():
        seen.setdefault(event, KEY_NAMES.get(key, key))
    return ", ".join(f"{k}: {e.value}" for e, k in seen.items())


class KeyboardTeleop:
    """Each press of a joint key moves that joint's target one `action_scale` step.

    Targets start from where the follower is at `begin()` and stay inside the arm's limits, so
    holding a key (terminal auto-repeat) drives a joint smoothly to its limit and no further.
    """

    def __init__(self, arm: ArmConfig, events: EventQueue | None = None, step_gain: float = 1.0):
        if len(arm.joints) > len(JOINT_KEYS):
            raise ConfigError(f"keyboard teleop has keys for {len(JOINT_KEYS)} joints, arm "
                              f"{arm.name!r} has {len(arm.joints)}; use teleop=leader")
        self.arm = arm
        self.events = events or EventQueue()
        self.steps = arm.vector("action_scale") * step_gain
        self._pending = np.zeros(len(arm.joints))
        self._target: np.ndarray | None = None
        self._lock = threading.Lock()
        self._keymap = {}
        for i, (up, down) in enumerate(JOINT_KEYS[: len(arm.joints)]):
            self._keymap[up], self._keymap[down] = (i, 1.0), (i, -1.0)

    @classmethod
    def named(cls, follower: ArmConfig, **_leader) -> KeyboardTeleop:
        return cls(follower)

    def connect(self) -> None:
        pass  # keys come from whoever calls press(); see keys.TerminalKeys

    def close(self) -> None:
        pass

    def help(self) -> str:
        pairs = ", ".join(f"{k[0]}/{k[1]} {j}" for k, j in zip(JOINT_KEYS, self.arm.names))
        return f"joints (+/-): {pairs}; {operator_help()}"

    def press(self, key: str) -> None:
        if key in OPERATOR_KEYS:
            self.events.put(OPERATOR_KEYS[key])
        elif key.lower() in self._keymap:
            joint, sign = self._keymap[key.lower()]
            with self._lock:
                self._pending[joint] += sign
        # any other key is ignored: a stray key must never move the arm

    def begin(self, present: np.ndarray) -> None:
        with self._lock:
            self._target = np.asarray(present, np.float64).copy()
            self._pending[:] = 0

    def target(self, present: np.ndarray) -> np.ndarray:
        with self._lock:
            if self._target is None:
                self._target = np.asarray(present, np.float64).copy()
            self._target = np.clip(self._target + self._pending * self.steps, self.arm.lower, self.arm.upper)
            self._pending[:] = 0
            return self._target.copy()


class LeaderFollower:
    """Reads a leader arm (torque off, moved by the operator's hand) and returns its joint values as
    the follower's targets. Leader and follower joints are matched by name, so the two arms may
    differ in ids, directions and calibration."""

    def __init__(self, leader: ArmConfig, follower: ArmConfig, bus=None, events: EventQueue | None = None):
        missing = [n for n in follower.names if n not in leader.names]
        if missing:
            raise ConfigError(f"leader arm {leader.name!r} lacks joints {missing} of follower "
                              f"{follower.name!r}; pick a leader config with the same joint names")
        self.leader = leader
        self.events = events or EventQueue()
        self._order = [leader.names.index(n) for n in follower.names]
        self._bus = bus
        self._connected = False

    @classmethod
    def named(cls, follower: ArmConfig, leader: str, leader_port: str | None = None,
              leader_calibration: str | None = None) -> LeaderFollower:
        return cls(load_arm(leader, port=leader_port, calibration=leader_calibration), follower)

    def connect(self) -> None:
        from reverie.robot_io.arm_bus import connect_bus, make_bus

        if self._bus is None:
            self._bus = make_bus(self.leader, role="leader arm")
        connect_bus(self._bus, self.leader, role="leader arm")
        try:
            # Torque off: the operator moves the leader by hand.
            self._bus.set_torque(self.leader.ids, False)
        except BaseException:
            self._bus.close()
            raise
        self._connected = True

    def close(self) -> None:
        if self._bus is not None and self._connected:
            self._connected = False
            self._bus.close()

    def press(self, key: str) -> None:
        if key in OPERATOR_KEYS:
            self.events.put(OPERATOR_KEYS[key])

    def help(self) -> str:
        return f"move the leader arm by hand; {operator_help()}"

    def begin(self, present: np.ndarray) -> None:
        pass

    def read(self) -> np.ndarray:
        if not self._connected:
            raise HardwareError("leader arm is not connected; call connect() first")
        ticks = self._bus.sync_read("Present_Position", self.leader.ids)
        return self.leader.ticks_to_values(ticks)

    def target(self, present: np.ndarray) -> np.ndarray:
        return self.read()[self._order]


# `teleop=` (record) and `operator=` (the robot env) name one of these; each builds itself from the
# follower's config and the leader's settings (`named`).
OPERATORS = {"keyboard": KeyboardTeleop, "leader": LeaderFollower}


def make_operator(kind: str, follower: ArmConfig, key: str = "operator", **leader):
    """`teleop=` / `operator=` name -> the device the operator drives `follower` with; key: the option
    that named it (for the error); leader: the leader arm's `leader`, `leader_port`,
    `leader_calibration` (read by the kinds that have one)."""
    if kind not in OPERATORS:
        raise ConfigError(f"{key}={kind!r}: pass one of {', '.join(OPERATORS)}{did_you_mean(kind, OPERATORS)}")
    return OPERATORS[kind].named(follower, **leader)
