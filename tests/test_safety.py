"""Safety filter, watchdog and arm-config validation (no serial peer needed)."""

import math
import threading

import numpy as np
import pytest

from reverie.errors import ConfigError
from reverie.robot_io.config import arm_from_mapping, load_arm
from reverie.robot_io.safety import SafetyFilter, Watchdog


def _filter():
    return SafetyFilter(lower=[-1.0, -1.0], upper=[1.0, 1.0], max_step=[0.2, 0.2], max_velocity=[3.0, 3.0])


def test_goal_is_clipped_to_joint_limits_then_to_a_step_from_present():
    goal, clamped = _filter().filter([5.0, 0.05], present=[0.95, 0.0])
    np.testing.assert_allclose(goal, [1.0, 0.05])
    assert clamped.limits.tolist() == [True, False] and not clamped.step.any()

    goal, clamped = _filter().filter([-1.0, 0.9], present=[0.0, 0.0])
    np.testing.assert_allclose(goal, [-0.2, 0.2])
    assert clamped.step.tolist() == [True, True]


def test_arm_outside_its_limits_is_brought_back_gradually_not_yanked():
    goal, _ = _filter().filter([0.0, 0.0], present=[1.6, 0.0])
    np.testing.assert_allclose(goal, [1.4, 0.0])  # one max_step back toward the limit


def test_velocity_limit_bounds_change_between_consecutive_goals():
    goal, clamped = _filter().filter([0.2, 0.0], present=[0.0, 0.0], previous_goal=[0.0, 0.0], dt=1 / 30)
    np.testing.assert_allclose(goal, [0.1, 0.0])
    assert clamped.velocity.tolist() == [True, False] and clamped.any


def test_non_finite_goal_holds_present_position():
    goal, _ = _filter().filter([np.nan, np.inf], present=[0.3, -0.4])
    np.testing.assert_allclose(goal, [0.3, -0.4])


def test_output_keeps_max_step_when_the_previous_goal_is_stale():
    """The issue's case: goal 0.1 at present 0.1 after a goal of 0.5 the arm never reached. The old
    filter clamped around the previous goal last and sent 0.433, 0.333 from the joint."""
    f = SafetyFilter(lower=[-1.0], upper=[1.0], max_step=[0.25], max_velocity=[2.0])
    goal, clamped = f.filter([0.1], present=[0.1], previous_goal=[0.5], dt=1 / 30)
    np.testing.assert_allclose(goal, [0.1])  # stale previous goal: the velocity window is dropped
    assert not clamped.any
    goal, clamped = f.filter([0.1], present=[0.1], previous_goal=[0.3], dt=1 / 30)
    np.testing.assert_allclose(goal, [0.3 - 2.0 / 30])  # reachable window: velocity and step both hold
    assert clamped.velocity.tolist() == [True]


def test_arm_outside_its_limits_returns_at_the_velocity_limit():
    f = SafetyFilter(lower=[-1.0], upper=[1.0], max_step=[0.25], max_velocity=[1.5])
    goal, clamped = f.filter([0.0], present=[1.6], previous_goal=[1.6], dt=0.1)
    np.testing.assert_allclose(goal, [1.45])  # toward the limits, 0.15 (velocity) < 0.25 (step)
    goal, _ = f.filter([5.0], present=[1.6])  # a goal farther out never moves the arm farther out
    np.testing.assert_allclose(goal, [1.35])


def random_cases(rng, n: int, dt: float) -> dict:
    """n single-joint cases at one control period: limits, step and velocity bounds, and present
    positions, previous goals and goals drawn from mixtures that hit every regime (inside, on and
    outside the limits; previous goals near, far and stale; goals feasible, far, non-finite)."""
    lower = rng.uniform(-3.0, 0.5, n)
    upper = lower + rng.uniform(0.05, 3.0, n)
    max_step = rng.uniform(0.005, 0.6, n)
    max_velocity = rng.uniform(0.05, 6.0, n)
    width = upper - lower

    def pick(*options):
        return np.choose(rng.integers(0, len(options), n), options)

    present = pick(rng.uniform(lower, upper), rng.uniform(lower - width, upper + width), lower, upper,
                   upper + rng.uniform(0, 2 * max_step), lower - rng.uniform(0, 2 * max_step))
    previous = pick(present, present + rng.normal(0, 1, n) * max_step, rng.uniform(lower - 1, upper + 1),
                    present + rng.choice([-1, 1], n) * (max_step + max_velocity * dt) * rng.uniform(0.9, 1.1, n))
    goal = pick(rng.uniform(lower - 2, upper + 2), present + rng.normal(0, 1, n) * max_step, previous,
                present, lower, upper, rng.uniform(lower, upper))
    goal = np.where(rng.random(n) < 0.02, rng.choice([np.nan, np.inf, -np.inf], n), goal)
    return dict(lower=lower, upper=upper, max_step=max_step, max_velocity=max_velocity, dt=dt,
                present=present, previous=previous, goal=goal)


