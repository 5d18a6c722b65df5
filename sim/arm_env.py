"""The language-instructed sim arm as a reverie Env (reverie/specs.py), `make("arm/<task>")`.

    env = make_arm_env("push", preset="randomized", image_size=(64, 64), cameras=("front",))
    ts = env.reset(seed=0)                      # or reset(instruction="lift the red cube")
    ts = env.step(np.zeros(6, np.float32))      # actions in [-1, 1]

Observations: image/<camera> uint8 (H, W, 3); state float32 (6,) = five joint angles in radians and
the gripper opening in [0, 1]; instruction str. Actions float32 (6,) in [-1, 1] scale to joint-position
deltas of at most `max_delta` radians per control step (action_mode="delta", default) or map linearly
onto the joint ranges (action_mode="absolute").

Episodes end on success (LAST, discount 0, sparse reward 1) or at the time limit (LAST, discount 1).
`info["narration"]` says in one sentence what the last step did (sim/narration.py; "" on reset and
when nothing notable happened): the transition descriptions DLLM rewards are computed from.
`info["privileged"]` holds sim-only ground truth at reset and every step, never part of the
observation: {"objects": (9,) float32 the cubes' xyz in metres (world frame, order
`phys.cube_names`: red, green, blue), "target": (3,) float32 the instruction's target cube xyz}.
Recorders store them as `privileged/<name>` (datasets/schema.py; `privileged_spec()` gives the specs).
"""

from __future__ import annotations

import collections
import dataclasses
import time

import numpy as np

from reverie.errors import ConfigError, ReverieError
from reverie.sim.arm import JOINT_NAMES, ArmPhysics
from reverie.sim import tasks
from reverie.sim.narration import Narrator
from reverie.specs import ArraySpec, StepType, TextSpec, TimeStep


def episode_seeds(seed: int) -> tuple[int, np.random.Generator]:
    """Independent streams for the scene (cubes, variation: ArmPhysics.reset's seed) and the goal and
    noise draws. serve-bus's scene resets use the same split, so a seed means one scene in both."""
    scene, draws = np.random.SeedSequence(seed).spawn(2)
    return int(scene.generate_state(1)[0]), np.random.default_rng(draws)


@dataclasses.dataclass
class ArmEnvConfig:
    task: str = "touch"  # touch | push | lift | all
    preset: str = "nominal"  # nominal | randomized | shifted
    image_size: tuple[int, int] = (64, 64)  # (height, width)
    cameras: tuple[str, ...] = ("front",)  # front, wrist
    render: bool = True  # False: no image/* observations (state-only agents, physics benchmarks)
    control_hz: float = 10.0
    # Per-step joint limits (rad) at 10 Hz: ~1.5 rad/s for the arm, well under the STS3215's no-load
    # ~4.7 rad/s, so the servos track; the gripper may open or close fully in about 5 steps.
    max_delta: tuple[float, ...] = (0.15, 0.15, 0.15, 0.2, 0.3, 0.4)
    action_mode: str = "delta"  # delta | absolute
    time_limit: int = 80  # control steps (8 s at 10 Hz)
    reward: str = "sparse"  # sparse | shaped
    instruction_set: str = "train"  # train | heldout | all
    seed: int | None = None


