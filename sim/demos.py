"""`reverie sim demos`: record scripted-teleoperator episodes of the sim arm into an episode store.

    reverie sim demos task=lift episodes=50 skill=1.0 out=demos/lift.zarr
    reverie sim demos task=all episodes=200 skill=0.5 randomization=randomized out=demos/mixed.zarr

Rows follow the store convention: row t holds o_t, the reward received on arriving at o_t, and the
action a_t the teleoperator sent after seeing o_t; the final row's action is zeros, masked out.
Each row also holds the sim's narration of the step into o_t (`narration`, datasets/narration.py),
and the sim's ground truth (`privileged/objects`, `privileged/target`: the cubes' and the target
cube's xyz in metres, datasets/schema.py), each unless appending to an older store without that key.
"""

from __future__ import annotations

import logging

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from reverie.config import command_config
from reverie.datasets import narration
from reverie.datasets.schema import has_privileged, is_privileged_key, privileged_row
from reverie.errors import ConfigError
from reverie.sim.arm_env import ArmEnv, make_arm_env
from reverie.sim.scripted_teleop import ScriptedTeleop, run_episode

log = logging.getLogger(__name__)


def episode_rows(rows: list, cameras: tuple[str, ...], vocab=None, privileged: bool = True) -> list[dict]:
    """[(timestep, action or None)] from run_episode -> store rows (dicts of the schema's keys);
    with `vocab` (a datasets.narration.Vocabulary) each row gets its narration index, with
    `privileged` the `privileged/*` columns from the timestep's info["privileged"]."""
    out = []
    for t, (ts, action) in enumerate(rows):
        known = action is not None
        row = {f"image/{c}": ts.observation[f"image/{c}"] for c in cameras}
        row.update(
            state=ts.observation["state"],
            action=action if known else np.zeros(6, np.float32),
            action_mask=known,
            reward=np.float32(ts.reward),
            is_first=t == 0,
            is_last=ts.last(),
            is_terminal=ts.last() and ts.discount == 0.0,
            timestamp=np.float64(ts.info["timestamp"]),
        )
        if vocab is not None:
            row[narration.KEY] = np.int16(vocab.index(ts.info.get("narration", "")))
        if privileged:
            row.update(privileged_row(ts.info))
        out.append(row)
    return out


def open_store(cfg: DictConfig, env: ArmEnv):
    from reverie.datasets.store import EpisodeStore, make_schema

    cameras = {c: tuple(env.cfg.image_size) for c in env.cfg.cameras}
    schema = narration.with_narration(make_schema(cameras=cameras, state_dim=6, action_dim=6))
    schema |= env.privileged_spec()
    if not cfg.append:
        return EpisodeStore.create(cfg.out, schema, fps=float(cfg.control_hz), robot="sim/so101")
    store = EpisodeStore.open(cfg.out, mode="a")
    if narration.KEY not in store.schema:  # a store from before narration: append without it
        schema.pop(narration.KEY)
    if not has_privileged(store.schema):  # nor before the privileged ground truth
        schema = {k: s for k, s in schema.items() if not is_privileged_key(k)}
    if {k: s.shape for k, s in store.schema.items()} != {k: s.shape for k, s in schema.items()}:
        store.close()
        raise ConfigError(f"{cfg.out} holds keys {sorted(store.schema)} with other shapes than these demos "
                          f"(cameras={list(env.cfg.cameras)}, image_size={list(env.cfg.image_size)}); "
                          f"match its cameras and image_size or write to a new out=")
    return store


def record(cfg: DictConfig) -> float:
    """Write cfg.episodes episodes; returns the success rate."""
    if not cfg.out:
        raise ConfigError("no output store: pass out=PATH.zarr (e.g. out=demos/lift.zarr)")
    if int(cfg.episodes) < 1:
        raise ConfigError(f"episodes={cfg.episodes}: record at least one episode (e.g. episodes=50)")
    env = make_arm_env(cfg.task, preset=cfg.randomization, image_size=tuple(cfg.image_size), cameras=tuple(cfg.cameras),
                       control_hz=float(cfg.control_hz), time_limit=int(cfg.time_limit),
                       instruction_set=cfg.instruction_set)
    teleop = ScriptedTeleop(env, skill=float(cfg.skill))
    store = open_store(cfg, env)
    vocab = narration.Vocabulary(store) if narration.KEY in store.schema else None
    privileged = has_privileged(store.schema)
    successes = 0
    try:
        bar = tqdm(range(int(cfg.episodes)), desc=f"demos {cfg.task} skill={cfg.skill}", unit="ep")
        for i in bar:
            seed = int(cfg.seed) + i
            rows, success = run_episode(env, teleop, seed=seed)
            with store.episode_writer(instruction=env.instruction, source="scripted", round=0,
                                      notes=f"skill={cfg.skill} seed={seed} preset={cfg.randomization}") as writer:
                for row in episode_rows(rows, env.cfg.cameras, vocab, privileged):
                    writer.add(row)
                writer.commit(success=success)
            successes += success
            bar.set_postfix(success=f"{successes / (i + 1):.2f}")
    finally:
        store.close()
        env.close()
    rate = successes / int(cfg.episodes)
    print(f"{cfg.episodes} episodes of {cfg.task} at skill {cfg.skill} -> {cfg.out}: "
          f"success rate {rate:.2f} ({successes}/{cfg.episodes})")
    return rate


def main(argv: list[str]) -> int:
    cfg = command_config("sim_demos", argv, __doc__, word="demos")
    if cfg is not None:
        record(cfg)
    return 0
