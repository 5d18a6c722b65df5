"""dm_env <-> reverie adapters.

ReverieToDmEnv(env): any reverie Env (the sim arm, dm_control, gymnasium adapters, the robot) as a
real dm_env.Environment; it passes dm_env.test_utils.EnvironmentTestMixin.
  - FIRST steps: reverie's TimeStep carries reward 0.0 and discount 1.0 there, because its recorders
    and rollouts store every step's reward as a number (sim/demos.py, policy/rollout.py); this
    adapter converts them to dm_env's None.
  - Specs: image/<camera> and state become BoundedArray (Array when unbounded), instruction a
    StringArray of shape (); the action spec keeps the env's bounds; reward float64, discount [0, 1].
  - dm_env's reset() takes no arguments: episode k is reset with seed + k when `seed` is given, and
    with the current `.instruction` (None: the env draws one). `.timestep` is the last reverie
    TimeStep, whose info (success, timestamp, ...) dm_env has no place for.

DmEnvToReverie(env): any dm_env.Environment as a reverie Env.
  - Observations (a dict of specs, or one spec): uint8 images (H, W), (H, W, 1) or (H, W, 3) become
    image/<key> (image/<camera> for "pixels", "image", ...: gym_adapters.image_key), a StringArray
    the instruction, everything else is flattened, in key order, into `state` float32.
  - Actions: BoundedArray: a normalised command in [-1, 1] rescaled onto the bounds (infinite
    dimensions passed unscaled); DiscreteArray(n): one score per choice, argmax; Array: passed as is.
  - FIRST steps get reward 0.0 and discount 1.0; info["success"] is None (dm_env has no success).
  - reset(seed=s) reseeds through `reseed(s)`; by default the dm_control convention
    (env.task.random.seed), otherwise seeds are not reproducible and a warning says so once.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import dm_env
import numpy as np
from dm_env import specs

from reverie.errors import ConfigError
from reverie.sim.gym_adapters import image_key, to_rgb
from reverie.specs import ArraySpec, StepType, TextSpec, TimeStep, checked_action

log = logging.getLogger(__name__)

def _dm_spec(spec, name: str):
    if isinstance(spec, TextSpec):
        return specs.StringArray((), name=name)
    if spec.minimum is None and spec.maximum is None:
        return specs.Array(spec.shape, spec.dtype, name=name)

    def bound(value, fill):  # a scalar or one value per dimension (gym_adapters' env-unit specs)
        value = fill if value is None else value
        return np.asarray(value, spec.dtype).reshape(spec.shape) if np.ndim(value) else value

    return specs.BoundedArray(spec.shape, spec.dtype, bound(spec.minimum, -np.inf), bound(spec.maximum, np.inf),
                              name=name)


class ReverieToDmEnv(dm_env.Environment):
    def __init__(self, env, *, seed: int | None = None, instruction: str | None = None):
        self.env = env
        self.instruction = instruction
        self._seed, self._episodes = seed, 0
        self._obs_spec = {k: _dm_spec(s, k) for k, s in env.observation_spec().items()}
        self._action_spec = _dm_spec(env.action_spec(), "action")
        self.timestep: TimeStep | None = None

    def reset(self) -> dm_env.TimeStep:
        seed = None if self._seed is None else self._seed + self._episodes
        self._episodes += 1
        return self._convert(self.env.reset(seed=seed, instruction=self.instruction))

    def step(self, action) -> dm_env.TimeStep:
        if self.timestep is None or self.timestep.last():
            return self.reset()  # dm_env: the action that follows a LAST (or nothing) is ignored
        return self._convert(self.env.step(np.asarray(action, self._action_spec.dtype)))

    def _convert(self, ts: TimeStep) -> dm_env.TimeStep:
        self.timestep = ts
        first = ts.first()
        return dm_env.TimeStep(dm_env.StepType(int(ts.step_type)), None if first else float(ts.reward or 0.0),
                               None if first else float(ts.discount), dict(ts.observation))

    def observation_spec(self) -> dict:
        return dict(self._obs_spec)

    def action_spec(self):
        return self._action_spec

    def close(self) -> None:
        self.env.close()


def _is_image(spec) -> bool:
    return (np.dtype(spec.dtype) == np.uint8
            and (len(spec.shape) == 2 or (len(spec.shape) == 3 and spec.shape[-1] in (1, 3))))


def _dm_control_reseed(env) -> Callable[[int], None] | None:
    """dm_control's suite draws initial states from task.random; re-seeding it in place reproduces them."""
    random = getattr(getattr(env, "task", None), "random", None)
    return random.seed if hasattr(random, "seed") else None


