"""The reward head's class-balanced loss (policy/reward.py), AgentData's oversampling of rewarded
windows, RL's refusal of data without any reward signal, and the rl.reward_steps phase."""

import json

import numpy as np
import pytest
import torch

from reverie.config import compose
from reverie.datasets.store import EpisodeStore
from reverie.errors import ConfigError
from reverie.policy.agent import Agent
from reverie.policy.reward import balanced_weights, reward_loss


def test_one_positive_in_a_thousand_gets_half_the_weight():
    reward = torch.zeros(4, 250)
    reward[2, 17] = 1.0
    w = balanced_weights(reward)
    assert float(w[2, 17]) == pytest.approx(0.5)
    assert float(w.sum()) == pytest.approx(1.0)
    assert float(w[0, 0]) == pytest.approx(0.5 / 999)
    # negative rewards are positives too (rows with reward != 0)
    reward[1, 3] = -2.0
    assert float(balanced_weights(reward)[1, 3]) == pytest.approx(0.25)


def test_weights_follow_valid_and_fall_back_to_uniform():
    reward = torch.zeros(2, 5)
    reward[0, 4] = 1.0
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[0, 4] = False  # the only positive is padding: no positive counts, rows weigh alike
    w = balanced_weights(reward, valid)
    assert float(w[0, 4]) == 0 and torch.allclose(w[valid], torch.full((9,), 1 / 9))
    assert torch.allclose(balanced_weights(torch.zeros(2, 5)), torch.full((2, 5), 0.1))
    assert float(balanced_weights(reward, torch.zeros(2, 5, dtype=torch.bool)).sum()) == 0


def _fit(balanced: bool, steps: int = 100) -> tuple[float, float]:
    torch.manual_seed(0)
    feat = torch.randn(10, 100, 8)
    feat[3, 57] += 3.0                                   # the rewarded state looks different
    reward = torch.zeros(10, 100)
    reward[3, 57] = 1.0                                  # 1 positive among 1000 rows
    instr = torch.randn(10, 4)
    agent = Agent(8, 2, 4, units=32, layers=2)
    opt = torch.optim.Adam(agent.reward.parameters(), lr=3e-3)
    for _ in range(steps):
        if balanced:
            loss = reward_loss(agent, feat, instr, reward)
        else:
            loss = agent.twohot.loss(agent.reward_logits(feat, instr), reward).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = agent.predict_reward(feat, instr)
    others = torch.ones_like(reward, dtype=torch.bool)
    others[3, 57] = False
    return float(pred[3, 57]), float(pred[others].abs().max())


def test_balanced_head_finds_the_rare_positive_where_plain_mean_does_not():
    pos, neg = _fit(balanced=True)
    assert pos > 0.5 and neg < 0.25
    pos, _ = _fit(balanced=False)
    assert pos < 0.5


def _bare_copy(src, dst):
    """The demos with rewards zeroed, no terminal rows and no success labels."""
    store = EpisodeStore.open(src)
    out = EpisodeStore.create(dst, store.schema, fps=store.fps, robot=store.robot)
    for i in range(store.num_episodes):
        ep = store.episode(i)
        ep["reward"] = np.zeros_like(ep["reward"])
        ep["is_terminal"] = np.zeros_like(ep["is_terminal"])
        out.add_episode(ep, instruction=store.meta(i).instruction, source="teleop", success=None)
    out.close()
    return dst


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_agent):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("reward")
    b = tiny_agent(root, episodes=3, time_limit=12, wm_steps=2, bc_steps=2, holdout=0.25)
    b["bare"] = _bare_copy(b["store"], root / "bare.zarr")
    return b


def _rl(built, name, *extra):
    from reverie.policy import train as agent_train

    return agent_train.train(compose("train_agent", [
        "stage=rl", f"init={built['bc']}", f"out={built['root'] / name}", "steps=2", "rl.batch_size=4",
        "rl.horizon=3", *built["common"], *extra]))


def test_rl_refuses_data_without_rewards_or_labels_then_runs_once_labelled(built, capsys):
    from reverie import cli
    from reverie.policy import checkpoint

    with EpisodeStore.open(built["bare"], "a") as store:
        store.set_success(range(store.num_episodes), None)
    with pytest.raises(ConfigError, match=r"reverie data label.*rewards\.dllm\.enabled=true"):
        _rl(built, "refused", f"data={built['bare']}")
    # a success label only on the held-out episode is not enough, and the message says so
    assert cli.main(["data", "label", str(built["bare"]), "episodes=2", "success=true"]) == 0
    with pytest.raises(ConfigError, match="only held-out episodes"):
        _rl(built, "refused", f"data={built['bare']}")

    assert cli.main(["data", "label", str(built["bare"]), "episodes=0", "success=true"]) == 0
    rl = _rl(built, "labelled", f"data={built['bare']}", "rl.reward_steps=3")
    info = json.loads((rl / "agent.json").read_text())
    assert all(np.isfinite(h["rl/return"]) for h in info["history"])
    bc, _ = checkpoint.load(built["bc"])
    agent, _ = checkpoint.load(rl)
    # the reward_steps phase trained the reward head (without it, RL leaves the head alone)
    assert any(not torch.equal(a, b) for a, b in zip(bc.reward.parameters(), agent.reward.parameters()))


