"""`reverie sim serve-bus protocol=<feetech|dynamixel> link=PATH`: the sim arm as a virtual servo bus.

The server itself is the virtual robot's (robot_io/virtual/server.py: pseudo-terminal, servo bus,
frame files, scene resets); this builds what it serves, the simulator's arm (`ServedArm`): MuJoCo
physics under the servos, the sim env's scene for a reset seed, and the sim tasks' success as the
score of an instruction. Options: reverie/conf/serve_bus.yaml.

serve-bus starts on the scene of a reset with seed=`seed`. Requests without an instruction draw one
of the task of serve-bus's own `instruction=`, as make("arm/<task>") does.
"""

from __future__ import annotations

import os

import numpy as np

from reverie.config import command_config
from reverie.errors import ConfigError


class ServedArm:
    """The world robot_io/virtual/server.py serves: the sim arm, its scenes and its task scores."""

    def __init__(self, physics, instruction: str | None = None):
        from reverie.sim.tasks import parse_instruction

        self.physics = physics
        self.task = parse_instruction(instruction).task if instruction else None

    def tracker(self, instruction: str):
        from reverie.sim.tasks import TaskTracker, parse_instruction

        return TaskTracker(parse_instruction(instruction), self.physics)

    def reset(self, seed, instruction: str | None) -> tuple[str, dict]:
        """The scene ArmEnv.reset(seed) lays out, the arm left where it stands; returns the scored
        instruction and the cubes' positions."""
        from reverie.sim import tasks
        from reverie.sim.arm_env import episode_seeds

        scene_seed, draws = episode_seeds(int(seed)) if seed is not None else (None, np.random.default_rng())
        if not instruction:
            if self.task is None:
                raise ConfigError("no instruction to score: send one, or start serve-bus with instruction=\"...\" "
                                  "so instructions are drawn from its task")
            # The draws of ArmEnv.reset(seed) for the train instruction set, so eval meets the sim's tasks.
            instruction = tasks.sample_instruction(tasks.sample_goal(self.task, draws), draws, "train")
        tasks.parse_instruction(instruction)  # refuse before touching the scene
        # Keep the arm where the bus holds it; only the scene changes, as under an operator's hands.
        self.physics.reset(scene_seed, arm=self.physics.qpos())
        cubes = {c: [round(float(v), 5) for v in self.physics.cube_pos(c)] for c in self.physics.cube_names}
        return instruction, cubes


def serve(cfg) -> int:
    # Headless offscreen rendering unless the user chose a GL backend (same default as the Makefile).
    os.environ.setdefault("MUJOCO_GL", "egl")
    from reverie.robot_io.virtual import server
    from reverie.sim.arm import ArmPhysics
    from reverie.sim.arm_env import episode_seeds

    server.check_options(cfg)  # a bad protocol or fault fails before the physics loads
    physics = ArmPhysics(preset=cfg.randomization, seed=cfg.seed, image_size=tuple(cfg.image_size),
                         cameras=server.served_cameras(cfg))
    physics.reset(episode_seeds(int(cfg.seed))[0])  # the scene a reset request with seed=cfg.seed makes
    try:
        world = ServedArm(physics, cfg.instruction)
    except BaseException:
        physics.close()
        raise
    return server.serve(cfg, world)


def main(argv: list[str]) -> int:
    cfg = command_config("serve_bus", argv, __doc__, word="serve-bus")
    return 0 if cfg is None else serve(cfg)
