"""Colour-swap augmentation for language-conditioned training windows (bc_scratch.colour_swap, train-wm augment.colour_swap).

With probability p, a training window's frames have their RGB channels permuted (the same
permutation for every camera and row) and the colour words of its instruction renamed to match: a
red cube seen through the permutation (R, G, B) -> (G, R, B) looks green, so "push the red cube
left" becomes "push the green cube left", and the demonstrated actions stay right. Each demo then
teaches the colour word on every cube it could have been, where 200 demos leave ~22 per colour and
direction on push, and the clone learns to find the named cube rather than the layout's likely one.
It holds where the named objects are (near) primary red, green and blue, as the sim arm's cubes
(sim/randomization.py NOMINAL_RGB); the rest of the scene (a neutral arm, the table) changes tint,
which the clone learns to ignore. Windows whose instruction names no such colour are left alone.
"""

from __future__ import annotations

import re

import numpy as np

from reverie.errors import ConfigError

CHANNELS = ("red", "green", "blue")  # colour word -> the RGB channel it is bright in
_WORDS = re.compile(r"\b(red|green|blue)\b")
_PERMUTATIONS = ([0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0])  # every one but the identity


class ColourSwap:
    """window -> window (numpy frames (T, H, W, 3) under every "image/<camera>" key, text under
    "instruction")."""

    def __init__(self, probability: float, seed: int = 0, option: str = "bc_scratch.colour_swap"):
        if not 0.0 <= probability <= 1.0:
            raise ConfigError(f"{option}={probability}: a probability in [0, 1] (0: off)")
        self.probability = float(probability)
        self.rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7]))

    def __call__(self, window: dict) -> dict:
        text = str(window.get("instruction", ""))
        if self.probability == 0 or not _WORDS.search(text) or self.rng.random() >= self.probability:
            return window
        perm = np.array(_PERMUTATIONS[self.rng.integers(len(_PERMUTATIONS))])
        return swap(window, perm)


def swap(window: dict, perm: np.ndarray) -> dict:
    """New channel j shows old channel perm[j]: an object bright in channel k now is in j = perm^-1(k)."""
    renamed = {CHANNELS[k]: CHANNELS[int(np.flatnonzero(perm == k)[0])] for k in range(3)}
    out = dict(window)
    for key in [k for k in window if k.startswith("image/")]:  # every camera the window holds
        out[key] = np.asarray(window[key])[..., perm]
    out["instruction"] = _WORDS.sub(lambda m: renamed[m.group(1)], str(window["instruction"]))
    return out
