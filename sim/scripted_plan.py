"""The scripted teleoperator's plan vocabulary: Cartesian waypoints for the grasp point and the
gripper openings and heights they use. Each sim task (sim/tasks/) writes its own plan in it;
sim/scripted_teleop.py follows any plan."""

from __future__ import annotations

import dataclasses

import numpy as np

OPEN, CLOSED = 1.7, -0.17  # gripper horn radians
PUSH_OPENING = 0.35  # fingers 1.6 cm apart: a two-point push face narrower than the 3 cm cube
GRASP_Z = 0.022  # grasp point height when grasping: fingertips 5 mm above the table
PUSH_Z = 0.032  # fingertips at half the cube's height: clear of the table, which would drag them
HOVER_Z = 0.085  # above the cubes
SPEED = 0.035  # metres per control step of the Cartesian reference (0.35 m/s at 10 Hz)


@dataclasses.dataclass
class Waypoint:
    pos: np.ndarray  # (3,) grasp point target, world metres
    gripper: float  # horn radians
    yaw: float  # world angle of the fingers' closing axis
    tol: float = 0.012  # metres: close enough to move on
    settle: int = 0  # extra steps to wait once there (gripper closing)
    speed: float = SPEED  # metres per step of the reference toward this waypoint
    # The teleoperator's step roles: "above" (where it notices a wrong cube), "down" (where a clumsy
    # one closes early); others are plain moves, and the task's `missed` may name its own (lift: "lift",
    # where it retries if the cube is not held).
    name: str = ""


def nearest(angle: float, period: float, reference: float) -> float:
    """angle + k * period closest to reference (fingers are symmetric under these turns)."""
    return angle + period * np.round((reference - angle) / period)
