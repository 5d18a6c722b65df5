"""Per-key normalisation: the maps, defaults from store specs, and a store in pixel units end to end
(tiny world model + BC agent -> controller -> exported bundle, all acting in pixels)."""

import json
import logging
import shutil
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from reverie.config import compose
from reverie.datasets.normalize import from_stores
from reverie.errors import ConfigError
from reverie.normalize import Normalizer

sys.path.insert(0, str(Path(__file__).parent))
import export_setup  # noqa: E402

LOW, HIGH = 40.0, 480.0  # the pixel store's action range


# ----- the maps --------------------------------------------------------------------------------
def test_round_trip_numpy_torch_and_json():
    norm = Normalizer({"action": {"mode": "minmax", "min": [0, 5, -3], "max": [512, 5, 3]},
                       "state": {"mode": "meanstd", "mean": [1.0, -2.0], "std": [4.0, 0.0]}})
    a = np.array([[0, 5, -3], [512, 5, 3], [128, 5, 0]], np.float32)
    z = norm.normalize("action", a)
    np.testing.assert_allclose(z[:, 0], [-1, 1, -0.5], atol=1e-6)
    np.testing.assert_allclose(z[:, 1], 0)                                 # zero range: centred, no blow-up
    np.testing.assert_allclose(norm.denormalize("action", z), a, atol=1e-4)
    s = np.array([[5.0, -2.0], [1.0, 7.0]], np.float32)
    np.testing.assert_allclose(norm.normalize("state", s), [[1, 0], [0, 9]], atol=1e-6)  # zero std: centred
    np.testing.assert_allclose(norm.denormalize("state", norm.normalize("state", s)), s, atol=1e-5)
    t = torch.from_numpy(a)
    back = norm.denormalize("action", norm.normalize("action", t))
    assert isinstance(back, torch.Tensor) and back.dtype == torch.float32
    torch.testing.assert_close(back, t, atol=1e-4, rtol=0)
    again = Normalizer.from_json(json.loads(json.dumps(norm.to_json())))  # plain JSON
    assert again.to_json() == norm.to_json()
    np.testing.assert_array_equal(again.normalize("action", a), z)
    assert norm.normalize("reward", np.ones(3)).tolist() == [1, 1, 1]      # keys without an entry: identity
    low, high = norm.bounds("action")
    assert low.tolist() == [0, 5, -3] and high.tolist() == [512, 5, 3]


def test_batch_keeps_unknown_actions_zero():
    norm = Normalizer({"action": {"mode": "minmax", "min": [100], "max": [300]}})
    batch = {"action": torch.tensor([[[150.0], [0.0]]]), "action_mask": torch.tensor([[True, False]])}
    out = norm.batch(batch)
    torch.testing.assert_close(out["action"], torch.tensor([[[-0.5], [0.0]]]))


def test_old_artifacts_without_a_normaliser_are_identity():
    from reverie.policy import checkpoint as policy_checkpoint
    from reverie.world_model import checkpoint as wm_checkpoint

    for norm in (Normalizer.from_json(None), Normalizer.from_json({}), wm_checkpoint.normalizer({"step": 3}),
                 policy_checkpoint.normalizer({"stage": "bc"}, wm=None)):
        assert norm.is_identity and norm.mode("action") == "identity"
        x = np.array([700.0, -3.0], np.float32)
        np.testing.assert_array_equal(norm.denormalize("action", norm.normalize("action", x)), x)


