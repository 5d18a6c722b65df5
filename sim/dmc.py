"""dm_control suite tasks from pixels, behind the reverie Env API.

`make("dmc/walker-walk")` -> observations {"image/<camera>": uint8 (64, 64, 3), "state": float32,
"instruction": str}. Follows DreamerV3's pixel setting: action repeat 2, camera 0 except quadruped
(camera 2, the one that follows the body), every proprioceptive observation flattened into `state`.
The suite has no notion of success, so info["success"] is None.
"""

from __future__ import annotations

import inspect
import time

from reverie.errors import ConfigError
from reverie.specs import ArraySpec, TimeStep

# DreamerV3's short names for two domains whose suite names are long.
DOMAIN_ALIASES = {"cup": "ball_in_cup", "pointmass": "point_mass"}

# Camera 0 of quadruped looks at the whole floor from afar; camera 2 tracks the body.
DEFAULT_CAMERA = {"quadruped": 2}

# One fixed instruction per task, so that language-conditioned agents can be trained and evaluated
# on the suite unchanged. Tasks not listed get a phrase built from their name.
INSTRUCTIONS = {
    ("acrobot", "swingup"): "swing the double pendulum up and balance it",
    ("ball_in_cup", "catch"): "swing the ball into the cup",
    ("cartpole", "balance"): "balance the pole upright",
    ("cartpole", "balance_sparse"): "balance the pole upright",
    ("cartpole", "swingup"): "swing up and balance the pole",
    ("cartpole", "swingup_sparse"): "swing up and balance the pole",
    ("cheetah", "run"): "run forward",
    ("finger", "spin"): "spin the hinged body",
    ("finger", "turn_easy"): "turn the hinged body to the target",
    ("finger", "turn_hard"): "turn the hinged body to the target",
    ("hopper", "hop"): "hop forward",
    ("hopper", "stand"): "stand upright",
    ("pendulum", "swingup"): "swing the pendulum up and balance it",
    ("point_mass", "easy"): "move the point to the target",
    ("quadruped", "run"): "run forward",
    ("quadruped", "walk"): "walk forward",
    ("reacher", "easy"): "reach the target with the arm tip",
    ("reacher", "hard"): "reach the target with the arm tip",
    ("walker", "run"): "run forward",
    ("walker", "stand"): "stand upright",
    ("walker", "walk"): "walk forward",
}


def default_instruction(domain: str, task: str) -> str:
    return INSTRUCTIONS.get((domain, task), f"{domain.replace('_', ' ')}: {task.replace('_', ' ')}")


def make_dmc_env(name: str, **kwargs) -> "DMCEnv":
    """`name` is "<domain>-<task>", e.g. "walker-walk", "cartpole-swingup", "finger-turn_easy"."""
    domain, sep, task = name.partition("-")
    if not sep or not task:
        raise ConfigError(f"dm_control task {name!r}: write it as <domain>-<task>, e.g. dmc/walker-walk")
    options = set(inspect.signature(DMCEnv).parameters) - {"domain", "task"}
    unknown = sorted(set(kwargs) - options)
    if unknown:
        raise ConfigError(f"unknown dmc option(s) {unknown}: valid options are {sorted(options)}")
    return DMCEnv(DOMAIN_ALIASES.get(domain, domain), task, **kwargs)


