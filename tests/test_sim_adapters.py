"""dm_control from pixels and the gymnasium adapters, both ways."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env

from reverie.errors import ConfigError
from reverie.sim.gym_adapters import GymToReverie, ReverieToGym, make_gym_env
from reverie.sim.registry import make
from reverie.specs import ArraySpec, StepType, TextSpec, TimeStep


def check_matches_spec(env, ts):
    spec = env.observation_spec()
    assert set(spec) == set(ts.observation)
    for key, s in spec.items():
        s.validate(ts.observation[key], key)
    assert isinstance(ts.info["timestamp"], float)


def rollout(env, seed, actions):
    steps = [env.reset(seed=seed)] + [env.step(a) for a in actions]
    return steps


# --- dm_control -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["reacher-easy", "cartpole-swingup", "walker-walk", "cheetah-run"])
def test_dmc_specs_and_seeds(name):
    env = make(f"dmc/{name}")
    try:
        assert env.action_spec().minimum == -1 and env.action_spec().maximum == 1
        actions = np.random.default_rng(0).uniform(-1, 1, (3, *env.action_spec().shape)).astype(np.float32)
        a, b = rollout(env, 7, actions), rollout(env, 7, actions)
        for ts in a:
            check_matches_spec(env, ts)
        assert a[0].step_type == StepType.FIRST and a[0].observation["instruction"]
        assert a[1].info["success"] is None  # the suite defines no success
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.observation["state"], y.observation["state"])
            for key in env.observation_spec():
                if key.startswith("image/"):
                    np.testing.assert_array_equal(x.observation[key], y.observation[key])
            assert x.reward == y.reward
        # A different seed draws a different initial state.
        other = env.reset(seed=8).observation["state"]
        assert not np.array_equal(other, a[0].observation["state"])
    finally:
        env.close()


def test_dmc_rescales_actions_to_task_bounds():
    # Quadruped's actuators are not all [-1, 1]: +1 and -1 must land on each bound exactly.
    env = make("dmc/quadruped-walk", render=False, action_repeat=1)
    spec = env.physics.model.actuator_ctrlrange  # (12, 2) the task's bounds
    low, high = spec[:, 0], spec[:, 1]
    assert not np.allclose(high, 1.0)
    env.reset(seed=0)
    env.step(np.ones(12, np.float32))
    np.testing.assert_allclose(env.physics.data.ctrl, high)
    env.step(-np.ones(12, np.float32))
    np.testing.assert_allclose(env.physics.data.ctrl, low)
    env.step(np.zeros(12, np.float32))
    np.testing.assert_allclose(env.physics.data.ctrl, (low + high) / 2)
    env.close()


def test_dmc_fast_render_changes_only_the_look():
    standard, fast = make("dmc/cartpole-swingup"), make("dmc/cartpole-swingup", fast_render=True)
    a, b = standard.reset(seed=1), fast.reset(seed=1)
    np.testing.assert_array_equal(a.observation["state"], b.observation["state"])
    x, y = a.observation["image/fixed"].astype(int), b.observation["image/fixed"].astype(int)
    assert x.shape == y.shape and y.std() > 10  # a real picture, not a blank frame
    assert 0 < np.abs(x - y).mean() < 20  # no shadows or anti-aliasing, same scene
    standard.close()
    fast.close()


def test_dmc_time_limit_is_truncation_and_action_repeat():
    env = make("dmc/cartpole-swingup", render=False, action_repeat=100)  # 1000 physics steps / 100
    ts = env.reset(seed=0)
    assert set(env.observation_spec()) == {"state", "instruction"}
    n = 0
    while not ts.last():
        ts = env.step(np.zeros(1, np.float32))
        n += 1
    assert n == 10 and ts.discount == 1.0
    assert env.step(np.zeros(1)).first()  # stepping past the end starts a new episode
    env.close()


def test_dmc_bad_names():
    for name in ["dmc/walker", "dmc/walker-fly", "dmc/nope-walk"]:
        with pytest.raises(ConfigError, match="dm_control|dmc"):
            make(name)
    with pytest.raises(ConfigError, match="camera"):
        make("dmc/reacher-easy", camera=9)
    with pytest.raises(ConfigError, match="camera"):
        make("dmc/reacher-easy", camera="nope")
    assert "image/hand" in make("dmc/reacher-easy", camera="hand", render=True).observation_spec()
    with pytest.raises(ConfigError, match="unknown dmc option"):
        make("dmc/reacher-easy", image_size=(64, 64))


# --- gymnasium -> reverie ---------------------------------------------------------------------

class DotEnv(gym.Env):
    """A dot on a 16x16 image moved by Discrete(5) actions (stay, up, down, left, right).

    Reaching the goal corner terminates with is_success; 20 steps truncate (TimeLimit)."""

    metadata = {"render_modes": []}
    MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]])

    def __init__(self, dict_obs=False):
        image = spaces.Box(0, 255, (16, 16, 3), np.uint8)
        self.dict_obs = dict_obs
        self.observation_space = (spaces.Dict({"pixels": image, "position": spaces.Box(0, 15, (2,), np.int64)})
                                  if dict_obs else image)
        self.action_space = spaces.Discrete(5)
        self.actions = []

    def _obs(self):
        image = np.zeros((16, 16, 3), np.uint8)
        image[tuple(self.pos)] = 255
        return {"pixels": image, "position": self.pos.copy()} if self.dict_obs else image

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.integers(0, 8, 2)
        return self._obs(), {}

    def step(self, action):
        self.actions.append(action)
        self.pos = np.clip(self.pos + self.MOVES[action], 0, 15)
        done = bool(np.all(self.pos == 15))
        return self._obs(), float(done), done, False, {"is_success": done}


gym.register("reverie_test/Dot-v0", entry_point=DotEnv, max_episode_steps=20)


def test_gym_image_env_through_registry():
    env = make("gym/reverie_test/Dot-v0", size=None)  # keep the native 16x16
    ts = env.reset(seed=3)
    check_matches_spec(env, ts)
    assert ts.observation["image/front"].shape == (16, 16, 3)
    assert env.action_spec().shape == (5,)
    # Discrete: argmax of the score vector picks the action.
    env.step(np.array([0, 0, 0, 0, 1], np.float32))
    env.step(np.array([-1, 0.5, 0, 0, 0.2], np.float32))
    assert env.env.unwrapped.actions == [4, 1]
    # Doing nothing hits the 20-step TimeLimit: truncation, discount 1, no success.
    ts = env.reset(seed=3)
    while not ts.last():
        ts = env.step(np.array([1, 0, 0, 0, 0], np.float32))
    assert ts.discount == 1.0 and ts.info["success"] is False
    # Seeds reproduce the start.
    a, b = env.reset(seed=5), env.reset(seed=5)
    np.testing.assert_array_equal(a.observation["image/front"], b.observation["image/front"])


def test_gym_dict_env_success_is_terminal():
    env = GymToReverie(gym.wrappers.TimeLimit(DotEnv(dict_obs=True), 100), size=(8, 8), instruction="go to the corner")
    spec = env.observation_spec()
    assert spec["image/front"].shape == (8, 8, 3) and spec["state"].shape == (2,)
    ts = env.reset(seed=0)
    check_matches_spec(env, ts)
    assert ts.observation["instruction"] == "go to the corner"
    while not ts.last():  # go down, then right
        down = ts.observation["state"][0] < 15
        ts = env.step(np.eye(5, dtype=np.float32)[2 if down else 4])
        check_matches_spec(env, ts)
    assert ts.discount == 0.0 and ts.reward == 1.0 and ts.info["success"] is True


def test_gym_rendered_mujoco_env():
    # Vector observations: pixels come from render_mode="rgb_array"; Box actions are rescaled.
    env = make_gym_env("InvertedPendulum-v5", width=64, height=64)
    ts = env.reset(seed=0)
    check_matches_spec(env, ts)
    assert ts.observation["image/front"].std() > 0 and ts.observation["state"].shape == (4,)
    env.step(np.ones(1, np.float32))
    assert env.env.unwrapped.data.ctrl[0] == pytest.approx(3.0)  # the space's high bound
    env.step(np.full(1, -0.5, np.float32))
    assert env.env.unwrapped.data.ctrl[0] == pytest.approx(-1.5)
    env.close()


def test_gym_classic_control_needs_pygame():
    try:
        import pygame  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pygame"):
            make("gym/CartPole-v1").reset(seed=0)
    else:
        env = make("gym/CartPole-v1")
        check_matches_spec(env, env.reset(seed=0))


def test_gym_bad_id_and_option():
    with pytest.raises(ConfigError, match="gymnasium could not make it"):
        make("gym/NoSuchEnv-v9")
    with pytest.raises(ConfigError, match="bad option"):
        make("gym/reverie_test/Dot-v0", colour="red")


# --- reverie -> gymnasium ---------------------------------------------------------------------

class TinyEnv:
    """A reverie Env: a point in [-1, 1]^2 steered toward the origin; the image shows the point."""

    def __init__(self, limit=30):
        self.limit = limit

    def observation_spec(self):
        return {"image/front": ArraySpec((12, 12, 3), "uint8"), "state": ArraySpec((2,), "float32"),
                "instruction": TextSpec()}

    def action_spec(self):
        return ArraySpec((2,), "float32", -1.0, 1.0)

    def _ts(self, kind, reward, discount, success):
        image = np.zeros((12, 12, 3), np.uint8)
        r, c = np.clip(((self.pos + 1) * 5.5).astype(int), 0, 11)
        image[r, c] = (255, 0, 0)
        return TimeStep(kind, reward, discount,
                        {"image/front": image, "state": self.pos.copy(), "instruction": self.instruction},
                        {"success": success, "timestamp": 0.0})

    def reset(self, *, seed=None, instruction=None):
        if seed is not None or not hasattr(self, "rng"):
            self.rng = np.random.default_rng(seed)
        self.pos = self.rng.uniform(-1, 1, 2).astype(np.float32)
        self.t, self.instruction = 0, instruction or "go to the centre"
        return self._ts(StepType.FIRST, 0.0, 1.0, None)

    def step(self, action):
        self.t += 1
        self.pos = np.clip(self.pos + 0.2 * np.asarray(action, np.float32), -1, 1)
        done = bool(np.linalg.norm(self.pos) < 0.1)
        if done or self.t >= self.limit:
            return self._ts(StepType.LAST, float(done), 0.0 if done else 1.0, done)
        return self._ts(StepType.MID, 0.0, 1.0, False)

    def close(self):
        pass


def test_reverie_to_gym_passes_check_env():
    env = ReverieToGym(TinyEnv(), render_mode="rgb_array")
    check_env(env)
    assert isinstance(env.observation_space["instruction"], spaces.Text)
    obs, info = env.reset(seed=1, options={"instruction": "move to the middle, please!"})
    assert obs["instruction"] == "move to the middle, please!" and obs in env.observation_space
    assert env.render().shape == (12, 12, 3)
    # Time limit -> truncated; reaching the centre -> terminated.
    terminated = truncated = False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(np.zeros(2, np.float32))
    assert truncated and not terminated
    obs, _ = env.reset(seed=1)
    terminated = truncated = False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(np.clip(-obs["state"] / 0.2, -1, 1))
    assert terminated and info["success"] is True and reward == 1.0


def test_round_trip_keeps_specs():
    inner = TinyEnv()
    back = GymToReverie(ReverieToGym(inner), size=None)
    assert back.observation_spec() == inner.observation_spec()
    assert back.action_spec() == inner.action_spec()
    # The instruction the wrapped env observes is passed through, not replaced by a default.
    assert back.reset(seed=0, instruction="touch nothing").observation["instruction"] == "touch nothing"


def test_dmc_as_gymnasium_env():
    env = ReverieToGym(make("dmc/reacher-easy", size=(32, 32)))
    check_env(env, skip_render_check=True)
    env.close()


def test_sim_arm_as_gymnasium_env():
    pytest.importorskip("reverie.sim.arm_env", reason="the sim arm (sim/arm_env.py) has not landed yet")
    env = ReverieToGym(make("arm/touch"))
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs in env.observation_space
    env.close()


# --- reverie's arm tasks registered with gymnasium ----------------------------------------------------

def test_arm_tasks_are_registered_gymnasium_envs_that_pass_check_env():
    import warnings

    from reverie.sim import tasks
    from reverie.sim.gym_adapters import arm_gym_id

    registered = {k for k in gym.registry if k.startswith("reverie/")}  # `import reverie.sim` registered them
    assert registered == {arm_gym_id(t) for t in (*tasks.TASKS, "all")} == {
        "reverie/ArmTouch-v0", "reverie/ArmPush-v0", "reverie/ArmLift-v0", "reverie/ArmAll-v0"}
    for gym_id in sorted(registered):
        env = gym.make(gym_id, render_mode="rgb_array", time_limit=3, image_size=(24, 24))
        with warnings.catch_warnings():
            # Any complaint of check_env fails the test, except that `state` (joint angles) has no bounds.
            warnings.simplefilter("error")
            warnings.filterwarnings("ignore", message=".*observation space (minimum|maximum) value is")
            check_env(env.unwrapped)
        obs, info = env.reset(seed=0)
        assert obs in env.observation_space and env.render().shape == (24, 24, 3)
        assert env.unwrapped.metadata["render_fps"] == 10.0  # the arm's control rate
        truncated = terminated = False
        for _ in range(3):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert truncated and not terminated  # the arm's own time_limit, no TimeLimit wrapper on top
        env.close()
    task = gym.make("reverie/ArmPush-v0", preset="randomized", render=False).unwrapped.env.cfg
    assert (task.task, task.preset) == ("push", "randomized")


def test_gymnasium_imports_reverie_when_the_id_names_the_module():
    import subprocess
    import sys

    code = ("import gymnasium as gym; env = gym.make('reverie.sim:reverie/ArmLift-v0', render=False); "
            "print(env.reset(seed=0)[0]['instruction'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "cube" in out.stdout


def test_unknown_gym_namespace_names_the_module_form(tmp_path, monkeypatch):
    # A package that registers its namespace on import, as gym_pusht does.
    (tmp_path / "reverie_plugin_pkg.py").write_text(
        "import gymnasium as gym\n"
        "gym.register('reverie_plugin_pkg/Tiny-v0', entry_point='gymnasium.envs.classic_control:CartPoleEnv')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"gym/<module>:<id>.*env=gym/reverie_plugin_pkg:reverie_plugin_pkg/Tiny-v0"):
        make("gym/reverie_plugin_pkg/Tiny-v0")
    # ... and the form it names works: gymnasium imports the module, which registers the namespace
    env = make("gym/reverie_plugin_pkg:reverie_plugin_pkg/Tiny-v0", render_mode="rgb_array", size=(8, 8))
    assert env.action_spec().shape == (2,)
    env.close()
    with pytest.raises(ConfigError, match="cannot be imported"):
        make("gym/no_such_package_xyz:no_such_package_xyz/Tiny-v0")
    with pytest.raises(ConfigError, match="registered no gymnasium namespace 'elsewhere'"):
        make("gym/reverie_plugin_pkg:elsewhere/Tiny-v0")
