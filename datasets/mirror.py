"""Mirror augmentation for training windows (bc_scratch.mirror, train-wm augment.mirror): the demo seen in a mirror.

With probability p, a training window is reflected across the robot's plane of symmetry (the
vertical plane through its base and the workspace's middle): every camera's frames are flipped
left-right, the state and action dimensions that change sign under the reflection are negated, and
the instruction's "left" and "right" trade places. A demo that pushes the red cube left then also
teaches pushing a red cube, placed in the mirrored spot, right: push's nine colour x direction
combinations share ~140 successful demos, and mirroring doubles what each left/right one teaches.

It holds when the scene is (near) symmetric and the cameras sit on the plane, as the sim arm's
(sim/assets/so101.xml: base, front camera and table on y = 0, the wrist camera on the gripper's own
plane). For an SO-101 / Koch-class arm the reflection negates the two joints whose axes are vertical
or along the forearm, shoulder_pan (0) and wrist_roll (4), whether the values are angles (state,
absolute actions, when zero is the symmetric pose) or per-step deltas (the sim's default actions);
the lift, elbow and wrist-flex joints turn about axes normal to the plane and keep their sign.
"""

from __future__ import annotations

import re

import numpy as np

from reverie.errors import ConfigError

_SIDES = re.compile(r"\b(left|right)\b")
_OTHER = {"left": "right", "right": "left"}


class Mirror:
    """window -> window (numpy frames (T, H, W, C) under every "image/<camera>" key, "state" and
    "action" (T, D), text under "instruction")."""

    def __init__(self, probability: float, negate=(0, 4), seed: int = 0, option: str = "bc_scratch.mirror"):
        if not 0.0 <= probability <= 1.0:
            raise ConfigError(f"{option}={probability}: a probability in [0, 1] (0: off)")
        self.option = option
        self.probability = float(probability)
        self.negate = [int(i) for i in negate]
        self.rng = np.random.default_rng(np.random.SeedSequence([int(seed), 11]))

    def __call__(self, window: dict) -> dict:
        if self.probability == 0 or self.rng.random() >= self.probability:
            return window
        return mirror(window, self.negate, self.option)


def mirror(window: dict, negate, option: str = "bc_scratch.mirror") -> dict:
    out = dict(window)
    for key in [k for k in window if k.startswith("image/")]:
        out[key] = np.ascontiguousarray(np.asarray(window[key])[..., ::-1, :])  # flip the width axis
    for key in ("state", "action"):
        if key in window:
            values = np.array(window[key], copy=True)
            if values.shape[-1] <= max(negate, default=-1):
                raise ConfigError(f"{option}_negate={list(negate)}: {key} has only {values.shape[-1]} "
                                  "dimensions; list the dimensions the reflection negates (SO-101: [0, 4])")
            values[..., negate] *= -1
            out[key] = values
    if "instruction" in window:
        out["instruction"] = _SIDES.sub(lambda m: _OTHER[m.group(1)], str(window["instruction"]))
    return out
