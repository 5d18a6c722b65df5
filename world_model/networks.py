"""Building blocks shared by the world models (DreamerV3 conventions).

symlog/symexp squash vector inputs and regression targets; TwoHot is the symexp two-hot
distribution of reward and value heads; Dense = Linear -> RMSNorm -> SiLU; BlockGRU is DreamerV3's
block-diagonal GRU; ConvEncoder / ConvDecoder map 64x64-style images to vectors and back; PixelMean
weights an image loss towards the pixels that differ from the mean frame.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def symlog(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.expm1(torch.abs(x))


class TwoHot(nn.Module):
    """Symexp two-hot: `bins` evenly spaced in symlog space over [-limit, limit].

    A target y is encoded as weights on the two bins around symlog(y); the loss is the cross-entropy
    of the logits against those weights, and the prediction is symexp(sum softmax(logits) * bins).
    """

    def __init__(self, bins: int = 255, limit: float = 20.0):
        super().__init__()
        self.register_buffer("bins", torch.linspace(-limit, limit, bins), persistent=False)

    def target(self, y: Tensor) -> Tensor:
        """(...) -> (..., K) two-hot weights of symlog(y)."""
        x = symlog(y.float()).clamp(self.bins[0], self.bins[-1])
        k = len(self.bins)
        above = torch.searchsorted(self.bins, x.contiguous(), right=True).clamp(1, k - 1)  # (...)
        below = above - 1
        lo, hi = self.bins[below], self.bins[above]
        w_hi = ((x - lo) / (hi - lo)).clamp(0, 1)
        out = torch.zeros(*x.shape, k, device=x.device)
        out.scatter_(-1, below.unsqueeze(-1), (1 - w_hi).unsqueeze(-1))
        out.scatter_add_(-1, above.unsqueeze(-1), w_hi.unsqueeze(-1))
        return out

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """(..., K) logits, (...) targets -> (...) cross-entropy."""
        return -(self.target(y) * F.log_softmax(logits.float(), -1)).sum(-1)

    def mean(self, logits: Tensor) -> Tensor:
        """(..., K) -> (...) predicted value."""
        return symexp((F.softmax(logits.float(), -1) * self.bins).sum(-1))


class _RMSNorm(torch.autograd.Function):
    """x * rsqrt(mean(x^2) + eps) * w over `dim`, in float32 at least, with a hand-written backward. Why: the
    native CPU rms_norm is composite and its autograd backward runs ~10 elementwise passes (pow, mean
    and mul backward); this one runs 5. Measured 1.3x on the conv norms' shapes at one thread. Same
    math up to rounding (tests/test_train_speed.py compares the gradients)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float, dim: int) -> Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))           # bf16 -> f32, f64 stays
        r = torch.rsqrt(xf.square().mean(dim, keepdim=True) + eps)   # (..., 1, ...)
        xhat = xf * r
        w = weight.to(xf.dtype).reshape([-1] + [1] * (-dim - 1))          # broadcast along `dim` (< 0)
        ctx.save_for_backward(xhat, r, w)
        ctx.dim, ctx.dtype, ctx.wdtype = dim, x.dtype, weight.dtype
        return (xhat * w).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        xhat, r, w = ctx.saved_tensors
        g = grad.to(xhat.dtype)
        gw = g * w
        dx = (gw - xhat * (gw * xhat).mean(ctx.dim, keepdim=True)) * r
        dims = [d for d in range(g.dim()) if d != g.dim() + ctx.dim]
        dw = (g * xhat).sum(dims)
        return dx.to(ctx.dtype), dw.to(ctx.wdtype), None, None


def _rms_norm(x: Tensor, weight: Tensor, eps: float, dim: int, act: bool = False) -> Tensor:
    """The same norm (then SiLU if `act`) as plain ops, for torch.compile to fuse into one forward and one
    backward kernel."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    y = xf * torch.rsqrt(xf.square().mean(dim, keepdim=True) + eps)
    y = (y * weight.to(xf.dtype).reshape([-1] + [1] * (-dim - 1))).to(x.dtype)
    return F.silu(y) if act else y


_compiled_rms_norm = None


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm (same parameters and state dict) whose `fused` form runs _RMSNorm; off: the native op.
    `compiled` (the conv norms, set_fused_norm(..., compiled=True)): _rms_norm under torch.compile, 2.1x
    the hand-written one on the cpu preset's first encoder norm (256 x 16 x 32 x 32), ~20 s to compile
    once (cached on disk by inductor); slower on the small vector norms, so those stay hand-written. A
    failed compile (no C++ compiler) falls back to the hand-written op."""

    fused = False     # the native op unless set_fused_norm (the trainer) says so: export and eval trace plain ops
    compiled = False
    act = False       # ChannelNorm(act=True): SiLU after the norm, fused with it when compiled
    dim = -1

    def forward(self, x: Tensor) -> Tensor:
        global _compiled_rms_norm
        if not self.fused:
            y = self._native(x)
        elif self.compiled and RMSNorm.compiled is not None:
            try:
                if _compiled_rms_norm is None:
                    _compiled_rms_norm = torch.compile(_rms_norm, dynamic=True)
                return _compiled_rms_norm(x, self.weight, self.eps, self.dim, self.act)
            except Exception as e:  # noqa: BLE001  (inductor needs a working C++ toolchain)
                import logging

                logging.getLogger(__name__).warning("compiled RMSNorm unavailable (%s); using the hand-written one", e)
                RMSNorm.compiled = None  # for every instance, for the rest of the process
                y = _RMSNorm.apply(x, self.weight, self.eps, self.dim)
        else:
            y = _RMSNorm.apply(x, self.weight, self.eps, self.dim)
        return F.silu(y) if self.act else y

    def _native(self, x: Tensor) -> Tensor:
        return super().forward(x)


