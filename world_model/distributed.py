"""Process groups, model wrapping and precision for training.

Single process on CPU/GPU, or under `torchrun --nproc_per_node=N` (any number of machines): torchrun
sets RANK / WORLD_SIZE / LOCAL_RANK and we join the process group (NCCL on GPU, gloo on CPU). The
model is wrapped in DDP, or sharded with FSDP (per-block `fully_shard` then the root) when the preset
asks for it. On GPU, and on CPUs with native bf16 (AVX512-BF16 / AMX), forward passes run under bf16
autocast (precision=auto); `compile=true` wraps the model with torch.compile.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from reverie.errors import ConfigError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_world() -> int:
    """Processes on this machine (torchrun's LOCAL_WORLD_SIZE; 1 outside torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def pick_device(name: str) -> torch.device:
    """auto | cpu | cuda (this rank's GPU under torchrun: cuda:$LOCAL_RANK) | cuda:N."""
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    kind, _, index = name.partition(":")
    if kind != "cuda" or not (index == "" or index.isdigit()):
        raise ConfigError(f"device={name!r}: choose auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is visible; use device=cpu or device=auto")
    index = int(index) if index else int(os.environ.get("LOCAL_RANK", 0))
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device={name}: only {torch.cuda.device_count()} CUDA GPU(s) are visible "
                          "(cuda:0 ...); pick one of them or use device=auto")
    return torch.device("cuda", index)


def setup(device_name: str) -> torch.device:
    """Join the torchrun process group if launched by torchrun; returns this rank's device."""
    device = pick_device(device_name)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not is_distributed():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # REVERIE_DIST_BACKEND overrides (gloo: e.g. two ranks sharing one GPU, which NCCL refuses)
        backend = os.environ.get("REVERIE_DIST_BACKEND") or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
    return device


def teardown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device, fsdp: bool, compile: bool) -> nn.Module:
    """The module the training step calls: the model itself, DDP, or FSDP-sharded (in place)."""
    wrapped = model
    if is_distributed() and fsdp:
        from torch.distributed.fsdp import fully_shard

        for child in model.children():  # shard each submodule, then the root holds the rest
            if any(p.requires_grad for p in child.parameters()):
                fully_shard(child)
        fully_shard(model)
    elif is_distributed():
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        wrapped = torch.compile(wrapped)
    return wrapped


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"precision={precision!r}: choose auto, bf16 or fp32")
    use_bf16 = precision == "bf16" or (precision == "auto" and (device.type == "cuda" or cpu_has_bf16()))
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); precision=auto turns autocast on only
    there. On AVX2 bf16 is emulated: the cpu preset's update ran at 0.11x under autocast (1 thread)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def all_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar metrics over ranks (for logging)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, (t / world()).tolist()))


def unwrap(module: nn.Module) -> Any:
    """The underlying model of a (possibly DDP- or compile-) wrapped module."""
    while True:
        if isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module
