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
    """goal -> safe goal, per joint, satisfying three constraints at once:

        limits    lower <= out <= upper
        step      |out - present| <= max_step               (how hard the servo is driven)
        velocity  |out - previous_goal| <= max_velocity * dt (how fast the command moves)

    The output is the point nearest the (limit-clipped) goal where all three hold. When they cannot
    all hold, the safe choice, in this order:
    - step always holds: no command ever drives a servo more than max_step from where it is.
    - An arm outside its limits (moved by hand, limits narrowed by a bundle) is brought back toward
      them, at most a step (and, where it can, the velocity limit) per command, never yanked and never
      sent farther out. So `out` is inside the limits whenever the arm is.
    - If the velocity window around the previous goal lies beyond a step from the arm (the arm is
      blocked, lagging, or was pushed), that previous goal is stale: following it would drive the
      arm toward a goal it did not reach. The velocity limit is dropped for this command and the goal
      is taken within a step of the arm; the next command is continuous with this one again.
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
        wanted = np.clip(goal, self.lower, self.upper)
        # Within a step of the arm, inside the limits or between the arm and them: never empty.
        step_lo, step_hi = present - self.max_step, present + self.max_step
        lo = np.maximum(step_lo, np.minimum(self.lower, present))
        hi = np.minimum(step_hi, np.maximum(self.upper, present))
        vel_lo, vel_hi, meets = -np.inf, np.inf, np.zeros(goal.shape, bool)
        if previous_goal is not None and dt is not None and dt > 0:
            reach = self.max_velocity * dt
            previous_goal = np.asarray(previous_goal, np.float64)
            vel_lo, vel_hi = previous_goal - reach, previous_goal + reach
            meets = np.maximum(lo, vel_lo) <= np.minimum(hi, vel_hi)  # False: a stale previous goal
            lo = np.where(meets, np.maximum(lo, vel_lo), lo)
            hi = np.where(meets, np.minimum(hi, vel_hi), hi)
        out = np.clip(wanted, lo, hi)

        def bound(low, high):  # the constraint cut the goal and the output sits on its bound
            return (out != goal) & (((goal < low) & (out <= low)) | ((goal > high) & (out >= high)))

        return out, Clamped(limits=bound(self.lower, self.upper), step=bound(step_lo, step_hi),
                            velocity=meets & bound(vel_lo, vel_hi))


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
