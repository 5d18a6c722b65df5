"""`reverie data export lerobot STORE OUT [key=value ...]`: write an episode store as a LeRobot v3 dataset.

    OUT/
      meta/info.json                         codebase_version v3.0, fps, robot_type, features, path templates
      meta/stats.json                        per feature: min, max, mean, std, count, q01 q10 q50 q90 q99
      meta/tasks.parquet                     task (the pandas index) -> task_index
      meta/episodes/chunk-000/file-000.parquet  one row per episode: tasks, length, where its rows and
                                             video frames are, dataset_from/to_index, stats/<feature>/<stat>
      data/chunk-000/file-000.parquet        the frame table, one row group per episode
      videos/<key>/chunk-000/file-000.mp4    with images=video: one H.264 file per camera, episodes back to
                                             back; frame i of the file is at i / fps seconds

What maps to what (the importer's rules, run backwards, so an export imports back unchanged):
  image/<cam>      -> observation.images.<cam>   video (default) or, with images=png, PNG cells in the table
  state            -> observation.state          float32
  action           -> action                     float32; left out when no row's action is known
  action_mask      -> reverie.action_mask        bool; only when some rows' actions are unknown (LeRobot
                                                 has no such flag, and a row's zeros are no command)
  reward           -> next.reward                LeRobot's next.reward at t is the reward of arriving at t+1
  is_terminal      -> next.done                  True at the last frame of an episode that ended the task
  success          -> next.success               True at the last frame of a successful episode; only when
                                                 some episode is labelled (unknown labels read back as False)
  instruction      -> task                       tasks.parquet; one task per episode
  timestamp        -> timestamp = frame_index / fps (LeRobot finds video frames by it); the measured
                      capture times go to reverie.timestamp (float64) when they are off that grid
  any other key    -> reverie.<key, / as .>      e.g. correction, narration, privileged.objects
is_first / is_last are the episode bounds LeRobot keeps in its own indices.

OUT is written under a temporary sibling folder and renamed into place at the end, so a failure
leaves no half-written dataset; the store is opened read-only and never changed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np

from reverie.datasets import stats as stats_lib
from reverie.datasets.schema import is_image_key
from reverie.errors import ReverieError, StoreError

OPTIONS = {
    "images": "video (default: one H.264 MP4 per camera, lossy) or png (frames in the table, lossless)",
    "fps": "the dataset's frame rate (default: the store's; LeRobot needs a whole number)",
    "robot": "robot_type in info.json (default: the store's robot)",
    "crf": "H.264 quality of images=video, 0 (best) to 51 (default 18)",
}

CODEBASE_VERSION = "v3.0"
CHUNK = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK + ".parquet"
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
GRID_TOLERANCE_S = 1e-4  # LeRobot's default tolerance_s between a table timestamp and a video frame
# Store keys the mapping above covers; every other key is exported as reverie.<key>.
log = logging.getLogger(__name__)
MAPPED = {"state", "action", "action_mask", "reward", "is_terminal", "is_first", "is_last", "timestamp"}

USAGE = """usage: reverie data export lerobot STORE OUT [key=value ...]
Writes the episode store STORE as a LeRobot v3 dataset in the new folder OUT (see docs/dataset.md).
options:
""" + "\n".join(f"  {k}=  {h}" for k, h in OPTIONS.items())


def camera_key(key: str) -> str:
    return "observation.images." + key.removeprefix("image/")


def extra_key(key: str) -> str:
    return "reverie." + key.replace("/", ".")


def export(store_path: str, out: str, opts: dict[str, str] | None = None) -> Path:
    """Write STORE as a LeRobot v3 dataset at OUT (which must not exist); returns OUT."""
    from reverie.datasets.store import EpisodeStore

    opts = dict(opts or {})
    unknown = [k for k in opts if k not in OPTIONS]
    if unknown:
        raise ReverieError(f"unknown option {unknown[0]!r} for `data export lerobot`; it takes: {', '.join(OPTIONS)}=")
    images = opts.get("images", "video")
    if images not in ("video", "png"):
        raise ReverieError(f"images={images!r}: choose video or png")
    crf = opts.get("crf", "18")
    if not crf.isdigit() or int(crf) > 51:
        raise ReverieError(f"crf={crf!r}: give a whole number from 0 (best) to 51")
    out_path = Path(out).expanduser().absolute()
    if out_path.exists():
        raise StoreError(f"{out} already exists; export into a new folder (or remove it first)")
    if not out_path.parent.is_dir():
        raise StoreError(f"{out_path.parent} does not exist; create it first, or choose OUT inside an existing folder")
    store = EpisodeStore.open(store_path, mode="r")  # read-only: an export never changes the store
    try:
        if not store.num_episodes:
            raise StoreError(f"{store_path} has no committed episodes; there is nothing to export")
        fps = _fps(opts.get("fps"), store.fps)
        tmp = out_path.parent / f".{out_path.name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of an export that was killed
        try:
            tmp.mkdir()
            Writer(store, tmp, fps, images, int(crf), opts.get("robot") or store.robot).write()
            os.replace(tmp, out_path)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreError(f"cannot write {out}: {e.strerror or e}; nothing was left behind. Choose a writable "
                             f"folder with free space") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        store.close()
    return out_path


def _fps(text: str | None, store_fps: float) -> int:
    try:
        fps = float(text) if text is not None else store_fps
    except ValueError:
        raise ReverieError(f"fps={text!r} is not a number; pass the dataset's frame rate, e.g. fps=30") from None
    if fps <= 0 or abs(fps - round(fps)) > 0.01 * fps:
        where = f"fps={text}" if text is not None else f"the store's rate ({store_fps:g} fps)"
        raise ReverieError(f"{where} is not a whole number, and LeRobot datasets have a whole-number fps; "
                           f"pass fps=<whole number> (e.g. fps={max(1, round(fps))})")
    if fps != round(fps):  # 29.97 fps footage: LeRobot calls it 30; the capture times go along unchanged
        log.warning("the store is %g fps; LeRobot datasets have whole-number rates, so it is written as %d fps "
                    "(the measured capture times are kept in reverie.timestamp)", fps, round(fps))
    return int(round(fps))


class Writer:
    def __init__(self, store, root: Path, fps: int, images: str, crf: int, robot: str):
        self.store, self.root, self.fps, self.images, self.crf, self.robot = store, root, fps, images, crf, robot
        self.cameras = [k for k in store.schema if is_image_key(k)]
        low = store.lowdim()
        self.with_action = "action" in store.schema and bool(low["action_mask"].any())
        self.with_mask = self.with_action and not bool(low["action_mask"].all())
        successes = [store.meta(i).success for i in range(store.num_episodes)]
        self.with_success = any(s is not None for s in successes)
        self.extras = [k for k in store.schema if not is_image_key(k) and k not in MAPPED]
        grid = np.concatenate([np.arange(store.meta(i).length) / fps for i in range(store.num_episodes)])
        starts = np.concatenate([np.full(store.meta(i).length, low["timestamp"][store.meta(i).start])
                                 for i in range(store.num_episodes)])
        self.with_times = bool(np.abs(low["timestamp"] - starts - grid).max() > GRID_TOLERANCE_S)
        tasks = list(dict.fromkeys(store.meta(i).instruction for i in range(store.num_episodes)))
        self.tasks = {t: i for i, t in enumerate(tasks)}

    def features(self) -> dict:
        """info.json features: dtype, shape and names per column, as LeRobot declares them."""
        schema, f = self.store.schema, {}
        for key in self.cameras:
            h, w, c = schema[key].shape
            f[camera_key(key)] = {"dtype": "video" if self.images == "video" else "image", "shape": [h, w, c],
                                  "names": ["height", "width", "channels"]}
            if self.images == "video":
                f[camera_key(key)]["info"] = {
                    "video.height": h, "video.width": w, "video.codec": "h264", "video.pix_fmt": _pix_fmt(h, w),
                    "is_depth_map": False, "video.fps": self.fps, "video.channels": c, "has_audio": False}
        f["observation.state"] = _vector(schema["state"].shape, "float32", "state")
        if self.with_action:
            f["action"] = _vector(schema["action"].shape, "float32", "action")
        if self.with_mask:
            f["reverie.action_mask"] = {"dtype": "bool", "shape": [1], "names": None}
        f["next.reward"] = {"dtype": "float32", "shape": [1], "names": None}
        f["next.done"] = {"dtype": "bool", "shape": [1], "names": None}
        if self.with_success:
            f["next.success"] = {"dtype": "bool", "shape": [1], "names": None}
        if self.with_times:
            f["reverie.timestamp"] = {"dtype": "float64", "shape": [1], "names": None}
        for key in self.extras:
            spec = schema[key]
            f[extra_key(key)] = _vector(spec.shape or (1,), str(np.dtype(spec.dtype)), extra_key(key))
        for name, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                            ("index", "int64"), ("task_index", "int64")):
            f[name] = {"dtype": dtype, "shape": [1], "names": None}
        return f

    def columns(self, i: int, ep: dict, start: int) -> dict:
        """One episode's frame-table columns (key -> (T, ...) numpy)."""
        meta, n = self.store.meta(i), len(ep["timestamp"])
        cols = {}
        if self.images == "png":
            cols.update({camera_key(k): [{"bytes": _png(x), "path": f"frame-{t:06d}.png"} for t, x in enumerate(ep[k])]
                         for k in self.cameras})
        cols["observation.state"] = ep["state"].astype(np.float32)
        if self.with_action:
            cols["action"] = ep["action"].astype(np.float32)
        if self.with_mask:
            cols["reverie.action_mask"] = ep["action_mask"].astype(bool)
        reward = np.zeros(n, np.float32)
        reward[:-1] = ep["reward"][1:]  # row t+1's reward is received on the transition out of t
        cols["next.reward"] = reward
        cols["next.done"] = np.arange(n) == n - 1 if bool(ep["is_terminal"][-1]) else np.zeros(n, bool)
        if self.with_success:
            cols["next.success"] = (np.arange(n) == n - 1) & bool(meta.success)
        if self.with_times:
            cols["reverie.timestamp"] = ep["timestamp"].astype(np.float64)
        for key in self.extras:
            cols[extra_key(key)] = ep[key].reshape(n, -1) if ep[key].ndim > 1 else ep[key]
        cols["timestamp"] = (np.arange(n) / self.fps).astype(np.float32)
        cols["frame_index"] = np.arange(n, dtype=np.int64)
        cols["episode_index"] = np.full(n, i, np.int64)
        cols["index"] = np.arange(start, start + n, dtype=np.int64)
        cols["task_index"] = np.full(n, self.tasks[meta.instruction], np.int64)
        return cols

    def write(self) -> None:
        import pyarrow.parquet as pq

        store, features = self.store, self.features()
        data_path = self.root / DATA_PATH.format(chunk_index=0, file_index=0)
        data_path.parent.mkdir(parents=True)
        videos = {k: Video(self.root / VIDEO_PATH.format(video_key=camera_key(k), chunk_index=0, file_index=0),
                           store.schema[k].shape, self.fps, self.crf) for k in self.cameras} if self.images == "video" else {}
        writer, episodes, low_stats, start = None, [], {}, 0
        try:
            for i in range(store.num_episodes):
                ep = store.episode(i)
                table = _table(self.columns(i, ep, start), features)
                writer = writer or pq.ParquetWriter(str(data_path), table.schema, compression="snappy")
                writer.write_table(table)  # one row group per episode, as LeRobot writes them
                n = table.num_rows
                row = {"episode_index": i, "tasks": [store.meta(i).instruction], "length": n,
                       "data/chunk_index": 0, "data/file_index": 0,
                       "dataset_from_index": start, "dataset_to_index": start + n}
                for key, video in videos.items():
                    first = video.add(ep[key])
                    row.update({f"videos/{camera_key(key)}/chunk_index": 0, f"videos/{camera_key(key)}/file_index": 0,
                                f"videos/{camera_key(key)}/from_timestamp": first / self.fps,
                                f"videos/{camera_key(key)}/to_timestamp": (first + n) / self.fps})
                row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
                # Per-episode statistics, flattened as LeRobot writes them (stats/<feature>/<stat>).
                ep_stats = {name: _stats(values) for name, values in _lowdim(table, features).items()}
                ep_stats.update({camera_key(k): _image_stats(np.asarray(store._hist[k][i])) for k in self.cameras})
                row.update({f"stats/{name}/{stat}": v for name, s in ep_stats.items() for stat, v in s.items()})
                episodes.append(row)
                for name, values in _lowdim(table, features).items():
                    low_stats.setdefault(name, []).append(values)
                start += n
        finally:
            if writer is not None:
                writer.close()
            for video in videos.values():
                video.close()
        self.write_meta(features, episodes, {k: np.concatenate(v) for k, v in low_stats.items()}, start)

    def write_meta(self, features: dict, episodes: list[dict], low: dict[str, np.ndarray], frames: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        meta = self.root / "meta"
        (meta / "episodes" / "chunk-000").mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(episodes), self.root / EPISODES_PATH.format(chunk_index=0, file_index=0))
        # LeRobot reads tasks.parquet with pandas and takes the task strings from its index.
        tasks = pa.table({"task_index": pa.array(list(self.tasks.values()), pa.int64()),
                          "task": pa.array(list(self.tasks), pa.string())})
        pq.write_table(tasks.replace_schema_metadata({b"pandas": json.dumps(_pandas_index("task", "task_index"))}),
                       meta / "tasks.parquet")
        stats = {name: _stats(values) for name, values in low.items()}
        hists = self.store._hist  # per-episode pixel histograms, summed: no frame is read again
        for key in self.cameras:
            hist = np.asarray(hists[key][: self.store.num_episodes]).sum(0)
            stats[camera_key(key)] = _image_stats(hist)
        (meta / "stats.json").write_text(json.dumps(stats, indent=2))
        info = {
            "codebase_version": CODEBASE_VERSION, "robot_type": self.robot, "fps": self.fps,
            "total_episodes": len(episodes), "total_frames": frames, "total_tasks": len(self.tasks),
            "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
            "data_path": DATA_PATH, "video_path": VIDEO_PATH if self.images == "video" and self.cameras else None,
            "splits": {"train": f"0:{len(episodes)}"}, "features": features,
        }
        (meta / "info.json").write_text(json.dumps(info, indent=4))


