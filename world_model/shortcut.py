"""Shortcut forcing (Dreamer 4): the dynamics objective and the frame-by-frame sampler.

Signal level tau: 0 = pure noise, 1 = clean; z_tau = (1 - tau) z0 + tau z1, z0 ~ N(0, I), z1 clean.
Each frame draws its own step size d from {1, 1/2, ..., 1/k_max} (uniform over the powers) and its own
tau uniform on d's grid {0, d, ..., 1 - d}. With f the network's clean-latent prediction:
  d = d_min (= 1/k_max):  flow loss      || x_hat - z1 ||^2
  d > d_min:              bootstrap      b1 = (f(z_tau, tau, d/2) - z_tau) / (1 - tau),  z' = z_tau + b1 d/2
                                         b2 = (f(z', tau + d/2, d/2) - z') / (1 - tau - d/2)
                                         (1 - tau)^2 || (x_hat - z_tau) / (1 - tau) - sg(b1 + b2) / 2 ||^2
  every frame weighted by the ramp w(tau) = 0.9 tau + 0.1.
v-prediction (ablation) computes both terms in velocity space instead. Sampling: per frame, K Euler
steps of size 1/K from noise; the finished frame is then re-noised to signal level 1 - ctx_noise and
run once more to write the KV cache that the next frames read.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from reverie.world_model.dynamics import Dynamics
from reverie.world_model.transformer import KV


class RunningRMS(nn.Module):
    """Divides a loss term by a running RMS of itself (Dreamer 4 normalises every term this way)."""

    def __init__(self, decay: float = 0.99, eps: float = 1e-8):
        super().__init__()
        self.decay, self.eps = decay, eps
        self.register_buffer("ms", torch.zeros(()))
        self.register_buffer("count", torch.zeros(()))

    def forward(self, loss: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                self.count += 1
                self.ms.lerp_(loss.detach().float() ** 2, 1 - self.decay)
        # bias-corrected EMA of the squared loss (like Adam's second moment)
        ms = self.ms / (1 - self.decay ** self.count.clamp(min=1))
        return loss / (ms.sqrt() + self.eps) if self.count > 0 else loss


def sample_levels(b: int, t: int, k_max: int, shortcut: bool, device, boot_frac: float | None = None
                  ) -> tuple[Tensor, Tensor]:
    """-> tau (B, T), d (B, T): d = 2^-e with e uniform in 0..log2(k_max) (the paper; only d_min when
    the shortcut is off), or, with boot_frac, d_min on 1 - boot_frac of the frames and uniform over
    the larger steps on the rest (public reimplementations: 25%); tau uniform on {0, d, ..., 1 - d}."""
    e_max = int(math.log2(k_max))
    if shortcut and boot_frac is None:
        e = torch.randint(0, e_max + 1, (b, t), device=device)
    elif shortcut:
        boot = torch.rand(b, t, device=device) < boot_frac
        e = torch.where(boot, torch.randint(0, e_max, (b, t), device=device), e_max)
    else:
        e = torch.full((b, t), e_max, device=device)
    steps = (2 ** e).float()
    tau = torch.floor(torch.rand(b, t, device=device) * steps) / steps
    return tau, 1 / steps


def d_index(d: Tensor) -> Tensor:
    return torch.log2(1 / d).round().long()


def shortcut_loss(model: Dynamics, z1: Tensor, action: Tensor, action_mask: Tensor, instr: Tensor,
                  segments: Tensor | None = None, shortcut: bool = True, boot_frac: float | None = None,
                  valid: Tensor | None = None) -> tuple[Tensor, Tensor, dict[str, float]]:
    """z1 (B, T, S, C) clean latents -> (loss, agent feats (B, T, D) of the main pass, metrics).
    valid (B, T) bool: the loss and metrics average over these frames only (padding past an episode's
    end; time attention is causal, so padding that follows the real frames does not change them).

    The two half-step passes run over the whole sequence at once, so frame t's second half-step sees
    the other frames advanced by their own half-steps as context (a cleaner context than the main
    pass): one causal pass per frame would be exact and T times dearer.
    """
    b, t = z1.shape[:2]
    k_max = model.k_max
    tau, d = sample_levels(b, t, k_max, shortcut, z1.device, boot_frac)  # (B, T)
    z0 = torch.randn_like(z1)
    tau4 = tau[..., None, None]
    z_tau = (1 - tau4) * z0 + tau4 * z1
    out, agent, _ = model(z_tau, (tau * k_max).round().long(), d_index(d), action, action_mask,
                          instr, segments)
    if model.v_pred:
        flow_err = (out - (z1 - z0)).pow(2).mean((2, 3))  # (B, T)
    else:
        flow_err = (out - z1).pow(2).mean((2, 3))
    flow = d <= 1 / k_max  # (B, T) rows trained by the plain flow loss
    err = flow_err
    boot_err = torch.zeros_like(flow_err)
    if not flow.all():
        dh = torch.where(flow, d, d / 2)  # half step (flow rows: unused, kept on a valid index)

        def predict(z: Tensor, tau_: Tensor) -> Tensor:
            return model.predict_x(z, tau_, d_index(dh), action, action_mask, instr, segments)[0]

        v_tgt = bootstrap_velocity(predict, z_tau, tau, dh, k_max)  # (B, T, S, C)
        if model.v_pred:
            boot_err = (out - v_tgt).pow(2).mean((2, 3))
        else:  # (1 - tau)^2 || (x_hat - z_tau)/(1 - tau) - v ||^2 == || x_hat - z_tau - (1 - tau) v ||^2
            boot_err = (out - z_tau - (1 - tau4) * v_tgt).pow(2).mean((2, 3))
        err = torch.where(flow, flow_err, boot_err)
    w = 0.9 * tau + 0.1  # ramp: clean frames carry more signal
    if valid is None:
        loss, real = (w * err).mean(), torch.ones_like(flow)
    else:
        real = valid.bool()
        loss = (w * err * real).sum() / real.sum().clamp(min=1)
    flow_real, boot_real = flow & real, ~flow & real  # (B, T)
    nf = flow_real.float().sum().clamp(min=1)
    nb = boot_real.float().sum().clamp(min=1)
    metrics = {"dyn_flow_mse": (flow_err * flow_real).sum().item() / nf.item(),
               "dyn_boot_mse": (boot_err * boot_real).sum().item() / nb.item(),
               "dyn_boot_frac": boot_real.float().sum().item() / max(real.float().sum().item(), 1.0)}
    return loss, agent, metrics


@torch.no_grad()
def bootstrap_velocity(predict, z_tau: Tensor, tau: Tensor, dh: Tensor, k_max: int) -> Tensor:
    """sg((b1 + b2) / 2): the mean velocity of two half steps of size dh (B, T) taken by the model.
    predict(z (B, T, S, C), tau (B, T)) -> x-hat at half-step size dh."""
    tau4, dh4 = tau[..., None, None], dh[..., None, None]
    b1 = (predict(z_tau, tau) - z_tau) / (1 - tau4)
    zp = z_tau + b1 * dh4
    tau2 = tau + dh
    b2 = (predict(zp, tau2) - zp) / (1 - tau2[..., None, None]).clamp(min=1 / k_max)
    return (b1 + b2) / 2


@torch.no_grad()
def generate_frame(model: Dynamics, cache: list[KV] | None, t0: int, action: Tensor,
                   action_mask: Tensor, instr: Tensor, steps: int = 4, ctx_noise: float = 0.1,
                   shortcut: bool = True, segments: Tensor | None = None
                   ) -> tuple[Tensor, Tensor, list[KV]]:
    """Generate frame t0 given the cached frames: action (B, 1, A) = a_{t0-1}, action_mask (B, 1),
    segments (B, Tc + 1) or None (see SpaceTimeTransformer).
    -> z (B, 1, S, C) clean prediction, agent feat (B, 1, D) of the context pass, extended cache."""
    k_max = model.k_max
    if steps & (steps - 1) or not 1 <= steps <= k_max:
        from reverie.errors import ConfigError
        raise ConfigError(f"sampling steps must be a power of two in 1..k_max={k_max}, got {steps}")
    b = instr.shape[0]
    z = torch.randn(b, 1, model.s, model.out.out_features, device=instr.device, dtype=instr.dtype)
    d = 1.0 / steps
    d_idx = torch.full((b, 1), int(math.log2(steps if shortcut else k_max)), device=z.device)
    for k in range(steps):
        tau = k * d
        x, _, _ = model.predict_x(z, torch.full((b, 1), tau, device=z.device), d_idx, action,
                                  action_mask, instr, segments, cache=cache, t0=t0)
        z = z + (x - z) * (d / (1 - tau))  # Euler step along v = (x - z) / (1 - tau)
    return z, *context_pass(model, z, cache, t0, action, action_mask, instr, ctx_noise, segments)


def context_pass(model: Dynamics, z: Tensor, cache: list[KV] | None, t0: int, action: Tensor,
                 action_mask: Tensor, instr: Tensor, ctx_noise: float = 0.1,
                 segments: Tensor | None = None, noise: Tensor | None = None) -> tuple[Tensor, list[KV]]:
    """Run frames z (B, T, S, C) as slightly noised context: -> agent feats (B, T, D), cache + them.
    `noise` (like z) replaces the random draw (zeros: the deterministic context of exported policies)."""
    b, t = z.shape[:2]
    k_max = model.k_max
    tau_i = round((1 - ctx_noise) * k_max)
    tau = tau_i / k_max
    zc = tau * z + (1 - tau) * (torch.randn_like(z) if noise is None else noise)
    _, agent, cache = model(zc, torch.full((b, t), tau_i, device=z.device),
                            torch.full((b, t), int(math.log2(k_max)), device=z.device),
                            action, action_mask, instr, segments, cache=cache, t0=t0)
    return agent, cache
