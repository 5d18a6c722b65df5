"""Arm configuration: servos, calibration, limits, action scaling and poses, loaded from YAML.

One `ArmConfig` describes one physical arm (SO-101, Koch, or their virtual twins in `reverie sim
serve-bus`). Units: joint values are radians, except the gripper, whose value is its opening in
[0, 1] (0 closed). Servo positions are ticks, 4096 per turn.

Calibration maps ticks to joint values: `zero_ticks` is the reading at 0 rad (the middle pose the
calibration command records), `range_ticks` the reading at the two mechanical ends. A calibration
JSON written by `reverie robot calibrate` overrides those two fields per joint.

Everything is validated at load time so a bad file fails before torque is ever enabled, with a
message that names the joint and the key to fix.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from reverie.errors import ConfigError, did_you_mean
from reverie.robot_io import servo_families

TICKS_PER_TURN = 4096
RAD_PER_TICK = 2 * math.pi / TICKS_PER_TURN
# Found through the package, not this file's folder: in a checkout robot_io/ sits beside reverie/, in
# an installed wheel it is reverie/robot_io/.
CONF_DIR = Path(importlib.util.find_spec("reverie.conf").origin).parent / "robot"
ACTION_MODES = ("delta", "absolute")


@dataclasses.dataclass(frozen=True)
class JointConfig:
    name: str
    id: int
    model: str
    limits: tuple[float, float]        # allowed joint values (rad; gripper opening)
    max_velocity: float                # per second, same unit as limits
    max_step: float                    # largest |goal - present| sent in one command
    action_scale: float                # delta mode: joint change for action 1.0
    direction: int = 1                 # -1 where the servo turns against the joint convention
    zero_ticks: int = TICKS_PER_TURN // 2
    range_ticks: tuple[int, int] = (0, TICKS_PER_TURN - 1)
    gripper: bool = False

    def to_value(self, ticks: float) -> float:
        """Servo ticks -> joint radians (or gripper opening in [0, 1])."""
        if self.gripper:
            lo, hi = self.range_ticks
            opening = (ticks - lo) / (hi - lo)
            return float(opening if self.direction > 0 else 1.0 - opening)
        return float(self.direction * (ticks - self.zero_ticks) * RAD_PER_TICK)

    def to_ticks(self, value: float) -> int:
        """Joint value -> servo ticks, kept inside the calibrated mechanical range."""
        lo, hi = self.range_ticks
        if self.gripper:
            opening = value if self.direction > 0 else 1.0 - value
            ticks = lo + opening * (hi - lo)
        else:
            ticks = self.zero_ticks + self.direction * value / RAD_PER_TICK
        return int(np.clip(round(ticks), lo, hi))

    def calibrated_span(self) -> tuple[float, float]:
        """Joint values reachable inside the calibrated tick range."""
        a, b = self.to_value(self.range_ticks[0]), self.to_value(self.range_ticks[1])
        return min(a, b), max(a, b)


@dataclasses.dataclass(frozen=True)
class ArmConfig:
    name: str
    protocol: str
    joints: tuple[JointConfig, ...]
    port: str | None = None
    baudrate: int = 1_000_000
    timeout_s: float = 0.02
    retries: int = 2
    control_hz: float = 30.0
    action_mode: str = "delta"
    home_pose: tuple[float, ...] = ()  # where reset() brings the arm before an episode
    safe_pose: tuple[float, ...] = ()  # where the arm rests unpowered without falling
    watchdog_s: float = 0.25           # hold position when no command arrives for this long
    settle_tol: float = 0.05           # pose moves end when every joint is this close
    # A position read that loses a servo's reply after every retry holds the last goal for a step;
    # the run stops only when more than this share of the last `fault_window` reads failed.
    max_fault_rate: float = 0.1
    fault_window: int = 30
    cameras: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [j.name for j in self.joints]

    @property
    def ids(self) -> list[int]:
        return [j.id for j in self.joints]

    def vector(self, attr: str) -> np.ndarray:
        return np.array([getattr(j, attr) for j in self.joints], np.float64)

    @property
    def lower(self) -> np.ndarray:
        return np.array([j.limits[0] for j in self.joints], np.float64)

    @property
    def upper(self) -> np.ndarray:
        return np.array([j.limits[1] for j in self.joints], np.float64)

    def to_dict(self) -> dict:
        """Plain data (JSON/YAML-ready, calibration included); `arm_from_mapping` reads it back.
        For bundle manifests and run records, so a deployment knows the exact limits it ran with."""
        data = dataclasses.asdict(self)
        data["joints"] = [{**j, "limits": list(j["limits"]), "range_ticks": list(j["range_ticks"])}
                          for j in data["joints"]]
        data.update(home_pose=list(self.home_pose), safe_pose=list(self.safe_pose), cameras=dict(self.cameras))
        return data

    def ticks_to_values(self, ticks: Mapping[int, float]) -> np.ndarray:
        return np.array([j.to_value(ticks[j.id]) for j in self.joints], np.float64)

    def values_to_ticks(self, values: np.ndarray) -> dict[int, int]:
        return {j.id: j.to_ticks(float(v)) for j, v in zip(self.joints, values)}


def _pair(value, what: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{what}: expected a pair [low, high], got {value!r}") from e
    return a, b


def _joint(raw: Mapping[str, Any], arm: str, defaults: Mapping[str, Any]) -> JointConfig:
    raw = {**defaults, **raw}
    name = raw.get("name") or "?"
    where = f"arm {arm!r}, joint {name!r}"
    missing = [k for k in ("name", "id", "model", "limits", "max_velocity", "max_step", "action_scale")
               if raw.get(k) is None]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}; add them under joints in the arm YAML")
    lo, hi = _pair(raw["limits"], f"{where}: limits")
    if not lo < hi:
        raise ConfigError(f"{where}: limits are inverted or empty ([{lo}, {hi}]); "
                          f"the lower limit must be below the upper one, swap them in the arm YAML")
    rlo, rhi = (int(v) for v in _pair(raw.get("range_ticks", (0, TICKS_PER_TURN - 1)), f"{where}: range_ticks"))
    number = lambda key, default=None: _number(raw, key, default, where)
    if not 0 <= rlo < rhi < TICKS_PER_TURN:
        raise ConfigError(f"{where}: range_ticks [{rlo}, {rhi}] must satisfy 0 <= low < high < "
                          f"{TICKS_PER_TURN}; re-run `reverie robot calibrate`")
    direction = number("direction", 1)
    if direction not in (1, -1):
        raise ConfigError(f"{where}: direction must be 1 or -1, got {direction}")
    for key in ("max_velocity", "max_step", "action_scale"):
        if not number(key) > 0:
            raise ConfigError(f"{where}: {key} must be positive, got {raw[key]}")
    joint = JointConfig(
        name=str(name), id=int(number("id")), model=str(raw["model"]).lower(), limits=(lo, hi),
        max_velocity=number("max_velocity"), max_step=number("max_step"),
        action_scale=number("action_scale"), direction=int(direction),
        zero_ticks=int(number("zero_ticks", TICKS_PER_TURN // 2)), range_ticks=(rlo, rhi),
        gripper=bool(raw.get("gripper", False)))
    if joint.gripper and not (0.0 <= lo and hi <= 1.0):
        raise ConfigError(f"{where}: a gripper's limits are openings within [0, 1], got [{lo}, {hi}]")
    span = joint.calibrated_span()
    if hi < span[0] or lo > span[1]:
        raise ConfigError(f"{where}: limits [{lo:.3f}, {hi:.3f}] lie outside the calibrated range "
                          f"[{span[0]:.3f}, {span[1]:.3f}]; fix the limits or re-run `reverie robot calibrate`")
    return joint


def _pose(raw, joints: tuple[JointConfig, ...], arm: str, key: str) -> tuple[float, ...]:
    if raw is None:  # default: the middle of each joint's limits
        return tuple((j.limits[0] + j.limits[1]) / 2 for j in joints)
    if isinstance(raw, Mapping):
        unknown = set(raw) - {j.name for j in joints}
        if unknown:
            raise ConfigError(f"arm {arm!r}: {key} names unknown joints {sorted(unknown)}")
        raw = [raw.get(j.name, (j.limits[0] + j.limits[1]) / 2) for j in joints]
    try:
        pose = tuple(float(v) for v in raw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"arm {arm!r}: {key}={raw!r} must be a list of numbers, one per joint") from e
    if len(pose) != len(joints):
        raise ConfigError(f"arm {arm!r}: {key} has {len(pose)} values for {len(joints)} joints")
    for j, v in zip(joints, pose):
        if not j.limits[0] <= v <= j.limits[1]:
            raise ConfigError(f"arm {arm!r}: {key} puts joint {j.name!r} at {v:.3f}, outside its limits "
                              f"[{j.limits[0]:.3f}, {j.limits[1]:.3f}]; move the pose or widen the limits")
    return pose


def arm_from_mapping(raw: Mapping[str, Any], calibration: Mapping[str, Any] | None = None) -> ArmConfig:
    """Build and validate an ArmConfig from a plain or OmegaConf mapping (the arm YAML)."""
    raw = _plain(raw)
    name = str(raw.get("name", "arm"))
    protocol = str(raw.get("protocol", "")).lower()
    if servo_families.find(protocol) is None:  # the families robot_io knows (robot_io/servo_families.py)
        raise ConfigError(f"arm {name!r}: protocol must be one of {servo_families.names()}, got {protocol!r}")
    mode = str(raw.get("action_mode", "delta"))
    if mode not in ACTION_MODES:
        raise ConfigError(f"arm {name!r}: action_mode must be one of {ACTION_MODES}, got {mode!r}")
    joints_raw = raw.get("joints") or []
    if not joints_raw:
        raise ConfigError(f"arm {name!r}: no joints listed; add a `joints:` list to the arm YAML")
    if not isinstance(joints_raw, list) or not all(isinstance(j, Mapping) for j in joints_raw):
        raise ConfigError(f"arm {name!r}: `joints` must be a list of mappings ({{name: ..., id: ...}}), got "
                          f"{str(joints_raw)[:60]}; fix the arm YAML")
    calibration = calibration if calibration is not None else _calibration_file(raw.get("calibration"))
    if calibration is not None:
        uncalibrated = [j.get("name") for j in joints_raw if j.get("name") not in calibration.get("joints", {})]
        if uncalibrated:
            raise ConfigError(f"arm {name!r}: the calibration has no entry for joints {uncalibrated}; was it "
                              f"made for another arm? Run `reverie robot calibrate` for this one")
    defaults = raw.get("joint_defaults") or {}
    joints = []
    for j in joints_raw:
        j = dict(j)
        cal = (calibration or {}).get("joints", {}).get(j.get("name"))
        if cal:  # measured values win over the YAML's nominal ones
            j.update(zero_ticks=cal["zero_ticks"], range_ticks=cal["range_ticks"])
        joints.append(_joint(j, name, defaults))
    joints = tuple(joints)
    for attr in ("id", "name"):
        values = [getattr(j, attr) for j in joints]
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise ConfigError(f"arm {name!r}: joint {attr}s {dupes} appear more than once")
    control_hz = _number(raw, "control_hz", 30.0, f"arm {name!r}")
    if not 0 < control_hz <= 1000:
        raise ConfigError(f"arm {name!r}: control_hz must be in (0, 1000], got {control_hz}")
    where = f"arm {name!r}"
    max_fault_rate, fault_window = _number(raw, "max_fault_rate", 0.1, where), _number(raw, "fault_window", 30, where)
    if not 0 <= max_fault_rate < 1:
        raise ConfigError(f"arm {name!r}: max_fault_rate={max_fault_rate:g} must be in [0, 1): the share of "
                          f"recent position reads allowed to fail (0.1: 3 of 30)")
    if fault_window < 1 or fault_window != int(fault_window):
        raise ConfigError(f"arm {name!r}: fault_window={fault_window:g} must be a whole number of reads >= 1")
    return ArmConfig(
        name=name, protocol=protocol, joints=joints, port=raw.get("port"),
        baudrate=int(_number(raw, "baudrate", 1_000_000, where)), timeout_s=_number(raw, "timeout_s", 0.02, where),
        retries=int(_number(raw, "retries", 2, where)), control_hz=control_hz, action_mode=mode,
        home_pose=_pose(raw.get("home_pose"), joints, name, "home_pose"),
        safe_pose=_pose(raw.get("safe_pose"), joints, name, "safe_pose"),
        watchdog_s=_number(raw, "watchdog_s", 0.25, where), settle_tol=_number(raw, "settle_tol", 0.05, where),
        max_fault_rate=max_fault_rate, fault_window=int(fault_window), cameras=dict(raw.get("cameras") or {}))


def _number(raw: Mapping[str, Any], key: str, default: float | None, where: str) -> float:
    value = raw.get(key, default)
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {key}={value!r} must be a number; fix it in the arm YAML") from e


def load_arm(name_or_path: str | Path, **overrides) -> ArmConfig:
    """An arm config by shipped name (`reverie/conf/robot/<name>.yaml`) or by YAML path; either may
    start from others with a `defaults` list (see `read_arm_yaml`). Keyword overrides that are not
    None replace top-level keys."""
    raw = read_arm_yaml(name_or_path)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return arm_from_mapping(raw)


def arm_from_command(cfg) -> ArmConfig:
    """The arm of a command config: the `robot` group (`robot=koch robot.port=...`), or
    `robot_file=my_arm.yaml`, with the top-level shortcuts `port=`, `baudrate=`, `calibration=`."""
    raw = read_arm_yaml(Path(cfg.robot_file)) if cfg.get("robot_file") else _plain(cfg.robot)
    for key in ("port", "baudrate", "calibration"):
        if cfg.get(key) is not None:
            raw[key] = cfg[key]
    return arm_from_mapping(raw)


def read_arm_yaml(name_or_path: str | Path) -> dict:
    """The raw mapping of an arm config, by shipped name or by YAML path, without hydra (the torch-free
    runtime reads the robot's own config with it). One inheritance mechanism for both, hydra's: a
    `defaults` list of shipped names or YAML paths (relative to the file), merged in order with
    `_self_` (implicitly last) where the file's own keys apply; mappings merge, lists replace."""
    path = Path(str(name_or_path))
    is_file = isinstance(name_or_path, Path) or path.suffix in (".yaml", ".yml") or path.exists()
    return _merged(path if is_file else str(name_or_path), 0)


def _merged(source: Path | str, depth: int) -> dict:
    if depth > 8:
        raise ConfigError(f"arm config {source}: its defaults lists nest more than 8 deep (a loop?); fix them")
    own = _shipped_file(source) if isinstance(source, str) else _user_file(source)
    defaults = own.pop("defaults", None) or []
    if not isinstance(defaults, list):
        raise ConfigError(f"arm config {source}: `defaults` must be a list of arm names or YAML paths, e.g. "
                          f"`defaults: [so101]`")
    if "_self_" not in defaults:
        defaults = [*defaults, "_self_"]
    merged: dict = {}
    for entry in map(str, defaults):
        if entry.endswith((".yaml", ".yml")):  # a path, relative to the file that names it
            entry = Path(entry) if isinstance(source, str) else source.parent / entry
        _merge(merged, own if entry == "_self_" else _merged(entry, depth + 1))
    return merged


def _merge(into: dict, new: Mapping) -> dict:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value
    return into


def _shipped_file(name: str) -> dict:
    import yaml

    known = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
    if name not in known:
        raise ConfigError(f"arm config {name!r} not found{did_you_mean(name, known)}: use one of {known} or a YAML path")
    return yaml.safe_load((CONF_DIR / f"{name}.yaml").read_text()) or {}


def _user_file(path: Path) -> dict:
    """A user's arm YAML, checked to be a mapping."""
    import yaml

    if not path.exists():
        raise ConfigError(f"arm config {path} not found; check the path or use a shipped arm by name "
                          f"({sorted(p.stem for p in CONF_DIR.glob('*.yaml'))})")
    try:
        raw = yaml.safe_load(path.read_bytes()) or {}
    except IsADirectoryError:
        raise ConfigError(f"arm config {path} is a folder; pass the arm YAML file") from None
    except (yaml.YAMLError, ValueError) as e:  # ValueError: not text (UnicodeDecodeError)
        raise ConfigError(f"arm config {path} is not valid YAML ({str(e).splitlines()[0][:80]}); fix or "
                          "replace the file") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"arm config {path} holds a {type(raw).__name__}, not a mapping of arm settings "
                          "(name, protocol, joints, ...); fix the file or start it with `defaults: [<arm name>]`")
    if "base" in raw:
        raise ConfigError(f"arm config {path}: `base: {raw['base']}` is now written `defaults: [{raw['base']}]` "
                          "(the shipped configs' mechanism: mappings such as cameras merge, lists replace); "
                          "edit the file")
    return raw


def _calibration_file(path) -> dict | None:
    if not path:
        return None
    from reverie.robot_io.calibration import load_calibration  # it imports this module

    return load_calibration(path)


def _plain(raw) -> dict:
    # Only a mapping that came from omegaconf needs it; plain dicts (the torch-free runtime builds
    # arms from a bundle's manifest) must not import it.
    if type(raw).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf
        return OmegaConf.to_container(raw, resolve=True)
    return dict(raw)
