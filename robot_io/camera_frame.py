"""What every camera returns and offers: the Frame record and the Camera protocol.

Its own module, with nothing but numpy beneath it, so that camera sources outside robot_io/cameras.py
(the virtual robot's frame files, robot_io/virtual/frames.py) share the type without importing
OpenCV's camera code.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Frame:
    image: np.ndarray  # uint8 (H, W, 3) RGB
    capture_time: float  # time.time() when the frame was grabbed
    age_s: float  # seconds between the grab and read() returning it
    index: int  # 0, 1, 2, ... per camera, so duplicates and drops can be counted


@runtime_checkable
class Camera(Protocol):
    name: str

    def connect(self) -> None: ...

    def read(self, new: bool = False, timeout_s: float = 2.0) -> Frame: ...

    def close(self) -> None: ...


class CameraContext:
    """`with camera:` connects and closes: one definition for every camera kind."""

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc):
        self.close()
