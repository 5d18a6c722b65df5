"""Sim ground truth (`privileged/*`) in stores and the linear probe from world-model features to the cubes."""

import json
import math

import numpy as np
import pytest

from reverie.config import compose
from reverie.datasets import narration
from reverie.datasets.schema import (PRIVILEGED_OBJECTS, PRIVILEGED_TARGET, has_privileged, is_image_key,
                                     make_schema, privileged_row)
from reverie.datasets.store import EpisodeStore
from reverie.sim import demos, tasks
from reverie.sim.arm import CUBE_HALF
from reverie.sim.arm_env import make_arm_env
from reverie.sim.randomization import COLOURS
from reverie.world_model.probe import feature_probe, pool_pixels, probe_r2, table, target_slot


@pytest.fixture(scope="module")
def sim_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("probe") / "touch.zarr"
    demos.main(["demos", "task=touch", "episodes=6", "seed=0", "time_limit=12", f"out={path}", "image_size=[16,16]"])
    return path


@pytest.fixture(scope="module")
def tiny_wm(sim_store, tmp_path_factory):
    """A tiny RSSM trained 0 steps on the sim store (2 of 6 episodes held out), checkpointed."""
    from reverie.world_model.train import Trainer

    out = tmp_path_factory.mktemp("wm") / "run"
    trainer = Trainer(compose("train_wm", ["preset=tiny", f"data={sim_store}", f"out={out}", "threads=1",
                                           "holdout=0.3", "progress=false"]))
    trainer.save()
    return trainer, out


def test_arm_env_reports_the_cubes_and_target_as_privileged_info():
    env = make_arm_env("touch", image_size=(16, 16))
    try:
        for step in range(3):
            ts = env.reset(seed=1) if step == 0 else env.step(np.full(6, 0.5, np.float32))
            p = ts.info["privileged"]
            assert p["objects"].dtype == np.float32 and p["objects"].shape == (3 * len(COLOURS),)
            want = np.concatenate([env.phys.cube_pos(c) for c in COLOURS])
            np.testing.assert_allclose(p["objects"], want, atol=1e-6)
            np.testing.assert_allclose(p["target"], env.phys.cube_pos(env.goal.colour), atol=1e-6)
            assert not any("privileged" in k for k in ts.observation)  # never an observation
        assert set(env.privileged_spec()) == {PRIVILEGED_OBJECTS, PRIVILEGED_TARGET}
        assert privileged_row(ts.info)[PRIVILEGED_TARGET].shape == (3,) and privileged_row({}) == {}
    finally:
        env.close()


def test_sim_demos_record_privileged_positions(sim_store):
    store = EpisodeStore.open(sim_store)
    assert has_privileged(store.schema) and not is_image_key(PRIVILEGED_OBJECTS)
    assert store.schema[PRIVILEGED_OBJECTS].shape == (9,) and store.schema[PRIVILEGED_TARGET].dtype == "float32"
    assert "m, world frame" in store.schema[PRIVILEGED_OBJECTS].units
    assert PRIVILEGED_TARGET in store.lowdim() and PRIVILEGED_TARGET in store.stats()
    ep = store.episode(0)
    colour = tasks.parse_instruction(store.meta(0).instruction).colour
    i = COLOURS.index(colour)
    np.testing.assert_array_equal(ep[PRIVILEGED_TARGET], ep[PRIVILEGED_OBJECTS][:, 3 * i:3 * i + 3])
    np.testing.assert_allclose(ep[PRIVILEGED_OBJECTS][0, 2::3], CUBE_HALF, atol=1e-3)  # resting on the table
    # Row 0 is the reset of the episode's seed (0): the same scene in a fresh env.
    env = make_arm_env("touch", image_size=(16, 16))
    env.reset(seed=0)
    np.testing.assert_allclose(ep[PRIVILEGED_OBJECTS][0], np.concatenate([env.phys.cube_pos(c) for c in COLOURS]),
                               atol=1e-6)
    env.close()
    store.close()


