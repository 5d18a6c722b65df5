"""dm_env adapters both ways, held to dm_env's own conformance tests (dm_env.test_utils)."""

import dm_env
import numpy as np
import pytest
from absl.testing import absltest
from dm_env import specs, test_utils

from reverie.sim import DmEnvToReverie, ReverieToDmEnv, make
from reverie.specs import StepType


class Catch(dm_env.Environment):
    """A ball falls down a 5x5 image; DiscreteArray(3) moves the paddle (left, stay, right). The
    observation has an image, a vector and an instruction; catching it terminates with reward 1."""

    def __init__(self):
        self.rng, self.started = np.random.default_rng(0), False

    def _obs(self):
        board = np.zeros((5, 5), np.uint8)
        board[self.ball[0], self.ball[1]] = board[4, self.paddle] = 255
        return {"board": board, "paddle": np.array([self.paddle], np.int32), "task": np.array("catch", object)}

    def reset(self):
        self.ball, self.paddle, self.started = [0, int(self.rng.integers(5))], 2, True
        return dm_env.restart(self._obs())

    def step(self, action):
        if not self.started:
            return self.reset()
        self.paddle = int(np.clip(self.paddle + int(action) - 1, 0, 4))
        self.ball[0] += 1
        if self.ball[0] == 4:
            self.started = False
            return dm_env.termination(float(self.ball[1] == self.paddle), self._obs())
        return dm_env.transition(0.0, self._obs())

    def observation_spec(self):
        return {"board": specs.BoundedArray((5, 5), np.uint8, 0, 255, "board"),
                "paddle": specs.BoundedArray((1,), np.int32, 0, 4, "paddle"),
                "task": specs.StringArray((), name="task")}

    def action_spec(self):
        return specs.DiscreteArray(3, name="action")


# --- reverie -> dm_env: dm_env's own test suite -------------------------------------------------------

class ArmTouchIsADmEnv(test_utils.EnvironmentTestMixin, absltest.TestCase):
    def make_object_under_test(self):  # 20 default actions cross several 4-step episodes
        return ReverieToDmEnv(make("arm/touch", time_limit=4, image_size=(24, 24)), seed=0)


class DmControlIsADmEnv(test_utils.EnvironmentTestMixin, absltest.TestCase):
    def make_object_under_test(self):  # 1000 physics steps / action repeat 100: 10-step episodes
        return ReverieToDmEnv(make("dmc/cartpole-balance", action_repeat=100, size=(24, 24)), seed=0)


class CatchRoundTripIsADmEnv(test_utils.EnvironmentTestMixin, absltest.TestCase):
    def make_object_under_test(self):
        return ReverieToDmEnv(DmEnvToReverie(Catch()))


def test_first_steps_carry_none_and_the_reverie_env_keeps_numbers():
    inner = make("arm/touch", time_limit=2, image_size=(24, 24))
    env = ReverieToDmEnv(inner, seed=1, instruction="touch the blue cube")
    first = env.reset()
    assert first.first() and first.reward is None and first.discount is None
    # reverie's own TimeStep keeps 0.0 / 1.0 on FIRST (its recorders store numbers)
    assert env.timestep.reward == 0.0 and env.timestep.discount == 1.0
    assert first.observation["instruction"] == "touch the blue cube" and env.timestep.info["colour"] == "blue"
    steps = [env.step(np.zeros(6, np.float32)) for _ in range(2)]
    assert [s.step_type for s in steps] == [dm_env.StepType.MID, dm_env.StepType.LAST]
    assert steps[-1].discount == 1.0 and isinstance(steps[-1].reward, float)  # time limit: truncation
    assert np.broadcast_to(env.action_spec().minimum, (6,)).tolist() == [-1.0] * 6
    # episode k is seeded seed + k: a second adapter with the same seed meets the same scenes
    again = ReverieToDmEnv(make("arm/touch", time_limit=2, image_size=(24, 24)), seed=1,
                           instruction="touch the blue cube")
    np.testing.assert_array_equal(again.reset().observation["image/front"], first.observation["image/front"])
    env.close()
    again.close()


# --- dm_env -> reverie ----------------------------------------------------------------------------

def test_dm_env_into_reverie_maps_images_state_instruction_and_discrete_actions():
    env = DmEnvToReverie(Catch())
    spec = env.observation_spec()
    assert set(spec) == {"image/board", "state", "instruction"}
    assert spec["image/board"].shape == (5, 5, 3) and spec["state"].shape == (1,)
    assert env.action_spec().shape == (3,) and env.action_spec().minimum == -1.0
    ts = env.reset()
    assert ts.step_type == StepType.FIRST and ts.reward == 0.0 and ts.discount == 1.0
    assert ts.observation["instruction"] == "catch" and ts.info["success"] is None
    for key, s in spec.items():
        s.validate(ts.observation[key], key)
    ball = int(np.argmax(ts.observation["image/board"][0, :, 0]))
    while not ts.last():  # scores: argmax picks left / stay / right toward the ball's column
        paddle = int(ts.observation["state"][0])
        ts = env.step(np.eye(3, dtype=np.float32)[1 + int(np.sign(ball - paddle))])
    assert ts.reward == 1.0 and ts.discount == 0.0
    assert env.step(np.zeros(3)).first()  # past the end: a new episode


def test_dm_control_suite_into_reverie_rescales_and_reseeds():
    from dm_control import suite

    raw = suite.load("quadruped", "walk")
    env = DmEnvToReverie(raw, instruction="walk forward")
    low, high = raw.action_spec().minimum, raw.action_spec().maximum
    assert not np.allclose(high, 1.0)
    a = env.reset(seed=4)
    env.step(np.ones(12, np.float32))
    np.testing.assert_allclose(raw.physics.data.ctrl, high)
    env.step(-np.ones(12, np.float32))
    np.testing.assert_allclose(raw.physics.data.ctrl, low)
    b = env.reset(seed=4)  # task.random re-seeded in place: the same initial state
    np.testing.assert_array_equal(a.observation["state"], b.observation["state"])
    assert a.observation["instruction"] == "walk forward"
    with pytest.raises(Exception, match="action shape"):
        env.step(np.zeros(3))
    env.close()
