"""Per-episode control-loop report: achieved rate, period jitter, dropped camera frames.

Computed from measured timestamps only, so a loop that silently falls behind (slow camera, slow
USB adapter, a busy CPU) shows up after every episode instead of in a model trained on it later.
"""

from __future__ import annotations

import dataclasses

import numpy as np

BELOW_TARGET = 0.95  # warn when the achieved rate is under 95 % of the target


@dataclasses.dataclass
class LoopReport:
    steps: int
    target_hz: float
    achieved_hz: float
    period_mean_ms: float
    period_std_ms: float
    period_p99_ms: float
    late_steps: int                 # periods over 1.5x the target period
    dropped_frames: dict[str, int]  # camera -> frames stale (older than one period) or repeated

    @property
    def below_target(self) -> bool:
        return self.achieved_hz < BELOW_TARGET * self.target_hz

    def lines(self) -> list[str]:
        drops = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped_frames.items())) or "no cameras"
        out = [f"{self.steps} steps at {self.achieved_hz:.1f} Hz (target {self.target_hz:g} Hz); period "
               f"{self.period_mean_ms:.1f} ms, jitter std {self.period_std_ms:.2f} ms, p99 "
               f"{self.period_p99_ms:.1f} ms; {self.late_steps} late steps; dropped frames: {drops}"]
        if self.below_target:
            out.append(f"WARNING: loop ran at {self.achieved_hz:.1f} Hz, below the {self.target_hz:g} Hz "
                       "target: lower fps, camera resolution, or close other programs; check the USB "
                       "latency timer (1 ms) and servo return delay (0)")
        if sum(self.dropped_frames.values()) > 0.05 * max(self.steps, 1):
            out.append("WARNING: over 5 % of camera frames were stale or repeated: the camera delivers "
                       "fewer frames than the loop rate; lower fps or the camera resolution")
        return out


def loop_report(timestamps, target_hz: float, frames: dict[str, list[tuple[int, float]]] | None = None) -> LoopReport:
    """timestamps: measured time of each step's observation (s). frames: camera -> [(index, age_s)]
    per step. A frame is dropped when its index repeats the previous step's or it is older than one
    target period when read."""
    t = np.asarray(timestamps, np.float64)
    periods = np.diff(t)
    target_period = 1.0 / target_hz
    if len(periods):
        achieved = len(periods) / max(t[-1] - t[0], 1e-9)
        mean, std, p99 = periods.mean(), periods.std(), np.percentile(periods, 99)
        late = int(np.sum(periods > 1.5 * target_period))
    else:
        achieved, mean, std, p99, late = 0.0, 0.0, 0.0, 0.0, 0
    dropped = {}
    for cam, seq in (frames or {}).items():
        count, previous = 0, None
        for index, age in seq:
            if (previous is not None and index == previous) or age > target_period:
                count += 1
            previous = index
        dropped[cam] = count
    return LoopReport(steps=len(t), target_hz=float(target_hz), achieved_hz=float(achieved),
                      period_mean_ms=1e3 * float(mean), period_std_ms=1e3 * float(std),
                      period_p99_ms=1e3 * float(p99), late_steps=late, dropped_frames=dropped)
