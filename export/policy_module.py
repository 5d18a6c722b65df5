"""One control step as a torch module with explicit state tensors: the graph inside policy.onnx.

    step = AgentStep(wm, agent, image_hw) | ScratchStep(policy, image_hw, extra_hw)
    action, *next_state = step(image, state, instruction, *carried_state)

Inputs (batch 1):  image uint8 (1, H, W, 3) at the camera's resolution (resized in the graph when the
                   model was trained at another size, /255 folded in), state float32 (1, J) in
                   the model's units (normalised by the runtime, reverie/normalize.py),
                   instruction float32 (1, 384) (unit-norm sentence embedding), then one uint8
                   (1, H, W, 3) per extra camera of a multi-camera policy (a pixel BC's, or the world
                   model's own: train-wm cameras=), named by its key
                   (`image_wrist` for image/wrist) and resized like the main image, then the carried
                   state tensors named by `state_specs()`.
Outputs:           action float32 (1, A) (the actor's mode, clipped to [-1, 1]), then the next value
                   of every state tensor, in the same order, named `next_<name>`.

A runtime starts an episode from the specs' initial values and feeds each `next_<name>` back as
`<name>`. A policy that executes its chunks by temporal ensembling (policy/ensemble.py) carries the
last K chunks too (`chunk_history` (1, K, K, A), `chunk_valid` (1, K), after the model's own state),
so the graph's action is the controller's. Every stateful step carries `is_first` (1 at the start of an episode, 0 after), so the
first-step reset (latent state and previous action dropped) happens inside the graph exactly as
`AgentController` does it when its state is None.

A world-model agent's step is the backend's own filter step (its `onnx_step`, world_model/step.py:
world_model/rssm_step.py, world_model/shortcut_step.py), which calls the model's own methods and so
computes what AgentController computes with deterministic latents, then the agent's actor on the
feature; this file names no backend.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reverie.errors import BundleError
from reverie.runtime.manifest import input_name
from reverie.policy.ensemble import ensemble_weights, ensembled, pushed
from reverie.world_model.step import StateSpec, prepare_image


class PolicyStep(nn.Module):
    """Base: `image_hw` is the camera resolution the bundle expects (the training store's);
    `extra_hw` {key: (H, W)} the extra cameras' (a multi-camera pixel BC's or world model's), in the
    order forward() takes them. `ensemble(chunk, decay)` makes the step execute its chunks as the
    controller does."""

    kind = "base"

    def __init__(self, image_hw: tuple[int, int], state_dim: int, action_dim: int,
                 extra_hw: dict[str, tuple[int, int]] | None = None):
        super().__init__()
        self.image_hw, self.state_dim, self.action_dim = tuple(image_hw), state_dim, action_dim
        self.extra_hw = {key: tuple(hw) for key, hw in (extra_hw or {}).items()}
        self.chunk, self.decay = 1, None

    def ensemble(self, chunk: int, decay: float | None) -> "PolicyStep":
        self.chunk, self.decay = int(chunk), decay
        self.register_buffer("ensemble_weights", ensemble_weights(self.chunk, decay or 0.0), persistent=False)
        return self

    def model_specs(self) -> list[StateSpec]:
        return []

    def ensemble_specs(self) -> list[StateSpec]:
        if self.decay is None or self.chunk < 2:
            return []
        k = self.chunk
        return [StateSpec("chunk_history", (1, k, k, self.action_dim)), StateSpec("chunk_valid", (1, k))]

    def state_specs(self) -> list[StateSpec]:
        return self.model_specs() + self.ensemble_specs()

    def execute(self, dist, ens: tuple) -> tuple[Tensor, tuple]:
        """dist: BoundedNormal over the chunk (1, K, A); ens: the ensemble's carried state (or ()).
        -> the deterministic action (1, A), clipped like the controllers, and the next ensemble state."""
        chunk = dist.mode().clamp(-1.0, 1.0)                                     # (1, K, A)
        if not ens:
            return chunk[:, 0], ()
        history, valid = pushed(*ens, chunk)                                      # newest first
        return ensembled(history, valid, self.ensemble_weights), (history, valid)

    def input_names(self) -> list[str]:
        return ["image", "state", "instruction", *map(input_name, self.extra_hw),
                *[s.name for s in self.state_specs()]]

    def output_names(self) -> list[str]:
        return ["action", *[f"next_{s.name}" for s in self.state_specs()]]

    def example_inputs(self) -> tuple[Tensor, ...]:
        frame = lambda hw: torch.zeros(1, *hw, 3, dtype=torch.uint8)
        return (frame(self.image_hw), torch.zeros(1, self.state_dim), torch.zeros(1, 384),
                *map(frame, self.extra_hw.values()), *[s.zeros() for s in self.state_specs()])


class AgentStep(PolicyStep):
    """A world-model agent: the backend's filter step on the frame (world_model/step.py), then the
    actor on its feature. State: the filter's tensors, prev_action (1, A), is_first (1,)."""

    kind = "agent"

    def __init__(self, wm, agent, image_hw, extra_hw: dict[str, tuple[int, int]] | None = None):
        super().__init__(image_hw, wm.spec.state_dim, wm.spec.action_dim, extra_hw)
        if list(self.extra_hw) != list(wm.spec.cameras):
            raise BundleError(f"this agent's world model reads the extra cameras {list(wm.spec.cameras)}, the "
                              f"export was given {list(self.extra_hw)}")
        if wm.onnx_step is None:
            raise BundleError(f"world-model backend {type(wm).__name__} has no exported step (its onnx_step is "
                              "None, world_model/step.py), so its agents cannot be exported")
        self.filter, self.agent = wm.onnx_step(wm, image_hw), agent
        self.size = self.filter.size
        self.n_filter = len(self.filter.specs())

    def model_specs(self) -> list[StateSpec]:
        return [*self.filter.specs(), StateSpec("prev_action", (1, self.action_dim)),
                StateSpec("is_first", (1,), 1.0)]

    def forward(self, image, state, instruction, *rest):
        e, n = len(self.extra_hw), self.n_filter
        extra, carried = rest[:e], rest[e:]
        own, (prev_action, is_first), ens = carried[:n], carried[n:n + 2], carried[n + 2:]
        # extra= only for a model with extra cameras: a one-camera backend's step keeps the plain signature
        feat, *own = self.filter(image, state, instruction, prev_action, is_first, *own,
                                 **({"extra": extra} if extra else {}))                      # feat (1, F)
        action, ens = self.execute(self.agent.chunk_policy(feat, instruction), ens)      # (1, A)
        return action, *own, action, torch.zeros_like(is_first), *ens


class ScratchStep(PolicyStep):
    """Behaviour cloning from scratch: stateless, one frame per camera at a time (ScratchController).
    `extra_hw` {key: (H, W)}: the policy's extra cameras (scratch_bc.json image_keys after the first)."""

    kind = "scratch_bc"

    def __init__(self, policy, image_hw, extra_hw: dict[str, tuple[int, int]] | None = None):
        s = policy.sizes
        super().__init__(image_hw, s["state_dim"], s["action_dim"], extra_hw)
        if 1 + len(self.extra_hw) != s.get("cameras", 1):
            raise BundleError(f"this scratch policy reads {s.get('cameras', 1)} cameras, the export was given "
                              f"{1 + len(self.extra_hw)}; its scratch_bc.json image_keys name them")
        self.policy, self.size = policy, int(s["image_size"])

    def forward(self, image, state, instruction, *rest):
        extra, ens = rest[:len(self.extra_hw)], rest[len(self.extra_hw):]
        # ScratchController resizes without clamping; so does its graph.
        images = [prepare_image(x, self.size, clamp=False) for x in (image, *extra)]  # (1, s, s, 3) each
        action, ens = self.execute(self.policy.chunk_policy(images[0], state, instruction, *images[1:]), ens)
        return action, *ens
