"""Behaviour cloning as Dreamer 4 does it: the action loss shapes the world model's representation.

    loss = nll(a_t .. a_{t+K-1} | feat_t, instr)  +  reward head (class-balanced)  +  wm_scale * WM loss

feat_t comes from the world model filtering the window *with gradients* (bc.finetune=true): the
action loss reaches the encoder and the recurrent core while the world model's own loss (image,
state, reward, continue, KL) stays on, so the features learn what acting needs (where the target
cube is) without forgetting how to predict. A frozen model (finetune=false) is the old recipe: on
features trained only to reconstruct 12,288 pixel values, the 4-pixel cubes were not linearly
readable (probe R^2 < 0) and the policy could not find them.

Also here:
- multi-token targets: row t learns a_t .. a_{t+K-1} (K = agent.chunk); a target is masked when its
  row has no action (video, the final row, window padding past the episode's end);
- random shift (DrQ): each window's frames are shifted together by up to `shift` pixels
  (replicate padding), so the policy cannot key on exact pixel positions of 200 demos;
- which demos are cloned is the sampler's business: AgentData draws with `bc.weights` (default:
  successful episodes only);
- the loss (`bc.loss`): "nll" fits mean and spread by the head's bounded-Gaussian likelihood; "mse"
  fits the mean by squared error (every action dimension weighs the same: the NLL's 1/std^2 lets a
  noisy dimension's mean be learnt slowly, which cost the pixel BC 36% -> 13% on lift) and the spread
  by the likelihood with the mean held, so RL's prior keeps a fitted std.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from reverie.errors import ConfigError
from reverie.policy.agent import Agent
from reverie.policy.distributions import BoundedNormal
from reverie.policy.reward import reward_loss


def chunk_targets(action: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """action (B, T, A), mask (B, T) -> targets (B, T, K, A), target mask (B, T, K): entry [t, j] is
    row t + j's action, masked where t + j >= T or that row has no action."""
    b, t, a = action.shape
    pad_a = torch.cat([action, action.new_zeros(b, k - 1, a)], 1)              # (B, T+K-1, A)
    pad_m = torch.cat([mask, mask.new_zeros(b, k - 1)], 1)                      # (B, T+K-1)
    targets = pad_a.unfold(1, k, 1).permute(0, 1, 3, 2)                         # (B, T, K, A)
    return targets, pad_m.unfold(1, k, 1)                                       # (B, T, K)


def random_shift(image: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """image (B, T, H, W, 3) float -> the same, each window shifted by one random (dy, dx) in
    [-pad, pad], edges replicated."""
    if pad <= 0:
        return image
    b, t, h, w, c = image.shape
    x = image.permute(0, 1, 4, 2, 3).reshape(b, t * c, h, w)                    # (B, T*3, H, W)
    x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    offset = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator).tolist()
    out = torch.stack([x[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offset)])
    return out.reshape(b, t, c, h, w).permute(0, 1, 3, 4, 2)


def _nll(dist: BoundedNormal, y: Tensor) -> Tensor:
    return -dist.log_prob(y)


def _mse(dist: BoundedNormal, y: Tensor) -> Tensor:
    held = BoundedNormal(dist.mean.detach(), dist.std)  # the spread's fit moves only the std
    return (dist.mean - y).square().sum(-1) - held.log_prob(y)


LOSSES = {"nll": _nll, "mse": _mse}  # chunk targets (..., K, A) under the head -> per-target loss (..., K)


def bc_loss(agent: Agent, feat: Tensor, batch: dict, loss: str = "nll") -> tuple[Tensor, dict[str, Tensor]]:
    """Masked chunk loss (`LOSSES[loss]`) of the recorded actions. feat (B, T, F) -> scalar, metrics."""
    if loss not in LOSSES:
        raise ConfigError(f"bc.loss={loss!r}: choose one of {sorted(LOSSES)}")
    valid = batch.get("valid")
    mask = batch["action_mask"].bool() if valid is None else batch["action_mask"].bool() & valid.bool()
    targets, tmask = chunk_targets(batch["action"], mask, agent.chunk)          # (B,T,K,A) (B,T,K)
    instr = batch["instruction_embedding"]                                      # (B, 384)
    dist = agent.chunk_policy(feat, instr)
    tmask = tmask.float()
    objective = (LOSSES[loss](dist, targets) * tmask).sum() / tmask.sum().clamp(min=1.0)
    with torch.no_grad():
        nll = -(dist.log_prob(targets) * tmask).sum() / tmask.sum().clamp(min=1.0)
    with torch.no_grad():  # teacher-forced error of the executed (first) action, in action units
        err = (dist.mean[:, :, 0] - batch["action"]).abs().mean(-1)              # (B, T)
        m = mask.float()
        mae = (err * m).sum() / m.sum().clamp(min=1.0)
    return objective, {"bc/nll": nll, "bc/action_mae": mae}


def bc_step(wm, agent: Agent, batch: dict, optimizer, c, amp=contextlib.nullcontext,
            params: list | None = None) -> dict[str, Tensor]:
    """One behaviour-cloning update. c: the `bc` config (finetune, wm_scale, shift, loss)."""
    batch = {**batch, "image": random_shift(batch["image"], int(c.shift))}
    metrics = {}
    if c.finetune:
        with amp():
            wm_loss, wm_metrics, feat = wm.loss_and_features(batch)
        metrics |= {f"wm/{k.split('/')[-1]}": torch.as_tensor(v) for k, v in wm_metrics.items()
                    if k in ("loss/total", "loss/image", "image_mse")}
    else:
        with torch.no_grad(), amp():
            _, feat = wm.observe(batch)
        wm_loss = feat.new_zeros(())
    feat = feat.float()                                                         # (B, T, F)
    bc, bc_metrics = bc_loss(agent, feat, batch, str(c.loss))
    reward = reward_loss(agent, feat.detach(), batch["instruction_embedding"], batch["reward"],
                         batch.get("valid"))
    loss = bc + reward + float(c.wm_scale) * wm_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad = torch.nn.utils.clip_grad_norm_(params or agent.parameters(), 100.0)
    optimizer.step()
    return metrics | bc_metrics | {"bc/reward_loss": reward.detach(), "bc/grad_norm": grad.detach()}


def make_optimizer(wm, agent: Agent, c) -> tuple[torch.optim.Optimizer, list]:
    """Adam over the agent, plus the world model at its own (lower) rate when it is fine-tuned."""
    groups = [{"params": list(agent.parameters()), "lr": float(c.lr)}]
    if c.finetune:
        wm.requires_grad_(True)
        groups.append({"params": [p for p in wm.parameters() if p.requires_grad], "lr": float(c.wm_lr)})
    params = [p for g in groups for p in g["params"]]
    return torch.optim.Adam(groups, eps=1e-6), params
