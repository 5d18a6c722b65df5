"""device= for the agent stages (train-agent, eval, improve) at the `tiny` preset.

There is no GPU here, so these check the CPU path explicitly, the clear error for a missing GPU, that
checkpoints are device-independent, and that a short RL step keeps every module and tensor on the
chosen device (which on a GPU machine is what makes the same code correct there). precision=bf16
runs the autocast path on the CPU.
"""

import json

import numpy as np
import pytest
import torch

from reverie.config import compose
from reverie.errors import ConfigError

ENV_KW = {"time_limit": 8}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_agent):
    torch.set_num_threads(1)
    return tiny_agent(tmp_path_factory.mktemp("agent_device"), episodes=3, time_limit=16, wm_steps=2,
                      bc_steps=2, holdout=0.34, agent_options=("rl.batch_size=4", "rl.horizon=3"))


def test_explicit_cpu_runs_every_stage_on_the_asked_device(run, monkeypatch):
    from reverie.policy import evaluate
    from reverie.workflows import improve
    from reverie.policy import train as agent_train
    from reverie.world_model import distributed

    asked = []
    real = distributed.pick_device
    monkeypatch.setattr(distributed, "pick_device", lambda name: asked.append(str(name)) or real(name))
    root = run["root"]
    rl = agent_train.train(compose("train_agent", ["stage=rl", f"init={run['bc']}", f"out={root / 'rl'}",
                                                   "steps=2", *run["common"]]))
    hist = json.loads((rl / "agent.json").read_text())["history"]
    assert len(hist) == 2 and all(isinstance(h["rl/return"], float) and np.isfinite(h["rl/return"]) for h in hist)
    assert evaluate.main([f"policy={rl}", "episodes=1", "suites=[train]", "videos=0", "progress=false",
                          f"out={root / 'eval'}", "device=cpu", "+env_kwargs.time_limit=8"]) == 0
    assert json.loads((root / "eval" / "eval.json").read_text())["train"]["episodes"] == 1
    asked.clear()
    rows = improve.improve(compose("improve", [
        f"wm={run['wm']}", f"agent={rl}", f"prior={run['bc']}", f"out={root / 'improve'}", "rounds=1",
        "episodes=1", "wm_steps=1", "rl_steps=1", "eval_episodes=1", "progress=false", "device=cpu",
        "+env_kwargs.time_limit=8"]))
    assert list(rows) == ["round 1"]
    # deploy controller, world-model fine-tune, RL and evaluation controller each picked device=cpu
    assert len(asked) >= 4 and set(asked) == {"cpu"}, asked


def test_cuda_without_a_gpu_is_a_clear_error(run, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same check on a GPU machine
    from reverie.policy import train as agent_train
    from reverie.workflows.improve import improve
    from reverie.policy.loading import load_controller

    root = run["root"]
    common = [o for o in run["common"] if o != "device=cpu"]
    with pytest.raises(ConfigError, match="device=cuda but no CUDA GPU is visible; use device=cpu"):
        agent_train.train(compose("train_agent", ["stage=bc", f"out={root / 'x'}", "steps=1", "device=cuda",
                                                  *common]))
    with pytest.raises(ConfigError, match="device=cuda:0 but no CUDA GPU"):
        load_controller(run["bc"], "cuda:0")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        improve(compose("improve", [f"wm={run['wm']}", f"agent={run['bc']}", f"out={root / 'y'}",
                                    "device=cuda", "progress=false"]))
    assert not (root / "y" / "round_1").exists()  # refused before deploying anything
    with pytest.raises(ConfigError, match="choose auto, cpu, cuda or cuda:N"):
        load_controller(run["bc"], "gpu")


def test_checkpoint_round_trips_and_acts_identically_on_cpu(run, tmp_path):
    from reverie.policy import checkpoint
    from reverie.policy.loading import load_controller
    from reverie.sim.registry import make

    agent, info = checkpoint.load(run["bc"], "cpu")
    again_dir = checkpoint.save(tmp_path / "agent", agent, info)
    again, _ = checkpoint.load(again_dir, torch.device("cpu"))
    for (k, a), (k2, b) in zip(agent.state_dict().items(), again.state_dict().items()):
        assert k == k2 and b.device.type == "cpu" and torch.equal(a, b)
    env = make("arm/touch", **ENV_KW)
    actions = []
    for path in (run["bc"], again_dir):
        controller = load_controller(path, "cpu")
        torch.manual_seed(0)  # the world model samples its stochastic latents from the global RNG
        ts = env.reset(seed=5)
        controller.reset(ts.observation["instruction"])
        acts = []
        for _ in range(3):
            a = controller.act(ts.observation)
            assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (6,)
            acts.append(a)
            ts = env.step(a)
        actions.append(np.stack(acts))
    env.close()
    np.testing.assert_array_equal(actions[0], actions[1])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_rl_step_keeps_modules_and_imagined_tensors_on_the_device(run, monkeypatch, precision):
    from reverie.policy import checkpoint
    from reverie.policy import train as agent_train
    from reverie.policy.data import AgentData
    from reverie.world_model import checkpoint as wm_checkpoint
    from reverie.world_model.distributed import pick_device

    device = pick_device("cpu")
    cfg = compose("train_agent", ["stage=rl", f"init={run['bc']}", f"precision={precision}", *run["common"]])
    wm, wm_cfg, wm_info = wm_checkpoint.load_model(cfg.wm, device)
    wm.requires_grad_(False)
    agent, info = checkpoint.load(cfg.init, device)
    agent.train()
    data = AgentData(cfg, wm_cfg, wm_info, batch_size=4, seq_len=4, device=device)
    step = agent_train.STAGES["rl"](cfg, wm, agent, info)
    seen = {}
    imagine = wm.imagine

    def recording_imagine(state, policy, horizon):
        traj = imagine(state, policy, horizon)
        seen["autocast"] = torch.is_autocast_enabled(device.type)
        seen.update({f"state/{k}": v for k, v in state.items()}, **traj)
        return traj

    def recording_returns(reward, cont, value, *args):
        seen.update(reward=reward, cont_in=cont, slow_value=value)
        seen["ret"] = real_returns(reward, cont, value, *args)
        return seen["ret"]

    real_returns = agent_train.lambda_returns
    monkeypatch.setattr(wm, "imagine", recording_imagine)
    monkeypatch.setattr(agent_train, "lambda_returns", recording_returns)
    batch = data.next()
    metrics = step(batch)
    tensors = {**{f"batch/{k}": v for k, v in batch.items() if torch.is_tensor(v)},
               **{k: v for k, v in seen.items() if torch.is_tensor(v)}, **metrics}
    assert {"feat", "action", "cont", "ret", "slow_value"} <= set(tensors)
    for name, t in tensors.items():
        assert t.device == device, name
    # the step closes over the world model, the agent (with its slow critic) and the frozen prior
    modules = [c.cell_contents for c in step.__closure__ if isinstance(c.cell_contents, torch.nn.Module)]
    assert wm in modules and agent in modules and len(modules) == 3
    for module in modules:
        for p_name, p in [*module.named_parameters(), *module.named_buffers()]:
            assert p.device == device, f"{type(module).__name__}.{p_name}"
    assert seen["autocast"] == (precision == "bf16")  # the world model's passes ran under autocast
    # the returns and the heads' losses stay float32 even when the world model ran under bf16 autocast
    assert seen["ret"].dtype == seen["reward"].dtype == torch.float32
    assert metrics["rl/actor_loss"].dtype == metrics["rl/value_loss"].dtype == torch.float32
    assert all(torch.isfinite(v).all() for v in metrics.values())
