"""lift the {colour} cube: grasp it and hold it clear of the table."""

from __future__ import annotations

import numpy as np

from reverie.sim.arm import CUBE_HALF
from reverie.sim.scripted_plan import CLOSED, GRASP_Z, HOVER_Z, OPEN, Waypoint, nearest
from reverie.sim.tasks.task import ArmTask

LIFT_HEIGHT = 0.05  # metres the cube's bottom must clear the table, held by the gripper


class Lift(ArmTask):
    name = "lift"
    templates = {
        "train": ["lift the {colour} cube", "pick up the {colour} block", "raise the {colour} cube off the table",
                  "grab the {colour} cube and lift it"],
        "heldout": ["hoist the {colour} block", "pick the {colour} cube up off the table"],
    }

    def success(self, tracker) -> bool:
        g, phys = tracker.goal, tracker.phys
        height = phys.cube_pos(g.colour)[2] - CUBE_HALF
        return height >= LIFT_HEIGHT and phys.touching(g.colour)

    def progress(self, tracker) -> float:
        return np.clip((tracker.phys.cube_pos(tracker.goal.colour)[2] - CUBE_HALF) / LIFT_HEIGHT, 0, 1)

    def plan(self, goal, phys, colour: str, natural: float) -> list[Waypoint]:
        cube = phys.cube_pos(colour)
        yaw = nearest(phys.cube_yaw(colour) + np.pi / 2, np.pi / 2, natural)
        low = np.array([cube[0], cube[1], GRASP_Z])
        return [Waypoint(cube + [0, 0, HOVER_Z], OPEN, yaw, name="above"),
                Waypoint(low, OPEN, yaw, tol=0.006, name="down"),
                Waypoint(low, CLOSED, yaw, tol=0.01, settle=4, name="close"),
                Waypoint(low + [0, 0, 0.1], CLOSED, yaw, tol=0.015, settle=10, name="lift")]

    def missed(self, waypoint, phys, colour: str) -> bool:
        return waypoint.name == "lift" and not phys.touching(colour)  # came up empty: grasp again
