"""The sim arm: ArmPhysics contract, randomisation presets, tasks and the ArmEnv API."""

import numpy as np
import pytest

from reverie.errors import ConfigError, ReverieError
from reverie.sim import randomization, tasks
from reverie.sim.arm import CUBE_HALF, CUBE_MIN_GAP, CUBE_X, CUBE_Y, HOME, JOINT_NAMES, ArmPhysics
from reverie.sim.arm_env import make_arm_env
from reverie.sim.registry import make
from reverie.specs import StepType


@pytest.fixture(scope="module")
def phys():
    p = ArmPhysics(preset="nominal", seed=0, image_size=(48, 40), cameras=("front", "wrist"))
    yield p
    p.close()


@pytest.fixture(scope="module")
def env():
    e = make_arm_env("all", seed=0)
    yield e
    e.close()


# --- ArmPhysics -----------------------------------------------------------------------------------
def test_physics_contract(phys):
    assert JOINT_NAMES == ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
    assert phys.lower.shape == phys.upper.shape == (6,) and np.all(phys.lower < phys.upper)
    phys.reset(seed=3)
    np.testing.assert_allclose(phys.qpos(), HOME, atol=1e-9)
    assert phys.qpos().dtype == np.float64 and phys.qvel().shape == (6,)
    assert 0.0 <= phys.gripper_opening() <= 1.0
    for camera in ("front", "wrist"):
        image = phys.render(camera)
        assert image.shape == (48, 40, 3) and image.dtype == np.uint8 and image.std() > 5  # a scene, not blank


def test_cubes_placed_apart_on_the_table(phys):
    for seed in range(5):
        phys.reset(seed=seed)
        xy = np.stack([phys.cube_pos(c)[:2] for c in phys.cube_names])  # (3, 2)
        assert np.all((xy[:, 0] >= CUBE_X[0]) & (xy[:, 0] <= CUBE_X[1]))
        assert np.all((xy[:, 1] >= CUBE_Y[0]) & (xy[:, 1] <= CUBE_Y[1]))
        gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1)[np.triu_indices(3, 1)]
        assert gaps.min() >= CUBE_MIN_GAP
        assert all(abs(phys.cube_pos(c)[2] - CUBE_HALF) < 1e-6 for c in phys.cube_names)
    phys.reset(seed=1)
    a = phys.cube_pos("red")
    phys.reset(seed=2)
    assert not np.allclose(a, phys.cube_pos("red"))


def test_servos_track_targets_within_torque_limit(phys):
    phys.reset(seed=0)
    target = HOME + np.array([0.4, 0.3, -0.3, 0.2, 0.5, -0.6])
    phys.set_targets(target)
    phys.step(1.0)
    np.testing.assert_allclose(phys.qpos(), target, atol=0.03)
    # Targets beyond the range are clipped like a servo's angle limits.
    phys.set_targets(phys.upper + 1.0)
    np.testing.assert_array_equal(phys.targets(), phys.upper)
    # Forcing the arm into the table: the STS3215 stall torque (2.94 N m) caps every joint.
    phys.set_targets([0.0, 1.75, 1.5, 1.0, 0.0, 0.0])
    peak = 0.0
    for _ in range(20):
        phys.step(0.02)
        peak = max(peak, np.abs(phys.data.actuator_force[phys.actuators]).max())
    assert peak <= 2.94 + 1e-6


def test_gripper_opening_follows_the_horn(phys):
    phys.reset(seed=0)
    openings = []
    for q in (phys.lower[5], 0.8, phys.upper[5]):
        phys.set_targets(np.append(HOME[:5], q))
        phys.step(0.6)
        openings.append(phys.gripper_opening())
    assert openings[0] < 0.05 and openings[2] > 0.95 and openings[0] < openings[1] < openings[2]


def test_bad_physics_options_raise_config_errors():
    with pytest.raises(ConfigError, match="preset"):
        ArmPhysics(preset="nominall")
    with pytest.raises(ConfigError, match="camera"):
        ArmPhysics(cameras=("top",))
    with pytest.raises(ConfigError, match="image_size"):
        ArmPhysics(image_size=(4, 64))


