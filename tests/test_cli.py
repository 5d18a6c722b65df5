"""The `reverie` command: every subcommand listed, unknown ones refused, and --help cheap enough for
the robot's computer (no torch, zarr or simulator imported just to list commands)."""

import subprocess
import sys
from pathlib import Path

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
    assert "unknown command 'fly away'" in capsys.readouterr().err


def test_help_into_a_closed_pipe_is_quiet():
    done = subprocess.run(f"{EXE} --help | head -1", shell=True, capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("usage: reverie") and "Traceback" not in done.stderr
