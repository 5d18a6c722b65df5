"""Behaviour cloning from scratch: the baseline row of the results table.

A reactive pixel policy trained only on the demonstrations, with no world model: a CNN on the image
whose every stage is FiLM-modulated by the instruction embedding (so the colour in the sentence
decides which cube the filters look for), an MLP on symlog(state), and the agent's bounded Gaussian
head over the next `chunk` actions (executed by temporal ensembling, policy/ensemble.py). Trained on
successful demos (the caller's sampler weights) as independent rows by default (sample=rows), with
random shift and multi-token targets. It sees one frame at a time (like most BC baselines on
low-cost arms), so its gap to the world-model agent measures what the model's memory and imagination
add. Touch, seed 0 (benchmarks/scratch_variants.py): rows x 64, layer norm, AdamW 3,000 steps 59%
[49, 68]; the earlier 16 x 16 windows, RMS channel norm, Adam 1,500 steps 56% [46, 65] at 2.4x the
compute. Failures are mostly near misses (diagnose.py failures: 11 of 40 episodes end with the
gripper within ~4 cm of the target cube's centre, never in contact; 3 touch the wrong cube).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reverie.errors import ConfigError
from reverie.files import load_weights, read_json, read_tensors
from reverie.normalize import Normalizer
from reverie.policy.bc import chunk_targets, random_shift
from reverie.policy.distributions import BoundedNormal
from reverie.policy.rollout import require_cameras
from reverie.world_model.networks import MLP, ChannelNorm, ConvEncoder, conv_stages, symlog, zeroed

log = logging.getLogger(__name__)


class SpatialSoftmax(nn.Module):
    """(N, C, H, W) -> (N, 2K): K learnt heat maps, each reduced to its expected (x, y) in [-1, 1].
    A cube a few pixels wide becomes two numbers the head can read directly, where a flattened 4x4
    map has to learn position from scratch (the keypoints of Levine et al. 2016 and robomimic)."""

    def __init__(self, channels: int, keypoints: int):
        super().__init__()
        self.maps = nn.Conv2d(channels, keypoints, 1)
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        n, _, h, w = x.shape
        heat = (self.maps(x) / self.log_temperature.exp()).flatten(2).softmax(-1)   # (N, K, H*W)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device),
                                torch.linspace(-1, 1, w, device=x.device), indexing="ij")
        grid = torch.stack([xs.flatten(), ys.flatten()], -1).to(heat.dtype)          # (H*W, 2)
        return (heat @ grid).flatten(1)                                              # (N, 2K)


NORMS = {  # per stage, on (N, C, H, W)
    "channel": lambda c: ChannelNorm(c, eps=1e-4),  # RMS over each pixel's channels (DreamerV3's conv stacks)
    "layer": lambda c: nn.GroupNorm(1, c),           # over the whole map: a few bright cube pixels keep their contrast
}


class FiLMConvEncoder(nn.Module):
    """(N, H, W, 3) float in [0, 1], instr (N, I) -> (N, E): stride-2 convs until 4x4, each stage's
    channels scaled and shifted by the instruction (FiLM, starting at identity). With `keypoints`,
    the 16x16 stage (the finest under 32x32) also yields that many spatial-softmax points, so the
    instruction-modulated maps can say where the named cube is. (Touch, 1,500 steps: 32 points
    42% [33, 52] vs 46% without, so bc_scratch.keypoints stays 0.)"""

    def __init__(self, size: int, depth: int, instr_dim: int, keypoints: int = 0, norm: str = "channel"):
        super().__init__()
        self.convs, self.norms, self.films = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        cin, res, self.point_stage = 3, size, None
        for i in range(conv_stages(size)):
            cout = depth * 2 ** i
            self.convs.append(nn.Conv2d(cin, cout, 4, 2, 1, bias=False))
            self.norms.append(NORMS[norm](cout))
            self.films.append(zeroed(nn.Linear(instr_dim, 2 * cout)))
            cin, res = cout, res // 2
            if keypoints and self.point_stage is None and res <= 16:
                self.point_stage, self.points = i, SpatialSoftmax(cout, keypoints)
        self.out_dim = cin * 4 * 4 + 2 * keypoints

    def forward(self, image, instr):
        x = image.permute(0, 3, 1, 2) - 0.5                                  # (N, 3, H, W)
        points = []
        for i, (conv, norm, film) in enumerate(zip(self.convs, self.norms, self.films)):
            gamma, beta = film(instr)[..., None, None].chunk(2, 1)           # (N, C, 1, 1) each
            x = F.silu(norm(conv(x)) * (1 + gamma) + beta)
            if i == self.point_stage:
                points.append(self.points(x))
        return torch.cat([x.flatten(1), *points], -1)


class ScratchPolicy(nn.Module):
    def __init__(self, image_size: int, state_dim: int, action_dim: int, instr_dim: int = 384,
                 cnn_depth: int = 16, units: int = 256, layers: int = 2, min_std: float = 0.1,
                 max_std: float = 1.0, chunk: int = 1, film: bool = False, keypoints: int = 0,
                 norm: str = "channel", cameras: int = 1):
        super().__init__()
        self.sizes = dict(image_size=image_size, state_dim=state_dim, action_dim=action_dim,
                          instr_dim=instr_dim, cnn_depth=cnn_depth, units=units, layers=layers,
                          min_std=min_std, max_std=max_std, chunk=chunk, film=film, keypoints=keypoints, norm=norm,
                          cameras=cameras)
        self.film, self.chunk, self.action_dim = bool(film), int(chunk), action_dim
        if keypoints and not self.film:
            raise ConfigError("scratch BC keypoints need film=true (the points follow the instruction)")
        if norm not in NORMS:
            raise ConfigError(f"bc_scratch.norm={norm!r}: choose one of {sorted(NORMS)}")
        if norm != "channel" and not self.film:
            raise ConfigError(f"bc_scratch.norm={norm!r} needs film=true (the plain encoder is the world model's)")
        if cameras < 1 or (cameras > 1 and not self.film):
            raise ConfigError(f"scratch BC with {cameras} cameras: it needs one camera at least, and film=true "
                              "for more than one")
        encoder = lambda: (FiLMConvEncoder(image_size, cnn_depth, instr_dim, keypoints, norm) if self.film
                           else ConvEncoder(image_size, cnn_depth))
        self.image_enc = encoder()                                        # the main camera (the world model's)
        self.extra_encs = nn.ModuleList(encoder() for _ in range(cameras - 1))  # one CNN per extra camera
        self.state_enc = MLP(state_dim, units, units, 1)
        self.head = MLP(cameras * self.image_enc.out_dim + units + instr_dim, 2 * action_dim * self.chunk, units, layers)

    def chunk_policy(self, image, state, instr, *extra) -> BoundedNormal:
        """image (N, H, W, 3) float [0, 1], state (N, J), instr (N, I), one more (N, H, W, 3) per extra
        camera -> BoundedNormal over (N, chunk, A)."""
        if len(extra) != len(self.extra_encs):
            raise ValueError(f"this policy reads {1 + len(self.extra_encs)} cameras, got {1 + len(extra)} images")
        encode = (lambda enc, img: enc(img, instr)) if self.film else (lambda enc, img: enc(img))
        pixels = [encode(enc, img) for enc, img in zip([self.image_enc, *self.extra_encs], [image, *extra])]
        x = torch.cat([*pixels, self.state_enc(symlog(state)), instr], -1)
        raw = self.head(x).float().reshape(-1, self.chunk, 2 * self.action_dim)
        return BoundedNormal.from_raw(raw, self.sizes["min_std"], self.sizes["max_std"])

    def forward(self, image, state, instr, *extra) -> BoundedNormal:
        """-> BoundedNormal over the executed (first) action (N, A)."""
        dist = self.chunk_policy(image, state, instr, *extra)
        return BoundedNormal(dist.mean[:, 0], dist.std[:, 0])


LOSSES = {  # chunk targets (N, K, A) under the policy's BoundedNormal -> per-step loss (N, K)
    "nll": lambda dist, y: -dist.log_prob(y),
    # squared error of the mean: every action dimension weighs the same, where the NLL's 1/std^2 lets
    # the net learn a noisy dimension's mean slowly (e.g. when the gripper closes); std stays untrained
    "mse": lambda dist, y: (dist.mean - y).square().sum(-1),
}


def train_scratch_bc(data, steps: int, lr: float = 3e-4, progress: bool = True, shift: int = 4,
                     sample: str = "windows", weight_decay: float = 0.0, loss: str = "nll",
                     init: ScratchPolicy | None = None, **sizes) -> tuple[ScratchPolicy, list[dict]]:
    """`data.next()` yields batches of the world-model contract (draw them with the demos you want
    cloned: e.g. success weights). sample="windows": every row with an action is a sample, its next
    `chunk` actions (within the window) the targets. sample="rows": only each window's first row is
    a sample, so a batch is B independent rows (draw windows of `chunk` rows that may start at any
    row: AgentData(starts="every")); their targets are the whole window."""
    if sample not in ("windows", "rows"):
        raise ConfigError(f"bc_scratch.sample={sample!r}: choose windows or rows")
    if loss not in LOSSES:
        raise ConfigError(f"bc_scratch.loss={loss!r}: choose one of {sorted(LOSSES)}")
    from tqdm import tqdm

    device = getattr(data, "device", "cpu")  # trains where the batches arrive; acts on the CPU
    cameras = tuple(getattr(data, "cameras", ()))  # extra cameras: batch[key] beside batch["image"]
    policy = (ScratchPolicy(data.image_size, data.spec.state_dim, data.spec.action_dim, cameras=1 + len(cameras),
                            **sizes) if init is None else init).to(device)
    opt = (torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=weight_decay) if weight_decay > 0
           else torch.optim.Adam(policy.parameters(), lr=lr, eps=1e-6))
    history = []
    for step in tqdm(range(1, steps + 1), desc="bc from scratch", disable=not progress, unit="step"):
        batch = data.next()
        valid = batch.get("valid", torch.ones_like(batch["action_mask"]))
        targets, tmask = chunk_targets(batch["action"], batch["action_mask"] & valid, policy.chunk)  # (B, T, K, A) (B, T, K)
        keep = slice(0, 1) if sample == "rows" else slice(None)              # rows: each window's first row
        state = batch["state"][:, keep]
        targets, tmask, rows = targets[:, keep], tmask[:, keep], (batch["action_mask"] & valid)[:, keep]
        row_mask = rows.flatten()                                             # (B*T',)
        images = [random_shift(batch[key][:, keep], shift).flatten(0, 1)[row_mask]  # (N, H, W, 3) each,
                  for key in ("image", *cameras)]                                   # shifted on its own
        state = state.flatten(0, 1)[row_mask]
        instr = batch["instruction_embedding"].repeat_interleave(rows.shape[1], 0)[row_mask]
        targets, tmask = targets.flatten(0, 1)[row_mask], tmask.flatten(0, 1)[row_mask].float()  # (N, K, A) (N, K)
        dist = policy.chunk_policy(images[0], state, instr, *images[1:])
        per_step = LOSSES[loss](dist, targets)                               # (N, K)
        objective = (per_step * tmask).sum() / tmask.sum().clamp(min=1.0)
        opt.zero_grad(set_to_none=True)
        objective.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 100.0)
        opt.step()
        if step % 25 == 0 or step == steps:
            history.append({"step": step, f"bc/{loss}": float(objective.detach())})
    policy.normalizer = getattr(data, "normalizer", None) or Normalizer()  # the units it learnt in
    return policy.cpu().eval(), history


def save(out: Path, policy: ScratchPolicy, info: dict) -> Path:
    """scratch_bc.json holds the sizes and the state/action normaliser (the policy's, unless info has one)."""
    from reverie.policy.checkpoint import save_module

    norm = info.get("normalizer") or (getattr(policy, "normalizer", None) or Normalizer()).to_json()
    return save_module(out, policy, "policy.safetensors", "scratch_bc.json",
                       {**info, "sizes": policy.sizes, "normalizer": norm})


def load(path: str | Path) -> tuple[ScratchPolicy, dict]:
    path = Path(path)
    if not (path / "scratch_bc.json").exists():
        raise ConfigError(f"no behaviour-cloning-from-scratch policy in {path} (expected scratch_bc.json)")
    info = read_json(path / "scratch_bc.json", required=("sizes", "image_key"))
    policy = ScratchPolicy(**info["sizes"])
    load_weights(policy, read_tensors(path / "policy.safetensors"), path / "policy.safetensors")
    policy.normalizer = Normalizer.from_json(info.get("normalizer"))  # older checkpoints: identity
    return policy.eval(), info


class ScratchController:
    """Observations and actions in store units; the policy's normaliser maps the state in and the
    action out (reverie/normalize.py)."""

    def __init__(self, policy: ScratchPolicy, image_key: str, normalizer: Normalizer | None = None,
                 ensemble: float | None = None, image_keys: list[str] | None = None):
        from reverie.policy.ensemble import TemporalEnsemble
        from reverie.world_model.data import Language

        self.policy, self.image_key, self.language = policy, image_key, Language()
        self.image_keys = list(image_keys or [image_key])  # every camera it reads, the main one first
        if len(self.image_keys) != policy.sizes.get("cameras", 1) or self.image_keys[0] != image_key:
            raise ConfigError(f"cameras {self.image_keys} do not match this policy's {policy.sizes.get('cameras', 1)} "
                              f"(main camera {image_key!r}): load it with policy/loading.py, which reads them")
        self.normalizer = normalizer if normalizer is not None else getattr(policy, "normalizer", None) or Normalizer()
        self.instruction, self.instr = "", None
        self.ensemble = TemporalEnsemble(policy.chunk, ensemble)  # policy/ensemble.py; None: receding horizon

    def reset(self, instruction: str) -> None:
        self.set_instruction(instruction)
        self.ensemble.reset()

    def set_instruction(self, instruction: str) -> None:
        """A new task mid-episode; the chunk history carries on (as in the exported graph)."""
        self.instruction, self.instr = instruction, torch.from_numpy(self.language.embed([instruction]))

    @torch.no_grad()
    def act(self, observation: dict) -> np.ndarray:
        require_cameras(self.image_keys, observation, "this policy")
        images = [self._frame(observation[k]) for k in self.image_keys]              # (1, s, s, 3) each
        state = torch.from_numpy(self.normalizer.normalize("state", np.asarray(observation["state"], np.float32)))[None]
        if self.ensemble.on:
            chunk = self.policy.chunk_policy(images[0], state, self.instr, *images[1:]).mode().clamp(-1, 1)
            action = self.ensemble(chunk)[0]
        else:
            action = self.policy(images[0], state, self.instr, *images[1:]).mode().clamp(-1, 1)[0]
        return self.normalizer.denormalize("action", action.numpy())

    def _frame(self, frame) -> torch.Tensor:
        """uint8 (H, W, 3) -> (1, s, s, 3) float in [0, 1] at the policy's resolution."""
        size = self.policy.sizes["image_size"]
        image = torch.from_numpy(np.asarray(frame)).float()[None] / 255.0
        if image.shape[1:3] != (size, size):
            image = torch.nn.functional.interpolate(image.permute(0, 3, 1, 2), size=(size, size),
                                                    mode="bilinear", antialias=True).permute(0, 2, 3, 1)
        return image
