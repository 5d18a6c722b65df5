"""The virtual robot scores its instruction from sim state and publishes it in <link>.status."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reverie.sim.serve_bus import Scorer


class FlipTracker:
    """Succeeds from its third check on, like a touch held for three control steps."""

    def __init__(self):
        self.calls = 0

    def success(self):
        self.calls += 1
        return self.calls >= 3


def test_scorer_latches_success_at_its_rate(tmp_path):
    status = tmp_path / "arm.status"
    scorer = Scorer("touch the red cube", FlipTracker(), status, hz=10.0)
    assert json.loads(status.read_text())["success"] is False
    for now in (0.0, 0.05, 0.1, 0.15, 0.2):  # checks at 0.0, 0.1, 0.2 only
        scorer.update(now)
    record = json.loads(status.read_text())
    assert record["success"] is True and record["instruction"] == "touch the red cube"
    assert scorer.tracker.calls == 3


def test_serve_bus_publishes_status_and_refuses_unknown_instructions(tmp_path):
    exe = str(Path(sys.executable).parent / "reverie")
    link = tmp_path / "arm"
    server = subprocess.Popen([exe, "sim", "serve-bus", f"link={link}", "camera_fps=0",
                               "instruction=poke the blue block"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().startswith("ready")
        status = json.loads(Path(f"{link}.status").read_text())
        assert status == {**status, "instruction": "poke the blue block", "success": False}
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert not Path(f"{link}.status").exists()  # removed with the link
    bad = subprocess.run([exe, "sim", "serve-bus", f"link={tmp_path / 'b'}", "camera_fps=0",
                          "instruction=dance a jig"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not one the sim arm understands" in bad.stderr


class Blink:
    """Succeeds, stops, succeeds again: two touches in two episodes."""

    def __init__(self, pattern):
        self.pattern = list(pattern)

    def success(self):
        return self.pattern.pop(0)


def test_status_keeps_the_latest_onset_of_success(tmp_path):
    status = tmp_path / "arm.status"
    scorer = Scorer("touch the red cube", Blink([True, True, False, True]), status, hz=10.0)
    scorer.update(0.0)
    first = json.loads(status.read_text())["success_time"]
    scorer.update(1.0)  # still succeeding: the same onset
    assert json.loads(status.read_text())["success_time"] == first
    scorer.update(2.0)
    time.sleep(0.01)
    scorer.update(3.0)  # a new onset, which a later episode may count
    record = json.loads(status.read_text())
    assert record["success"] is True and record["success_time"] > first
