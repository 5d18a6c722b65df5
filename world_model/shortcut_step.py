"""The shortcut (Dreamer 4) backend's exported step (world_model/step.py): the world model's own
Tokenizer.encode and context_pass on one frame, their time attention reading a sliding window of
`context` cached frames. The context frame enters with the noise at its mean (zero), which is what
the world model's `deterministic` switch does in PyTorch. Only the growing KV cache PyTorch keeps
becomes a fixed window with a validity mask (WindowedTransformer), because an ONNX graph's state
tensors have fixed shapes.

Carried: tok_k/tok_v (Lt_tok, N_tok, G, W, E), dyn_k/dyn_v (Lt_dyn, N_dyn, G, W, E), valid (1, W),
t (1,) frame index.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from reverie.errors import BundleError
from reverie.world_model.shortcut import context_pass
from reverie.world_model.step import FilterStep, StateSpec, prepare_image


def step_transformer(tr, x: Tensor, space_mask: Tensor, ks: Tensor, vs: Tensor, valid: Tensor,
                     pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """SpaceTimeTransformer.forward for one new frame against a fixed window of W cached frames.

    x (1, 1, N, D); ks, vs (Lt, N, G, W, E): rotated keys/values of the window, one per time block;
    valid (1, W) float: 1 where a slot holds a frame of this episode (others are masked out, which
    equals attending over the shorter cache PyTorch keeps); pos (1,) float: the frame's time index.
    -> (1, 1, N, D), and the windows with this frame appended and the oldest slot dropped.
    """
    _, _, n, d = x.shape
    space_pos = torch.arange(n, device=x.device)
    keys_ok = torch.cat([valid > 0.5, torch.ones(1, 1, dtype=torch.bool, device=x.device)], -1)
    time_mask = keys_ok[:, None, None, :]                                        # (1, 1, 1, W + 1)
    new_k, new_v, ti = [], [], 0
    for blk in tr.blocks:
        if blk.time:
            xt = x.permute(0, 2, 1, 3).reshape(n, 1, d)                          # (N, 1, D)
            xt, (k, v) = blk(xt, pos, time_mask, (ks[ti], vs[ti]))               # k (N, G, W + 1, E)
            x = xt.reshape(1, n, 1, d).permute(0, 2, 1, 3)
            new_k.append(k[:, :, 1:])
            new_v.append(v[:, :, 1:])
            ti += 1
        else:
            xs, _ = blk(x.reshape(1, n, d), space_pos, space_mask)
            x = xs.reshape(1, 1, n, d)
    return tr.norm(x), torch.stack(new_k), torch.stack(new_v)


def _window_shape(tr, n: int, window: int) -> tuple[int, ...]:
    attn = next(b.attn for b in tr.blocks if b.time)
    return (tr.n_time, n, attn.g, window, attn.e)


class WindowedTransformer(nn.Module):
    """Stands in for a SpaceTimeTransformer with SpaceTimeTransformer.forward's signature, where the
    `cache` argument carries (ks, vs, valid, pos) of step_transformer: so Tokenizer.encode,
    Dynamics.forward and context_pass run unchanged around it, one frame against the fixed window."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, space_mask=None, segments=None, cache=None, t0=0):
        ks, vs, valid, pos = cache
        y, ks, vs = step_transformer(self.inner, x, space_mask, ks, vs, valid, pos)
        return y, (ks, vs)


def _with_window(module: nn.Module, attr: str) -> nn.Module:
    """A shallow copy of `module` (same parameters and buffers) whose transformer `attr` is windowed;
    the original model is left untouched."""
    twin = copy.copy(module)
    twin._modules = dict(module._modules)
    twin._modules[attr] = WindowedTransformer(getattr(module, attr))
    return twin


class ShortcutStep(FilterStep):
    def __init__(self, wm, image_hw):
        super().__init__(wm, image_hw)
        if wm.cfg.dynalang:
            raise BundleError("dynalang shortcut models need per-step language tokens, which the bundle "
                              "does not carry; export a model trained with world_model.dynalang=false")
        if wm.tokenizer.encoder.n_time == 0 or wm.dynamics.transformer.n_time == 0:
            raise BundleError("this shortcut model has no time-attention layers (time_every=0): it "
                              "keeps no context, which the exporter does not handle; train with time_every>0")
        self.size, self.window = int(wm.cfg.image_size), int(wm.context)
        self.tokenizer = _with_window(wm.tokenizer, "encoder")
        self.dynamics = _with_window(wm.dynamics, "transformer")

    def specs(self) -> list[StateSpec]:
        tok, dyn, w = self.wm.tokenizer, self.wm.dynamics, self.window
        tshape = _window_shape(tok.encoder, tok.n_patch + tok.n_lat, w)
        dshape = _window_shape(dyn.transformer, dyn.n, w)
        return [StateSpec("tok_k", tshape), StateSpec("tok_v", tshape), StateSpec("dyn_k", dshape),
                StateSpec("dyn_v", dshape), StateSpec("valid", (1, w)), StateSpec("t", (1,))]

    def forward(self, image, state, instruction, prev_action, is_first, tok_k, tok_v, dyn_k, dyn_v, valid, t):
        wm = self.wm
        keep = 1.0 - is_first                                          # (1,) 0 at an episode's start
        valid = valid * keep[:, None]                                  # forget the last episode's frames
        t = t * keep                                                   # frame index restarts at 0
        img = prepare_image(image, self.size)[:, None]                 # (1, 1, s, s, 3)
        z, (tok_k, tok_v) = self.tokenizer.encode(img, None, None, (tok_k, tok_v, valid, t), 0,
                                                  return_cache=True)  # (1, 1, L, C)
        zp = wm.pack_z(z)
        # a_{t-1} is known except at is_first (ShortcutWorldModel._prev_action).
        feat, (dyn_k, dyn_v) = context_pass(self.dynamics, zp, (dyn_k, dyn_v, valid, t), 0,
                                            prev_action[:, None], (keep > 0.5)[:, None],
                                            instruction.to(z.dtype), wm.ctx_noise, None,
                                            noise=torch.zeros_like(zp))  # feat (1, 1, D)
        next_valid = torch.cat([valid[:, 1:], torch.ones_like(valid[:, :1])], 1)
        return feat[:, 0], tok_k, tok_v, dyn_k, dyn_v, next_valid, t + 1
