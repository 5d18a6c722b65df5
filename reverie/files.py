"""Reading the files of a checkpoint a user points at (weights, trainer/agent JSON, config YAML): a
missing, truncated or foreign file is a ConfigError naming it and the fix, never a traceback from
json, yaml or safetensors. Torch and omegaconf are imported on use."""

from __future__ import annotations

import json
from pathlib import Path

from reverie.errors import ConfigError

AGAIN = "restore the folder from a copy or train it again"


def _damaged(path: Path, detail: str, fix: str) -> ConfigError:
    return ConfigError(f"checkpoint file {path} is {detail}; {fix}")


def _bytes(path: Path, fix: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _damaged(path, "missing (an incomplete copy?)", fix) from None
    except OSError as e:
        raise _damaged(path, f"unreadable ({e.strerror})", fix) from e


def read_json(path: Path, fix: str = AGAIN, required: tuple[str, ...] = ()) -> dict:
    """A JSON object with at least the `required` keys."""
    try:
        data = json.loads(_bytes(path, fix))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise _damaged(path, f"not valid JSON ({str(e)[:80]})", fix) from e
    if not isinstance(data, dict):
        raise _damaged(path, f"a JSON {type(data).__name__}, not an object", fix)
    absent = [k for k in required if k not in data]
    if absent:
        raise _damaged(path, f"lacking {absent}", fix)
    return data


def read_config(path: Path, fix: str = AGAIN, required: tuple[str, ...] = ()):
    """config.yaml of a run -> DictConfig with at least the `required` keys."""
    import yaml
    from omegaconf import DictConfig, OmegaConf

    try:
        cfg = OmegaConf.create(_bytes(path, fix).decode())
    except (ValueError, yaml.YAMLError) as e:  # UnicodeDecodeError, yaml's parse errors
        raise _damaged(path, f"not valid YAML ({str(e).splitlines()[0][:80]})", fix) from e
    absent = [k for k in required if not isinstance(cfg, DictConfig) or k not in cfg]
    if absent:
        raise _damaged(path, f"not a training config (no {absent})", fix)
    return cfg


def read_tensors(path: Path, fix: str = AGAIN) -> dict:
    """A safetensors file -> {name: torch.Tensor} (never unpickles)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise _damaged(path, "missing (an incomplete copy?)", fix)
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _damaged(path, f"not a valid safetensors file ({str(e)[:80]})", fix) from e


def load_weights(module, weights: dict, path: Path, fix: str = AGAIN, strict: bool = True):
    """module.load_state_dict, with a file from another model (other tensor names or shapes) named."""
    own = set(module.state_dict())
    missing, unexpected = sorted(own - set(weights)), sorted(set(weights) - own)
    if strict and (missing or unexpected):
        raise _damaged(path, f"for another model ({len(missing)} tensors missing, e.g. {missing[:1]}; "
                             f"{len(unexpected)} unexpected, e.g. {unexpected[:1]})", fix)
    try:
        return module.load_state_dict(weights, strict=strict)
    except RuntimeError as e:  # "size mismatch for <name>: copying a param with shape ..."
        first = next((line.strip() for line in str(e).splitlines() if "mismatch" in line), str(e))
        raise _damaged(path, f"for another model ({first[:160]})", fix) from e
