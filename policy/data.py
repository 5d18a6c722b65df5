"""Agent training batches: the world model's batches, plus rewards from success labels.

Real teleop data often has no reward, only a success mark per episode. Such an episode (success
True, every recorded reward 0) gets `success_reward` on its final row, which becomes terminal, so
success labels alone are enough for imagination RL. Episodes with recorded rewards are left alone.

Rewarded rows are rare (a success row per episode), so with `rewards.positive_fraction` > 0 that
share of each batch's windows (rounded up) is drawn from windows that contain a rewarded row: a
recorded nonzero reward, or the final row of a success-labelled episode (the window then ends there).
The rest are the sampler's usual windows. `next(positive_fraction=0)` turns it off for one batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from omegaconf import OmegaConf

from reverie.datasets.normalize import check_action_range
from reverie.errors import ConfigError
from reverie.normalize import Normalizer
from reverie.world_model.backend import model_config, option
from reverie.world_model.data import TrainData, data_paths


def labelled_episodes(stores) -> set[tuple[int, int]]:
    """(store index, episode index) of episodes whose reward must come from the success label."""
    out = set()
    for s, store in enumerate(stores):
        reward = store.lowdim()["reward"]
        for e in range(store.num_episodes):
            meta = store.meta(e)
            if meta.success and not np.any(reward[meta.start:meta.start + meta.length]):
                out.add((s, e))
    return out


class AgentData(TrainData):
    """Windows from the agent's stores (default: the world model's) at the world model's resolution."""

    def __init__(self, cfg, wm_cfg, wm_info: dict, batch_size: int, seq_len: int,
                 device: torch.device | str = "cpu", weights=None, starts: str = "fit", cameras=None, augment=None):
        """cameras: extra camera keys the batches carry beside "image" (a pixel BC's); None: the world
        model's own (its spec's: train-wm cameras=), which its filter reads."""
        wm = model_config(wm_cfg)
        data_cfg = OmegaConf.create({
            "data": data_paths(cfg.data) if cfg.data else list(wm_info["stores"]),  # one path or a list
            "image_key": cfg.image_key or wm_info["image_key"], "holdout": float(cfg.holdout),
            "seed": int(cfg.seed), "workers": 0,
            "per": "row",  # an episode in proportion to its length, as the world model samples by default
            "weights": OmegaConf.to_container(weights) if OmegaConf.is_config(weights) else weights})
        sizes = OmegaConf.create({"image_size": int(wm.image_size), "dynalang": bool(option(wm, "dynalang")),
                                  "batch_size": batch_size, "seq_len": seq_len})
        # the world model's own units (its checkpoint's normaliser; identity for one written before them)
        super().__init__(data_cfg, sizes, device=device,  # batches arrive on the training device
                         normalizer=Normalizer.from_json(wm_info.get("normalizer")), augment=augment,
                         cameras=tuple(wm_info["spec"].get("cameras", ())) if cameras is None else cameras,
                         starts=starts, whose="cameras" if cameras is None else "bc_scratch.cameras")
        check_action_range(self.stores, self.normalizer)  # e.g. a world model from before normalisation
        self.labelled = labelled_episodes(self.stores)
        self.success_reward = float(cfg.rewards.success_reward)
        self.positive_fraction = float(cfg.rewards.positive_fraction)
        if not 0 <= self.positive_fraction < 1:
            raise ConfigError(f"rewards.positive_fraction={self.positive_fraction}: must be in [0, 1) "
                              "(the share of each batch drawn from windows holding a rewarded row)")
        self._positives = self._positive_windows()
        self._positive_rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), 0, 1]))
        self._positives_due = 0

    def _positive_windows(self) -> np.ndarray:
        """(N, 4) int64 (store, episode, first row, end row) of one window per rewarded row of the
        training episodes: ending at that row where the episode allows, else its first window (padded
        past the episode's end, as the sampler pads, when the episode is shorter than a window)."""
        found = []
        for s, store in enumerate(self.stores):
            reward = store.lowdim()["reward"]
            for e in range(store.num_episodes):
                meta = store.meta(e)
                if (s, e) in self.held:
                    continue
                stop = meta.start + meta.length
                rows = ([stop - 1] if (s, e) in self.labelled
                        else meta.start + np.flatnonzero(reward[meta.start:stop]))
                starts = np.clip(np.asarray(rows, np.int64) - self.length + 1, meta.start,
                                 max(stop - self.length, meta.start))
                found += [(s, e, int(a), stop) for a in starts]
        return np.array(found, np.int64).reshape(-1, 4)

    def reward_signal(self) -> dict[str, int]:
        """Rows with a recorded nonzero reward and episodes labelled success, in the training and in
        the held-out episodes."""
        counts = dict.fromkeys(("rewarded_rows", "success_episodes", "held_rewarded_rows",
                                "held_success_episodes"), 0)
        for s, store in enumerate(self.stores):
            reward = store.lowdim()["reward"]
            for e in range(store.num_episodes):
                meta = store.meta(e)
                prefix = "held_" if (s, e) in self.held else ""
                counts[prefix + "rewarded_rows"] += int(np.count_nonzero(reward[meta.start:meta.start + meta.length]))
                counts[prefix + "success_episodes"] += int(bool(meta.success))
        return counts

    def next(self, positive_fraction: float | None = None):
        """A batch; `positive_fraction` (default rewards.positive_fraction) of it, rounded up but leaving
        at least one ordinary window, from windows holding a rewarded row (none when the training
        episodes have no such row)."""
        frac = self.positive_fraction if positive_fraction is None else float(positive_fraction)
        self._positives_due = min(math.ceil(frac * self.batch_size), self.batch_size - 1) if len(self._positives) else 0
        try:
            return super().next()
        finally:
            self._positives_due = 0

    def _positive_window(self) -> dict:
        """One window holding a rewarded row, read from the store in the sampler's window layout."""
        s, e, start, stop = (int(v) for v in self._positives[self._positive_rng.integers(len(self._positives))])
        store, steps = self.stores[s], start + np.arange(self.length)
        valid = steps < stop                                                  # (T,) False on padding
        index = np.minimum(steps, stop - 1)                                   # padding repeats the last row
        low = store.lowdim()
        window = {}
        for key in self.sampler.keys:
            if key in low:
                window[key] = low[key][index]
            else:
                rows = store.read(key, start, int(index[-1]) + 1)
                window[key] = rows[index - start]
        if not valid.all():  # the sampler's padding convention: no flags, no reward past the end
            for key in ("action_mask", "is_first", "is_last", "is_terminal"):
                if key in window:
                    window[key] = window[key] & valid
            window["reward"] = np.where(valid, window["reward"], 0).astype(window["reward"].dtype)
        return window | {"valid": valid, "instruction": store.meta(e).instruction, "episode": e, "store": s}

    def _draw(self) -> dict:
        if self._positives_due > 0:  # training episodes only, so TrainData.next never rejects these
            self._positives_due -= 1
            window = self._positive_window()
        else:
            window = super()._draw()
        last = np.flatnonzero(window["is_last"])  # the episode's final row, wherever padding puts it
        if (int(window["store"]), int(window["episode"])) in self.labelled and len(last):
            window["reward"] = window["reward"].copy()
            window["is_terminal"] = window["is_terminal"].copy()
            window["reward"][last[0]] = self.success_reward
            window["is_terminal"][last[0]] = True
        return window
