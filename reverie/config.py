"""Hydra composition for subcommands: `compose("train_wm", ["preset=tiny", "data=a.zarr"])`.

We use hydra's compose API rather than `@hydra.main` so commands stay plain functions (testable,
no working-directory changes) while configs keep hydra's defaults lists and override grammar.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from reverie.errors import ConfigError


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split argv into positional words and `key=value` overrides."""
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    positional = [a for a in argv if a not in overrides]
    return positional, overrides


def compose(name: str, overrides: list[str] = (), choices: bool = False) -> DictConfig:
    """Compose `reverie/conf/<name>.yaml` with overrides; unknown keys are errors that say so.

    choices=True adds `choices`: the option picked in each config group (e.g. {"preset": "cpu"}),
    for commands that pass a group's name on to another command."""
    from hydra import compose as hydra_compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("reverie.conf", version_base="1.3"):
            cfg = hydra_compose(config_name=name, overrides=list(overrides), return_hydra_config=choices)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(
            f"bad override for `{name}`: {e}\n"
            f"Overrides are key=value; run with --help to see the keys this command takes.") from e
    OmegaConf.set_readonly(cfg, False)
    if choices:
        picked = OmegaConf.to_container(cfg.hydra.runtime.choices)
        OmegaConf.set_struct(cfg, False)
        del cfg["hydra"]
        cfg.choices = {k: v for k, v in picked.items() if not k.startswith("hydra")}
    return cfg


def show(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
