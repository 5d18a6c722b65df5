"""Checkpoints: safetensors for tensors, JSON/YAML for everything else; loading never unpickles.

    <run>/checkpoint/
      model.safetensors        full (unsharded) model weights: the averaged ones when training keeps an EMA
      train_model.safetensors  with an EMA only: the optimiser's own weights, which training resumes from
      optimizer.safetensors    optimiser tensors, keys "<param fqn>|<slot>" (e.g. "core.gates.weight|exp_avg")
      optimizer.json           optimiser param groups (lr, eps, ... and parameter names)
      rng_rank<r>.safetensors  torch (and CUDA) generator state of rank r
      trainer.json             step, backend, data spec, per-rank data-sampler RNG state, stores, the
                               state/action normaliser (reverie/normalize.py JSON) (EMA updates)
      config.yaml              the resolved training config (a run older than some model keys: read()
                               fills them with what it was trained with, upgrade_config)

A checkpoint is written to `checkpoint.tmp/` and renamed into place, so an interrupted save leaves
the previous checkpoint intact. Model and optimiser state go through
torch.distributed.checkpoint.state_dict, which gathers full tensors from DDP and FSDP alike.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from reverie.errors import ConfigError
from reverie.files import load_weights, read_config, read_json, read_tensors
from reverie.normalize import Normalizer
from reverie.world_model import distributed
from reverie.world_model.backend import DataSpec, WorldModel, build, load_backends, model_config
from reverie.world_model.ema import EMA

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
# A parameter frozen until the checkpoint (the dynamics while the tokenizer trains) has no Adam state
# yet; it starts fresh, as it would have uninterrupted. Model keys are checked by _check_keys.
OPTIM_LOAD = StateDictOptions(full_state_dict=True, cpu_offload=True, strict=False)


def find(path: str | Path) -> Path:
    """A run folder (uses its checkpoint/) or a checkpoint folder -> the checkpoint folder."""
    path = Path(path)
    for candidate in (path, path / "checkpoint"):
        if (candidate / "model.safetensors").exists() and (candidate / "trainer.json").exists():
            if not (candidate / "config.yaml").is_file():  # the model cannot be built without it
                raise ConfigError(f"checkpoint {candidate} has no config.yaml (an incomplete copy?); copy the "
                                  f"whole run folder again or train it again")
            return candidate
    raise ConfigError(f"no checkpoint in {path}: expected {path}/checkpoint/model.safetensors "
                      "(a run folder written by `reverie train-wm`) or a checkpoint folder")


def save(run_dir: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: Any,
         trainer: dict, ema: EMA | None = None) -> Path:
    """Collective under torch.distributed: every rank calls it; rank 0 writes the shared files."""
    final, tmp = run_dir / "checkpoint", run_dir / "checkpoint.tmp"
    rank = distributed.rank()
    model_sd = get_model_state_dict(module, options=FULL)          # gathers on every rank
    train_sd = None
    if ema is not None:  # consumers (eval, policy, export) read model.safetensors: give them the average
        train_sd = {k: v.clone() for k, v in model_sd.items()}  # on CPU these alias the parameters
        with ema.applied():
            model_sd = {k: v.clone() for k, v in get_model_state_dict(module, options=FULL).items()}
    optim_sd = get_optimizer_state_dict(module, optimizer, options=FULL)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    distributed.barrier()
    save_file(_rng_state(), tmp / f"rng_rank{rank}.safetensors")
    if rank == 0:
        save_file({k: v.contiguous() for k, v in model_sd.items()}, tmp / "model.safetensors")
        if train_sd is not None:
            save_file({k: v.contiguous() for k, v in train_sd.items()}, tmp / "train_model.safetensors")
        tensors = {f"{fqn}|{slot}": torch.as_tensor(value).contiguous()
                   for fqn, slots in optim_sd["state"].items() for slot, value in slots.items()}
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps({"param_groups": optim_sd["param_groups"]}))
        (tmp / "trainer.json").write_text(json.dumps(trainer, indent=1))
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    distributed.barrier()
    if rank == 0:
        old = run_dir / "checkpoint.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
    return final


def load_training(path: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  ema: EMA | None = None, model_cfg: Any = None) -> dict:
    """Restore weights (and the EMA: from the checkpoint's, or started at the weights when it has
    none), optimiser and this rank's RNG; returns trainer.json."""
    path = find(path)
    averaged = (path / "train_model.safetensors").exists()
    weights = _fill_optional(module, read_tensors(path / ("train_model.safetensors" if averaged else "model.safetensors")))
    _check_keys(path, set(module.state_dict()), set(weights), model_cfg)
    set_model_state_dict(module, weights, options=FULL)
    if ema is not None and averaged:
        with ema.applied():
            set_model_state_dict(module, _fill_optional(module, read_tensors(path / "model.safetensors")), options=FULL)
    elif ema is not None:
        ema.reset()
    if not (path / "optimizer.safetensors").exists():  # save_finetuned's: weights only, a fresh optimiser
        return read_json(path / "trainer.json")
    tensors = read_tensors(path / "optimizer.safetensors")
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        fqn, slot = key.rsplit("|", 1)
        state.setdefault(fqn, {})[slot] = value
    groups = read_json(path / "optimizer.json", required=("param_groups",))["param_groups"]
    set_optimizer_state_dict(module, optimizer, {"state": state, "param_groups": groups}, options=OPTIM_LOAD)
    for name, param in module.named_parameters():  # loading ran a zero step on these: start them fresh
        if name not in state:
            optimizer.state.pop(param, None)
    rng = path / f"rng_rank{distributed.rank()}.safetensors"
    if rng.exists():
        _set_rng_state(read_tensors(rng))
    return read_json(path / "trainer.json", required=("backend", "step", "data_rng"))