# ----- stores ----------------------------------------------------------------------------------
def pixel_store(path, episodes=4, length=24, normalised=False, seed=0):
    """Episode 0 is action-free video (zero state and action, masked); the others act in pixels."""
    from reverie.datasets.importers import schema_for
    from reverie.datasets.schema import make_schema
    from reverie.datasets.store import EpisodeStore

    rng = np.random.default_rng(seed)
    schema = (make_schema({"front": (32, 32)}, 6, 6) if normalised
              else schema_for({"front": (32, 32)}, 6, 6, units="pixels"))
    store = EpisodeStore.create(path, schema, fps=10.0, robot="pixels")
    for e in range(episodes):
        video = e == 0
        pos = rng.uniform(LOW, HIGH, 6).astype(np.float32)
        with store.episode_writer(instruction="push the block", source="video" if video else "teleop") as w:
            for t in range(length):
                target = np.clip(pos + rng.normal(0, 40, 6), LOW, HIGH).astype(np.float32)
                if t == 1 and e == 1:
                    target[:] = LOW
                if t == 2 and e == 1:
                    target[:] = HIGH                                    # the data spans LOW..HIGH exactly
                known = not video and t < length - 1
                img = np.full((32, 32, 3), 20, np.uint8)
                cx, cy = (pos[:2] / 512 * 32).astype(int)
                img[max(cy - 3, 0):cy + 3, max(cx - 3, 0):cx + 3] = 230
                w.add({"image/front": img, "state": np.zeros(6, np.float32) if video else pos.copy(),
                       "action": target if known else np.zeros(6, np.float32), "action_mask": known,
                       "reward": np.float32(0), "is_first": t == 0, "is_last": t == length - 1,
                       "is_terminal": False, "timestamp": np.float64(t / 10)})
                pos = 0.5 * pos + 0.5 * target
            w.commit(success=None)
    store.close()
    return path


def test_defaults_follow_the_action_spec(tmp_path):
    from reverie.datasets.store import EpisodeStore

    raw = EpisodeStore.open(pixel_store(tmp_path / "raw.zarr"), "r")
    norm = from_stores([raw])
    assert (norm.mode("action"), norm.mode("state")) == ("minmax", "meanstd")
    low, high = norm.bounds("action")
    np.testing.assert_allclose(low, LOW)                                 # the masked zeros do not count
    np.testing.assert_allclose(high, HIGH)
    state = raw.lowdim()["state"][24:]  # the video episode's placeholder states do not count
    np.testing.assert_allclose(norm.entries["state"]["mean"], state.mean(0), rtol=1e-5)
    sim = EpisodeStore.open(pixel_store(tmp_path / "sim.zarr", normalised=True), "r")
    assert from_stores([sim]).mode("action") == "identity"       # a normalised command: left alone
    forced = from_stores([raw], {"action": "meanstd", "state": "identity"})
    assert (forced.mode("action"), forced.mode("state")) == ("meanstd", "identity")
    with pytest.raises(ConfigError, match="normalize.action"):
        from_stores([raw], {"action": "zscore"})


def test_identity_on_large_actions_warns_with_the_fix(tmp_path, caplog):
    from reverie.datasets.store import EpisodeStore

    raw = EpisodeStore.open(pixel_store(tmp_path / "raw.zarr", episodes=2), "r")
    with caplog.at_level(logging.WARNING):
        norm = from_stores([raw], {"action": "identity"})
    assert norm.mode("action") == "identity"
    assert "outside [-1, 1]" in caplog.text and "normalize.action=minmax" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        from_stores([raw])
    assert "outside [-1, 1]" not in caplog.text


def test_pusht_import_gets_pixel_bounds(fixtures_dir, tmp_path):
    from reverie.datasets.importers import run
    from reverie.datasets.store import EpisodeStore

    out = tmp_path / "pusht.zarr"
    run("lerobot", [str(fixtures_dir / "lerobot_v1" / "pusht")], str(out), ["instruction=push the T"])
    store = EpisodeStore.open(out, "r")
    norm = from_stores([store])
    assert norm.mode("action") == "minmax" and norm.mode("state") == "meanstd"
    low, high = norm.bounds("action")
    actions = store.lowdim()["action"]
    np.testing.assert_allclose(low, actions.min(0))
    np.testing.assert_allclose(high, actions.max(0))
    assert 1 < high.max() <= 512 and low.min() >= 0                    # agent xy targets in pixels
    z = norm.normalize("action", actions)
    assert z.min() >= -1 - 1e-6 and z.max() <= 1 + 1e-6


