"""Shortcut forcing (objective, sampler) and the `shortcut` backend: tiny sizes, seconds."""

import json
import math

import numpy as np
import pytest
import torch

from reverie.config import compose
from reverie.world_model.backend import DataSpec, WorldModel, build, load_backends, model_config, replay_policy
from reverie.world_model.dynamics import Dynamics
from reverie.world_model.shortcut import (RunningRMS, bootstrap_velocity, generate_frame, sample_levels,
                                          shortcut_loss)

B, T, J, A = 2, 8, 5, 4

@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and leave the other core to the rest of the suite)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_model(*overrides):
    cfg = compose("train_wm", ["world_model=shortcut", "preset=tiny", "data=unused", *overrides])
    torch.manual_seed(0)
    return build("shortcut", model_config(cfg), DataSpec((16, 16, 3), J, A))


def make_batch(t=T):
    g = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.rand(B, t, 16, 16, 3, generator=g),
        "state": torch.randn(B, t, J, generator=g),
        "action": torch.rand(B, t, A, generator=g) * 2 - 1,
        "action_mask": torch.ones(B, t, dtype=torch.bool),
        "reward": torch.rand(B, t, generator=g),
        "is_first": torch.zeros(B, t, dtype=torch.bool),
        "is_last": torch.zeros(B, t, dtype=torch.bool),
        "is_terminal": torch.zeros(B, t, dtype=torch.bool),
        "instruction_embedding": torch.nn.functional.normalize(torch.randn(B, 384, generator=g), dim=-1),
    }
    batch["is_first"][:, 0] = True
    return batch


def test_levels_on_the_step_grid():
    tau, d = sample_levels(64, 32, 16, True, "cpu")
    steps = 1 / d
    assert set(steps.unique().tolist()) == {1.0, 2.0, 4.0, 8.0, 16.0}  # all powers up to k_max
    assert torch.allclose(tau * steps, (tau * steps).round())          # tau on d's grid
    assert (tau <= 1 - d + 1e-6).all() and (tau >= 0).all()
    tau, d = sample_levels(8, 8, 16, False, "cpu")                      # shortcut off: d_min only
    assert (d == 1 / 16).all()
    tau, d = sample_levels(64, 64, 16, True, "cpu", boot_frac=0.25)     # 25% bootstrap rows
    assert abs((d > 1 / 16).float().mean().item() - 0.25) < 0.03
    assert set((1 / d[d > 1 / 16]).unique().tolist()) == {1.0, 2.0, 4.0, 8.0}


def test_bootstrap_target_toy_cases():
    # All data at one point m: the ideal x-predictor always answers m; two half steps then move
    # straight toward m, so the bootstrap velocity is (m - z_tau) / (1 - tau) and x-space target m.
    m = torch.full((1, 3, 2, 2), 0.7)
    z_tau = torch.randn(1, 3, 2, 2)
    tau = torch.tensor([[0.0, 0.25, 0.5]])
    dh = torch.tensor([[0.5, 0.25, 0.25]])
    v = bootstrap_velocity(lambda z, t: m.expand_as(z), z_tau, tau, dh, 8)
    assert torch.allclose(z_tau + (1 - tau[..., None, None]) * v, m, atol=1e-6)
    # A predictor that answers x = c z (not ideal): b1 = (c - 1) z / (1 - tau), z' = z + b1 dh,
    # b2 = (c - 1) z' / (1 - tau - dh), target (b1 + b2) / 2, computed by hand.
    c = 0.5
    v = bootstrap_velocity(lambda z, t: c * z, z_tau, tau, dh, 8)
    t4, h4 = tau[..., None, None], dh[..., None, None]
    b1 = (c - 1) * z_tau / (1 - t4)
    zp = z_tau + b1 * h4
    b2 = (c - 1) * zp / (1 - t4 - h4)
    assert torch.allclose(v, (b1 + b2) / 2, atol=1e-6)