def set_fused_norm(module: nn.Module, on: bool, compiled: bool = False) -> None:
    """Switch every RMSNorm in `module` between the hand-written (fused) and the native op; `compiled`:
    the channel norms of the conv stacks (the large ones) run torch.compile'd."""
    for m in module.modules():
        if isinstance(m, RMSNorm):
            m.fused = bool(on)
            m.compiled = bool(on and compiled and isinstance(m, ChannelNorm))


def set_channels_last(module: nn.Module, on: bool) -> None:
    """Run the conv stacks in channels_last memory (NHWC in memory, NCHW in shape) or not. Numerically
    the same op; oneDNN's convolutions and the channel norms are faster on NHWC."""
    for m in module.modules():
        if isinstance(m, (ConvEncoder, ConvDecoder)):
            m.channels_last = bool(on)
            m.to(memory_format=torch.channels_last if on else torch.contiguous_format)


class Dense(nn.Sequential):
    """Linear -> RMSNorm -> SiLU."""

    def __init__(self, din: int, dout: int):
        super().__init__(nn.Linear(din, dout, bias=False), RMSNorm(dout, eps=1e-4), nn.SiLU())


def zeroed(layer: nn.Linear) -> nn.Linear:
    """A linear layer that starts at zero output (heads that start neutral, FiLM that starts as identity)."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class MLP(nn.Module):
    """`layers` Dense layers of `units`, then a linear output (zero-initialised when `zero_out`)."""

    def __init__(self, din: int, dout: int, units: int, layers: int, zero_out: bool = False):
        super().__init__()
        dims = [din] + [units] * layers
        self.body = nn.Sequential(*[Dense(a, b) for a, b in zip(dims[:-1], dims[1:])])
        self.out = zeroed(nn.Linear(dims[-1], dout)) if zero_out else nn.Linear(dims[-1], dout)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x))


class BlockLinear(nn.Module):
    """Block-diagonal linear layer: G independent (din/G -> dout/G) maps. (..., din) -> (..., dout)."""

    def __init__(self, din: int, dout: int, groups: int):
        super().__init__()
        if din % groups or dout % groups:
            raise ValueError(f"BlockLinear: {din} and {dout} must be divisible by {groups} groups")
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(groups, din // groups, dout // groups))
        self.bias = nn.Parameter(torch.zeros(dout))
        nn.init.uniform_(self.weight, -1 / math.sqrt(din // groups), 1 / math.sqrt(din // groups))

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(*x.shape[:-1], self.groups, -1)          # (..., G, din/G)
        x = torch.einsum("...gi,gio->...go", x, self.weight)   # (..., G, dout/G)
        return x.reshape(*x.shape[:-2], -1) + self.bias


class BlockGRU(nn.Module):
    """DreamerV3's recurrent core. Each input is embedded separately (Dense to `hidden`); the joint
    embedding is given to every one of `blocks` groups alongside that group's slice of the
    deterministic state; block-diagonal layers and block-diagonal gates follow, so the parameter count
    grows with deter^2 / blocks instead of deter^2.

    layout "v3" (danijar/dreamerv3 rssm.py `_core`): `layers` block-diagonal layers of width deter
    (each group D/G wide), RMSNorm over the whole deter, SiLU, then gates to 3 x deter.
    layout "wide" (reverie before issue 22, kept so its checkpoints load): one block-diagonal layer of
    width blocks x hidden (RMSNorm per group), then gates. At deter 512 / hidden 512 that is 10M
    parameters where DreamerV3 has 1M, and 2x the time of the whole model's update.
    """

    def __init__(self, input_dims: list[int], deter: int, hidden: int, blocks: int, layout: str = "v3",
                 layers: int = 1):
        super().__init__()
        if layout not in ("v3", "wide"):
            raise ValueError(f"BlockGRU layout {layout!r}: choose v3 or wide")
        self.deter, self.blocks, self.layout = deter, blocks, layout
        self.embed_deter = Dense(deter, hidden)
        self.embed_inputs = nn.ModuleList([Dense(d, hidden) for d in input_dims])
        width = (1 + len(input_dims)) * hidden                  # joint embedding per block
        if layout == "v3":
            dims = [blocks * width + deter] + [deter] * layers
            self.layers = nn.ModuleList([BlockLinear(a, b, blocks) for a, b in zip(dims[:-1], dims[1:])])
            self.norms = nn.ModuleList([RMSNorm(deter, eps=1e-4) for _ in range(layers)])
            self.gates = BlockLinear(deter, 3 * deter, blocks)
        else:
            self.hidden = BlockLinear(blocks * width + deter, blocks * hidden, blocks)
            self.norm = RMSNorm(hidden, eps=1e-4)
            self.gates = BlockLinear(blocks * hidden, 3 * deter, blocks)

    def forward(self, deter: Tensor, inputs: list[Tensor]) -> Tensor:
        """deter (B, D), inputs [(B, d_i)] -> new deter (B, D)."""
        b, g = deter.shape[0], self.blocks
        x = torch.cat([self.embed_deter(deter)] + [f(i) for f, i in zip(self.embed_inputs, inputs)], -1)
        x = x.unsqueeze(1).expand(b, g, x.shape[-1])             # (B, G, width)
        if self.layout == "v3":
            x = torch.cat([deter.reshape(b, g, -1), x], -1).reshape(b, -1)  # (B, G * (D/G + width))
            for layer, norm in zip(self.layers, self.norms):
                x = F.silu(norm(layer(x)))                       # (B, D)
        else:
            x = torch.cat([x, deter.reshape(b, g, -1)], -1)      # (B, G, width + D/G)
            x = self.hidden(x.reshape(b, -1)).reshape(b, g, -1)  # (B, G, hidden)
            x = F.silu(self.norm(x)).reshape(b, -1)              # (B, G * hidden)
        gates = self.gates(x).reshape(b, g, 3, -1)               # (B, G, 3, D/G)
        reset, cand, update = [gates[:, :, i].reshape(b, -1) for i in range(3)]
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update - 1)
        return update * cand + (1 - update) * deter


class ChannelNorm(RMSNorm):
    """RMSNorm over the channel axis of (N, C, H, W); act=True: then SiLU (the conv stacks: one fused kernel
    when compiled; their Sequential keeps an Identity where the SiLU was, so parameter names stay)."""

    dim = -3

    def __init__(self, channels: int, eps: float = 1e-4, act: bool = False):
        super().__init__(channels, eps=eps)
        self.act = act

    def _native(self, x: Tensor) -> Tensor:  # the fused forms reduce over C in place, whatever the memory format
        return nn.RMSNorm.forward(self, x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def conv_stages(size: int, minres: int = 4) -> int:
    stages = int(round(math.log2(size / minres)))
    if size != minres * 2 ** stages:
        raise ValueError(f"image size {size} must be {minres} times a power of two (e.g. 16, 32, 64)")
    return stages


class Coords(nn.Module):
    """(N, C, H, W) -> (N, C + 2, H, W): appends each pixel's x and y in [-1, 1] (CoordConv, Liu et al.
    2018). A conv net turns a vector into a blob at given coordinates, and back, badly without them: it
    memorises the training positions (the RSSM drew the cubes of training episodes in place and those
    of held-out ones elsewhere)."""

    def __init__(self, size: int):
        super().__init__()
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        self.register_buffer("grid", torch.stack([xs, ys])[None], persistent=False)  # (1, 2, H, W)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.grid.to(x.dtype).expand(x.shape[0], -1, -1, -1)], 1)


class ConvEncoder(nn.Module):
    """(N, H, W, 3) float in [0, 1] -> (N, E). Stride-2 convs until 4x4, channels depth * 2^i;
    coords: every conv also reads its input's pixel coordinates (Coords)."""

    def __init__(self, size: int, depth: int, coords: bool = False):
        super().__init__()
        layers, cin, res = [], 3, size
        for i in range(conv_stages(size)):
            cout = depth * 2 ** i
            if coords:
                layers.append(Coords(res))
            layers += [nn.Conv2d(cin + 2 * coords, cout, 4, 2, 1, bias=False), ChannelNorm(cout, eps=1e-4, act=True),
                       nn.Identity()]
            cin, res = cout, res // 2
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.out_dim = cin * 4 * 4

    channels_last = False  # set_channels_last

    def forward(self, image: Tensor) -> Tensor:
        # (N, H, W, 3) permuted is already NHWC in memory; channels_last off: the plain NCHW layout
        x = image.permute(0, 3, 1, 2) - 0.5
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return self.net(x)


