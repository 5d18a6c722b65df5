"""The `reverie` command. Subcommands take hydra-style `key=value` overrides.

Each subcommand lives in the module that owns it and exposes `main(argv) -> int`; this table only
names them, and modules are imported on use, so `reverie deploy` never imports torch. Each also
names the pip extra that installs what it imports, so a partial install (the robot's computer:
`pip install "reverie[robot]"`) lists what it can run and says what to add for the rest.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import sys
from pathlib import Path
from typing import NamedTuple

from reverie.errors import ReverieError, closest


class Command(NamedTuple):
    module: str
    help: str
    needs: str = "train"        # the extra that installs its imports: robot | record | train ("": none)
    config: str | None = None   # reverie/conf/<config>.yaml, for hydra-style commands (shell completion)


# (words) -> Command. Longest match wins, so "data import" routes before "data".
COMMANDS: dict[tuple[str, ...], Command] = {
    ("data", "info"): Command("reverie.datasets.inspect", "summarise an episode store (--json for machines)", "record"),
    ("data", "view"): Command("reverie.datasets.inspect", "write a PNG contact sheet and GIF of one episode"),
    ("data", "label"): Command("reverie.datasets.label", "set episodes' success labels (episodes=0,3,5-9 success=true|false|none)", "record"),
    ("data", "import"): Command("reverie.datasets.importers", "import video | lerobot | zarr-replay data into a store"),
    ("data", "export"): Command("reverie.datasets.export_lerobot", "write a store as a LeRobot v3 dataset (data export lerobot STORE OUT)"),
    ("sim", "demos"): Command("reverie.sim.demos", "record scripted-teleoperator demos of a sim task into a store", config="sim_demos"),
    ("sim", "teleop"): Command("reverie.sim.keyboard_teleop", "drive the sim arm from the keyboard in MuJoCo's viewer (needs a display)", config="sim_teleop"),
    ("sim", "serve-bus"): Command("reverie.sim.serve_bus", "serve the sim arm as a virtual servo bus on a pseudo-terminal", config="serve_bus"),
    ("robot", "calibrate"): Command("reverie.robot_io.calibrate", "calibrate an arm's joint offsets and ranges", "record", "calibrate"),
    ("record",): Command("reverie.robot_io.record", "record teleoperated episodes from a robot into a store", "record", "record"),
    ("train-wm",): Command("reverie.world_model.train", "train a world model (rssm | shortcut) on stores", config="train_wm"),
    ("eval-wm",): Command("reverie.world_model.evaluate", "open-loop prediction metrics, plot and GIF of a world model", config="eval_wm"),
    ("train-agent",): Command("reverie.policy.train", "train the agent: behaviour cloning (stage=bc), imagination RL (stage=rl) or the pixel baseline (stage=bc_scratch)", config="train_agent"),
    ("eval",): Command("reverie.policy.evaluate", "success rates with 95% intervals for a policy on an environment", config="eval"),
    ("improve",): Command("reverie.workflows.improve", "corrective rounds: deploy, record, fine-tune, more RL, evaluate", config="improve"),
    ("export",): Command("reverie.export.onnx_export", "export a policy to an ONNX bundle and verify parity", config="export"),
    ("deploy",): Command("reverie.runtime.deploy", "run a bundle on a robot without torch", "robot"),
    ("pipeline",): Command("reverie.workflows.pipeline", "the whole job: demos -> world model -> agent -> bundle -> deploy", config="pipeline"),
    ("completion",): Command("reverie.completion", "print a shell completion script: eval \"$(reverie completion bash)\" (or zsh)", ""),
}
GROUPS = {w[0] for w in COMMANDS if len(w) > 1}


def module_exists(name: str) -> bool:
    """Whether module `name` is installed, without importing its package: on the robot's computer
    `reverie.datasets` (zarr) and `reverie.world_model` (torch) are not importable, and --help must work."""
    parent, _, leaf = name.rpartition(".")
    spec = importlib.util.find_spec(parent)  # imports the packages above `parent`, not `parent` itself
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(Path(loc, f"{leaf}.py").exists() or Path(loc, leaf, "__init__.py").exists()
               for loc in spec.submodule_search_locations)


def requirements() -> dict[str, list[tuple[str, str]]]:
    """extra ("" for the base) -> (distribution, extras it asks of that distribution) from reverie's
    installed metadata: pyproject.toml stays the one list. Empty when reverie is not installed."""
    from importlib import metadata

    try:
        lines = metadata.requires("reverie") or []
    except metadata.PackageNotFoundError:
        return {}
    out: dict[str, list[tuple[str, str]]] = {}
    for line in lines:
        name, extras, marker = re.match(r"\s*([A-Za-z0-9._-]+)\s*(?:\[([^\]]*)\])?[^;]*;?(.*)", line).groups()
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        out.setdefault(extra.group(1) if extra else "", []).append((name, extras or ""))
    return out


def lacking(extra: str, reqs: dict | None = None) -> list[str]:
    """The distributions `pip install "reverie[extra]"` would add here (an extra naming reverie's own
    extras, as train names record, includes theirs)."""
    from importlib import metadata

    reqs = requirements() if reqs is None else reqs
    out = []
    for name, extras in reqs.get(extra, []) + (reqs.get("", []) if extra else []):
        if re.sub(r"[-_.]+", "-", name).lower() == "reverie":
            out += [d for e in extras.split(",") if e.strip() for d in lacking(e.strip(), reqs) if d not in out]
            continue
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def pip_line(extra: str) -> str:
    return f'pip install "reverie[{extra}]"'


def available() -> dict[tuple[str, ...], Command]:
    """The commands this install can run: their module is there and their extra fully installed."""
    reqs = requirements()
    complete = {e: not lacking(e, reqs) for e in {c.needs for c in COMMANDS.values()}}
    return {w: c for w, c in COMMANDS.items() if complete[c.needs] and module_exists(c.module)}


def usage(group: str | None = None) -> str:
    rows = {w: c for w, c in COMMANDS.items() if group is None or w[0] == group}
    ready = available()
    width = max(len(" ".join(w)) for w in rows)
    head = f"reverie {group} <command>" if group else "reverie <command>"
    lines = [f"usage: {head} [key=value ...]", "", "commands:"]
    lines += [f"  {' '.join(w):<{width}}  {c.help}" for w, c in rows.items() if w in ready]
    for extra in sorted({c.needs for w, c in rows.items() if w not in ready}):
        lines += ["", f"not in this install ({pip_line(extra)} adds them):"]
        lines += [f"  {' '.join(w):<{width}}  {c.help}" for w, c in rows.items() if w not in ready and c.needs == extra]
    lines += ["", "Run `reverie <command> --help` for a command's options; `reverie --version` for the version."]
    return "\n".join(lines)


def route(argv: list[str]) -> tuple[tuple[str, ...], list[str]]:
    for n in (2, 1):
        words = tuple(argv[:n])
        if words in COMMANDS:
            return words, argv[n:]
    typed = " ".join(argv[:2]) if argv[0] in GROUPS else argv[0]
    near = closest(typed, [" ".join(w) for w in COMMANDS] + sorted(GROUPS))
    commands = ", ".join(" ".join(w) for w in available())
    raise ReverieError(f"unknown command {typed!r}" + (f" (did you mean `reverie {near}`?)" if near else "")
                       + f"; commands: {commands} (`reverie --help` says what each does)")


def cfg_flag(words: list[str]) -> bool:
    """Take hydra's `--cfg job` (or --cfg=job, -c job) out of `words`; whether it was there. Commands
    given it print the configuration they would run with and start nothing."""
    for i, w in enumerate(words):
        flag, eq, value = w.partition("=")
        if flag in ("--cfg", "-c"):
            value = value if eq else (words[i + 1] if i + 1 < len(words) else "")
            if value not in ("job", "all"):
                raise ReverieError(f"--cfg {value or '(nothing)'}: pass --cfg job to print the config this command "
                                   "would run with")
            del words[i:i + (1 if eq else 2)]
            return True
    return False


def say(text: str) -> int:
    try:
        print(text)
    except BrokenPipeError:  # output piped into `head` and closed early: not an error of ours
        sys.stdout = open(os.devnull, "w")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        return say(usage())
    if argv[0] in ("-V", "--version"):
        from reverie import __version__

        return say(f"reverie {__version__}")
    if argv[0] in GROUPS and (len(argv) == 1 or argv[1] in ("-h", "--help")):
        return say(usage(argv[0]))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    words: tuple[str, ...] = ()
    try:
        words, rest = route(argv)
        command = COMMANDS[words]
        if words not in available():
            missing = lacking(command.needs) or [command.module]
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise ReverieError(f"`reverie {' '.join(words)}` is not in this install (it needs {shown}); add it "
                               f"with {pip_line(command.needs)}")
        module = importlib.import_module(command.module)
        return int(module.main([*words[1:], *rest]) or 0)  # a group's module learns which subcommand
    except ReverieError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # a package this install lacks, met past the command's own extra
        top = (e.name or "").partition(".")[0]
        if not top or top == "reverie":
            raise  # our own module missing is a bug, not an install to complete
        print(f"error: `reverie {' '.join(words)}` needs the Python module {top!r}, which this install lacks; "
              f"add it with {pip_line('train')} (the full install)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())
