"""Agent heads on world-model features, conditioned on the instruction embedding.

    actor   (feat, instr) -> BoundedNormal over actions in [-1, 1]
    reward  (feat, instr) -> symexp two-hot logits: r_t predicted from the state arrived at
    value   (feat, instr) -> symexp two-hot logits: lambda-return from this state

Dreamer 4 puts these heads on agent-token outputs; our backends expose one feature vector per step
(`WorldModel.feat_dim`), and the instruction embedding is concatenated to it so the same world model
serves every instruction. The reward head is the agent's (not the world model's) because rewards are
task-specific: they come from recorded rewards or success labels of the instruction being followed.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from reverie.policy.distributions import BoundedNormal
from reverie.world_model.networks import MLP, TwoHot


class Agent(nn.Module):
    def __init__(self, feat_dim: int, action_dim: int, instr_dim: int = 384, units: int = 256,
                 layers: int = 2, min_std: float = 0.1, max_std: float = 1.0, bins: int = 255,
                 bins_range: float = 20.0):
        super().__init__()
        din = feat_dim + instr_dim
        self.feat_dim, self.action_dim, self.instr_dim = feat_dim, action_dim, instr_dim
        self.min_std, self.max_std = min_std, max_std
        self.actor = MLP(din, 2 * action_dim, units, layers)
        self.reward = MLP(din, bins, units, layers, zero_out=True)
        self.value = MLP(din, bins, units, layers, zero_out=True)
        self.twohot = TwoHot(bins, bins_range)
        # Slow critic (EMA) gives stable bootstrap targets (DreamerV3, rate 0.02).
        self.slow_value = copy.deepcopy(self.value).requires_grad_(False)

    @staticmethod
    def _input(feat: Tensor, instr: Tensor) -> Tensor:
        """feat (..., F), instr (B, I) or (..., I) -> (..., F + I), broadcasting instr over time."""
        while instr.dim() < feat.dim():
            instr = instr.unsqueeze(-2)
        return torch.cat([feat, instr.expand(*feat.shape[:-1], instr.shape[-1]).to(feat.dtype)], -1)

    def policy(self, feat: Tensor, instr: Tensor) -> BoundedNormal:
        return BoundedNormal.from_raw(self.actor(self._input(feat, instr)).float(),
                                      self.min_std, self.max_std)

    def reward_logits(self, feat: Tensor, instr: Tensor) -> Tensor:
        return self.reward(self._input(feat, instr))

    def predict_reward(self, feat: Tensor, instr: Tensor) -> Tensor:
        return self.twohot.mean(self.reward_logits(feat, instr))

    def value_logits(self, feat: Tensor, instr: Tensor, slow: bool = False) -> Tensor:
        return (self.slow_value if slow else self.value)(self._input(feat, instr))

    def predict_value(self, feat: Tensor, instr: Tensor, slow: bool = False) -> Tensor:
        return self.twohot.mean(self.value_logits(feat, instr, slow))

    @torch.no_grad()
    def update_slow_value(self, rate: float = 0.02) -> None:
        for slow, fast in zip(self.slow_value.parameters(), self.value.parameters()):
            slow.lerp_(fast, rate)

    def frozen_copy(self) -> "Agent":
        """A frozen copy of the whole agent (the behaviour-cloning prior for RL)."""
        return copy.deepcopy(self).requires_grad_(False).eval()
