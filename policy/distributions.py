"""Bounded Gaussian action distribution (DreamerV3's continuous actor).

mean = tanh(raw_mean) keeps the mode inside [-1, 1]; std = (max - min) * sigmoid(raw_std + 2) + min
keeps exploration noise bounded away from zero and from huge values. Samples are clipped to [-1, 1]
at the environment boundary, not here, so log-probabilities stay those of a plain diagonal Gaussian
and the KL to the behaviour-cloning prior has a closed form.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class BoundedNormal:
    def __init__(self, mean: Tensor, std: Tensor):
        self.mean, self.std = mean, std  # (..., A)

    @classmethod
    def from_raw(cls, raw: Tensor, min_std: float = 0.1, max_std: float = 1.0) -> "BoundedNormal":
        raw_mean, raw_std = raw.chunk(2, dim=-1)
        std = (max_std - min_std) * torch.sigmoid(raw_std + 2.0) + min_std
        return cls(torch.tanh(raw_mean), std)

    def mode(self) -> Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device,
                            dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def log_prob(self, action: Tensor) -> Tensor:
        """(..., A) -> (...): sum over action dimensions."""
        z = (action - self.mean) / self.std
        return (-0.5 * z.pow(2) - self.std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self) -> Tensor:
        return (self.std.log() + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)

    def kl(self, other: "BoundedNormal") -> Tensor:
        """KL[self || other] per sample, summed over action dimensions."""
        var_ratio = (self.std / other.std).pow(2)
        mean_term = ((self.mean - other.mean) / other.std).pow(2)
        return 0.5 * (var_ratio + mean_term - 1.0 - var_ratio.log()).sum(-1)
