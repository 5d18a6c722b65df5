"""Agent checkpoints: `agent.safetensors` (weights) + `agent.json` (sizes, world model, stage, step).

Like world-model checkpoints, loading never unpickles. Tensors are written from CPU copies, so an
agent trained on a GPU loads on any device (`load(path, device)`). An agent records the world-model
run it was trained on, so `reverie eval policy=AGENT` and `reverie export policy=AGENT` need nothing
else. agent.json also carries the world model's state/action normaliser (`normalizer`, the JSON of
reverie/normalize.py): controllers and export map observations and actions with it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from reverie.errors import ConfigError
from reverie.files import load_weights, read_json, read_tensors
from reverie.normalize import Normalizer
from reverie.policy.agent import Agent

SIZE_KEYS = ("feat_dim", "action_dim", "instr_dim", "units", "layers", "min_std", "max_std")


def save_module(out: Path, module, weights: str, info_name: str, info: dict) -> Path:
    """Atomic: written to `<out>.tmp` and renamed, so an interrupted save keeps the old folder."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, tmp / weights)
    (tmp / info_name).write_text(json.dumps(info, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def save(out: Path, agent: Agent, info: dict) -> Path:
    return save_module(out, agent, "agent.safetensors", "agent.json", info)


def find(path: str | Path) -> Path:
    path = Path(path)
    for candidate in (path, path / "agent"):
        if (candidate / "agent.safetensors").exists() and (candidate / "agent.json").exists():
            return candidate
    raise ConfigError(f"no agent in {path}: expected {path}/agent.safetensors and agent.json "
                      "(written by `reverie train-agent`)")


def normalizer(info: dict, wm=None) -> Normalizer:
    """The agent's units: its agent.json's normaliser, else its world model's (`wm.normalizer`), else
    (a checkpoint from before normalisation) identity."""
    if info.get("normalizer"):
        return Normalizer.from_json(info["normalizer"])
    return getattr(wm, "normalizer", None) or Normalizer()


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[Agent, dict]:
    path = find(path)
    info = read_json(path / "agent.json", required=("sizes", "world_model", "image_key"))
    # chunk and film arrived later: agents saved before them are single-action, concatenation-only.
    extra = {k: info["sizes"][k] for k in ("chunk", "film") if k in info["sizes"]}
    agent = Agent(**{k: info["sizes"][k] for k in SIZE_KEYS}, **extra)
    load_weights(agent, read_tensors(path / "agent.safetensors"), path / "agent.safetensors")
    agent.reward_calibration = info.get("reward_calibration")  # older agents: the head as trained
    return agent.to(device).eval(), info


def world_model_of(agent_path: str | Path, wm: str | Path) -> str:
    """The world model to run an agent on, given `wm=`: when behaviour cloning fine-tuned a copy of
    `wm` for this agent (saved beside it), that copy; any other `wm` is taken as given."""
    info = read_json(find(agent_path) / "agent.json")
    base = info.get("base_world_model")
    if info.get("finetuned_world_model") and base and Path(base).resolve() == Path(wm).resolve():
        return str(info["world_model"])
    return str(wm)
