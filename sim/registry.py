"""Environment names -> constructors, imported on use.

`make("arm/touch")`, `make("arm/push", preset="randomized")`, `make("dmc/walker-walk")`,
`make("gym/CartPole-v1")`, `make("gym/gym_pusht:gym_pusht/PushT-v0")` (imports gym_pusht, which registers
it), `make("robot/so101_sim", link="/tmp/reverie-arm")` (a servo arm, physical
or the virtual one of `reverie sim serve-bus`). The part before the slash picks a family; the rest is
passed on.
"""

from __future__ import annotations

import dataclasses
import importlib

from reverie.errors import ConfigError, did_you_mean


@dataclasses.dataclass(frozen=True)
class Family:
    """One environment family: how its envs are made, and what `reverie eval` may ask of them."""

    make: str  # "module:function(name_rest, **kwargs) -> Env"
    # evaluation suite -> the env options it adds (policy/evaluate.py runs the ones asked for)
    suites: dict = dataclasses.field(default_factory=lambda: {"train": {}})
    skips_suites: bool = False  # a suite it lacks is skipped with a note (a robot) instead of refused
    # "module:function(text)" raising ConfigError for an instruction= its envs cannot set the goal
    # from; None: any text is only what the policy is told
    check_instruction: str | None = None

    def checked_instruction(self, text: str) -> None:
        if self.check_instruction is not None:
            module, func = self.check_instruction.split(":")
            getattr(importlib.import_module(module), func)(text)


FAMILIES = {
    # The sim arm: held-out paraphrases and the shifted physics preset; instruction= sets the goal.
    "arm": Family("reverie.sim.arm_env:make_arm_env",
                  suites={"train": {"instruction_set": "train"}, "heldout": {"instruction_set": "heldout"},
                          "shifted": {"instruction_set": "train", "preset": "shifted"}},
                  check_instruction="reverie.sim.tasks:parse_instruction"),
    "dmc": Family("reverie.sim.dmc:make_dmc_env"),
    "gym": Family("reverie.sim.gym_adapters:make_gym_env"),
    "robot": Family("reverie.robot_io.robot_env:make_robot_env", skips_suites=True),
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


def family(name: str) -> Family:
    """The Family of an environment name (family_of's error for a bad one)."""
    return FAMILIES[family_of(name)]


def make(name: str, **kwargs):
    module, func = family(name).make.split(":")
    return getattr(importlib.import_module(module), func)(name.partition("/")[2], **kwargs)
