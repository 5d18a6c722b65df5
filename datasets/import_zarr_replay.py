"""Import a diffusion-policy / UMI replay buffer (zarr format 2 or 3, a folder or a .zarr.zip).

Layout: `data/<key>` arrays, all episodes concatenated along time, and `meta/episode_ends` (the
exclusive end index of each episode). Keys differ between projects, so they are mapped:

  images  every (N, H, W, 3) or (N, 3, H, W) array: img / image -> image/front,
          camera0_rgb -> image/camera0, agentview_image -> image/agentview
  state   the first of state, agent_pos, robot_joint, robot_eef_pose; else UMI's per-robot
          robot<i>_eef_pos + robot<i>_eef_rot_axis_angle + robot<i>_gripper_width, concatenated
  action  action
  time    timestamp, if the buffer has one

Each can be overridden: state=a+b, action=key, images=src:camera,src2:camera2, timestamp=key. A
buffer without timestamps needs fps=<Hz> (the rate it was recorded at, e.g. 10 for PushT); rows
then get t = i / fps, and the episode notes say so. Replay buffers hold no per-step reward with a
shared meaning, so reward rows are 0.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from reverie.datasets.importers import Episode, Source, make_rows, parse_size, resize, schema_for
from reverie.errors import ReverieError, StoreError
from reverie.specs import ArraySpec

OPTIONS = {
    "state": "data key(s) for state, joined with + (default: state, agent_pos, ... or UMI robot0_*)",
    "action": "data key for action (default: action)",
    "images": "src:camera pairs, comma-separated (default: every (N, H, W, 3) array)",
    "timestamp": "data key holding capture times in seconds (default: timestamp if present)",
    "fps": "recording rate in Hz; required when the buffer has no timestamps",
}

STATE_KEYS = ("state", "agent_pos", "robot_joint", "robot_eef_pose")
UMI_STATE = re.compile(r"robot(\d+)_(eef_pos|eef_rot_axis_angle|gripper_width)$")
UMI_ORDER = {"eef_pos": 0, "eef_rot_axis_angle": 1, "gripper_width": 2}


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
    root = open_buffer(srcs[0])
    if "data" not in root or "meta" not in root or "episode_ends" not in root["meta"]:
        raise StoreError(f"{srcs[0]} is not a replay buffer: it needs data/<key> arrays and meta/episode_ends "
                         f"(found {sorted(root.keys())})")
    data = root["data"]
    arrays = {name: arr for name, arr in data.arrays()}
    ends = np.asarray(root["meta"]["episode_ends"][:], np.int64)
    if not len(ends):
        raise StoreError(f"{srcs[0]}: meta/episode_ends is empty, the buffer holds no episodes")
    n = int(ends[-1])
    if np.any(np.diff(ends) <= 0) or ends[0] <= 0:
        raise StoreError(f"{srcs[0]}: meta/episode_ends {ends[:8]}... is not strictly increasing; the buffer is damaged")
    short = [k for k, a in arrays.items() if a.shape[0] < n]
    if short:
        raise StoreError(f"{srcs[0]}: data/{short[0]} has {arrays[short[0]].shape[0]} rows but episode_ends "
                         f"reaches {n}; the buffer is truncated")

    def need(key: str):
        if key not in arrays:
            raise StoreError(f"{srcs[0]} has no data/{key} (keys: {sorted(arrays)}); pass an existing key")
        return arrays[key]

    # Images: explicit src:camera pairs, or every array shaped like frames.
    if "images" in opts:
        pairs = [p.split(":", 1) if ":" in p else (p, camera_name(p)) for p in opts["images"].split(",") if p]
        images = {cam: need(src) for src, cam in pairs}
    else:
        images = {camera_name(k): a for k, a in sorted(arrays.items()) if is_image(a)}
    if not images and existing is None:
        raise StoreError(f"{srcs[0]} has no image arrays (keys: {sorted(arrays)}); name one with images=<key>:<camera>")

    if "state" in opts:
        state_keys = opts["state"].split("+")
    else:
        umi = sorted((k for k in arrays if UMI_STATE.match(k)),
                     key=lambda k: (int(UMI_STATE.match(k)[1]), UMI_ORDER[UMI_STATE.match(k)[2]]))
        state_keys = next(([k] for k in STATE_KEYS if k in arrays), umi)
    state_arrays = [need(k) for k in state_keys]
    action = need(opts["action"]) if "action" in opts else arrays.get("action")
    time_key = opts.get("timestamp", "timestamp" if "timestamp" in arrays else None)
    times = need(time_key) if time_key else None
    if times is None:
        try:
            fps = float(opts["fps"])
        except (KeyError, ValueError) as e:
            raise ReverieError(f"{srcs[0]} stores no timestamps; pass fps=<Hz>, the rate it was recorded at "
                               f"(10 for diffusion-policy PushT), so rows get t = i / fps") from e
    else:
        fps = float(opts["fps"]) if "fps" in opts else _rate(times, ends)

    size = parse_size(opts.get("size"))
    width = lambda arrs: int(sum(np.prod(a.shape[1:], dtype=int) for a in arrs))  # noqa: E731
    if existing is not None:
        schema = existing
    else:
        cams = {cam: size or _hw(a) for cam, a in images.items()}
        schema = schema_for(cams, max(1, width(state_arrays)), max(1, width([action] if action is not None else [])),
                            units=f"as in replay buffer {Path(srcs[0]).name}")

    def episodes():
        start = 0
        for i, end in enumerate(ends):
            sl, n = slice(start, int(end)), int(end) - start
            t = _read(times, sl, np.float64).reshape(-1) if times is not None else np.arange(n) / fps
            state = (np.concatenate([_read(a, sl, np.float32).reshape(n, -1) for a in state_arrays], 1)
                     if state_arrays else None)
            act = _read(action, sl, np.float32).reshape(n, -1) if action is not None else None
            frames = {cam: _frames(_read(a, sl), size, cam) for cam, a in images.items()}
            note = f"replay buffer {Path(srcs[0]).name} episode {i}"
            if times is None:
                note += f"; timestamps are i/{fps:g} Hz (the buffer stores none)"
            yield Episode(make_rows(schema, t, frames, state=state, action=act),
                          instruction=opts.get("instruction", ""), notes=note)
            start = int(end)

    return Source(schema=schema, fps=fps, robot=opts.get("robot", "unknown"), source="teleop",
                  episodes=episodes(), num_episodes=len(ends),
                  attrs={"imported_from": "zarr replay buffer", "replay_buffer": srcs[0],
                         "replay_keys": {"state": state_keys, "action": "action" if action is not None else None,
                                         "images": {cam: a.basename for cam, a in images.items()},
                                         "timestamp": time_key}})


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
