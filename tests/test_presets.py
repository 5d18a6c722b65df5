"""Presets are sizes: every other choice a preset makes is in the training recipe it names
(reverie/conf/world_model/recipe/), so each value has one home (docs/training.md, "Size presets and recipes")."""

from pathlib import Path

import pytest
import yaml

from reverie.config import compose

CONF = Path(__file__).resolve().parents[1] / "reverie" / "conf"
PRESETS = sorted(p.stem for p in (CONF / "preset").glob("*.yaml"))
RECIPES = sorted(p.stem for p in (CONF / "world_model" / "recipe").glob("*.yaml"))

# What a preset section may hold, per backend: network widths and depths (and layout), image size,
# batch and window lengths, token counts, and sharding (a hardware-size choice). A new backend with
# preset sections adds its own here.
SIZES = {
    "rssm": {"image_size", "deter", "hidden", "stoch", "classes", "units", "layers", "cnn_depth",
             "batch_size", "seq_len", "fsdp"},
    "shortcut": {"image_size", "patch", "latents", "bottleneck", "pack", "tok_dim", "tok_depth", "tok_heads",
                 "tok_kv_heads", "tok_seq_len", "dim", "depth", "heads", "kv_heads", "time_every",
                 "head_units", "batch_size", "seq_len", "fsdp"},
}
RUN = {"steps", "tokenizer_steps", "ema"}  # a recipe's keys beyond its backend's YAML: budgets, weight average


def _raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _recipe_of(preset: dict) -> str:
    entries = [e for e in preset["defaults"] if e != "_self_"]
    assert preset["defaults"][-1] == "_self_" and len(entries) == 1, "defaults: the recipe, then _self_"
    (key, name), = entries[0].items()
    assert key == "/world_model/recipe@_here_", key
    return name


@pytest.mark.parametrize("name", PRESETS)
def test_a_preset_holds_sizes_and_names_its_recipe(name):
    preset = _raw(CONF / "preset" / f"{name}.yaml")
    assert set(preset) - {"defaults"} <= set(SIZES), f"preset {name}: a section for an unknown backend"
    for backend, section in preset.items():
        if backend != "defaults":
            extra = sorted(set(section) - SIZES[backend])
            assert not extra, (f"preset {name}.{backend} holds {extra}, which are not sizes: move them to the "
                               f"recipe it names (reverie/conf/world_model/recipe/{_recipe_of(preset)}.yaml)")
    assert _recipe_of(preset) in RECIPES


@pytest.mark.parametrize("name", RECIPES)
def test_a_recipe_holds_no_sizes_and_only_keys_its_backend_reads(name):
    for backend, section in _raw(CONF / "world_model" / "recipe" / f"{name}.yaml").items():
        own = set(_raw(CONF / "world_model" / f"{backend}.yaml"))
        assert not set(section) & SIZES[backend], f"recipe {name}.{backend}: sizes belong to the preset"
        assert set(section) <= own | RUN, f"recipe {name}.{backend}: {sorted(set(section) - own - RUN)} unread"


@pytest.mark.parametrize("name", PRESETS)
def test_the_composed_preset_is_its_sizes_and_its_recipe(name):
    """What the trainer reads (preset.<backend>) is the preset's sizes plus the recipe's values, neither
    shadowing the other, and command-line overrides reach both (preset.<backend>.<key>=...)."""
    preset = _raw(CONF / "preset" / f"{name}.yaml")
    recipe = _raw(CONF / "world_model" / "recipe" / f"{_recipe_of(preset)}.yaml")
    cfg = compose("train_wm", [f"preset={name}", "data=x", "preset.rssm.steps=7", "preset.rssm.batch_size=3"])
    for backend in SIZES:
        assert dict(cfg.preset[backend]) == {**preset[backend], **recipe[backend], **(
            {"steps": 7, "batch_size": 3} if backend == "rssm" else {})}
        assert not set(preset[backend]) & set(recipe[backend])


def test_another_recipe_can_be_picked_and_a_wrong_one_is_named():
    from reverie.errors import ConfigError

    cfg = compose("train_wm", ["preset=s", "world_model/recipe@preset=cpu_minutes", "data=x"])
    assert cfg.preset.rssm.lr == 6e-4 and cfg.preset.rssm.deter == 2048
    with pytest.raises(ConfigError, match="no world_model/recipe@preset 'nope'; options: cpu_minutes"):
        compose("train_wm", ["world_model/recipe@preset=nope", "data=x"])