def normalizer(trainer: dict) -> Normalizer:
    """The state/action normaliser a checkpoint's model was trained with (trainer.json "normalizer",
    written by train-wm); a checkpoint from before normalisation existed: identity."""
    return Normalizer.from_json(trainer.get("normalizer"))


def read(path: str | Path) -> tuple[Path, Any, dict]:
    """(checkpoint folder, training config, trainer.json) of a run, without building its model: what
    a consumer of the run's data choices (stores, camera, resolution, units) needs."""
    path = find(path)
    cfg = read_config(path / "config.yaml", required=("world_model", "preset"))
    trainer = read_json(path / "trainer.json", required=("backend", "spec"))
    return path, upgrade_config(cfg, trainer["backend"]), trainer


# train_wm.yaml's run keys newer than some saved runs, with what those runs did without them (the speed
# switches keep the math, so on; normalize: the checkpoint's own units are restored on resume).
LEGACY_RUN = {"warmup": 0, "lr_end": None, "ema": None, "fused_norm": True, "compile_norm": True,
              "channels_last": True, "prefetch": 0, "per": "row", "normalize": None, "weights": None,
              "augment": {"colour_swap": 0.0, "mirror": 0.0, "mirror_negate": [0, 4]}, "cameras": []}


def upgrade_config(cfg: Any, backend: str) -> Any:
    """A run's training config with the keys it predates filled in, each with the value the run was
    trained with (the backend's `legacy_config`, world_model/backend.py, and LEGACY_RUN): the one place
    old checkpoints are completed, so backends and the trainer read every key of their YAML as present.
    A key the run has (in its world_model or preset section, or at the top) stays as written."""
    run = {k: v for k, v in LEGACY_RUN.items() if k not in cfg}
    cfg = OmegaConf.merge(cfg, run) if run else cfg
    cls = load_backends().get(backend)
    if cls is None or not cls.legacy_config:
        return cfg
    have = set(cfg.world_model) | (set(cfg.preset[backend]) if backend in cfg.preset else set())
    missing = {k: v for k, v in cls.legacy_config.items() if k not in have}
    return OmegaConf.merge(cfg, {"world_model": missing}) if missing else cfg


