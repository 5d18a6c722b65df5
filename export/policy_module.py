"""One control step as a torch module with explicit state tensors: the graph inside policy.onnx.

    step = build_step(controller_parts...)          # RSSMStep | ShortcutStep | ScratchStep
    action, *next_state = step(image, state, instruction, *carried_state)

Inputs (batch 1):  image uint8 (1, H, W, 3) at the camera's resolution (resized in the graph when the
                   model was trained at another size, /255 folded in), state float32 (1, J) in
                   the model's units (normalised by the runtime, reverie/normalize.py),
                   instruction float32 (1, 384) (unit-norm sentence embedding), then one uint8
                   (1, H, W, 3) per extra camera of a multi-camera policy, named by its key
                   (`image_wrist` for image/wrist) and resized like the main image, then the carried
                   state tensors named by `state_specs()`.
Outputs:           action float32 (1, A) (the actor's mode, clipped to [-1, 1]), then the next value
                   of every state tensor, in the same order, named `next_<name>`.

A runtime starts an episode from the specs' initial values and feeds each `next_<name>` back as
`<name>`. A policy that executes its chunks by temporal ensembling (policy/ensemble.py) carries the
last K chunks too (`chunk_history` (1, K, K, A), `chunk_valid` (1, K), after the model's own state),
so the graph's action is the controller's. Every stateful step carries `is_first` (1 at the start of an episode, 0 after), so the
first-step reset (latent state and previous action dropped) happens inside the graph exactly as
`AgentController` does it when its state is None.

The steps call the models' own methods (RSSM.obs_step, Tokenizer.encode, context_pass, the agent's
actor) so they compute what AgentController computes with deterministic latents, and follow the
models when those change; only the shortcut backend's growing KV cache becomes a fixed window with
a validity mask (WindowedTransformer), because an ONNX graph's state tensors have fixed shapes.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reverie.errors import BundleError
from reverie.export.manifest import input_name
from reverie.policy.ensemble import ensemble_weights, ensembled, pushed
from reverie.world_model.networks import symlog
from reverie.world_model.shortcut import context_pass


@dataclasses.dataclass(frozen=True)
class StateSpec:
    """One carried tensor: its ONNX input name, shape (batch included), dtype and fill value at the
    start of an episode."""

    name: str
    shape: tuple[int, ...]
    initial: float = 0.0
    dtype: str = "float32"

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "initial": self.initial}

    def zeros(self) -> Tensor:
        return torch.full(self.shape, self.initial, dtype=torch.float32)


def prepare_image(image: Tensor, size: int, clamp: bool = True) -> Tensor:
    """uint8 (N, H, W, 3) -> float (N, size, size, 3) in [0, 1], resized like the training batches
    (world_model/data.py collate: bilinear with antialiasing, then clamped)."""
    x = image.float() / 255.0
    if tuple(x.shape[1:3]) != (size, size):
        x = F.interpolate(x.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", antialias=True)
        x = x.permute(0, 2, 3, 1)
        if clamp:
            x = x.clamp(0, 1)
    return x


class PolicyStep(nn.Module):
    """Base: `image_hw` is the camera resolution the bundle expects (the training store's);
    `extra_hw` {key: (H, W)} the extra cameras' (none but for multi-camera scratch policies), in the
    order forward() takes them. `ensemble(chunk, decay)` makes the step execute its chunks as the
    controller does."""

    kind = "base"

    def __init__(self, image_hw: tuple[int, int], state_dim: int, action_dim: int,
                 extra_hw: dict[str, tuple[int, int]] | None = None):
        super().__init__()
        self.image_hw, self.state_dim, self.action_dim = tuple(image_hw), state_dim, action_dim
        self.extra_hw = {key: tuple(hw) for key, hw in (extra_hw or {}).items()}
        self.chunk, self.decay = 1, None

    def ensemble(self, chunk: int, decay: float | None) -> "PolicyStep":
        self.chunk, self.decay = int(chunk), decay
        self.register_buffer("ensemble_weights", ensemble_weights(self.chunk, decay or 0.0), persistent=False)
        return self

    def model_specs(self) -> list[StateSpec]:
        return []

    def ensemble_specs(self) -> list[StateSpec]:
        if self.decay is None or self.chunk < 2:
            return []
        k = self.chunk
        return [StateSpec("chunk_history", (1, k, k, self.action_dim)), StateSpec("chunk_valid", (1, k))]

    def state_specs(self) -> list[StateSpec]:
        return self.model_specs() + self.ensemble_specs()

    def execute(self, dist, ens: tuple) -> tuple[Tensor, tuple]:
        """dist: BoundedNormal over the chunk (1, K, A); ens: the ensemble's carried state (or ()).
        -> the deterministic action (1, A), clipped like the controllers, and the next ensemble state."""
        chunk = dist.mode().clamp(-1.0, 1.0)                                     # (1, K, A)
        if not ens:
            return chunk[:, 0], ()
        history, valid = pushed(*ens, chunk)                                      # newest first
        return ensembled(history, valid, self.ensemble_weights), (history, valid)

    def input_names(self) -> list[str]:
        return ["image", "state", "instruction", *map(input_name, self.extra_hw),
                *[s.name for s in self.state_specs()]]

    def output_names(self) -> list[str]:
        return ["action", *[f"next_{s.name}" for s in self.state_specs()]]

    def example_inputs(self) -> tuple[Tensor, ...]:
        frame = lambda hw: torch.zeros(1, *hw, 3, dtype=torch.uint8)
        return (frame(self.image_hw), torch.zeros(1, self.state_dim), torch.zeros(1, 384),
                *map(frame, self.extra_hw.values()), *[s.zeros() for s in self.state_specs()])


class RSSMStep(PolicyStep):
    """RSSM filter step + actor. State: deter (1, D), stoch (1, S, C), prev_action (1, A), is_first (1,)."""

    kind = "rssm"

    def __init__(self, wm, agent, image_hw):
        super().__init__(image_hw, wm.spec.state_dim, wm.spec.action_dim)
        if wm.dynalang:
            raise BundleError("this world model reads per-step language tokens (dynalang: true), which the "
                              "bundle format does not carry yet; export an agent on a model trained with "
                              "world_model.dynalang=false")
        self.wm, self.agent = wm, agent
        self.size = int(wm.cfg.image_size)

    def model_specs(self) -> list[StateSpec]:
        wm = self.wm
        return [StateSpec("deter", (1, wm.deter_dim)), StateSpec("stoch", (1, wm.stoch, wm.classes)),
                StateSpec("prev_action", (1, self.action_dim)), StateSpec("is_first", (1,), 1.0)]

    def forward(self, image, state, instruction, deter, stoch, prev_action, is_first, *ens):
        wm = self.wm
        first = is_first > 0.5                                                   # (1,) bool
        img = prepare_image(image, self.size)                                    # (1, s, s, 3)
        embed = torch.cat([wm.image_enc(img), wm.state_enc(symlog(state))], -1)  # (1, E)
        # The mask bit says "a previous action is known"; obs_step zeroes it (and the state) at is_first.
        action_in = wm._action_input(prev_action, torch.ones_like(first))        # (1, A + 1)
        carried = {"deter": deter, "stoch": stoch, "instr": instruction}
        post, _, _ = wm.obs_step(carried, action_in, embed, first)
        action, ens = self.execute(self.agent.chunk_policy(wm.feat(post), instruction), ens)  # (1, A)
        return action, post["deter"], post["stoch"], action, torch.zeros_like(is_first), *ens


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


class ShortcutStep(PolicyStep):
    """Shortcut (Dreamer 4) step: the world model's own Tokenizer.encode and context_pass on one frame,
    their time attention reading a sliding window of `context` cached frames, then the actor on the
    feature. The context frame enters with the noise at its mean (zero), which is what the world
    model's `deterministic` switch does in PyTorch.

    State: tok_k/tok_v (Lt_tok, N_tok, G, W, E), dyn_k/dyn_v (Lt_dyn, N_dyn, G, W, E), valid (1, W),
    t (1,) frame index, prev_action (1, A), is_first (1,).
    """

    kind = "shortcut"

    def __init__(self, wm, agent, image_hw):
        super().__init__(image_hw, wm.spec.state_dim, wm.spec.action_dim)
        if wm.cfg.get("dynalang", False):
            raise BundleError("dynalang shortcut models need per-step language tokens, which the bundle "
                              "does not carry; export a model trained with world_model.dynalang=false")
        if wm.tokenizer.encoder.n_time == 0 or wm.dynamics.transformer.n_time == 0:
            raise BundleError("this shortcut model has no time-attention layers (time_every=0): it "
                              "keeps no context, which the exporter does not handle; train with time_every>0")
        self.wm, self.agent = wm, agent
        self.size, self.window = int(wm.cfg.image_size), int(wm.context)
        self.tokenizer = _with_window(wm.tokenizer, "encoder")
        self.dynamics = _with_window(wm.dynamics, "transformer")

    def model_specs(self) -> list[StateSpec]:
        tok, dyn, w = self.wm.tokenizer, self.wm.dynamics, self.window
        tshape = _window_shape(tok.encoder, tok.n_patch + tok.n_lat, w)
        dshape = _window_shape(dyn.transformer, dyn.n, w)
        return [StateSpec("tok_k", tshape), StateSpec("tok_v", tshape), StateSpec("dyn_k", dshape),
                StateSpec("dyn_v", dshape), StateSpec("valid", (1, w)), StateSpec("t", (1,)),
                StateSpec("prev_action", (1, self.action_dim)), StateSpec("is_first", (1,), 1.0)]

    def forward(self, image, state, instruction, tok_k, tok_v, dyn_k, dyn_v, valid, t, prev_action,
                is_first, *ens):
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
        action, ens = self.execute(self.agent.chunk_policy(feat[:, 0], instruction), ens)
        next_valid = torch.cat([valid[:, 1:], torch.ones_like(valid[:, :1])], 1)
        return (action, tok_k, tok_v, dyn_k, dyn_v, next_valid, t + 1, action,
                torch.zeros_like(is_first), *ens)


class ScratchStep(PolicyStep):
    """Behaviour cloning from scratch: stateless, one frame per camera at a time (ScratchController).
    `extra_hw` {key: (H, W)}: the policy's extra cameras (scratch_bc.json image_keys after the first)."""

    kind = "scratch_bc"

    def __init__(self, policy, image_hw, extra_hw: dict[str, tuple[int, int]] | None = None):
        s = policy.sizes
        super().__init__(image_hw, s["state_dim"], s["action_dim"], extra_hw)
        if 1 + len(self.extra_hw) != s.get("cameras", 1):
            raise BundleError(f"this scratch policy reads {s.get('cameras', 1)} cameras, the export was given "
                              f"{1 + len(self.extra_hw)}; its scratch_bc.json image_keys name them")
        self.policy, self.size = policy, int(s["image_size"])

    def forward(self, image, state, instruction, *rest):
        extra, ens = rest[:len(self.extra_hw)], rest[len(self.extra_hw):]
        # ScratchController resizes without clamping; so does its graph.
        images = [prepare_image(x, self.size, clamp=False) for x in (image, *extra)]  # (1, s, s, 3) each
        action, ens = self.execute(self.policy.chunk_policy(images[0], state, instruction, *images[1:]), ens)
        return action, *ens
