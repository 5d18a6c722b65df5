"""Arm configs have one inheritance mechanism, hydra's `defaults` list, in shipped files and in a user's
own YAML alike, and reading them never needs hydra (the robot's computer has none)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from reverie.config import compose
from reverie.robot_io.config import CONF_DIR, load_arm, read_arm_yaml


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF_DIR.glob("*.yaml")))
def test_a_shipped_arm_reads_the_same_without_hydra(name):
    """Commands compose the `robot` group with hydra; the runtime reads the same files by hand."""
    assert read_arm_yaml(name) == OmegaConf.to_container(compose("arm", [f"robot={name}"]).robot, resolve=True)


def test_a_users_yaml_starts_from_shipped_and_own_files(tmp_path):
    (tmp_path / "lab.yaml").write_text("defaults: [so101_virtual]\nport: /dev/ttyLAB\n"
                                       "cameras:\n  wrist: {type: frame_file, path: /tmp/lab.frames.wrist}\n")
    (tmp_path / "mine.yaml").write_text("defaults: [lab.yaml]\nname: mine\n"
                                        "cameras:\n  front: {path: /tmp/mine.frames.front}\n")
    raw = read_arm_yaml(tmp_path / "mine.yaml")
    shipped = read_arm_yaml("so101_virtual")
    assert raw["name"] == "mine" and raw["port"] == "/dev/ttyLAB"  # own keys last, the lab file's before
    assert raw["joints"] == shipped["joints"]
    # mappings merge: the front camera keeps the shipped type, the lab file's wrist camera stays
    assert raw["cameras"] == {"front": {"type": "frame_file", "path": "/tmp/mine.frames.front"},
                              "wrist": {"type": "frame_file", "path": "/tmp/lab.frames.wrist"}}
    arm = load_arm(tmp_path / "mine.yaml", port="/dev/ttyOTHER")
    assert arm.name == "mine" and arm.port == "/dev/ttyOTHER" and arm.names == load_arm("so101_virtual").names


def test_self_placed_first_lets_the_defaults_win(tmp_path):
    (tmp_path / "arm.yaml").write_text("defaults: [_self_, so101_virtual]\nname: mine\n")
    assert read_arm_yaml(tmp_path / "arm.yaml")["name"] == "so101_virtual"


def test_reading_a_users_arm_imports_no_hydra(tmp_path):
    (tmp_path / "arm.yaml").write_text("defaults: [so101_virtual]\nport: /dev/ttyLAB\n")
    code = ("import sys; from reverie.robot_io.config import load_arm; "
            f"arm = load_arm({str(tmp_path / 'arm.yaml')!r}); "
            "bad = sorted(m for m in ('hydra', 'omegaconf', 'torch') if m in sys.modules); "
            "print(arm.port, bad)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["/dev/ttyLAB", "[]"]