class Video:
    """One camera's MP4: episodes appended back to back, frame i stamped at exactly i / fps."""

    def __init__(self, path: Path, shape, fps: int, crf: int):
        import av

        path.parent.mkdir(parents=True)
        self.container = av.open(str(path), "w")
        h, w, _ = shape
        # A keyframe every 2 frames and no B-frames: LeRobot seeks to single frames, so short GOPs
        # keep each seek cheap, and frames come out in the order they went in.
        self.stream = self.container.add_stream("libx264", rate=fps, options={"crf": str(crf), "g": "2", "bf": "0"})
        self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, _pix_fmt(h, w)
        self.stream.time_base = Fraction(1, fps)
        self.frames = 0

    def add(self, frames: np.ndarray) -> int:
        """Append (T, H, W, 3) uint8 frames; returns the index of the first."""
        import av

        first = self.frames
        for x in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(x), format="rgb24")
            frame.pts = self.frames
            self.frames += 1
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
        return first

    def close(self) -> None:
        if self.container is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
            self.container = None


def _pix_fmt(h: int, w: int) -> str:
    return "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"  # 4:2:0 needs even sides


def _vector(shape, dtype: str, name: str) -> dict:
    width = int(np.prod(shape))
    return {"dtype": dtype, "shape": [width], "names": [f"{name}_{j}" for j in range(width)] if width > 1 else None}


