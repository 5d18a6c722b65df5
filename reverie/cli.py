"""The `reverie` command. Subcommands take hydra-style `key=value` overrides.

Each subcommand lives in the module that owns it and exposes `main(argv) -> int`; this table only
names them, and modules are imported on use, so `reverie deploy` never imports torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

from reverie.errors import ReverieError

# (words) -> (module, one-line help). Longest match wins, so "data import" routes before "data".
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("data", "info"): ("reverie.datasets.inspect", "summarise an episode store (--json for machines)"),
    ("data", "view"): ("reverie.datasets.inspect", "write a PNG contact sheet and GIF of one episode"),
    ("data", "import"): ("reverie.datasets.importers", "import video | lerobot | zarr-replay data into a store"),
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


def available() -> dict[tuple[str, ...], tuple[str, str]]:
    return {w: v for w, v in COMMANDS.items() if importlib.util.find_spec(v[0]) is not None}


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
    raise ReverieError(f"unknown command {' '.join(argv[:2])!r}\n\n{usage()}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        words, rest = route(argv)
        module_name = COMMANDS[words][0]
        if importlib.util.find_spec(module_name) is None:
            raise ReverieError(f"`reverie {' '.join(words)}` is not available in this version")
        module = importlib.import_module(module_name)
        return int(module.main([*words[1:], *rest]) or 0) if len(words) > 1 else int(module.main(rest) or 0)
    except ReverieError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