def _model_keys(backend: str) -> set[str]:
    """Every key a backend's model config gets from the YAMLs: its own, the presets' and the recipes'."""
    keys = set(_raw(CONF / "world_model" / f"{backend}.yaml"))
    for folder in (CONF / "preset", CONF / "world_model" / "recipe"):
        for path in folder.glob("*.yaml"):
            keys |= set(_raw(path).get(backend) or {})
    return keys


def test_model_keys_have_one_default_the_yaml():
    """Backends and the generic code read the YAMLs' model keys without a default of their own: no
    `c.get("key", ...)` on a model config for a key the YAMLs give. Old runs' configs are completed
    in one place (checkpoint.upgrade_config, from each backend's legacy_config), optional keys of the
    generic code have theirs in backend.OPTIONAL_KEYS."""
    import re

    from reverie.world_model.backend import load_backends

    given = _model_keys("rssm") | _model_keys("shortcut")
    pattern = re.compile(r"\b(?:c|mcfg|wm|self\.cfg|self\.mcfg|wm\.cfg)\.get\(\s*['\"](\w+)['\"]")
    root = CONF.parents[1]
    found = [f"{path.relative_to(root)}: {key}" for folder in ("world_model", "policy", "export")
             for path in (root / folder).rglob("*.py") for key in pattern.findall(path.read_text()) if key in given]
    assert not found, f"defaults in code for keys the YAMLs set: {found}"
    backends = load_backends()
    for name in ("rssm", "shortcut"):
        assert set(backends[name].legacy_config) <= _model_keys(name), "legacy_config names a key no YAML sets"


def test_an_old_run_config_is_completed_with_what_it_was_trained_with():
    from omegaconf import OmegaConf

    from reverie.world_model.backend import model_config
    from reverie.world_model.checkpoint import upgrade_config

    composed = compose("train_wm", ["world_model=shortcut", "preset=tiny", "data=x"])
    cfg = OmegaConf.create(OmegaConf.to_container(composed))  # as config.yaml reads back
    new = OmegaConf.to_container(model_config(cfg))
    assert upgrade_config(cfg, "shortcut") is cfg  # a current run: nothing to fill
    del cfg.world_model["known_action"], cfg.world_model["tok_center"]
    cfg.preset.shortcut.boot_start = 5  # written by the run (here in its preset section): kept
    del cfg.world_model["boot_start"]
    old = OmegaConf.to_container(model_config(upgrade_config(cfg, "shortcut")))
    assert old == new | {"known_action": False, "boot_start": 5}  # False: the model those runs were
    assert upgrade_config(cfg, "no_such_backend") is cfg
    del cfg["prefetch"], cfg["lr_end"]  # run keys newer than the run: what it did then
    filled = upgrade_config(cfg, "shortcut")
    assert filled.prefetch == 0 and filled.lr_end is None and filled.seed == composed.seed


def _leaf_keys(node) -> set[str]:
    return {k for k, v in node.items()} | {k for v in node.values() if isinstance(v, dict) for k in _leaf_keys(v)}


def test_command_keys_have_one_default_the_yaml():
    """The trainers read train_wm.yaml's and train_agent.yaml's keys without a default of their own
    (no `cfg.get("key", ...)`, `sc.get(...)`): each value has one source, the YAML; runs saved before a
    key existed are completed in checkpoint.upgrade_config (LEGACY_RUN)."""
    import re

    from reverie.world_model.checkpoint import LEGACY_RUN

    wm_keys = set(_raw(CONF / "train_wm.yaml")) - {"defaults"}
    agent_keys = _leaf_keys(_raw(CONF / "train_agent.yaml")) - {"defaults"}
    pattern = re.compile(r"\b(?:cfg|sc)(?:\.\w+)*\.get\(\s*['\"](\w+)['\"]")
    root = CONF.parents[1]
    files = [root / "world_model" / "train.py", root / "world_model" / "data.py", root / "policy" / "train.py",
             root / "policy" / "data.py", *(root / "reverie" / "workflows").glob("*.py")]
    found = [f"{path.relative_to(root)}: {key}" for path in files for key in pattern.findall(path.read_text())
             if key in wm_keys | agent_keys]
    assert not found, f"defaults in code for keys the YAMLs set: {found}"
    assert set(LEGACY_RUN) <= wm_keys, "LEGACY_RUN names a key train_wm.yaml does not set"
