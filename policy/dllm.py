"""DLLM: language goals as an intrinsic reward in imagination (METHODS.md, "DLLM").

    r_int[b, t] = scale * novelty(g_b) * cos(g_b, d[b, t]) * [t is the first step with cos > M]

g (B, 384): the goal, the instruction embedding. d (B, H, 384): the world model's description of each
imagined transition (`wm.describe(feat)`, unit vectors in the same sentence-encoder space). A goal
pays once per imagined trajectory, on the first step whose description matches it beyond the
threshold M, so the actor is paid for reaching it and not for lingering. The novelty of the goal
comes from random network distillation: a predictor chases a fixed random network over goal
embeddings; its error, divided by a running mean of errors, is large for goals the agent has rarely
been trained on and falls towards (and below) 1 for familiar ones.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reverie.errors import ConfigError


def first_crossing(sim: Tensor, threshold: float) -> Tensor:
    """(B, H) similarities -> (B, H) float mask, 1 at each row's first step with sim > threshold."""
    above = sim > threshold
    before = torch.cumsum(above.int(), dim=1) - above.int()   # crossings strictly before each step
    return (above & (before == 0)).to(sim.dtype)


def goal_reward(goal: Tensor, desc: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """goal (B, D), desc (B, H, D), both unit -> (reward (B, H), similarity (B, H)).

    reward is the similarity at the first crossing of the threshold and 0 everywhere else."""
    sim = (desc * goal[:, None]).sum(-1)                      # (B, H) cosine
    return sim * first_crossing(sim, threshold), sim


def _mlp(inp: int, out: int, units: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, units), nn.SiLU(), nn.Linear(units, units), nn.SiLU(),
                         nn.Linear(units, out))


class RND(nn.Module):
    """Random network distillation over goal embeddings (B, D) -> novelty (B,)."""

    def __init__(self, dim: int = 384, out: int = 64, units: int = 128, lr: float = 1e-3,
                 momentum: float = 0.99):
        super().__init__()
        self.target = _mlp(dim, out, units).requires_grad_(False)  # fixed: what "seen" is measured against
        self.predictor = _mlp(dim, out, units)
        self.momentum = momentum
        self.register_buffer("mean_error", torch.zeros(()))    # running mean of prediction errors
        self.register_buffer("count", torch.zeros(()))
        self.opt = torch.optim.Adam(self.predictor.parameters(), lr=lr)

    def error(self, goal: Tensor) -> Tensor:
        """(B, D) -> (B,) squared prediction error."""
        return (self.predictor(goal) - self.target(goal)).square().mean(-1)

    @torch.no_grad()
    def novelty(self, goal: Tensor) -> Tensor:
        """(B, D) -> (B,) error / running mean error (1 for a goal as familiar as the average)."""
        err = self.error(goal)
        mean = torch.where(self.count > 0, self.mean_error, err.mean())  # a tensor test: no GPU sync
        return err / mean.clamp(min=1e-8)

    def update(self, goal: Tensor) -> Tensor:
        """One predictor step on these goals (they become more familiar); updates the running mean."""
        loss = self.error(goal.detach())                       # (B,)
        with torch.no_grad():
            m = (self.count > 0).float() * self.momentum      # 0 on the first batch: it sets the scale
            self.mean_error.mul_(m).add_((1 - m) * loss.mean())
            self.count += 1
        self.opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        self.opt.step()
        return loss.mean().detach()


class DLLMReward:
    """The intrinsic reward for `reverie train-agent stage=rl rewards.dllm.enabled=true`."""

    def __init__(self, wm, cfg):
        if not getattr(wm, "describes", False):
            raise ConfigError(
                "rewards.dllm.enabled=true needs a world model with a description head, and this one has "
                f"none ({type(wm).__name__}); train one with `reverie train-wm world_model=rssm "
                "world_model.describe=true data=<stores from reverie sim demos>` and pass it as wm=, "
                "or set rewards.dllm.enabled=false")
        self.wm, self.threshold, self.scale = wm, float(cfg.threshold), float(cfg.scale)
        self.rnd = RND(wm.spec.instruction_dim, lr=float(cfg.rnd_lr)).to(wm.device)

    def __call__(self, feat: Tensor, goal: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Imagined features (B, H, F) after each step, goals (B, D) -> reward (B, H), metrics."""
        with torch.no_grad():
            hit, sim = goal_reward(goal, self.wm.describe(feat), self.threshold)  # (B, H) each
            novelty = self.rnd.novelty(goal)                                     # (B,)
            reward = self.scale * novelty[:, None] * hit
        rnd_loss = self.rnd.update(goal)  # after the reward: a goal's own batch does not make it stale
        return reward, {"rl/intrinsic_reward": reward.mean(), "dllm/similarity": sim.mean(),
                        "dllm/hit_rate": (sim > self.threshold).any(1).float().mean(),
                        "dllm/novelty": novelty.mean(), "dllm/rnd_loss": rnd_loss}