def check_constraints(c: dict, out: np.ndarray, with_previous: bool) -> None:
    """Every constraint of the SafetyFilter contract, checked on every output from the inequalities
    themselves over candidate points, not from the filter's interval arithmetic."""
    eps = 1e-9
    lower, upper, present, step = c["lower"], c["upper"], c["present"], c["max_step"]
    reach = c["max_velocity"] * c["dt"]
    goal = np.where(np.isfinite(c["goal"]), c["goal"], present)  # non-finite: hold where the arm is
    wanted = np.clip(goal, lower, upper)
    assert np.all(np.isfinite(out))
    # step, always
    assert np.all(np.abs(out - present) <= step + eps)
    # limits: inside them, or between the arm and them when the arm is outside (never farther out)
    def within_limits(x):
        return (x >= np.minimum(lower, present) - eps) & (x <= np.maximum(upper, present) + eps)
    assert np.all(within_limits(out))
    inside = (present >= lower) & (present <= upper)
    assert np.all((out[inside] >= lower[inside] - eps) & (out[inside] <= upper[inside] + eps))
    # Candidates: a grid within a step of the arm plus every interval end, so any intersection of the
    # constraint intervals holds one of them.
    ends = [lower, upper, present - step, present + step, wanted, c["previous"] - reach, c["previous"] + reach]
    candidates = np.concatenate([present + np.linspace(-1, 1, 101)[:, None] * step, np.stack(ends)])
    allowed = (np.abs(candidates - present) <= step + eps) & within_limits(candidates)
    if with_previous:
        # velocity, wherever a point meeting the other constraints is within reach of the previous goal
        near = np.abs(candidates - c["previous"]) <= reach + eps
        fits = (allowed & near).any(axis=0)
        assert np.all(np.abs(out - c["previous"])[fits] <= reach[fits] + eps)
        allowed &= np.where(fits, near, True)
    # nearest: no allowed candidate is closer to the limit-clipped goal than the output
    gap = np.where(allowed, np.abs(candidates - wanted), np.inf).min(axis=0)
    assert np.all(np.abs(out - wanted) <= gap + eps)


@pytest.mark.parametrize("dt", [None, 1 / 100, 1 / 30, 1 / 10, 0.5])
def test_every_output_satisfies_every_constraint_on_random_cases(dt):
    """Randomised property test, seeded: 10,000 cases per control period (None: no previous goal)."""
    with_previous = dt is not None
    rng = np.random.default_rng(int(1000 * (dt or 0)))
    c = random_cases(rng, 10_000, dt or 1 / 30)
    f = SafetyFilter(c["lower"], c["upper"], c["max_step"], c["max_velocity"])
    out, clamped = f.filter(c["goal"], c["present"], c["previous"] if with_previous else None, dt)
    check_constraints(c, out, with_previous)
    # a goal that breaks nothing passes unchanged and is not reported as clamped
    ok = np.isfinite(c["goal"]) & (np.abs(c["goal"] - c["present"]) <= c["max_step"]) \
        & (c["goal"] >= c["lower"]) & (c["goal"] <= c["upper"])
    if with_previous:
        ok &= np.abs(c["goal"] - c["previous"]) <= c["max_velocity"] * dt
    assert ok.sum() > 500
    np.testing.assert_array_equal(out[ok], c["goal"][ok])
    assert not (clamped.limits | clamped.step | clamped.velocity)[ok].any()