class DMCEnv:
    """One dm_control suite task rendered to pixels; actions in [-1, 1] rescaled to the task bounds."""

    def __init__(self, domain: str, task: str, *, size: tuple[int, int] = (64, 64),
                 camera: int | str | None = None, action_repeat: int = 2,
                 instruction: str | None = None, seed: int | None = None, render: bool = True,
                 fast_render: bool = False):
        import mujoco
        from dm_control import suite  # imported here so reverie works without dm_control installed

        from reverie.sim.dm_env_adapters import DmEnvToReverie

        if (domain, task) not in suite.ALL_TASKS:
            known = ", ".join(f"{d}-{t}" for d, t in suite.ALL_TASKS[:8])
            raise ConfigError(f"unknown dm_control task {domain}-{task}: pick one of suite.ALL_TASKS "
                              f"written <domain>-<task> (for example {known}, ...)")
        if action_repeat < 1:
            raise ConfigError(f"action_repeat={action_repeat}: must be at least 1")
        self.domain, self.task = domain, task
        self._env = suite.load(domain, task, task_kwargs={"random": seed})
        self._physics = self._env.physics
        self._size = (int(size[0]), int(size[1]))
        self._repeat = int(action_repeat)
        self._render = bool(render)  # False: state-only observations (for speed benchmarks, state agents)
        # The suite's look (2048^2 shadow map, 4x multisampling) costs ~25 ms of CPU a 64x64 frame
        # under software GL; without shadows, reflections and multisampling ~3 ms, at the price of
        # images that differ from the published pixel benchmarks (see benchmarks/sim.py).
        self._scene_callback = None
        if fast_render:
            self._physics.model.vis.quality.offsamples = 0  # read when the GL context is made
            self._scene_callback = _plain_scene

        model = self._physics.model
        camera = DEFAULT_CAMERA.get(domain, 0) if camera is None else camera
        camera_id = int(camera) if not isinstance(camera, str) else (
            mujoco.mj_name2id(model.ptr, mujoco.mjtObj.mjOBJ_CAMERA, camera))  # -1 if no such name
        if not 0 <= camera_id < model.ncam:
            raise ConfigError(f"{domain}-{task} has cameras 0..{model.ncam - 1}; camera={camera!r} is not one")
        self._camera_id = camera_id
        self._image_key = "image/" + (model.id2name(camera_id, "camera") or f"camera{camera_id}")

        # The suite's observations are all vectors: DmEnvToReverie flattens them into `state`, maps
        # actions from [-1, 1] onto the task bounds and re-seeds task.random on reset(seed=).
        self._inner = DmEnvToReverie(self._env, instruction=instruction or default_instruction(domain, task),
                                     name=f"dmc/{domain}-{task}")
        self._last: TimeStep | None = None

    @property
    def physics(self):
        """The dm_control Physics (privileged state, rendering other views)."""
        return self._physics

    # --- specs -------------------------------------------------------------------------------
    def observation_spec(self) -> dict:
        spec = self._inner.observation_spec()
        if self._render:
            spec[self._image_key] = ArraySpec((*self._size, 3), "uint8")
        return spec

    def action_spec(self) -> ArraySpec:
        return self._inner.action_spec()

    # --- episode -----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, instruction: str | None = None) -> TimeStep:
        # The instruction is what the agent is told; dm_control's reward does not depend on it.
        self._last = self._rendered(self._inner.reset(seed=seed, instruction=instruction))
        return self._last

    def step(self, action) -> TimeStep:
        if self._last is None or self._last.last():
            return self.reset()  # dm_env convention: stepping past the end starts a new episode
        reward = 0.0
        for _ in range(self._repeat):
            ts = self._inner.step(action)
            reward += ts.reward
            if ts.last():
                break
        # The suite ends episodes by time limit (discount 1); a task that terminates gives 0.
        discount = (0.0 if ts.discount == 0 else 1.0) if ts.last() else 1.0
        self._last = self._rendered(TimeStep(ts.step_type, float(reward), discount, ts.observation, ts.info))
        return self._last

    def close(self) -> None:
        self._env.close()

    def _rendered(self, ts: TimeStep) -> TimeStep:
        if self._render:
            ts.observation[self._image_key] = self._physics.render(
                *self._size, camera_id=self._camera_id, scene_callback=self._scene_callback)
        ts.info["timestamp"] = time.time()  # stamped after rendering: the image shows the state as of now
        return ts


def _plain_scene(physics, scene) -> None:
    import mujoco

    scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
