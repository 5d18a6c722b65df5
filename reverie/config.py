"""Hydra composition for subcommands: `compose("train_wm", ["preset=tiny", "data=a.zarr"])`.

We use hydra's compose API rather than `@hydra.main` so commands stay plain functions (testable,
no working-directory changes) while configs keep hydra's defaults lists and override grammar.
"""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig, OmegaConf

from reverie.errors import ConfigError

# Keys that take more than their default's kind: resume (false | true | a run folder) and
# probe_episodes (a number | null: all).
ALSO_TAKES = {"resume": str, "probe_episodes": type(None)}
_DEFAULTS: dict[tuple, DictConfig] = {}  # (config, group choices) -> its defaults: the YAMLs do not change


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split argv into positional words and `key=value` overrides."""
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    positional = [a for a in argv if a not in overrides]
    return positional, overrides


def compose(name: str, overrides: list[str] = (), choices: bool = False) -> DictConfig:
    """Compose `reverie/conf/<name>.yaml` with overrides; unknown keys, and values of another kind
    than the key's default (`episodes=abc`, `image_size=64`), are errors that say so.

    choices=True adds `choices`: the option picked in each config group (e.g. {"preset": "cpu"}),
    for commands that pass a group's name on to another command."""
    from hydra import compose as hydra_compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("reverie.conf", version_base="1.3"):
            cfg = hydra_compose(config_name=name, overrides=list(overrides), return_hydra_config=True)
            picked = OmegaConf.to_container(cfg.hydra.runtime.choices)
            parsed = OverridesParser.create().parse_overrides(list(overrides))
            values = [o for o in parsed if o.key_or_group not in picked and not (o.is_add() or o.is_delete())]
            if values:  # each value against its default, under the same config-group choices
                groups = tuple(o.input_line for o in parsed if o.key_or_group in picked)
                if (name, groups) not in _DEFAULTS:
                    _DEFAULTS[name, groups] = hydra_compose(config_name=name, overrides=list(groups))
                defaults = _DEFAULTS[name, groups]
                for o in values:
                    _check_kind(name, o.key_or_group, OmegaConf.select(defaults, o.key_or_group),
                                OmegaConf.select(cfg, o.key_or_group))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"bad override for `{name}`: {_one_line(str(e))}; overrides are key=value, run "
                          "the command with --help to see the keys it takes") from e
    OmegaConf.set_readonly(cfg, False)
    OmegaConf.set_struct(cfg, False)
    del cfg["hydra"]
    missing = sorted(OmegaConf.missing_keys(cfg))  # `???` in the YAML: the command cannot guess them
    if missing:
        raise ConfigError(f"missing {' '.join(f'{k}=...' for k in missing)} (required by {name}.yaml); run "
                          "the command with --help to see what each key takes")
    if choices:
        cfg.choices = {k: v for k, v in picked.items() if not k.startswith("hydra")}
    else:
        OmegaConf.set_struct(cfg, True)
    return cfg


def _one_line(message: str) -> str:
    """Hydra's message on one line ("Available options in 'preset': cpu, l, ..."), without its search path."""
    parts: list[str] = []
    for line in message.split("\nConfig search path:")[0].splitlines():
        if line.startswith("\t") and parts:  # an option listed under the line before
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line.strip()
        elif line.strip():
            parts.append(line.strip().rstrip("."))
    return "; ".join(parts)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(values) -> bool:
    return len(values) > 0 and all(_number(v) for v in values)


def _fits(default, value) -> bool:
    """Whether `value` is of the kind `default` fixes for its key: null, ??? and strings take anything;
    a number takes numbers, a flag true/false, a list of numbers a list of numbers."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if _number(default):
        return _number(value)
    if isinstance(default, ListConfig):
        return isinstance(value, ListConfig) and (_numbers(value) or not _numbers(default))
    if isinstance(default, DictConfig):
        return isinstance(value, DictConfig)
    return True


def _shown(value) -> str:
    """A value as one writes it in an override."""
    if isinstance(value, (ListConfig, DictConfig)):
        return str(OmegaConf.to_container(value)).replace("'", "")
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _check_kind(name: str, key: str, default, value) -> None:
    if _fits(default, value) or isinstance(value, ALSO_TAKES.get(key.rsplit(".", 1)[-1], ())):
        return
    kind = ("true or false" if isinstance(default, bool) else "a number" if _number(default)
            else "a mapping" if isinstance(default, DictConfig) else "a list of numbers" if _numbers(default)
            else "a list")
    raise ConfigError(f"{key}={_shown(value)} for `{name}`: {key} takes {kind}, e.g. {key}={_shown(default)} "
                      "(its default)")


def show(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
