"""Space x time transformer of Dreamer 4 (tokenizer and dynamics share it).

Pre-norm RMSNorm blocks with SwiGLU MLPs, rotary positions, QK-norm, attention logit soft-capping and
grouped-query attention. A block attends either over space (the tokens of one frame, under a
modality mask) or over time (one token slot across frames, causal); every `time_every`-th block is a
time block, the rest are space blocks. Time blocks keep a KV cache so generation runs frame by frame.

Shapes: B batch, T frames, N tokens per frame, D width, H query heads, G key/value heads, E head dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KV = tuple[Tensor, Tensor]  # (B*N, G, Tc, E) keys and values of the cached frames


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return x32.to(x.dtype) * self.weight


def rope(x: Tensor, pos: Tensor, base: float = 10000.0) -> Tensor:
    """Rotate pairs of channels of x (..., L, E) by angles pos * base^(-2i/E); pos (L,) or (..., L)."""
    e = x.shape[-1]
    freqs = base ** (-torch.arange(0, e, 2, device=x.device, dtype=torch.float32) / e)  # (E/2,)
    ang = pos.to(torch.float32)[..., None] * freqs  # (L, E/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


class Attention(nn.Module):
    """Multi-head attention with GQA (G <= H key/value heads), QK-norm, RoPE and logit soft-cap."""

    def __init__(self, dim: int, heads: int, kv_heads: int, qk_norm: bool = True, softcap: float = 50.0):
        super().__init__()
        assert dim % heads == 0 and heads % kv_heads == 0, (dim, heads, kv_heads)
        self.h, self.g, self.e = heads, kv_heads, dim // heads
        self.softcap = softcap
        self.q = nn.Linear(dim, heads * self.e, bias=False)
        self.kv = nn.Linear(dim, 2 * kv_heads * self.e, bias=False)
        self.o = nn.Linear(heads * self.e, dim, bias=False)
        self.q_norm = RMSNorm(self.e) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.e) if qk_norm else nn.Identity()

    def forward(self, x: Tensor, pos: Tensor, mask: Tensor | None, cache: KV | None = None
                ) -> tuple[Tensor, KV]:
        # x (B, L, D); pos (L,) positions of x's rows; mask bool, True = may attend, broadcastable to
        # (B, 1, L, Lc + L); cache: keys/values of Lc earlier positions (already rotated).
        b, l, _ = x.shape
        q = self.q_norm(self.q(x).view(b, l, self.h, self.e).transpose(1, 2))  # (B, H, L, E)
        k, v = self.kv(x).view(b, l, 2, self.g, self.e).permute(2, 0, 3, 1, 4)  # (B, G, L, E) each
        k = self.k_norm(k)
        q, k = rope(q, pos), rope(k, pos)
        if cache is not None:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        new_cache = (k, v)
        if self.softcap <= 0:  # fused kernel when no soft-cap is asked for
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.g != self.h)
        else:
            rep = self.h // self.g
            kr = k.repeat_interleave(rep, 1) if rep > 1 else k  # (B, H, Lk, E)
            vr = v.repeat_interleave(rep, 1) if rep > 1 else v
            logits = (q @ kr.transpose(-1, -2)) / math.sqrt(self.e)  # (B, H, L, Lk)
            logits = self.softcap * torch.tanh(logits / self.softcap)
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            out = logits.softmax(-1) @ vr  # (B, H, L, E)
        return self.o(out.transpose(1, 2).reshape(b, l, self.h * self.e)), new_cache


class SwiGLU(nn.Module):
    def __init__(self, dim: int, mult: float = 8 / 3):
        super().__init__()
        hidden = int(dim * mult + 7) // 8 * 8
        self.up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a, g = self.up(x).chunk(2, -1)
        return self.down(F.silu(g) * a)


class Block(nn.Module):
    def __init__(self, dim, heads, kv_heads, time: bool, qk_norm=True, softcap=50.0, mlp_mult=8 / 3):
        super().__init__()
        self.time = time
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.attn = Attention(dim, heads, kv_heads, qk_norm, softcap)
        self.mlp = SwiGLU(dim, mlp_mult)

    def forward(self, x: Tensor, pos: Tensor, mask: Tensor | None, cache: KV | None = None):
        a, new_cache = self.attn(self.norm1(x), pos, mask, cache)
        x = x + a
        return x + self.mlp(self.norm2(x)), new_cache


class SpaceTimeTransformer(nn.Module):
    """`depth` blocks; block i attends over time when (i + 1) % time_every == 0, else over space.

    forward(x (B, T, N, D), space_mask (N, N) bool: row token may read column token,
            segments (B, Tc + T) long: episode/segment id of every cached and new frame; a frame reads
              only earlier frames of its own segment (None: one segment; single-image items use
              arange(T) so their frames see only themselves),
            cache: list of KV per time block or None, t0: frame index of x's first frame)
      -> (B, T, N, D), new cache (the given cache extended by x's frames)
    """

    def __init__(self, dim: int, depth: int, heads: int, kv_heads: int | None = None,
                 time_every: int = 4, qk_norm: bool = True, softcap: float = 50.0,
                 mlp_mult: float = 8 / 3):
        super().__init__()
        kv_heads = kv_heads or heads
        self.time_every = time_every
        self.blocks = nn.ModuleList(
            Block(dim, heads, kv_heads, time=time_every > 0 and (i + 1) % time_every == 0,
                  qk_norm=qk_norm, softcap=softcap, mlp_mult=mlp_mult) for i in range(depth))
        self.norm = RMSNorm(dim)
        self.n_time = sum(b.time for b in self.blocks)

    def forward(self, x: Tensor, space_mask: Tensor | None = None, segments: Tensor | None = None,
                cache: list[KV] | None = None, t0: int = 0) -> tuple[Tensor, list[KV]]:
        b, t, n, d = x.shape
        tc = 0 if cache is None or not cache else cache[0][0].shape[2]  # cached frames
        space_pos = torch.arange(n, device=x.device)
        time_pos = torch.arange(t0, t0 + t, device=x.device)
        kpos = torch.arange(t0 - tc, t0 + t, device=x.device)
        time_mask = kpos[None, :] <= time_pos[:, None]  # (T, Tc + T) causal
        if self.n_time == 0:
            time_mask = None
        elif segments is not None:
            same = segments[:, None, :] == segments[:, tc:, None]  # (B, T, Tc + T)
            time_mask = (time_mask & same)[:, None].expand(b, n, t, tc + t).reshape(b * n, 1, t, tc + t)
        elif t == 1:
            time_mask = None  # one new frame may read every cached frame
        new_cache, ti = [], 0
        for blk in self.blocks:
            if blk.time:
                xt = x.permute(0, 2, 1, 3).reshape(b * n, t, d)  # (B*N, T, D)
                xt, kv = blk(xt, time_pos, time_mask, None if cache is None else cache[ti])
                x = xt.view(b, n, t, d).permute(0, 2, 1, 3)
                new_cache.append(kv)
                ti += 1
            else:
                xs, _ = blk(x.reshape(b * t, n, d), space_pos, space_mask)  # (B*T, N, D)
                x = xs.view(b, t, n, d)
        return self.norm(x), new_cache


def trim_cache(cache: list[KV], max_frames: int) -> list[KV]:
    """Keep the last `max_frames` frames of a KV cache (sliding context window)."""
    if not cache or max_frames <= 0 or cache[0][0].shape[2] <= max_frames:
        return cache
    return [(k[:, :, -max_frames:], v[:, :, -max_frames:]) for k, v in cache]
