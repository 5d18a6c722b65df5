"""The world-model interface every backend implements, the batch contract, and the backend registry.

The policy, the trainer and the evaluator use a world model through this interface only:

    loss(batch)                    -> (scalar loss, {name: float})        training objective
    observe(batch, state=None)     -> (state, feat (B, T, F))             latent state after the context
    imagine(state, policy, horizon)-> {"feat": (B, H+1, F), "action": (B, H, A),
                                       "reward": (B, H), "cont": (B, H), "state": states}
    decode(state)                  -> images (..., H, W, 3) float in [0, 1]

`state` is whatever the backend needs to continue a rollout (a dict of tensors with a leading batch
axis); callers pass it back unchanged. `imagine` includes the start state: feat[:, 0] is the feature
of `state`, action[:, i] is the policy's action from feat[:, i], and reward[:, i] / cont[:, i] belong
to arriving at feat[:, i + 1]. `imagine(...)["state"]` holds the imagined states with a (B, H+1) lead,
so `decode(traj["state"])` gives the imagined frames (B, H+1, H, W, 3).

Optional, used by `reverie eval-wm` when a backend has them:
    decode_state(state)            -> joint state (..., J)                 a probe on the features
    reconstruct(images)            -> images (B, T, H, W, 3) in [0, 1]    autoencoder round trip of
                                      observed frames (B, T, H, W, 3), no masking (backends with a
                                      tokenizer); on average a floor for open-loop prediction
    can_imagine                    bool, default True; False while a staged backend has only trained
                                      its tokenizer (eval-wm then reports reconstruction only)

Optional, used by DLLM rewards (`reverie train-agent stage=rl rewards.dllm.enabled=true`):
    describes                      bool, default False; True when the backend has a description head
    describe(feat)                 -> (..., 384) unit-norm sentence embedding of the transition into
                                      the state with feature feat (..., F) (RSSM: world_model.describe)

Batch contract (a dict of tensors, B batch, T time; row t is observation o_t):
    image                   uint8 or float (B, T, H, W, 3)  primary camera (config `image_key`)
    <camera key>            as image, one per DataSpec.cameras  e.g. "image/wrist": the extra cameras a
                            model observes (train-wm cameras=); a backend that reads one camera refuses them
    state                   float (B, T, J)                 joint radians, gripper in [0, 1]
    action                  float (B, T, A)                 a_t, sent after seeing o_t, in [-1, 1]
    action_mask             bool  (B, T)                    False where a_t is unknown (video, last row)
    reward                  float (B, T)                    r_t, received on arriving at o_t
    is_first, is_last, is_terminal   bool (B, T)
    instruction_embedding   float (B, 384)                  reverie.language.embed(instruction)
    lang_token (optional)   float (B, T, D)                 one language token per step (Dynalang)
    describe_target, describe_mask (optional)  float (B, T, 384), bool (B, T)   embedding of each row's
                            narration, False where a row has none (world_model.describe)
A model stepping into o_t uses a_{t-1}: the shift happens inside the model (zero and masked at
is_first), so action-free rows train like any other row.

Optional, used by `reverie export` (export/onnx_export.py):
    onnx_step                      class attribute: the backend's exported filter step
                                      (world_model/step.py), built as onnx_step(wm, image_hw);
                                      None (the default): the backend cannot be exported

Backends register themselves with `@register("name")`; `build(name, cfg, spec)` imports the modules
in BACKEND_MODULES on first use, so a new backend is one new file plus one name in that tuple (or a
`register` call from outside, as tests/test_toy_backend.py does). Its hyperparameters come from its
config group, reverie/conf/world_model/<name>.yaml, merged with the size preset's section for it
when the preset has one (model_config).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from typing import Any, Callable

import torch
from torch import Tensor, nn

from reverie.errors import ConfigError

State = dict[str, Tensor]
Policy = Callable[[Tensor], Tensor]  # feat (B, F) -> action (B, A)

BATCH_KEYS = ("image", "state", "action", "action_mask", "reward", "is_first", "is_last",
              "is_terminal", "instruction_embedding")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Shapes a backend is built for; taken from the store schema (and saved in checkpoints)."""

    image_shape: tuple[int, int, int]  # (H, W, 3)
    state_dim: int                     # J
    action_dim: int                    # A
    instruction_dim: int = 384
    lang_dim: int = 0                  # D of per-step language tokens; 0 when Dynalang is off
    cameras: tuple[str, ...] = ()      # extra camera keys the batches carry beside `image` (train-wm cameras=)

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"image_shape": list(self.image_shape), "cameras": list(self.cameras)}

    @classmethod
    def from_json(cls, data: dict) -> "DataSpec":
        return cls(**{**data, "image_shape": tuple(data["image_shape"]), "cameras": tuple(data.get("cameras", ()))})