class Oracle(torch.nn.Module):
    """A stand-in for Dynamics whose x-prediction is exact for data concentrated at `m`."""

    def __init__(self, m: torch.Tensor, k_max=8, v_pred=False):
        super().__init__()
        self.m, self.k_max, self.v_pred, self.s = m, k_max, v_pred, m.shape[-2]
        self.out = torch.nn.Linear(1, m.shape[-1])
        self.calls = []

    def forward(self, z, tau_idx, d_idx, action, action_mask, instr, segments=None, cache=None, t0=0):
        self.calls.append((tau_idx.clone(), d_idx.clone()))
        tau = tau_idx.float()[..., None, None] / self.k_max
        out = self.m.expand_as(z) if not self.v_pred else (self.m - z) / (1 - tau).clamp(min=1e-6)
        return out, z.mean((2, 3))[..., None].expand(*z.shape[:2], 3), cache

    predict_x = Dynamics.predict_x


def test_shortcut_loss_is_zero_for_the_exact_predictor_and_weights_ramp():
    m = torch.full((1, 1, 3, 2), 0.3)
    z1 = m.expand(4, 6, 3, 2)
    instr = torch.zeros(4, 384)
    act, am = torch.zeros(4, 6, 1), torch.ones(4, 6, dtype=torch.bool)
    for v_pred in (False, True):
        model = Oracle(m, v_pred=v_pred)
        loss, _, metrics = shortcut_loss(model, z1, act, am, instr)
        assert loss.item() < 1e-10 and metrics["dyn_boot_frac"] > 0
        assert len(model.calls) == 3  # main pass + two half-step passes
        d_main, d_half = model.calls[0][1], model.calls[1][1]
        boot = d_main < 3  # d > d_min = 1/8
        assert torch.equal(d_half[boot], d_main[boot] + 1)  # half steps: log2(1/d) + 1


def test_sampler_with_exact_predictor_lands_on_data_and_context_is_noised():
    m = torch.full((1, 1, 3, 2), 0.3)
    model = Oracle(m, k_max=64)
    instr = torch.zeros(2, 384)
    for steps in (1, 2, 4, 64):
        model.calls.clear()
        z, feat, _ = generate_frame(model, None, 0, torch.zeros(2, 1, 1), torch.ones(2, 1, dtype=torch.bool),
                                    instr, steps=steps, ctx_noise=0.1)
        assert torch.allclose(z, m.expand(2, 1, 3, 2), atol=1e-5)
        assert len(model.calls) == steps + 1  # K denoising passes + one context pass
        taus = [c[0][0, 0].item() for c in model.calls]
        assert taus[:-1] == [round(k * 64 / steps) for k in range(steps)]
        assert taus[-1] == round(0.9 * 64)  # context pass at signal level 1 - ctx_noise
        assert model.calls[0][1][0, 0].item() == int(math.log2(steps))
    with pytest.raises(Exception, match="power of two"):
        generate_frame(model, None, 0, torch.zeros(2, 1, 1), torch.ones(2, 1, dtype=torch.bool), instr, steps=3)


def test_running_rms_normalises():
    rms = RunningRMS(decay=0.9)
    for _ in range(100):
        out = rms(torch.tensor(5.0))
    assert abs(out.item() - 1.0) < 1e-3
    rms.eval()
    assert abs(rms(torch.tensor(10.0)).item() - 2.0) < 1e-2  # eval: uses the estimate, no update


def test_backend_interface_shapes_and_stages():
    assert "shortcut" in load_backends()
    model = make_model()
    assert isinstance(model, WorldModel) and model.current_stage() == "tokenizer"
    batch = make_batch()
    loss, metrics = model.loss(batch)
    loss.backward()
    assert "loss/image" in metrics and model.tokenizer.patch_in.weight.grad is not None
    assert model.dynamics.z_in.weight.grad is None  # stage 1 trains the tokenizer only
    model.zero_grad()
    model.updates.fill_(10)  # tiny preset: tokenizer_steps 10, then dynamics
    assert model.current_stage() == "dynamics"
    loss, metrics = model.loss(batch)
    loss.backward()
    for key in ("dyn", "reward", "cont", "state"):
        assert f"loss/{key}" in metrics
    assert model.tokenizer.patch_in.weight.grad is None  # frozen tokenizer
    assert model.dynamics.z_in.weight.grad.abs().sum() > 0
    model.eval()
    ctx = {k: (v[:, :5] if k != "instruction_embedding" else v) for k, v in batch.items()}
    state, feat = model.observe(ctx)
    assert feat.shape == (B, 5, model.feat_dim)
    traj = model.imagine(state, replay_policy(batch["action"][:, 4:]), 3)
    assert traj["feat"].shape == (B, 4, model.feat_dim) and traj["action"].shape == (B, 3, A)
    assert traj["reward"].shape == (B, 3) and traj["cont"].shape == (B, 3)
    assert torch.allclose(traj["feat"][:, 0], feat[:, -1])
    frames = model.decode(traj["state"])
    assert frames.shape == (B, 4, 16, 16, 3) and frames.min() >= 0 and frames.max() <= 1
    assert model.decode(state).shape == (B, 16, 16, 3)
    assert model.decode_state(traj["state"]).shape == (B, 4, J)
    # the sliding window keeps the cache at `context` frames (tiny: seq_len - 1 = 7)
    traj = model.imagine(state, lambda f: torch.zeros(B, A), 6)
    assert traj["feat"].shape == (B, 7, model.feat_dim)


