"""The arm's task family: goals, instructions (train / held-out paraphrases), success and rewards.

Three tasks, one goal per episode: touch the {colour} cube; push the {colour} cube {left|right|forward};
lift the {colour} cube. Directions are the robot's: the operator stands behind the arm, "forward" is
away from the base (+x), "left" is +y, "right" is -y.

Paraphrase templates are split so that generalisation to unseen phrasings can be measured: policies
train on `train` and are evaluated on `heldout` (the two sets share no template).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from reverie.errors import ConfigError, did_you_mean
from reverie.sim.arm import CUBE_HALF, ArmPhysics
from reverie.sim.randomization import COLOURS

TASKS = ("touch", "push", "lift")
DIRECTIONS = {"left": np.array([0.0, 1.0]), "right": np.array([0.0, -1.0]), "forward": np.array([1.0, 0.0])}
PUSH_DISTANCE = 0.05  # metres the cube must travel along the direction
PUSH_SIDEWAYS = 0.04  # metres it may drift across it
LIFT_HEIGHT = 0.05  # metres the cube's bottom must clear the table, held by the gripper
# A touch is deliberate: gripper contact on TOUCH_STEPS consecutive control steps, with the cube still
# within TOUCH_DISPLACEMENT of where it started (a flailing arm brushes and knocks cubes; it does not
# rest on one).
TOUCH_STEPS = 3
TOUCH_DISPLACEMENT = 0.02

# The first train template of each task is the canonical phrasing used in the issue and the docs.
TEMPLATES = {
    "touch": {
        "train": ["touch the {colour} cube", "tap the {colour} block", "reach out and touch the {colour} cube",
                  "put the gripper on the {colour} cube"],
        "heldout": ["make contact with the {colour} cube", "poke the {colour} block"],
    },
    "push": {
        "train": ["push the {colour} cube {direction}", "slide the {colour} block {direction}",
                  "move the {colour} cube {direction} along the table", "nudge the {colour} cube {direction}"],
        "heldout": ["shove the {colour} block {direction}", "give the {colour} cube a push {direction}"],
    },
    "lift": {
        "train": ["lift the {colour} cube", "pick up the {colour} block", "raise the {colour} cube off the table",
                  "grab the {colour} cube and lift it"],
        "heldout": ["hoist the {colour} block", "pick the {colour} cube up off the table"],
    },
}
INSTRUCTION_SETS = ("train", "heldout", "all")


@dataclasses.dataclass(frozen=True)
class Goal:
    task: str  # touch | push | lift
    colour: str  # red | green | blue
    direction: str | None = None  # left | right | forward, push only

    def canonical(self) -> str:
        return render(TEMPLATES[self.task]["train"][0], self)


def render(template: str, goal: Goal) -> str:
    return template.format(colour=goal.colour, direction=goal.direction or "")


def check_task(task: str) -> str:
    if task not in (*TASKS, "all"):
        raise ConfigError(f"unknown arm task {task!r}{did_you_mean(task, (*TASKS, 'all'))}: use one of "
                          f"{', '.join(TASKS)} or all "
                          f"(e.g. arm/touch, task=push)")
    return task


def templates(task: str, instruction_set: str) -> list[str]:
    if instruction_set not in INSTRUCTION_SETS:
        raise ConfigError(f"unknown instruction_set {instruction_set!r}{did_you_mean(instruction_set, INSTRUCTION_SETS)}: "
                          f"use one of {', '.join(INSTRUCTION_SETS)}")
    sets = TEMPLATES[task]
    return sets["train"] + sets["heldout"] if instruction_set == "all" else sets[instruction_set]


def sample_goal(task: str, rng: np.random.Generator) -> Goal:
    """`task` is touch | push | lift | all (all draws one of the three uniformly)."""
    task = str(rng.choice(TASKS)) if check_task(task) == "all" else task
    direction = str(rng.choice(list(DIRECTIONS))) if task == "push" else None
    return Goal(task, str(rng.choice(COLOURS)), direction)


def sample_instruction(goal: Goal, rng: np.random.Generator, instruction_set: str = "train") -> str:
    options = templates(goal.task, instruction_set)
    return render(options[int(rng.integers(len(options)))], goal)


def _patterns() -> list[tuple[re.Pattern, str]]:
    colours, directions = "|".join(COLOURS), "|".join(DIRECTIONS)
    out = []
    for task, sets in TEMPLATES.items():
        for template in sets["train"] + sets["heldout"]:
            body = re.escape(template).replace(r"\{colour\}", f"(?P<colour>{colours})")
            body = body.replace(r"\{direction\}", f"(?P<direction>{directions})")
            out.append((re.compile(rf"^\s*{body}\s*[.!]?\s*$", re.IGNORECASE), task))
    return out


PATTERNS = _patterns()


def parse_instruction(text: str) -> Goal:
    """Map a known phrasing back to its goal; anything else is a ConfigError listing what works."""
    for pattern, task in PATTERNS:
        match = pattern.match(text)
        if match:
            groups = match.groupdict()
            direction = groups.get("direction")
            return Goal(task, groups["colour"].lower(), direction.lower() if direction else None)
    examples = "; ".join(Goal(t, "red", "left" if t == "push" else None).canonical() for t in TASKS)
    raise ConfigError(f"instruction {text!r} is not one the sim arm understands: use a task phrasing with "
                      f"a colour in {list(COLOURS)} and a direction in {list(DIRECTIONS)}, e.g. {examples}")


class TaskTracker:
    """Success and rewards of one episode's goal, measured from privileged sim state.

    `success()` is called once per control step (touch counts consecutive steps of contact).
    """

    def __init__(self, goal: Goal, phys: ArmPhysics):
        self.goal, self.phys = goal, phys
        self.start = phys.cube_pos(goal.colour)  # (3,) where the target cube began
        self.touch_steps = 0

    def displacement(self) -> np.ndarray:
        return self.phys.cube_pos(self.goal.colour) - self.start  # (3,)

    def success(self) -> bool:
        g, phys = self.goal, self.phys
        if g.task == "touch":
            still = np.linalg.norm(self.displacement()) < TOUCH_DISPLACEMENT
            self.touch_steps = self.touch_steps + 1 if phys.touching(g.colour) and still else 0
            return self.touch_steps >= TOUCH_STEPS
        if g.task == "push":
            d = self.displacement()[:2]
            along = float(d @ DIRECTIONS[g.direction])
            across = float(np.linalg.norm(d - along * DIRECTIONS[g.direction]))
            return along >= PUSH_DISTANCE and across <= PUSH_SIDEWAYS
        height = phys.cube_pos(g.colour)[2] - CUBE_HALF
        return height >= LIFT_HEIGHT and phys.touching(g.colour)

    def shaped(self) -> float:
        """Dense progress in [0, 1): half for bringing the gripper to the cube, half for the task itself."""
        g, phys = self.goal, self.phys
        reach = 1.0 - np.tanh(10.0 * np.linalg.norm(phys.grasp_pos() - phys.cube_pos(g.colour)))
        if g.task == "touch":
            progress = 0.0
        elif g.task == "push":
            progress = np.clip(self.displacement()[:2] @ DIRECTIONS[g.direction] / PUSH_DISTANCE, 0, 1)
        else:
            progress = np.clip((phys.cube_pos(g.colour)[2] - CUBE_HALF) / LIFT_HEIGHT, 0, 1)
        return float(0.5 * reach + 0.49 * progress)