def test_reward_steps_train_only_the_reward_head(built):
    from reverie.policy import checkpoint
    from reverie.policy import train as agent_train
    from reverie.policy.data import AgentData
    from reverie.world_model import checkpoint as wm_checkpoint

    cfg = compose("train_agent", ["stage=rl", f"init={built['bc']}", "rl.reward_steps=4", *built["common"]])
    wm, wm_cfg, wm_info = wm_checkpoint.load_model(cfg.wm, "cpu")
    wm.requires_grad_(False)
    wm_before = [p.clone() for p in wm.parameters()]
    agent, info = checkpoint.load(cfg.init)
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    data = AgentData(cfg, wm_cfg, wm_info, batch_size=4, seq_len=4)
    assert data.positive_fraction == 0.25
    agent_train.STAGES["rl"](cfg, wm, agent, info, data=data)  # runs the reward phase now
    changed = {k.split(".")[0] for k, v in agent.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"reward"}
    assert all(torch.equal(a, b) for a, b in zip(wm_before, wm.parameters()))
    assert data.positive_fraction == 0.0  # imagination contexts are drawn without oversampling
    with pytest.raises(ConfigError, match="rl.reward_steps"):
        agent_train.STAGES["rl"](compose("train_agent", ["stage=rl", f"init={built['bc']}", "rl.reward_steps=-1",
                                                         *built["common"]]), wm, agent, info)


def test_agent_data_oversamples_rewarded_windows(built):
    from reverie.policy.data import AgentData
    from reverie.world_model import checkpoint as wm_checkpoint

    _, wm_cfg, wm_info = wm_checkpoint.load_model(built["wm"], "cpu")
    bare = built["bare"]
    with EpisodeStore.open(bare, "a") as store:  # only episode 1 (training) is a labelled success
        store.set_success(range(store.num_episodes), None)
        store.set_success([1], True)
        length = store.meta(1).length
    common = [o for o in built["common"] if not o.startswith("holdout")] + [f"data={bare}", "holdout=0.25"]
    cfg = compose("train_agent", ["stage=bc", "rewards.positive_fraction=0.25", *common])
    data = AgentData(cfg, wm_cfg, wm_info, batch_size=8, seq_len=4)
    assert data._positives.tolist() == [[0, 1, EpisodeStore.open(bare).meta(1).start + length - 4,
                                         EpisodeStore.open(bare).meta(1).start + length]]
    for _ in range(3):
        batch = data.next()
        rewarded = batch["reward"].sum(-1) > 0
        assert int(rewarded.sum()) >= 2                        # ceil(0.25 * 8) windows at least
        assert bool(batch["is_terminal"][rewarded, -1].all())  # each ends on the labelled success row
        assert float(batch["reward"][rewarded, -1].min()) == 1.0
    forced = []
    draw = data._positive_window
    data._positive_window = lambda: forced.append(1) or draw()
    data.next(positive_fraction=0)
    assert not forced
    data.next()
    assert len(forced) == 2

    # windows longer than the episode are padded as the sampler pads: the success row stays real
    long = AgentData(cfg, wm_cfg, wm_info, batch_size=4, seq_len=length + 3)
    window = long._positive_window()
    assert window["valid"].tolist() == [True] * length + [False] * 3
    assert window["state"].shape[0] == length + 3 and window["image/front"].shape[0] == length + 3
    assert not window["is_last"][length:].any() and bool(window["is_last"][length - 1])
    batch = long.next()
    rewarded = batch["reward"].sum(-1) > 0
    assert int(rewarded.sum()) >= 1 and bool(batch["is_terminal"][rewarded, length - 1].all())

    with pytest.raises(ConfigError, match="positive_fraction"):
        AgentData(compose("train_agent", ["rewards.positive_fraction=1.5", *common]), wm_cfg, wm_info, 4, 4)


def test_the_balanced_head_is_moved_back_to_the_datas_rate_of_paying_rows():
    """calibration(): the share of training rows that pay (success labels on the final row, held-out
    episodes left out); predict_reward maps the head's balanced estimate R * p onto R * sigmoid(logit p
    + logit rate): a state the balanced head gives even odds is paid at the data's rate."""
    from types import SimpleNamespace

    from reverie.policy.reward import calibration

    class Store:
        def __init__(self, lengths, rewards):
            self.reward = np.concatenate(rewards).astype(np.float32)
            starts = np.cumsum([0, *lengths[:-1]])
            self.metas = [SimpleNamespace(start=int(a), length=n, success=False) for a, n in zip(starts, lengths)]
            self.num_episodes = len(lengths)

        def lowdim(self):
            return {"reward": self.reward}

        def meta(self, e):
            return self.metas[e]

    labelled = Store([10, 30, 10], [np.zeros(10), np.zeros(30), np.zeros(10)])
    data = SimpleNamespace(stores=[labelled], held={(0, 2)}, labelled={(0, 0), (0, 2)}, success_reward=1.0)
    assert calibration(data) == {"value": 1.0, "rate": 1 / 40}          # one paying row of 40 trained on
    recorded = Store([4], [np.array([0, 0.5, 0, 2.0])])
    assert calibration(SimpleNamespace(stores=[recorded], held=set(), labelled=set(), success_reward=1.0)) is None
    assert calibration(SimpleNamespace(stores=[Store([4], [np.zeros(4)])], held=set(), labelled=set(),
                                       success_reward=1.0)) is None

    agent = Agent(8, 2, 4, units=16, layers=1)
    feat, instr = torch.randn(3, 8), torch.randn(3, 4)
    with torch.no_grad():  # a head that says "even odds" of 0 and R = 2 everywhere
        odds = 0.5 * agent.twohot.target(torch.tensor([0.0, 2.0])).sum(0)
        agent.reward.out.bias.copy_(odds.clamp(min=1e-12).log())
    raw = agent.predict_reward(feat, instr)                              # symexp(symlog(2) / 2): uncalibrated
    assert torch.allclose(raw, torch.full((3,), 3 ** 0.5 - 1), atol=1e-4)
    agent.reward_calibration = {"value": 2.0, "rate": 0.01}
    assert torch.allclose(agent.predict_reward(feat, instr), torch.full((3,), 2.0 * 0.01), atol=1e-3)
