"""The arm's task family: goals, instructions (train / held-out paraphrases), success and rewards.

Three tasks, one goal per episode: touch the {colour} cube; push the {colour} cube {left|right|forward};
lift the {colour} cube. Each is an object (touch.py, push.py, lift.py; the interface in task.py)
that owns its phrasings, goal draw, success test, shaped progress and scripted plan, looked up by
name in registry.py; an unknown task is a ConfigError naming the known ones. This module is the
public face the env, the server and the tests import.
"""

from __future__ import annotations

import numpy as np

from reverie.errors import ConfigError, did_you_mean
from reverie.sim.tasks import registry
from reverie.sim.tasks.goal import DIRECTIONS, Goal, render  # noqa: F401 (re-exported)
from reverie.sim.tasks.lift import LIFT_HEIGHT  # noqa: F401
from reverie.sim.tasks.phrasing import (INSTRUCTION_SETS, PATTERNS, parse_instruction,  # noqa: F401
                                        sample_instruction, templates)
from reverie.sim.tasks.push import PUSH_DISTANCE, PUSH_SIDEWAYS  # noqa: F401
from reverie.sim.tasks.touch import TOUCH_DISPLACEMENT, TOUCH_STEPS  # noqa: F401
from reverie.sim.tasks.tracker import TaskTracker  # noqa: F401

TASKS = registry.names()  # the built-in tasks, in task=all's draw order
TEMPLATES = {name: registry.get(name).templates for name in TASKS}


def check_task(task: str) -> str:
    known = registry.names()
    if task not in (*known, "all"):
        raise ConfigError(f"unknown arm task {task!r}{did_you_mean(task, (*known, 'all'))}: use one of "
                          f"{', '.join(known)} or all "
                          f"(e.g. arm/touch, task=push)")
    return task


def sample_goal(task: str, rng: np.random.Generator) -> Goal:
    """`task` is a task's name or all (all draws one of the registered tasks uniformly)."""
    task = str(rng.choice(registry.names())) if check_task(task) == "all" else task
    return registry.get(task).sample_goal(rng)