# --- randomisation ----------------------------------------------------------------------------------
def test_randomized_preset_varies_within_ranges_and_shifted_lies_outside():
    rng = np.random.default_rng(0)
    r = randomization.RANDOMIZED
    draws = [randomization.sample("randomized", rng) for _ in range(50)]
    for field in ("light_scale", "friction_scale", "mass_scale", "gain_scale", "latency_steps", "state_noise",
                  "image_noise"):
        values = np.array([getattr(v, field) for v in draws])
        lo, hi = getattr(r, field)
        assert values.min() >= lo and values.max() <= hi and values.std() > 0, field
    assert {v.latency_steps for v in draws} == {0, 1, 2}
    s = randomization.SHIFTED
    assert s.table_material not in r.table_materials
    assert s.latency_steps > r.latency_steps[1]
    for field in ("light_scale", "friction_scale", "mass_scale", "gain_scale", "state_noise", "image_noise"):
        lo, hi = getattr(r, field)
        assert not lo <= getattr(s, field) <= hi, field
    assert np.abs(s.camera_shift).max() > r.camera_shift
    assert randomization.sample("nominal", rng) == randomization.NOMINAL


def test_variations_reach_the_model_and_do_not_compound():
    p = ArmPhysics(preset="randomized", seed=0)
    kp0 = p.editor.nominal["gainprm"][p.actuators, 0]
    for seed in range(3):
        p.reset(seed=seed)
        v = p.variation
        np.testing.assert_allclose(p.model.actuator_gainprm[p.actuators, 0], kp0 * v.gain_scale)
        np.testing.assert_allclose(p.model.geom_rgba[p.editor.cube_geoms["red"], :3], v.cube_rgb["red"])
        # Derived inverse weights follow the new mass (stale ones once launched pushed cubes off the table).
        cube = p.cube_bodies["red"]
        np.testing.assert_allclose(p.model.body_invweight0[cube, 0], 1 / p.model.body_mass[cube], rtol=1e-6)
    p.close()


# --- tasks and instructions --------------------------------------------------------------------------
def test_train_and_heldout_paraphrases_are_disjoint_and_parse_back():
    rng = np.random.default_rng(0)
    for task, sets in tasks.TEMPLATES.items():
        assert len(sets["train"]) >= 3 and len(sets["heldout"]) >= 2
        assert not set(sets["train"]) & set(sets["heldout"])
        for template in sets["train"] + sets["heldout"]:
            goal = tasks.Goal(task, "green", "left" if task == "push" else None)
            assert tasks.parse_instruction(tasks.render(template, goal)) == goal
        goal = tasks.sample_goal(task, rng)
        assert tasks.sample_instruction(goal, rng, "heldout") in [tasks.render(t, goal) for t in sets["heldout"]]
    assert tasks.parse_instruction("Push the BLUE cube forward.") == tasks.Goal("push", "blue", "forward")
    with pytest.raises(ConfigError, match="touch the red cube"):
        tasks.parse_instruction("dance with the red cube")
    with pytest.raises(ConfigError, match="instruction_set"):
        tasks.templates("touch", "test")


def test_success_detectors(phys):
    phys.reset(seed=0)
    lift = tasks.TaskTracker(tasks.Goal("lift", "red"), phys)
    push = tasks.TaskTracker(tasks.Goal("push", "red", "left"), phys)
    assert not lift.success() and not push.success()
    a = phys._cube_qadr["red"]
    phys.data.qpos[a + 1] += tasks.PUSH_DISTANCE + 0.005  # slid to the left (+y)
    phys.step(0.002)
    assert push.success() and not tasks.TaskTracker(tasks.Goal("push", "red", "right"), phys).success()
    assert 0.49 <= push.shaped() < 1.0 and lift.shaped() < 0.5  # push progress complete, lift none
    phys.data.qpos[a + 2] += tasks.LIFT_HEIGHT + 0.01  # floating, but nothing holds it
    phys.step(0.002)
    assert not lift.success()


def test_touch_must_rest_on_the_cube(phys, monkeypatch):
    phys.reset(seed=0)
    touch = tasks.TaskTracker(tasks.Goal("touch", "green"), phys)
    monkeypatch.setattr(phys, "touching", lambda colour: colour == "green")
    assert [touch.success() for _ in range(tasks.TOUCH_STEPS)] == [False] * (tasks.TOUCH_STEPS - 1) + [True]
    knocked = tasks.TaskTracker(tasks.Goal("touch", "green"), phys)
    phys.data.qpos[phys._cube_qadr["green"]] += 2 * tasks.TOUCH_DISPLACEMENT  # knocked away, not touched
    phys.step(0.002)
    assert not any(knocked.success() for _ in range(3))


# --- ArmEnv -------------------------------------------------------------------------------------------
def test_specs_match_observations(env):
    ts = env.reset(seed=0)
    spec = env.observation_spec()
    assert set(spec) == set(ts.observation) == {"image/front", "state", "instruction"}
    for key, s in spec.items():
        s.validate(ts.observation[key], key)
    act = env.action_spec()
    assert act.shape == (6,) and act.dtype == "float32" and (act.minimum, act.maximum) == (-1.0, 1.0)
    ts = env.step(act.zeros())
    for key, s in spec.items():
        s.validate(ts.observation[key], key)
    assert set(ts.info) >= {"success", "timestamp"} and isinstance(ts.info["timestamp"], float)


