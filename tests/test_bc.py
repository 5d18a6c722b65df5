"""Behaviour cloning as Dreamer 4 does it (policy/bc.py): multi-token targets, random shift, the
action loss fine-tuning the world model, the instruction fused by FiLM, and the action-error probe."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from reverie.config import compose


def test_chunk_targets_are_the_next_actions_masked_past_the_window_and_unknown_rows():
    from reverie.policy.bc import chunk_targets

    action = torch.arange(10, dtype=torch.float32).reshape(1, 5, 2)          # row t = [2t, 2t+1]
    mask = torch.tensor([[True, True, True, False, True]])
    targets, tmask = chunk_targets(action, mask, 3)
    assert targets.shape == (1, 5, 3, 2) and tmask.shape == (1, 5, 3)
    assert torch.equal(targets[0, 1, :, 0], torch.tensor([2.0, 4.0, 6.0]))   # rows 1, 2, 3
    assert tmask[0, 1].tolist() == [True, True, False]                       # row 3 has no action
    assert tmask[0, 4].tolist() == [True, False, False]                      # past the window's end


def test_random_shift_moves_a_whole_window_together_and_keeps_shapes():
    from reverie.policy.bc import random_shift

    image = torch.rand(3, 4, 16, 16, 3)
    shifted = random_shift(image, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == image.shape
    assert torch.equal(random_shift(image, 0), image)
    assert not torch.equal(shifted, image)
    # one offset per window: two identical frames of a window stay identical
    same = torch.stack([image[0, 0], image[0, 0]])[None]                     # (1, 2, H, W, 3)
    out = random_shift(same, 3)
    assert torch.equal(out[0, 0], out[0, 1])


def test_agent_chunk_policy_first_block_is_the_executed_action_and_film_starts_as_identity():
    from reverie.policy.agent import Agent

    torch.manual_seed(0)
    agent = Agent(8, 3, instr_dim=4, units=16, layers=2, chunk=5, film=True)
    feat, instr = torch.randn(2, 7, 8), torch.randn(2, 4)
    chunk, first = agent.chunk_policy(feat, instr), agent.policy(feat, instr)
    assert chunk.mean.shape == (2, 7, 5, 3) and first.mean.shape == (2, 7, 3)
    assert torch.equal(chunk.mean[:, :, 0], first.mean) and torch.equal(chunk.std[:, :, 0], first.std)
    plain = Agent(8, 3, instr_dim=4, units=16, layers=2, chunk=5, film=False)
    # FiLM layers are zero-initialised: before training the instruction enters only through the input
    for film in agent.actor.films:
        assert not film.weight.any() and not film.bias.any()
    with pytest.raises(ValueError, match="chunk"):
        Agent(8, 3, chunk=0)
    assert plain.policy(feat, instr).mean.shape == (2, 7, 3)


def test_mse_loss_moves_the_mean_by_squared_error_and_the_std_only_by_the_likelihood():
    from reverie.errors import ConfigError
    from reverie.policy.bc import LOSSES, bc_loss
    from reverie.policy.distributions import BoundedNormal

    mean = torch.tensor([[0.2, -0.5]], requires_grad=True)
    std = torch.tensor([[0.3, 0.3]], requires_grad=True)
    y = torch.tensor([[0.4, 0.5]])
    LOSSES["mse"](BoundedNormal(mean, std), y).sum().backward()
    # d/dmean of the squared error alone: 2 (mean - y); the likelihood's 1/std^2 pull is held out
    assert torch.allclose(mean.grad, 2 * (mean - y).detach())
    nll_std = torch.autograd.grad(LOSSES["nll"](BoundedNormal(mean.detach(), std), y).sum(), std)[0]
    assert torch.allclose(std.grad, nll_std)                                    # the spread is still fitted
    with pytest.raises(ConfigError, match="bc.loss='l1'.*mse"):
        bc_loss(None, torch.zeros(1, 2, 3), {}, "l1")


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_agent):
    return tiny_agent(tmp_path_factory.mktemp("bc"), episodes=4, time_limit=20, wm_steps=3, bc_steps=3,
                      holdout=0.25)


def test_bc_fine_tunes_the_world_model_and_the_agent_acts_on_the_tuned_copy(built, tmp_path):
    from reverie.policy import train as agent_train
    from reverie.policy.checkpoint import world_model_of
    from reverie.world_model import checkpoint as wm_checkpoint

    info = json.loads((built["bc"] / "agent.json").read_text())
    assert info["finetuned_world_model"] and info["sizes"]["chunk"] == 8 and info["sizes"]["film"]
    tuned = load_file(wm_checkpoint.find(info["world_model"]) / "model.safetensors")
    base = load_file(wm_checkpoint.find(built["wm"]) / "model.safetensors")
    assert set(tuned) == set(base)
    changed = [k for k in base if not torch.equal(base[k], tuned[k])]
    assert any(k.startswith("image_enc") for k in changed), "the action loss must reach the encoder"
    # RL given the base world model runs on the tuned copy (its features are the ones BC learned on)
    assert world_model_of(built["bc"], built["wm"]) == info["world_model"]
    assert world_model_of(built["bc"], tmp_path / "other") == str(tmp_path / "other")
    rl = agent_train.train(compose("train_agent", ["stage=rl", f"init={built['bc']}", f"out={tmp_path / 'rl'}",
                                                   "steps=2", "rl.batch_size=2", "rl.horizon=3", *built["common"]]))
    rl_info = json.loads((rl / "agent.json").read_text())
    assert rl_info["world_model"] == info["world_model"] and rl_info["finetuned_world_model"]
    # a frozen world model stays frozen
    frozen = agent_train.train(compose("train_agent", ["stage=bc", f"out={tmp_path / 'frozen'}", "steps=2",
                                                       "bc.finetune=false", *built["common"]]))
    frozen_info = json.loads((frozen / "agent.json").read_text())
    assert not frozen_info["finetuned_world_model"]
    assert frozen_info["world_model"] == str(built["wm"].resolve())


def test_action_errors_separate_teacher_forced_from_closed_loop(built):
    from reverie.datasets.store import EpisodeStore
    from reverie.policy.action_error import action_errors
    from reverie.policy.loading import load_controller

    store = EpisodeStore.open(built["store"], "r")
    errors = action_errors(load_controller(built["bc"]), store, [0, 1])
    assert errors["rows"] > 0
    assert np.isfinite(errors["teacher_forced"]) and np.isfinite(errors["closed_loop"])
    assert errors["teacher_forced"] != errors["closed_loop"]  # a recurrent policy hears other actions

    class Constant:  # stateless: both modes see the same thing
        def reset(self, instruction):
            pass

        def act(self, observation):
            return np.zeros(6, np.float32)

    same = action_errors(Constant(), store, [0])
    assert same["teacher_forced"] == same["closed_loop"]


def test_old_agent_checkpoints_load_as_single_action_concatenation_agents(built, tmp_path):
    import shutil

    from reverie.policy import checkpoint

    old = tmp_path / "old"
    shutil.copytree(built["bc"], old)
    info = json.loads((old / "agent.json").read_text())
    # an agent saved before chunk/film: rebuild its weights as such an agent would have them
    from reverie.policy.agent import Agent

    sizes = {k: info["sizes"][k] for k in checkpoint.SIZE_KEYS}
    legacy = Agent(**sizes)
    checkpoint.save(old, legacy, {**info, "sizes": sizes})
    agent, _ = checkpoint.load(old)
    assert agent.chunk == 1 and not agent.film


def test_bc_with_a_frame_latent_adds_it_to_a_trained_world_model_and_rl_and_control_use_it(built, tmp_path):
    """bc.frame=K adds the observed frame's latent to the features of a world model trained without it:
    the tuned copy is saved with the setting, RL on it imagines the predicted latent, and the agent acts."""
    from reverie.policy import train as agent_train
    from reverie.policy.loading import load_controller
    from reverie.sim.registry import make as make_env
    from reverie.world_model import checkpoint as wm_checkpoint

    bc = agent_train.train(compose("train_agent", ["stage=bc", f"out={tmp_path / 'bc'}", "steps=2", "bc.frame=8",
                                                   *built["common"]]))
    info = json.loads((bc / "agent.json").read_text())
    tuned, _, _ = wm_checkpoint.load_model(info["world_model"])
    base, _, _ = wm_checkpoint.load_model(built["wm"])
    assert tuned.frame_dim == 8 and info["sizes"]["feat_dim"] == base.feat_dim + 8
    assert any(k.startswith("frame_proj") for k in tuned.state_dict())
    rl = agent_train.train(compose("train_agent", ["stage=rl", f"init={bc}", f"out={tmp_path / 'rl'}", "steps=1",
                                                   "rl.batch_size=2", "rl.horizon=3", *built["common"]]))
    controller = load_controller(rl)
    env = make_env("arm/touch", time_limit=5)
    ts = env.reset(seed=3)
    controller.reset(ts.observation["instruction"])
    action = controller.act(ts.observation)
    assert action.shape == env.action_spec().shape and np.isfinite(action).all()
    env.close()
