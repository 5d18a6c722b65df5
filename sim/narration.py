"""Ground-truth narration of the sim arm: one short sentence per control step saying what happened.

A stand-in for a learned captioner (DLLM describes each transition in language): measured from
privileged physics state and phrased with the object words of the task instructions ("the red
cube", left / right / forward), so descriptions and goals share a vocabulary. One sentence per step,
the most notable event first: lift > slide > touch > approach; "" when nothing notable happened.
"""

from __future__ import annotations

import numpy as np

from reverie.sim.arm import CUBE_HALF, ArmPhysics
from reverie.sim.randomization import COLOURS

LIFTED = 0.02    # m: cube bottom above the table while the gripper holds it
SLIDE = 0.004    # m: cube travel in one control step that counts as sliding (~4 cm/s at 10 Hz)
APPROACH = 0.004  # m: the gripper got this much closer to the nearest cube in one step
NEAR = 0.25      # m: approaches are narrated only this close to a cube (not a sweep across the table)
# Robot-frame directions of tasks.DIRECTIONS, plus the one no task asks for.
DIRECTION_WORDS = ((np.array([0.0, 1.0]), "left"), (np.array([0.0, -1.0]), "right"),
                   (np.array([1.0, 0.0]), "forward"), (np.array([-1.0, 0.0]), "back"))


class Narrator:
    """`reset()` at episode start, then `step() -> str` after every physics step."""

    def __init__(self, phys: ArmPhysics):
        self.phys = phys
        self._cubes: dict[str, np.ndarray] = {}
        self._grasp = np.zeros(3)

    def reset(self) -> None:
        self._cubes = {c: self.phys.cube_pos(c) for c in COLOURS}  # (3,) each
        self._grasp = self.phys.grasp_pos()

    def step(self) -> str:
        phys = self.phys
        cubes, grasp = {c: phys.cube_pos(c) for c in COLOURS}, phys.grasp_pos()
        text = self._describe(cubes, grasp)
        self._cubes, self._grasp = cubes, grasp
        return text

    def _describe(self, cubes: dict[str, np.ndarray], grasp: np.ndarray) -> str:
        touching = {c: self.phys.touching(c) for c in COLOURS}
        for c in COLOURS:
            if touching[c] and cubes[c][2] - CUBE_HALF >= LIFTED:
                return f"the gripper lifts the {c} cube"
        for c in COLOURS:
            moved = cubes[c][:2] - self._cubes[c][:2]                         # (2,) this step
            if np.linalg.norm(moved) >= SLIDE and cubes[c][2] - CUBE_HALF < LIFTED:
                word = max(DIRECTION_WORDS, key=lambda d: float(d[0] @ moved))[1]
                return f"the {c} cube slides {word}"
        for c in COLOURS:
            if touching[c]:
                return f"the gripper touches the {c} cube"
        dist = {c: float(np.linalg.norm(grasp - p)) for c, p in cubes.items()}
        nearest = min(dist, key=dist.get)
        before = float(np.linalg.norm(self._grasp - self._cubes[nearest]))
        if dist[nearest] < NEAR and before - dist[nearest] >= APPROACH:
            return f"the gripper moves toward the {nearest} cube"
        return ""
