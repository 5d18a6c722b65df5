"""Load any trained policy folder as a controller (see policy/rollout.py)."""

from __future__ import annotations

from pathlib import Path

from reverie.errors import ConfigError


def _agent(path: Path, device):
    from reverie.policy import checkpoint
    from reverie.policy.controller import AgentController
    from reverie.world_model import checkpoint as wm_checkpoint
    from reverie.world_model.backend import model_config

    agent, info = checkpoint.load(path, device)
    wm, wm_cfg, _ = wm_checkpoint.load_model(info["world_model"], device)
    return AgentController(wm, agent, info["image_key"], int(model_config(wm_cfg).image_size),
                           normalizer=checkpoint.normalizer(info, wm),
                           ensemble=info["sizes"].get("ensemble"))  # older agents: receding horizon


def _scratch(path: Path, device):  # the small reactive baseline stays on the CPU
    from reverie.policy.scratch_bc import ScratchController, load

    policy, info = load(path)
    return ScratchController(policy, info["image_key"], ensemble=info.get("ensemble"),
                             image_keys=info.get("image_keys"))  # older policies: the main camera only


# marker file -> loader; a folder may hold an agent directly or under agent/
KINDS = {"agent.json": _agent, "agent/agent.json": _agent, "scratch_bc.json": _scratch}


def load_controller(path: str | Path, device: str = "cpu"):
    """device: auto | cpu | cuda | cuda:N (world_model.distributed.pick_device) for world-model agents."""
    from reverie.world_model.distributed import pick_device

    path, device = Path(path), pick_device(device)
    for marker, loader in KINDS.items():
        if (path / marker).exists():
            return loader(path / Path(marker).parent if "/" in marker else path, device)
    raise ConfigError(f"no policy in {path}: expected a folder written by `reverie train-agent` "
                      "(agent.json) or the behaviour-cloning baseline (scratch_bc.json)")
