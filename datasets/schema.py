"""The episode schema: which keys a store holds, their per-step shape, dtype and units.

A schema is a plain `dict[str, ArraySpec]` (no time axis). It is written to the store's root attrs
as JSON next to `SCHEMA_VERSION`, so any zarr reader can recover it without importing reverie.

Row convention (CONTRIBUTING.md): row t holds observation o_t, `reward` r_t received on arriving at
o_t (0 on the first row), the flags of o_t, `timestamp` measured when o_t was captured, and the
action a_t sent after seeing o_t, with `action_mask` False where no action is known (video frames,
the final row).

Privileged keys. `privileged/<name>` keys are sim-only ground truth that no camera or sensor gives a
real robot: `privileged/objects` float32 (3 * cubes,) the cubes' xyz in metres, world frame, in the
sim's cube order (red, green, blue), and `privileged/target` float32 (3,) the instruction's target
cube xyz. They are low-dim data to the store and the sampler (only `image/*` keys are images) and are
recorded for measurement only (world_model/probe.py: do the features carry the objects?); they are
never given to a policy or a world model as input. Stores without them (real robots, imports, older
sim stores) are valid; readers that need them check `has_privileged(schema)` and skip otherwise.
"""

from __future__ import annotations

import numpy as np

from reverie.errors import StoreError
from reverie.specs import ArraySpec

# Bump when the on-disk layout changes in a way older readers would misread. Readers refuse stores
# with a larger version instead of guessing.
SCHEMA_VERSION = 1

SOURCES = ("teleop", "policy", "correction", "video", "scripted")

# Keys every reverie store carries besides cameras, state and action. Importers of foreign data fill
# them too (e.g. reward 0, action_mask False) so models never special-case a store.
FLAG_KEYS = ("is_first", "is_last", "is_terminal")

PRIVILEGED = "privileged/"  # key prefix of sim-only ground truth (module docstring)
PRIVILEGED_OBJECTS, PRIVILEGED_TARGET = "privileged/objects", "privileged/target"


def is_image_key(key: str) -> bool:
    return key.startswith("image/")


def is_privileged_key(key: str) -> bool:
    return key.startswith(PRIVILEGED)


def privileged_specs(objects: tuple[str, ...]) -> dict[str, ArraySpec]:
    """The privileged keys of a sim scene with these cubes (names in the order they are stored)."""
    if not objects:
        raise StoreError("privileged_specs needs at least one object name, e.g. ('red', 'green', 'blue')")
    return {
        PRIVILEGED_OBJECTS: ArraySpec((3 * len(objects),), "float32",
                                      units=f"m, world frame: xyz of the {', '.join(objects)} cubes, in that order"),
        PRIVILEGED_TARGET: ArraySpec((3,), "float32", units="m, world frame: xyz of the instruction's target cube"),
    }


def has_privileged(schema: dict[str, ArraySpec]) -> bool:
    return PRIVILEGED_OBJECTS in schema and PRIVILEGED_TARGET in schema


def privileged_row(info) -> dict[str, np.ndarray]:
    """A timestep's `info["privileged"]` ({name: array}, sim envs) -> {"privileged/<name>": float32
    array} store columns; {} when the env reports none (real robots, other sims)."""
    values = (info or {}).get("privileged") or {}
    return {f"{PRIVILEGED}{name}": np.asarray(v, np.float32) for name, v in values.items()}


def make_schema(cameras: dict[str, tuple[int, int]], state_dim: int, action_dim: int) -> dict[str, ArraySpec]:
    """Standard schema: one uint8 (H, W, 3) key per camera, state, action and the row bookkeeping.

    cameras: {"front": (H, W), ...}. state_dim and action_dim are >= 1: video-only episodes keep the
    arm's dimensions with zero state and action_mask False, so they mix with robot data in one batch.
    """
    if state_dim < 1 or action_dim < 1:
        raise StoreError(f"state_dim and action_dim must be >= 1, got {state_dim} and {action_dim}; "
                         "for video-only data use the arm's dimensions and action_mask=False")
    schema: dict[str, ArraySpec] = {}
    for name, hw in sorted(cameras.items()):
        if not name or "/" in name or len(hw) != 2 or min(hw) < 1:
            raise StoreError(f"camera {name!r}: expected a plain name and (H, W) >= 1, got {hw!r}")
        schema[f"image/{name}"] = ArraySpec((int(hw[0]), int(hw[1]), 3), "uint8", 0, 255, "rgb")
    schema["state"] = ArraySpec((state_dim,), "float32", units="rad; gripper opening in [0, 1]")
    schema["action"] = ArraySpec((action_dim,), "float32", -1.0, 1.0, "normalised command")
    schema["action_mask"] = ArraySpec((), "bool", units="True where the action is known")
    schema["reward"] = ArraySpec((), "float32", units="reward received on arriving at this row")
    for flag in FLAG_KEYS:
        schema[flag] = ArraySpec((), "bool")
    schema["timestamp"] = ArraySpec((), "float64", units="s, measured at capture")
    return schema


def check_schema(schema: dict[str, ArraySpec]) -> dict[str, ArraySpec]:
    """Validate a user-supplied schema; the store relies on the flag keys to find episode bounds."""
    if not isinstance(schema, dict) or not schema:
        raise StoreError("schema must be a non-empty dict key -> ArraySpec; build one with make_schema()")
    for key, spec in schema.items():
        if not isinstance(spec, ArraySpec):
            raise StoreError(f"schema[{key!r}] is {type(spec).__name__}, expected reverie.specs.ArraySpec")
        if is_image_key(key) and (spec.dtype != "uint8" or len(spec.shape) != 3 or spec.shape[2] != 3):
            raise StoreError(f"{key}: image keys must be uint8 (H, W, 3), got {spec.dtype} {spec.shape}")
    missing = [k for k in ("is_first", "is_last", "action_mask", "timestamp") if k not in schema]
    if missing:
        raise StoreError(f"schema lacks {missing}; start from make_schema() and add keys to it")
    return schema


def schema_to_json(schema: dict[str, ArraySpec]) -> dict:
    return {key: spec.to_json() for key, spec in schema.items()}


def schema_from_json(data: dict) -> dict[str, ArraySpec]:
    return {key: ArraySpec.from_json(spec) for key, spec in data.items()}