# ----- end to end in pixel units ---------------------------------------------------------------
@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory):
    """Pixel store -> tiny rssm world model (2 steps) -> BC agent (2 steps), on the CPU."""
    from reverie.policy import train as agent_train
    from reverie.world_model.train import Trainer

    root = tmp_path_factory.mktemp("pixels")
    store = pixel_store(root / "pixels.zarr")
    Trainer(compose("train_wm", ["preset=tiny", f"data={store}", f"out={root / 'wm'}", "steps=2",
                                 "progress=false", "device=cpu", "holdout=0.25"])).run()
    bc = agent_train.train(compose("train_agent", ["stage=bc", f"wm={root / 'wm'}", f"out={root / 'bc'}",
                                                   "steps=2", "progress=false", "bc.seq_len=6", "device=cpu",
                                                   "holdout=0.25"]))
    scratch = agent_train.train(compose("train_agent", ["stage=bc_scratch", f"wm={root / 'wm'}", f"out={root / 'pix'}",
                                                        "steps=2", "progress=false", "bc_scratch.batch_size=4",
                                                        "device=cpu", "holdout=0.25"]))
    return {"root": root, "store": store, "wm": root / "wm", "bc": bc, "scratch": scratch}


def recorded(store_path, episode=2):
    from reverie.datasets.store import EpisodeStore

    store = EpisodeStore.open(store_path, "r")
    return store.episode(episode, keys=["image/front", "state", "action"]), store.meta(episode).instruction


def test_checkpoints_carry_the_normaliser(pixel_run):
    from reverie.policy.data import AgentData
    from reverie.world_model import checkpoint as wm_checkpoint

    trainer = json.loads((pixel_run["wm"] / "checkpoint" / "trainer.json").read_text())
    assert trainer["normalizer"]["keys"]["action"]["mode"] == "minmax"
    model, wm_cfg, info = wm_checkpoint.load_model(pixel_run["wm"])
    assert model.normalizer.to_json() == trainer["normalizer"]
    agent_info = json.loads((pixel_run["bc"] / "agent.json").read_text())
    assert agent_info["normalizer"] == trainer["normalizer"]          # the world model's, not recomputed
    cfg = compose("train_agent", [f"wm={pixel_run['wm']}", "holdout=0.25"])
    data = AgentData(cfg, wm_cfg, info, batch_size=2, seq_len=4)
    assert data.normalizer.to_json() == trainer["normalizer"]
    batch = data.next()
    known = batch["action"][batch["action_mask"]]
    assert known.abs().max() <= 1 + 1e-5 and batch["action"][~batch["action_mask"]].abs().max() == 0

    old = pixel_run["root"] / "old_wm" / "checkpoint"  # a checkpoint written before normalisation
    shutil.copytree(pixel_run["wm"] / "checkpoint", old)
    trainer.pop("normalizer")
    (old / "trainer.json").write_text(json.dumps(trainer))
    assert wm_checkpoint.load_model(old)[0].normalizer.is_identity


@pytest.mark.parametrize("agent", ["bc", "scratch"])  # on world-model features; the pixel BC (its MSE loss)
def test_controller_acts_in_pixels_and_hears_pixels(pixel_run, agent):
    from reverie.policy.loading import load_controller

    ep, text = recorded(pixel_run["store"])
    c = load_controller(pixel_run[agent])
    c.reset(text)
    actions = np.stack([c.act({"image/front": ep["image/front"][t], "state": ep["state"][t]}) for t in range(4)])
    assert actions.shape == (4, 6) and np.abs(actions).max() > 1      # pixels, not [-1, 1]
    assert actions.min() >= LOW - 1e-2 and actions.max() <= HIGH + 1e-2
    if agent == "scratch":
        return  # it reads no previous action
    c.observe_executed(np.full(6, HIGH, np.float32))                     # an operator's pixel action
    torch.testing.assert_close(c.prev_action.cpu(), torch.ones(1, 6), atol=1e-5, rtol=0)


