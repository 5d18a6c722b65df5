"""PMPO policy loss with a reverse-KL prior (Dreamer 4, imagination RL).

L = (1 - a)/|D-| sum_{D-} ln pi(a|s) - a/|D+| sum_{D+} ln pi(a|s) + b/N sum KL[pi || pi_prior]

Only the sign of the advantage A = R - v is used, so no return normalisation is needed and the
update is robust to the scale of sparse rewards. The prior is the frozen behaviour-cloning policy;
the reverse KL keeps the policy on the support of the demonstrations, where the world model is
trustworthy.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pmpo_loss(log_prob: Tensor, advantage: Tensor, kl_to_prior: Tensor, weight: Tensor | None = None,
              alpha: float = 0.5, beta: float = 0.3) -> tuple[Tensor, dict[str, Tensor]]:
    """All inputs (N,) flattened over batch and time; `weight` masks states past imagined episode ends."""
    weight = torch.ones_like(log_prob) if weight is None else weight.detach()
    advantage = advantage.detach()
    pos = (advantage > 0).to(log_prob.dtype) * weight
    neg = (advantage < 0).to(log_prob.dtype) * weight
    pos_term = -(pos * log_prob).sum() / pos.sum().clamp(min=1.0)
    neg_term = (neg * log_prob).sum() / neg.sum().clamp(min=1.0)
    kl_term = (weight * kl_to_prior).sum() / weight.sum().clamp(min=1.0)
    loss = alpha * pos_term + (1 - alpha) * neg_term + beta * kl_term
    metrics = {  # tensors: the caller reads them back only when it logs (no GPU sync per step)
        "pmpo/positive_fraction": (pos > 0).float().mean(),
        "pmpo/pos_logp": -pos_term.detach(), "pmpo/neg_logp": neg_term.detach(),
        "pmpo/kl_prior": kl_term.detach(),
    }
    return loss, metrics
