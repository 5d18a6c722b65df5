"""End to end at the `tiny` preset: sim demos -> world model -> BC -> imagination RL -> evaluation
-> one corrective round, plus the behaviour-cloning-from-scratch baseline."""

import json

import numpy as np
import pytest
import torch

from reverie.config import compose
from reverie.errors import ConfigError

ENV_KW = {"time_limit": 12}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_agent):
    from reverie.policy import train as agent_train

    built = tiny_agent(tmp_path_factory.mktemp("policy"), episodes=4, time_limit=30, wm_steps=4, bc_steps=4,
                       holdout=0.25)
    root, store, bc, common = built["root"], built["store"], built["bc"], built["common"]
    rl = agent_train.train(compose("train_agent", ["stage=rl", f"init={bc}", f"out={root / 'rl'}", "steps=3",
                                                   "rl.batch_size=4", "rl.horizon=4", *common]))
    return {"root": root, "store": store, "wm": root / "wm", "bc": bc, "rl": rl}


def test_bc_and_rl_write_agents_with_lineage(trained):
    info = json.loads((trained["rl"] / "agent.json").read_text())
    assert info["stage"] == "rl" and [s["stage"] for s in info["lineage"]] == ["bc", "rl"]
    assert info["prior"] == str(trained["bc"])
    assert all(np.isfinite(h["rl/return"]) for h in info["history"])
    bc_hist = json.loads((trained["bc"] / "agent.json").read_text())["history"]
    assert len(bc_hist) == 4 and all(np.isfinite(h["bc/nll"]) for h in bc_hist)


def test_rl_changes_the_actor_but_not_the_world_model(trained):
    from reverie.policy import checkpoint

    bc, _ = checkpoint.load(trained["bc"])
    rl, _ = checkpoint.load(trained["rl"])
    diff = [float((a - b).abs().max().detach()) for a, b in zip(bc.actor.parameters(), rl.actor.parameters())]
    assert max(diff) > 0
    # the reward head is not trained in imagination (rewards come from the data)
    for a, b in zip(bc.reward.parameters(), rl.reward.parameters()):
        assert torch.equal(a, b)


def test_rl_without_a_prior_is_refused(trained):
    from reverie.policy import train as agent_train

    with pytest.raises(ConfigError, match="stage=bc"):
        agent_train.train(compose("train_agent", ["stage=rl", f"wm={trained['wm']}",
                                                  f"out={trained['root'] / 'x'}", "progress=false"]))


def test_evaluate_reports_wilson_intervals_per_suite(trained, tmp_path):
    from reverie.policy.evaluate import evaluate, write_report
    from reverie.policy.loading import load_controller

    report = evaluate(load_controller(trained["rl"]), "arm/touch", episodes=2,
                      suites=["train", "heldout", "shifted"], env_kwargs=ENV_KW, videos=1, out=tmp_path,
                      progress=False)
    assert set(report) == {"train", "heldout", "shifted"}
    for suite in report.values():
        lo, hi = suite["ci95"]
        assert suite["episodes"] == 2 and 0 <= lo <= suite["success_rate"] <= hi <= 1
    write_report(report, tmp_path, "test")
    assert (tmp_path / "eval.png").stat().st_size > 0 and "| heldout |" in (tmp_path / "eval.md").read_text()
    assert list(tmp_path.glob("train_ep000_*.gif"))


def test_controller_is_deterministic_and_continues_state(trained):
    from reverie.policy.loading import load_controller
    from reverie.sim.registry import make

    env = make("arm/touch", **ENV_KW)
    ts = env.reset(seed=3)
    c = load_controller(trained["rl"])
    torch.manual_seed(0)
    c.reset(ts.observation["instruction"])
    a1 = [c.act(ts.observation) for _ in range(2)]
    assert c.prev_action is not None and a1[0].shape == (6,) and np.all(np.abs(a1[0]) <= 1)
    env.close()