def test_episode_structure_time_limit_and_auto_reset():
    e = make_arm_env("touch", time_limit=5, image_size=(32, 32))
    ts = e.reset(seed=1)
    assert ts.step_type == StepType.FIRST and ts.reward == 0.0
    types = []
    for _ in range(5):
        ts = e.step(np.zeros(6, np.float32))
        types.append(ts.step_type)
    assert types == [StepType.MID] * 4 + [StepType.LAST] and ts.discount == 1.0 and not ts.info["success"]
    assert e.step(np.zeros(6, np.float32)).first()  # stepping past the end starts a new episode
    e.close()


def test_actions_are_bounded_joint_deltas(env):
    env.reset(seed=2)
    start = env.commanded
    env.step(np.zeros(6, np.float32))
    np.testing.assert_allclose(env.commanded, start)  # a zero action holds the targets
    env.step(np.array([2.0, -1, 0, 0, 0, 0], np.float32))  # clipped to [-1, 1]
    np.testing.assert_allclose(env.commanded - start, [0.15, -0.15, 0, 0, 0, 0], atol=1e-9)
    with pytest.raises(ReverieError, match="shape"):
        env.step(np.zeros(5, np.float32))
    with pytest.raises(ReverieError, match="NaN"):
        env.step(np.full(6, np.nan, np.float32))


def test_seeds_make_episodes_reproducible():
    def rollout(seed):
        e = make_arm_env("push", preset="randomized")
        rng = np.random.default_rng(7)
        ts = e.reset(seed=seed)
        frames, states = [ts.observation["image/front"]], [ts.observation["state"]]
        for _ in range(6):
            ts = e.step(rng.uniform(-1, 1, 6).astype(np.float32))
            frames.append(ts.observation["image/front"])
            states.append(ts.observation["state"])
        instruction = ts.observation["instruction"]
        e.close()
        return np.stack(frames), np.stack(states), instruction

    a, b, c = rollout(11), rollout(11), rollout(12)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    assert not np.array_equal(a[0][0], c[0][0])


def test_instruction_given_at_reset_sets_the_goal(env):
    ts = env.reset(seed=0, instruction="hoist the blue block")
    assert ts.observation["instruction"] == "hoist the blue block"
    assert env.goal == tasks.Goal("lift", "blue")
    with pytest.raises(ConfigError, match="instruction"):
        env.reset(instruction="make me a sandwich")


def test_latency_delays_actions():
    e = make_arm_env("touch", preset="shifted", image_size=(16, 16))  # shifted: 3 steps of latency
    e.reset(seed=0)
    start = e.phys.targets()
    moves = []
    for _ in range(4):
        e.step(np.array([1, 0, 0, 0, 0, 0], np.float32))
        moves.append(e.phys.targets()[0] - start[0])
    assert moves[:3] == [0.0, 0.0, 0.0] and moves[3] > 0
    # What the servos will hold once the delayed actions land: four steps of +max_delta (clipped to
    # the lead bound around the measured angle), ahead of what they hold now.
    assert e.commanded[0] > e.phys.targets()[0] + 0.2
    # Shifted also adds sensor noise: 8 grey levels per pixel, 0.02 rad per joint.
    ts = e.reset(seed=0)
    noise = ts.observation["image/front"].astype(np.float64) - e.phys.render("front")
    assert 5 < noise.std() < 10
    assert 0 < np.abs(ts.observation["state"][:5] - e.phys.qpos()[:5]).max() < 0.1
    e.close()


def test_registry_options_and_errors():
    e = make("arm/lift", image_size=(24, 32), cameras=("front", "wrist"), reward="shaped")
    ts = e.step(np.zeros(6, np.float32))  # first step resets
    assert ts.first() and ts.observation["image/wrist"].shape == (24, 32, 3)
    ts = e.step(np.zeros(6, np.float32))
    assert 0.0 <= ts.reward < 1.0
    e.close()
    blind = make("arm/push", render=False)
    ts = blind.reset(seed=0)
    assert set(ts.observation) == set(blind.observation_spec()) == {"state", "instruction"}
    blind.close()
    with pytest.raises(ConfigError, match="arm task"):
        make("arm/juggle")
    with pytest.raises(ConfigError, match="valid options"):
        make("arm/touch", colour="red")
    with pytest.raises(ConfigError, match="max_delta"):
        make("arm/touch", max_delta=(0.1,) * 5)
