"""The `reverie` command: every subcommand listed, unknown ones refused, and --help cheap enough for
the robot's computer (no torch, zarr or simulator imported just to list commands); `python -m
reverie`, --version, group help, --cfg job and --help with overrides, shell completion, and what a
partial install (pip extras) says about the commands it lacks."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reverie.cli import COMMANDS, main

EXE = str(Path(sys.executable).parent / "reverie")


def test_help_lists_every_subcommand_without_heavy_imports():
    probe = ("import sys; from reverie.cli import main; main(['--help']); "
             "print('HEAVY', sorted(m for m in ('torch', 'zarr', 'mujoco', 'hydra') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=60).stdout
    for words in COMMANDS:
        assert f"  {' '.join(words)} " in out
    assert "HEAVY []" in out


def test_unknown_command_is_a_clear_error(capsys):
    assert main(["fly", "away"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err
    assert main(["data", "inf", "x.zarr"]) == 2
    assert "unknown command 'data inf' (did you mean `reverie data info`?)" in capsys.readouterr().err


def test_help_into_a_closed_pipe_is_quiet():
    done = subprocess.run(f"{EXE} --help | head -1", shell=True, capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("usage: reverie") and "Traceback" not in done.stderr


def test_python_dash_m_and_version():
    from importlib import metadata

    import reverie

    done = subprocess.run([sys.executable, "-m", "reverie", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"reverie {reverie.__version__}"
    assert metadata.version("reverie") == reverie.__version__  # pyproject takes it from there


def test_group_help_lists_its_subcommands(capsys):
    for argv in (["data", "--help"], ["data"], ["sim", "-h"], ["robot", "--help"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: reverie {argv[0]} <command>")
        listed = [w for w in COMMANDS if any(line.startswith(f"  {' '.join(w)} ") for line in out.splitlines())]
        assert listed == [w for w in COMMANDS if w[0] == argv[0]], out


HYDRA_STYLE = {w: c for w, c in COMMANDS.items() if c.config}


def test_the_table_names_the_config_of_every_hydra_style_command():
    """Shell completion reads a command's keys from the config the table names: it must be the one
    the module composes."""
    import importlib.util

    for words, c in COMMANDS.items():
        source = Path(importlib.util.find_spec(c.module).origin).read_text()
        if c.config:
            assert f'command_config("{c.config}"' in source, words
        else:
            assert "command_config(" not in source, words
    assert len(HYDRA_STYLE) == 12


@pytest.mark.parametrize("words", list(HYDRA_STYLE), ids=[" ".join(w) for w in HYDRA_STYLE])
def test_cfg_job_prints_the_resolved_config_and_starts_nothing(words, tmp_path, capsys):
    import yaml

    from reverie.config import compose

    defaults = compose(COMMANDS[words].config, [], required=False)
    scalars = [(k, v) for k, v in defaults.items_ex(resolve=False) if type(v) in (int, str, type(None)) and v != "???"]
    key, value = next(((k, v + 7) for k, v in scalars if type(v) is int), (scalars[0][0], "probe"))
    link = tmp_path / "link"  # serve-bus would create it, were it to start
    extra = [f"link={link}"] if "link" in defaults and words == ("sim", "serve-bus") else []
    assert main([*words, "--cfg", "job", f"{key}={value}", *extra]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown[key] == value
    required = [k for k, v in defaults.items_ex(resolve=False) if v == "???"]
    assert all(shown[k] == "???" for k in required)
    assert not link.exists() and not list(tmp_path.iterdir())


def test_serve_bus_cfg_job_exits_in_a_subprocess(tmp_path):
    """The issue's case: serve-bus took no notice of --cfg job and started a server."""
    done = subprocess.run([EXE, "sim", "serve-bus", "--cfg=job", f"link={tmp_path / 'arm'}", "camera_fps=0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and f"link: {tmp_path / 'arm'}" in done.stdout and "camera_fps: 0" in done.stdout
    assert not (tmp_path / "arm").exists()


def test_help_shows_the_values_the_overrides_give(capsys):
    assert main(["eval", "--help", "policy=runs/x", "episodes=3"]) == 0
    out = capsys.readouterr().out
    assert "reverie eval" in out and "\npolicy: runs/x\n" in out and "\nepisodes: 3\n" in out
    assert main(["train-wm", "--help"]) == 0
    assert "\ndata: ???\n" in capsys.readouterr().out  # required, not given


def test_deploy_cfg_job_shows_its_options_without_hydra(capsys):
    assert main(["deploy", "--cfg", "job", "robot=virtual", "link=/tmp/x", "steps=40"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert {"robot: virtual", "steps: 40", "bundle: ???", "instruction: ???", "stdin: true"} <= set(out)


def test_completion_candidates():
    from reverie.completion import candidates, for_bash

    assert for_bash("reverie tr") == ["train-agent ", "train-wm "]
    assert for_bash("reverie da") == ["data "] and "info " in for_bash("reverie data ")
    assert for_bash("reverie train-wm preset=t") == ["tiny "]       # bash replaces the text after `=`
    assert for_bash("reverie train-wm world_model=") == ["rssm ", "shortcut "]
    assert "bc.steps=" in for_bash("reverie train-agent bc.st") and "bc." in for_bash("reverie train-agent b")
    assert for_bash("reverie train-agent progress=") == ["false ", "true "]
    assert for_bash("reverie deploy robot=v") == ["virtual "] and "bundle=" in for_bash("reverie deploy b")
    assert for_bash("reverie completion ") == ["bash ", "zsh "] and for_bash("reverie eval --c") == ["--cfg "]
    assert for_bash("reverie data info ") == []                       # a path: the shell completes files
    assert candidates(["eval"], "pol") == ["policy="]                   # zsh: whole words


def test_bash_completion_script_completes_in_bash():
    script = subprocess.run([EXE, "completion", "bash"], capture_output=True, text=True, timeout=60).stdout
    line = "reverie train-wm preset=ti"
    probe = (f'{script}\nCOMP_LINE="{line}"; COMP_POINT={len(line)}; _reverie_complete; '
             'printf "[%s]\\n" "${COMPREPLY[@]}"')
    env = {**os.environ, "PATH": f"{Path(EXE).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert done.stdout.splitlines() == ["[tiny ]"], done.stdout + done.stderr


def test_a_partial_install_lists_what_it_lacks_and_refuses_in_one_line(monkeypatch, capsys):
    """As on the robot's computer with only reverie[robot]: the training commands are listed apart
    with the pip line that adds them, and running one is a one-line error."""
    from reverie import cli

    reqs = {"": [("numpy", "")], "robot": [("numpy", "")], "record": [("reverie", "robot"), ("numpy", "")],
            "train": [("reverie", "record"), ("no-such-distribution-xyz", "")]}
    monkeypatch.setattr(cli, "requirements", lambda: reqs)
    text = cli.usage()
    ready, lacking = text.split('not in this install (pip install "reverie[train]" adds them):')
    assert "  deploy " in ready and "  record " in ready and "  train-wm " not in ready
    assert "  train-wm " in lacking and "  eval " in lacking
    assert main(["train-wm", "preset=tiny"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ['error: `reverie train-wm` is not in this install (it needs '
                                        'no-such-distribution-xyz); add it with pip install "reverie[train]"']


def test_a_missing_module_met_while_running_is_one_line(monkeypatch, capsys):
    import reverie.runtime.deploy as runtime

    def needs_mujoco(argv):
        raise ModuleNotFoundError("No module named 'mujoco'", name="mujoco")
    monkeypatch.setattr(runtime, "main", needs_mujoco)
    assert main(["deploy", "robot=sim"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs the Python module 'mujoco'" in err[0] and 'reverie[train]' in err[0]


@pytest.mark.skipif(not shutil.which("zsh"), reason="zsh is not installed")
def test_zsh_completion_script_offers_whole_words():
    """zsh's completion builtins stubbed to print what they are given, so no terminal is needed."""
    script = subprocess.run([EXE, "completion", "zsh"], capture_output=True, text=True, timeout=60).stdout
    stubs = "compdef() { }; compadd() { print -r -- \"$*\" }; compset() { }; _files() { print files }"
    calls = ["words=(reverie train-wm preset=t); CURRENT=3", "words=(reverie train-agent bc.st); CURRENT=3",
             "words=(reverie data info ''); CURRENT=4"]
    probe = "\n".join([stubs, script] + [f"{c}; _reverie_complete" for c in calls])
    env = {**os.environ, "PATH": f"{Path(EXE).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["zsh", "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert done.stdout.splitlines() == ["-- preset=tiny", "-S  -- bc.steps=", "files"], done.stdout + done.stderr