def test_one_corrective_round_keeps_each_rounds_data(trained, tmp_path):
    from reverie.datasets.store import EpisodeStore
    from reverie.workflows.improve import improve

    rows = improve(compose("improve", [
        f"wm={trained['wm']}", f"agent={trained['rl']}", f"prior={trained['bc']}", f"out={tmp_path}",
        "rounds=1", "episodes=2", "wm_steps=2", "rl_steps=2", "eval_episodes=2", "progress=false",
        "+env_kwargs.time_limit=12"]))
    assert list(rows) == ["round 1"]
    store = EpisodeStore.open(tmp_path / "round_1" / "policy.zarr")
    assert store.num_episodes == 2
    assert {store.meta(i).source for i in range(2)} == {"policy"} and store.meta(0).round == 1
    assert "narration" in store.schema  # the sim narrates deployed episodes too (DLLM)
    assert (tmp_path / "round_1" / "wm" / "checkpoint" / "model.safetensors").exists()
    assert json.loads((tmp_path / "round_1" / "agent" / "agent.json").read_text())["stage"] == "rl"
    assert rows["round 1"]["beta"] == pytest.approx(0.15)
    assert "| round 1 |" in (tmp_path / "improve.md").read_text()


def test_behaviour_cloning_from_scratch_trains_from_the_cli_and_acts(trained, tmp_path, capsys):
    """benchmarks/agent.py's "bc from scratch" row as a train-agent stage: trained on the world
    model's data at its resolution, then evaluated and loaded like any policy folder."""
    from reverie.cli import main
    from reverie.policy.loading import load_controller

    out = tmp_path / "scratch"
    assert main(["train-agent", "stage=bc_scratch", f"wm={trained['wm']}", f"out={out}", "steps=3", "holdout=0.25",
                 "bc_scratch.batch_size=4", "bc_scratch.seq_len=2", "bc_scratch.cnn_depth=4", "agent.units=32",
                 "agent.layers=1", "progress=false"]) == 0
    info = json.loads((out / "scratch_bc.json").read_text())
    assert info["stage"] == "bc_scratch" and info["steps"] == 3 and info["image_key"] == "image/front"
    assert info["sizes"]["chunk"] == 8 and info["sizes"]["film"] and info["stores"] == [str(trained["store"])]
    assert all(np.isfinite(h["bc/mse"]) for h in info["history"])  # bc_scratch.loss=mse by default
    c = load_controller(out)
    c.reset("touch the red cube")
    action = c.act({"image/front": np.zeros((64, 64, 3), np.uint8), "state": np.zeros(6, np.float32)})
    assert action.shape == (6,) and np.all(np.abs(action) <= 1)
    assert main(["eval", f"policy={out}", "episodes=1", "suites=[train]", "videos=0", "progress=false",
                 f"out={tmp_path / 'eval'}", "+env_kwargs.time_limit=5"]) == 0
    assert "success" in (tmp_path / "eval" / "eval.md").read_text()
    capsys.readouterr()
    assert main(["train-agent", "stage=bc_scratch", f"wm={trained['wm']}", f"init={trained['bc']}"]) == 2
    assert "continues only a pixel BC" in capsys.readouterr().err
    assert main(["train-agent", "stage=bc_scratch", f"wm={trained['wm']}", f"init={out}", "bc_scratch.cnn_depth=8",
                 f"out={tmp_path / 'wider'}", "agent.units=32", "agent.layers=1", "progress=false"]) == 2
    assert "its network differs from this run's {'cnn_depth': (4, 8)}" in capsys.readouterr().err


