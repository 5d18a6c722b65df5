"""bc_scratch.mirror (datasets/mirror.py): a window reflected across the robot's plane is a demo the
sim could have recorded, with "left" and "right" traded."""

import json

import numpy as np
import pytest

from reverie.errors import ConfigError
from reverie.datasets.mirror import Mirror, mirror


def window() -> dict:
    frames = np.arange(2 * 4 * 6 * 3, dtype=np.uint8).reshape(2, 4, 6, 3)
    return {"image/front": frames, "image/wrist": frames + 1, "instruction": "push the red cube left",
            "state": np.arange(12.0).reshape(2, 6), "action": np.ones((2, 6)), "reward": np.zeros(2)}


def test_frames_flip_the_named_dimensions_negate_and_the_sides_trade():
    w = window()
    out = mirror(w, [0, 4])
    assert np.array_equal(out["image/front"], w["image/front"][:, :, ::-1])
    assert np.array_equal(out["image/wrist"], w["image/wrist"][:, :, ::-1])
    assert np.array_equal(out["state"][:, [1, 2, 3, 5]], w["state"][:, [1, 2, 3, 5]])
    assert np.array_equal(out["state"][:, [0, 4]], -w["state"][:, [0, 4]])
    assert np.array_equal(out["action"], [[-1, 1, 1, 1, -1, 1]] * 2)
    assert out["instruction"] == "push the red cube right"
    assert mirror({**w, "instruction": "slide the blue block right"}, [0, 4])["instruction"] == "slide the blue block left"
    assert mirror({**w, "instruction": "push the green cube forward"}, [0, 4])["instruction"] == "push the green cube forward"
    assert np.array_equal(w["state"], np.arange(12.0).reshape(2, 6))  # the drawn window is not changed in place
    assert np.array_equal(mirror(out, [0, 4])["image/front"], w["image/front"])  # twice: the original


def test_off_passes_through_and_bad_settings_are_refused():
    w = window()
    assert Mirror(0.0)(w) is w
    half = Mirror(0.5, seed=2)
    assert sum(half(w) is not w for _ in range(200)) in range(70, 131)
    with pytest.raises(ConfigError, match=r"mirror=2.0: a probability in \[0, 1\]"):
        Mirror(2.0)
    with pytest.raises(ConfigError, match=r"mirror_negate=\[0, 9\].*only 6 dimensions"):
        mirror(w, [0, 9])


def test_the_mirrored_sim_scene_renders_as_the_flipped_frames():
    """Cubes at (x, -y) with yaw -yaw and the arm at pan -q0, roll -q4 render (front and wrist) as the
    original frames flipped left-right, up to the table's random wood grain and the off-plane lights."""
    import mujoco

    from reverie.sim.arm import ArmPhysics

    phys = ArmPhysics(preset="nominal", seed=0, image_size=(64, 64), cameras=("front", "wrist"))
    rng = np.random.default_rng(1)
    try:
        for trial in range(3):
            phys.reset(seed=trial)
            q = np.array([rng.uniform(-0.6, 0.6), rng.uniform(0.2, 1.0), rng.uniform(0.5, 1.5),
                          rng.uniform(0, 1.2), rng.uniform(-1, 1), rng.uniform(0, 1)])
            phys._set_joints(q)
            mujoco.mj_forward(phys.model, phys.data)
            seen = {c: phys.render(c).astype(float) for c in ("front", "wrist")}
            for colour in phys.cube_names:
                a = phys._cube_qadr[colour]
                phys.data.qpos[a + 1] *= -1  # y
                phys.data.qpos[a + 6] *= -1  # the yaw quaternion's z
            phys._set_joints(mirror({"state": q[None]}, [0, 4])["state"][0])
            mujoco.mj_forward(phys.model, phys.data)
            for camera, frame in seen.items():
                reflected = phys.render(camera).astype(float)
                flipped = np.abs(frame[:, ::-1] - reflected).mean()
                assert flipped < 6, (camera, flipped)  # measured 1-4 grey levels
                assert flipped < np.abs(frame - reflected).mean()
    finally:
        phys.close()


def test_the_scratch_stage_records_the_setting(tiny_agent, tmp_path):
    from reverie.config import compose
    from reverie.policy import train as agent_train

    setup = tiny_agent(tmp_path, episodes=3, time_limit=20, wm_steps=2, bc_steps=1, holdout=0.0)
    out = agent_train.train(compose("train_agent", ["stage=bc_scratch", "steps=2", f"out={tmp_path / 'pix'}",
                                                    "bc_scratch.mirror=1.0", "bc_scratch.colour_swap=0.5",
                                                    "bc_scratch.batch_size=4", *setup["common"]]))
    info = json.loads((out / "scratch_bc.json").read_text())
    assert (info["mirror"], info["colour_swap"]) == (1.0, 0.5)
