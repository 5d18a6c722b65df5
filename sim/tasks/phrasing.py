"""Instructions <-> goals: drawing a phrasing from a task's templates, and parsing one back.

Paraphrase templates are split so that generalisation to unseen phrasings can be measured: policies
train on `train` and are evaluated on `heldout` (the two sets share no template).
"""

from __future__ import annotations

import re

import numpy as np

from reverie.errors import ConfigError, did_you_mean
from reverie.sim.randomization import COLOURS
from reverie.sim.tasks import registry
from reverie.sim.tasks.goal import DIRECTIONS, Goal, render

INSTRUCTION_SETS = ("train", "heldout", "all")


def templates(task: str, instruction_set: str) -> list[str]:
    if instruction_set not in INSTRUCTION_SETS:
        raise ConfigError(f"unknown instruction_set {instruction_set!r}{did_you_mean(instruction_set, INSTRUCTION_SETS)}: "
                          f"use one of {', '.join(INSTRUCTION_SETS)}")
    sets = registry.get(task).templates
    return sets["train"] + sets["heldout"] if instruction_set == "all" else sets[instruction_set]


def sample_instruction(goal: Goal, rng: np.random.Generator, instruction_set: str = "train") -> str:
    options = templates(goal.task, instruction_set)
    return render(options[int(rng.integers(len(options)))], goal)


def patterns() -> list[tuple[re.Pattern, str]]:
    colours, directions = "|".join(COLOURS), "|".join(DIRECTIONS)
    out = []
    for task in registry.names():
        sets = registry.get(task).templates
        for template in sets["train"] + sets["heldout"]:
            body = re.escape(template).replace(r"\{colour\}", f"(?P<colour>{colours})")
            body = body.replace(r"\{direction\}", f"(?P<direction>{directions})")
            out.append((re.compile(rf"^\s*{body}\s*[.!]?\s*$", re.IGNORECASE), task))
    return out


PATTERNS = patterns()


def parse_instruction(text: str) -> Goal:
    """Map a known phrasing back to its goal; anything else is a ConfigError listing what works."""
    for pattern, task in PATTERNS:
        match = pattern.match(text)
        if match:
            groups = match.groupdict()
            direction = groups.get("direction")
            return Goal(task, groups["colour"].lower(), direction.lower() if direction else None)
    examples = "; ".join(registry.get(t).example().canonical() for t in registry.names())
    raise ConfigError(f"instruction {text!r} is not one the sim arm understands: use a task phrasing with "
                      f"a colour in {list(COLOURS)} and a direction in {list(DIRECTIONS)}, e.g. {examples}")