class WorldModel(nn.Module, abc.ABC):
    """Base class: a backend subclasses it and implements the four methods below.

    `forward(batch)` is `loss(batch)`, so DDP/FSDP wrappers (which hook `forward`) sync gradients.
    Backends read their hyperparameters from `cfg` (the `world_model` group merged with the size
    preset's section for the backend) and must provide the optimiser keys `lr`, `adam_eps`,
    `weight_decay`, `grad_clip`, and the data keys `batch_size`, `seq_len`; the generic code's
    optional keys and their defaults are OPTIONAL_KEYS.
    """

    feat_dim: int
    can_imagine = True  # False: observe / imagine are untrained (see the module docstring)
    describes = False   # True: `describe(feat)` exists (see the module docstring)
    optional_state: tuple[str, ...] = ()  # state_dict keys a checkpoint may lack (newer buffers)
    optional_prefixes: tuple[str, ...] = ()  # parts that can be added to a trained model (checkpoint.load_model extend)
    onnx_step: type | None = None  # the exported filter step class (world_model/step.py); None: not exportable
    multi_camera = False  # True: the backend observes DataSpec.cameras beside `image`
    # Config keys newer than some checkpoints -> the value a run written before the key existed was
    # trained with (not the current default, which is the YAML's). checkpoint.read fills them into an
    # old run's config, the one place that does; the backend's code reads every key as always present.
    legacy_config: dict[str, Any] = {}

    def __init__(self, cfg: Any, spec: DataSpec):
        super().__init__()
        self.cfg = cfg
        self.spec = spec
        if spec.cameras and not self.multi_camera:
            raise ConfigError(f"the {type(self).__name__} backend observes one camera and the data asks for extra "
                              f"ones too ({list(spec.cameras)}): drop cameras= or train world_model=rssm")

    @abc.abstractmethod
    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    @abc.abstractmethod
    def observe(self, batch: dict[str, Tensor], state: State | None = None) -> tuple[State, Tensor]:
        """Filter the batch into latent states. With `state`, continue from it (online control, one
        row at a time): the batch may then carry `prev_action` (B, A) and `prev_action_mask` (B,),
        the action sent before its row 0, and its instruction embedding replaces the state's."""
        raise NotImplementedError

    @abc.abstractmethod
    def imagine(self, state: State, policy: Policy, horizon: int) -> dict[str, Any]:
        raise NotImplementedError

    @abc.abstractmethod
    def decode(self, state: State) -> Tensor:
        raise NotImplementedError

    def loss_and_features(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float], Tensor]:
        """loss(batch) plus observe(batch)'s features (B, T, F), both differentiable: behaviour cloning
        fine-tunes the model through them (policy/bc.py). Backends that can share one pass override it."""
        total, metrics = self.loss(batch)
        _, feat = self.observe(batch)
        return total, metrics, feat

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        return self.loss(batch)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


BACKENDS: dict[str, type[WorldModel]] = {}
BACKEND_MODULES = ("rssm", "shortcut_backend")  # world_model/<name>.py files that register backends


def register(name: str):
    def wrap(cls: type[WorldModel]) -> type[WorldModel]:
        BACKENDS[name] = cls
        return cls
    return wrap


def unregister(name: str) -> None:
    """Forget a backend registered from outside (tests)."""
    BACKENDS.pop(name, None)


def load_backends() -> dict[str, type[WorldModel]]:
    for module in BACKEND_MODULES:
        full = f"reverie.world_model.{module}"
        try:
            importlib.import_module(full)
        except ModuleNotFoundError as e:
            if e.name != full:  # a missing dependency inside an existing backend is a real error
                raise
    return BACKENDS


def build(name: str, cfg: Any, spec: DataSpec) -> WorldModel:
    backends = load_backends()
    if name not in backends:
        raise ConfigError(
            f"unknown world model backend {name!r}; choose one of {sorted(backends)} "
            f"(world_model=<name>)")
    return backends[name](cfg, spec)


# Keys every backend's config holds (the trainer, the data pipeline and the controllers read them);
# checked where no preset section supplies them.
REQUIRED_KEYS = ("image_size", "batch_size", "seq_len", "lr", "adam_eps", "weight_decay", "grad_clip")
# Keys the backend-agnostic code (trainer, data, evaluation) reads when a backend's config has them, and
# what it takes when one has none (a backend without language tokens need not say `dynalang: false`).
# rssm and shortcut set the ones they use in their YAML, preset or recipe; these are the only
# defaults for them in code.
OPTIONAL_KEYS = {
    "dynalang": False,  # per-step language tokens in the batch
    "describe": False,  # per-step narration targets in the batch
    "stage": None,      # a staged backend's stage (shortcut), for messages
    "steps": None,      # the default run length (the recipe's); none: train-wm needs steps=N
    "fsdp": False,      # shard with FSDP under torchrun (the preset's); train-wm's fsdp= overrides
    "ema": 0,           # weight-average decay (the recipe's); train-wm's ema= overrides; 0: off
}


def option(cfg: Any, key: str) -> Any:
    """An OPTIONAL_KEYS value of a model config (model_config's result, or a backend's `cfg`)."""
    return cfg.get(key, OPTIONAL_KEYS[key])


def model_config(cfg: Any) -> Any:
    """The backend's hyperparameters: the `world_model` group merged with `preset.<backend>`. A preset
    with no section for the backend leaves the group's own values (its YAML then sets the sizes)."""
    from omegaconf import OmegaConf

    name = cfg.world_model.name
    own = OmegaConf.to_container(cfg.world_model, resolve=True)
    if name in cfg.preset:
        return OmegaConf.create({**own, **OmegaConf.to_container(cfg.preset[name], resolve=True)})
    missing = [k for k in REQUIRED_KEYS if own.get(k) is None]
    if missing:
        raise ConfigError(
            f"size preset has no section for backend {name!r} (it has {sorted(cfg.preset)}) and the backend's "
            f"config (reverie/conf/world_model/{name}.yaml) does not set {', '.join(missing)}; add `{name}:` "
            f"with them to reverie/conf/preset/<preset>.yaml, set them in the backend's YAML, or choose "
            f"another preset")
    return OmegaConf.create(own)


def replay_policy(actions: Tensor) -> Policy:
    """A policy that replays recorded actions (B, H, A) one step per call, ignoring the features:
    open-loop prediction through `imagine` uses it."""
    step = {"i": 0}

    def policy(feat: Tensor) -> Tensor:
        i = step["i"]
        step["i"] += 1
        return actions[:, i]
    return policy
