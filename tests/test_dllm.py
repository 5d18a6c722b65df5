"""DLLM (issue 7): sim narration in the store -> the RSSM's description head -> language-goal reward in
imagination RL, at the tiny preset, on data with neither recorded rewards nor success labels."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reverie.config import compose
from reverie.datasets import narration
from reverie.datasets.store import EpisodeStore
from reverie.errors import ConfigError
from reverie.policy.dllm import RND, first_crossing, goal_reward

TINY = ["preset=tiny", "progress=false", "holdout=0", "threads=1"]


def _unlabelled_copy(src: Path, dst: Path) -> Path:
    """The demos with rewards zeroed, no terminal rows, no success labels and no narration key."""
    store = EpisodeStore.open(src)
    schema = {k: v for k, v in store.schema.items() if k != narration.KEY}
    out = EpisodeStore.create(dst, schema, fps=store.fps, robot=store.robot)
    for i in range(store.num_episodes):
        ep = store.episode(i, list(schema))
        ep["reward"] = np.zeros_like(ep["reward"])
        ep["is_terminal"] = np.zeros_like(ep["is_terminal"])
        out.add_episode(ep, instruction=store.meta(i).instruction, source="teleop", success=None)
    out.close()
    store.close()
    return dst


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from reverie.policy import train as agent_train
    from reverie.sim.demos import record
    from reverie.world_model.train import Trainer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("dllm")
    demos = root / "demos.zarr"
    record(compose("sim_demos", ["task=touch", "episodes=3", "skill=1.0", f"out={demos}", "time_limit=24",
                                 "image_size=[16,16]", "seed=5"]))
    bare = _unlabelled_copy(demos, root / "bare.zarr")
    trainer = Trainer(compose("train_wm", [*TINY, f"data={demos}", f"out={root / 'wm'}", "steps=30",
                                           "world_model.describe=true", "world_model.lr=1e-3"]))
    losses = [trainer.train_step(trainer.data.next())["loss/describe"] for _ in range(30)]
    trainer.step = 30
    trainer.save()
    common = [f"wm={root / 'wm'}", f"data={bare}", "progress=false", "log_every=1", "holdout=0", "threads=1",
              "bc.seq_len=6", "rl.context=4"]
    bc = agent_train.train(compose("train_agent", ["stage=bc", f"out={root / 'bc'}", "steps=2", *common]))
    rl = agent_train.train(compose("train_agent", [
        "stage=rl", f"init={bc}", f"out={root / 'rl'}", "steps=3", "rl.batch_size=4", "rl.horizon=5",
        "rewards.dllm.enabled=true", "rewards.dllm.threshold=0.0", *common]))
    return {"root": root, "demos": demos, "bare": bare, "losses": losses, "bc": bc, "rl": rl,
            "common": common}


def test_demos_record_narration_that_reads_back(run):
    store = EpisodeStore.open(run["demos"])
    table = narration.vocabulary(store)
    assert store.schema[narration.KEY].dtype == "int16" and "" in table
    for i in range(store.num_episodes):
        said = narration.texts(table, store.episode(i, [narration.KEY])[narration.KEY])
        colour = store.meta(i).instruction.split()[-2]  # "touch the red cube" and its paraphrases
        assert said[0] == "" and None not in said
        assert f"the gripper touches the {colour} cube" in said  # an expert touch is narrated
    store.close()


def test_stores_without_narration_still_train_and_append(run, tmp_path):
    from reverie.sim import demos

    store = EpisodeStore.open(run["bare"])
    assert narration.KEY not in store.schema  # the agent stages above trained on it
    store.close()
    with pytest.raises(ConfigError, match="world_model.describe=false"):
        from reverie.world_model.train import Trainer
        Trainer(compose("train_wm", [*TINY, f"data={run['bare']}", f"out={tmp_path / 'x'}",
                                     "world_model.describe=true"]))
    old = tmp_path / "old.zarr"  # a store from before narration: appending demos leaves it as it is
    _unlabelled_copy(run["demos"], old)
    demos.main(["demos", "task=touch", "episodes=1", f"out={old}", "image_size=[16,16]", "append=true",
                "time_limit=5"])
    store = EpisodeStore.open(old)
    assert store.num_episodes == 4 and narration.KEY not in store.schema
    store.close()


def test_description_head_trains_and_describes_with_unit_vectors(run):
    from reverie.world_model import checkpoint

    losses = run["losses"]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    wm, _, _ = checkpoint.load_model(run["root"] / "wm")
    desc = wm.describe(torch.randn(2, 3, wm.feat_dim))
    assert desc.shape == (2, 3, 384)
    torch.testing.assert_close(desc.norm(dim=-1), torch.ones(2, 3))


def test_first_crossing_counts_once_per_trajectory():
    sim = torch.tensor([[0.1, 0.6, 0.7, 0.2, 0.9],
                        [0.2, 0.3, 0.4, 0.5, 0.5],      # never strictly above 0.5
                        [0.8, 0.1, 0.9, 0.9, 0.1]])
    assert first_crossing(sim, 0.5).tolist() == [[0, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]]
    goal = torch.tensor([[1.0, 0.0]])
    desc = torch.tensor([[[0.0, 1.0], [0.6, 0.8], [0.8, 0.6], [1.0, 0.0]]])  # cos 0, 0.6, 0.8, 1
    reward, cos = goal_reward(goal, desc, 0.5)
    torch.testing.assert_close(reward, torch.tensor([[0.0, 0.6, 0.0, 0.0]]))
    torch.testing.assert_close(cos, torch.tensor([[0.0, 0.6, 0.8, 1.0]]))


def test_rnd_novelty_is_higher_for_an_unseen_goal():
    from reverie.language import embed

    torch.manual_seed(0)
    seen, unseen = (torch.from_numpy(embed([t])) for t in ("touch the red cube", "stack the plates"))
    rnd = RND(lr=3e-3)
    first = float(rnd.novelty(seen))
    for _ in range(150):
        rnd.update(seen)
    assert float(rnd.novelty(unseen)) > 3 * float(rnd.novelty(seen))
    with torch.no_grad():
        assert float(rnd.error(seen)) < 0.1 * float(rnd.error(unseen)) and first > 0


def test_rl_trains_from_the_language_reward_alone(run):
    info = json.loads((run["rl"] / "agent.json").read_text())
    hist = info["history"]
    assert len(hist) == 3 and all(np.isfinite(h["rl/return"]) for h in hist)
    assert all(h["rl/intrinsic_reward"] > 0 for h in hist)
    assert all(0 <= h["dllm/hit_rate"] <= 1 and h["dllm/novelty"] > 0 for h in hist)
    # no recorded reward, no success label: the extrinsic reward head says (nearly) nothing
    assert all(abs(h["rl/extrinsic_reward"]) < 0.05 for h in hist)


def test_dllm_needs_a_world_model_with_a_description_head(run):
    from reverie.policy import train as agent_train
    from reverie.world_model import checkpoint
    from reverie.world_model.train import Trainer

    plain = run["root"] / "plain_wm"
    Trainer(compose("train_wm", [*TINY, f"data={run['bare']}", f"out={plain}", "steps=1"])).run()
    # a checkpoint from before the head (no `describe` in its config) still loads
    config = checkpoint.find(plain) / "config.yaml"
    config.write_text("\n".join(line for line in config.read_text().splitlines()
                                if not line.strip().startswith("describe:")))
    wm, _, _ = checkpoint.load_model(plain)
    assert not wm.describes
    overrides = [o for o in run["common"] if not o.startswith("wm=")]
    with pytest.raises(ConfigError, match="world_model.describe=true"):
        agent_train.train(compose("train_agent", [
            "stage=rl", f"wm={plain}", f"init={run['bc']}", f"out={run['root'] / 'x'}", "steps=1",
            "rewards.dllm.enabled=true", *overrides]))
