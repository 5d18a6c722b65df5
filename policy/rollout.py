"""Run a controller in an environment and collect what an honest evaluation needs.

A controller is anything with `reset(instruction: str)` and `act(observation) -> action (A,)`;
the same loop serves scripted baselines, behaviour cloning and world-model agents.

Operator takeover (robot envs, robot_io/robot_env.py): when a time step's info holds
`operator_action`, that action is sent and stored instead of the controller's. The controller is
still asked to act, so it keeps observing, and then hears what was really executed through its
optional `observe_executed(action)`, so a recurrent latent state carries on across the takeover.
Rows get a `correction` column whenever the env reports `info["correction"]`, and the sim's
ground truth `privileged/<name>` columns whenever it reports `info["privileged"]` (datasets/schema.py;
a store records them when its schema has them, see policy/record.py).

Units: a controller speaks the units of the data it was trained on (its normaliser maps back from
the model's [-1, 1]); actions are clipped to the env's own action_spec bounds, not to [-1, 1], so an
env that takes pixels or metres gets them (check_action_units warns when the two disagree).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Protocol

import numpy as np

from reverie.datasets.schema import privileged_row
from reverie.errors import ConfigError
from reverie.specs import Env

log = logging.getLogger(__name__)


def require_cameras(image_keys: list[str], observation: dict, reader: str) -> None:
    """Refuse an observation without a camera the controller reads (`reader` says who reads them),
    naming the env option that adds it."""
    missing = [k for k in image_keys if k not in observation]
    if missing:
        have = sorted(k for k in observation if k.startswith("image/"))
        raise ConfigError(f"{reader} reads cameras {list(image_keys)} and the observation lacks {missing} "
                          f"(it has {have}): give the env those cameras (sim: env_kwargs.cameras="
                          f"[{','.join(k.split('/', 1)[1] for k in image_keys)}])")


class Controller(Protocol):
    def reset(self, instruction: str) -> None: ...

    def act(self, observation: dict) -> np.ndarray: ...

    # optional: def observe_executed(self, action: np.ndarray) -> None  (the action actually sent)


@dataclasses.dataclass
class EpisodeResult:
    instruction: str
    success: bool
    ret: float
    length: int
    frames: list[np.ndarray] | None = None  # (H, W, 3) uint8 per step, when recorded
    steps: dict[str, np.ndarray] | None = None  # store rows, when recorded
    labelled: bool = True  # False: the env could not tell success (a real arm nobody labelled)
    max_reward: float | None = None  # the largest single-step reward (coverage-style tasks); None: no step


def clip_to_spec(action: np.ndarray, spec) -> np.ndarray:
    """Clip to the spec's minimum/maximum (scalars or per dimension; None: unbounded on that side)."""
    action = np.asarray(action, np.float32)
    low = -np.inf if spec.minimum is None else np.asarray(spec.minimum, np.float64)
    high = np.inf if spec.maximum is None else np.asarray(spec.maximum, np.float64)
    return np.clip(action, low, high).astype(np.float32)


def check_action_units(controller, env) -> bool:
    """Warn when the controller's action range (its normaliser's, in store units) lies well outside the
    env's action bounds, i.e. the data and the env use different units (e.g. pixels against a [-1, 1]
    adapter). Returns True when it warned."""
    norm = getattr(controller, "normalizer", None)
    spec = env.action_spec()
    if norm is None or norm.mode("action") != "minmax":
        return False
    low, high = norm.bounds("action")
    lo = -np.inf if spec.minimum is None else np.asarray(spec.minimum, np.float64)
    hi = np.inf if spec.maximum is None else np.asarray(spec.maximum, np.float64)
    span = np.maximum(high - low, 1e-6)
    outside = np.maximum(lo - low, 0) + np.maximum(high - hi, 0)                # per dimension, store units
    if not np.any(outside > 0.1 * span):
        return False
    log.warning("the policy acts in the units of its training data (range %s..%s per dimension) but the env "
                "takes %s..%s (%s): its actions will be clipped. Evaluate on an env that takes the data's "
                "units (gym/<id>: action_units=env), or train on data recorded in the env's units",
                np.round(low, 3).tolist(), np.round(high, 3).tolist(), spec.minimum, spec.maximum,
                spec.units or "no units given")
    return True


def run_episode(env: Env, controller: Controller, seed: int, instruction: str | None = None,
                record_frames: bool = False, record_steps: bool = False,
                image_key: str = "image/front") -> EpisodeResult:
    ts = env.reset(seed=seed, instruction=instruction)
    instruction = ts.observation["instruction"]
    controller.reset(instruction)
    frames, rows, ret, success, length, max_reward = [], [], 0.0, False, 0, None
    while True:
        length += 1  # observations seen, o_0 included (= rows when recorded)
        if record_frames:
            frames.append(ts.observation[image_key])
        action = np.zeros(env.action_spec().shape, np.float32) if ts.last() else \
            clip_to_spec(controller.act(ts.observation), env.action_spec())
        if not ts.last() and ts.info.get("operator_action") is not None:  # the operator has taken over
            action = clip_to_spec(ts.info["operator_action"], env.action_spec())
            if hasattr(controller, "observe_executed"):
                controller.observe_executed(action)
        if record_steps:
            rows.append(_row(ts, action, image_key))
        if ts.last():
            break
        ts = env.step(action)
        reward = float(ts.reward or 0.0)
        ret += reward
        max_reward = reward if max_reward is None else max(max_reward, reward)
        success = success or bool(ts.info.get("success", False))
    steps = {k: np.stack([r[k] for r in rows]) for k in rows[0]} if record_steps else None
    labelled = success or ts.info.get("success", False) is not None
    return EpisodeResult(instruction, success, ret, length, frames or None, steps, labelled, max_reward)


def _row(ts, action: np.ndarray, image_key: str) -> dict[str, np.ndarray]:
    """One store row under the convention of CONTRIBUTING.md (a_t sent after o_t)."""
    row = {k: np.asarray(v) for k, v in ts.observation.items() if k.startswith("image/")}
    row.update(
        state=np.asarray(ts.observation["state"], np.float32),
        action=action.astype(np.float32),
        action_mask=np.bool_(not ts.last()),
        reward=np.float32(ts.reward or 0.0),
        is_first=np.bool_(ts.first()), is_last=np.bool_(ts.last()),
        is_terminal=np.bool_(ts.last() and ts.discount == 0.0),
        timestamp=np.float64(ts.info.get("timestamp", time.time())),
    )
    if "correction" in ts.info:  # robot envs: a_t came from the operator's takeover
        row["correction"] = np.bool_(ts.info["correction"])
    if "narration" in ts.info:  # sim narration of the step into o_t, text (improve stores index it)
        row["narration"] = np.str_(ts.info["narration"])
    row.update(privileged_row(ts.info))  # sim ground truth (measurement only, never a policy input)
    return row
