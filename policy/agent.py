"""Agent heads on world-model features, conditioned on the instruction embedding.

    actor   (feat, instr) -> BoundedNormal over the next `chunk` actions in [-1, 1]
    reward  (feat, instr) -> symexp two-hot logits: r_t predicted from the state arrived at
    value   (feat, instr) -> symexp two-hot logits: lambda-return from this state

Dreamer 4 puts these heads on agent-token outputs; our backends expose one feature vector per step
(`WorldModel.feat_dim`). The instruction embedding is concatenated to it and, with `film`, also
modulates every hidden layer of every head (FiLM: h * (1 + gamma(instr)) + beta(instr)): concatenated
once beside ~2,300 feature values, a unit-norm 384-vector whose colour is its minor direction was
ignored (a policy touched the wrong cube in 57% of episodes).

Multi-token prediction (Dreamer 4: 8 actions): the actor predicts a_t .. a_{t+chunk-1} from feat_t.
`policy()` is the distribution of a_t (what RL trains and the robot executes, re-planned every step:
receding horizon); `chunk_policy()` the whole chunk, which behaviour cloning fits. Predicting ahead
makes the features carry where the arm is going, not only what it did last. The reward head is the agent's (not the world model's) because rewards are
task-specific: they come from recorded rewards or success labels of the instruction being followed.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from reverie.policy.distributions import BoundedNormal
from reverie.world_model.networks import MLP, Dense, TwoHot, symlog, zeroed


class FiLMMLP(nn.Module):
    """MLP on [x, instr] whose hidden layers are each modulated by the instruction.
    x (..., Din), instr (..., I) -> (..., Dout)."""

    def __init__(self, din: int, instr_dim: int, dout: int, units: int, layers: int, zero_out: bool = False):
        super().__init__()
        dims = [din] + [units] * layers
        self.layers = nn.ModuleList(Dense(a, b) for a, b in zip(dims[:-1], dims[1:]))
        # FiLM starts as identity: the plain MLP
        self.films = nn.ModuleList(zeroed(nn.Linear(instr_dim, 2 * units)) for _ in range(layers))
        self.out = zeroed(nn.Linear(dims[-1], dout)) if zero_out else nn.Linear(dims[-1], dout)
        self.instr_dim = instr_dim

    def forward(self, x: Tensor) -> Tensor:
        instr = x[..., -self.instr_dim:]
        for layer, film in zip(self.layers, self.films):
            gamma, beta = film(instr).chunk(2, -1)
            x = layer(x) * (1 + gamma) + beta
        return self.out(x)


class Agent(nn.Module):
    def __init__(self, feat_dim: int, action_dim: int, instr_dim: int = 384, units: int = 256,
                 layers: int = 2, min_std: float = 0.1, max_std: float = 1.0, bins: int = 255,
                 bins_range: float = 20.0, chunk: int = 1, film: bool = False):
        super().__init__()
        din = feat_dim + instr_dim
        self.feat_dim, self.action_dim, self.instr_dim = feat_dim, action_dim, instr_dim
        self.min_std, self.max_std = min_std, max_std
        self.chunk, self.film = int(chunk), bool(film)
        if self.chunk < 1:
            raise ValueError(f"agent chunk={chunk}: predict at least one action")

        def head(dout, zero_out=False):
            if self.film:
                return FiLMMLP(din, instr_dim, dout, units, layers, zero_out)
            return MLP(din, dout, units, layers, zero_out=zero_out)

        self.actor = head(2 * action_dim * self.chunk)
        self.reward = head(bins, zero_out=True)
        self.value = head(bins, zero_out=True)
        self.twohot = TwoHot(bins, bins_range)
        # Slow critic (EMA) gives stable bootstrap targets (DreamerV3, rate 0.02).
        self.slow_value = copy.deepcopy(self.value).requires_grad_(False)

    @staticmethod
    def _input(feat: Tensor, instr: Tensor) -> Tensor:
        """feat (..., F), instr (B, I) or (..., I) -> (..., F + I), broadcasting instr over time."""
        while instr.dim() < feat.dim():
            instr = instr.unsqueeze(-2)
        return torch.cat([feat, instr.expand(*feat.shape[:-1], instr.shape[-1]).to(feat.dtype)], -1)

    def chunk_policy(self, feat: Tensor, instr: Tensor) -> BoundedNormal:
        """feat (..., F) -> BoundedNormal over (..., chunk, A): a_t .. a_{t+chunk-1}."""
        raw = self.actor(self._input(feat, instr)).float()
        raw = raw.reshape(*raw.shape[:-1], self.chunk, 2 * self.action_dim)
        return BoundedNormal.from_raw(raw, self.min_std, self.max_std)

    def policy(self, feat: Tensor, instr: Tensor) -> BoundedNormal:
        """feat (..., F) -> BoundedNormal over a_t (..., A), the first action of the chunk."""
        # The raw output is `chunk` blocks of [mean (A), std (A)]; block 0 is a_t's.
        raw = self.actor(self._input(feat, instr)).float()[..., :2 * self.action_dim]
        return BoundedNormal.from_raw(raw, self.min_std, self.max_std)

    def reward_logits(self, feat: Tensor, instr: Tensor) -> Tensor:
        return self.reward(self._input(feat, instr))

    # {"value": R, "rate": pi} (policy/reward.py calibration): the head was trained with its classes
    # balanced; its prediction is moved back to the data's rate. None: as trained (older agents).
    reward_calibration: dict | None = None

    def predict_reward(self, feat: Tensor, instr: Tensor) -> Tensor:
        """(..., F) -> (...): the reward of arriving at that state, at the data's rate of paying rows."""
        raw = self.twohot.mean(self.reward_logits(feat, instr))
        c = self.reward_calibration
        if not c:
            return raw
        # the symexp two-hot head's estimate of a {0, R} target is symexp(p * symlog R): recover the
        # balanced p, add logit(rate) - logit(1/2) to its log-odds, and pay the expected R * p
        value = c["value"]
        p = (symlog(raw) / math.copysign(math.log1p(abs(value)), value)).clamp(1e-4, 1 - 1e-4)
        return value * torch.sigmoid(torch.logit(p) + math.log(c["rate"] / (1 - c["rate"])))

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
