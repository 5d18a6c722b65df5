"""What a backend gives the exporter: one filter step at batch 1 with fixed-shape carried state.

A backend that can be exported names its step class in `onnx_step` (world_model/backend.py); the
exporter builds it as `wm.onnx_step(wm, image_hw)` and wraps it with the agent's actor and the
policy's chunk execution (export/policy_module.py AgentStep), so the step is the world model's part
of the graph only:

    feat, *next_carried = step(image, state, instruction, prev_action, is_first, *carried, extra=frames)

Inputs:  image uint8 (1, H, W, 3) at the camera's resolution (the step resizes it to the model's
         `size`: prepare_image), state float32 (1, J) in the model's units, instruction float32
         (1, 384), prev_action (1, A) the action sent after the previous row, is_first (1,) 1 at an
         episode's start (the step then drops the carried state and the previous action, as
         `observe(batch, state=None)` does), then the tensors named by `specs()`; `extra` (keyword,
         passed only to a model with extra cameras, DataSpec.cameras): one uint8 (1, H, W, 3) frame per
         extra camera, in order. A one-camera backend's step need not take it.
Outputs: feat (1, F) (what `observe` returns for this row, with deterministic latents) and the next
         value of each of `specs()`, in order. The wrapper carries prev_action and is_first itself.

Carried tensors have fixed shapes (an ONNX graph's state does), start each episode at their specs'
initial values, and are fed back unchanged by the runtime.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclasses.dataclass(frozen=True)
class StateSpec:
    """One carried tensor: its ONNX input name, shape (batch included), dtype and fill value at the
    start of an episode."""

    name: str
    shape: tuple[int, ...]
    initial: float = 0.0
    dtype: str = "float32"

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "initial": self.initial}

    def zeros(self) -> Tensor:
        return torch.full(self.shape, self.initial, dtype=torch.float32)


def prepare_image(image: Tensor, size: int, clamp: bool = True) -> Tensor:
    """uint8 (N, H, W, 3) -> float (N, size, size, 3) in [0, 1], resized like the training batches
    (world_model/data.py collate: bilinear with antialiasing, then clamped)."""
    x = image.float() / 255.0
    if tuple(x.shape[1:3]) != (size, size):
        x = F.interpolate(x.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", antialias=True)
        x = x.permute(0, 2, 3, 1)
        if clamp:
            x = x.clamp(0, 1)
    return x


class FilterStep(nn.Module):
    """Base of a backend's exported step (see the module docstring). `size`: the model's image size,
    which the manifest records; `specs()`: the carried tensors besides prev_action and is_first."""

    size: int

    def __init__(self, wm, image_hw: tuple[int, int]):
        super().__init__()
        self.wm, self.image_hw = wm, tuple(image_hw)

    def specs(self) -> list[StateSpec]:
        return []

    def forward(self, image: Tensor, state: Tensor, instruction: Tensor, prev_action: Tensor,
                is_first: Tensor, *carried: Tensor, extra: tuple[Tensor, ...] = ()) -> tuple[Tensor, ...]:
        raise NotImplementedError
