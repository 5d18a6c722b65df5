"""The `reverie` command. Subcommands take hydra-style `key=value` overrides.

Each subcommand lives in the module that owns it and exposes `main(argv) -> int`; this table only
names them, and modules are imported on use, so `reverie deploy` never imports torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from pathlib import Path

from reverie.errors import ReverieError

# (words) -> (module, one-line help). Longest match wins, so "data import" routes before "data".
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("data", "info"): ("reverie.datasets.inspect", "summarise an episode store (--json for machines)"),
    ("data", "view"): ("reverie.datasets.inspect", "write a PNG contact sheet and GIF of one episode"),
    ("data", "label"): ("reverie.datasets.label", "set episodes' success labels (episodes=0,3,5-9 success=true|false|none)"),
    ("data", "import"): ("reverie.datasets.importers", "import video | lerobot | zarr-replay data into a store"),
    ("data", "export"): ("reverie.datasets.export_lerobot", "write a store as a LeRobot v3 dataset (data export lerobot STORE OUT)"),
    ("sim", "demos"): ("reverie.sim.demos", "record scripted-teleoperator demos of a sim task into a store"),
    ("sim", "serve-bus"): ("reverie.sim.serve_bus", "serve the sim arm as a virtual servo bus on a pseudo-terminal"),
    ("robot", "calibrate"): ("reverie.robot_io.calibrate", "calibrate an arm's joint offsets and ranges"),
    ("record",): ("reverie.robot_io.record", "record teleoperated episodes from a robot into a store"),
    ("train-wm",): ("reverie.world_model.train", "train a world model (rssm | shortcut) on stores"),
    ("eval-wm",): ("reverie.world_model.evaluate", "open-loop prediction metrics, plot and GIF of a world model"),
    ("train-agent",): ("reverie.policy.train", "train the agent: behaviour cloning (stage=bc) or imagination RL (stage=rl)"),
    ("eval",): ("reverie.policy.evaluate", "success rates with 95% intervals for a policy on an environment"),
    ("improve",): ("reverie.policy.improve", "corrective rounds: deploy, record, fine-tune, more RL, evaluate"),
    ("export",): ("reverie.export.onnx_export", "export a policy to an ONNX bundle and verify parity"),
    ("deploy",): ("reverie.export.runtime", "run a bundle on a robot without torch"),
    ("pipeline",): ("reverie.pipeline", "the whole job: demos -> world model -> agent -> bundle -> deploy"),
}


def module_exists(name: str) -> bool:
    """Whether module `name` is installed, without importing its package: on the robot's computer
    `reverie.datasets` (zarr) and `reverie.world_model` (torch) are not importable, and --help must work."""
    parent, _, leaf = name.rpartition(".")
    spec = importlib.util.find_spec(parent)  # imports the packages above `parent`, not `parent` itself
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(Path(loc, f"{leaf}.py").exists() or Path(loc, leaf, "__init__.py").exists()
               for loc in spec.submodule_search_locations)


def available() -> dict[tuple[str, ...], tuple[str, str]]:
    return {w: v for w, v in COMMANDS.items() if module_exists(v[0])}


def usage() -> str:
    rows = available()
    width = max((len(" ".join(w)) for w in rows), default=0)
    lines = ["usage: reverie <command> [key=value ...]", "", "commands:"]
    lines += [f"  {' '.join(w):<{width}}  {h}" for w, (_, h) in rows.items()]
    lines += ["", "Run `reverie <command> --help` for a command's options."]
    return "\n".join(lines)


def route(argv: list[str]) -> tuple[tuple[str, ...], list[str]]:
    for n in (2, 1):
        words = tuple(argv[:n])
        if words in COMMANDS:
            return words, argv[n:]
    commands = ", ".join(" ".join(w) for w in available())
    raise ReverieError(f"unknown command {' '.join(argv[:2])!r}; commands: {commands} (`reverie --help` says what "
                       "each does)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        try:
            print(usage())
        except BrokenPipeError:
            sys.stdout = open(os.devnull, "w")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        words, rest = route(argv)
        module_name = COMMANDS[words][0]
        if not module_exists(module_name):
            raise ReverieError(f"`reverie {' '.join(words)}` is not available in this version")
        module = importlib.import_module(module_name)
        return int(module.main([*words[1:], *rest]) or 0) if len(words) > 1 else int(module.main(rest) or 0)
    except ReverieError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error of ours
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())