class ArmEnv:
    narrates = True  # timesteps carry info["narration"]; recorders store it (datasets/narration.py)

    def __init__(self, cfg: ArmEnvConfig):
        self.cfg = cfg = _checked(cfg)
        self.phys = ArmPhysics(cfg.preset, seed=cfg.seed, image_size=cfg.image_size, cameras=cfg.cameras)
        self._max_delta = np.asarray(cfg.max_delta, np.float64)  # (6,)
        self._rng = np.random.default_rng(cfg.seed)
        self._rendered = cfg.cameras if cfg.render else ()
        self._obs_spec = {f"image/{c}": ArraySpec((*cfg.image_size, 3), "uint8", 0, 255) for c in self._rendered}
        self._obs_spec["state"] = ArraySpec((6,), "float32", units="rad (joints 0-4), opening 0-1 (gripper)")
        self._obs_spec["instruction"] = TextSpec()
        self._act_spec = ArraySpec((6,), "float32", -1.0, 1.0, units=f"{cfg.action_mode} joint targets")
        self.goal: tasks.Goal | None = None
        self.instruction = ""
        self.tracker: tasks.TaskTracker | None = None
        self.narrator = Narrator(self.phys)
        self._t = 0
        self._needs_reset = True

    # --- specs ----------------------------------------------------------------------------------
    def observation_spec(self) -> dict:
        return dict(self._obs_spec)

    def action_spec(self) -> ArraySpec:
        return self._act_spec

    def privileged_spec(self) -> dict[str, ArraySpec]:
        """Store specs of the `privileged/*` columns built from info["privileged"] (module docstring)."""
        from reverie.datasets.schema import privileged_specs  # lazily: the env itself needs no zarr

        return privileged_specs(tuple(self.phys.cube_names))

    def privileged(self) -> dict[str, np.ndarray]:
        """Ground truth now: {"objects": (3 * cubes,) xyz metres, "target": (3,) the goal cube's xyz}."""
        cubes = {c: self.phys.cube_pos(c).astype(np.float32) for c in self.phys.cube_names}
        return {"objects": np.concatenate([cubes[c] for c in self.phys.cube_names]),
                "target": cubes[self.goal.colour].copy()}

    @property
    def joint_names(self) -> tuple[str, ...]:
        return JOINT_NAMES

    # --- episode --------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, instruction: str | None = None) -> TimeStep:
        if seed is not None:
            scene_seed, self._rng = episode_seeds(seed)
            self.phys.reset(seed=scene_seed)
        else:
            self.phys.reset()
        if instruction is None:
            self.goal = tasks.sample_goal(self.cfg.task, self._rng)
            self.instruction = tasks.sample_instruction(self.goal, self._rng, self.cfg.instruction_set)
        else:
            self.goal, self.instruction = tasks.parse_instruction(instruction), instruction
        self.tracker = tasks.TaskTracker(self.goal, self.phys)
        self.narrator.reset()
        self._target = self.phys.targets()  # (6,) servo goals, radians
        # Action latency: the servos receive the action sent `latency_steps` control steps earlier.
        hold = self._hold_action()
        self._pending = collections.deque([hold] * self.phys.variation.latency_steps)
        self._t = 0
        self._needs_reset = False
        return TimeStep(StepType.FIRST, 0.0, 1.0, *self._observe(success=False))

    def step(self, action: np.ndarray) -> TimeStep:
        if self._needs_reset:
            return self.reset()
        action = self._checked_action(action)
        self._pending.append(action.astype(np.float64))
        self._target = self._command(self._pending.popleft())
        self.phys.set_targets(self._target)
        self.phys.step(1.0 / self.cfg.control_hz)
        self._t += 1
        success = self.tracker.success()
        obs, info = self._observe(success, self.narrator.step())
        reward = 1.0 if success else (self.tracker.shaped() if self.cfg.reward == "shaped" else 0.0)
        if success:
            self._needs_reset = True
            return TimeStep(StepType.LAST, reward, 0.0, obs, info)
        if self._t >= self.cfg.time_limit:
            self._needs_reset = True
            return TimeStep(StepType.LAST, reward, 1.0, obs, info)
        return TimeStep(StepType.MID, reward, 1.0, obs, info)

    def close(self) -> None:
        self.phys.close()

    @property
    def commanded(self) -> np.ndarray:
        """(6,) servo targets in radians once every action sent so far has landed, including those
        still held back by action latency (privileged: the scripted teleoperator plans from it)."""
        target = self._target
        for action in self._pending:
            target = self._command(action, target)
        return target.copy()

    # --- internals ------------------------------------------------------------------------------
    def _command(self, action: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
        """Action (6,) in [-1, 1] -> servo targets (6,) radians, relative to `previous` targets."""
        previous = self._target if previous is None else previous
        lo, hi = self.phys.lower, self.phys.upper
        if self.cfg.action_mode == "absolute":
            return lo + (action + 1.0) * 0.5 * (hi - lo)
        # Deltas accumulate on the previous target, not the measured angle, so a zero action holds a
        # pose against gravity; the lead over the measured angle is bounded so a blocked joint (a
        # closed gripper on a cube, an arm pressing the table) does not wind up without limit.
        q = self.phys.qpos()
        target = previous + action * self._max_delta
        target = np.clip(target, q - 2 * self._max_delta, q + 2 * self._max_delta)
        return np.clip(target, lo, hi)

    def _hold_action(self) -> np.ndarray:
        """The action that keeps the current targets (zero deltas, or the targets as absolute values)."""
        if self.cfg.action_mode == "delta":
            return np.zeros(6)
        lo, hi = self.phys.lower, self.phys.upper
        return 2.0 * (self._target - lo) / (hi - lo) - 1.0

    def _observe(self, success: bool, narration: str = "") -> tuple[dict, dict]:
        obs = {f"image/{c}": self.phys.render(c) for c in self._rendered}
        stamp = time.time()  # captured with the images
        variation = self.phys.variation
        if variation.image_noise > 0:  # sensor noise: the same for every camera model
            for key in [k for k in obs if k.startswith("image/")]:
                noisy = obs[key] + self._rng.normal(0.0, variation.image_noise, obs[key].shape)
                obs[key] = np.clip(noisy, 0, 255).astype(np.uint8)
        state = self.phys.qpos()
        state[5] = self.phys.gripper_opening()
        if variation.state_noise > 0:
            state[:5] += self._rng.normal(0.0, variation.state_noise, 5)
        obs["state"] = state.astype(np.float32)
        obs["instruction"] = self.instruction
        g = self.goal
        info = {"success": bool(success), "timestamp": stamp, "task": g.task, "colour": g.colour,
                "direction": g.direction, "step": self._t,
                "narration": narration, "privileged": self.privileged()}
        return obs, info

    def _checked_action(self, action) -> np.ndarray:
        action = np.asarray(action, np.float32)
        if action.shape != (6,):
            raise ReverieError(f"arm action: expected shape (6,) for joints {JOINT_NAMES}, got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ReverieError("arm action contains NaN or Inf: check the policy's output")
        return np.clip(action, -1.0, 1.0)


def _checked(cfg: ArmEnvConfig) -> ArmEnvConfig:
    tasks.check_task(cfg.task)
    tasks.templates("touch", cfg.instruction_set)  # validates the set name
    choices = {"action_mode": ("delta", "absolute"), "reward": ("sparse", "shaped")}
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"arm env {key}={getattr(cfg, key)!r}: use one of {', '.join(allowed)}")
    if len(cfg.max_delta) != 6 or min(cfg.max_delta) <= 0:
        raise ConfigError(f"arm env max_delta={list(cfg.max_delta)}: give 6 positive radians per step, "
                          f"one per joint {JOINT_NAMES}")
    if cfg.control_hz <= 0 or cfg.time_limit < 1:
        raise ConfigError("arm env control_hz and time_limit must be positive (e.g. control_hz=10 time_limit=80)")
    cfg.image_size, cfg.cameras = tuple(cfg.image_size), tuple(cfg.cameras)
    cfg.max_delta = tuple(float(x) for x in cfg.max_delta)
    return cfg


def make_arm_env(task_name: str = "touch", **kwargs) -> ArmEnv:
    """Registry entry for "arm/<task>": task_name is touch | push | lift | all."""
    fields = {f.name for f in dataclasses.fields(ArmEnvConfig)} - {"task"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ConfigError(f"unknown arm env option(s) {unknown}: valid options are {sorted(fields)}")
    return ArmEnv(ArmEnvConfig(task=task_name, **kwargs))


def bundle_robot(control_hz: float) -> dict:
    """What the sim arm env's actions mean, for a bundle's manifest (`reverie export arm=sim`, the
    `robot` section, docs/bundle.md): the default env's action mode and per-step deltas, the model's
    joint ranges (servo targets; nothing is rendered), and the runtime's sim safety filter: one
    max_delta per step from the previous target, at most twice it from the joint (the env's own lead
    bound)."""
    sim = ArmEnvConfig()
    phys = ArmPhysics()
    limits = {"lower": phys.lower.tolist(), "upper": phys.upper.tolist()}
    phys.close()
    delta = [float(d) for d in sim.max_delta]
    return {"kind": "sim", "name": "sim/so101", "joint_names": list(JOINT_NAMES),
            "action_mode": sim.action_mode, "action_scale": delta,
            "action_units": "sim servo-target radians per control step at action 1.0",
            "joint_limits": limits, "max_step": [2 * d for d in delta],
            "max_velocity": [d * control_hz for d in delta], "control_hz": control_hz}
