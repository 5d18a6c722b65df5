"""Exponential moving average of the weights, for evaluation, imagination and export.

Small batches give noisy gradients; a generative model sampled from its averaged weights makes
cleaner predictions than from its last iterate (standard for diffusion and flow models; the
shortcut-model paper offers an EMA copy for the bootstrap targets too). The average works on the
parameters as the optimiser holds them (local shards under FSDP), so it needs no communication.
Buffers (running means, loss RMS) are not averaged: the checkpoint takes the live ones.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from reverie.errors import ConfigError


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"ema={decay}: the decay must lie in (0, 1), e.g. ema=0.999; ema=0 turns it off")
        self.decay = decay
        self.params = [p for p in model.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        """After each optimiser step. The decay ramps up (1 + n) / (10 + n) so that early weights,
        far from anything useful, are forgotten quickly. Frozen parameters (a loaded tokenizer, the
        finished stage) are copied, not averaged: they may have been loaded after the EMA began."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        live, frozen = ([], []), ([], [])
        for s, p in zip(self.shadow, self.params):
            group = live if p.requires_grad else frozen
            group[0].append(s)
            group[1].append(p.detach())
        if live[0]:
            torch._foreach_lerp_(*live, 1.0 - decay)
        if frozen[0]:
            torch._foreach_copy_(*frozen)

    @torch.no_grad()
    def reset(self) -> None:
        """Start the average at the current weights (a resume from a checkpoint without one)."""
        torch._foreach_copy_(self.shadow, [p.detach() for p in self.params])

    @torch.no_grad()
    def _swap(self) -> None:
        for s, p in zip(self.shadow, self.params):
            live = p.detach().clone()
            p.copy_(s)
            s.copy_(live)

    @contextmanager
    def applied(self):
        """Swap the averaged weights into the model for the block (save, load, evaluate), then back."""
        self._swap()
        try:
            yield
        finally:
            self._swap()