def test_imagine_without_actions_is_video_prediction():
    """known=False marks every imagined step action-free, so the policy's actions cannot matter;
    with known=True (the default) the same rollout follows them."""
    model = make_model()
    model.updates.fill_(10)
    model.eval()
    batch = make_batch()
    state, _ = model.observe({k: (v[:, :5] if k != "instruction_embedding" else v) for k, v in batch.items()})
    acts = batch["action"][:, 4:]

    def rollout(sign, known):
        torch.manual_seed(3)
        return model.imagine(state, replay_policy(sign * acts), 3, known=known)["state"]["z"]

    assert torch.equal(rollout(1, False), rollout(-1, False))
    assert not torch.allclose(rollout(1, True), rollout(-1, True))


def test_online_observe_one_row_at_a_time_equals_one_long_observe():
    """observe(batch, state) continues both KV caches (tokenizer and dynamics) exactly."""
    model = make_model()
    model.eval()
    model.ctx_noise = 0.0  # deterministic context pass
    batch = make_batch(6)
    batch["is_first"][1, 3] = True  # item 1 starts a new episode at row 3
    state_full, feat_full = model.observe(batch)
    state, feats = None, []
    for t in range(6):
        row = {k: (v[:, t:t + 1] if k != "instruction_embedding" else v) for k, v in batch.items()}
        if t > 0:
            row["prev_action"], row["prev_action_mask"] = batch["action"][:, t - 1], batch["action_mask"][:, t - 1]
        state, feat = model.observe(row, state)
        feats.append(feat)
    assert torch.allclose(torch.cat(feats, 1), feat_full, atol=1e-4)
    for key in ("k", "tk", "seg", "z", "feat"):
        assert torch.allclose(state[key].float(), state_full[key].float(), atol=1e-4), key
    # the new episode of item 1 does not see its old frames: changing them leaves its features
    batch2 = {k: v.clone() for k, v in batch.items()}
    batch2["image"][1, :3] = torch.rand(3, 16, 16, 3)
    _, feat2 = model.observe(batch2)
    assert torch.allclose(feat2[1, 3:], feat_full[1, 3:], atol=1e-5)
    assert not torch.allclose(feat2[1, :3], feat_full[1, :3], atol=1e-4)


@pytest.mark.parametrize("overrides", [[], ["world_model.v_pred=true", "world_model.shortcut=false",
                                            "world_model.registers=0", "world_model.time_every=1",
                                            "world_model.feat=pooled", "world_model.softcap=0"]])
