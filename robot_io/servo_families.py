"""The servo families reverie knows, by name. Adding one is one line here (or `register()` from
outside, as tests/test_toy_servo_family.py does); nothing else in robot_io names a family.

Each entry is "module:attribute", imported on first use, so a family's module may import the
interface (robot_io/servo_family.py) without an import cycle through this table.
"""

from __future__ import annotations

import importlib

from reverie.robot_io.servo_family import ServoFamily

BUILT_IN = {
    "feetech": "reverie.robot_io.feetech.family:FAMILY",
    "dynamixel": "reverie.robot_io.dynamixel.family:FAMILY",
}
_loaded: dict[str, ServoFamily] = {}


def names() -> tuple[str, ...]:
    return tuple(dict.fromkeys([*BUILT_IN, *_loaded]))


def find(name: str) -> ServoFamily | None:
    """The family called `name`, or None; callers raise the error their user should see."""
    if name not in _loaded and name in BUILT_IN:
        module, attr = BUILT_IN[name].split(":")
        _loaded[name] = getattr(importlib.import_module(module), attr)
    return _loaded.get(name)


def register(family: ServoFamily) -> None:
    _loaded[family.name] = family


def unregister(name: str) -> None:
    """Forget a family registered from outside (tests); built-in ones load again on use."""
    _loaded.pop(name, None)
