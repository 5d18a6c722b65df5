"""Cameras: one small protocol for USB cameras, video files and the simulator's renderer.

    cam = OpenCVCamera(0, width=640, height=480, fps=30)   # or "/dev/video2", or "episode.mp4"
    cam.connect()
    frame = cam.read()              # latest frame: image uint8 (H, W, 3) RGB, capture_time, age_s, index
    frame = cam.read(new=True)      # wait for a frame newer than the last one returned
    cam.close()

OpenCV cameras grab on a background thread so that the control loop never waits for the sensor and
always gets the newest frame (a camera's internal queue would otherwise hand out stale ones).
capture_time is time.time() right after the grab, the closest host-side stamp to the exposure;
the recorder stores it as the observation timestamp.
"""

from __future__ import annotations

import logging
import pathlib
import sys
import threading
import time

import numpy as np

from reverie.errors import HardwareError
from reverie.robot_io.camera_frame import Camera, CameraContext, Frame  # noqa: F401 (Camera: re-exported)

log = logging.getLogger(__name__)


class OpenCVCamera(CameraContext):
    """A V4L2/USB camera (index or /dev/video path) or a video file, read on a background thread.

    A video file plays back in real time at `fps` (default: the file's own rate) and loops, so it
    can stand in for a live camera; loop=False ends it instead, after which read() raises.
    width/height/fps of None keep what the source delivers; given values that the source does not
    deliver raise HardwareError (no silent resizing: the aspect ratio would change).
    """

    # Consecutive failed grabs after which a live camera counts as gone (unplugged, reset).
    MAX_FAILURES = 30

    def __init__(self, source: int | str, width: int | None = None, height: int | None = None,
                 fps: float | None = None, *, name: str = "front", loop: bool = True,
                 fourcc: str | None = None):
        if isinstance(source, str) and source.isdigit():
            source = int(source)
        self.source, self.name = source, name
        self.width, self.height, self.fps = width, height, fps
        self.loop, self.fourcc = loop, fourcc
        self.is_file = isinstance(source, str) and not source.startswith("/dev/")
        self._cap = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._latest: tuple[np.ndarray, float, int] | None = None
        self._error: HardwareError | None = None
        self._last_index = -1

    def __repr__(self):
        return f"OpenCVCamera({self.source!r}, name={self.name!r})"

    # --- lifecycle -----------------------------------------------------------------------------
    def connect(self, timeout_s: float = 5.0) -> None:
        import cv2

        if self._thread is not None:
            return
        if self.is_file and not pathlib.Path(self.source).is_file():
            raise HardwareError(f"camera {self.name}: video file {self.source} does not exist; "
                                "check the path (or pass a device index such as 0 for a USB camera)")
        # V4L2 directly on Linux: the default backend order may try GStreamer first and stall.
        backend = cv2.CAP_V4L2 if (not self.is_file and sys.platform.startswith("linux")) else cv2.CAP_ANY
        cap = cv2.VideoCapture(self.source, backend)
        if not cap.isOpened():
            cap.release()
            if self.is_file:
                raise HardwareError(f"camera {self.name}: cannot decode video file {self.source}; "
                                    "check that it is a video OpenCV's FFmpeg can read (mp4, avi, mkv)")
            raise HardwareError(
                f"camera {self.name}: cannot open device {self.source!r}. Check that it exists "
                "(`ls /dev/video*`; for a USB camera, unplug and replug it), that no other program "
                "is using it, and that you may read it (`sudo usermod -aG video $USER`, then log in again)")
        if not self.is_file:
            self._configure(cap)
        else:
            native = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
            self._check_size(cap, native)
            self.fps = self.fps or cap.get(cv2.CAP_PROP_FPS) or 30.0
        self._cap = cap
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)
        self._thread.start()
        # A camera that opens but never delivers (wrong format, bandwidth exhausted on a shared USB
        # hub) fails here rather than at the first read inside a control loop.
        try:
            self.read(timeout_s=timeout_s)
        except HardwareError:
            self.close()
            raise

    def _configure(self, cap) -> None:
        import cv2

        if self.fourcc:
            # MJPG lets USB 2 cameras deliver 720p and above at 30 fps (raw YUYV cannot).
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.fourcc))
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.fps:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        actual = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        self._check_size(cap, actual)
        actual_fps = cap.get(cv2.CAP_PROP_FPS)
        if self.fps and actual_fps and abs(actual_fps - self.fps) > 1:
            # Drivers often report a nominal rate; the recorder measures the real one.
            log.warning("camera %s: asked for %s fps, the driver reports %.1f", self.name, self.fps, actual_fps)
        self.fps = self.fps or actual_fps or None

    def _check_size(self, cap, actual: tuple[int, int]) -> None:
        wanted = (self.width or actual[0], self.height or actual[1])
        if wanted != actual:
            cap.release()
            raise HardwareError(f"camera {self.name} ({self.source}): asked for {wanted[0]}x{wanted[1]}, "
                                f"it delivers {actual[0]}x{actual[1]}; set width={actual[0]} "
                                f"height={actual[1]} (or a mode the camera lists in `v4l2-ctl --list-formats-ext`)")
        self.width, self.height = actual

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    # --- the grab thread -----------------------------------------------------------------------
    def _run(self) -> None:
        import cv2

        cap, index, failures, rewound = self._cap, 0, 0, False
        period = 1.0 / self.fps if self.is_file else 0.0
        next_due = time.monotonic()
        while not self._stop.is_set():
            if period:  # files would otherwise decode as fast as the CPU allows
                delay = next_due - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                next_due = max(next_due + period, time.monotonic() - period)
            ok = cap.grab()
            stamp = time.time()
            if ok:
                ok, bgr = cap.retrieve()
            if not ok:
                if self.is_file and self.loop and index > 0 and not rewound:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    rewound = True  # a grab failing right after a rewind means the file is unreadable
                    continue
                failures += 1
                if self.is_file or failures >= self.MAX_FAILURES:
                    what = ("reached the end of the video (pass loop=True to replay it)" if self.is_file
                            else f"stopped delivering frames ({failures} failed grabs): unplugged? "
                                 "check `ls /dev/video*` and the USB cable")
                    self._fail(HardwareError(f"camera {self.name} ({self.source}) {what}"))
                    return
                continue
            failures, rewound = 0, False
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # OpenCV decodes to BGR; reverie is RGB
            with self._cond:
                self._latest = (rgb, stamp, index)
                self._cond.notify_all()
            index += 1

    def _fail(self, error: HardwareError) -> None:
        with self._cond:
            self._error = error
            self._cond.notify_all()

    # --- reading -------------------------------------------------------------------------------
    def read(self, new: bool = False, timeout_s: float = 2.0) -> Frame:
        """The latest frame; with new=True, wait for one not returned before."""
        if self._thread is None:
            raise HardwareError(f"camera {self.name} is not connected: call connect() first")

        def ready():
            if self._error is not None:
                return True
            return self._latest is not None and (not new or self._latest[2] > self._last_index)

        with self._cond:
            if not self._cond.wait_for(ready, timeout_s):
                raise HardwareError(f"camera {self.name} ({self.source}): no frame within {timeout_s:.1f} s; "
                                    "check the cable and that the camera is not used by another program")
            # Once the source has failed, every read raises: a stale frame must not pass for a live one.
            if self._error is not None:
                raise self._error
            image, stamp, index = self._latest
            self._last_index = index
        return Frame(image, stamp, time.time() - stamp, index)


class SimCamera(CameraContext):
    """The simulator's renderer as a camera: `physics.render(camera) -> uint8 (H, W, 3)`.

    Renders synchronously in the caller's thread: MuJoCo's GL context belongs to the thread that
    made it, and the scene must show the physics state the caller just stepped, not a racing copy.
    Every read() is therefore a new frame with age ~0.
    """

    def __init__(self, physics, camera: str = "front", *, name: str | None = None):
        self.physics, self.camera = physics, camera
        self.name = name or camera
        self._index = 0

    def connect(self) -> None:
        enabled = getattr(self.physics, "cameras", None)
        if enabled is not None and self.camera not in enabled:
            raise HardwareError(f"sim camera {self.camera!r} is not enabled in the physics "
                                f"(enabled: {list(enabled)}); add it to cameras=[...]")

    def read(self, new: bool = False, timeout_s: float = 2.0) -> Frame:
        image = self.physics.render(self.camera)
        stamp = time.time()
        frame = Frame(image, stamp, time.time() - stamp, self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        pass  # the physics owns the renderer
