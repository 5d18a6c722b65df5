"""`reverie eval` on a tiny gymnasium env: suites checked up front, return and max-reward statistics."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from reverie.errors import ConfigError
from reverie.policy import evaluate as evaluation
from reverie.policy.stats import mean_interval, t_quantile

# seed % 3 -> the rewards of the episode's three steps
REWARDS = {0: [0.2, 0.9, 0.1], 1: [0.5, 0.5, 0.5], 2: [1.0, 0.0, 0.3]}


class RewardTable(gym.Env):
    """Three steps whose rewards depend only on the reset seed; success when the return exceeds 1.25."""

    metadata = {"render_modes": []}
    made = 0

    def __init__(self):
        RewardTable.made += 1
        self.observation_space = spaces.Box(0, 255, (4, 4, 3), np.uint8)
        self.action_space = spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.rewards, self.t = REWARDS[seed % 3], 0
        return np.zeros((4, 4, 3), np.uint8), {}

    def step(self, action):
        self.t += 1
        done = self.t == 3
        return (np.zeros((4, 4, 3), np.uint8), self.rewards[self.t - 1], done, False,
                {"is_success": done and sum(self.rewards) > 1.25})


gym.register("reverie_test/RewardTable-v0", entry_point=RewardTable)
ENV = "gym/reverie_test/RewardTable-v0"


class Recorder:
    def __init__(self):
        self.instructions, self.acts = [], 0

    def reset(self, instruction):
        self.instructions.append(instruction)

    def act(self, observation):
        self.acts += 1
        return np.zeros(1, np.float32)


def test_max_reward_and_return_statistics_match_hand_computed_values():
    controller = Recorder()
    report = evaluation.evaluate(controller, ENV, episodes=3, suites=["train"], seed=10_000, progress=False,
                                 instruction="collect the most reward")
    s = report["train"]
    # seeds 10000, 10001, 10002 -> rows 1, 2, 0: max rewards 0.5, 1.0, 0.9; returns 1.5, 1.3, 1.2
    assert s["mean_max_reward"] == pytest.approx(0.8)
    # t(0.975, 2) = 4.303 (tables); sample sd of (0.5, 1.0, 0.9) = sqrt(0.07); half = 4.303 * sqrt(0.07 / 3)
    half = 4.3027 * np.sqrt(0.07 / 3)
    assert s["max_reward_ci95"] == pytest.approx([0.8 - half, 0.8 + half], abs=1e-4)
    assert s["mean_return"] == pytest.approx(4.0 / 3)
    half = 4.3027 * np.sqrt(np.var([1.5, 1.3, 1.2], ddof=1) / 3)
    assert s["return_ci95"] == pytest.approx([4 / 3 - half, 4 / 3 + half], abs=1e-4)
    assert s["successes"] == 2 and s["episodes"] == 3 and s["ci95"][0] < 2 / 3 < s["ci95"][1]
    assert controller.instructions == ["collect the most reward"] * 3  # instruction= reaches every episode
    md = evaluation.markdown(report)
    assert "mean max reward" in md and "0.800" in md and f"[{0.8 - 4.3027 * np.sqrt(0.07 / 3):.3f}" in md


def test_t_quantile_and_small_samples():
    assert t_quantile(0.95, 1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile(0.95, 10) == pytest.approx(2.228, abs=1e-3)
    assert t_quantile(0.95, 10_000) == pytest.approx(1.960, abs=1e-3)
    assert mean_interval([0.7]) is None  # one episode: no spread to speak of
    assert mean_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)


def test_bad_suites_fail_before_any_episode_runs(monkeypatch):
    controller, made = Recorder(), RewardTable.made
    with pytest.raises(ConfigError, match=r"\['heldout'\] exist for the sim arm only.*suites=\[train\]"):
        evaluation.evaluate(controller, ENV, episodes=2, suites=["train", "heldout"], progress=False)
    assert RewardTable.made == made and controller.acts == 0  # no env made, no episode run

    import reverie.sim.registry as registry

    monkeypatch.setattr(registry, "make", lambda *a, **k: pytest.fail("an env was made before the check"))
    with pytest.raises(ConfigError, match="choose from"):
        evaluation.evaluate(controller, "arm/touch", episodes=2, suites=["train", "heldot"], progress=False)
    with pytest.raises(ConfigError, match="heldout suite"):
        evaluation.evaluate(controller, "arm/touch", episodes=2, suites=["train", "heldout"], progress=False,
                            instruction="touch the red cube")
    with pytest.raises(ConfigError, match="not one the sim arm understands"):
        evaluation.evaluate(controller, "arm/touch", episodes=2, suites=["train"], progress=False,
                            instruction="dance a jig")
    with pytest.raises(ConfigError, match="episodes=0"):
        evaluation.evaluate(controller, "arm/touch", episodes=0, suites=["train"], progress=False)
    # the CLI checks them before it loads the policy (this one does not exist)
    with pytest.raises(ConfigError, match="sim arm only"):
        evaluation.main(["policy=/nonexistent/agent", f"env={ENV}", "suites=[train,heldout]"])
