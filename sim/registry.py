"""Environment names -> constructors, imported on use.

`make("arm/touch")`, `make("arm/push", preset="randomized")`, `make("dmc/walker-walk")`,
`make("gym/CartPole-v1")`, `make("gym/gym_pusht:gym_pusht/PushT-v0")` (imports gym_pusht, which registers
it), `make("robot/so101_sim", link="/tmp/reverie-arm")` (a servo arm, physical
or the virtual one of `reverie sim serve-bus`). The part before the slash picks a family; the rest is
passed on.
"""

from __future__ import annotations

import importlib

from reverie.errors import ConfigError, did_you_mean

# family -> "module:function(name_rest, **kwargs) -> Env"
FAMILIES = {
    "arm": "reverie.sim.arm_env:make_arm_env",
    "dmc": "reverie.sim.dmc:make_dmc_env",
    "gym": "reverie.sim.gym_adapters:make_gym_env",
    "robot": "reverie.robot_io.robot_env:make_robot_env",
}


def family_of(name: str) -> str:
    """The family of an environment name, or the error that says how names go."""
    family, _, rest = name.partition("/")
    if family not in FAMILIES or not rest:
        raise ConfigError(
            f"unknown environment {name!r}{did_you_mean(family, FAMILIES) if rest else ''}: use <family>/<task> "
            f"with family one of {sorted(FAMILIES)} (for example arm/touch, dmc/walker-walk, gym/CartPole-v1, "
            "robot/so101_sim)")
    return family


def make(name: str, **kwargs):
    module, func = FAMILIES[family_of(name)].split(":")
    return getattr(importlib.import_module(module), func)(name.partition("/")[2], **kwargs)
