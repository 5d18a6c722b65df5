"""Gymnasium <-> reverie adapters.

GymToReverie / make_gym_env ("gym/<id>"): any gymnasium environment with image observations becomes a
reverie Env, so policies trained here can be evaluated (and corrected) on it. A third-party package
registers its ids when imported: "gym/<module>:<id>" has gymnasium import <module> first, e.g.
gym/gym_pusht:gym_pusht/PushT-v0 (an unknown namespace's error suggests this form). Images come from
  - the observation itself: a Box uint8 (H, W, 3) (or grayscale (H, W) / (H, W, 1), repeated to RGB),
    or such Boxes inside a Dict observation, one `image/<key>` per Box; or
  - env.render() with render_mode="rgb_array", for environments whose observation is a vector
    (CartPole, the MuJoCo locomotion tasks); the vector then becomes `state`.
Action units (`action_units=`, stated by action_spec() and used by policy/rollout.py to clip):
  - "normalised" (default): the reverie action is a normalised command in [-1, 1] (action_spec's
    bounds, like the sim's), mapped onto the gymnasium space below. Stores
    recorded through it hold [-1, 1] actions and train with an identity action normaliser.
  - "env": a Box action is in the environment's own units, passed through (clipped to its bounds);
    action_spec() reports those bounds. Use it for a policy trained on data in the env's units (an
    imported dataset in pixels or metres), whose controller already maps actions back to them
    (reverie/normalize.py); the adapter then must not rescale again. Box spaces only.
Action mapping, reverie [-1, 1] vector -> gymnasium action (action_units="normalised"):
  - Box: rescaled linearly to [low, high]; dimensions with an infinite bound are passed unscaled.
  - Discrete(n): the vector has n entries, one score per choice; the action is start + argmax.
  - MultiDiscrete(nvec): one block of nvec[i] scores per sub-action, argmax within each block.
  - MultiBinary(n): entry > 0 means 1.
Success is info["is_success"] or info["success"] when the environment reports it, else None.

ReverieToGym: any reverie Env as a gymnasium.Env, with a Dict observation space (images Box uint8,
state Box float32, instruction Text) and a Box action space with the env's action_spec bounds. It passes
gymnasium.utils.env_checker.check_env. The instruction is chosen with reset(options={"instruction": s}).

ArmGymEnv: the sim arm's tasks registered as gymnasium ids by `import reverie.sim`:
reverie/ArmTouch-v0, ArmPush-v0, ArmLift-v0 and ArmAll-v0 (keywords: ArmEnvConfig's fields).
"""

from __future__ import annotations

import string
import time

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from reverie.errors import ConfigError
from reverie.specs import ArraySpec, StepType, TextSpec, TimeStep, checked_action, image_keys

# Default instructions for a few common gymnasium tasks; others get "solve <id>".
INSTRUCTIONS = {
    "CartPole": "balance the pole upright",
    "InvertedPendulum": "balance the pole upright",
    "InvertedDoublePendulum": "balance the double pendulum upright",
    "Pendulum": "swing the pendulum up and balance it",
    "Reacher": "reach the target with the arm tip",
    "HalfCheetah": "run forward",
    "Hopper": "hop forward",
    "Walker2d": "walk forward",
    "Ant": "walk forward",
    "Humanoid": "walk forward",
}
ACTION_UNITS = ("normalised", "env")
# Keys that mean "the main camera" in common image environments.
PLAIN_IMAGE_KEYS = ("image", "pixels", "rgb", "observation")


