"""The normaliser of a training run, from its episode stores' specs, statistics and config.

    norm = from_stores(stores, {"action": None, "state": None})   # train_wm.yaml `normalize:`

Modes per key (reverie/normalize.py): the action is `minmax` unless every store's action spec says it
is already a normalised command in [-1, 1] (make_schema's: sim, recorded robot data), then
`identity`; the state is `meanstd`. A config value overrides the default.

Statistics: the store's cached statistics (store.stats(), datasets/stats.py) cover every row, action
rows without a known action (zeros) included, so these are computed with the same stats.from_rows
over the rows that count: actions where `action_mask` is True, states of episodes that are not
action-free video (whose states are placeholders). The low-dimensional arrays are in memory already.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from reverie.datasets import stats as stats_lib
from reverie.errors import ConfigError
from reverie.normalize import MODES, Normalizer

__all__ = ["Normalizer", "from_stores", "action_is_normalised", "default_modes"]

log = logging.getLogger(__name__)
NORMALISED_UNITS = "normalised command"


def action_is_normalised(store) -> bool:
    """The store's action spec declares a normalised command in [-1, 1] (datasets/schema.py make_schema)."""
    spec = store.schema.get("action")
    return (spec is not None and spec.minimum == -1.0 and spec.maximum == 1.0
            and NORMALISED_UNITS in (spec.units or ""))


def default_modes(stores) -> dict[str, str]:
    return {"action": "identity" if stores and all(action_is_normalised(s) for s in stores) else "minmax",
            "state": "meanstd"}


def _modes(stores, config) -> dict[str, str]:
    modes = default_modes(stores)
    for key, value in dict(config or {}).items():
        if key not in modes:
            raise ConfigError(f"normalize.{key}: only {sorted(modes)} are normalised; remove it")
        if value is None:
            continue
        if str(value) not in MODES:
            raise ConfigError(f"normalize.{key}={value!r}: choose one of {', '.join(MODES)} (or null: the default, "
                              f"{modes[key]} for these stores)")
        modes[key] = str(value)
    return modes


def rows(stores, key: str) -> np.ndarray:
    """The rows of `key` that the statistics count, over all stores: (N, D) float."""
    out = []
    for store in stores:
        low = store.lowdim()
        if key == "action":
            out.append(np.asarray(low["action"])[np.asarray(low["action_mask"], bool)])
            continue
        keep = np.zeros(len(low[key]), bool)
        for e in range(store.num_episodes):
            meta = store.meta(e)
            if meta.source != "video":
                keep[meta.start:meta.start + meta.length] = True
        if not keep.any():  # a video-only store: its placeholders are all there is
            keep[:] = True
        out.append(np.asarray(low[key])[keep])
    if not out:
        return np.zeros((0, 1), np.float32)
    return np.concatenate([r.reshape(len(r), -1) for r in out])


def from_stores(stores, config: Mapping | None = None) -> Normalizer:
    """The normaliser for training on `stores`; `config` maps action/state to a mode or None (default)."""
    modes = _modes(stores, config)
    norm = Normalizer()
    for key, mode in modes.items():
        data = rows(stores, key)
        if mode == "identity" or not len(data):
            if mode != "identity":
                log.info("normalize.%s=%s: no %s rows with known values in these stores; %s stays as is",
                         key, mode, key, key)
            norm.set(key, {"mode": "identity"})
        else:
            s = stats_lib.from_rows(data)
            norm.set(key, {"mode": mode, "min": s["min"], "max": s["max"]} if mode == "minmax"
                     else {"mode": mode, "mean": s["mean"], "std": s["std"]})
    check_action_range(stores, norm)
    return norm


def check_action_range(stores, norm: Normalizer) -> bool:
    """Warn when the model would see raw actions outside [-1, 1]: the policy's tanh head cannot output
    them and the world model squashes them. Returns True when it warned."""
    if norm.mode("action") != "identity":
        return False
    data = rows(stores, "action")
    peak = float(np.abs(data).max()) if data.size else 0.0
    if peak <= 1.0 + 1e-4:
        return False
    log.warning("the actions of %s reach %.4g, outside [-1, 1], and the action normaliser is identity: a "
                "tanh-bounded policy cannot output them and the world model squashes them to +-1. Set "
                "normalize.action=minmax (the default for stores whose action spec is not a normalised "
                "command in [-1, 1])", [getattr(s, "url", str(s)) for s in stores], peak)
    return True