@pytest.mark.parametrize("agent", ["bc", "scratch"])
def test_rollout_clips_to_the_env_bounds_and_gym_env_units(pixel_run, caplog, agent):
    """A gym env in its own units (action_units=env) gets the policy's pixel actions untouched; the
    default [-1, 1] adapter would clip them, and evaluation says so."""
    from reverie.policy.loading import load_controller
    from reverie.policy.rollout import check_action_units, run_episode
    from reverie.sim.gym_adapters import GymToReverie

    env = GymToReverie(PixelEnv(), size=(32, 32), action_units="env")
    spec = env.action_spec()
    assert (spec.minimum, spec.maximum) == (0.0, 512.0) and "env units" in spec.units
    c = load_controller(pixel_run[agent])
    result = run_episode(env, c, seed=0, record_steps=True)
    sent = np.stack(env.env.unwrapped.received)
    np.testing.assert_allclose(sent, result.steps["action"][:-1], atol=1e-4)  # passed through, not rescaled
    assert sent.max() > 1 and sent.min() >= LOW - 1e-2
    assert not check_action_units(c, env)
    with caplog.at_level(logging.WARNING):
        assert check_action_units(c, GymToReverie(PixelEnv(), size=(32, 32)))  # [-1, 1] adapter: warned
    assert "action_units=env" in caplog.text
    with pytest.raises(ConfigError, match="action_units"):
        GymToReverie(PixelEnv(), size=(32, 32), action_units="pixels")


class PixelEnv(gym.Env):
    """Image observations, a 6-d state and actions in pixels (Box 0..512); records what it is sent."""

    observation_space = spaces.Dict({"image": spaces.Box(0, 255, (32, 32, 3), np.uint8),
                                     "state": spaces.Box(0, 512, (6,), np.float32)})
    action_space = spaces.Box(0.0, 512.0, (6,), np.float32)

    def __init__(self):
        self.received, self.t = [], 0

    def _obs(self):
        return {"image": np.full((32, 32, 3), 20, np.uint8), "state": np.full(6, 200.0, np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.received.append(np.asarray(action, np.float32))
        self.t += 1
        return self._obs(), 0.0, False, self.t >= 3, {}


@pytest.mark.parametrize("agent", ["bc", "scratch"])
def test_bundle_acts_in_pixels_like_the_controller(pixel_run, agent):
    """Export (parity in model units) -> the torch-free runtime's step on recorded observations:
    pixel actions, equal to the torch controller's."""
    from reverie.runtime import manifest as manifest_lib
    from reverie.runtime.bundle import Bundle
    from reverie.language import embed
    from reverie.policy.loading import load_controller

    out = export_setup.export(pixel_run[agent], pixel_run["root"] / f"bundle_{agent}", "arm=so101_virtual", "parity_steps=20")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["normalization"]["keys"]["action"]["mode"] == "minmax"
    np.testing.assert_allclose(manifest["action"]["minimum"], LOW, rtol=1e-6)
    assert manifest["parity"]["max_action_error"] <= 1e-4
    bundle = Bundle.load(out)
    c = load_controller(pixel_run[agent])
    if agent == "bc":
        c.wm.deterministic = True  # as exported
    ep, text = recorded(pixel_run["store"])
    c.reset(text)
    bundle.reset()
    emb = embed([text]).astype(np.float32)
    for t in range(5):
        got = bundle.act(ep["image/front"][t], ep["state"][t], emb)
        want = c.act({"image/front": ep["image/front"][t], "state": ep["state"][t]})
        assert np.abs(got).max() > 1 and got.min() >= LOW - 1e-2 and got.max() <= HIGH + 1e-2
        np.testing.assert_allclose(got, want, atol=1e-4 * (HIGH - LOW))
    # A bundle from before normalisation (no `normalization`): identity, raw graph output.
    old = pixel_run["root"] / f"old_bundle_{agent}"
    shutil.copytree(out, old)
    manifest.pop("normalization")
    (old / "manifest.json").write_text(json.dumps(manifest))
    manifest_lib.seal(old)  # the edited manifest gets its digest, as an export writes it
    legacy = Bundle.load(old)
    assert legacy.normalizer.is_identity
    assert np.abs(legacy.act(ep["image/front"][0], ep["state"][0], emb)).max() <= 1
