"""Import a diffusion-policy / UMI replay buffer (zarr format 2 or 3, a folder or a .zarr.zip).

Layout: `data/<key>` arrays, all episodes concatenated along time, and `meta/episode_ends` (the
exclusive end index of each episode). Keys differ between projects, so they are mapped:

  images  every (N, H, W, 3) or (N, 3, H, W) array: img / image -> image/front,
          camera0_rgb -> image/camera0, agentview_image -> image/agentview
  state   the first of state, agent_pos, robot_joint, robot_eef_pose; else UMI's per-robot
          robot<i>_eef_pos + robot<i>_eef_rot_axis_angle + robot<i>_gripper_width, concatenated
  action  action
  time    timestamp, if the buffer has one

Keys left unmapped are named in a warning, and a buffer without actions (UMI records poses, not
commands) is stored action-free (action_mask False), which the import says. Each can be overridden: state=a+b, action=key, images=src:camera,src2:camera2, timestamp=key;
state_dims= / action_dims= keep some dimensions of the joined state / action (0:2 or 0,1). A
buffer without timestamps needs fps=<Hz> (the rate it was recorded at, e.g. 10 for PushT); rows
then get t = i / fps, and the episode notes say so. Replay buffers hold no per-step reward with a
shared meaning, so reward rows are 0.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from reverie.datasets.importers import (Episode, Source, dims_help, make_rows, note_picks, parse_size, pick, resize,
                                        schema_for, warn_unmapped)
from reverie.errors import ReverieError, StoreError
from reverie.specs import ArraySpec

OPTIONS = {
    "state": "data key(s) for state, joined with + (default: state, agent_pos, ... or UMI robot0_*)",
    "state_dims": dims_help("state"),
    "action": "data key for action (default: action)",
    "action_dims": dims_help("action"),
    "images": "src:camera pairs, comma-separated (default: every (N, H, W, 3) array)",
    "timestamp": "data key holding capture times in seconds (default: timestamp if present)",
    "fps": "recording rate in Hz; required when the buffer has no timestamps",
}

STATE_KEYS = ("state", "agent_pos", "robot_joint", "robot_eef_pose")
UMI_STATE = re.compile(r"robot(\d+)_(eef_pos|eef_rot_axis_angle|gripper_width)$")
UMI_ORDER = {"eef_pos": 0, "eef_rot_axis_angle": 1, "gripper_width": 2}

log = logging.getLogger(__name__)


def open_buffer(src: str):
    import zarr

    path = Path(src)
    if not path.exists():
        raise StoreError(f"{src} does not exist; pass a replay buffer folder (.zarr) or a .zarr.zip")
    try:
        if path.suffix == ".zip":
            from zarr.storage import ZipStore

            return zarr.open_group(ZipStore(path, mode="r"), mode="r")
        return zarr.open_group(str(path), mode="r")
    except Exception as e:  # zarr raises several types for "not a group"; all mean the same to a user
        raise StoreError(f"{src} is not a zarr group ({type(e).__name__}: {e}); pass a diffusion-policy "
                         f"replay buffer with data/<key> arrays and meta/episode_ends") from e


def camera_name(key: str) -> str:
    name = re.sub(r"(_rgb|_image)$", "", key)
    return "front" if name in ("img", "image", "rgb") else name


def is_image(arr) -> bool:
    return arr.ndim == 4 and (arr.shape[-1] == 3 or arr.shape[1] == 3)


def read(srcs: list[str], opts: dict[str, str], existing: dict[str, ArraySpec] | None) -> Source:
    if len(srcs) != 1:
        raise StoreError(f"`data import zarr-replay` takes one replay buffer, got {len(srcs)}: {srcs}")
    src, name = srcs[0], Path(srcs[0]).name
    root = open_buffer(src)
    if "data" not in root or "meta" not in root or "episode_ends" not in root["meta"]:
        raise StoreError(f"{src} is not a replay buffer: it needs data/<key> arrays and meta/episode_ends "
                         f"(found {sorted(root.keys())})")
    arrays = dict(root["data"].arrays())
    ends = np.asarray(root["meta"]["episode_ends"][:], np.int64)
    if not len(ends):
        raise StoreError(f"{src}: meta/episode_ends is empty, the buffer holds no episodes")
    if np.any(np.diff(ends) <= 0) or ends[0] <= 0:
        raise StoreError(f"{src}: meta/episode_ends {ends[:8]}... is not strictly increasing; the buffer is damaged")
    short = [k for k, a in arrays.items() if a.shape[0] < ends[-1]]
    if short:
        raise StoreError(f"{src}: data/{short[0]} has {arrays[short[0]].shape[0]} rows but episode_ends "
                         f"reaches {ends[-1]}; the buffer is truncated")

    keys = select_keys(arrays, opts, src)
    used = {*keys["images"].values(), *keys["state"], keys["action"], keys["timestamp"]}
    warn_unmapped(src, [f"data/{k}" for k in sorted(arrays) if k not in used],
                  "name them with state=a+b, action= or images=")
    if keys["action"] is None:
        log.warning("%s has no data/action, so its episodes are stored action-free (action zeros, action_mask "
                    "False); if the actions are under another key, pass action=<key>", src)
    images = {cam: arrays[k] for cam, k in keys["images"].items()}
    state = [arrays[k] for k in keys["state"]]
    action = arrays[keys["action"]] if keys["action"] else None
    times = arrays[keys["timestamp"]] if keys["timestamp"] else None
    picks = {"state": pick(opts, "state", keys["state"], _width(state)),
             "action": pick(opts, "action", [keys["action"]] if action is not None else [],
                            _width([action] if action is not None else []))}
    if not images and existing is None:
        raise StoreError(f"{src} has no image arrays (keys: {sorted(arrays)}); name one with images=<key>:<camera>")
    try:
        fps = float(opts["fps"]) if "fps" in opts else (_rate(times, ends) if times is not None else None)
    except ValueError as e:
        raise ReverieError(f"fps={opts['fps']!r} is not a number; pass the recording rate in Hz") from e
    if fps is None:
        raise ReverieError(f"{src} stores no timestamps; pass fps=<Hz>, the rate it was recorded at "
                           f"(10 for diffusion-policy PushT), so rows get t = i / fps")

    size = parse_size(opts.get("size"))
    if existing is not None:
        schema = existing
    else:
        cams = {cam: size or _hw(a) for cam, a in images.items()}
        schema = note_picks(schema_for(cams, max(1, picks["state"].out_width), max(1, picks["action"].out_width),
                                       units=f"as in replay buffer {name}"), list(picks.values()))
        if action is None:
            schema["action"] = ArraySpec((1,), "float32", units=f"none in replay buffer {name}: zeros, action_mask False")

    def episodes():
        for i, (start, end) in enumerate(zip(np.r_[0, ends[:-1]], ends)):
            rows, length = slice(int(start), int(end)), int(end - start)
            t = _read(times, rows, np.float64).reshape(-1) if times is not None else np.arange(length) / fps
            s = np.concatenate([_read(a, rows, np.float32).reshape(length, -1) for a in state], 1) if state else None
            a = _read(action, rows, np.float32).reshape(length, -1) if action is not None else None
            s, a = picks["state"].apply(s), picks["action"].apply(a)
            frames = {cam: _frames(_read(arr, rows), size, cam) for cam, arr in images.items()}
            note = f"replay buffer {name} episode {i}"
            if times is None:
                note += f"; timestamps are i/{fps:g} Hz (the buffer stores none)"
            yield Episode(make_rows(schema, t, frames, state=s, action=a),
                          instruction=opts.get("instruction", ""), notes=note)

    return Source(schema=schema, fps=fps, robot=opts.get("robot", "unknown"), source="teleop",
                  episodes=episodes(), num_episodes=len(ends),
                  attrs={"imported_from": "zarr replay buffer", "replay_buffer": src, "replay_keys": keys,
                         "import": {k: p.record() for k, p in picks.items()}})


def select_keys(arrays: dict, opts: dict[str, str], src: str) -> dict:
    """Which data/<key> arrays become images, state, action and timestamps (see the module doc)."""
    def need(key: str, option: str) -> str:
        if key not in arrays:
            raise StoreError(f"{src} has no data/{key} (keys: {sorted(arrays)}); pass {option}= with an existing key")
        return key

    if "images" in opts:
        pairs = [p.split(":", 1) if ":" in p else (p, camera_name(p)) for p in opts["images"].split(",") if p]
        images = {cam: need(key, "images") for key, cam in pairs}
    else:
        images = {camera_name(k): k for k, a in sorted(arrays.items()) if is_image(a)}
    if "state" in opts:
        state = [need(k, "state") for k in opts["state"].split("+") if k]
    else:
        umi = sorted((k for k in arrays if UMI_STATE.match(k)),
                     key=lambda k: (int(UMI_STATE.match(k)[1]), UMI_ORDER[UMI_STATE.match(k)[2]]))
        state = next(([k] for k in STATE_KEYS if k in arrays), umi)
    action = need(opts["action"], "action") if "action" in opts else ("action" if "action" in arrays else None)
    timestamp = (need(opts["timestamp"], "timestamp") if "timestamp" in opts
                 else ("timestamp" if "timestamp" in arrays else None))
    return {"images": images, "state": state, "action": action, "timestamp": timestamp}


def _width(arrays: list) -> int:
    """Columns once each (N, ...) array is flattened to (N, D) and they are concatenated."""
    return int(sum(np.prod(a.shape[1:], dtype=int) for a in arrays))


def _read(arr, sl: slice, dtype=None) -> np.ndarray:
    try:
        out = arr[sl]
    except Exception as e:  # a codec zarr cannot find (UMI's JPEG-XL frames need imagecodecs) or a bad chunk
        raise StoreError(f"cannot read {arr.name} rows {sl.start}:{sl.stop} ({type(e).__name__}: {e}); if the "
                         f"buffer uses an extra codec (UMI: imagecodecs' JPEG-XL), install and register it first") from e
    return np.asarray(out, dtype)


def _hw(arr) -> tuple[int, int]:
    return tuple(arr.shape[1:3]) if arr.shape[-1] == 3 else tuple(arr.shape[2:4])


def _frames(chunk: np.ndarray, size, cam: str) -> np.ndarray:
    """Any replay-buffer image layout -> (T, H, W, 3) uint8 at `size`.

    Diffusion-policy PushT stores float32 frames in 0..255; robomimic-style buffers use 0..1 floats.
    A float episode whose maximum is at most 1 is read as 0..1.
    """
    chunk = np.asarray(chunk)
    if chunk.shape[-1] != 3:
        chunk = chunk.transpose(0, 2, 3, 1)  # channels-first -> channels-last
    if chunk.dtype != np.uint8:
        if chunk.dtype.kind != "f" and chunk.dtype.kind not in "iu":
            raise StoreError(f"image/{cam}: cannot read {chunk.dtype} frames as images")
        scale = 255.0 if chunk.dtype.kind == "f" and chunk.size and float(chunk.max()) <= 1.0 else 1.0
        chunk = np.clip(np.rint(chunk * scale), 0, 255).astype(np.uint8)
    return np.stack([resize(f, size) for f in chunk])


def _rate(times, ends) -> float:
    """Median frame rate of the first episode (a replay buffer records no nominal fps)."""
    t = np.asarray(times[: int(ends[0])], np.float64).reshape(-1)
    dt = np.diff(t)
    dt = dt[dt > 0]
    if not len(dt):
        raise ReverieError("cannot tell the frame rate from the timestamps; pass fps=<Hz>")
    return float(1.0 / np.median(dt))