def test_append_to_a_store_from_before_privileged_keys(tmp_path):
    path = tmp_path / "old.zarr"
    old = narration.with_narration(make_schema({"front": (16, 16)}, 6, 6))
    EpisodeStore.create(path, old, fps=10.0, robot="sim/so101").close()
    demos.main(["demos", "task=touch", "episodes=1", "time_limit=5", f"out={path}", "image_size=[16,16]",
                "append=true"])
    store = EpisodeStore.open(path)
    assert store.num_episodes == 1 and not has_privileged(store.schema)
    assert feature_probe(None, [store]) is None  # nothing to probe: skipped
    store.close()


def test_policy_rollouts_record_privileged_columns(tmp_path):
    from reverie.policy.record import record_rollouts

    class Still:
        def reset(self, instruction):
            pass

        def act(self, observation):
            return np.zeros(6, np.float32)

    path = tmp_path / "round.zarr"
    record_rollouts(Still(), "arm/touch", 1, path, 1, seed=0, progress=False,
                    env_kwargs={"image_size": (16, 16), "time_limit": 3})
    store = EpisodeStore.open(path)
    ep = store.episode(0)
    assert has_privileged(store.schema) and ep[PRIVILEGED_OBJECTS].shape == (4, 9)
    np.testing.assert_allclose(ep[PRIVILEGED_OBJECTS][:, 2::3], CUBE_HALF, atol=1e-3)
    store.close()


def test_probe_r2_is_one_on_linear_targets_and_not_above_zero_on_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 20))
    y = x @ rng.normal(size=(20, 3)) + 0.5
    groups = np.repeat(np.arange(20), 20)
    r = probe_r2(x[:300], y[:300], x[300:], y[300:], groups_train=groups[:300])
    assert len(r["r2"]) == 3 and r["mean"] > 0.999 and r["train_rows"] == 300 and r["test_rows"] == 100
    noise = probe_r2(x[:300], rng.normal(size=(300, 2)), x[300:], rng.normal(size=(100, 2)), groups_train=groups[:300])
    assert noise["mean"] < 0.05
    # A target that does not vary on the test rows has no R²; pooling keeps [0, 1] pixels.
    flat = probe_r2(x[:300], y[:300, :1], x[300:], np.zeros((100, 1)))
    assert flat["r2"] == [None] and flat["mean"] is None
    objects = np.array([[0, 0, 0, 1, 1, 0, 2, 2, 0]], np.float32).repeat(2, 0)
    assert target_slot(np.array([[1, 1, 0], [2, 2, 0]]), objects).tolist() == [1, 2]
    pooled = pool_pixels(np.full((2, 64, 48, 3), 255, np.uint8))
    assert pooled.shape == (2, 16 * 16 * 3) and np.allclose(pooled, 1.0)


def test_feature_probe_on_an_untrained_rssm_returns_finite_numbers(tiny_wm, sim_store):
    trainer, _ = tiny_wm
    r = feature_probe(trainer.model, [str(sim_store)], holdout=0.3)
    assert r["train_episodes"] == 4 and r["test_episodes"] == 2 and r["held_out_by_training"]
    assert r["feature_dim"] == trainer.model.feat_dim
    for q, dims in (("target_xy", 2), ("objects_xy", 6)):
        for name in ("features", "pixels"):
            assert len(r[q][name]["r2"]) == dims and math.isfinite(r[q][name]["mean"])
    assert math.isfinite(r["target_xy"]["pixels_given_target"]["mean"])
    assert r["passes_gate"] in (True, False) and "target cube x,y" in table(r)


def test_eval_wm_reports_the_probe_and_the_pipeline_a_row(tiny_wm, tmp_path):
    from reverie.workflows.pipeline import probe_report
    from reverie.world_model.evaluate import evaluate, table as eval_table

    _, run = tiny_wm
    results = evaluate(compose("eval_wm", [f"checkpoint={run}", f"out={tmp_path}", "windows=2", "context=2",
                                           "horizon=2", "batch_size=2", "probe_episodes=3"]))
    probe = json.loads((tmp_path / "eval.json").read_text())["probe"]
    assert probe["train_episodes"] == 3 and probe["test_episodes"] == 2  # capped at 3 per split
    assert math.isfinite(probe["target_xy"]["pixels"]["mean"])
    assert "cube probe" in eval_table(results)
    rows = "\n".join(probe_report(probe))
    assert "| target cube x, y |" in rows and "Gate" in rows
    assert "skipped" in "\n".join(probe_report({"skipped": "no store holds privileged/target"}))
