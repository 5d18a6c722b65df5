"""The one-line robot install: the wheel with its `robot` extra in a fresh virtual environment, as on
the robot's computer. No torch, zarr, hydra or simulator gets there; `reverie --help` lists what the
install runs and what it lacks with the pip line for it; `reverie deploy` drives the virtual robot
(served from this environment, which has the simulator). Also, quickly: the extras the training
environment installs (`.[dev]`) cover every package the code imports."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from reverie.cli import COMMANDS, requirements

REPO = Path(__file__).resolve().parents[1]
FOLDERS = tuple(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values())
ABSENT = ("torch", "zarr", "hydra-core", "omegaconf", "mujoco", "transformers")


def closure(extra: str, reqs: dict) -> set[str]:
    """Normalised names of the distributions `reverie[extra]` asks for, its own extras expanded."""
    out = set()
    for name, extras in reqs.get(extra, []) + reqs.get("", []):
        name = re.sub(r"[-_.]+", "-", name).lower()
        if name == "reverie":
            out |= {d for e in extras.split(",") if e.strip() for d in closure(e.strip(), reqs)}
        else:
            out.add(name)
    return out


def test_the_training_extras_cover_every_import():
    """Moving packages out of the base requirements must not lose one for `make venv` (.[dev])."""
    from importlib import metadata

    reqs = requirements()
    assert {"robot", "record", "train", "dev"} <= set(reqs), "reverie's metadata is stale: run `make venv` again"
    provided = metadata.packages_distributions()
    train, robot = closure("train", reqs), closure("robot", reqs)
    assert "torch" in train and not {"torch", "zarr", "hydra-core", "mujoco"} & robot
    unlisted = {}
    for folder in FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
                for top in {n.partition(".")[0] for n in names} - set(sys.stdlib_module_names) - {"reverie"}:
                    dists = {re.sub(r"[-_.]+", "-", d).lower() for d in provided.get(top, [top])}
                    if not dists & train:
                        unlisted.setdefault(top, str(path.relative_to(REPO)))
    assert not unlisted, f"imported but in no extra of pyproject.toml: {unlisted}"


def run(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=900, **kw)


@pytest.mark.slow
def test_robot_install_from_the_wheel_lists_its_commands_and_deploys(quick, tmp_path):
    # the wheel, built from a copy of the package folders (no stale build/ of the checkout in it)
    src = tmp_path / "src"
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", src)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("reverie-*.whl"))

    # the README's one line, in a fresh environment: packages come from the registry
    venv = tmp_path / "robot"
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    installed = run(venv / "bin" / "pip", "install", f"{wheel}[robot]")
    assert installed.returncode == 0, installed.stderr[-3000:]
    listed = run(venv / "bin" / "pip", "list", "--format=freeze").stdout.lower()
    assert not [p for p in ABSENT if re.search(rf"^{p}==", listed, re.M)], listed
    exe = venv / "bin" / "reverie"

    helped = run(exe, "--help")
    assert helped.returncode == 0 and "Traceback" not in helped.stderr, helped.stderr
    ready, _, rest = helped.stdout.partition("\nnot in this install")
    assert "  deploy " in ready and "  completion " in ready and "  train-wm " not in ready
    assert 'pip install "reverie[record]" adds them' in helped.stdout and "  record " in rest
    assert 'pip install "reverie[train]" adds them' in helped.stdout and "  train-wm " in rest
    for words in COMMANDS:  # every command is listed once, ready or not
        assert len(re.findall(rf"^  {re.escape(' '.join(words))} ", helped.stdout, re.M)) == 1, words

    refused = run(exe, "train-wm", "preset=tiny")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert 'pip install "reverie[train]"' in refused.stderr
    no_store = run(exe, "deploy", f"bundle={quick}", "robot=virtual", "link=/nonexistent", "instruction=touch",
                   f"record={tmp_path / 'r.zarr'}", "stdin=false")
    assert no_store.returncode == 2 and "Traceback" not in no_store.stderr
    assert 'record= needs the Python module \'zarr\'' in no_store.stderr and "reverie[record]" in no_store.stderr

    from reverie.robot_io.virtual.launcher import VirtualArm

    link, report = tmp_path / "arm", tmp_path / "deploy.json"
    with VirtualArm("feetech", link=link, instruction="touch the red cube"):
        deployed = run(exe, "deploy", f"bundle={quick}", "robot=virtual", f"link={link}",
                       "instruction=touch the red cube", "steps=30", "stdin=false", f"report={report}")
    out = deployed.stdout + deployed.stderr
    assert deployed.returncode == 0, out[-3000:]
    assert re.search(r"episode 0: success (yes|no), 30 steps at [\d.]+ Hz", out), out[-2000:]
    assert report.exists() and "Traceback" not in out
