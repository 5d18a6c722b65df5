"""LeRobot both ways against the official `lerobot` package, in its own virtual environment (it pins
its own torch and needs Python >= 3.12): benchmarks/lerobot_roundtrip.py makes that environment under
~/.cache/reverie/lerobot_roundtrip on first use (minutes, several GB of torch from PyPI; a CPython
built from Debian's source package where no Python 3.12+ is installed) and reuses it after."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "lerobot_roundtrip.py"


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_lerobot_writes_reverie_reads_and_back(tmp_path):
    out = tmp_path / "result.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["lerobot"]["lerobot"].startswith("0.6") and result["passed"]
    directions = {(r["direction"], r["images"]) for r in result["rows"]}
    assert directions == {("lerobot -> reverie", "video"), ("lerobot -> reverie", "image"),
                          ("reverie -> lerobot", "video"), ("reverie -> lerobot", "image")}
    for r in result["rows"]:  # states, actions, indices and tasks exactly; frames exactly or within codec tolerance
        assert r["state"] and r["action"] and r["episode"] and r["frame"] and r["tasks"], r
