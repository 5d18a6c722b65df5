"""The RSSM backend: DreamerV3's recurrent state-space model with Dynalang's language inputs.

Latent state per step: deterministic `deter` (block GRU) and stochastic `stoch` (S categoricals of C
classes, straight-through one-hot samples, 1% unimix). Feature = concat(deter, flat stoch).

    prior:      deter_t = GRU(deter_{t-1}, [stoch_{t-1}, a_{t-1}, instruction]);  p(z_t | deter_t)
    posterior:  q(z_t | deter_t, embed(o_t))   embed = CNN(image) ++ MLP(symlog state) [++ lang token]
    heads:      image (CNN decoder over the mean frame, foreground-weighted MSE), state (symlog MSE), reward (symexp two-hot), continue (Bernoulli),
                language token (regression of the token embedding, Dynalang; config `dynalang`)
    KL:         dyn 0.5 * max(1, KL[sg(q) || p]) + rep 0.1 * max(1, KL[q || sg(p)])

Image loss (a departure from DreamerV3, measured in benchmarks/results/): the squared error of each
pixel is weighted 1 + image_foreground where the frame differs from the running mean of the training
frames (networks.PixelMean), and the decoder predicts a residual over that mean. With plain MSE the
cpu preset's features held no cube position (held-out ridge R² below 0 after 1,500 steps) while the
table texture and the arm took the loss; `image_foreground: 0` is DreamerV3's plain sum.

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
from torch import Tensor

from reverie.errors import ConfigError
from reverie.world_model.backend import DataSpec, Policy, State, WorldModel, register
from reverie.world_model.networks import (MLP, BlockGRU, ConvDecoder, ConvEncoder, PixelMean, TwoHot,
                                          symexp, symlog)


@register("rssm")
class RSSM(WorldModel):
    # buffers newer than some checkpoints; loading one without them keeps their neutral start (a grey
    # mean frame: the decoder's residual is then the plain output, and the loss weights are 1)
    optional_state = ("pixels.pixel_mean", "pixels.mean_count")

    def __init__(self, cfg, spec: DataSpec):
        super().__init__(cfg, spec)
        c = cfg
        self.stoch, self.classes, self.deter_dim = c.stoch, c.classes, c.deter
        self.unimix, self.free_nats = c.unimix, c.free_nats
        self.scales = dict(c.loss_scales)
        self.use_instruction = bool(c.instruction)
        self.dynalang = bool(c.dynalang)
        self.describes = bool(c.get("describe", False))  # configs from before the head lack the key
        if self.dynalang and spec.lang_dim <= 0:
            raise ValueError("dynalang needs language tokens: DataSpec.lang_dim must be > 0")
        size, (h, w, _) = c.image_size, spec.image_shape
        if (h, w) != (size, size):
            raise ValueError(f"RSSM built for {size}x{size} images, data spec says {h}x{w}")
        zdim = c.stoch * c.classes
        self.feat_dim = c.deter + zdim

        # Encoder: image CNN ++ state MLP (++ language token MLP).
        self.image_enc = ConvEncoder(size, c.cnn_depth)
        self.state_enc = MLP(spec.state_dim, c.units, c.units, c.layers)
        embed = self.image_enc.out_dim + c.units
        if self.dynalang:
            self.lang_enc = MLP(spec.lang_dim, c.units, c.units, c.layers)
            embed += c.units

        inputs = [zdim, spec.action_dim + 1] + ([spec.instruction_dim] if self.use_instruction else [])
        self.core = BlockGRU(inputs, c.deter, c.hidden, c.blocks)
        self.prior_net = MLP(c.deter, zdim, c.hidden, 1)
        self.post_net = MLP(c.deter + embed, zdim, c.hidden, 1)

        self.image_dec = ConvDecoder(self.feat_dim, size, c.cnn_depth)
        self.pixels = PixelMean(size, float(c.get("image_foreground", 0.0)))  # older configs: plain MSE
        self.state_dec = MLP(self.feat_dim, spec.state_dim, c.units, c.layers)
        self.twohot = TwoHot(c.reward_bins, c.bins_range)
        self.reward_head = MLP(self.feat_dim, c.reward_bins, c.units, c.layers, zero_out=True)
        self.cont_head = MLP(self.feat_dim, 1, c.units, c.layers)
        if self.dynalang:
            self.lang_dec = MLP(self.feat_dim, spec.lang_dim, c.units, c.layers)
        if self.describes:
            self.describe_head = MLP(self.feat_dim, spec.instruction_dim, c.units, c.layers)

    # ----- latent state -----------------------------------------------------------------------
    def initial(self, batch: int, instr: Tensor) -> State:
        dev = instr.device
        return {"deter": torch.zeros(batch, self.deter_dim, device=dev),
                "stoch": torch.zeros(batch, self.stoch, self.classes, device=dev),
                "instr": instr}

    def feat(self, state: State) -> Tensor:
        """(..., D) and (..., S, C) -> (..., D + S*C)."""
        return torch.cat([state["deter"], state["stoch"].flatten(-2)], -1)

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
        idx = torch.multinomial(probs.reshape(-1, self.classes), 1).reshape(probs.shape[:-1])
        onehot = F.one_hot(idx, self.classes).to(probs.dtype)
        return onehot + probs - probs.detach()

    def _action_input(self, action: Tensor, mask: Tensor) -> Tensor:
        """(B, A), (B,) -> (B, A + 1): scaled action zeroed where unknown, plus the mask bit."""
        m = mask.to(action.dtype).unsqueeze(-1)
        action = action / torch.clamp(action.abs(), min=1.0)
        return torch.cat([action * m, m], -1)

    def img_step(self, state: State, action_in: Tensor) -> tuple[State, Tensor]:
        """One prior step. Returns the new state (stoch sampled from the prior) and prior probs."""
        inputs = [state["stoch"].flatten(-2), action_in]
        if self.use_instruction:
            inputs.append(state["instr"])
        deter = self.core(state["deter"], inputs)                  # (B, D)
        probs = self._dist(self.prior_net(deter))                  # (B, S, C)
        return {"deter": deter, "stoch": self._sample(probs), "instr": state["instr"]}, probs

    def obs_step(self, state: State, action_in: Tensor, embed: Tensor, first: Tensor):
        """Reset where is_first, take a prior step, then the posterior from the embedding."""
        keep = (~first).to(embed.dtype).unsqueeze(-1)               # (B, 1)
        state = {"deter": state["deter"] * keep, "stoch": state["stoch"] * keep.unsqueeze(-1),
                 "instr": state["instr"]}
        action_in = action_in * keep
        prior, prior_probs = self.img_step(state, action_in)
        post_probs = self._dist(self.post_net(torch.cat([prior["deter"], embed], -1)))
        post = {"deter": prior["deter"], "stoch": self._sample(post_probs), "instr": state["instr"]}
        return post, post_probs, prior_probs

    def _embed(self, batch: dict[str, Tensor]) -> Tensor:
        image = batch["image"]
        b, t = image.shape[:2]
        parts = [self.image_enc(image.flatten(0, 1)).reshape(b, t, -1),   # (B, T, E_img)
                 self.state_enc(symlog(batch["state"]))]                  # (B, T, units)
        if self.dynalang:
            parts.append(self.lang_enc(batch["lang_token"]))
        return torch.cat(parts, -1)                                       # (B, T, E)

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
        deters, stochs, posts, priors = [], [], [], []
        for i in range(t):
            state, post, prior = self.obs_step(
                state, self._action_input(prev_action[:, i], prev_mask[:, i]), embed[:, i], first[:, i])
            deters.append(state["deter"])
            stochs.append(state["stoch"])
            posts.append(post)
            priors.append(prior)
        states = {"deter": torch.stack(deters, 1), "stoch": torch.stack(stochs, 1),
                  "instr": state["instr"]}
        return states, state, torch.stack(posts, 1), torch.stack(priors, 1)

    # ----- the interface ----------------------------------------------------------------------
    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        total, metrics, _ = self.loss_and_features(batch)
        return total, metrics

    def loss_and_features(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float], Tensor]:
        """loss(batch) and the posterior features (B, T, F) of the same pass (BC fine-tuning).
        Every per-step term is averaged over the rows where batch["valid"] (B, T) is True (all rows
        without the key): the padding of short episodes (datasets/sampler.py) follows the real rows, so
        it neither changes their states nor enters the loss."""
        states, _, post, prior = self._rollout(batch)
        feat = self.feat(states)                                           # (B, T, F)
        valid = batch.get("valid")
        w = None if valid is None else valid.float()                      # (B, T) or None: all rows
        terms = {}
        image = batch["image"]                                              # (B, T, H, W, 3)
        if self.training:
            self.pixels.update(image[valid] if valid is not None else image.flatten(0, 1))
        pred = self.image_dec(feat.flatten(0, 1), self.pixels.pixel_mean).reshape(image.shape)
        pixel_weight = self.pixels.weights(image)                          # (B, T, H, W)
        terms["image"] = ((pred.float() - image).square().sum(-1) * pixel_weight).sum((-2, -1))
        terms["state"] = (self.state_dec(feat).float() - symlog(batch["state"])).square().sum(-1)
        terms["reward"] = self.twohot.loss(self.reward_head(feat), batch["reward"])
        cont_target = 1.0 - batch["is_terminal"].float()
        terms["cont"] = F.binary_cross_entropy_with_logits(
            self.cont_head(feat).squeeze(-1).float(), cont_target, reduction="none")
        if self.dynalang:
            terms["lang"] = (self.lang_dec(feat).float() - batch["lang_token"]).square().sum(-1)
        if self.describes and "describe_target" in batch:  # batches without narration skip the term
            m = batch["describe_mask"].float() * (1.0 if w is None else w)  # (B, T)
            cos = (self.describe(feat) * batch["describe_target"]).sum(-1)  # (B, T)
            terms["describe"] = ((1 - cos) * m).sum() / m.sum().clamp(min=1.0)
        kl_dyn = _kl(post.detach(), prior)                                 # (B, T)
        kl_rep = _kl(post, prior.detach())
        terms["dyn"] = torch.clamp(kl_dyn, min=self.free_nats)
        terms["rep"] = torch.clamp(kl_rep, min=self.free_nats)
        # .get: configs saved before the description head have no `describe` scale (it is 1).
        total = sum(self.scales.get(k, 1.0) * _mean(v, w) for k, v in terms.items())
        with torch.no_grad():
            metrics = {f"loss/{k}": _mean(v, w).item() for k, v in terms.items()}
            metrics |= {
                "loss/total": total.item(),
                "kl/dyn": _mean(kl_dyn, w).item(), "kl/rep": _mean(kl_rep, w).item(),
                "entropy/prior": _mean(_entropy(prior), w).item(),
                "entropy/post": _mean(_entropy(post), w).item(),
                "image_mse": _mean((pred.float() - batch["image"]).square().mean((-3, -2, -1)), w).item(),
                "reward_mae": _mean((self.twohot.mean(self.reward_head(feat)) - batch["reward"]).abs(), w).item(),
            }
        return total, metrics, feat

    def observe(self, batch: dict[str, Tensor], state: State | None = None) -> tuple[State, Tensor]:
        states, last, _, _ = self._rollout(batch, state)
        return last, self.feat(states)

    def imagine(self, state: State, policy: Policy, horizon: int) -> dict:
        feats, actions = [self.feat(state)], []
        deters, stochs = [state["deter"]], [state["stoch"]]
        for _ in range(horizon):
            action = policy(feats[-1])                                      # (B, A)
            mask = torch.ones(action.shape[0], dtype=torch.bool, device=action.device)
            state, _ = self.img_step(state, self._action_input(action, mask))
            feats.append(self.feat(state))
            actions.append(action)
            deters.append(state["deter"])
            stochs.append(state["stoch"])
        feat = torch.stack(feats, 1)                                         # (B, H+1, F)
        return {
            "feat": feat,
            "action": torch.stack(actions, 1),                               # (B, H, A)
            "reward": self.twohot.mean(self.reward_head(feat[:, 1:])),       # (B, H)
            "cont": torch.sigmoid(self.cont_head(feat[:, 1:]).squeeze(-1).float()),  # (B, H)
            "state": {"deter": torch.stack(deters, 1), "stoch": torch.stack(stochs, 1),
                      "instr": state["instr"]},
        }

    def decode(self, state: State) -> Tensor:
        feat = self.feat(state)                                              # (..., F)
        lead = feat.shape[:-1]
        image = self.image_dec(feat.reshape(-1, feat.shape[-1]), self.pixels.pixel_mean)
        return image.reshape(*lead, *self.spec.image_shape)

    def describe(self, feat: Tensor) -> Tensor:
        """(..., F) features -> (..., 384) unit-norm embedding of the transition into that state."""
        if not self.describes:
            raise ConfigError("this RSSM has no description head: train it with world_model.describe=true "
                              "on stores with narration (reverie sim demos records it)")
        return F.normalize(self.describe_head(feat).float(), dim=-1)

    def decode_state(self, state: State) -> Tensor:
        """Predicted joint state (..., J) (optional extra used by evaluation)."""
        return symexp(self.state_dec(self.feat(state)).float())


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
