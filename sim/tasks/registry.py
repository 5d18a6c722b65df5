"""The arm tasks by name. Adding one: a module with an ArmTask subclass and one line in BUILT_IN (or
`register()` from outside, as tests/test_toy_task.py does)."""

from __future__ import annotations

from reverie.errors import ConfigError, did_you_mean
from reverie.sim.tasks.lift import Lift
from reverie.sim.tasks.push import Push
from reverie.sim.tasks.task import ArmTask
from reverie.sim.tasks.touch import Touch

BUILT_IN: tuple[ArmTask, ...] = (Touch(), Push(), Lift())  # this order is task=all's draw: keep it
_tasks: dict[str, ArmTask] = {t.name: t for t in BUILT_IN}


def names() -> tuple[str, ...]:
    return tuple(_tasks)


def get(name: str) -> ArmTask:
    task = _tasks.get(name)
    if task is None:
        raise ConfigError(f"unknown arm task {name!r}{did_you_mean(str(name), names())}: the known tasks are "
                          f"{', '.join(names())}")
    return task


def register(task: ArmTask) -> None:
    _tasks[task.name] = task
    _changed()


def unregister(name: str) -> None:
    """Forget a task registered from outside (tests); built-in ones stay."""
    if name not in {t.name for t in BUILT_IN}:
        _tasks.pop(name, None)
        _changed()


def _changed() -> None:
    from reverie.sim.tasks import phrasing

    phrasing.PATTERNS[:] = phrasing.patterns()  # the parser learns the new task's phrasings