def make_gym_env(id: str, *, size=(64, 64), camera: str = "front", instruction: str | None = None,
                 action_repeat: int = 1, action_units: str = "normalised", **make_kwargs) -> "GymToReverie":
    """gymnasium.make(id, **make_kwargs) wrapped as a reverie Env; see the module docstring."""
    try:
        env = gym.make(id, **make_kwargs)
        if not _image_paths(env.observation_space) and env.render_mode != "rgb_array":
            # Vector observations: render pixels instead. Made again because gymnasium fixes the
            # render mode at construction.
            modes = env.metadata.get("render_modes", [])
            env.close()
            if "rgb_array" not in modes:
                raise ConfigError(f"gym/{id} has no image observation and cannot render rgb_array "
                                  f"(render modes {modes}); pick an environment with pixels")
            env = gym.make(id, render_mode="rgb_array", **make_kwargs)
    except gym.error.NamespaceNotFound as e:
        raise ConfigError(unknown_namespace_message(id)) from e
    except ModuleNotFoundError as e:  # the <module> of gym/<module>:<id> (gymnasium imports it)
        raise ConfigError(f"gym/{id}: {e.name or e} cannot be imported; install the package that "
                          f"provides it (pip install ...) or fix the module before the ':'") from e
    except gym.error.Error as e:
        raise ConfigError(f"gym/{id}: gymnasium could not make it ({e}); check the id with "
                          "`python -c 'import gymnasium; gymnasium.pprint_registry()'`") from e
    except TypeError as e:  # a keyword the environment's constructor does not take
        raise ConfigError(f"gym/{id}: bad option ({e}); reverie takes size, camera, instruction, "
                          "action_repeat and action_units, everything else goes to gymnasium.make") from e
    return GymToReverie(env, size=size, camera=camera, instruction=instruction,
                        action_repeat=action_repeat, name=id, action_units=action_units)


def unknown_namespace_message(id: str) -> str:
    """Third-party environments register on import (gym_pusht, ale_py, ...); gymnasium imports the
    module named before a ':' in the id, which is how reverie reaches them."""
    module, _, env_id = id.rpartition(":")
    namespace = env_id.split("/")[0]
    if module:
        return (f"gym/{id}: importing {module} registered no gymnasium namespace {namespace!r}; "
                f"name the module that registers it, gym/<module>:{env_id}, and check the id with "
                "`python -c 'import gymnasium; gymnasium.pprint_registry()'` after importing it")
    return (f"gym/{id}: gymnasium has no namespace {namespace!r} yet: its package registers it when "
            f"imported. Name the module to import before a colon, gym/<module>:<id>, e.g. "
            f"env=gym/{namespace}:{env_id} (the module is usually the package: gym_pusht for "
            f"gym_pusht/PushT-v0, ale_py for ALE/Pong-v5); pip install it first")


def _bound(values: np.ndarray):
    """A Box bound as an ArraySpec minimum/maximum: one float when all equal, else a tuple per
    dimension (infinite entries kept), None when unbounded everywhere."""
    v = np.asarray(values, np.float64).ravel()
    if not np.isfinite(v).any():
        return None
    return float(v[0]) if np.all(v == v[0]) else tuple(float(x) for x in v)


def _is_image(space) -> bool:
    return (isinstance(space, spaces.Box) and space.dtype == np.uint8
            and (len(space.shape) == 2 or (len(space.shape) == 3 and space.shape[-1] in (1, 3))))


def _image_paths(space) -> dict:
    """{dict key or None (the whole observation): reverie camera name} for image entries."""
    if _is_image(space):
        return {None: None}
    if isinstance(space, spaces.Dict):
        return {k: k for k, s in space.spaces.items() if _is_image(s)}
    return {}


def image_key(key: str | None, camera: str) -> str:
    """The reverie observation key of an image entry (None: the whole observation is the image)."""
    if key is None or key in PLAIN_IMAGE_KEYS:
        return f"image/{camera}"
    return key if key.startswith("image/") else f"image/{key}"  # already reverie-named: keep


def to_rgb(image: np.ndarray, size) -> np.ndarray:
    """uint8 (H, W), (H, W, 1) or (H, W, 3) -> (H, W, 3), resized to `size` (H, W) unless None."""
    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if size is not None and image.shape[:2] != tuple(size):
        import cv2

        # INTER_AREA averages source pixels, avoiding the aliasing of nearest/linear when shrinking.
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image)


