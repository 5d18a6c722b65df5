"""TD(lambda) returns over imagined trajectories (DreamerV3 / Dreamer 4).

R_t = r_{t+1} + gamma * c_{t+1} * ((1 - lambda) * v_{t+1} + lambda * R_{t+1}),  R_H = v_H.
Indexing follows `WorldModel.imagine`: feat[:, 0] is the start state, reward[:, t] and cont[:, t]
are predicted on arriving at feat[:, t + 1].
"""

from __future__ import annotations

import torch
from torch import Tensor


def lambda_returns(reward: Tensor, cont: Tensor, value: Tensor, gamma: float = 0.997,
                   lam: float = 0.95) -> Tensor:
    """reward, cont: (B, H); value: (B, H + 1) for feat[:, 0..H] -> returns (B, H) for feat[:, 0..H-1]."""
    B, H = reward.shape
    assert value.shape == (B, H + 1), (value.shape, reward.shape)
    discount = gamma * cont
    out = torch.empty_like(reward)
    last = value[:, -1]
    for t in reversed(range(H)):
        last = reward[:, t] + discount[:, t] * ((1 - lam) * value[:, t + 1] + lam * last)
        out[:, t] = last
    return out


def trajectory_weights(cont: Tensor, gamma: float = 0.997) -> Tensor:
    """(B, H) -> (B, H): weight of each start state, the discounted probability it is reached.

    An imagined episode that ended (cont ~ 0) should not train the actor on the states after it.
    """
    alive = torch.cat([torch.ones_like(cont[:, :1]), cont[:, :-1]], dim=1)
    return torch.cumprod(gamma * alive, dim=1).detach() / gamma
