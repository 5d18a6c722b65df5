"""Deployments recorded into an episode store (source=policy), so they feed corrective rounds.

Imported only when `record=STORE` is given: the store needs zarr, which a plain deployment does not.
Rows follow the store convention: row t holds o_t, the reward on arriving at it, and a_t, the action
sent after seeing it; the final row's action is unknown (zeros, masked).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reverie.errors import ConfigError


class Recorder:
    """cameras: {key: (H, W, 3)} of every camera the bundle reads (Bundle.cameras); each is stored."""

    def __init__(self, path: str | Path, cameras: dict[str, tuple], state_dim: int, action_dim: int,
                 fps: float, robot: str, round: int = 0):
        from reverie.datasets.schema import make_schema
        from reverie.datasets.store import EpisodeStore

        self.image_keys = list(cameras)
        schema = make_schema(cameras={key.split("/", 1)[1]: tuple(shape[:2]) for key, shape in cameras.items()},
                             state_dim=state_dim, action_dim=action_dim)
        path = Path(path)
        if path.exists():
            self.store = EpisodeStore.open(path, mode="a")
            # Rows must fit the store's schema: refuse now, not at the first row with the arm moving.
            theirs = {k: tuple(v.shape) for k, v in self.store.schema.items() if k.startswith("image/")}
            ours = {k: tuple(v.shape) for k, v in schema.items() if k.startswith("image/")}
            if theirs != ours:
                self.store.close()
                raise ConfigError(f"record={path} holds cameras {theirs}, this bundle gives {ours}; record "
                                  "into a new store (another record= path)")
        else:
            self.store = EpisodeStore.create(path, schema, fps=fps, robot=robot)
        self.round, self.action_dim = round, action_dim
        self.writer = None
        self.previous: dict | None = None

    def begin(self, instruction: str) -> None:
        self.writer = self.store.episode_writer(instruction=instruction, source="policy", round=self.round)
        self.previous = None

    def observe(self, obs: dict, timestamp: float, reward: float = 0.0, last: bool = False,
                terminal: bool = False) -> None:
        """The observation o_t; its row is written once a_t is known (act) or the episode ends."""
        self.previous = {**{key: np.asarray(obs[key], np.uint8) for key in self.image_keys},
                         "state": np.asarray(obs["state"], np.float32), "reward": np.float32(reward),
                         "is_first": self.previous is None and self.writer.length == 0,
                         "is_last": last, "is_terminal": terminal, "timestamp": np.float64(timestamp)}

    def act(self, action: np.ndarray) -> None:
        self.writer.add({**self.previous, "action": np.asarray(action, np.float32), "action_mask": True})

    def end(self, success: bool | None, notes: str = "") -> None:
        if self.previous is not None:  # the final observation: no action follows it
            row = {**self.previous, "is_last": True, "action": np.zeros(self.action_dim, np.float32),
                   "action_mask": False}
            self.writer.add(row)
        if notes:
            self.writer.notes = notes
        self.writer.commit(success=success)
        self.writer, self.previous = None, None

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.discard()
            self.writer = None

    def close(self) -> None:
        self.discard()
        self.store.close()
