"""push the {colour} cube {left|right|forward}: slide it along the table in the robot's direction."""

from __future__ import annotations

import numpy as np

from reverie.sim.arm import CUBE_HALF
from reverie.sim.scripted_plan import HOVER_Z, PUSH_OPENING, PUSH_Z, Waypoint, nearest
from reverie.sim.tasks.goal import DIRECTIONS
from reverie.sim.tasks.task import ArmTask

PUSH_DISTANCE = 0.05  # metres the cube must travel along the direction
PUSH_SIDEWAYS = 0.04  # metres it may drift across it


class Push(ArmTask):
    name = "push"
    directed = True
    templates = {
        "train": ["push the {colour} cube {direction}", "slide the {colour} block {direction}",
                  "move the {colour} cube {direction} along the table", "nudge the {colour} cube {direction}"],
        "heldout": ["shove the {colour} block {direction}", "give the {colour} cube a push {direction}"],
    }

    def success(self, tracker) -> bool:
        g = tracker.goal
        d = tracker.displacement()[:2]
        along = float(d @ DIRECTIONS[g.direction])
        across = float(np.linalg.norm(d - along * DIRECTIONS[g.direction]))
        return along >= PUSH_DISTANCE and across <= PUSH_SIDEWAYS

    def progress(self, tracker) -> float:
        return np.clip(tracker.displacement()[:2] @ DIRECTIONS[tracker.goal.direction] / PUSH_DISTANCE, 0, 1)

    def plan(self, goal, phys, colour: str, natural: float) -> list[Waypoint]:
        cube = phys.cube_pos(colour)
        d = np.append(DIRECTIONS[goal.direction], 0.0)  # (3,)
        yaw = nearest(np.arctan2(d[1], d[0]) + np.pi / 2, np.pi, natural)
        # Fingers (9 mm half-depth) start 1.2 cm behind the cube's face and travel through the goal.
        start = cube - d * (CUBE_HALF + 0.009 + 0.012)
        start[2] = PUSH_Z
        end = start + d * (PUSH_DISTANCE + 0.02)
        return [Waypoint(start + [0, 0, HOVER_Z - PUSH_Z], PUSH_OPENING, yaw, name="above"),
                Waypoint(start, PUSH_OPENING, yaw, tol=0.008, settle=1, speed=0.02, name="down"),
                # Slowly: a fast joint-space step dips the fingertips into the table, where they stick.
                Waypoint(end, PUSH_OPENING, yaw, tol=0.01, settle=4, speed=0.012, name="push")]
