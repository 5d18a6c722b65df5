"""Safety between any command source and the servos: limits, step and velocity clamps, a watchdog.

Every goal the robot writes passes through `SafetyFilter.filter`. The watchdog runs beside the
control loop and holds the arm where it is when the loop stops commanding (a stalled policy, a
debugger breakpoint, a frozen camera read), instead of leaving an old far-away goal active.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Clamped:
    """Which joints each clamp changed in one command (for logs, tests and loop reports)."""

    limits: np.ndarray
    step: np.ndarray
    velocity: np.ndarray

    @property
    def any(self) -> bool:
        return bool(self.limits.any() or self.step.any() or self.velocity.any())


class SafetyFilter:
    """goal -> safe goal, per joint: inside [lower, upper], within `max_step` of the present position
    and within `max_velocity * dt` of the previous goal.

    Joint limits are applied first and the two distance clamps after, around where the arm is: if
    the arm sits outside its limits (moved by hand, limits tightened), it is brought back at the
    step and velocity limits instead of being yanked there in one command.
    """

    def __init__(self, lower, upper, max_step, max_velocity):
        self.lower = np.asarray(lower, np.float64)
        self.upper = np.asarray(upper, np.float64)
        self.max_step = np.asarray(max_step, np.float64)
        self.max_velocity = np.asarray(max_velocity, np.float64)

    @classmethod
    def from_arm(cls, arm) -> "SafetyFilter":
        return cls(arm.lower, arm.upper, arm.vector("max_step"), arm.vector("max_velocity"))

    def filter(self, goal, present, previous_goal=None, dt: float | None = None) -> tuple[np.ndarray, Clamped]:
        goal = np.asarray(goal, np.float64)
        present = np.asarray(present, np.float64)
        if not np.all(np.isfinite(goal)):
            # A NaN from a policy must never reach a servo: hold where the arm is.
            goal = np.where(np.isfinite(goal), goal, present)
        limited = np.clip(goal, self.lower, self.upper)
        stepped = np.clip(limited, present - self.max_step, present + self.max_step)
        out = stepped
        if previous_goal is not None and dt is not None and dt > 0:
            reach = self.max_velocity * dt
            previous_goal = np.asarray(previous_goal, np.float64)
            out = np.clip(stepped, previous_goal - reach, previous_goal + reach)
        return out, Clamped(limits=limited != goal, step=stepped != limited, velocity=out != stepped)


class Watchdog:
    """Calls `on_stall()` once when `kick()` has not been called for `timeout_s`, then waits for the
    next kick before it can fire again. `on_stall` runs on the watchdog's thread, so it must take
    whatever lock guards the bus."""

    def __init__(self, timeout_s: float, on_stall: Callable[[], None], name: str = "watchdog"):
        self.timeout_s = float(timeout_s)
        self.on_stall = on_stall
        self.stalls = 0
        self.error: BaseException | None = None
        self._last = time.monotonic()
        self._armed = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def kick(self) -> None:
        with self._lock:
            self._last = time.monotonic()
            self._armed = True

    def pause(self) -> None:
        """Stop watching until the next kick (between episodes, during blocking pose moves)."""
        with self._lock:
            self._armed = False

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        poll = min(self.timeout_s / 4, 0.02)
        while not self._stop.wait(poll):
            with self._lock:
                fire = self._armed and time.monotonic() - self._last > self.timeout_s
                if fire:
                    self._armed = False
            if fire:
                self.stalls += 1
                log.warning("control loop silent for over %.3f s: holding position", self.timeout_s)
                try:
                    self.on_stall()
                except Exception as e:  # kept for the control loop to raise; a thread can't
                    self.error = e
                    log.error("watchdog could not hold position: %s", e)
