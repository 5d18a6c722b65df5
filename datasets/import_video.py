"""Import plain videos (MP4, WebM, MKV, ... anything PyAV decodes) as action-free episodes.

One file is one episode. Frames keep the video's own presentation times (pts * time_base) as their
timestamps: variable-rate phone footage stays honest instead of being forced onto a fixed grid.
There is no action (zeros, `action_mask` False) and no proprioception (state zeros: the schema keeps
the arm's widths so video and robot episodes batch together), so these episodes teach a world model
what the world does, not what the robot commanded. Each file streams into the store in blocks of
about BLOCK_BYTES, so long or high-resolution videos never sit in memory whole.

`decode()` is shared with the LeRobot importer, whose camera streams are MP4 files too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reverie.datasets.importers import Episode, Source, parse_size, resize, same_rate, schema_for, stream_rows
from reverie.errors import ReverieError, StoreError
from reverie.specs import ArraySpec

EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")

BLOCK_BYTES = 64 << 20  # decoded frames handed to the store at a time

OPTIONS = {
    "camera": "camera name the frames are stored under, image/<camera> (default: front)",
    "state_dim": "state width of a new store (default 6, the SO-101/Koch arm: 5 joints + gripper); "
                 "videos carry no joint readings, so state rows are zeros",
    "action_dim": "action width of a new store (default 6); actions are zeros with action_mask False",
}


def decode(path: Path, size: tuple[int, int] | None, start: float = -np.inf,
           end: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
    """Frames of the first video stream with presentation time in [start, end] seconds.

    Returns (times (T,) float64 seconds, frames (T, H, W, 3) uint8), resized to `size` (None: as is).
    """
    blocks = list(decode_blocks(path, size, start, end))
    return np.concatenate([t for t, _ in blocks]), np.concatenate([f for _, f in blocks])


def decode_blocks(path: Path, size: tuple[int, int] | None, start: float = -np.inf, end: float = np.inf):
    """decode() in blocks of about BLOCK_BYTES, so an hour of video never sits in memory at once.

    Frames are resized as they are decoded: a 640x480 stream is held at the store's size."""
    import av

    if not Path(path).is_file():
        raise StoreError(f"video {path} is missing; check the path (or restore the file the dataset refers to)")
    times, frames, held, count = [], [], 0, 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise StoreError(f"{path} has no video stream; pass video files (MP4, WebM, MKV)")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if np.isfinite(start) and start > 0:
                # Seek lands on the keyframe at or before `start`; frames before it are skipped below.
                container.seek(int(start / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.pts is None:
                    raise StoreError(f"{path}: a frame has no presentation timestamp, so its capture time "
                                     f"is unknown; remux the file (ffmpeg -i in -c copy out.mkv) and retry")
                t = float(frame.pts * frame.time_base)
                if t < start:
                    continue
                if t > end:
                    break
                times.append(t)
                frames.append(resize(frame.to_ndarray(format="rgb24"), size))
                held += frames[-1].nbytes
                if held >= BLOCK_BYTES:
                    count += len(frames)
                    yield np.asarray(times, np.float64), np.stack(frames)
                    times, frames, held = [], [], 0
    except av.FFmpegError as e:
        raise StoreError(f"cannot decode video {path}: {e}; the file is corrupt, truncated or not a video. "
                         f"Check it plays (ffprobe {path}) or leave it out of the import") from e
    if frames:
        yield np.asarray(times, np.float64), np.stack(frames)
    elif not count:
        raise StoreError(f"{path}: no video frames between {start:.3f}s and {end:.3f}s; "
                         f"the file is empty or the requested span lies outside it")


def probe(path: Path) -> tuple[float, tuple[int, int]]:
    """(frames per second, (H, W)) of a video, raising a clear error for anything unreadable."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise StoreError(f"{path} has no video stream; pass video files (MP4, WebM, MKV)")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            return (float(rate) if rate else 0.0), (stream.height, stream.width)
    except av.FFmpegError as e:
        raise StoreError(f"cannot open video {path}: {e}; the file is corrupt, truncated or not a video. "
                         f"Check it plays (ffprobe {path}) or leave it out of the import") from e


def list_videos(srcs: list[str]) -> list[Path]:
    files = []
    for src in map(Path, srcs):
        if src.is_dir():
            found = sorted(p for p in src.iterdir() if p.suffix.lower() in EXTENSIONS)
            if not found:
                raise StoreError(f"{src} holds no video files ({', '.join(EXTENSIONS)})")
            files += found
        elif src.is_file():
            files.append(src)
        else:
            raise StoreError(f"{src} does not exist; pass video files or a folder of them")
    return files


def check_rates(files: list[Path], rates: list[float]) -> float:
    """The one nominal rate of the files. A store has one fps, so files at other rates are an error
    naming each rate's files, not a store that claims the first file's rate for all of them."""
    for f, r in zip(files, rates):
        if r <= 0:
            raise StoreError(f"{f} states no frame rate; remux it with one (ffmpeg -i in -r 30 out.mp4)")
    groups: dict[float, list[str]] = {}
    for f, r in zip(files, rates):
        key = next((k for k in groups if same_rate(k, r)), r)
        groups.setdefault(key, []).append(f.name)
    if len(groups) > 1:
        listing = "; ".join(f"{r:g} fps: {', '.join(names[:3])}" + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                            for r, names in sorted(groups.items(), reverse=True))
        raise StoreError(f"these {len(files)} videos have {len(groups)} frame rates ({listing}); a store has one "
                         f"nominal rate, so import each rate's files into its own store")
    return rates[0]


def read(srcs: list[str], opts: dict[str, str], existing: dict[str, ArraySpec] | None) -> Source:
    files = list_videos(srcs)
    info = [probe(f) for f in files]  # every file is opened before anything is written
    size = parse_size(opts.get("size")) or info[0][1]
    camera = opts.get("camera", "front")
    if existing is not None:
        schema = existing
    else:
        try:
            dims = int(opts.get("state_dim", 6)), int(opts.get("action_dim", 6))
        except ValueError as e:
            raise ReverieError(f"state_dim and action_dim take whole numbers: {e}") from e
        schema = schema_for({camera: size}, *dims)
    if f"image/{camera}" not in schema:
        raise StoreError(f"the store has no camera image/{camera} (it has "
                         f"{[k for k in schema if k.startswith('image/')]}); pass camera=<one of those>")
    fps = check_rates(files, [rate for rate, _ in info])

    def episodes():
        for path in files:
            blocks = ((times, {camera: frames}) for times, frames in decode_blocks(path, size))
            yield Episode(stream_rows(schema, blocks), instruction=opts.get("instruction", ""),
                          notes=f"video {path.name}")

    return Source(schema=schema, fps=fps, robot=opts.get("robot", "unknown"), source="video",
                  episodes=episodes(), num_episodes=len(files),
                  attrs={"imported_from": "video", "videos": [str(f) for f in files]})
