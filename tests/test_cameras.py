"""Cameras without hardware: a small mp4 stands in for a USB camera; the sim renderer as a camera."""

import time

import av
import numpy as np
import pytest

from reverie.errors import HardwareError
from reverie.robot_io.cameras import Camera, Frame, OpenCVCamera, SimCamera

W, H, N = 64, 48, 12


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """12 frames: left half red, right half blue, a grey bar whose brightness grows per frame."""
    path = tmp_path_factory.mktemp("cam") / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(N):
            rgb = np.zeros((H, W, 3), np.uint8)
            rgb[:32, : W // 2] = (220, 20, 20)
            rgb[:32, W // 2:] = (20, 20, 220)
            rgb[32:] = 20 + 18 * i
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return str(path)


def test_video_file_as_camera(video):
    cam = OpenCVCamera(video, fps=200)
    assert isinstance(cam, Camera)
    with cam:
        first = cam.read()
        assert first.image.shape == (H, W, 3) and first.image.dtype == np.uint8
        # RGB order, not OpenCV's BGR: the left half is red, the right half blue.
        left, right = first.image[4:28, 4:28].mean((0, 1)), first.image[4:28, 36:60].mean((0, 1))
        assert left[0] > 150 > left[2] and right[2] > 150 > right[0]
        assert first.capture_time <= time.time() and first.age_s >= 0

        frames = [cam.read(new=True) for _ in range(2 * N)]  # longer than the clip: it loops
        indices = [f.index for f in frames]
        assert indices == sorted(set(indices)) and indices[0] > first.index
        stamps = [f.capture_time for f in frames]
        assert stamps == sorted(stamps)
        # The grey bar brightens through the clip and starts over when it loops.
        bars = [f.image[40:, :, 0].mean() for f in frames]
        assert max(bars) - min(bars) > 100
        assert any(b < a - 100 for a, b in zip(bars, bars[1:]))
    with pytest.raises(HardwareError, match="not connected"):
        cam.read()


def test_video_end_without_loop(video):
    with OpenCVCamera(video, fps=300, loop=False) as cam:
        with pytest.raises(HardwareError, match="end of the video"):
            for _ in range(5 * N):
                cam.read(new=True)


def test_size_mismatch_names_the_real_size(video):
    with pytest.raises(HardwareError, match="delivers 64x48"):
        OpenCVCamera(video, width=640, height=480).connect()


def test_missing_sources_name_the_fix(tmp_path):
    with pytest.raises(HardwareError, match=r"ls /dev/video\*"):
        OpenCVCamera(57).connect()
    with pytest.raises(HardwareError, match="does not exist"):
        OpenCVCamera(str(tmp_path / "nope.mp4")).connect()
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    with pytest.raises(HardwareError, match="cannot decode"):
        OpenCVCamera(str(junk)).connect()


class FakePhysics:
    cameras = ("front",)

    def __init__(self):
        self.calls = []

    def render(self, camera):
        self.calls.append(camera)
        return np.full((8, 8, 3), len(self.calls), np.uint8)


def test_sim_camera_protocol():
    phys = FakePhysics()
    cam = SimCamera(phys, "front")
    assert isinstance(cam, Camera)
    with cam:
        a, b = cam.read(), cam.read(new=True)
    assert isinstance(a, Frame) and (a.index, b.index) == (0, 1)
    assert phys.calls == ["front", "front"] and b.image[0, 0, 0] == 2
    with pytest.raises(HardwareError, match="not enabled"):
        SimCamera(phys, "wrist").connect()


def test_sim_camera_on_arm_physics():
    arm = pytest.importorskip("reverie.sim.arm", reason="the sim arm (sim/arm.py) has not landed yet")
    phys = arm.ArmPhysics(seed=0, image_size=(48, 64), cameras=("front", "wrist"))
    try:
        phys.reset(seed=0)
        front, wrist = SimCamera(phys, "front"), SimCamera(phys, "wrist")
        f, w = front.read(), wrist.read()
        assert f.image.shape == w.image.shape == (48, 64, 3) and f.image.dtype == np.uint8
        assert f.image.std() > 0 and not np.array_equal(f.image, w.image)
    finally:
        phys.close()
