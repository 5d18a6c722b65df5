"""The RSSM backend: DreamerV3's recurrent state-space model with Dynalang's language inputs.

Latent state per step: deterministic `deter` (block GRU) and stochastic `stoch` (S categoricals of C
classes, straight-through one-hot samples, 1% unimix). Feature = concat(deter, flat stoch).

    prior:      deter_t = GRU(deter_{t-1}, [stoch_{t-1}, a_{t-1}, instruction]);  p(z_t | deter_t)
    posterior:  q(z_t | deter_t, embed(o_t))   embed = CNN(image) [++ CNN(camera) each] ++ MLP(symlog state) [++ lang token]
    heads:      image (CNN decoder over the mean frame, foreground-weighted MSE), state (symlog MSE), reward (symexp two-hot), continue (Bernoulli),
                language token (regression of the token embedding, Dynalang; config `dynalang`)
    KL:         dyn 0.5 * max(1, KL[sg(q) || p]) + rep 0.1 * max(1, KL[q || sg(p)])

Image loss (a departure from DreamerV3, measured in benchmarks/results/): the squared error of each
pixel is weighted 1 + image_foreground where the frame differs from the running mean of the training
frames (networks.PixelMean), and the decoder predicts a residual over that mean. With plain MSE the
cpu preset's features held no cube position (held-out ridge R² below 0 after 1,500 steps) while the
table texture and the arm took the loss; `image_foreground: 0` is DreamerV3's plain sum.

Frame latent (`frame: K`, 0 = off; behaviour cloning can add it to a trained model, `bc.frame`): the
features end with a K-wide projection of the observed frame's embedding, the per-frame latent Dreamer 4's
agent tokens read beside the dynamics state; in imagination it is predicted from (deter, stoch) by a head
regressed onto the observed one. The model's own heads (image, state, reward, continue, language,
description) read only (deter, stoch), so the dynamics stay what they were; with `frame_decode: true`
the image decoder reads the frame latent too (imagined frames: the predicted one), so the image loss
reaches the encoder through a continuous path and not only through the categorical posterior, and the
dynamics learn the frame through the predictor's regression (Dreamer 4 trains its dynamics on a
tokenizer's latents so); with `frame_input: true` the core's step also reads the last frame latent, so
what it holds is carried forward rather than re-inferred from the categorical latents. Measured (touch,
cpu preset, 1,500 steps, colour swap + mirror; benchmarks/probe_parts.py, held-out ridge R² on every
cube's x, y): features -0.09 without the frame latent, 0.68 decoded, 0.76 decoded and read by the core;
the predicted frame latent (what imagination has) -0.07 and 0.44. Why: the encoder's embedding
held the cubes (held-out ridge R² 0.72) while (deter, stoch) did not (below 0) after 1,500 cpu-preset steps.

Extra cameras (train-wm `cameras=[image/wrist]`, DataSpec.cameras): each has its own encoder, decoder
and mean frame; the embedding concatenates every camera's, and the image loss sums every camera's
(each weighted the same), so the latent must hold what the wrist camera sees as well. `decode` gives
the primary camera's frames.

Actions: a_{t-1} enters the step into o_t. It is zero at is_first, and action-free rows
(action_mask False, e.g. video) feed a zero action with a mask bit of 0: the GRU input is
concat(a * m, m), so "no action" is its own learned input (the mask bit's weights), distinct from a
zero command. Actions are scaled by a / max(1, |a|) as in DreamerV3.

The instruction embedding (384-d) is an input of every GRU step, so prior and posterior are both
conditioned on the task. With `dynalang: true`, the batch carries one language token per step
(`lang_token`, B x T x D): the posterior reads it and a head reconstructs it from the features.

With `describe: true` a description head maps the feature of o_t to the sentence embedding of the
step's narration (what happened on arriving at o_t; batch `describe_target` / `describe_mask`),
trained with the cosine distance on narrated rows only. `describe(feat)` then turns imagined features
into unit 384-d embeddings in the instruction encoder's space: DLLM's intrinsic reward compares them
with the goal (policy/dllm.py). The head reads the features only, so the dynamics are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reverie.errors import ConfigError
from reverie.world_model.backend import DataSpec, Policy, State, WorldModel, register
from reverie.world_model.networks import (MLP, BlockGRU, ConvDecoder, ConvEncoder, PixelMean, RMSNorm, TwoHot,
                                          symexp, symlog)
from reverie.world_model.rssm_step import RSSMStep


@register("rssm")
class RSSM(WorldModel):
    # buffers newer than some checkpoints; loading one without them keeps their neutral start (a grey
    # mean frame: the decoder's residual is then the plain output, and the loss weights are 1)
    optional_state = ("pixels.pixel_mean", "pixels.mean_count")
    optional_prefixes = ("frame_proj.", "frame_pred.")  # a frame latent added to a trained model (bc.frame)
    onnx_step = RSSMStep  # the exported filter step (world_model/rssm_step.py)
    multi_camera = True   # DataSpec.cameras: one encoder and decoder each
    # what runs written before these keys were trained with (checkpoint.read fills them in)
    legacy_config = {"describe": False,        # before the description head
                     "frame": 0,               # before the frame latent
                     "core": "wide",           # before issue 22's DreamerV3 core layout
                     "core_layers": 1,
                     "image_foreground": 0.0,  # before foreground weighting: plain MSE
                     "coords": False,          # before CoordConv
                     "frame_decode": False,    # before the decoder read the frame latent
                     "frame_input": False}     # before the core read it

    def __init__(self, cfg, spec: DataSpec):
        super().__init__(cfg, spec)
        c = cfg
        self.stoch, self.classes, self.deter_dim = c.stoch, c.classes, c.deter
        self.unimix, self.free_nats = c.unimix, c.free_nats
        self.scales = dict(c.loss_scales)
        self.use_instruction = bool(c.instruction)
        self.dynalang = bool(c.dynalang)
        self.describes = bool(c.describe)
        if self.dynalang and spec.lang_dim <= 0:
            raise ValueError("dynalang needs language tokens: DataSpec.lang_dim must be > 0")
        size, (h, w, _) = c.image_size, spec.image_shape
        if (h, w) != (size, size):
            raise ValueError(f"RSSM built for {size}x{size} images, data spec says {h}x{w}")
        zdim = c.stoch * c.classes
        self.frame_dim = int(c.frame)
        self.core_dim = c.deter + zdim           # what the model's own heads read
        self.feat_dim = self.core_dim + self.frame_dim
        self.frame_decode, self.frame_input = bool(c.frame_decode), bool(c.frame_input)
        for key, on in (("frame_decode", self.frame_decode), ("frame_input", self.frame_input)):
            if on and not self.frame_dim:
                raise ConfigError(f"world_model.{key}=true reads the frame latent, which is off: "
                                  "set world_model.frame=K (e.g. 256) too")
        self.decode_dim = self.feat_dim if self.frame_decode else self.core_dim  # what the image decoder reads

        # Encoder: image CNN (one per camera) ++ state MLP (++ language token MLP).
        self.image_enc = ConvEncoder(size, c.cnn_depth, coords=bool(c.coords))
        self.cameras = tuple(spec.cameras)  # extra cameras: batch[key] each, encoded and reconstructed like image
        self.camera_enc = nn.ModuleList(ConvEncoder(size, c.cnn_depth, coords=bool(c.coords)) for _ in self.cameras)
        self.state_enc = MLP(spec.state_dim, c.units, c.units, c.layers)
        embed = self.image_enc.out_dim * (1 + len(self.cameras)) + c.units
        if self.dynalang:
            self.lang_enc = MLP(spec.lang_dim, c.units, c.units, c.layers)
            embed += c.units

        inputs = [zdim, spec.action_dim + 1] + ([spec.instruction_dim] if self.use_instruction else [])
        inputs += [self.frame_dim] if self.frame_input else []
        self.core = BlockGRU(inputs, c.deter, c.hidden, c.blocks, layout=str(c.core), layers=int(c.core_layers))
        self.prior_net = MLP(c.deter, zdim, c.hidden, 1)
        self.post_net = MLP(c.deter + embed, zdim, c.hidden, 1)

        if self.frame_dim:  # the observed frame's latent and its prediction from the state (imagination)
            self.frame_proj = nn.Sequential(nn.Linear(embed, self.frame_dim, bias=False),
                                            RMSNorm(self.frame_dim, eps=1e-4))
            self.frame_pred = MLP(self.core_dim, self.frame_dim, c.units, c.layers)
        self.image_dec = ConvDecoder(self.decode_dim, size, c.cnn_depth, coords=bool(c.coords))
        self.pixels = PixelMean(size, float(c.image_foreground))
        self.camera_dec = nn.ModuleList(ConvDecoder(self.decode_dim, size, c.cnn_depth, coords=bool(c.coords))
                                        for _ in self.cameras)
        self.camera_pixels = nn.ModuleList(PixelMean(size, float(c.image_foreground)) for _ in self.cameras)
        self.state_dec = MLP(self.core_dim, spec.state_dim, c.units, c.layers)
        self.twohot = TwoHot(c.reward_bins, c.bins_range)
        self.reward_head = MLP(self.core_dim, c.reward_bins, c.units, c.layers, zero_out=True)
        self.cont_head = MLP(self.core_dim, 1, c.units, c.layers)
        if self.dynalang:
            self.lang_dec = MLP(self.core_dim, spec.lang_dim, c.units, c.layers)
        if self.describes:
            self.describe_head = MLP(self.core_dim, spec.instruction_dim, c.units, c.layers)

    # ----- latent state -----------------------------------------------------------------------
    def initial(self, batch: int, instr: Tensor) -> State:
        dev = instr.device
        return {"deter": torch.zeros(batch, self.deter_dim, device=dev),
                "stoch": torch.zeros(batch, self.stoch, self.classes, device=dev),
                "instr": instr} | ({"frame": torch.zeros(batch, self.frame_dim, device=dev)} if self.frame_dim else {})

    def feat(self, state: State) -> Tensor:
        """(..., D), (..., S, C) [, (..., K) frame] -> (..., D + S*C [+ K])."""
        parts = [state["deter"], state["stoch"].flatten(-2)]
        if self.frame_dim:
            parts.append(state["frame"])
        return torch.cat(parts, -1)

    def _core(self, feat: Tensor) -> Tensor:
        """The model's own part of a feature, (..., F) -> (..., D + S*C): its heads never read the frame latent."""
        return feat[..., :self.core_dim]

    def _dist(self, logits: Tensor) -> Tensor:
        """(B, S*C) logits -> (B, S, C) probabilities with unimix."""
        probs = F.softmax(logits.float().reshape(-1, self.stoch, self.classes), -1)
        return (1 - self.unimix) * probs + self.unimix / self.classes

    # Export and evaluation set this: latents become the most likely class instead of a sample, so
    # a control step is a pure function (the ONNX policy reproduces it). Off for training.
    deterministic = False

    def _sample(self, probs: Tensor) -> Tensor:
        """(B, S, C) probabilities -> straight-through one-hot sample (B, S, C); one-hot argmax when
        `deterministic`."""
        if self.deterministic:
            return F.one_hot(probs.argmax(-1), self.classes).to(probs.dtype)
        idx = torch.multinomial(probs.reshape(-1, self.classes), 1).reshape(*probs.shape[:-1], 1)
        onehot = torch.zeros_like(probs).scatter_(-1, idx, 1.0)  # F.one_hot checks the range: a host sync on GPU
        return onehot + probs - probs.detach()

    def _action_input(self, action: Tensor, mask: Tensor) -> Tensor:
        """(B, A), (B,) -> (B, A + 1): scaled action zeroed where unknown, plus the mask bit."""
        m = mask.to(action.dtype).unsqueeze(-1)
        action = action / torch.clamp(action.abs(), min=1.0)
        return torch.cat([action * m, m], -1)

    def img_step(self, state: State, action_in: Tensor, predict_frame: bool = True) -> tuple[State, Tensor]:
        """One prior step. Returns the new state (stoch sampled from the prior) and prior probs;
        predict_frame=False skips the frame latent's prediction (the posterior step observes it)."""
        inputs = [state["stoch"].flatten(-2), action_in]
        if self.use_instruction:
            inputs.append(state["instr"])
        if self.frame_input:  # the last frame's latent: observed when filtering, predicted in imagination
            inputs.append(state["frame"])
        deter = self.core(state["deter"], inputs)                  # (B, D)
        probs = self._dist(self.prior_net(deter))                  # (B, S, C)
        prior = {"deter": deter, "stoch": self._sample(probs), "instr": state["instr"]}
        if self.frame_dim and predict_frame:  # imagined: predicted from the state, as the observed one is regressed onto
            prior["frame"] = self.frame_pred(torch.cat([deter, prior["stoch"].flatten(-2)], -1))
        return prior, probs

    def obs_step(self, state: State, action_in: Tensor, embed: Tensor, first: Tensor):
        """Reset where is_first, take a prior step, then the posterior from the embedding."""
        keep = (~first).to(embed.dtype).unsqueeze(-1)               # (B, 1)
        state = {"deter": state["deter"] * keep, "stoch": state["stoch"] * keep.unsqueeze(-1),
                 "instr": state["instr"]} | ({"frame": state["frame"] * keep} if self.frame_input else {})
        action_in = action_in * keep
        prior, prior_probs = self.img_step(state, action_in, predict_frame=False)
        post_probs = self._dist(self.post_net(torch.cat([prior["deter"], embed], -1)))
        post = {"deter": prior["deter"], "stoch": self._sample(post_probs), "instr": state["instr"]}
        if self.frame_dim:
            post["frame"] = self.frame_proj(embed)
        return post, post_probs, prior_probs

    def encode(self, images: list[Tensor], state: Tensor) -> Tensor:
        """The frames of every camera ([image, *cameras], each (N, H, W, 3) in [0, 1]) and the joint
        state (N, J) -> (N, E) without the language token (the exported step calls this too)."""
        encoders = [self.image_enc, *self.camera_enc]
        return torch.cat([enc(x) for enc, x in zip(encoders, images)] + [self.state_enc(symlog(state))], -1)

    def _embed(self, batch: dict[str, Tensor]) -> Tensor:
        image = batch["image"]
        b, t = image.shape[:2]
        images = [image, *(batch[key] for key in self.cameras)]           # (B, T, H, W, 3) each
        embed = self.encode([x.flatten(0, 1) for x in images], batch["state"].flatten(0, 1)).reshape(b, t, -1)
        if self.dynalang:
            embed = torch.cat([embed, self.lang_enc(batch["lang_token"])], -1)
        return embed                                                      # (B, T, E)

    def _rollout(self, batch: dict[str, Tensor], state: State | None = None):
        """Posterior over the batch. Returns stacked states (B, T, ...), post and prior probs."""
        embed = self._embed(batch)
        b, t = embed.shape[:2]
        if state is None:
            state = self.initial(b, batch["instruction_embedding"].to(embed.dtype))
        else:  # the current instruction conditions the rest (it may change mid-episode)
            state = {**state, "instr": batch["instruction_embedding"].to(embed.dtype)}
        # a_{t-1} for the step into o_t: shift right by one; row 0 has no previous action.
        action, mask = batch["action"], batch["action_mask"].bool()
        # When continuing from `state`, the batch may carry the action sent before its row 0.
        first_action = batch.get("prev_action", torch.zeros_like(action[:, 0]))[:, None]
        first_mask = batch.get("prev_action_mask", torch.zeros_like(mask[:, 0]))[:, None].bool()
        prev_action = torch.cat([first_action.to(action.dtype), action[:, :-1]], 1)  # (B, T, A)
        prev_mask = torch.cat([first_mask, mask[:, :-1]], 1)                         # (B, T)
        first = batch["is_first"].bool()
        deters, stochs, frames, posts, priors = [], [], [], [], []
        for i in range(t):
            state, post, prior = self.obs_step(
                state, self._action_input(prev_action[:, i], prev_mask[:, i]), embed[:, i], first[:, i])
            deters.append(state["deter"])
            stochs.append(state["stoch"])
            frames.append(state.get("frame"))
            posts.append(post)
            priors.append(prior)
        states = {"deter": torch.stack(deters, 1), "stoch": torch.stack(stochs, 1),
                  "instr": state["instr"]}
        if self.frame_dim:
            states["frame"] = torch.stack(frames, 1)                                 # (B, T, K)
        return states, state, torch.stack(posts, 1), torch.stack(priors, 1)

    # ----- the interface ----------------------------------------------------------------------
    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        total, metrics, _ = self.loss_and_features(batch)
        return total, metrics

    def loss_and_features(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """loss(batch) and the posterior features (B, T, F) of the same pass (BC fine-tuning); metrics
        are detached 0-dim tensors (reading them is a host sync, so the trainer does it every log_every).
        Every per-step term is averaged over the rows where batch["valid"] (B, T) is True (all rows
        without the key): the padding of short episodes (datasets/sampler.py) follows the real rows, so
        it neither changes their states nor enters the loss."""
        states, _, post, prior = self._rollout(batch)
        feat = self.feat(states)                                           # (B, T, F): what the agent reads
        core = self._core(feat)                                            # (B, T, D + S*C): the heads'
        valid = batch.get("valid")
        w = None if valid is None else valid.float()                      # (B, T) or None: all rows
        terms = {}
        decoded = feat[..., :self.decode_dim].flatten(0, 1)                # what every camera's decoder reads
        terms["image"], mse = 0.0, {}
        for key, dec, pixels in zip(("image", *self.cameras), (self.image_dec, *self.camera_dec),
                                    (self.pixels, *self.camera_pixels)):  # every camera weighs the same
            frames = batch[key]                                            # (B, T, H, W, 3)
            if self.training:
                pixels.update(frames.flatten(0, 1), None if w is None else w.flatten())  # padding weighs 0
            pred = dec(decoded, pixels.pixel_mean).reshape(frames.shape).float()
            terms["image"] = terms["image"] + ((pred - frames).square().sum(-1) * pixels.weights(frames)).sum((-2, -1))
            mse[key] = (pred - frames).square().mean((-3, -2, -1))        # (B, T)
        terms["state"] = (self.state_dec(core).float() - symlog(batch["state"])).square().sum(-1)
        reward_logits = self.reward_head(core)                             # (B, T, bins)
        terms["reward"] = self.twohot.loss(reward_logits, batch["reward"])
        cont_target = 1.0 - batch["is_terminal"].float()
        terms["cont"] = F.binary_cross_entropy_with_logits(
            self.cont_head(core).squeeze(-1).float(), cont_target, reduction="none")
        if self.dynalang:
            terms["lang"] = (self.lang_dec(core).float() - batch["lang_token"]).square().sum(-1)
        if self.describes and "describe_target" in batch:  # batches without narration skip the term
            m = batch["describe_mask"].float() * (1.0 if w is None else w)  # (B, T)
            cos = (self.describe(feat) * batch["describe_target"]).sum(-1)  # (B, T)
            terms["describe"] = ((1 - cos) * m).sum() / m.sum().clamp(min=1.0)
        if self.frame_dim:  # the predictor imagination uses, regressed onto the observed frame latent
            terms["frame"] = (self.frame_pred(core).float() - states["frame"].detach().float()).square().sum(-1)
        kl_dyn = _kl(post.detach(), prior)                                 # (B, T)
        kl_rep = _kl(post, prior.detach())
        terms["dyn"] = torch.clamp(kl_dyn, min=self.free_nats)
        terms["rep"] = torch.clamp(kl_rep, min=self.free_nats)
        # .get: configs saved before the description head have no `describe` scale (it is 1).
        means = {k: _mean(v, w) for k, v in terms.items()}
        total = sum(self.scales.get(k, 1.0) * v for k, v in means.items())
        with torch.no_grad():  # 0-dim tensors, no host sync: the trainer reads them every log_every
            metrics = {f"loss/{k}": v.detach() for k, v in means.items()}
            metrics |= {
                "loss/total": total.detach(),
                "kl/dyn": _mean(kl_dyn, w), "kl/rep": _mean(kl_rep, w),
                "entropy/prior": _mean(_entropy(prior), w), "entropy/post": _mean(_entropy(post), w),
                "image_mse": _mean(mse["image"], w),
                **{f"image_mse/{key.split('/')[-1]}": _mean(mse[key], w) for key in self.cameras},
                "reward_mae": _mean((self.twohot.mean(reward_logits) - batch["reward"]).abs(), w),
            }
        return total, metrics, feat

    def observe(self, batch: dict[str, Tensor], state: State | None = None) -> tuple[State, Tensor]:
        states, last, _, _ = self._rollout(batch, state)
        return last, self.feat(states)

    def imagine(self, state: State, policy: Policy, horizon: int) -> dict:
        feats, actions = [self.feat(state)], []
        deters, stochs, frames = [state["deter"]], [state["stoch"]], [state.get("frame")]
        for _ in range(horizon):
            action = policy(feats[-1])                                      # (B, A)
            mask = torch.ones(action.shape[0], dtype=torch.bool, device=action.device)
            state, _ = self.img_step(state, self._action_input(action, mask))
            feats.append(self.feat(state))
            actions.append(action)
            deters.append(state["deter"])
            stochs.append(state["stoch"])
            frames.append(state.get("frame"))
        feat = torch.stack(feats, 1)                                         # (B, H+1, F)
        states = {"deter": torch.stack(deters, 1), "stoch": torch.stack(stochs, 1), "instr": state["instr"]}
        if self.frame_dim:
            states["frame"] = torch.stack(frames, 1)                         # (B, H+1, K)
        core = self._core(feat)
        return {
            "feat": feat,
            "action": torch.stack(actions, 1),                               # (B, H, A)
            "reward": self.twohot.mean(self.reward_head(core[:, 1:])),       # (B, H)
            "cont": torch.sigmoid(self.cont_head(core[:, 1:]).squeeze(-1).float()),  # (B, H)
            "state": states,
        }

    def decode(self, state: State) -> Tensor:
        feat = self.feat(state)[..., :self.decode_dim]                       # (..., D + S*C [+ K])
        lead = feat.shape[:-1]
        image = self.image_dec(feat.reshape(-1, feat.shape[-1]), self.pixels.pixel_mean)
        return image.reshape(*lead, *self.spec.image_shape)

    def describe(self, feat: Tensor) -> Tensor:
        """(..., F) features -> (..., 384) unit-norm embedding of the transition into that state."""
        if not self.describes:
            raise ConfigError("this RSSM has no description head: train it with world_model.describe=true "
                              "on stores with narration (reverie sim demos records it)")
        return F.normalize(self.describe_head(self._core(feat)).float(), dim=-1)

    def decode_state(self, state: State) -> Tensor:
        """Predicted joint state (..., J) (optional extra used by evaluation)."""
        return symexp(self.state_dec(self._core(self.feat(state))).float())


def _mean(v: Tensor, w: Tensor | None) -> Tensor:
    """Mean of a (B, T) term over the rows with weight w (B, T) (all rows if None); scalars pass through."""
    if w is None or v.dim() == 0:
        return v.mean()
    return (v * w).sum() / w.sum().clamp(min=1.0)


def _kl(p: Tensor, q: Tensor) -> Tensor:
    """KL[p || q] of (B, T, S, C) categoricals, summed over S -> (B, T)."""
    return (p * (torch.log(p) - torch.log(q))).sum((-2, -1))


def _entropy(p: Tensor) -> Tensor:
    return -(p * torch.log(p)).sum((-2, -1))
