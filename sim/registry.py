"""Environment names -> constructors, imported on use.

`make("arm/touch")`, `make("arm/push", preset="randomized")`, `make("dmc/walker-walk")`,
`make("gym/CartPole-v1")`, `make("gym/gym_pusht:gym_pusht/PushT-v0")` (imports gym_pusht, which registers
it), `make("robot/so101_sim", link="/tmp/reverie-arm")` (a servo arm, physical
or the virtual one of `reverie sim serve-bus`). The part before the slash picks a family; the rest is
passed on.
"""

from __future__ import annotations

import importlib

from reverie.errors import ConfigError

# family -> "module:function(name_rest, **kwargs) -> Env"
FAMILIES = {
    "arm": "reverie.sim.arm_env:make_arm_env",
    "dmc": "reverie.sim.dmc:make_dmc_env",
    "gym": "reverie.sim.gym_adapters:make_gym_env",
    "robot": "reverie.robot_io.robot_env:make_robot_env",
}


def make(name: str, **kwargs):
    family, _, rest = name.partition("/")
    if family not in FAMILIES or not rest:
        raise ConfigError(
            f"unknown environment {name!r}: use <family>/<task> with family one of "
            f"{sorted(FAMILIES)} (for example arm/touch, dmc/walker-walk, gym/CartPole-v1, robot/so101_sim)")
    module, func = FAMILIES[family].split(":")
    return getattr(importlib.import_module(module), func)(rest, **kwargs)
