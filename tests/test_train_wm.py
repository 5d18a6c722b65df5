"""train-wm / eval-wm end to end on a tiny synthetic store: train, checkpoint, resume, reproduce, evaluate."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from reverie.config import compose
from reverie.errors import ConfigError, ReverieError
from reverie.world_model import checkpoint
from reverie.world_model.data import write_toy_store
from reverie.world_model.evaluate import evaluate
from reverie.world_model.train import Trainer


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    # 7 episodes: episode 1 is action-free video, the last one is held out for evaluation.
    return str(write_toy_store(tmp_path_factory.mktemp("data") / "toy.zarr", episodes=7, length=28))


def train(store, out, *extra):
    cfg = compose("train_wm", ["preset=tiny", f"data={store}", f"out={out}", "progress=false",
                               "log_every=2", "image_every=3", "save_every=100", "threads=1", *extra])
    return Trainer(cfg).run()


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_train_checkpoint_resume_reproduce(toy_store, tmp_path):
    full = train(toy_store, tmp_path / "full", "steps=6")
    ckpt = tmp_path / "full" / "checkpoint"
    for name in ("model.safetensors", "optimizer.safetensors", "optimizer.json", "trainer.json",
                 "config.yaml", "rng_rank0.safetensors"):
        assert (ckpt / name).exists(), name
    assert json.loads((ckpt / "trainer.json").read_text())["step"] == 6
    assert list((tmp_path / "full").glob("events.out.tfevents.*"))  # TensorBoard scalars and images

    # The same seed reproduces the run exactly on CPU.
    again = train(toy_store, tmp_path / "again", "steps=6")
    assert all(torch.equal(a, b) for a, b in zip(params(full.model).values(), params(again.model).values()))

    # Interrupted at step 3, then resumed: identical to the uninterrupted run.
    train(toy_store, tmp_path / "split", "steps=3")
    resumed = train(toy_store, tmp_path / "split", "steps=6", "resume=true")
    assert resumed.step == 6
    for (k, a), b in zip(params(full.model).items(), params(resumed.model).values()):
        assert torch.equal(a, b), k
    # Training moved the weights away from initialisation.
    fresh = Trainer(compose("train_wm", ["preset=tiny", f"data={toy_store}", f"out={tmp_path / 'init'}"]))
    assert not all(torch.equal(a, b) for a, b in zip(params(fresh.model).values(), params(full.model).values()))


def test_checkpoint_from_before_the_mean_frame_loads_and_resumes(toy_store, tmp_path):
    """A checkpoint written before the RSSM kept a mean frame (no pixels.* buffers) still loads for
    inference and resumes; the mean frame then starts neutral (grey) and is learnt from there."""
    from safetensors.torch import load_file, save_file

    from reverie.world_model.checkpoint import load_model

    train(toy_store, tmp_path / "old", "steps=2")
    ckpt = tmp_path / "old" / "checkpoint"
    for name in ("model.safetensors", "train_model.safetensors"):
        if (ckpt / name).exists():
            weights = {k: v for k, v in load_file(ckpt / name).items() if not k.startswith("pixels.")}
            save_file(weights, ckpt / name)
    model, _, _ = load_model(ckpt)
    assert torch.allclose(model.pixels.pixel_mean, torch.full_like(model.pixels.pixel_mean, 0.5))
    resumed = train(toy_store, tmp_path / "old", "steps=3", "resume=true")
    assert resumed.step == 3 and float(resumed.model.pixels.mean_count) == 1


def test_ema_weights_checkpoint_for_consumers_and_resume_exactly(toy_store, tmp_path):
    full = train(toy_store, tmp_path / "full", "steps=6", "ema=0.9")
    ckpt = tmp_path / "full" / "checkpoint"
    averaged, raw = load_file(ckpt / "model.safetensors"), load_file(ckpt / "train_model.safetensors")
    assert all(torch.equal(raw[k], v) for k, v in full.model.state_dict().items())  # training's own
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw)
    model, _, _ = checkpoint.load_model(tmp_path / "full")  # eval, policy and export get the average
    assert all(torch.equal(averaged[k], v) for k, v in model.state_dict().items())
    # Interrupted and resumed: the same weights and the same average as the uninterrupted run.
    train(toy_store, tmp_path / "split", "steps=3", "ema=0.9")
    train(toy_store, tmp_path / "split", "steps=6", "ema=0.9", "resume=true")
    again = tmp_path / "split" / "checkpoint"
    for name, ref in (("model.safetensors", averaged), ("train_model.safetensors", raw)):
        got = load_file(again / name)
        assert all(torch.equal(ref[k], got[k]) for k in ref), name
    # Resuming a run without an average starts one at its weights.
    train(toy_store, tmp_path / "plain", "steps=2")
    late = train(toy_store, tmp_path / "plain", "steps=3", "ema=0.9", "resume=true")
    assert late.ema.updates == 1 and (tmp_path / "plain" / "checkpoint" / "train_model.safetensors").exists()
    # A preset may ask for an average (the cpu shortcut preset does); ema=0 turns it off.
    preset = ["preset=tiny", f"data={toy_store}", "+preset.rssm.ema=0.9"]
    assert Trainer(compose("train_wm", preset + [f"out={tmp_path / 'p1'}"])).ema.decay == 0.9
    assert Trainer(compose("train_wm", preset + [f"out={tmp_path / 'p2'}", "ema=0"])).ema is None
    with pytest.raises(ConfigError, match="ema=1.5"):
        train(toy_store, tmp_path / "bad", "steps=1", "ema=1.5")


def test_checkpoint_from_before_the_v3_core_loads_as_wide(toy_store, tmp_path):
    """A checkpoint whose config has no `core` key (written before issue 22) builds the wide GRU it
    was trained with, and its weights load unchanged."""
    from reverie.world_model.checkpoint import load_model

    run = train(toy_store, tmp_path / "old", "steps=2", "world_model.core=wide")
    ckpt = tmp_path / "old" / "checkpoint"
    text = (ckpt / "config.yaml").read_text()
    lines = [l for l in text.splitlines() if not l.strip().startswith(("core:", "core_layers:"))]
    assert len(lines) < len(text.splitlines())
    (ckpt / "config.yaml").write_text("\n".join(lines) + "\n")
    model, _, _ = load_model(ckpt)
    assert model.core.layout == "wide"
    assert all(torch.equal(a, b) for a, b in zip(params(run.model).values(), params(model).values()))


def test_ema_averages_trained_and_copies_frozen_parameters():
    from reverie.world_model.ema import EMA

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    net[1].requires_grad_(False)
    ema = EMA(net, decay=0.5)
    start = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)  # an optimiser step on [0], a late-loaded frozen module on [1]
    ema.update()  # decay min(0.5, 2/11)
    w = 2 / 11
    assert torch.allclose(ema.shadow[0], w * start[0] + (1 - w) * (start[0] + 1))
    assert torch.equal(ema.shadow[2], start[2] + 1)  # frozen: copied
    with ema.applied():
        assert torch.equal(net[0].weight, ema.shadow[0] * 0 + net[0].weight)
        inside = net[0].weight.detach().clone()
    assert torch.allclose(inside, w * start[0] + (1 - w) * (start[0] + 1))
    assert torch.equal(net[0].weight, start[0] + 1)  # swapped back


def test_weight_decay_shrinks_matrices_only_and_resumes_exactly(toy_store, tmp_path):
    from reverie.world_model.train import param_groups

    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    assert len(param_groups(net, 0.0)) == 1  # no decay: one group, as checkpoints before the split
    decayed, plain = param_groups(net, 0.5)
    assert decayed["params"] == [net[0].weight] and len(plain["params"]) == 3  # bias, gain, norm bias
    opt = torch.optim.AdamW(param_groups(net, 0.5), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    net(torch.zeros(1, 3)).sum().mul(0).backward()  # zero gradients: only the decay moves a weight
    opt.step()
    assert torch.allclose(net[0].weight, before[0] * (1 - 0.1 * 0.5))
    assert all(torch.equal(p, b) for p, b in zip(list(net.parameters())[1:], before[1:]))

    full = train(toy_store, tmp_path / "full", "steps=4", "world_model.weight_decay=0.1")
    train(toy_store, tmp_path / "split", "steps=2", "world_model.weight_decay=0.1")
    resumed = train(toy_store, tmp_path / "split", "steps=4", "resume=true", "world_model.weight_decay=0.1")
    for (k, a), b in zip(params(full.model).items(), params(resumed.model).values()):
        assert torch.equal(a, b), k
    # A resumed run takes its decay from the command line, not from the checkpoint's optimiser state.
    stronger = train(toy_store, tmp_path / "split", "steps=5", "resume=true", "world_model.weight_decay=0.3")
    assert [g["weight_decay"] for g in stronger.optimizer.param_groups] == [0.3, 0.0]


def test_learning_rate_warmup_and_cosine_decay(toy_store, tmp_path):
    trainer = Trainer(compose("train_wm", ["preset=tiny", f"data={toy_store}", f"out={tmp_path}",
                                           "warmup=4", "lr_end=0.1"]))
    base = float(trainer.mcfg.lr)
    assert trainer.set_lr(0.0) == pytest.approx(base / 4)  # step 0 of a 4-step warm-up
    trainer.step = 10
    assert trainer.set_lr(0.0) == pytest.approx(base)
    assert trainer.set_lr(0.5) == pytest.approx(base * 0.55)  # halfway down the cosine
    assert trainer.set_lr(1.0) == pytest.approx(base * 0.1)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(base * 0.1)
    # Without lr_end (the default, and configs saved before the schedule) the rate stays constant.
    plain = Trainer(compose("train_wm", ["preset=tiny", f"data={toy_store}", f"out={tmp_path / 'plain'}"]))
    assert plain.set_lr(0.9) == pytest.approx(base)


def test_time_budget_stops_and_checkpoints(toy_store, tmp_path):
    # A budget spent after the first step: training stops there, and that step is checkpointed.
    run = train(toy_store, tmp_path, "steps=50", "minutes=1e-6", "lr_end=0.1")
    assert run.step == 1
    assert json.loads((tmp_path / "checkpoint" / "trainer.json").read_text())["step"] == 1


def test_batches_mix_action_free_and_labelled_rows(toy_store, tmp_path):
    # The sampler's source weighting gives the one video episode half of the windows.
    cfg = compose("train_wm", ["preset=tiny", f"data={toy_store}", f"out={tmp_path}", "preset.rssm.batch_size=16",
                               "weights={source: {video: 1, scripted: 1}}"])
    trainer = Trainer(cfg)
    batch = trainer.data.next()
    assert batch["image"].dtype == torch.float32 and batch["image"].max() <= 1.0
    assert batch["image"].shape[2:] == (16, 16, 3)
    assert batch["instruction_embedding"].shape == (16, 384)
    assert torch.allclose(batch["instruction_embedding"].norm(dim=-1), torch.ones(16), atol=1e-4)
    labelled = batch["action_mask"].any(1)
    assert labelled.any() and (~labelled).any()  # both kinds of episodes in one batch
    loss, metrics = trainer.model.loss(batch)
    assert torch.isfinite(loss)


def test_episodes_shorter_than_the_window_train_with_padding_masked(tmp_path):
    # Every episode (5 rows) is shorter than the tiny preset's seq_len (8): all train, padded.
    short = write_toy_store(tmp_path / "short.zarr", episodes=3, length=5)
    cfg = compose("train_wm", ["preset=tiny", f"data={short}", f"out={tmp_path / 'run'}", "preset.rssm.batch_size=4",
                               "per=episode", "weights={success: {unknown: 1}, round: {0: 1}}"])
    trainer = Trainer(cfg)
    batch = trainer.data.next()
    assert batch["valid"].dtype == torch.bool and batch["valid"].shape == (4, 8)
    assert batch["valid"].sum(1).tolist() == [5] * 4  # windows start at row 0: five real rows, three padded
    assert not (batch["action_mask"] & ~batch["valid"]).any() and batch["is_last"].sum() == 4
    loss, _ = trainer.model.loss(batch)
    assert torch.isfinite(loss)


def test_eval_writes_metrics_plot_and_gif(toy_store, tmp_path):
    train(toy_store, tmp_path / "run", "steps=4")
    cfg = compose("eval_wm", [f"checkpoint={tmp_path / 'run'}", "windows=4", "context=4", "horizon=6",
                              "batch_size=4"])
    results = evaluate(cfg)
    assert results["windows"] == 4 and results["step"] == 4
    for key in ("mse/model", "mse/copy_last", "psnr/model", "state_mse/model", "state_mse/zero_action"):
        assert len(results["per_horizon"][key]) == 6
    assert 0 <= results["cont_accuracy"] <= 1
    follows = results["follows_actions"]
    for key in ("direction_agreement_recorded", "direction_agreement_zero"):
        assert 0.0 <= follows[key] <= 1.0
    out = tmp_path / "run" / "eval"
    for name in ("eval.json", "eval.png", "eval.gif"):
        assert (out / name).stat().st_size > 0
    written = json.loads((out / "eval.json").read_text())
    assert written["horizon"] == 6 and "tokenizer" not in written  # RSSM has no tokenizer to report
    assert "privileged/target" in written["probe"]["skipped"]  # the toy store has no sim ground truth
    gap = written["model_minus_copy_last"]
    assert np.allclose(gap["diff"], np.subtract(results["per_horizon"]["mse/model"],
                                                results["per_horizon"]["mse/copy_last"]))
    assert len(gap["se"]) == 6 and gap["episodes"] >= 1


def test_paired_gap_clusters_windows_by_episode():
    from reverie.world_model.evaluate import paired_gap

    rng = np.random.default_rng(0)
    base = rng.random((40, 3))
    # h=1 clearly better, h=2 a wash, h=3 clearly worse; noise shared within an episode
    shift = np.repeat(rng.normal(0, 0.01, (10, 1)), 4, 0)
    model = base + np.array([-0.1, 0.0, 0.1]) + shift
    episodes = [(0, e // 4) for e in range(40)]
    gap = paired_gap(model, base, episodes)
    assert gap["episodes"] == 10 and gap["better"] == [1] and gap["worse"] == [3]
    assert np.allclose(gap["diff"], (model - base).mean(0))
    # four windows of one episode carry one episode's information: clustered SE = SE over 10 means
    means = (model - base)[:, 1].reshape(10, 4).mean(1)
    assert np.isclose(gap["se"][1], means.std(ddof=1) / np.sqrt(10))


def test_eval_windows_split_train_holdout_all(toy_store):
    from reverie.world_model.data import open_stores
    from reverie.world_model.evaluate import eval_windows

    stores = open_stores([toy_store])

    def episodes(split):
        return {w["episode"] for w in eval_windows(stores, 0.2, split, 6, 100, slice(0, 5), "image/front")}

    # 7 episodes, holdout 0.2 -> the last two are held out; episode 1 has no actions, so no window
    assert episodes("holdout") == {5, 6}
    assert episodes("train") == {0, 2, 3, 4}
    assert episodes("all") == episodes("train") | episodes("holdout")
    with pytest.raises(ConfigError, match="choose holdout, train"):
        eval_windows(stores, 0.2, "test", 6, 100, slice(0, 5), "image/front")
    with pytest.raises(ConfigError, match="need training, action-labelled episodes of at least 100 rows"):
        eval_windows(stores, 0.2, "train", 100, 4, slice(0, 5), "image/front")


def test_loading_never_unpickles(toy_store, tmp_path, monkeypatch):
    train(toy_store, tmp_path / "run", "steps=1")

    def refuse(*a, **k):
        raise AssertionError("torch.load must not be used")
    monkeypatch.setattr(torch, "load", refuse)
    model, cfg, trainer = checkpoint.load_model(tmp_path / "run")
    weights = load_file(tmp_path / "run" / "checkpoint" / "model.safetensors")
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items() if k in weights)
    assert trainer["backend"] == "rssm" and cfg.world_model.name == "rssm"


def test_config_errors_name_the_fix(toy_store, tmp_path):
    with pytest.raises(ReverieError, match="no episode store"):
        train(tmp_path / "missing.zarr", tmp_path / "a", "steps=1")
    with pytest.raises(ConfigError, match="image_key"):
        train(toy_store, tmp_path / "b", "steps=1", "image_key=image/wrist")
    with pytest.raises(ConfigError, match="no section for backend"):
        Trainer(compose("train_wm", ["preset=tiny", f"data={toy_store}", "~preset.rssm", "+preset.other={}"]))
    with pytest.raises(ConfigError, match="no checkpoint"):
        checkpoint.find(tmp_path / "nothing")
    assert list(compose("train_wm", ["data=a.zarr,b.zarr"]).data) == ["a.zarr", "b.zarr"]  # a list, not a sweep


def test_cli_trains_and_evaluates(toy_store, tmp_path, capsys):
    from reverie.cli import main

    assert main(["train-wm", "preset=tiny", f"data={toy_store},{toy_store}", f"out={tmp_path}",
                 "steps=2", "progress=false"]) == 0
    assert main(["eval-wm", f"checkpoint={tmp_path}", "windows=2", "context=2", "horizon=3"]) == 0
    assert "beats copy-last" in capsys.readouterr().out
    assert main(["train-wm", "preset=tiny", "data=/nonexistent.zarr", f"out={tmp_path}/x"]) == 2


def test_augment_mirrors_the_world_models_windows_and_refuses_narration(tmp_path):
    """train-wm augment.mirror=1: every training window is reflected (frames flipped, the negated
    dims' actions negated) before the model sees it; with narration learnt it is refused (the
    narration's words would not follow)."""
    from reverie.sim.demos import record

    store = tmp_path / "sim.zarr"
    record(compose("sim_demos", ["task=push", "episodes=2", "skill=1.0", f"out={store}", "time_limit=10"]))
    base = ["preset=tiny", f"data={store}", "holdout=0", "threads=1", "progress=false", "prefetch=0"]
    plain = Trainer(compose("train_wm", [*base, f"out={tmp_path / 'a'}"]))
    flipped = Trainer(compose("train_wm", [*base, f"out={tmp_path / 'b'}", "augment.mirror=1.0"]))
    assert plain.data.augment is None
    a, b = plain.data.next(), flipped.data.next()  # same seed: the same windows drawn
    assert torch.allclose(b["image"], a["image"].flip(-2), atol=0.05)  # flipped before the resize to 16x16
    assert not torch.allclose(b["image"], a["image"], atol=0.05)
    assert torch.allclose(b["action"][..., [0, 4]], -a["action"][..., [0, 4]])
    assert torch.equal(b["action"][..., 1:4], a["action"][..., 1:4])
    with pytest.raises(ConfigError, match="augment.colour_swap / augment.mirror .* narration"):
        Trainer(compose("train_wm", [*base, f"out={tmp_path / 'c'}", "augment.mirror=0.5", "world_model.describe=true"]))
