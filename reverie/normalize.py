"""Per-key normalisation of actions and states: store units <-> the units models see.

Stores keep actions and states in the robot's own units (radians, pixels, servo ticks); models see
them normalised per key (docs: DESIGN.md, "Units"):

    minmax     onto [-1, 1] from the data's per-dimension min and max (bounded and absolute-position
               actions); a dimension with zero range maps to 0 and back to its constant value
    meanstd    (x - mean) / std (states); a dimension with zero std is only centred
    identity   unchanged (data already in the model's units, e.g. sim stores' normalised commands)

    norm = Normalizer.from_json(info.get("normalizer"))  # None (an old checkpoint): identity
    a_model = norm.normalize("action", a_robot)           # numpy or torch, any leading shape
    a_robot = norm.denormalize("action", a_model)

A key without an entry is identity. The JSON form is plain numbers (no pickle); it travels in every
world-model checkpoint (trainer.json), agent checkpoint (agent.json), scratch-BC checkpoint and
bundle manifest. Numpy only at import: the torch-free runtime (runtime/bundle.py) uses this module.
Built from episode stores by reverie.datasets.normalize.from_stores.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FORMAT = "reverie-normalizer/1"
MODES = ("minmax", "meanstd", "identity")
EPS = 1e-6          # ranges and stds below this count as zero
KEYS = ("action", "state")


class Normalizer:
    """key -> affine map x_model = (x - offset) / scale, per feature dimension."""

    def __init__(self, entries: dict[str, dict] | None = None):
        self.entries: dict[str, dict] = {}
        for key, entry in (entries or {}).items():
            self.set(key, entry)

    # ----- construction ---------------------------------------------------------------------------
    def set(self, key: str, entry: dict) -> None:
        """entry: {"mode": "identity"} | {"mode": "minmax", "min": [...], "max": [...]}
        | {"mode": "meanstd", "mean": [...], "std": [...]}."""
        mode = entry.get("mode", "identity")
        if mode not in MODES:
            raise ValueError(f"normaliser mode {mode!r} for {key!r}: choose one of {', '.join(MODES)}")
        if mode == "identity":
            self.entries[key] = {"mode": "identity"}
            return
        a, b = ("min", "max") if mode == "minmax" else ("mean", "std")
        first = np.asarray(entry[a], np.float64).reshape(-1)
        second = np.asarray(entry[b], np.float64).reshape(-1)
        if first.shape != second.shape or not (np.all(np.isfinite(first)) and np.all(np.isfinite(second))):
            raise ValueError(f"normaliser entry {key!r}: {a} and {b} must be finite and of one size")
        if mode == "minmax":
            offset = (first + second) / 2
            half = (second - first) / 2
            scale = np.where(half > EPS, half, 1.0)
        else:
            offset, scale = first, np.where(second > EPS, second, 1.0)
        self.entries[key] = {"mode": mode, a: first, b: second, "offset": offset, "scale": scale}

    @classmethod
    def identity(cls) -> "Normalizer":
        return cls()

    # ----- queries --------------------------------------------------------------------------------
    def mode(self, key: str) -> str:
        return self.entries.get(key, {"mode": "identity"})["mode"]

    @property
    def is_identity(self) -> bool:
        return all(e["mode"] == "identity" for e in self.entries.values())

    def bounds(self, key: str, dim: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """(low, high) in store units of the model's [-1, 1] (minmax keys; identity: -1 and 1 per
        `dim`); None for meanstd keys, which have no bound."""
        mode = self.mode(key)
        if mode == "meanstd":
            return None
        if mode == "identity":
            n = 1 if dim is None else dim
            return np.full(n, -1.0, np.float32), np.full(n, 1.0, np.float32)
        e = self.entries[key]
        return e["min"].astype(np.float32), e["max"].astype(np.float32)

    # ----- the maps -------------------------------------------------------------------------------
    def normalize(self, key: str, x):
        """Store units -> model units. numpy (returned float32) or a torch tensor (same dtype/device)."""
        return self._map(key, x, inverse=False)

    def denormalize(self, key: str, x):
        """Model units -> store units (the inverse of normalize)."""
        return self._map(key, x, inverse=True)

    def _map(self, key: str, x, inverse: bool):
        e = self.entries.get(key)
        if e is None or e["mode"] == "identity":
            return x if _is_tensor(x) else np.asarray(x, np.float32)
        offset, scale = _like(e["offset"], x), _like(e["scale"], x)
        value = x if _is_tensor(x) else np.asarray(x, np.float64)  # numpy maps in float64, returns float32
        out = value * scale + offset if inverse else (value - offset) / scale
        return out if _is_tensor(x) else out.astype(np.float32)

    def batch(self, batch: dict) -> dict:
        """Normalise a batch's (or an episode's) "state" and "action" in place and return it. Rows with
        `action_mask` False keep action 0 (no action is known there)."""
        if "state" in batch:
            batch["state"] = self.normalize("state", batch["state"])
        if "action" in batch and self.mode("action") != "identity":
            action = self.normalize("action", batch["action"])
            mask = batch.get("action_mask")
            if mask is not None:
                if _is_tensor(action):
                    action = action * mask[..., None].to(action.dtype)
                else:
                    action = action * np.asarray(mask, bool)[..., None]
            batch["action"] = action
        return batch

    # ----- JSON -----------------------------------------------------------------------------------
    def to_json(self) -> dict:
        keys = {}
        for key, e in self.entries.items():
            if e["mode"] == "identity":
                keys[key] = {"mode": "identity"}
            else:
                a, b = ("min", "max") if e["mode"] == "minmax" else ("mean", "std")
                keys[key] = {"mode": e["mode"], a: e[a].tolist(), b: e[b].tolist()}
        return {"format": FORMAT, "keys": keys}

    @classmethod
    def from_json(cls, data: dict | None) -> "Normalizer":
        """None or {} (a checkpoint or bundle written before normalisation existed): identity."""
        if not data:
            return cls()
        if data.get("format", FORMAT) != FORMAT:
            raise ValueError(f"normaliser format {data.get('format')!r}, this version reads {FORMAT!r}")
        return cls(data.get("keys", {}))

    def describe(self) -> str:
        return ", ".join(f"{k}: {e['mode']}" for k, e in sorted(self.entries.items())) or "identity"

    def __repr__(self) -> str:
        return f"Normalizer({self.describe()})"


def _is_tensor(x: Any) -> bool:
    return not isinstance(x, np.ndarray) and hasattr(x, "device") and hasattr(x, "dtype")


def _like(v: np.ndarray, x):
    if _is_tensor(x):
        import torch  # only reached with a tensor, so torch is already loaded

        return torch.as_tensor(v, dtype=x.dtype if x.is_floating_point() else torch.float32, device=x.device)
    return v
