"""Cameras named in an arm config -> camera objects.

    cameras:
      front: {type: opencv, source: 0, width: 640, height: 480, fps: 30}
      wrist: {type: opencv, source: /dev/video2}
      front: {type: frame_file, path: /tmp/reverie-so101.frames.front}   # the virtual robot's

`type` looks up "module:Class" in CAMERA_TYPES, imported on use, so adding a camera kind is one
table row and a config without cameras imports no OpenCV.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from reverie.errors import ConfigError

CAMERA_TYPES = {
    "opencv": "reverie.robot_io.cameras:OpenCVCamera",
    "frame_file": "reverie.robot_io.virtual.frames:FrameFileCamera",  # frames of `reverie sim serve-bus`
}


def build_cameras(spec: Mapping[str, Mapping] | None) -> dict:
    cameras = {}
    for name, options in (spec or {}).items():
        options = dict(options or {})
        kind = options.pop("type", "opencv")
        if kind not in CAMERA_TYPES:
            raise ConfigError(f"camera {name!r}: unknown type {kind!r}; use one of {sorted(CAMERA_TYPES)}")
        module, cls = CAMERA_TYPES[kind].split(":")
        try:
            cameras[name] = getattr(importlib.import_module(module), cls)(**options, name=name)
        except TypeError as e:
            raise ConfigError(f"camera {name!r} ({kind}): bad options {sorted(options)}: {e}") from e
    return cameras
