"""Calibration data: the middle pose and range of motion of each joint, measured in servo ticks.

The calibration is stored in a JSON file next to the user's data, never written into the servos'
EEPROM: re-running it is harmless, and the same servos can serve two arm configs. `config.py`
applies it (`calibration=calib.json`) over the nominal `zero_ticks` / `range_ticks` in the arm YAML.

    {"arm": "so101", "protocol": "feetech", "created": "...",
     "joints": {"shoulder_pan": {"id": 1, "zero_ticks": 2051, "range_ticks": [812, 3290]}, ...}}

Limits of the method: a joint's range must not cross the encoder seam (tick 4095 -> 0). Mounted
as shipped, no SO-101 or Koch joint does; `RangeRecorder` detects a crossing and says so.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from reverie.errors import ConfigError, HardwareError
from reverie.robot_io.config import TICKS_PER_TURN, ArmConfig

MIN_SPAN_TICKS = 200  # ~18 degrees: less means the joint was not moved through its range
SEAM_JUMP_TICKS = TICKS_PER_TURN // 2  # a jump this large between two polls is a wrap, not motion


def read_ticks(bus, arm: ArmConfig) -> dict[int, int]:
    return {int(k): int(v) for k, v in bus.sync_read("Present_Position", arm.ids).items()}


class RangeRecorder:
    """Tracks each joint's lowest and highest tick reading while the operator moves the arm."""

    def __init__(self, arm: ArmConfig):
        self.arm = arm
        self.lo: dict[int, int] = {}
        self.hi: dict[int, int] = {}
        self._last: dict[int, int] = {}
        self.samples = 0

    def add(self, ticks: dict[int, int]) -> None:
        for j in self.arm.joints:
            t = int(ticks[j.id])
            previous = self._last.get(j.id)
            if previous is not None and abs(t - previous) > SEAM_JUMP_TICKS:
                raise HardwareError(
                    f"joint {j.name} (id {j.id}) crossed the encoder seam (tick {previous} -> {t}): its "
                    f"range wraps past 4095, which this calibration cannot represent; re-seat the horn "
                    f"so the joint's middle reads near 2048 and calibrate again")
            self._last[j.id] = t
            self.lo[j.id] = min(t, self.lo.get(j.id, t))
            self.hi[j.id] = max(t, self.hi.get(j.id, t))
        self.samples += 1


def make_calibration(arm: ArmConfig, middle: dict[int, int], ranges: RangeRecorder) -> dict:
    """Check the measurements and build the calibration dict; errors name the joint and the redo."""
    if ranges.samples < 2:
        raise HardwareError("no range-of-motion samples were read: keep the arm connected while moving it")
    joints = {}
    for j in arm.joints:
        lo, hi = ranges.lo[j.id], ranges.hi[j.id]
        if hi - lo < MIN_SPAN_TICKS:
            raise HardwareError(
                f"joint {j.name} (id {j.id}) moved only {hi - lo} ticks ({lo}..{hi}) during the range step: "
                f"move every joint from one end stop to the other, then run `reverie robot calibrate` again")
        zero = int(middle[j.id])
        if not j.gripper and not lo <= zero <= hi:
            raise HardwareError(
                f"joint {j.name} (id {j.id}): the middle pose reading {zero} lies outside the range "
                f"{lo}..{hi} measured afterwards; the arm moved between steps, calibrate again")
        joints[j.name] = {"id": j.id, "zero_ticks": zero, "range_ticks": [int(lo), int(hi)]}
    return {"arm": arm.name, "protocol": arm.protocol,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "joints": joints}


def save_calibration(calibration: dict, path: str | Path) -> Path:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(calibration, indent=2) + "\n")
    tmp.replace(path)  # atomic: a crash never leaves a half-written calibration behind
    return path


def load_calibration(path: str | Path, arm: ArmConfig | None = None) -> dict:
    path = Path(path).expanduser()
    again = f"calibrate again (`reverie robot calibrate out={path}`)"
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"calibration file {path} not found; run `reverie robot calibrate out={path}`") from None
    except IsADirectoryError:
        raise ConfigError(f"calibration={path} is a folder; pass the calibration JSON file inside it") from None
    except OSError as e:
        raise ConfigError(f"cannot read calibration file {path} ({e.strerror}); check its permissions") from e
    except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for a binary file
        raise ConfigError(f"calibration file {path} is not valid JSON ({str(e)[:80]}); {again}") from e
    problem = _layout_problem(data)
    if problem:
        raise ConfigError(f"calibration file {path} {problem}; {again}")
    if arm is not None:
        missing = [n for n in arm.names if n not in data.get("joints", {})]
        if missing:
            raise ConfigError(f"calibration {path} has no entry for joints {missing} of arm {arm.name!r}; "
                              f"was it made for another arm? Calibrate this one")
    return data


def _layout_problem(data) -> str | None:
    """What is wrong with a parsed calibration's layout (the module docstring's), or None."""
    if not isinstance(data, dict) or not isinstance(data.get("joints"), dict):
        return "has no `joints` mapping (joint name -> zero_ticks, range_ticks)"

    def ticks(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < TICKS_PER_TURN

    for name, joint in data["joints"].items():
        pair = joint.get("range_ticks") if isinstance(joint, dict) else None
        if not (isinstance(joint, dict) and ticks(joint.get("zero_ticks")) and isinstance(pair, list)
                and len(pair) == 2 and all(map(ticks, pair))):
            return (f"has a bad entry for joint {name!r} ({json.dumps(joint)[:60]}): expected zero_ticks and "
                    f"range_ticks [low, high], whole ticks 0..{TICKS_PER_TURN - 1}")
    return None
