"""Record a policy's episodes in an environment into a new store: a corrective round's data
(reverie/workflows/improve.py), the pipeline's round and the probes' held-out episodes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def record_rollouts(controller, env_name: str, episodes: int, store_path: Path, round_index: int,
                    seed: int, env_kwargs: dict | None = None, progress: bool = True) -> dict:
    """Run the policy and commit each episode to a new store; returns the success summary."""
    from tqdm import tqdm

    from reverie.datasets import narration
    from reverie.datasets.store import EpisodeStore, make_schema
    from reverie.policy.evaluate import summarize
    from reverie.policy.rollout import run_episode
    from reverie.sim.registry import make
    from reverie.specs import ArraySpec

    env = make(env_name, **(env_kwargs or {}))
    try:  # close() parks a robot arm even when an episode fails or is interrupted
        spec = env.observation_spec()
        cams = {k.split("/", 1)[1]: tuple(s.shape[:2]) for k, s in spec.items() if k.startswith("image/")}
        schema = make_schema(cams, spec["state"].shape[0], env.action_spec().shape[0])
        act = env.action_spec()
        if (act.minimum, act.maximum) != (-1.0, 1.0):  # an env in its own units (gym action_units=env)
            schema["action"] = ArraySpec(act.shape, "float32", act.minimum, act.maximum, act.units or "env units")
        if getattr(env, "corrections", False):  # operator takeovers, as `reverie record` stores them
            schema["correction"] = ArraySpec((), "bool", units="True while the operator had taken over")
        if hasattr(env, "privileged_spec"):  # the sim's ground truth, as `sim demos` records it
            schema |= env.privileged_spec()
        narrated = bool(getattr(env, "narrates", False))  # keep the sim's narration, as `sim demos` does
        fps = getattr(env, "control_hz", None) or getattr(getattr(env, "cfg", None), "control_hz", 10.0)
        store = EpisodeStore.create(str(store_path), narration.with_narration(schema) if narrated else schema,
                                    fps=float(fps), robot=env_name)
        vocab = narration.Vocabulary(store) if narrated else None
        results, corrections = [], 0
        for i in tqdm(range(episodes), desc=f"round {round_index}: deploy", disable=not progress, unit="ep"):
            result = run_episode(env, controller, seed=seed + i, record_steps=True)
            said = result.steps.pop(narration.KEY, None)  # (T,) text -> (T,) indices
            if vocab is not None:
                idx = [vocab.index(t) for t in said.tolist()] if said is not None else [narration.NONE] * result.length
                result.steps[narration.KEY] = np.array(idx, np.int16)
            # One corrected row makes the whole episode a correction (the rows say which steps were).
            corrected = bool(result.steps.get("correction", np.zeros(1, bool)).any())
            corrections += corrected
            store.add_episode(result.steps, instruction=result.instruction,
                              source="correction" if corrected else "policy", round=round_index,
                              success=result.success if result.labelled else None)
            results.append(result)
            if getattr(env, "quit", False):  # the robot's operator pressed Esc
                log.warning("operator quit after %d of %d episodes", i + 1, episodes)
                break
        store.close()
    finally:
        env.close()
    return summarize(results) | {"corrected": corrections}
