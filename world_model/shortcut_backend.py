"""The `shortcut` backend (Dreamer 4): causal tokenizer + shortcut-forcing dynamics transformer.

Two stages, one model: `stage: tokenizer` trains the masked autoencoder; `stage: dynamics` trains the
dynamics transformer and the heads on the frozen tokenizer's latents (its weights come from
`tokenizer: RUN_DIR`, or from the same checkpoint on resume); `stage: both` (default) trains the
tokenizer for `tokenizer_steps` optimiser steps and then the dynamics, in one `reverie train-wm` run.

Features: the agent-token output (`feat: agent`; the agent tokens carry the instruction, read every
token, and are read by none) or the mean of the latent-token outputs (`feat: pooled`), taken from
the pass that runs a frame as slightly noised context. Heads on the features: reward (symexp
two-hot), continue (Bernoulli) and joint state (symlog MSE, a probe used by evaluation). Every loss
term is divided by a running RMS of itself, and averages over the rows where batch["valid"] (B, T) is
True (all rows without the key): the padding after a short episode's end (datasets/sampler.py) follows
the real rows, and tokenizer and dynamics are causal in time, so it reaches neither loss nor features.

The state a rollout continues from: the KV cache of the time-attention layers (`k`, `v`, batch-major),
segment ids of the cached frames, the frame counter, the last latents `z` (B, L, C) and feature.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reverie.errors import ConfigError
from reverie.world_model.backend import DataSpec, Policy, State, WorldModel, register
from reverie.world_model.dynamics import Dynamics
from reverie.world_model.networks import MLP, TwoHot, symexp, symlog
from reverie.world_model.shortcut import RunningRMS, context_pass, generate_frame, shortcut_loss
from reverie.world_model.shortcut_step import ShortcutStep
from reverie.world_model.tokenizer import Tokenizer
from reverie.world_model.transformer import KV, trim_cache

STAGES = ("both", "tokenizer", "dynamics")


@register("shortcut")
class ShortcutWorldModel(WorldModel):
    onnx_step = ShortcutStep  # the exported filter step (world_model/shortcut_step.py)
    # what runs written before these keys (all in Nov 2026) were trained with (checkpoint.read fills them in)
    legacy_config = {"boot_frac": None, "boot_start": 0,        # before bootstrap scheduling: the paper's
                     "tok_seq_len": None, "tok_time_every": None,  # the whole window, time_every
                     "tok_center": True,
                     "known_action": False}  # before the "known" action embedding: missing == zero action

    def __init__(self, cfg, spec: DataSpec):
        super().__init__(cfg, spec)
        c = cfg
        if c.stage not in STAGES:
            raise ConfigError(f"world_model.stage={c.stage!r}: choose one of {STAGES}")
        h, w, _ = spec.image_shape
        if (h, w) != (c.image_size, c.image_size):
            raise ConfigError(f"shortcut model built for {c.image_size}x{c.image_size} images, the data "
                              f"has {h}x{w}; set the preset's image_size or record at that size")
        if c.latents % c.pack:
            raise ConfigError(f"latents={c.latents} must be divisible by pack={c.pack}")
        self.stage, self.steps_tok = c.stage, int(c.tokenizer_steps)
        self.pack, self.lat, self.bneck = c.pack, c.latents, c.bottleneck
        self.steps, self.ctx_noise, self.shortcut = c.sampling_steps, c.ctx_noise, c.shortcut
        self.single_frac = c.single_frac
        self.boot_frac, self.boot_start = c.boot_frac, int(c.boot_start)
        self.context = int(c.context or c.seq_len - 1)  # RoPE distances stay within training's
        self.tok_seq_len = int(c.tok_seq_len or 0)  # null: the whole window
        self.tokenizer = Tokenizer(spec.image_shape, c.patch, c.latents, c.bottleneck, c.tok_dim,
                                   c.tok_depth, c.tok_heads, c.tok_kv_heads,
                                   c.tok_time_every or c.time_every,  # null: the dynamics' period
                                   c.softcap, c.qk_norm, c.tok_drop_max, c.tok_center)
        self.dynamics = Dynamics(c.latents // c.pack, c.bottleneck * c.pack, spec.action_dim, c.dim,
                                 c.depth, c.heads, c.kv_heads, c.registers, c.agents, c.time_every,
                                 c.k_max, spec.instruction_dim, c.softcap, c.qk_norm, c.v_pred,
                                 feat=c.feat, known_action=c.known_action)
        self.feat_dim = c.dim
        self.twohot = TwoHot(c.reward_bins, c.bins_range)
        self.reward_head = MLP(c.dim, c.reward_bins, c.head_units, c.head_layers, zero_out=True)
        self.cont_head = MLP(c.dim, 1, c.head_units, c.head_layers)
        self.state_head = MLP(c.dim, spec.state_dim, c.head_units, c.head_layers)
        self.scales = dict(c.loss_scales)
        self.norms = nn.ModuleDict({k: RunningRMS(c.rms_decay) if c.rms_norm else nn.Identity()
                                    for k in ("image", "dyn", "reward", "cont", "state")})
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))  # training loss() calls
        self.register_buffer("tok_loaded", torch.zeros((), dtype=torch.bool))
        self._set_trainable()
        self.register_load_state_dict_post_hook(lambda module, keys: module._set_trainable())

    # Export sets this: observed frames enter the context with the noise at its mean (zero) instead of
    # a random draw, so observe is a pure function that the ONNX policy reproduces. Off for training.
    deterministic = False

    # ----- helpers ------------------------------------------------------------------------------
    def current_stage(self) -> str:
        if self.stage != "both":
            return self.stage
        return "tokenizer" if int(self.updates) < self.steps_tok else "dynamics"

    def _set_trainable(self) -> None:
        """Only the current stage's parameters require grad (the optimiser and DDP then skip the
        rest; a resumed run finds optimiser state for exactly the trainable ones)."""
        self._trainable = self.current_stage()
        tok = self._trainable == "tokenizer"
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith("tokenizer.") == tok)

    def _load_tokenizer(self) -> None:
        """stage=dynamics: copy the tokenizer weights of `cfg.tokenizer` (once; checkpoints keep them)."""
        if self.tok_loaded or self.stage != "dynamics" or not self.cfg.tokenizer:
            return
        from safetensors.torch import load_file

        from reverie.world_model.checkpoint import find

        weights = load_file(find(Path(self.cfg.tokenizer)) / "model.safetensors")
        tok = {k[len("tokenizer."):]: v for k, v in weights.items() if k.startswith("tokenizer.")}
        if not tok:
            raise ConfigError(f"{self.cfg.tokenizer} holds no shortcut tokenizer weights; pass a run "
                              "trained with world_model=shortcut world_model.stage=tokenizer")
        self.tokenizer.load_state_dict(tok)
        self.tok_loaded.fill_(True)

    def _image(self, batch) -> Tensor:
        img = batch["image"]
        return img.float() / 255 if img.dtype == torch.uint8 else img.float()

    def pack_z(self, z: Tensor) -> Tensor:
        """(..., L, C) tokenizer latents -> (..., L/pack, C*pack) dynamics tokens."""
        return z.reshape(*z.shape[:-2], self.lat // self.pack, self.bneck * self.pack)

    def unpack_z(self, z: Tensor) -> Tensor:
        return z.reshape(*z.shape[:-2], self.lat, self.bneck)

    @staticmethod
    def _prev_action(batch, single: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """-> a_{t-1} (B, T, A), its mask (B, T) (False at is_first and single images; row 0 uses the
        batch's `prev_action` / `prev_action_mask` when continuing a rollout, else unknown),
        segment ids (B, T) counted from is_first."""
        action, mask, first = batch["action"], batch["action_mask"].bool(), batch["is_first"].bool()
        a0 = batch.get("prev_action", torch.zeros_like(action[:, 0]))[:, None].to(action.dtype)
        m0 = batch.get("prev_action_mask", torch.zeros_like(mask[:, 0]))[:, None].bool()
        prev = torch.cat([a0, action[:, :-1]], 1)
        prev_mask = torch.cat([m0, mask[:, :-1]], 1) & ~first
        seg = first.long().cumsum(1)
        if single is not None:
            prev_mask = prev_mask & ~single[:, None]
        return prev, prev_mask, seg

    def _single_segments(self, seg: Tensor) -> tuple[Tensor, Tensor]:
        """A fraction `single_frac` of items become single images: every frame its own segment."""
        b, t = seg.shape
        single = torch.rand(b, device=seg.device) < self.single_frac
        return torch.where(single[:, None], torch.arange(t, device=seg.device).expand(b, t), seg), single

    def _norm(self, name: str, value: Tensor) -> Tensor:
        return self.scales.get(name, 1.0) * self.norms[name](value)

    # ----- the interface ------------------------------------------------------------------------
    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        stage = self.current_stage()
        if stage != self._trainable:  # stage=both switched to the dynamics
            self._set_trainable()
        if self.training:
            self.updates += 1
        img = self._image(batch)
        valid = batch.get("valid")  # (B, T) bool: padding past an episode's end is False
        seg = batch["is_first"].bool().long().cumsum(1)
        seg, single = self._single_segments(seg)
        if stage == "tokenizer":
            if self.tok_seq_len and img.shape[1] > self.tok_seq_len:  # shorter clips: cheaper steps
                i = int(torch.randint(0, img.shape[1] - self.tok_seq_len + 1, ()))
                img, seg = img[:, i:i + self.tok_seq_len], seg[:, i:i + self.tok_seq_len]
                valid = None if valid is None else valid[:, i:i + self.tok_seq_len]
            mse, metrics = self.tokenizer.loss(img, seg, valid)
            total = self._norm("image", mse)
            return total, {"loss/total": total.item(), "loss/image": mse.item(),
                           **{f"tokenizer/{k}": v for k, v in metrics.items()}}
        self._load_tokenizer()
        with torch.no_grad():
            z = self.pack_z(self.tokenizer.encode(img))  # (B, T, S, C') clean latents
        prev, prev_mask, _ = self._prev_action(batch, single)
        instr = batch["instruction_embedding"].to(z.dtype)
        dyn_step = int(self.updates) - (self.steps_tok if self.stage == "both" else 0)
        boot = self.shortcut and dyn_step > self.boot_start  # flow-only warm-up, then bootstrap targets
        dyn, feat, metrics = shortcut_loss(self.dynamics, z, prev, prev_mask, instr, seg, boot, self.boot_frac,
                                           valid)
        terms = {"dyn": dyn}  # heads: (B, T) per-step terms averaged over the valid rows
        terms["reward"] = _mean(self.twohot.loss(self.reward_head(feat), batch["reward"]), valid)
        terms["cont"] = _mean(F.binary_cross_entropy_with_logits(
            self.cont_head(feat).squeeze(-1).float(), 1.0 - batch["is_terminal"].float(), reduction="none"), valid)
        terms["state"] = _mean((self.state_head(feat).float() - symlog(batch["state"].float())).square().mean(-1),
                               valid)
        total = sum(self._norm(k, v) for k, v in terms.items())
        out = {"loss/total": total.item(), **{f"loss/{k}": v.item() for k, v in terms.items()},
               **{f"dynamics/{k}": v for k, v in metrics.items()}}
        return total, out

    def _encode_context(self, batch) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        z = self.tokenizer.encode(self._image(batch))  # (B, T, L, C)
        prev, prev_mask, seg = self._prev_action(batch)
        return z, prev, prev_mask, seg, batch["instruction_embedding"].to(z.dtype)

    @torch.no_grad()
    def observe(self, batch: dict[str, Tensor], state: State | None = None) -> tuple[State, Tensor]:
        """Encode and run the rows as (slightly noised) context. With `state`, continue its rollout
        (online control, e.g. one row at a time) through both KV caches, tokenizer and dynamics."""
        prev, prev_mask, seg = self._prev_action(batch)
        instr = batch["instruction_embedding"]
        b, t = prev.shape[:2]
        t0, tok_cache, dyn_cache = 0, None, None
        if state is not None:  # segment ids continue; a row with is_first starts a new one
            t0 = int(state["t"][0])
            tok_cache, dyn_cache = _unpack(state["tk"], state["tv"]), _unpack(state["k"], state["v"])
            seg = torch.cat([state["seg"], state["seg"][:, -1:] + seg], 1)  # (B, Tc + T)
        z, tok_cache = self.tokenizer.encode(self._image(batch), None, seg, tok_cache, t0, return_cache=True)
        instr = instr.to(z.dtype)
        zp = self.pack_z(z)
        feat, dyn_cache = context_pass(self.dynamics, zp, dyn_cache, t0, prev, prev_mask, instr,
                                       self.ctx_noise, seg,
                                       noise=torch.zeros_like(zp) if self.deterministic else None)
        if seg.shape[1] > self.context:  # generation reads a sliding window of the last frames
            tok_cache, dyn_cache = trim_cache(tok_cache, self.context), trim_cache(dyn_cache, self.context)
            seg = seg[:, -self.context:]
        n_tok, n_dyn = self.tokenizer.n_patch + self.tokenizer.n_lat, self.dynamics.n
        state = {**_pack(dyn_cache, b, n_dyn, "k", "v"), **_pack(tok_cache, b, n_tok, "tk", "tv"),
                 "seg": seg, "t": torch.full((b,), t0 + t, device=z.device), "z": z[:, -1],
                 "feat": feat[:, -1], "instr": instr}
        return state, feat

    @torch.no_grad()
    def imagine(self, state: State, policy: Policy, horizon: int, steps: int | None = None,
                known: bool = True) -> dict:
        """known=False marks every imagined step action-free (the policy's actions are ignored):
        video prediction, what the model expects when it is not told the action."""
        steps = steps or self.steps
        cache, seg, t0 = _unpack(state["k"], state["v"]), state["seg"], int(state["t"][0])
        instr, feat = state["instr"], state["feat"]
        b = feat.shape[0]
        feats, zs, actions = [feat], [state["z"]], []
        on = torch.full((b, 1), known, dtype=torch.bool, device=feat.device)
        for _ in range(horizon):
            action = policy(feat)  # (B, A)
            actions.append(action)
            seg = torch.cat([seg, seg[:, -1:]], 1)  # the new frame continues the last episode
            z, agent, cache = generate_frame(self.dynamics, cache, t0, action[:, None].to(instr.dtype),
                                             on, instr, steps, self.ctx_noise, self.shortcut, seg)
            t0 += 1
            if self.context and seg.shape[1] > self.context:  # sliding context window
                cache, seg = trim_cache(cache, self.context), seg[:, -self.context:]
            feat = agent[:, 0]
            feats.append(feat)
            zs.append(self.unpack_z(z[:, 0]))
        feat = torch.stack(feats, 1)  # (B, H+1, F)
        return {"feat": feat,
                "action": torch.stack(actions, 1) if actions else feat.new_zeros(b, 0, self.spec.action_dim),
                "reward": self.twohot.mean(self.reward_head(feat[:, 1:])),                # (B, H)
                "cont": torch.sigmoid(self.cont_head(feat[:, 1:]).squeeze(-1).float()),  # (B, H)
                "state": {"z": torch.stack(zs, 1), "feat": feat}}

    @torch.no_grad()
    def decode(self, state: State) -> Tensor:
        """z (B, L, C) -> (B, H, W, 3); z (B, T, L, C) -> (B, T, H, W, 3), decoded causally in time."""
        z = state["z"]
        if z.dim() == 3:
            return self.tokenizer.decode(z[:, None])[:, 0].clamp(0, 1)
        lead = z.shape[:-3]
        img = self.tokenizer.decode(z.reshape(-1, *z.shape[-3:])).clamp(0, 1)
        return img.reshape(*lead, *img.shape[1:])

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Tensor:
        """Tokenizer round trip, no patches masked: images (B, T, H, W, 3) -> (B, T, H, W, 3) in [0, 1]
        (encoded and decoded causally in time, as `observe` and `decode` do)."""
        return self.tokenizer.decode(self.tokenizer.encode(self._image({"image": images}))).clamp(0, 1)

    @property
    def can_imagine(self) -> bool:
        """False until the dynamics has trained: stage=tokenizer, or stage=both still in (or just
        at the end of) its tokenizer steps."""
        return self.stage == "dynamics" or (self.stage == "both" and int(self.updates) > self.steps_tok)

    def decode_state(self, state: State) -> Tensor:
        """Predicted joint state (..., J) from the features (probe used by evaluation)."""
        return symexp(self.state_head(state["feat"]).float())


def _pack(cache: list[KV], b: int, n: int, kname: str, vname: str) -> State:
    """KV cache [(B*N, G, Tc, E)] per time layer -> batch-major tensors (B, layers, N, G, Tc, E)."""
    if not cache:
        return {kname: torch.zeros(b, 0), vname: torch.zeros(b, 0)}
    k, v = torch.stack([kv[0] for kv in cache], 1), torch.stack([kv[1] for kv in cache], 1)
    return {kname: k.view(b, n, *k.shape[1:]).transpose(1, 2),
            vname: v.view(b, n, *v.shape[1:]).transpose(1, 2)}


def _mean(v: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of a (B, T) term over the rows where valid (B, T) is True (all rows if None)."""
    if valid is None:
        return v.mean()
    w = valid.to(v.dtype)
    return (v * w).sum() / w.sum().clamp(min=1.0)


def _unpack(k: Tensor, v: Tensor) -> list[KV]:
    if k.dim() == 2:
        return []
    k, v = k.transpose(0, 1), v.transpose(0, 1)  # (layers, B, N, G, Tc, E)
    return [(ki.flatten(0, 1), vi.flatten(0, 1)) for ki, vi in zip(k, v)]