def test_dynamics_loss_decreases_on_a_tiny_batch(overrides):
    model = make_model("world_model.stage=dynamics", *overrides)
    batch = make_batch(4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    errs = []
    for _ in range(30):
        loss, metrics = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        errs.append(metrics["loss/dyn"])
    assert np.mean(errs[-5:]) < 0.7 * np.mean(errs[:5]), errs


def test_tokenizer_loss_decreases_on_a_tiny_batch():
    model = make_model("world_model.stage=tokenizer")
    batch = make_batch(2)
    img = torch.full((B, 2, 16, 16, 3), 0.2)  # a bright square at a different place in every frame
    for i, (y, x) in enumerate([(0, 0), (8, 4), (4, 10), (10, 10)]):
        img[i // 2, i % 2, y:y + 6, x:x + 6] = 0.9
    batch["image"] = img
    # lr 1e-3 for 100 steps: 0.052 -> 0.036 with AVX2 and with AVX512/AMX kernels alike; at 3e-3 the run
    # was chaotic enough that the ISA decided it (0.029 vs 0.041 after 60 steps)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def reconstruction_mse():  # without patch dropping: training's per-step loss is noisy by design
        model.eval()
        with torch.no_grad():
            mse = model.loss(batch)[1]["loss/image"]
        model.train()
        return mse

    for _ in range(100):
        loss, metrics = model.loss(batch)
        if _ == 0:
            before = reconstruction_mse()  # after one look at the frames: it starts at their mean image
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = reconstruction_mse()
    assert after < 0.8 * before, (before, after)


def test_config_errors_name_the_fix():
    with pytest.raises(Exception, match="stage"):
        make_model("world_model.stage=nope")
    cfg = compose("train_wm", ["world_model=shortcut", "preset=tiny", "data=unused"])
    with pytest.raises(Exception, match="image_size"):
        build("shortcut", model_config(cfg), DataSpec((32, 32, 3), J, A))


# ----- end to end with the trainer, checkpoints and evaluation (tiny preset, synthetic store) -----

@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    from reverie.world_model.data import write_toy_store

    return str(write_toy_store(tmp_path_factory.mktemp("data") / "toy.zarr", episodes=5, length=20))


def train(store, out, *extra):
    from reverie.world_model.train import Trainer

    cfg = compose("train_wm", ["world_model=shortcut", "preset=tiny", f"data={store}", f"out={out}",
                               "progress=false", "log_every=2", "image_every=0", "save_every=100",
                               "threads=1", "preset.shortcut.tokenizer_steps=3", *extra])
    return Trainer(cfg).run()


def test_tiny_two_stage_run_trains_checkpoints_resumes_and_evaluates(toy_store, tmp_path):
    from reverie.world_model import checkpoint
    from reverie.world_model.evaluate import evaluate

    full = train(toy_store, tmp_path / "full", "steps=5")  # 3 tokenizer steps, then 2 dynamics steps
    assert int(full.model.updates) == 5 and full.model.current_stage() == "dynamics"
    for stop in (2, 3):  # interrupted inside the tokenizer stage, and where the dynamics' turn begins
        train(toy_store, tmp_path / f"split{stop}", f"steps={stop}")
        resumed = train(toy_store, tmp_path / f"split{stop}", "steps=5", "resume=true")
        for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
            assert torch.equal(a, b), (stop, k)
    model, _, trainer = checkpoint.load_model(tmp_path / "full")
    assert trainer["backend"] == "shortcut" and isinstance(model, WorldModel)
    results = evaluate(compose("eval_wm", [f"checkpoint={tmp_path / 'full'}", "windows=2", "context=3",
                                           "horizon=4", "batch_size=2"]))
    assert len(results["per_horizon"]["mse/model"]) == 4 and "follows_actions" in results
    assert all(np.isfinite(results["per_horizon"]["mse/model"]))


def test_separate_stages_load_the_frozen_tokenizer(toy_store, tmp_path):
    tok = train(toy_store, tmp_path / "tok", "steps=2", "world_model.stage=tokenizer")
    dyn = train(toy_store, tmp_path / "dyn", "steps=2", "world_model.stage=dynamics",
                f"world_model.tokenizer={tmp_path / 'tok'}")
    assert bool(dyn.model.tok_loaded)
    for (k, a), b in zip(tok.model.tokenizer.state_dict().items(), dyn.model.tokenizer.state_dict().values()):
        assert torch.equal(a, b), k  # loaded, then frozen through dynamics training


def test_eval_reports_tokenizer_reconstruction(toy_store, tmp_path):
    from reverie.world_model.evaluate import evaluate, table

    def run_eval(run):
        return evaluate(compose("eval_wm", [f"checkpoint={run}", "windows=2", "context=3", "horizon=4",
                                            "batch_size=2"]))

    train(toy_store, tmp_path / "full", "steps=5")  # 3 tokenizer steps, then 2 dynamics steps
    results = run_eval(tmp_path / "full")
    tok = json.loads((tmp_path / "full" / "eval" / "eval.json").read_text())["tokenizer"]
    assert tok["frames"] == 2 * (3 + 4)  # every frame of both windows, context and horizon
    assert all(math.isfinite(tok[k]) for k in ("mse", "psnr", "psnr_of_mean_mse")) and tok["mse"] > 0
    assert tok["psnr_of_mean_mse"] == pytest.approx(-10 * math.log10(tok["mse"]))
    assert tok["psnr"] >= tok["psnr_of_mean_mse"] - 1e-9  # mean of -log(mse) >= -log of the mean
    assert "per_horizon" in results and "tokenizer reconstruction" in table(results)

    # A tokenizer-only run: reconstruction only, no open-loop prediction, and the summary says why.
    assert not make_model().can_imagine and make_model("world_model.stage=dynamics").can_imagine
    train(toy_store, tmp_path / "tok", "steps=2", "world_model.stage=tokenizer")
    only = run_eval(tmp_path / "tok")
    assert only["dynamics_untrained"] and "per_horizon" not in only and only["tokenizer"]["frames"] == 14
    assert "dynamics untrained" in table(only) and (tmp_path / "tok" / "eval" / "eval.gif").stat().st_size


def test_checkpoint_from_before_known_action_loads_as_written(toy_store, tmp_path):
    """Runs written before `known_action` existed have no such key in their config and no weight for
    it: they load as the model they were (missing action == zero action), not as a mismatch."""
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from reverie.world_model import checkpoint

    run = train(toy_store, tmp_path / "old", "steps=4", "world_model.known_action=false")
    ckpt = checkpoint.find(tmp_path / "old")
    cfg = OmegaConf.create((ckpt / "config.yaml").read_text())
    del cfg.world_model["known_action"]
    (ckpt / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    assert not any("act_known" in k for k in load_file(ckpt / "model.safetensors"))
    model, _, _ = checkpoint.load_model(tmp_path / "old")
    assert model.dynamics.act_known is None and run.model.dynamics.act_known is None
    assert make_model().dynamics.act_known is not None  # new runs carry it


def test_resuming_a_run_from_before_known_action_names_the_setting(toy_store, tmp_path):
    from omegaconf import OmegaConf

    from reverie.errors import ConfigError
    from reverie.world_model import checkpoint

    train(toy_store, tmp_path / "old", "steps=3", "world_model.known_action=false")
    ckpt = checkpoint.find(tmp_path / "old")
    cfg = OmegaConf.create((ckpt / "config.yaml").read_text())
    del cfg.world_model["known_action"]  # as written before the setting existed
    (ckpt / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    with pytest.raises(ConfigError, match="known_action: absent there, True here"):
        train(toy_store, tmp_path / "new", "steps=5", f"resume={tmp_path / 'old'}")
    resumed = train(toy_store, tmp_path / "new", "steps=5", f"resume={tmp_path / 'old'}",
                    "world_model.known_action=false")
    assert resumed.step == 5


@pytest.mark.parametrize("stage", ["tokenizer", "dynamics"])
def test_padding_past_the_episode_end_is_invisible_to_the_loss(stage):
    """Rows with valid False (the sampler's padding of short episodes) do not change the loss."""
    model = make_model(f"world_model.stage={stage}")
    model.eval()  # running RMS and pixel mean stay put between the two calls
    batch = make_batch()
    batch["valid"] = torch.ones(B, T, dtype=torch.bool)
    batch["valid"][0, 3:] = False
    other = {k: v.clone() for k, v in batch.items()}
    for key in ("image", "state", "action", "reward"):
        other[key][0, 3:] = torch.rand_like(other[key][0, 3:])
    other["is_terminal"][0, 3:] = True

    def run(b):
        torch.manual_seed(0)
        return model.loss(b)

    (loss, metrics), (loss2, metrics2) = run(batch), run(other)
    assert torch.allclose(loss, loss2, atol=1e-6)
    assert all(abs(metrics[k] - metrics2[k]) < 1e-4 * max(1.0, abs(metrics[k])) for k in metrics), metrics
    batch.pop("valid"), other.pop("valid")
    assert not torch.allclose(run(batch)[0], run(other)[0])  # without the mask the padding would count
