"""Import a LeRobot dataset folder: every layout LeRobot has shipped.

v3 (codebase_version "v3.0"):
  meta/info.json                       fps, robot_type, features, data_path / video_path templates
  meta/tasks.parquet                   task string <-> task_index
  meta/episodes/chunk-*/file-*.parquet one row per episode: tasks, length, data/{chunk,file}_index,
                                       videos/<key>/{chunk_index,file_index,from_timestamp,to_timestamp}
  data/chunk-*/file-*.parquet          the frame table, many episodes per file
  videos/<key>/chunk-*/file-*.mp4      many episodes per file, back to back; an episode's frame at
                                       table timestamp t sits at from_timestamp + t in the file
v2.x: see V2. early (HF `datasets` Arrow, before v2):
  meta_data/info.json                  fps
  train/data-*.arrow                   the frame table as an Arrow IPC stream (or file)
  videos/<key>_episode_000000.mp4      with video: the image column holds {path, timestamp} into these
                                       (fixtures/lerobot_v1); without: the image column holds the
                                       frames themselves, {bytes, path} PNG cells (lerobot's pusht and
                                       xarm test data of April 2024)

All share the frame table: observation.state, action, timestamp, episode_index, frame_index and
optionally next.reward / next.success / next.done. `next.*` at frame t describe the transition out
of t, so reward goes to row t+1 (the row arriving at o_{t+1}); row 0 gets 0 and the last frame's
`next.reward` is dropped because the observation it leads to was never recorded. An episode counts
as a success if any `next.success` is set. `next.done` at the last frame (or the one before, whose
next observation is the last row) marks the last row terminal, as does success; `done=ignore` leaves
next.done out for datasets where it only marks a time limit. A `next.done` earlier in an episode has
no row to land on (a store episode ends at its last row) and is named in a warning. The table's
action at the last frame is kept with `action_mask` True: LeRobot records the command sent there.
reverie's exporter (export_lerobot.py) adds `reverie.action_mask` (rows whose action is unknown) and
`reverie.timestamp` (measured capture times, where they are off the frame_index / fps grid); both
map back. A
dataset without an action column is stored action-free (zeros, action_mask False) and the import
says so. An episode's task strings become its instruction (several are joined with "; "); the early
layout has none, so instruction= supplies it. Cameras: observation.images.<name> -> image/<name>,
and the lone observation.image -> image/front. state= / action= pick the table columns (joined with
+), and state_dims= / action_dims= the dimensions of them kept (0:2 or 0,1); the store attrs `import`
record both. Every other column is named in a warning, so nothing is left out silently.

Frame rates: a dataset has one fps (info.json). A camera whose video states another rate, or an
episode whose timestamps advance at another rate, is an error naming both, since its frames could
not be matched to the table's rows.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from reverie.datasets.import_video import decode, probe
from reverie.datasets.importers import (Episode, Source, dims_help, make_rows, note_picks, parse_size, pick, resize,
                                        same_rate, schema_for, warn_unmapped)
from reverie.errors import StoreError
from reverie.specs import ArraySpec

OPTIONS = {
    "state": "table column(s) for state, joined with + (default: observation.state)",
    "state_dims": dims_help("state"),
    "action": "table column(s) for action, joined with + (default: action)",
    "action_dims": dims_help("action"),
    "cameras": "key:camera pairs, comma-separated, e.g. observation.images.top:front; only these are "
               "imported (default: every camera, observation.images.<name> -> image/<name>)",
    "done": "terminal (default): next.done at an episode's end marks its last row terminal; ignore: only "
            "next.success does (datasets whose next.done is a time limit)",
}

# Columns that order the rows and find the tasks; they become no store key of their own.
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
# Columns the row convention maps (module doc); reverie.* are written by reverie's exporter.
MAPPED = ("next.reward", "next.success", "next.done", "reverie.action_mask", "reverie.timestamp")

log = logging.getLogger(__name__)

# A camera frame must lie within this fraction of a frame period of the table's timestamp.
TOLERANCE_FRAMES = 0.25


def read(srcs: list[str], opts: dict[str, str], existing: dict[str, ArraySpec] | None) -> Source:
    if len(srcs) != 1:
        raise StoreError(f"`data import lerobot` takes one dataset folder, got {len(srcs)}: {srcs}")
    root = Path(srcs[0])
    if not root.is_dir():
        raise StoreError(f"{root} does not exist or is not a folder; pass a LeRobot dataset folder "
                         f"(with meta/info.json, or meta_data/info.json and train/*.arrow)")
    if (root / "meta" / "info.json").exists():
        version = str(json.loads((root / "meta" / "info.json").read_text()).get("codebase_version", ""))
        layouts = {"v2": V2, "v3": V3}
        if version[:2] not in layouts:
            raise StoreError(f"{root} is a LeRobot {version or 'unversioned'} dataset; this importer reads v3, "
                             f"v2.x and the early Arrow layout. Convert it with LeRobot's conversion scripts first")
        layout = layouts[version[:2]](root)
    elif (root / "meta_data" / "info.json").exists() and list((root / "train").glob("*.arrow")):
        layout = Early(root)
    else:
        raise StoreError(f"{root} is not a LeRobot dataset: found neither meta/info.json (v2, v3) nor "
                         f"meta_data/info.json with train/*.arrow (early layout)")
    return layout.source(opts, existing)


class Layout:
    """Shared table handling; subclasses find the tables, tasks and video frames."""

    version = ""

    def __init__(self, root: Path):
        self.root = root
        try:
            self.info = json.loads(self.info_path.read_text())
            self.fps = float(self.info["fps"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise StoreError(f"{self.info_path} is unreadable or states no fps ({e!r}); the dataset is damaged") from e

    def source(self, opts, existing) -> Source:
        sample = self.first_table()
        self.state_cols = opts.get("state", "observation.state" if "observation.state" in sample.column_names else "")
        self.action_cols = opts.get("action", "action" if "action" in sample.column_names else "")
        for col in _split(self.state_cols) + _split(self.action_cols):
            if col not in sample.column_names:
                raise StoreError(f"{self.root}: no column {col!r} in the frame table (columns: "
                                 f"{sample.column_names}); pass state=/action= with existing columns")
        if opts.get("done", "terminal") not in ("terminal", "ignore"):
            raise StoreError(f"done={opts['done']!r}: choose terminal or ignore")
        self.done_terminal = opts.get("done", "terminal") == "terminal"
        self.picks = {key: pick(opts, key, _split(cols), _width(sample, cols))
                      for key, cols in (("state", self.state_cols), ("action", self.action_cols))}
        found = self.camera_keys(sample)
        self.cameras = {k: _camera_name(k) for k in found}  # source key -> store camera name
        if "cameras" in opts:
            pairs = [p.split(":", 1) if ":" in p else (p, _camera_name(p)) for p in opts["cameras"].split(",") if p]
            missing = [k for k, _ in pairs if k not in found]
            if missing:
                raise StoreError(f"{self.root} has no camera {missing[0]!r}; its cameras are {found}")
            self.cameras = dict(pairs)
            warn_unmapped(str(self.root), [k for k in found if k not in self.cameras], "cameras= leaves them out")
        self.check_video_rates()
        mapped = {*BOOKKEEPING, *MAPPED, *found, *_split(self.state_cols), *_split(self.action_cols)}
        warn_unmapped(str(self.root), [c for c in sample.column_names if c not in mapped],
                      "add one to state with state=observation.state+<column>, or name it with state=/action=")
        if not self.action_cols:
            log.warning("%s: the frame table has no action column, so its episodes are stored action-free "
                        "(action zeros, action_mask False); if the actions are under another name, pass "
                        "action=<column>", self.root)
        self.size = parse_size(opts.get("size"))
        if existing is not None:
            schema = existing
        else:
            cams = {cam: self.size or self.native_size(k) for k, cam in self.cameras.items()}
            schema = note_picks(schema_for(cams, max(1, self.picks["state"].out_width),
                                           max(1, self.picks["action"].out_width),
                                           units=f"as in LeRobot {self.root.name}"), list(self.picks.values()))
            if not self.action_cols:
                schema["action"] = ArraySpec((1,), "float32", units=f"none in LeRobot {self.root.name}: zeros, "
                                                                   f"action_mask False")
        self.schema = schema
        self.default_instruction = opts.get("instruction", "")
        return Source(schema=schema, fps=self.fps, robot=self.info.get("robot_type") or "unknown",
                      source="teleop", episodes=self.episodes(), num_episodes=self.num_episodes(),
                      attrs={"imported_from": f"lerobot {self.version}", "lerobot_root": str(self.root),
                             "lerobot_cameras": {cam: k for k, cam in self.cameras.items()},
                             "import": {k: p.record() for k, p in self.picks.items()}})

    def check_video_rates(self) -> None:
        """A camera whose video info states another rate than the dataset cannot be matched to its rows."""
        for key in self.cameras:
            feature = self.info.get("features", {}).get(key) or {}
            rate = (feature.get("info") or feature.get("video_info") or {}).get("video.fps")
            if rate and not same_rate(float(rate), self.fps):
                raise StoreError(f"{self.root}: camera {key} is a {float(rate):g} fps video but the dataset is "
                                 f"{self.fps:g} fps ({self.info_path.name}), so its frames do not line up with "
                                 f"the table's rows; leave it out with cameras=, or re-encode it at {self.fps:g} fps")

    def to_episode(self, table, frames: dict[str, np.ndarray], tasks: list[str], index: int) -> Episode:
        n = table.num_rows
        order = np.argsort(_column(table, "frame_index"), kind="stable")
        if not np.array_equal(order, np.arange(n)):
            raise StoreError(f"{self.root}: episode {index} rows are not in frame_index order; the table is damaged")
        times = _column(table, "timestamp").astype(np.float64)
        self.check_rate(times, index)
        names = table.column_names
        reward = None
        if "next.reward" in names:
            reward = np.zeros(n, np.float32)
            reward[1:] = _column(table, "next.reward")[:-1]  # next.* belongs to the transition out of t
        success = bool(_column(table, "next.success").any()) if "next.success" in names else None
        terminal = bool(success)
        if "next.done" in names and self.done_terminal:
            done = _column(table, "next.done").astype(bool).reshape(n)
            # next.done at t makes o_{t+1} terminal: frame n-2 points at the last row, frame n-1 at an
            # observation never recorded, whose nearest row is the last one too.
            terminal |= bool(done[-2:].any())
            early = np.flatnonzero(done[:-2])
            if len(early):
                log.warning("%s: episode %d sets next.done at frames %s before its end; a store episode ends at "
                            "its last row, so these are not kept", self.root, index, early[:8].tolist())
        mask = _column(table, "reverie.action_mask").astype(bool).reshape(n) if "reverie.action_mask" in names else None
        if "reverie.timestamp" in names:  # the capture times; `timestamp` is LeRobot's frame_index / fps
            times = _column(table, "reverie.timestamp").astype(np.float64).reshape(n)
        state = self.picks["state"].apply(_columns(table, self.state_cols))
        action = self.picks["action"].apply(_columns(table, self.action_cols))
        steps = make_rows(self.schema, times, frames, state=state, action=action, reward=reward,
                          terminal=terminal, action_mask=mask)
        instruction = "; ".join(tasks) if tasks else self.default_instruction
        return Episode(steps, instruction=instruction, success=success,
                       notes=f"lerobot {self.version} {self.root.name} episode {index}")

    def check_rate(self, times: np.ndarray, index: int) -> None:
        """An episode's timestamps advance at the dataset's fps (the median step, so jitter is fine)."""
        if len(times) < 2:
            return
        step = float(np.median(np.diff(times)))
        if step <= 0:
            raise StoreError(f"{self.root}: episode {index}'s timestamps do not increase; the table is damaged")
        if abs(1 / step - self.fps) > 0.1 * self.fps:
            raise StoreError(f"{self.root}: episode {index}'s timestamps advance at {1 / step:.3g} fps but the dataset "
                             f"is {self.fps:g} fps ({self.info_path.name}); a store has one rate, so import "
                             f"episodes of each rate into their own store, or fix the fps in {self.info_path.name}")

    def frames_at(self, path: Path, times: np.ndarray, start: float = 0.0) -> np.ndarray:
        """Frames of `path` nearest to `start + times` (seconds), checked to lie within tolerance."""
        tol = TOLERANCE_FRAMES / self.fps
        want = start + times
        t, frames = decode(path, self.size, want.min() - tol, want.max() + tol)  # t ascends
        after = np.searchsorted(t, want).clip(0, len(t) - 1)  # first decoded frame at or after each time
        before = (after - 1).clip(0)
        idx = np.where(np.abs(t[before] - want) <= np.abs(t[after] - want), before, after)
        err = np.abs(t[idx] - want)
        if err.max() > tol:
            i = int(err.argmax())
            rate = probe(path)[0]
            if rate > 0 and not same_rate(rate, self.fps):
                raise StoreError(f"{path} is a {rate:g} fps video but the dataset is {self.fps:g} fps, so its frames "
                                 f"do not line up with the table's rows; re-encode it at {self.fps:g} fps, or leave "
                                 f"the camera out with cameras=")
            raise StoreError(f"{path}: no frame within {tol * 1000:.0f} ms of t={want[i]:.4f}s "
                             f"(nearest {t[idx[i]]:.4f}s); the video does not match the table's timestamps")
        return frames[idx]


class Early(Layout):
    version = "early (Arrow)"

    @property
    def info_path(self) -> Path:
        return self.root / "meta_data" / "info.json"

    def table(self):
        if not hasattr(self, "_table"):
            import pyarrow as pa
            import pyarrow.ipc as ipc

            parts = []
            for f in sorted((self.root / "train").glob("*.arrow")):
                try:  # HF `datasets` writes IPC streams; an IPC file is read too
                    with pa.memory_map(str(f)) as src:
                        parts.append(ipc.open_stream(src).read_all())
                except pa.ArrowInvalid:
                    try:
                        with pa.memory_map(str(f)) as src:
                            parts.append(ipc.open_file(src).read_all())
                    except pa.ArrowInvalid as e:
                        raise StoreError(f"{f} is not an Arrow IPC stream or file ({e}); the file is damaged or "
                                         f"not from a LeRobot dataset") from e
            self._table = pa.concat_tables(parts)
        return self._table

    first_table = table

    def camera_keys(self, table) -> list[str]:
        """Struct columns: {path, timestamp} point into a video, {bytes, path} hold the frame itself."""
        import pyarrow as pa

        def fields(f):
            return {c.name for c in f.type} if pa.types.is_struct(f.type) else set()

        self.image_cols = [f.name for f in table.schema if {"bytes", "path"} <= fields(f)]
        return [f.name for f in table.schema if {"path", "timestamp"} <= fields(f)] + self.image_cols

    def native_size(self, key: str) -> tuple[int, int]:
        cell = self.table()[key][0].as_py()
        if key in self.image_cols:
            return _decode_image(cell, None, self.root).shape[:2]
        return decode(self.root / cell["path"], None, 0.0, 0.0)[1].shape[1:3]

    def num_episodes(self) -> int:
        return len(np.unique(_column(self.table(), "episode_index")))

    def episodes(self):
        table = self.table()
        ep_index = _column(table, "episode_index")
        for ep in np.unique(ep_index):
            rows = np.flatnonzero(ep_index == ep)
            part = table.take(rows)
            frames = {}
            for key, cam in self.cameras.items():
                refs = part[key].to_pylist()
                if key in self.image_cols:
                    frames[cam] = np.stack([_decode_image(c, self.size, self.root) for c in refs])
                    continue
                paths = {r["path"] for r in refs}
                if len(paths) != 1:
                    raise StoreError(f"{self.root}: episode {ep} of {key} spans several videos {sorted(paths)}")
                times = np.array([r["timestamp"] for r in refs], np.float64)
                frames[cam] = self.frames_at(self.root / paths.pop(), times)
            yield self.to_episode(part, frames, [], int(ep))


class V3(Layout):
    version = "v3"

    @property
    def info_path(self) -> Path:
        return self.root / "meta" / "info.json"

    def __init__(self, root: Path):
        super().__init__(root)
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise StoreError(f"{root}/meta/episodes holds no chunk-*/file-*.parquet; the dataset is incomplete")
        tables = []
        for f in files:  # skip the many per-episode `stats/...` columns: only the index is needed
            names = [n for n in pq.read_schema(f).names if not n.startswith("stats/")]
            tables.append(pq.read_table(f, columns=names))
        self.rows = pa.concat_tables(tables, promote_options="default").sort_by("episode_index").to_pylist()
        self._files = {}

    def data_file(self, path: Path):
        import pyarrow.parquet as pq

        if path not in self._files:
            if not path.exists():
                raise StoreError(f"{path} is missing; the dataset's episode metadata points at it")
            self._files = {path: pq.read_table(path)}  # keep one file: episodes come in file order
        return self._files[path]

    def episode_table(self, row: dict):
        """The frame-table rows of one episode."""
        import pyarrow.compute as pc

        template = self.info.get("data_path", "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet")
        path = self.root / template.format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
        table = self.data_file(path)
        return table.filter(pc.equal(table["episode_index"], row["episode_index"]))

    def video_file(self, key: str, row: dict) -> Path:
        template = self.info.get("video_path", "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4")
        return self.root / template.format(video_key=key, chunk_index=row[f"videos/{key}/chunk_index"],
                                           file_index=row[f"videos/{key}/file_index"])

    def video_start(self, key: str, row: dict) -> float:
        return float(row[f"videos/{key}/from_timestamp"])

    def task_table(self) -> dict[int, str]:
        """task_index -> task string. pandas writes the strings as its index: a `task` column, or
        `__index_level_0__` when the index had no name."""
        import pyarrow.parquet as pq

        path = self.root / "meta" / "tasks.parquet"
        if not path.exists():
            return {}
        tasks = pq.read_table(path).to_pydict()
        return dict(zip(tasks["task_index"], tasks.get("task") or tasks.get("__index_level_0__") or []))

    # Shared by v2 and v3 ---------------------------------------------------------------------------
    def num_episodes(self) -> int:
        return len(self.rows)

    def first_table(self):
        return self.episode_table(self.rows[0])

    def camera_keys(self, table) -> list[str]:
        features = self.info.get("features", {})
        self.video_keys = [k for k, v in features.items() if v.get("dtype") == "video"]
        images = [k for k, v in features.items() if v.get("dtype") == "image"]
        return self.video_keys + [k for k in images if k in table.column_names]

    def native_size(self, key: str) -> tuple[int, int]:
        shape, names = self.info["features"][key]["shape"], self.info["features"][key].get("names") or []
        if list(names)[:3] == ["channels", "height", "width"] or shape[0] == 3 and shape[-1] != 3:
            return shape[1], shape[2]
        return shape[0], shape[1]

    def episodes(self):
        for row in self.rows:
            part = self.episode_table(row)
            if part.num_rows != row["length"]:
                raise StoreError(f"{self.root}: episode {row['episode_index']} has {part.num_rows} rows in its data "
                                 f"file but its metadata says {row['length']}; the dataset is incomplete")
            times = _column(part, "timestamp").astype(np.float64)
            frames = {}
            for key, cam in self.cameras.items():
                if key in self.video_keys:
                    frames[cam] = self.frames_at(self.video_file(key, row), times, start=self.video_start(key, row))
                else:  # an `image` feature: encoded PNG/JPEG bytes in the table itself
                    frames[cam] = np.stack([_decode_image(c, self.size, self.root) for c in part[key].to_pylist()])
            tasks = list(row.get("tasks") or [])
            if not tasks and "task_index" in part.column_names:  # fall back on the frames' task_index
                lookup = self.task_table()
                tasks = [lookup[i] for i in dict.fromkeys(_column(part, "task_index").tolist()) if i in lookup]
            yield self.to_episode(part, frames, tasks, row["episode_index"])


class V2(V3):
    """LeRobot v2.0/v2.1: one parquet and one video per episode, episode and task lists in JSON lines.

      meta/episodes.jsonl   {"episode_index", "tasks", "length"} per line
      meta/tasks.jsonl      {"task_index", "task"} per line
      data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet
      videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4
    """

    version = "v2"

    def __init__(self, root: Path):
        Layout.__init__(self, root)
        self.rows = sorted(_jsonl(root / "meta" / "episodes.jsonl"), key=lambda r: r["episode_index"])
        self.chunks_size = int(self.info.get("chunks_size", 1000))

    def _path(self, template: str, row: dict, **keys) -> Path:
        ep = row["episode_index"]
        return self.root / template.format(episode_chunk=ep // self.chunks_size, episode_index=ep, **keys)

    def episode_table(self, row: dict):
        import pyarrow.parquet as pq

        template = self.info.get("data_path", "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet")
        path = self._path(template, row)
        if not path.exists():
            raise StoreError(f"{path} is missing; meta/episodes.jsonl lists episode {row['episode_index']}")
        return pq.read_table(path)

    def video_file(self, key: str, row: dict) -> Path:
        template = self.info.get("video_path") or "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
        return self._path(template, row, video_key=key)

    def video_start(self, key: str, row: dict) -> float:
        return 0.0  # one video per episode

    def task_table(self) -> dict[int, str]:
        path = self.root / "meta" / "tasks.jsonl"
        return {r["task_index"]: r["task"] for r in _jsonl(path)} if path.exists() else {}


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise StoreError(f"{path} is missing; the LeRobot dataset is incomplete")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise StoreError(f"{path} is not valid JSON lines ({e}); the file is damaged") from e


def _decode_image(cell: dict, size, root: Path) -> np.ndarray:
    """An HF `Image` cell: encoded PNG/JPEG bytes, or (bytes None) a path to the file, relative to the
    dataset or absolute."""
    import cv2

    data = cell.get("bytes") if cell else None
    if data is None and cell and cell.get("path"):
        path = next((p for p in (root / cell["path"], Path(cell["path"])) if p.is_file()), None)
        if path is None:
            raise StoreError(f"an image cell points at {cell['path']}, which is neither in {root} nor on this "
                             f"machine; copy the images beside the dataset")
        data = path.read_bytes()
    img = cv2.imdecode(np.frombuffer(data or b"", np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise StoreError(f"an image cell ({(cell or {}).get('path')}) could not be decoded; the dataset is damaged")
    return resize(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), size)


def _camera_name(key: str) -> str:
    """observation.images.top -> top; the lone observation.image -> front (the project's default camera)."""
    name = key.removeprefix("observation.images.").removeprefix("observation.")
    return "front" if name == "image" else name.replace(".", "_")


def _split(cols: str) -> list[str]:
    return [c for c in cols.split("+") if c]


def _column(table, name: str) -> np.ndarray:
    """A table column as numpy; list columns become (N, D)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if name not in table.column_names:
        raise StoreError(f"the LeRobot frame table has no {name!r} column (it has {table.column_names}); "
                         f"the dataset is incomplete or not a LeRobot dataset")
    col = table[name].combine_chunks()
    if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
        flat = pc.list_flatten(col).to_numpy(zero_copy_only=False)
        return flat.reshape(len(col), -1) if len(col) else flat.reshape(0, 0)
    return col.to_numpy(zero_copy_only=False)


def _columns(table, cols: str) -> np.ndarray | None:
    names = _split(cols)
    if not names:
        return None
    parts = [_column(table, c).astype(np.float32) for c in names]
    return np.concatenate([p.reshape(len(p), -1) for p in parts], axis=1)


def _width(table, cols: str) -> int:
    part = _columns(table.slice(0, 1), cols)
    return 0 if part is None else part.shape[1]
