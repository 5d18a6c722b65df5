"""Agent training batches: the world model's batches, plus rewards from success labels.

Real teleop data often has no reward, only a success mark per episode. Such an episode (success
True, every recorded reward 0) gets `success_reward` on its final row, which becomes terminal, so
success labels alone are enough for imagination RL. Episodes with recorded rewards are left alone.
"""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import OmegaConf

from reverie.world_model.backend import model_config
from reverie.world_model.data import TrainData, data_paths


def labelled_episodes(stores) -> set[tuple[int, int]]:
    """(store index, episode index) of episodes whose reward must come from the success label."""
    out = set()
    for s, store in enumerate(stores):
        for e in range(store.num_episodes):
            if store.meta(e).success and not np.any(store.episode(e, keys=["reward"])["reward"]):
                out.add((s, e))
    return out


class AgentData(TrainData):
    """Windows from the agent's stores (default: the world model's) at the world model's resolution."""

    def __init__(self, cfg, wm_cfg, wm_info: dict, batch_size: int, seq_len: int,
                 device: torch.device | str = "cpu"):
        wm = model_config(wm_cfg)
        data_cfg = OmegaConf.create({
            "data": data_paths(cfg.data) if cfg.data else list(wm_info["stores"]),  # one path or a list
            "image_key": cfg.image_key or wm_info["image_key"], "holdout": float(cfg.holdout),
            "seed": int(cfg.seed), "workers": 0, "weights": None})
        sizes = OmegaConf.create({"image_size": int(wm.image_size), "dynalang": bool(wm.get("dynalang", False)),
                                  "batch_size": batch_size, "seq_len": seq_len})
        super().__init__(data_cfg, sizes, device=device)  # batches arrive on the training device
        self.labelled = labelled_episodes(self.stores)
        self.success_reward = float(cfg.rewards.success_reward)

    def _draw(self) -> dict:
        window = super()._draw()
        if (int(window["store"]), int(window["episode"])) in self.labelled and bool(window["is_last"][-1]):
            window["reward"] = window["reward"].copy()
            window["is_terminal"] = window["is_terminal"].copy()
            window["reward"][-1] = self.success_reward
            window["is_terminal"][-1] = True
        return window
