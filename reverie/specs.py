"""Shared specs: array specs, the dm_env-style TimeStep, and the environment protocol.

Numpy only: the torch-free robot runtime imports this module.

Observation keys, everywhere (sim, robot, store, models):
  image/<camera>  uint8 (H, W, 3)     one key per camera, e.g. image/front, image/wrist
  state           float32 (J,)        joint positions in radians, gripper opening in [0, 1]
  instruction     str                 the task in plain language
Actions are float32 in [-1, 1], scaled per joint by the robot config.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Protocol

import numpy as np

from reverie.errors import ReverieError


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """Shape and dtype of one value per time step (no time axis)."""

    shape: tuple[int, ...]
    dtype: str
    minimum: float | None = None
    maximum: float | None = None
    units: str = ""

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)

    def validate(self, value: Any, name: str = "value") -> np.ndarray:
        value = np.asarray(value)
        if value.shape != self.shape:
            raise ReverieError(f"{name}: expected shape {self.shape}, got {value.shape}")
        if value.dtype != np.dtype(self.dtype):
            raise ReverieError(f"{name}: expected dtype {self.dtype}, got {value.dtype}")
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise ReverieError(f"{name}: contains NaN or Inf")
        return value

    def zeros(self) -> np.ndarray:
        return np.zeros(self.shape, self.dtype)

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: dict) -> "ArraySpec":
        return cls(**{**data, "shape": tuple(data["shape"])})


@dataclasses.dataclass(frozen=True)
class TextSpec:
    """A string observation (the instruction)."""

    max_chars: int = 512
    dtype: str = "str"

    def validate(self, value: Any, name: str = "instruction") -> str:
        if not isinstance(value, str):
            raise ReverieError(f"{name}: expected a string, got {type(value).__name__}")
        if len(value) > self.max_chars:
            raise ReverieError(f"{name}: {len(value)} characters, at most {self.max_chars} allowed")
        return value


Spec = ArraySpec | TextSpec


class StepType(enum.IntEnum):
    FIRST = 0
    MID = 1
    LAST = 2


@dataclasses.dataclass
class TimeStep:
    """dm_env-style time step. `discount` is 0 on a terminal step (task ended), 1 on a time limit.

    `info` carries extras that are not observations: `success` (bool), `timestamp` (seconds, measured
    when the observation was captured), `interrupted` and so on.
    """

    step_type: StepType
    reward: float
    discount: float
    observation: dict[str, Any]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def first(self) -> bool:
        return self.step_type == StepType.FIRST

    def mid(self) -> bool:
        return self.step_type == StepType.MID

    def last(self) -> bool:
        return self.step_type == StepType.LAST


class Env(Protocol):
    """One interface for sim tasks, gymnasium adapters, the virtual serial robot and the real arm."""

    def reset(self, *, seed: int | None = None, instruction: str | None = None) -> TimeStep: ...

    def step(self, action: np.ndarray) -> TimeStep: ...

    def observation_spec(self) -> dict[str, Spec]: ...

    def action_spec(self) -> ArraySpec: ...

    def close(self) -> None: ...


def image_keys(spec: dict[str, Any]) -> list[str]:
    """Camera keys of an observation spec or store schema, sorted (image/front before image/wrist)."""
    return sorted(k for k in spec if k.startswith("image/"))


def checked_action(name: str, action, shape: tuple) -> np.ndarray:
    """An env adapter's incoming action as float64, refused when its shape is wrong or it holds NaN/Inf."""
    from reverie.errors import ReverieError

    action = np.asarray(action, np.float64)
    if action.shape != tuple(shape):
        raise ReverieError(f"{name}: action shape {action.shape}, expected {tuple(shape)}")
    if not np.all(np.isfinite(action)):
        raise ReverieError(f"{name}: action contains NaN or Inf")
    return action