def test_a_corrective_round_continues_a_pixel_bc_on_its_own_successes(trained, tmp_path):
    """improve with agent=<a bc_scratch folder>: record, then clone on the demos plus the round's
    episodes from the current weights with its own settings; no world-model fine-tune, no RL."""
    from reverie.cli import main
    from reverie.policy import scratch_bc
    from reverie.workflows.improve import improve

    first = tmp_path / "scratch"
    assert main(["train-agent", "stage=bc_scratch", f"wm={trained['wm']}", f"out={first}", "steps=2", "holdout=0.25",
                 "bc_scratch.batch_size=4", "bc_scratch.cnn_depth=4", "bc_scratch.mirror=0.5", "agent.units=32",
                 "agent.layers=1", "progress=false"]) == 0
    rows = improve(compose("improve", [f"wm={trained['wm']}", f"agent={first}", f"out={tmp_path / 'improve'}",
                                       "rounds=2", "episodes=2", "bc_steps=2", "eval_episodes=1", "progress=false",
                                       "+env_kwargs.time_limit=8"]))
    assert list(rows) == ["round 1", "round 2"] and rows["round 2"]["bc_steps"] == 2
    second = tmp_path / "improve" / "round_2" / "agent"
    info = json.loads((second / "scratch_bc.json").read_text())
    assert info["init"] == str((tmp_path / "improve" / "round_1" / "agent").resolve())
    assert info["mirror"] == 0.5 and info["sizes"]["cnn_depth"] == 4  # the settings it was trained with
    assert info["stores"] == [str(trained["store"]), str(tmp_path / "improve" / "round_1" / "policy.zarr"),
                              str(tmp_path / "improve" / "round_2" / "policy.zarr")]
    assert not (tmp_path / "improve" / "round_1" / "wm").exists()
    before, after = scratch_bc.load(first)[0], scratch_bc.load(tmp_path / "improve" / "round_1" / "agent")[0]
    changed = [not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values())]
    assert any(changed) and len(changed) == len(before.state_dict())  # the same network, trained on


def test_scratch_bc_from_independent_rows(trained, tmp_path):
    """bc_scratch.sample=rows: each sample is one row (windows of `chunk` rows from any start, only
    the first used), every row of the training episodes reachable, including an episode's last rows;
    norm=layer and weight decay reach the network and optimiser, and the checkpoint reloads them."""
    from reverie.cli import main
    from reverie.policy.loading import load_controller
    from reverie.policy.scratch_bc import train_scratch_bc

    class Rows:  # two windows of 3 rows; the second starts at its episode's last action row
        image_size, device, normalizer = 16, "cpu", None
        spec = type("Spec", (), {"state_dim": 2, "action_dim": 2})

        def next(self):
            action = torch.tensor([[[0.5, 0.5], [9.0, 9.0], [9.0, 9.0]], [[-0.5, -0.5], [0.0, 0.0], [0.0, 0.0]]])
            return {"image": torch.rand(2, 3, 16, 16, 3), "state": torch.zeros(2, 3, 2), "action": action,
                    "action_mask": torch.tensor([[True, True, True], [True, False, False]]),
                    "valid": torch.tensor([[True, True, True], [True, False, False]]),
                    "instruction_embedding": torch.zeros(2, 384)}

    # Rows 1-2 of the first window carry impossible targets (9): trained on, the NLL would explode.
    sizes = dict(chunk=1, film=True, units=16, layers=1, cnn_depth=4)
    torch.manual_seed(0)
    policy, hist = train_scratch_bc(Rows(), steps=25, progress=False, shift=0, sample="rows", weight_decay=1e-4,
                                    norm="layer", **sizes)
    torch.manual_seed(0)
    _, windows = train_scratch_bc(Rows(), steps=25, progress=False, shift=0, norm="layer", **sizes)
    assert np.isfinite(hist[-1]["bc/nll"]) and hist[-1]["bc/nll"] < windows[-1]["bc/nll"] - 10, (hist, windows)
    assert isinstance(policy.image_enc.norms[0], torch.nn.GroupNorm)
    out = tmp_path / "rows"
    assert main(["train-agent", "stage=bc_scratch", f"wm={trained['wm']}", f"out={out}", "steps=2", "holdout=0.25",
                 "bc_scratch.sample=rows", "bc_scratch.norm=layer", "bc_scratch.weight_decay=1e-4",
                 "bc_scratch.batch_size=4", "bc_scratch.cnn_depth=4", "agent.units=32", "agent.layers=1",
                 "progress=false"]) == 0
    info = json.loads((out / "scratch_bc.json").read_text())
    assert info["sizes"]["norm"] == "layer"
    c = load_controller(out)
    c.reset("touch the red cube")
    assert c.act({"image/front": np.zeros((64, 64, 3), np.uint8), "state": np.zeros(6, np.float32)}).shape == (6,)
    with pytest.raises(ConfigError, match="bc_scratch.sample"):
        train_scratch_bc(Rows(), steps=1, progress=False, sample="episodes", chunk=1, film=True)
    # loss=mse: squared error of the mean over the first rows only; the two rows (targets +-0.5, fresh
    # noise images) cannot be told apart, so the best mean is 0 and the loss 2 x 0.25 (not the 9s' ~81)
    torch.manual_seed(0)
    policy, mse = train_scratch_bc(Rows(), steps=100, progress=False, shift=0, sample="rows", loss="mse", lr=3e-3,
                                   norm="layer", **sizes)
    assert all(h["bc/mse"] < 1.0 for h in mse), mse  # the masked 9s never entered the loss
    with torch.no_grad():
        mean = policy.chunk_policy(torch.rand(8, 16, 16, 3), torch.zeros(8, 2), torch.zeros(8, 384)).mean
    assert float(mean.abs().mean()) < 0.2, mean
    with pytest.raises(ConfigError, match="bc_scratch.loss"):
        train_scratch_bc(Rows(), steps=1, progress=False, loss="huber", chunk=1, film=True)


