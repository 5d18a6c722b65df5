"""One episode's goal (task, colour, direction) and the robot-frame directions a goal may name."""

from __future__ import annotations

import dataclasses

import numpy as np

# Directions are the robot's: the operator stands behind the arm, "forward" is away from the base
# (+x), "left" is +y, "right" is -y.
DIRECTIONS = {"left": np.array([0.0, 1.0]), "right": np.array([0.0, -1.0]), "forward": np.array([1.0, 0.0])}


@dataclasses.dataclass(frozen=True)
class Goal:
    task: str  # a registered task's name: touch | push | lift
    colour: str  # red | green | blue
    direction: str | None = None  # left | right | forward, directed tasks (push) only

    def canonical(self) -> str:
        from reverie.sim.tasks.registry import get

        return render(get(self.task).templates["train"][0], self)


def render(template: str, goal: Goal) -> str:
    return template.format(colour=goal.colour, direction=goal.direction or "")
