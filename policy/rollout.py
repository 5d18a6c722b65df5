"""Run a controller in an environment and collect what an honest evaluation needs.

A controller is anything with `reset(instruction: str)` and `act(observation) -> action (A,)`;
the same loop serves scripted baselines, behaviour cloning and world-model agents.

Operator takeover (robot envs, robot_io/robot_env.py): when a time step's info holds
`operator_action`, that action is sent and stored instead of the controller's. The controller is
still asked to act, so it keeps observing, and then hears what was really executed through its
optional `observe_executed(action)`, so a recurrent latent state carries on across the takeover.
Rows get a `correction` column whenever the env reports `info["correction"]`, and the sim's
ground truth `privileged/<name>` columns whenever it reports `info["privileged"]` (datasets/schema.py;
a store records them when its schema has them, see policy/improve.py).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Protocol

import numpy as np

from reverie.datasets.schema import privileged_row
from reverie.specs import Env


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


def run_episode(env: Env, controller: Controller, seed: int, instruction: str | None = None,
                record_frames: bool = False, record_steps: bool = False,
                image_key: str = "image/front") -> EpisodeResult:
    ts = env.reset(seed=seed, instruction=instruction)
    instruction = ts.observation["instruction"]
    controller.reset(instruction)
    frames, rows, ret, success, length = [], [], 0.0, False, 0
    while True:
        length += 1  # observations seen, o_0 included (= rows when recorded)
        if record_frames:
            frames.append(ts.observation[image_key])
        action = np.zeros(env.action_spec().shape, np.float32) if ts.last() else \
            np.clip(np.asarray(controller.act(ts.observation), np.float32), -1.0, 1.0)
        if not ts.last() and ts.info.get("operator_action") is not None:  # the operator has taken over
            action = np.clip(np.asarray(ts.info["operator_action"], np.float32), -1.0, 1.0)
            if hasattr(controller, "observe_executed"):
                controller.observe_executed(action)
        if record_steps:
            rows.append(_row(ts, action, image_key))
        if ts.last():
            break
        ts = env.step(action)
        ret += float(ts.reward or 0.0)
        success = success or bool(ts.info.get("success", False))
    steps = {k: np.stack([r[k] for r in rows]) for k in rows[0]} if record_steps else None
    labelled = success or ts.info.get("success", False) is not None
    return EpisodeResult(instruction, success, ret, length, frames or None, steps, labelled)


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