def _png(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise StoreError("a frame could not be encoded as PNG")
    return buf.tobytes()


def _table(cols: dict, features: dict):
    """Columns -> an Arrow table typed as LeRobot's HF features read it: a shape (1,) feature is a
    plain value, a wider one a fixed-size list, an image a struct<bytes, path>."""
    import pyarrow as pa

    arrays = {}
    for name, values in cols.items():
        ft = features[name]
        if ft["dtype"] == "image":
            arrays[name] = pa.array(values, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        elif ft["shape"] == [1]:
            arrays[name] = pa.array(np.asarray(values).reshape(-1), pa.from_numpy_dtype(np.dtype(ft["dtype"])))
        else:
            flat = pa.array(np.asarray(values).reshape(-1), pa.from_numpy_dtype(np.dtype(ft["dtype"])))
            arrays[name] = pa.FixedSizeListArray.from_arrays(flat, ft["shape"][0])
    return pa.table(arrays)


def _lowdim(table, features: dict) -> dict[str, np.ndarray]:
    """The numeric columns of one episode's table as (T, D) float64, for stats.json."""
    out = {}
    for name in table.column_names:
        if features[name]["dtype"] in ("image", "video"):
            continue
        col = table[name].combine_chunks()
        values = col.flatten() if hasattr(col, "flatten") and features[name]["shape"] != [1] else col
        out[name] = np.asarray(values.to_numpy(zero_copy_only=False), np.float64).reshape(len(col), -1)
    return out


def _stats(x: np.ndarray) -> dict:
    q = np.quantile(x, QUANTILES, axis=0)
    stats = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([len(x)])}
    stats.update({f"q{round(p * 100):02d}": v for p, v in zip(QUANTILES, q)})
    return {k: np.asarray(v).tolist() for k, v in stats.items()}


def _image_stats(hist: np.ndarray) -> dict:
    """(3, 256) pixel counts -> LeRobot's image stats: per channel in [0, 1], shaped (3, 1, 1)."""
    s = stats_lib.from_histogram(hist)
    cdf = np.cumsum(hist, -1) / hist.sum(-1, keepdims=True)
    out = {k: s[k] / 255 for k in ("min", "max", "mean", "std")}
    out["count"] = np.array([int(hist[0].sum())])
    out.update({f"q{round(p * 100):02d}": np.argmax(cdf >= p - 1e-12, -1) / 255 for p in QUANTILES})
    return {k: (v.reshape(3, 1, 1) if k != "count" else v).tolist() for k, v in out.items()}


def _pandas_index(index: str, column: str) -> dict:
    """The `pandas` schema metadata of a frame with string index `index` and one int64 column."""
    return {"index_columns": [index], "column_indexes": [], "columns": [
        {"name": column, "field_name": column, "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
        {"name": index, "field_name": index, "pandas_type": "unicode", "numpy_type": "object", "metadata": None}],
        "creator": {"library": "pyarrow"}, "pandas_version": "2.0.0"}


def main(argv: list[str]) -> int:
    from reverie.config import split_args

    words, overrides = split_args(argv[1:] if argv[:1] == ["export"] else argv)
    if not words or words[0] in ("-h", "--help") or "--help" in words or "-h" in words:
        print(USAGE)
        return 0
    if words[0] != "lerobot":
        raise ReverieError(f"unknown export kind {words[0]!r}; `data export` writes: lerobot\n\n{USAGE}")
    if len(words) != 3:
        raise ReverieError(f"expected `data export lerobot STORE OUT`, got {' '.join(words)}; see `reverie data export --help`")
    opts = dict(o.partition("=")[::2] for o in overrides)
    out = export(words[1], words[2], opts)
    print(f"exported {words[1]} to {out} (LeRobot {CODEBASE_VERSION})")
    return 0