class ConvDecoder(nn.Module):
    """(N, F) -> (N, H, W, 3) in [0, 1] (sigmoid output; trained with MSE); coords: every transposed
    conv also reads its input's pixel coordinates (Coords)."""

    def __init__(self, din: int, size: int, depth: int, coords: bool = False):
        super().__init__()
        stages = conv_stages(size)
        self.cin = depth * 2 ** (stages - 1)
        self.inp = nn.Linear(din, self.cin * 4 * 4)
        layers, cin, res = [], self.cin, 4
        for i in reversed(range(stages)):
            last = i == 0
            cout = 3 if last else depth * 2 ** (i - 1)
            if coords:
                layers.append(Coords(res))
            layers.append(nn.ConvTranspose2d(cin + 2 * coords, cout, 4, 2, 1, bias=last))
            if not last:
                layers += [ChannelNorm(cout, eps=1e-4, act=True), nn.Identity()]
            cin, res = cout, res * 2
        self.net = nn.Sequential(*layers)

    channels_last = False  # set_channels_last

    def forward(self, feat: Tensor, base: Tensor | None = None) -> Tensor:
        """base (H, W, 3) in (0, 1), optional: the network predicts the logit residual over it, so an
        untrained decoder already draws the base image (the static scene) instead of grey."""
        x = self.inp(feat).reshape(-1, self.cin, 4, 4)          # (N, C, 4, 4)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.net(x).permute(0, 2, 3, 1)                # (N, H, W, 3)
        if base is not None:
            logits = logits + torch.logit(base.clamp(0.02, 0.98)).to(logits.dtype)
        return torch.sigmoid(logits)