class GymToReverie:
    """A gymnasium.Env as a reverie Env (dm_env-style TimeSteps, dict observations, actions in
    [-1, 1] or, with action_units="env", in the Box's own units)."""

    def __init__(self, env, *, size=(64, 64), camera: str = "front", instruction: str | None = None,
                 action_repeat: int = 1, name: str | None = None, action_units: str = "normalised"):
        self.env = env
        self.name = name or (env.spec.id if env.spec else type(env.unwrapped).__name__)
        if action_units not in ACTION_UNITS:
            raise ConfigError(f"action_units={action_units!r}: choose {' or '.join(ACTION_UNITS)}")
        if action_units == "env" and not isinstance(env.action_space, spaces.Box):
            raise ConfigError(f"{self.name}: action_units=env needs a Box action space, this one is "
                              f"{env.action_space}; use action_units=normalised (one score per choice)")
        self.action_units = action_units
        self._size = None if size is None else (int(size[0]), int(size[1]))
        self._repeat = int(action_repeat)
        if self._repeat < 1:
            raise ConfigError(f"action_repeat={action_repeat}: must be at least 1")

        obs_space = env.observation_space
        paths = _image_paths(obs_space)
        self._rendered = not paths
        if self._rendered:
            if env.render_mode != "rgb_array":
                raise ConfigError(f"{self.name}: no image in the observation space {obs_space}; "
                                  "make the environment with render_mode='rgb_array'")
            if self._size is None:
                raise ConfigError(f"{self.name}: rendered frames have no declared size; pass size=(H, W)")
        # dict key (None = whole observation) -> reverie observation key
        self._images = {k: image_key(k, camera) for k in paths}
        self._image_shapes = {}
        for k, key in self._images.items():
            shape = (obs_space if k is None else obs_space[k]).shape
            self._image_shapes[key] = (*(self._size or shape[:2]), 3)
        self._render_key = f"image/{camera}"
        if self._rendered:
            self._image_shapes[self._render_key] = (*self._size, 3)

        # Everything numeric that is not an image is flattened, in key order, into `state`.
        self._state_keys: list = []
        self._instruction_key = None
        if isinstance(obs_space, spaces.Dict):
            for k, s in obs_space.spaces.items():
                if k in paths:
                    continue
                if isinstance(s, spaces.Text):
                    self._instruction_key = k
                elif isinstance(s, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
                    self._state_keys.append(k)
                else:
                    raise ConfigError(f"{self.name}: observation entry {k!r} is a {type(s).__name__}; "
                                      "only Box, Discrete, MultiDiscrete, MultiBinary and Text are supported")
        elif not paths:
            if not isinstance(obs_space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
                raise ConfigError(f"{self.name}: observation space {type(obs_space).__name__} is not supported")
            self._state_keys.append(None)
        self._state_size = sum(int(np.prod(obs_space.shape if k is None else obs_space[k].shape))
                               for k in self._state_keys)

        self._action_space = env.action_space
        self._action_shape = self._action_size(env.action_space)
        base = self.name.split("/")[-1].split("-")[0]
        self._default_instruction = instruction or INSTRUCTIONS.get(base, f"solve {self.name}")
        self._instruction = self._default_instruction
        self._last: TimeStep | None = None

    def _action_size(self, space) -> tuple[int]:
        if isinstance(space, spaces.Box):
            low, high = space.low.astype(np.float64).ravel(), space.high.astype(np.float64).ravel()
            finite = np.isfinite(low) & np.isfinite(high)
            # Unbounded dimensions keep the raw value: a scale of 1 around 0.
            self._low = np.where(finite, low, -1.0)
            self._high = np.where(finite, high, 1.0)
            return (low.size,)
        if isinstance(space, spaces.Discrete):
            return (int(space.n),)
        if isinstance(space, spaces.MultiDiscrete) and space.nvec.ndim == 1:
            return (int(space.nvec.sum()),)
        if isinstance(space, spaces.MultiBinary) and np.ndim(space.n) == 0:
            return (int(space.n),)
        raise ConfigError(f"{self.name}: action space {space} is not supported; use Box, Discrete, "
                          "1-D MultiDiscrete or 1-D MultiBinary")

    def _to_gym_action(self, action: np.ndarray):
        space = self._action_space
        if isinstance(space, spaces.Box) and self.action_units == "env":  # already in the env's units
            a = np.clip(action, space.low.astype(np.float64).ravel(), space.high.astype(np.float64).ravel())
            return a.reshape(space.shape).astype(space.dtype)
        if isinstance(space, spaces.Box):
            a = self._low + (np.clip(action, -1, 1) + 1) / 2 * (self._high - self._low)
            return a.reshape(space.shape).astype(space.dtype)
        if isinstance(space, spaces.Discrete):
            return int(space.start + np.argmax(action))
        if isinstance(space, spaces.MultiDiscrete):
            bounds = np.cumsum(space.nvec)[:-1]
            picks = [np.argmax(block) for block in np.split(action, bounds)]
            return (np.asarray(picks) + space.start).astype(space.dtype)
        return (action > 0).astype(space.dtype)  # MultiBinary

    # --- specs -------------------------------------------------------------------------------
    def observation_spec(self) -> dict:
        spec = {key: ArraySpec(shape, "uint8") for key, shape in self._image_shapes.items()}
        spec["state"] = ArraySpec((self._state_size,), "float32")
        spec["instruction"] = TextSpec()
        return spec

    def action_spec(self) -> ArraySpec:
        if self.action_units == "env":  # the Box's bounds, per dimension (None: unbounded everywhere)
            space = self._action_space
            return ArraySpec(self._action_shape, "float32", _bound(space.low), _bound(space.high),
                             f"env units of {self.name}")
        return ArraySpec(self._action_shape, "float32", -1.0, 1.0)  # action_units="normalised"

    # --- episode -----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, instruction: str | None = None) -> TimeStep:
        options = None
        if instruction is not None and self._instruction_key is not None:
            options = {"instruction": instruction}  # the env itself reads instructions: tell it
        if seed is not None:
            self._action_space.seed(seed)
        obs, info = self.env.reset(seed=seed, options=options)
        self._instruction = instruction if instruction is not None else self._default_instruction
        self._last = self._timestep(StepType.FIRST, 0.0, 1.0, obs, info)
        return self._last

    def step(self, action) -> TimeStep:
        if self._last is None or self._last.last():
            return self.reset()  # dm_env convention: stepping past the end starts a new episode
        action = checked_action(self.name, action, self._action_shape)
        gym_action = self._to_gym_action(action)
        reward, terminated, truncated = 0.0, False, False
        for _ in range(self._repeat):
            obs, r, terminated, truncated, info = self.env.step(gym_action)
            reward += float(r)
            if terminated or truncated:
                break
        if terminated or truncated:
            # Termination (the task ended) has no future: discount 0. A time limit keeps 1.
            step_type, discount = StepType.LAST, (0.0 if terminated else 1.0)
        else:
            step_type, discount = StepType.MID, 1.0
        self._last = self._timestep(step_type, reward, discount, obs, info)
        return self._last

    def close(self) -> None:
        self.env.close()

    def _timestep(self, step_type, reward, discount, obs, info) -> TimeStep:
        observation = {}
        for k, key in self._images.items():
            observation[key] = to_rgb(obs if k is None else obs[k], self._size)
        if self._rendered:
            try:
                frame = self.env.render()
            except gym.error.DependencyNotInstalled as e:
                raise ConfigError(f"{self.name}: rendering needs a missing package ({e}); install it, "
                                  "e.g. `pip install pygame` for classic control") from e
            observation[self._render_key] = to_rgb(frame, self._size)
        parts = [np.asarray(obs if k is None else obs[k], np.float32).ravel() for k in self._state_keys]
        observation["state"] = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        if self._instruction_key is not None:
            self._instruction = str(obs[self._instruction_key])
        observation["instruction"] = self._instruction
        success = info.get("is_success", info.get("success"))
        return TimeStep(step_type, reward, discount, observation,
                        {"success": None if success is None else bool(success), "timestamp": time.time()})


# Characters an instruction may contain in the gymnasium Text space (its default is alphanumeric
# only, which would reject "pick up the red cube").
INSTRUCTION_CHARSET = string.ascii_letters + string.digits + string.punctuation + " "


def _gym_space(spec):
    if isinstance(spec, TextSpec):
        return spaces.Text(max_length=spec.max_chars, min_length=0, charset=INSTRUCTION_CHARSET)
    if spec.dtype == "uint8":
        return spaces.Box(0, 255, spec.shape, np.uint8)

    def bound(v, fill):  # a scalar, or one value per dimension (sim/gym adapters' env-unit specs)
        if v is None:
            return fill
        return np.asarray(v, np.dtype(spec.dtype)).reshape(spec.shape) if np.ndim(v) else v

    return spaces.Box(bound(spec.minimum, -np.inf), bound(spec.maximum, np.inf), spec.shape, np.dtype(spec.dtype))


class ReverieToGym(gym.Env):
    """A reverie Env as a gymnasium.Env.

    info holds the reverie info except the wall-clock "timestamp" (it differs between otherwise
    identical steps and would break gymnasium's determinism checks); the full last TimeStep is
    kept in `.timestep`.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, env, render_mode: str | None = None, render_fps: float | None = None):
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(f"render_mode={render_mode!r}: ReverieToGym renders only 'rgb_array'")
        self.env = env
        self.render_mode = render_mode
        # Frames come at the env's control rate when it states one (a robot's control_hz, the sim arm's cfg).
        cfg = getattr(env, "cfg", None)
        fps = render_fps or getattr(env, "control_hz", None) or getattr(cfg, "control_hz", None)
        self.metadata = {**self.metadata, **({"render_fps": float(fps)} if fps else {})}
        self._spec = env.observation_spec()
        self.observation_space = spaces.Dict({k: _gym_space(s) for k, s in self._spec.items()})
        action = env.action_spec()  # the env's own bounds: [-1, 1], or its units' range
        self.action_space = _gym_space(action)
        self.timestep: TimeStep | None = None
        self._closed = False

    def _convert(self, ts: TimeStep):
        self.timestep = ts
        # Fresh arrays every call: gymnasium users may keep (and mutate) what they are given.
        obs = {k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in ts.observation.items()}
        info = {k: v for k, v in ts.info.items() if k != "timestamp"}
        return obs, info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        instruction = (options or {}).get("instruction")
        return self._convert(self.env.reset(seed=seed, instruction=instruction))

    def step(self, action):
        ts = self.env.step(np.asarray(action, np.float32))
        obs, info = self._convert(ts)
        terminated = bool(ts.last() and ts.discount == 0)
        truncated = bool(ts.last() and not terminated)
        return obs, float(ts.reward), terminated, truncated, info

    def render(self):
        if self.render_mode != "rgb_array" or self.timestep is None:
            return None
        keys = image_keys(self.timestep.observation)
        return np.array(self.timestep.observation[keys[0]]) if keys else None

    def close(self):
        if not self._closed:  # gymnasium allows close() twice
            self._closed = True
            self.env.close()


# --- reverie's sim tasks as registered gymnasium environments --------------------------------------
# sim/tasks/'s TASKS and "all" (held equal by a test); listed here so that registering, which
# `import reverie.sim` does, needs neither mujoco nor the arm's physics.
ARM_TASKS = ("touch", "push", "lift", "all")


def arm_gym_id(task: str) -> str:
    return f"reverie/Arm{task.title()}-v0"


class ArmGymEnv(ReverieToGym):
    """`gymnasium.make("reverie/ArmTouch-v0", render_mode="rgb_array", preset="randomized", ...)`: the
    sim arm (sim/arm_env.py; every ArmEnvConfig field is a keyword) as a gymnasium.Env. Episodes end
    at the arm's own time_limit, so no TimeLimit wrapper is registered."""

    def __init__(self, task: str = "touch", render_mode: str | None = None, **options):
        from reverie.sim.arm_env import make_arm_env  # mujoco only when an environment is made

        super().__init__(make_arm_env(task, **options), render_mode=render_mode)


def register_gym_envs() -> None:
    for task in ARM_TASKS:
        if arm_gym_id(task) not in gym.registry:
            gym.register(arm_gym_id(task), entry_point="reverie.sim.gym_adapters:ArmGymEnv", kwargs={"task": task})
