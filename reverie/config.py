"""Hydra composition for subcommands: `compose("train_wm", ["preset=tiny", "data=a.zarr"])`.

We use hydra's compose API rather than `@hydra.main` so commands stay plain functions (testable,
no working-directory changes) while configs keep hydra's defaults lists and override grammar.
"""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig, OmegaConf

from reverie.cli import cfg_flag
from reverie.errors import ConfigError, closest, did_you_mean

# Keys that take more than their default's kind: resume (false | true | a run folder) and
# probe_episodes (a number | null: all).
ALSO_TAKES = {"resume": str, "probe_episodes": type(None)}
_DEFAULTS: dict[tuple, DictConfig] = {}  # (config, group choices) -> its defaults: the YAMLs do not change


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split argv into positional words and `key=value` overrides."""
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    positional = [a for a in argv if a not in overrides]
    return positional, overrides


def data_list(overrides: list[str]) -> list[str]:
    """`data=a.zarr,b.zarr` is a hydra sweep; rewrite it to the list `data=[a.zarr,b.zarr]`."""
    out = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key in ("data", "+data") and "," in value and not value.startswith("["):
            o = f"{key}=[{','.join(repr(v) for v in value.split(',') if v)}]"
        out.append(o)
    return out


def command_config(name: str, argv: list[str], doc: str, word: str | None = None,
                   choices: bool = False) -> DictConfig | None:
    """The config a hydra-style command runs with: argv's overrides on reverie/conf/<name>.yaml.
    None when argv only asks to see it, which is then printed and nothing starts: `--help` prints
    `doc` and the config the overrides resolve to, `--cfg job` (hydra's flag) the config alone;
    keys still required show as ???. `word`: the subcommand's own name, when argv starts with it."""
    words, overrides = split_args(argv)
    if word and words[:1] == [word]:
        words = words[1:]
    asked, helped = cfg_flag(words), bool({"-h", "--help"} & set(words))
    if words and not helped:
        raise ConfigError(f"unexpected arguments {words}: this command takes key=value overrides; run it with "
                          "--help to see them")
    if asked or helped:
        cfg = compose(name, overrides, choices, required=False)
        print(f"{doc.strip()}\n\nconfig (with the overrides given):\n{show(cfg)}" if helped else show(cfg), end="")
        return None
    return compose(name, overrides, choices)


def compose(name: str, overrides: list[str] = (), choices: bool = False, required: bool = True) -> DictConfig:
    """Compose `reverie/conf/<name>.yaml` with overrides; unknown keys (with the key meant, when one
    is close), unknown config-group options, and values of another kind than the key's default
    (`episodes=abc`, `image_size=64`) are errors that say so.

    choices=True adds `choices`: the option picked in each config group (e.g. {"preset": "cpu"}),
    for commands that pass a group's name on to another command. required=False leaves keys the
    YAML marks `???` unset instead of refusing them (for showing the config)."""
    from hydra import compose as hydra_compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = data_list(list(overrides))
    GlobalHydra.instance().clear()
    with initialize_config_module("reverie.conf", version_base="1.3"):
        try:
            parsed = OverridesParser.create().parse_overrides(overrides)
            cfg = hydra_compose(config_name=name, overrides=overrides, return_hydra_config=True)
            picked = OmegaConf.to_container(cfg.hydra.runtime.choices)
            values = [o for o in parsed if _group(o) not in picked and not (o.is_add() or o.is_delete())]
            if values:  # each value against its default, under the same config-group choices
                defaults = _defaults(name, tuple(o.input_line for o in parsed if _group(o) in picked))
                for o in values:
                    _check_kind(name, o.key_or_group, OmegaConf.select(defaults, o.key_or_group),
                                OmegaConf.select(cfg, o.key_or_group))
        except (HydraException, OmegaConfBaseException) as e:
            raise ConfigError(_unknown(name, overrides) or f"bad override for `{name}`: {_one_line(str(e))}; "
                              "overrides are key=value, run the command with --help to see the keys it takes") from e
    OmegaConf.set_readonly(cfg, False)
    OmegaConf.set_struct(cfg, False)
    del cfg["hydra"]
    missing = sorted(OmegaConf.missing_keys(cfg))  # `???` in the YAML: the command cannot guess them
    if missing and required:
        raise ConfigError(f"missing {' '.join(f'{k}=...' for k in missing)} (required by {name}.yaml); run "
                          "the command with --help to see what each key takes")
    if choices:
        cfg.choices = {k: v for k, v in picked.items() if not k.startswith("hydra")}
    else:
        OmegaConf.set_struct(cfg, True)
    return cfg


def _defaults(name: str, groups: tuple[str, ...]) -> DictConfig:
    """The config's defaults under these config-group choices (inside hydra's initialize context)."""
    from hydra import compose as hydra_compose

    if (name, groups) not in _DEFAULTS:
        _DEFAULTS[name, groups] = hydra_compose(config_name=name, overrides=list(groups))
    return _DEFAULTS[name, groups]


def _unknown(name: str, overrides: list[str]) -> str | None:
    """Why hydra refused these overrides, when it is a group option or a key that does not exist:
    the message names the option or key most likely meant (inside hydra's initialize context).
    None for anything else (bad grammar, say): hydra's own message then tells."""
    from hydra import compose as hydra_compose
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        groups = [g for g in hydra_compose(config_name=name, return_hydra_config=True).hydra.runtime.choices
                  if not g.startswith("hydra")]
    except HydraException:
        return None
    loader = GlobalHydra.instance().config_loader()
    for o in parsed:
        value = o.input_line.partition("=")[2]
        if _group(o) in groups and not o.is_delete():
            options = loader.get_group_options(o.key_or_group)
            if value not in options:
                return (f"{_group(o)}={value}: `{name}` has no {_group(o)} {value!r}"
                        f"{did_you_mean(value, options)}; options: {', '.join(options)}")
    defaults = _defaults(name, tuple(o.input_line for o in parsed if _group(o) in groups))
    keys = _keys(defaults)
    for o in parsed:
        key, value = o.key_or_group, o.input_line.partition("=")[2]
        if _group(o) in groups or key in keys or o.is_add() or o.is_delete():
            continue
        parent = key.rpartition(".")[0]
        if parent and OmegaConf.select(defaults, parent, default=None) == {}:  # an open mapping: env_kwargs: {}
            return f"{key}={value}: {parent} starts empty, so its keys are added with +: pass +{key}={value}"
        near = closest(key, keys)
        fix = f"did you mean {near}={value}?" if near else "run the command with --help to see its keys"
        return f"{key}={value}: `{name}` has no key {key!r}; {fix}"
    return None


def _group(override) -> str:
    """The config group an override picks, named as hydra's runtime choices name it: `preset`, or
    `world_model/recipe@preset` for a group a config places in another package (a preset's recipe)."""
    return f"{override.key_or_group}@{override.package}" if override.package else override.key_or_group


def _keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Every key of cfg as a dotted path, sections included."""
    out = []
    for k, v in cfg.items_ex(resolve=False):  # `???` values stay unread
        out.append(prefix + str(k))
        if isinstance(v, DictConfig):
            out += _keys(v, f"{prefix}{k}.")
    return out


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


def completions(name: str, current: str) -> list[str]:
    """What a partly typed override of reverie/conf/<name>.yaml can become (shell completion): the
    keys at its level (`key=`, a section as `key.`), a config group's options, true/false for a flag."""
    from hydra import compose as hydra_compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    key, eq, _ = current.partition("=")
    GlobalHydra.instance().clear()
    with initialize_config_module("reverie.conf", version_base="1.3"):
        groups = [g for g in hydra_compose(config_name=name, return_hydra_config=True).hydra.runtime.choices
                  if not g.startswith("hydra")]
        if eq and key in groups:
            options = GlobalHydra.instance().config_loader().get_group_options(key.partition("@")[0])
            return [f"{key}={o}" for o in options]
        defaults = _defaults(name, ())
    if eq:
        return [f"{key}=true", f"{key}=false"] if isinstance(OmegaConf.select(defaults, key, default=None), bool) else []
    section, dot, _ = key.rpartition(".")
    node = OmegaConf.select(defaults, section, default=None) if dot else defaults
    if not isinstance(node, DictConfig):
        return []
    return [f"{section}{dot}{k}" + ("." if isinstance(v, DictConfig) and v else "=")
            for k, v in node.items_ex(resolve=False)] + ([f"{g}=" for g in groups] if not dot else [])
