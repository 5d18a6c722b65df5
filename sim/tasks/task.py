"""What an arm task owns: its phrasings, how it draws a goal, when it has succeeded, its shaped
progress and the scripted teleoperator's plan for it. One subclass per task (touch.py, push.py,
lift.py), registered in sim/tasks/registry.py."""

from __future__ import annotations

import abc

import numpy as np

from reverie.sim.randomization import COLOURS
from reverie.sim.tasks.goal import DIRECTIONS, Goal


class ArmTask(abc.ABC):
    name: str
    # {"train": [...], "heldout": [...]}: the first train template is the canonical phrasing.
    templates: dict[str, list[str]]
    directed = False  # whether a goal names a direction (left | right | forward)

    def sample_goal(self, rng: np.random.Generator) -> Goal:
        # Draw order (direction, then colour) is part of every recorded seed: keep it.
        direction = str(rng.choice(list(DIRECTIONS))) if self.directed else None
        return Goal(self.name, str(rng.choice(COLOURS)), direction)

    def example(self) -> Goal:
        return Goal(self.name, "red", "left" if self.directed else None)

    @abc.abstractmethod
    def success(self, tracker) -> bool:
        """Called once per control step with the episode's TaskTracker (goal, phys, start, state)."""

    @abc.abstractmethod
    def progress(self, tracker) -> float:
        """The task's own part of the shaped reward, in [0, 1]."""

    @abc.abstractmethod
    def plan(self, goal: Goal, phys, colour: str, natural: float) -> list:
        """Waypoints (sim/scripted_plan.py) that do the task on the cube `colour`; `natural` is the
        fingers' closing axis over that cube with the wrist unrolled."""

    def missed(self, waypoint, phys, colour: str) -> bool:
        """On reaching (and settling at) `waypoint` of its plan on the cube `colour`: whether the attempt
        failed, so the scripted teleoperator starts the plan over, as a person would. Default: never."""
        return False
