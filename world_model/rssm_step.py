"""The RSSM's exported step (world_model/step.py): its own encoders and RSSM.obs_step on one frame of
each camera (the main one, then the model's extra cameras: DataSpec.cameras).

Carried: deter (1, D), stoch (1, S, C) [, frame (1, K) when the core reads the last frame latent,
`frame_input`]; the latents are the most likely classes (the model's
`deterministic` switch), so the step is a pure function that AgentController reproduces in PyTorch.
"""

from __future__ import annotations

import torch

from reverie.errors import BundleError
from reverie.world_model.step import FilterStep, StateSpec, prepare_image


class RSSMStep(FilterStep):
    def __init__(self, wm, image_hw):
        super().__init__(wm, image_hw)
        if wm.dynalang:
            raise BundleError("this world model reads per-step language tokens (dynalang: true), which the "
                              "bundle format does not carry yet; export an agent on a model trained with "
                              "world_model.dynalang=false")
        self.size = int(wm.cfg.image_size)

    def specs(self) -> list[StateSpec]:
        wm = self.wm
        frame = [StateSpec("frame", (1, wm.frame_dim))] if wm.frame_input else []
        return [StateSpec("deter", (1, wm.deter_dim)), StateSpec("stoch", (1, wm.stoch, wm.classes)), *frame]

    def forward(self, image, state, instruction, prev_action, is_first, deter, stoch, *frame, extra=()):
        wm = self.wm
        first = is_first > 0.5                                                   # (1,) bool
        images = [prepare_image(x, self.size) for x in (image, *extra)]          # (1, s, s, 3) per camera
        embed = wm.encode(images, state)                                         # (1, E)
        # The mask bit says "a previous action is known"; obs_step zeroes it (and the state) at is_first.
        action_in = wm._action_input(prev_action, torch.ones_like(first))        # (1, A + 1)
        carried = {"deter": deter, "stoch": stoch, "instr": instruction} | ({"frame": frame[0]} if frame else {})
        post, _, _ = wm.obs_step(carried, action_in, embed, first)
        nxt = (post["frame"],) if frame else ()
        return wm.feat(post), post["deter"], post["stoch"], *nxt                 # (1, F), (1, D), (1, S, C) [, (1, K)]