@torch.no_grad()
def update_mean_frame(mean: Tensor, count: Tensor, frames: Tensor, weight: Tensor | None = None) -> None:
    """A running mean frame, in place: mean (H, W, 3) and count (batches seen, a scalar tensor) from
    frames (N, H, W, 3), each weighted by weight (N,) (1 without; 0 leaves a frame out, e.g. padding, with
    no host sync where boolean indexing would have one); a plain average, then an EMA with a horizon of
    1,000 batches. Under torch.distributed the ranks' frames are pooled, so every rank keeps the same
    buffers (DDP/FSDP)."""
    frames = frames.float()
    if weight is None:
        n = torch.full((1,), float(len(frames)), device=mean.device)
    else:  # weight 0 adds exact zeros: the same sums as indexing the kept frames
        frames, n = frames * weight.float().reshape(-1, 1, 1, 1), weight.float().sum()[None]
    total = torch.cat([frames.sum(0).flatten() if len(frames) else torch.zeros_like(mean).flatten(), n])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
    n = total[-1]
    count += (n > 0).float()
    rate = torch.where(n > 0, (1 / count.clamp(min=1)).clamp(min=1e-3), torch.zeros_like(n))
    mean.lerp_(total[:-1].reshape(mean.shape) / n.clamp(min=1), rate)


class PixelMean(nn.Module):
    """Running mean of the training frames and the foreground weights it gives.

    The frames of a fixed camera differ from their mean where something moves or is placed anew each
    episode (the arm, the objects); the static scene matches it. An image loss weighted by
    `weights(image)` (1 on the scene, 1 + boost on the foreground) makes the few pixels that carry the
    task count as much as the textured table, which plain MSE lets dominate the first thousand steps.
    Buffers (saved with the model): `pixel_mean` (H, W, 3), `mean_count` (frames batches seen).
    """

    def __init__(self, size: int, boost: float, threshold: float = 0.1):
        super().__init__()
        self.boost, self.threshold = float(boost), float(threshold)
        self.register_buffer("pixel_mean", torch.full((size, size, 3), 0.5))
        self.register_buffer("mean_count", torch.zeros(()))

    def update(self, frames: Tensor, weight: Tensor | None = None) -> None:
        """frames (N, H, W, 3) in [0, 1], weight (N,) optional (0: leave the frame out)."""
        update_mean_frame(self.pixel_mean, self.mean_count, frames, weight)

    @torch.no_grad()
    def weights(self, image: Tensor) -> Tensor:
        """(..., H, W, 3) in [0, 1] -> (..., H, W) per-pixel loss weights in [1, 1 + boost]."""
        if self.boost <= 0:
            return torch.ones(image.shape[:-1], device=image.device)
        far = (image.float() - self.pixel_mean).abs().amax(-1)  # (..., H, W)
        seen = (self.mean_count > 0).float()                    # no mean yet: plain MSE (no host sync)
        return 1.0 + seen * self.boost * (far / self.threshold).clamp(max=1.0)
