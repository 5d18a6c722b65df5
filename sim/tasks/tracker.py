"""Success and rewards of one episode's goal, measured from privileged sim state; the task decides."""

from __future__ import annotations

import numpy as np

from reverie.sim.arm import ArmPhysics
from reverie.sim.tasks import registry
from reverie.sim.tasks.goal import Goal


class TaskTracker:
    """`success()` is called once per control step (touch counts consecutive steps of contact)."""

    def __init__(self, goal: Goal, phys: ArmPhysics):
        self.task = registry.get(goal.task)  # an unknown task fails here, naming the known ones
        self.goal, self.phys = goal, phys
        self.start = phys.cube_pos(goal.colour)  # (3,) where the target cube began
        self.touch_steps = 0

    def displacement(self) -> np.ndarray:
        return self.phys.cube_pos(self.goal.colour) - self.start  # (3,)

    def success(self) -> bool:
        return self.task.success(self)

    def shaped(self) -> float:
        """Dense progress in [0, 1): half for bringing the gripper to the cube, half for the task itself."""
        phys = self.phys
        reach = 1.0 - np.tanh(10.0 * np.linalg.norm(phys.grasp_pos() - phys.cube_pos(self.goal.colour)))
        return float(0.5 * reach + 0.49 * self.task.progress(self))
