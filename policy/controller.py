"""Controllers that act in an environment from observations (see policy/rollout.py).

`AgentController` runs an agent on a world model online: each observation is filtered into the
model's latent state (`observe` over one row, continuing from the carried state with the previous
action), and the actor acts on the resulting feature. This is exactly what the exported ONNX policy
computes, one step at a time. It runs on the world model's device: observations go there, actions
come back as numpy.

Units: observations and returned actions are in the store's units (pixels, radians, ...); the
normaliser (the agent's / world model's, reverie/normalize.py) maps the state in and the action out,
so the models see what they were trained on.
"""

from __future__ import annotations

import numpy as np
import torch

from reverie.normalize import Normalizer
from reverie.policy.agent import Agent
from reverie.policy.ensemble import TemporalEnsemble
from reverie.policy.rollout import require_cameras
from reverie.world_model.data import Language, collate

ROW_DEFAULTS = {"reward": np.float32(0.0), "is_last": np.bool_(False), "is_terminal": np.bool_(False),
                "action_mask": np.bool_(False)}


class AgentController:
    def __init__(self, wm, agent: Agent, image_key: str, image_size: int, deterministic: bool = True,
                 language: Language | None = None, seed: int = 0, normalizer: Normalizer | None = None,
                 ensemble: float | None = None):
        self.wm, self.agent = wm.eval(), agent.to(wm.device).eval()  # one device for both
        # store units <-> model units; default: the loaded world model's (checkpoint.load_model)
        self.normalizer = normalizer if normalizer is not None else getattr(wm, "normalizer", None) or Normalizer()
        self.image_key, self.image_size = image_key, image_size
        self.cameras = tuple(wm.spec.cameras)          # the world model's extra cameras (train-wm cameras=)
        self.image_keys = [image_key, *self.cameras]  # every camera it reads, the main one first
        self.deterministic = deterministic
        self.language = language or Language()
        self.generator = torch.Generator(wm.device).manual_seed(seed)  # sampling draws on the device
        self.instruction = ""
        self.state = None
        self.prev_action = None
        self.ensemble = TemporalEnsemble(agent.chunk, ensemble)  # policy/ensemble.py; None: receding horizon

    def reset(self, instruction: str) -> None:
        self.instruction, self.state, self.prev_action = instruction, None, None
        self.ensemble.reset()

    def set_instruction(self, instruction: str) -> None:
        """Change the task mid-episode; the latent state carries on."""
        self.instruction = instruction

    def batch(self, observation: dict) -> dict[str, torch.Tensor]:
        """One observation -> a one-row batch (B=1, T=1) in the world model's contract."""
        require_cameras(self.image_keys, observation, "this agent's world model")
        row = {**{key: observation[key][None] for key in self.image_keys},
               "state": self.normalizer.normalize("state", np.asarray(observation["state"], np.float32))[None],
               "action": np.zeros((1, self.wm.spec.action_dim), np.float32),
               "is_first": np.array([self.state is None]),
               "instruction": self.instruction}
        row.update({k: np.array([v]) for k, v in ROW_DEFAULTS.items()})
        batch = collate([row], self.image_key, self.image_size, self.language, False, self.wm.device,
                        cameras=self.cameras)
        if self.prev_action is not None:
            batch["prev_action"] = self.prev_action                             # (1, A)
            batch["prev_action_mask"] = torch.ones(1, dtype=torch.bool, device=self.wm.device)
        return batch

    def observe_executed(self, action: np.ndarray) -> None:
        """The action really sent after the last act() (an operator's takeover, policy/rollout.py):
        the next observe() filters the latent state with it, as the world model saw in training."""
        action = self.normalizer.normalize("action", np.asarray(action, np.float32))  # the model's units
        self.prev_action = torch.as_tensor(action, device=self.wm.device)[None]  # (1, A)

    @torch.no_grad()
    def act(self, observation: dict) -> np.ndarray:
        batch = self.batch(observation)
        self.state, feat = self.wm.observe(batch, self.state)                  # feat (1, 1, F)
        policy = self.agent.chunk_policy if self.ensemble.on else self.agent.policy
        dist = policy(feat[:, -1], batch["instruction_embedding"])
        action = dist.mode() if self.deterministic else dist.sample(self.generator)
        action = action.clamp(-1.0, 1.0)
        if self.ensemble.on:  # (1, K, A) -> (1, A); the world model then filters what was executed
            action = self.ensemble(action)
        self.prev_action = action                                               # model units
        return self.normalizer.denormalize("action", action[0].cpu().numpy().astype(np.float32))