def test_closed_loop_commands_satisfy_every_constraint():
    """5,000 control steps of a random policy on a crude arm that lags, gets blocked and gets pushed
    by hand: every command written meets the constraints from that step's present and previous goal."""
    rng = np.random.default_rng(7)
    lower, upper = np.array([-1.9, -1.7, -0.1, 0.0]), np.array([1.9, 1.7, 3.0, 1.0])
    max_step, max_velocity, dt = np.array([0.25, 0.25, 0.3, 0.5]), np.array([2.0, 2.0, 1.6, 2.2]), 1 / 30
    f = SafetyFilter(lower, upper, max_step, max_velocity)
    present = rng.uniform(lower - 0.5, upper + 0.5)  # starts anywhere, outside the limits too
    previous = None
    for t in range(5000):
        goal = rng.choice([rng.uniform(lower - 1, upper + 1), present + rng.normal(0, 0.3, 4)])
        out, _ = f.filter(goal, present, previous, dt)
        c = dict(lower=lower, upper=upper, max_step=max_step, max_velocity=max_velocity, dt=dt,
                 present=present, previous=out if previous is None else previous, goal=goal)
        check_constraints(c, out, previous is not None)
        follow = rng.uniform(0, 1, 4) * (rng.random(4) > 0.1)  # lags, and 10% of the time is blocked
        present = present + follow * (out - present)
        present = np.where(rng.random(4) < 0.01, present + rng.normal(0, 0.6, 4), present)  # pushed
        previous = out


def test_watchdog_fires_once_per_stall_and_rearms_on_kick():
    fired = threading.Event()
    calls = []
    dog = Watchdog(0.05, lambda: (calls.append(1), fired.set())).start()
    try:
        dog.kick()
        assert fired.wait(2.0)
        fired.clear()
        assert not fired.wait(0.2)  # silent stall: no repeated firing
        assert len(calls) == 1
        dog.kick()
        assert fired.wait(2.0)
        assert dog.stalls == 2
        dog.pause()
        fired.clear()
        assert not fired.wait(0.2)  # paused between episodes: never fires
    finally:
        dog.stop()


def test_watchdog_keeps_quiet_while_kicked():
    calls = []
    dog = Watchdog(0.1, lambda: calls.append(1)).start()
    try:
        for _ in range(20):
            dog.kick()
            threading.Event().wait(0.01)
    finally:
        dog.stop()
    assert calls == []


def test_shipped_arm_configs_load_and_round_trip_ticks():
    for name in ("so101", "koch", "so101_virtual", "koch_virtual"):
        arm = load_arm(name)
        assert len(arm.joints) == 6 and arm.joints[-1].gripper
        values = np.array(arm.home_pose)
        back = arm.ticks_to_values(arm.values_to_ticks(values))
        np.testing.assert_allclose(back, values, atol=2 * math.pi / 4096)


def test_shipped_arm_configs_read_without_hydra_as_hydra_composes_them():
    """The torch-free runtime reads the robot's own config with read_arm_yaml (defaults lists merged
    here); it must give exactly the arm hydra composes."""
    from reverie.robot_io.config import CONF_DIR, read_arm_yaml

    names = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
    assert len(names) >= 8
    for name in names:
        assert arm_from_mapping(read_arm_yaml(name)) == load_arm(name), name


def _raw(**joint_changes):
    arm = {"name": "t", "protocol": "feetech",
           "joints": [{"name": "a", "id": 1, "model": "sts3215", "limits": [-1, 1], "max_velocity": 1,
                       "max_step": 0.1, "action_scale": 0.05}]}
    arm["joints"][0].update(joint_changes)
    return arm


def test_inverted_limits_name_the_joint_and_the_fix():
    with pytest.raises(ConfigError, match=r"joint 'a'.*inverted.*swap"):
        arm_from_mapping(_raw(limits=[1.0, -1.0]))


@pytest.mark.parametrize("change, match", [
    ({"direction": 2}, "direction"),
    ({"max_velocity": 0}, "max_velocity must be positive"),
    ({"range_ticks": [3000, 1000]}, "range_ticks"),
    ({"limits": [4.0, 5.0]}, "outside the calibrated range"),
])
def test_other_bad_joint_values_are_config_errors(change, match):
    with pytest.raises(ConfigError, match=match):
        arm_from_mapping(_raw(**change))


def test_calibration_overrides_nominal_offsets():
    calib = {"joints": {"a": {"zero_ticks": 2148, "range_ticks": [1000, 3000]}}}
    arm = arm_from_mapping(_raw(), calibration=calib)
    assert arm.joints[0].to_value(2148) == 0.0
    assert arm.joints[0].to_ticks(10.0) == 3000  # kept inside the measured mechanical range


def test_arm_config_round_trips_through_plain_data():
    import json

    arm = load_arm("koch_virtual")
    again = arm_from_mapping(json.loads(json.dumps(arm.to_dict())))
    assert again == arm


def test_calibration_for_another_arm_is_refused():
    with pytest.raises(ConfigError, match=r"no entry for joints \['a'\]"):
        arm_from_mapping(_raw(), calibration={"joints": {"b": {"zero_ticks": 2048, "range_ticks": [0, 4095]}}})