class DmEnvToReverie:
    def __init__(self, env: dm_env.Environment, *, instruction: str | None = None, camera: str = "front",
                 reseed: Callable[[int], None] | None = None, name: str | None = None):
        self.env = env
        self.name = name or type(env).__name__
        obs_spec = env.observation_spec()
        self._single = not isinstance(obs_spec, dict)  # one array, not a dict of them
        obs_spec = {None: obs_spec} if self._single else dict(obs_spec)
        for key, spec in obs_spec.items():
            if not isinstance(spec, specs.Array):
                raise ConfigError(f"{self.name}: observation {key!r} is a nested {type(spec).__name__}; "
                                  "DmEnvToReverie takes a dict of dm_env specs (flatten it first)")
        self._images = {k: image_key(k, camera) for k, s in obs_spec.items() if _is_image(s)}
        self._image_shapes = {self._images[k]: (*obs_spec[k].shape[:2], 3) for k in self._images}
        texts = [k for k, s in obs_spec.items() if isinstance(s, specs.StringArray)]
        self._instruction_key = texts[0] if texts else None
        self._state_keys = [k for k in obs_spec if k not in self._images and k not in texts]
        self._state_size = sum(int(np.prod(obs_spec[k].shape)) for k in self._state_keys)
        self._default_instruction = instruction or f"solve {self.name}"
        self._instruction = self._default_instruction

        action = env.action_spec()
        if isinstance(action, specs.DiscreteArray):
            self._action_shape = (int(action.num_values),)
        elif isinstance(action, specs.Array) and len(action.shape) <= 1:
            self._action_shape = (int(np.prod(action.shape)),)
        else:
            raise ConfigError(f"{self.name}: action spec {action} is not supported; use one BoundedArray, "
                              "DiscreteArray or Array of shape () or (A,)")
        self._dm_action = action
        if isinstance(action, specs.BoundedArray) and not isinstance(action, specs.DiscreteArray):
            low = np.broadcast_to(action.minimum, action.shape).astype(np.float64).ravel()
            high = np.broadcast_to(action.maximum, action.shape).astype(np.float64).ravel()
            finite = np.isfinite(low) & np.isfinite(high)
            self._low, self._high = np.where(finite, low, -1.0), np.where(finite, high, 1.0)  # raw where unbounded
        self._reseed = reseed or _dm_control_reseed(env)
        self._warned_seed = False
        self._last: TimeStep | None = None

    # --- specs -------------------------------------------------------------------------------
    def observation_spec(self) -> dict:
        spec = {key: ArraySpec(shape, "uint8", 0, 255) for key, shape in self._image_shapes.items()}
        spec["state"] = ArraySpec((self._state_size,), "float32")
        spec["instruction"] = TextSpec()
        return spec

    def action_spec(self) -> ArraySpec:
        if type(self._dm_action) is specs.Array:  # unbounded: the env's own units
            return ArraySpec(self._action_shape, "float32", units=f"env units of {self.name}")
        return ArraySpec(self._action_shape, "float32", -1.0, 1.0)

    # --- episode -----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, instruction: str | None = None) -> TimeStep:
        if seed is not None and self._reseed is not None:
            self._reseed(seed)
        elif seed is not None and not self._warned_seed:
            self._warned_seed = True
            log.warning("%s cannot be seeded (no reseed= given, no task.random): episodes will not "
                        "repeat for a seed", self.name)
        self._instruction = instruction if instruction is not None else self._default_instruction
        self._last = self._timestep(self.env.reset())
        return self._last

    def step(self, action) -> TimeStep:
        if self._last is None or self._last.last():
            return self.reset()  # dm_env convention: stepping past the end starts a new episode
        action = checked_action(self.name, action, self._action_shape)
        self._last = self._timestep(self.env.step(self._to_dm_action(action)))
        return self._last

    def close(self) -> None:
        self.env.close()

    def _to_dm_action(self, action: np.ndarray):
        spec = self._dm_action
        if isinstance(spec, specs.DiscreteArray):
            return np.asarray(np.argmax(action), spec.dtype)
        if isinstance(spec, specs.BoundedArray):
            action = self._low + (np.clip(action, -1, 1) + 1) / 2 * (self._high - self._low)
        return action.reshape(spec.shape).astype(spec.dtype)

    def _timestep(self, ts: dm_env.TimeStep) -> TimeStep:
        obs = {None: ts.observation} if self._single else ts.observation
        observation = {key: to_rgb(obs[k], None) for k, key in self._images.items()}
        parts = [np.asarray(obs[k], np.float32).ravel() for k in self._state_keys]
        observation["state"] = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        if self._instruction_key is not None:
            self._instruction = str(np.asarray(obs[self._instruction_key], object).item())
        observation["instruction"] = self._instruction
        first = ts.first()
        return TimeStep(StepType(int(ts.step_type)), 0.0 if first else float(ts.reward or 0.0),
                        1.0 if first or ts.discount is None else float(ts.discount), observation,
                        {"success": None, "timestamp": time.time()})
