"""The virtual robot scores its instruction from sim state and publishes it in <link>.status."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reverie.robot_io.virtual.server import Scorer


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


# --- scene resets between episodes (robot_io/virtual/scene.py) ------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """serve-bus's Scene on an in-process sim arm, as its loop drives it (no bus, no camera)."""
    from reverie.robot_io.virtual.server import Scene
    from reverie.sim.arm import ArmPhysics
    from reverie.sim.serve_bus import ServedArm

    link = tmp_path_factory.mktemp("scene") / "arm"
    physics = ArmPhysics(seed=0)
    scene = Scene(ServedArm(physics, "touch the red cube"), {}, link, "touch the red cube", score_hz=10.0)
    yield scene, link
    physics.close()


def request(scene, link, rid, seed, instruction=None) -> dict:
    from reverie.robot_io.virtual.scene import request_path, write_json

    write_json(request_path(link), {"seed": seed, "instruction": instruction, "id": rid})
    scene.update(time.monotonic())
    assert not request_path(link).exists()  # consumed
    return json.loads(Path(f"{link}.status").read_text())


def test_scene_reset_lays_out_the_sims_scene_for_the_seed_and_scores_the_request(served):
    from reverie.sim.arm_env import make_arm_env

    scene, link = served
    scene.physics.set_targets(scene.physics.qpos() + 0.2)
    scene.physics.step(0.5)  # the arm away from home, as at the end of an episode
    arm = scene.physics.qpos()
    scene.scorer.success_at = time.time()  # the last episode succeeded
    first = request(scene, link, 1, seed=5, instruction="lift the green cube")
    assert first["reset"] == 1 and first["instruction"] == "lift the green cube" and first["success"] is False
    assert scene.scorer.tracker.goal.task == "lift"  # what is scored now
    np.testing.assert_allclose(scene.physics.qpos(), arm, atol=1e-6)  # the arm stayed where it was
    other = request(scene, link, 2, seed=6, instruction="lift the green cube")
    again = request(scene, link, 3, seed=5, instruction="lift the green cube")
    assert other["cubes"] != first["cubes"] and again["cubes"] == first["cubes"]
    sim = make_arm_env("touch", image_size=(8, 8))
    try:  # the sim eval's scene and (no instruction asked) its instruction for the same seed
        ts = sim.reset(seed=5)
        drawn = request(scene, link, 4, seed=5)
        assert drawn["instruction"] == ts.observation["instruction"]
        for colour, pos in drawn["cubes"].items():
            np.testing.assert_allclose(pos, sim.phys.cube_pos(colour), atol=1e-4)
    finally:
        sim.close()


def test_scene_reset_refuses_what_it_cannot_score_and_keeps_serving(served):
    scene, link = served
    before = scene.scorer
    refused = request(scene, link, 7, seed=1, instruction="dance a jig")
    assert refused["reset"] == 7 and "not one the sim arm understands" in refused["error"]
    assert scene.scorer is before  # the scene and its score are untouched


def test_reset_scene_without_a_server_fails_fast_and_names_the_fix(tmp_path):
    from reverie.errors import HardwareError
    from reverie.robot_io.virtual.scene import request_path, reset_scene

    with pytest.raises(HardwareError, match="start `reverie sim serve-bus"):
        reset_scene(tmp_path / "none", seed=0, instruction=None)
    link = tmp_path / "stale"
    link.touch()  # a link with nobody (or an old serve-bus) behind it
    with pytest.raises(HardwareError, match="not running there, or is too old"):
        reset_scene(link, seed=0, instruction=None, timeout_s=0.3)
    assert not request_path(link).exists()  # withdrawn, so no later server acts on it
