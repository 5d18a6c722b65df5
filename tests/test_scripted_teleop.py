"""The scripted teleoperator (success by skill, valid and reproducible actions) and the keyboard one."""

import numpy as np
import pytest

from reverie.errors import ConfigError, HardwareError
from reverie.sim.arm_env import make_arm_env
from reverie.sim.keyboard_teleop import KEYMAP, KeyboardTeleop, main as keyboard_main, run_viewer
from reverie.sim.scripted_teleop import ScriptedTeleop, run_episode
from reverie.sim.tasks import TASKS

FAST_EPISODES = 8  # per task; the slow test runs the issue's 50


def success_rate(task: str, skill: float | None, episodes: int, seed: int = 0) -> float:
    """skill None: a uniform random policy."""
    env = make_arm_env(task, image_size=(32, 32))
    teleop = ScriptedTeleop(env, skill) if skill is not None else None
    rng = np.random.default_rng(seed)
    wins = 0
    for i in range(episodes):
        if teleop is not None:
            wins += run_episode(env, teleop, seed=seed + i)[1]
            continue
        ts = env.reset(seed=seed + i)
        while not ts.last():
            ts = env.step(rng.uniform(-1, 1, 6).astype(np.float32))
        wins += ts.info["success"]
    env.close()
    return wins / episodes


@pytest.mark.parametrize("task", TASKS)
def test_expert_solves_every_task(task):
    assert success_rate(task, 1.0, FAST_EPISODES) >= 7 / 8


def test_random_policy_fails_and_half_skill_is_clearly_worse():
    random = [success_rate(t, None, FAST_EPISODES) for t in TASKS]
    assert max(random) <= 1 / 8
    half = np.mean([success_rate(t, 0.5, FAST_EPISODES, seed=100) for t in TASKS])
    expert = np.mean([success_rate(t, 1.0, FAST_EPISODES, seed=100) for t in TASKS])
    assert half <= expert - 0.1


@pytest.mark.slow
def test_issue_bar_fifty_episodes_per_task():
    for task in TASKS:
        assert success_rate(task, 1.0, 50) >= 0.95, task
        assert success_rate(task, None, 50) < 0.05, task
    half = np.mean([success_rate(t, 0.5, 50) for t in TASKS])
    assert half <= 0.85


def test_actions_are_valid_and_episodes_replay():
    env = make_arm_env("lift", image_size=(16, 16))
    teleop = ScriptedTeleop(env, skill=0.5)
    runs = [run_episode(env, teleop, seed=5)[0] for _ in range(2)]
    spec = env.action_spec()
    for ts, action in runs[0][:-1]:
        spec.validate(action, "action")
    assert runs[0][-1][1] is None and runs[0][-1][0].last()
    assert len(runs[0]) == len(runs[1])
    for (ts_a, act_a), (ts_b, act_b) in zip(runs[0][:-1], runs[1][:-1]):
        np.testing.assert_array_equal(act_a, act_b)
        np.testing.assert_array_equal(ts_a.observation["state"], ts_b.observation["state"])
    env.close()


def test_teleop_rejects_bad_setups():
    env = make_arm_env("touch", image_size=(16, 16))
    with pytest.raises(ConfigError, match="skill"):
        ScriptedTeleop(env, skill=1.5)
    env.close()
    env = make_arm_env("touch", image_size=(16, 16), action_mode="absolute")
    with pytest.raises(ConfigError, match="action_mode"):
        ScriptedTeleop(env)
    env.close()


def test_keyboard_keys_map_to_joint_deltas():
    kb = KeyboardTeleop(speed=0.5)
    kb.press("w")
    kb.press("H")  # case-insensitive: close the gripper
    kb.tap("q")
    np.testing.assert_allclose(kb.act(), [0.5, 0.5, 0, 0, 0, -0.5])
    np.testing.assert_allclose(kb.act(), [0, 0.5, 0, 0, 0, -0.5])  # the tap is used up, held keys stay
    kb.release("w")
    kb.release("h")
    assert not kb.act().any()
    kb.key_callback(ord("E"))  # the viewer's GLFW code for 'e'
    np.testing.assert_allclose(kb.act(), [0, 0, 0.5, 0, 0, 0])
    kb.key_callback(259)
    assert kb.reset_requested
    assert {joint for joint, _ in KEYMAP.values()} == set(range(6))
    with pytest.raises(ConfigError, match="not mapped"):
        kb.press("z")


def test_keyboard_drives_the_env_headless():
    env = make_arm_env("touch", image_size=(16, 16))
    env.reset(seed=0)
    kb = KeyboardTeleop(speed=1.0)
    start = env.phys.qpos()
    kb.press("q")  # pan left
    kb.press("y")  # open the gripper
    for _ in range(4):
        env.step(kb.act())
    moved = env.phys.qpos() - start
    assert moved[0] > 0.3 and moved[5] > 0.3 and np.abs(moved[1:5]).max() < 0.05
    env.close()


def test_viewer_without_a_display_says_so(monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    env = make_arm_env("touch", image_size=(16, 16))
    with pytest.raises(HardwareError, match="display"):
        run_viewer(env, KeyboardTeleop())
    env.close()
    assert keyboard_main(["task=lift"]) == 2 and "display" in capsys.readouterr().err
    assert keyboard_main(["task=lift", "speed=3"]) == 2 and "speed" in capsys.readouterr().err
    assert keyboard_main(["task=lift", "--cfg", "job"]) == 0 and "randomization: nominal" in capsys.readouterr().out
