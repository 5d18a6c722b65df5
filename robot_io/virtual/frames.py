"""Camera frames shared between processes through one memory-mapped file per camera.

The virtual robot's server (robot_io/virtual/server.py, `reverie sim serve-bus`) renders in its own process; the recorder or runtime
reads the newest frame from the file, like a camera driver's buffer. Layout (little-endian):

    0   8s   magic b"RVFRAME1"
    8   u32  height, u32 width, u32 channels (3)
    20  u64  sequence: odd while a frame is being written, even when complete (a seqlock)
    28  f64  capture time, time.time() when the frame was rendered
    36  ...  height * width * channels bytes, RGB

A reader copies the pixels between two reads of the sequence and keeps the copy only when both
match and are even, so it never returns a half-written frame and never blocks the writer.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from pathlib import Path

import numpy as np

from reverie.errors import HardwareError
from reverie.robot_io.camera_frame import CameraContext, Frame

MAGIC = b"RVFRAME1"
HEADER = struct.Struct("<8sIIIQd")
SEQ = struct.Struct("<Q")
SEQ_OFFSET = 20


class FrameWriter:
    def __init__(self, path: str | Path, height: int, width: int, channels: int = 3):
        self.path = Path(path)
        self.shape = (height, width, channels)
        size = HEADER.size + height * width * channels
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(HEADER.pack(MAGIC, height, width, channels, 0, 0.0).ljust(size, b"\0"))
        os.replace(tmp, self.path)  # readers never see a file shorter than its header says
        self._file = open(self.path, "r+b")
        self._map = mmap.mmap(self._file.fileno(), size)
        self._seq = 0

    def write(self, image: np.ndarray, capture_time: float) -> None:
        if image.shape != self.shape or image.dtype != np.uint8:
            raise ValueError(f"frame {image.shape} {image.dtype}, expected {self.shape} uint8")
        self._map[SEQ_OFFSET:SEQ_OFFSET + 8] = SEQ.pack(self._seq + 1)
        self._map[HEADER.size:] = image.tobytes()
        self._map[SEQ_OFFSET + 8:SEQ_OFFSET + 16] = struct.pack("<d", capture_time)
        self._seq += 2
        self._map[SEQ_OFFSET:SEQ_OFFSET + 8] = SEQ.pack(self._seq)

    def close(self, remove: bool = True) -> None:
        self._map.close()
        self._file.close()
        if remove:
            self.path.unlink(missing_ok=True)


class FrameFileCamera(CameraContext):
    """Reads a FrameWriter's file; the Camera protocol of robot_io/camera_frame.py."""

    def __init__(self, path: str | Path, *, name: str | None = None):
        self.path = Path(path)
        self.name = name or self.path.name
        self._map = None
        self._last_index = -1

    def connect(self, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.path.exists():
            if time.monotonic() > deadline:
                raise HardwareError(f"camera {self.name}: no frame file at {self.path}; is `reverie sim "
                                    f"serve-bus` running with camera_fps > 0?")
            time.sleep(0.01)
        with open(self.path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        magic, h, w, c, _, _ = HEADER.unpack_from(self._map)
        if magic != MAGIC:
            raise HardwareError(f"camera {self.name}: {self.path} is not a reverie frame file")
        self.shape = (h, w, c)

    def _snapshot(self):
        while True:
            before = SEQ.unpack_from(self._map, SEQ_OFFSET)[0]
            if before % 2 == 0:
                stamp = struct.unpack_from("<d", self._map, SEQ_OFFSET + 8)[0]
                pixels = np.frombuffer(self._map, np.uint8, offset=HEADER.size).reshape(self.shape).copy()
                if SEQ.unpack_from(self._map, SEQ_OFFSET)[0] == before:
                    return before // 2, stamp, pixels
            time.sleep(0.0002)

    def read(self, new: bool = False, timeout_s: float = 2.0):
        if self._map is None:
            raise HardwareError(f"camera {self.name}: call connect() first")
        deadline = time.monotonic() + timeout_s
        while True:
            index, stamp, image = self._snapshot()
            if index > 0 and (not new or index > self._last_index):
                break
            if time.monotonic() > deadline:
                raise HardwareError(f"camera {self.name}: no new frame in {self.path} within {timeout_s:.1f} s; "
                                    f"has the virtual robot stopped?")
            time.sleep(0.002)
        self._last_index = index
        return Frame(image, stamp, time.time() - stamp, index - 1)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
