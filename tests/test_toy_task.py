"""A sim task added from outside sim/: one ArmTask subclass and one registration. Goal draws,
instruction parsing, success, shaped reward and the scripted plan all come from the object."""

from __future__ import annotations

import numpy as np
import pytest

from reverie.errors import ConfigError
from reverie.sim import tasks
from reverie.sim.arm import CUBE_HALF
from reverie.sim.scripted_plan import CLOSED, HOVER_Z, Waypoint
from reverie.sim.tasks import registry
from reverie.sim.tasks.task import ArmTask


class Hover(ArmTask):
    """hover over the {colour} cube: the gripper above it, not touching."""

    name = "hover"
    templates = {"train": ["hover over the {colour} cube"], "heldout": ["hold still above the {colour} block"]}

    def success(self, tracker) -> bool:
        above = tracker.phys.grasp_pos() - tracker.phys.cube_pos(tracker.goal.colour)
        return bool(np.linalg.norm(above[:2]) < 0.01 and above[2] > CUBE_HALF + 0.03)

    def progress(self, tracker) -> float:
        return 0.0

    def plan(self, goal, phys, colour, natural):
        return [Waypoint(phys.cube_pos(colour) + [0, 0, HOVER_Z], CLOSED, natural, name="above")]


@pytest.fixture
def hover():
    registry.register(Hover())
    yield
    registry.unregister("hover")


def test_a_registered_task_is_drawn_parsed_scored_and_planned(hover):
    goal = tasks.sample_goal("hover", np.random.default_rng(0))
    assert goal.task == "hover" and goal.direction is None
    text = tasks.sample_instruction(goal, np.random.default_rng(0), "heldout")
    assert tasks.parse_instruction(text) == goal and goal.canonical() == f"hover over the {goal.colour} cube"
    from reverie.sim.arm import ArmPhysics

    phys = ArmPhysics(seed=0)
    try:
        phys.reset(0)
        tracker = tasks.TaskTracker(goal, phys)
        assert tracker.success() is False and 0.0 <= tracker.shaped() < 0.5
        plan = registry.get("hover").plan(goal, phys, goal.colour, 0.0)
        assert [w.name for w in plan] == ["above"]
    finally:
        phys.close()


def test_registering_leaves_the_built_in_tasks_and_their_order():
    assert tasks.TASKS == registry.names() == ("touch", "push", "lift")


def test_an_unknown_task_is_an_error_naming_the_known_tasks():
    with pytest.raises(ConfigError, match="unknown arm task 'wave'.*touch, push, lift"):
        registry.get("wave")
    with pytest.raises(ConfigError, match="unknown arm task 'wave'"):
        tasks.TaskTracker(tasks.Goal("wave", "red"), phys=None)  # no silent fall-through to lift
    with pytest.raises(ConfigError, match="touch, push, lift or all"):
        tasks.sample_goal("wave", np.random.default_rng(0))