def test_controller_hears_an_operators_action(trained):
    """During a takeover (robot env) the executed action, not the policy's, conditions the next step."""
    from reverie.policy.loading import load_controller
    from reverie.sim.registry import make

    env = make("arm/touch", **ENV_KW)
    ts = env.reset(seed=4)
    c = load_controller(trained["rl"])
    c.reset(ts.observation["instruction"])
    c.act(ts.observation)
    c.observe_executed(np.full(6, 0.5, np.float32))
    assert torch.equal(c.prev_action.cpu(), torch.full((1, 6), 0.5))
    assert np.all(np.abs(c.act(env.step(np.full(6, 0.5, np.float32)).observation)) <= 1)
    env.close()


def test_scratch_bc_reads_extra_cameras(trained, tmp_path):
    """bc_scratch.cameras=[image/wrist]: one CNN per camera, the cameras saved with the policy, the
    controller reads them all and names the fix when an observation lacks one; a store without the
    camera is refused before training."""
    from reverie.cli import main
    from reverie.policy.evaluate import evaluate
    from reverie.policy.loading import load_controller
    from reverie.sim.demos import record

    store = tmp_path / "wrist.zarr"
    record(compose("sim_demos", ["task=touch", "episodes=2", "skill=1.0", f"out={store}", "time_limit=10",
                                 "cameras=[front,wrist]"]))
    out = tmp_path / "two_cams"
    args = ["train-agent", "stage=bc_scratch", f"wm={trained['wm']}", f"data={store}", f"out={out}", "steps=2",
            "holdout=0", "bc_scratch.batch_size=4", "bc_scratch.cnn_depth=4", "agent.units=32", "agent.layers=1",
            "progress=false", "bc_scratch.cameras=[image/wrist]"]
    assert main(args) == 0
    info = json.loads((out / "scratch_bc.json").read_text())
    assert info["image_keys"] == ["image/front", "image/wrist"] and info["sizes"]["cameras"] == 2
    c = load_controller(out)
    assert len(c.policy.extra_encs) == 1
    c.reset("touch the red cube")
    obs = {"image/front": np.zeros((64, 64, 3), np.uint8), "state": np.zeros(6, np.float32)}
    with pytest.raises(ConfigError, match=r"lacks \['image/wrist'\].*env_kwargs.cameras=\[front,wrist\]"):
        c.act(obs)
    wrist = np.full((64, 64, 3), 255, np.uint8)
    a = c.act(obs | {"image/wrist": wrist})
    c.reset("touch the red cube")
    assert not np.allclose(a, c.act(obs | {"image/wrist": np.zeros_like(wrist)})), "the wrist frame is ignored"
    report = evaluate(c, "arm/touch", 1, ["train"], env_kwargs={"time_limit": 3, "cameras": ["front", "wrist"]},
                      progress=False)
    assert report["train"]["episodes"] == 1
    from reverie.policy.train import train

    with pytest.raises(ConfigError, match="no camera 'image/side'"):
        train(compose("train_agent", args[1:-1] + [f"out={tmp_path / 'bad'}", "bc_scratch.cameras=[image/side]"]))
    with pytest.raises(ConfigError, match="repeats the main camera"):
        train(compose("train_agent", args[1:-1] + [f"out={tmp_path / 'bad2'}", "bc_scratch.cameras=[image/front]"]))
