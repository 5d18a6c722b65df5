"""touch the {colour} cube: rest the gripper on it, deliberately."""

from __future__ import annotations

import numpy as np

from reverie.sim.arm import CUBE_HALF
from reverie.sim.scripted_plan import CLOSED, HOVER_Z, Waypoint
from reverie.sim.tasks.task import ArmTask

# A touch is deliberate: gripper contact on TOUCH_STEPS consecutive control steps, with the cube still
# within TOUCH_DISPLACEMENT of where it started (a flailing arm brushes and knocks cubes; it does not
# rest on one).
TOUCH_STEPS = 3
TOUCH_DISPLACEMENT = 0.02


class Touch(ArmTask):
    name = "touch"
    templates = {
        "train": ["touch the {colour} cube", "tap the {colour} block", "reach out and touch the {colour} cube",
                  "put the gripper on the {colour} cube"],
        "heldout": ["make contact with the {colour} cube", "poke the {colour} block"],
    }

    def success(self, tracker) -> bool:
        g, phys = tracker.goal, tracker.phys
        still = np.linalg.norm(tracker.displacement()) < TOUCH_DISPLACEMENT
        tracker.touch_steps = tracker.touch_steps + 1 if phys.touching(g.colour) and still else 0
        return tracker.touch_steps >= TOUCH_STEPS

    def progress(self, tracker) -> float:
        return 0.0  # reaching the cube is the whole task

    def plan(self, goal, phys, colour: str, natural: float) -> list[Waypoint]:
        cube = phys.cube_pos(colour)
        top = cube + [0, 0, CUBE_HALF + 0.012]  # fingertips 5 mm into the top face: contact
        return [Waypoint(cube + [0, 0, HOVER_Z], CLOSED, natural, name="above"),
                Waypoint(top, CLOSED, natural, tol=0.006, settle=3, name="down")]
