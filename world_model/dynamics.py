"""Dreamer 4 dynamics transformer: denoises the latents of each frame given the past (x-prediction).

Tokens per frame, in this order:
  S spatial latent tokens   the (noisy) tokenizer latents, packed to S tokens of width C
  R register tokens         learned, free scratch space
  1 noise token             concat(embed(tau index), embed(log2(1/d)))  -- both discrete
  1 action token            learned embedding + sum_j a_j w_j (each component linear-encoded)
                            + a learned "known" embedding; only the first when the action is missing
                            (action_mask False). Without the "known" term a missing continuous action
                            reads as a zero (stand-still) command, and action-free video, where the arm
                            moves anyway, teaches the model to discount small actions.
  G agent tokens            linear(instruction embedding) + learned; they read every token and are
                            read by none (space mask), so the world model's video path ignores them
Frame t carries a_{t-1} (the action that led to it); callers pass the already shifted actions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from reverie.world_model.transformer import KV, SpaceTimeTransformer


class Dynamics(nn.Module):
    def __init__(self, latent_tokens: int, latent_dim: int, action_dim: int, dim: int = 128,
                 depth: int = 8, heads: int = 4, kv_heads: int | None = None, registers: int = 4,
                 agents: int = 1, time_every: int = 4, k_max: int = 64, instruction_dim: int = 384,
                 softcap: float = 50.0, qk_norm: bool = True, v_pred: bool = False,
                 feat: str = "agent", *, known_action: bool):
        super().__init__()
        if feat not in ("agent", "pooled"):
            raise ValueError(f"feat={feat!r}: choose agent or pooled")
        assert k_max & (k_max - 1) == 0, "k_max must be a power of two"
        self.s, self.r, self.g, self.a = latent_tokens, registers, agents, action_dim
        self.k_max, self.v_pred, self.feat = k_max, v_pred, feat
        self.n = self.s + self.r + 1 + 1 + self.g  # tokens per frame
        std = 1 / math.sqrt(dim)
        self.z_in = nn.Linear(latent_dim, dim)
        self.z_pos = nn.Parameter(torch.randn(latent_tokens, dim) * std)
        self.registers = nn.Parameter(torch.randn(registers, dim) * std)
        self.tau_emb = nn.Embedding(k_max + 1, dim // 2)  # tau = i / k_max, i in 0..k_max
        self.d_emb = nn.Embedding(int(math.log2(k_max)) + 1, dim - dim // 2)  # log2(1/d)
        self.act_in = nn.Linear(max(action_dim, 1), dim, bias=False)
        self.act_emb = nn.Parameter(torch.randn(dim) * std)
        # known_action=False: the token of a zero action equals that of a missing one (checkpoints
        # written before this switch existed)
        self.act_known = nn.Parameter(torch.randn(dim) * std) if known_action else None
        self.instr_in = nn.Linear(instruction_dim, dim)
        self.agent_emb = nn.Parameter(torch.randn(agents, dim) * std)
        self.transformer = SpaceTimeTransformer(dim, depth, heads, kv_heads, time_every,
                                                qk_norm=qk_norm, softcap=softcap)
        self.out = nn.Linear(dim, latent_dim)
        # everyone reads everyone except the agent tokens (the last G), which only agents read
        mask = torch.ones(self.n, self.n, dtype=torch.bool)
        mask[: self.n - self.g, self.n - self.g:] = False
        self.register_buffer("space_mask", mask, persistent=False)

    def tokens(self, z: Tensor, tau_idx: Tensor, d_idx: Tensor, action: Tensor, action_mask: Tensor,
               instr: Tensor) -> Tensor:
        """z (B, T, S, C); tau_idx, d_idx (B, T) long; action (B, T, A); action_mask (B, T) bool;
        instr (B, I) -> tokens (B, T, N, D)."""
        b, t = z.shape[:2]
        lat = self.z_in(z) + self.z_pos  # (B, T, S, D)
        reg = self.registers.expand(b, t, -1, -1)
        noise = torch.cat([self.tau_emb(tau_idx), self.d_emb(d_idx)], -1)[:, :, None]  # (B, T, 1, D)
        known = action_mask[..., None].to(action.dtype)  # (B, T, 1)
        act = self.act_in(action * known) if self.a else torch.zeros_like(noise[:, :, 0])
        if self.act_known is not None:
            act = act + known * self.act_known
        act = (act + self.act_emb)[:, :, None]  # (B, T, 1, D)
        agent = (self.instr_in(instr)[:, None, None] + self.agent_emb).expand(b, t, -1, -1)
        return torch.cat([lat, reg.to(lat.dtype), noise.to(lat.dtype), act.to(lat.dtype),
                          agent.to(lat.dtype)], 2)

    def forward(self, z: Tensor, tau_idx: Tensor, d_idx: Tensor, action: Tensor, action_mask: Tensor,
                instr: Tensor, segments: Tensor | None = None, cache: list[KV] | None = None,
                t0: int = 0) -> tuple[Tensor, Tensor, list[KV]]:
        """-> (network output (B, T, S, C): x-hat, or v-hat when v_pred; features (B, T, D): mean
        agent-token output (feat=agent) or mean latent-token output (feat=pooled);
        cache extended by these frames)."""
        x = self.tokens(z, tau_idx, d_idx, action, action_mask, instr)
        y, new_cache = self.transformer(x, self.space_mask, segments, cache, t0)
        out = self.out(y[:, :, : self.s])
        agent = y[:, :, self.n - self.g:] if self.feat == "agent" else y[:, :, : self.s]
        agent = agent.mean(2)  # (B, T, D)
        return out, agent, new_cache

    def predict_x(self, z: Tensor, tau: Tensor, d_idx: Tensor, *args, **kw) -> tuple[Tensor, Tensor, list[KV]]:
        """Like forward with a float signal level tau (B, T) on the k_max grid; always returns x-hat."""
        tau_idx = (tau * self.k_max).round().long()
        out, agent, cache = self(z, tau_idx, d_idx, *args, **kw)
        if self.v_pred:  # x = z_tau + (1 - tau) v
            out = z + (1 - tau)[..., None, None] * out
        return out, agent, cache
