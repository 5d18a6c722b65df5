"""Training-window augmentations a config section asks for, chained: `colour_swap`, `mirror`,
`mirror_negate` (datasets/colour_swap.py, datasets/mirror.py). Read by the pixel BC (train_agent.yaml
bc_scratch) and the world model (train_wm.yaml augment); each draws its own coin per window."""

from __future__ import annotations

from reverie.datasets.colour_swap import ColourSwap
from reverie.datasets.mirror import Mirror


def window_augment(section, seed: int, where: str):
    """section (colour_swap, mirror, mirror_negate) -> window -> window, or None when both are 0;
    where: the section's name in its config, for the errors (e.g. "bc_scratch")."""
    swap, flip = float(section.colour_swap), float(section.mirror)
    augments = [a for a in (ColourSwap(swap, seed, option=f"{where}.colour_swap") if swap else None,
                            Mirror(flip, list(section.mirror_negate or []), seed, option=f"{where}.mirror")
                            if flip else None) if a]
    if not augments:
        return None

    def apply(window):
        for augment in augments:
            window = augment(window)
        return window
    return apply