def load_model(path: str | Path, device: str | torch.device = "cpu", extend: dict | None = None
               ) -> tuple[WorldModel, Any, dict]:
    """Build a trained world model for inference: (model in eval mode, training config, trainer.json).
    The model's `normalizer` attribute holds its units (see normalizer(); trainer["normalizer"] its JSON).
    extend: world_model settings that add parts the checkpoint lacks (its backend's `optional_prefixes`,
    e.g. the RSSM's frame latent for behaviour cloning); those parts start freshly initialised."""
    path, cfg, trainer = read(path)
    if extend:
        cfg = OmegaConf.merge(cfg, {"world_model": dict(extend)})
    model = build(trainer["backend"], model_config(cfg), DataSpec.from_json(trainer["spec"]))
    weights = _fill_optional(model, read_tensors(path / "model.safetensors"))
    missing, unexpected = load_weights(model, weights, path / "model.safetensors", strict=False)
    if missing or unexpected:
        raise ConfigError(f"checkpoint {path} does not match the {trainer['backend']} model built from "
                          f"its config (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                          "was it written by another version of reverie?")
    model.normalizer = normalizer(trainer)  # a plain attribute: store units <-> the model's
    return model.to(device).eval(), cfg, trainer


def _fill_optional(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint from before a backend's `optional_state` buffers keeps the module's own (neutral) values."""
    model = getattr(module, "module", module)  # DDP/FSDP wrappers hold the backend as .module
    own = model.state_dict()
    keys = set(getattr(model, "optional_state", ()))
    keys |= {k for k in own if k.startswith(tuple(getattr(model, "optional_prefixes", ())))}
    return weights | {k: own[k] for k in keys if k not in weights and k in own}


def _check_keys(path: Path, built: set[str], saved: set[str], model_cfg: Any = None) -> None:
    """Resuming needs the model the checkpoint was trained as; name the model settings that differ
    from its config.yaml (a setting newer than the checkpoint shows as absent there)."""
    missing, unexpected = sorted(built - saved), sorted(saved - built)
    if not (missing or unexpected):
        return
    hint = "resume with the settings it was trained with (its config.yaml, world_model.*)"
    if model_cfg is not None:
        then = OmegaConf.to_container(model_config(read_config(path / "config.yaml", required=("world_model", "preset"))))
        now = OmegaConf.to_container(model_cfg)
        differ = [f"{k}: {then.get(k, 'absent')} there, {now.get(k, 'absent')} here"
                  for k in sorted(then.keys() | now.keys()) if then.get(k, "absent") != now.get(k, "absent")]
        if differ:
            hint += "; differing: " + "; ".join(differ)
    raise ConfigError(f"resume: checkpoint {path} does not match the model this config builds "
                      f"(missing {missing[:3]}, unexpected {unexpected[:3]}); {hint}")


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_finetuned(source: str | Path, out: Path, module: torch.nn.Module, config: Any = None) -> Path:
    """A world model fine-tuned outside train-wm (behaviour cloning, policy/bc.py) as an inference
    checkpoint: the source checkpoint's config and trainer.json with these weights (no optimiser, so
    it is loaded, not resumed). Written to `out/checkpoint.tmp` and renamed, like `save`. config: the
    training config it was built from, when that differs from the source's (load_model's extend)."""
    src = find(source)
    out = Path(out)
    tmp, final = out / "checkpoint.tmp", out / "checkpoint"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    trainer = json.loads((src / "trainer.json").read_text())
    trainer["finetuned_from"] = str(src.resolve())
    (tmp / "trainer.json").write_text(json.dumps(trainer, indent=1))
    if config is None:
        shutil.copy(src / "config.yaml", tmp / "config.yaml")
    else:
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(config))
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, tmp / "model.safetensors")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return out
