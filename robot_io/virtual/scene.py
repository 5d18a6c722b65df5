"""The virtual robot's scene reset: a side channel to `reverie sim serve-bus`, beside its servo bus.

A real arm has an operator who puts the cubes back between episodes; the virtual robot has this:

    served = reset_scene("/tmp/reverie-arm", seed=3, instruction=None)   # -> the new status record

The client writes `<link>.reset` (JSON {"seed", "instruction", "id"}); between bus transactions
serve-bus lays out the scene that seed gives the sim env (sim/arm_env.py), scores `instruction` (or,
when it is null, the one that seed draws for serve-bus's task, as the sim's reset(seed) does), clears
the success, and acknowledges by writing "reset": id (or "error") into `<link>.status`. The arm stays
where it stands, servos holding their goals, so move it clear (home) first: robot_env does.

Standard library only: the torch-free deploy runtime uses it too.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from reverie.errors import ConfigError, HardwareError


def request_path(link: str | Path) -> Path:
    return Path(f"{link}.reset")


def status_path(link: str | Path) -> Path:
    return Path(f"{link}.status")


def write_json(path: Path, record: dict) -> None:
    """Write tmp + rename, so the other process never reads half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or caught mid-replace


def reset_scene(link: str | Path, seed: int | None, instruction: str | None, timeout_s: float = 10.0) -> dict:
    """Ask serve-bus on `link` for a fresh scene and wait for its acknowledgement; returns the status
    record (instruction, success False, cubes). ConfigError if the server refused the request."""
    if not Path(link).exists():
        raise HardwareError(f"no virtual robot at {link}: start `reverie sim serve-bus link={link} ...` first")
    # Wall-clock microseconds: unique enough across clients, and never one an older server acked.
    rid = time.time_ns() // 1000
    write_json(request_path(link), {"seed": None if seed is None else int(seed), "instruction": instruction,
                                    "id": rid})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = read_json(status_path(link)) or {}
        if status.get("reset") == rid:
            if status.get("error"):
                raise ConfigError(f"the virtual robot refused the scene reset: {status['error']}")
            return status
        time.sleep(0.01)
    request_path(link).unlink(missing_ok=True)  # so a server started later does not act on it
    raise HardwareError(f"the virtual robot at {link} did not acknowledge a scene reset within {timeout_s:g} s: "
                        "serve-bus is not running there, or is too old to reset scenes; restart "
                        "`reverie sim serve-bus` from this version of reverie")
