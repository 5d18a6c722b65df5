"""Behaviour cloning from scratch: the baseline row of the results table.

A reactive pixel policy trained only on the demonstrations, with no world model: a DreamerV3 CNN on
the image, an MLP on symlog(state), the instruction embedding, and the same bounded Gaussian head
as the agent. It sees one frame at a time (like most BC baselines on low-cost arms), so its gap to
the world-model agent measures what the model's memory and imagination training add.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from reverie.errors import ConfigError
from reverie.policy.distributions import BoundedNormal
from reverie.world_model.networks import MLP, ConvEncoder, symlog

log = logging.getLogger(__name__)


class ScratchPolicy(nn.Module):
    def __init__(self, image_size: int, state_dim: int, action_dim: int, instr_dim: int = 384,
                 cnn_depth: int = 16, units: int = 256, layers: int = 2, min_std: float = 0.1,
                 max_std: float = 1.0):
        super().__init__()
        self.sizes = dict(image_size=image_size, state_dim=state_dim, action_dim=action_dim,
                          instr_dim=instr_dim, cnn_depth=cnn_depth, units=units, layers=layers,
                          min_std=min_std, max_std=max_std)
        self.image_enc = ConvEncoder(image_size, cnn_depth)
        self.state_enc = MLP(state_dim, units, units, 1)
        self.head = MLP(self.image_enc.out_dim + units + instr_dim, 2 * action_dim, units, layers)

    def forward(self, image, state, instr) -> BoundedNormal:
        """image (N, H, W, 3) float [0, 1], state (N, J), instr (N, I) -> action distribution."""
        x = torch.cat([self.image_enc(image), self.state_enc(symlog(state)), instr], -1)
        return BoundedNormal.from_raw(self.head(x).float(), self.sizes["min_std"], self.sizes["max_std"])


def train_scratch_bc(data, steps: int, lr: float = 3e-4, progress: bool = True,
                     **sizes) -> tuple[ScratchPolicy, list[dict]]:
    """`data.next()` yields batches of the world-model contract; every row with an action is a sample."""
    from tqdm import tqdm

    policy = ScratchPolicy(data.image_size, data.spec.state_dim, data.spec.action_dim, **sizes)
    opt = torch.optim.Adam(policy.parameters(), lr=lr, eps=1e-6)
    history = []
    for step in tqdm(range(1, steps + 1), desc="bc from scratch", disable=not progress, unit="step"):
        batch = data.next()
        mask = batch["action_mask"].flatten()                                # (B*T,)
        image = batch["image"].flatten(0, 1)[mask]
        state = batch["state"].flatten(0, 1)[mask]
        t = batch["image"].shape[1]
        instr = batch["instruction_embedding"].repeat_interleave(t, 0)[mask]
        action = batch["action"].flatten(0, 1)[mask]
        loss = -policy(image, state, instr).log_prob(action).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 100.0)
        opt.step()
        if step % 25 == 0 or step == steps:
            history.append({"step": step, "bc/nll": float(loss.detach())})
    return policy.eval(), history


def save(out: Path, policy: ScratchPolicy, info: dict) -> Path:
    from reverie.policy.checkpoint import save_module

    return save_module(out, policy, "policy.safetensors", "scratch_bc.json", {**info, "sizes": policy.sizes})


def load(path: str | Path) -> tuple[ScratchPolicy, dict]:
    path = Path(path)
    if not (path / "scratch_bc.json").exists():
        raise ConfigError(f"no behaviour-cloning-from-scratch policy in {path} (expected scratch_bc.json)")
    info = json.loads((path / "scratch_bc.json").read_text())
    policy = ScratchPolicy(**info["sizes"])
    policy.load_state_dict(load_file(path / "policy.safetensors"))
    return policy.eval(), info


class ScratchController:
    def __init__(self, policy: ScratchPolicy, image_key: str):
        from reverie.world_model.data import Language

        self.policy, self.image_key, self.language = policy, image_key, Language()
        self.instr = None

    def reset(self, instruction: str) -> None:
        self.instr = torch.from_numpy(self.language.embed([instruction]))

    def set_instruction(self, instruction: str) -> None:
        self.reset(instruction)

    @torch.no_grad()
    def act(self, observation: dict) -> np.ndarray:
        size = self.policy.sizes["image_size"]
        image = torch.from_numpy(np.asarray(observation[self.image_key])).float()[None] / 255.0
        if image.shape[1:3] != (size, size):
            image = torch.nn.functional.interpolate(image.permute(0, 3, 1, 2), size=(size, size),
                                                    mode="bilinear", antialias=True).permute(0, 2, 3, 1)
        state = torch.from_numpy(np.asarray(observation["state"], np.float32))[None]
        action = self.policy(image, state, self.instr).mode().clamp(-1, 1)
        return action[0].numpy()
