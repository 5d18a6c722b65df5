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
