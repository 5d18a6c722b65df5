"""The episode store: one zarr v3 group per dataset, in the diffusion-policy replay-buffer layout.

    <name>.zarr/
      data/<key>                 (N, ...) all episodes concatenated, time-major
      meta/episode_ends          (E,) int64 end row of each committed episode  <- the commit point
      meta/episodes/<field>      (E,) instruction, source, notes (str); round (int32);
                                 success (int8: 1, 0, -1 = unknown); length (int64)
      meta/stats/<image key>     (E, 3, 256) int64 per-episode pixel histograms (see stats.py)
      attrs                      format, schema_version, fps, robot, image_codec, keys (per-key specs),
                                 attrs (user), stats (current normalisation statistics)

Commit protocol. An episode streams into data/<key> (arrays grow past the committed end), then its
per-episode meta rows are appended with `length` last, then meta/episode_ends grows by one: only
that makes it visible. Growing a zarr array is two writes (shape, then chunk), so a crash between
them can leave a last episode_ends entry holding the fill value or a stale value from a deleted
episode; the entry counts only if it equals the previous end plus meta/episodes/length, which was
written before it. Every zarr object write is atomic (LocalStore writes a temp file and renames;
object stores replace whole objects), so a chunk shared with committed rows is never half-written.
Deletion runs the other way: episode_ends shrinks first.

Opening finds anything past the last committed episode (an interrupted writer) and reports it with
logging.warning; mode "a" truncates it, mode "r" ignores it. Protection is against a killed process;
power-loss durability would need fsync, which we leave to the filesystem.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.errors
from zarr.codecs import ZstdCodec
from zarr.storage import FsspecStore, LocalStore

from reverie.datasets import stats as stats_lib
from reverie.datasets.codecs import ImageCodec
from reverie.datasets.schema import (SCHEMA_VERSION, SOURCES, check_schema, is_image_key, make_schema,
                                     schema_from_json, schema_to_json)
from reverie.errors import ReverieError, StoreError
from reverie.specs import ArraySpec, TextSpec

__all__ = ["EpisodeStore", "EpisodeWriter", "EpisodeMeta", "make_schema", "SOURCES"]

log = logging.getLogger(__name__)

FORMAT = "reverie.episodes"
# Per-episode fields in write order; `length` must stay last (it validates the episode_ends entry).
META_FIELDS = {"instruction": str, "source": str, "notes": str, "round": "int32", "success": "int8",
               "length": "int64"}
IMAGE_CHUNK_BYTES = 4 << 20  # ~4 MiB image chunks: 32 frames at 64x64, 4 frames at 480x640
MAX_IMAGE_CHUNK_FRAMES = 32  # a T=32 window then touches at most two chunks
LOWDIM_CHUNK_FRAMES = 4096
FLUSH_BYTES = 32 << 20  # a writer holds at most ~32 MiB of frames before writing them out


@dataclasses.dataclass(frozen=True)
class EpisodeMeta:
    index: int
    instruction: str
    source: str
    round: int
    success: bool | None
    notes: str
    start: int
    length: int


def _chunk_frames(spec: ArraySpec) -> int:
    frame_bytes = int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
    if len(spec.shape) == 3:  # images
        return int(np.clip(IMAGE_CHUNK_BYTES // max(frame_bytes, 1), 1, MAX_IMAGE_CHUNK_FRAMES))
    return LOWDIM_CHUNK_FRAMES


def _resolve(path_or_url: str | os.PathLike, read_only: bool) -> tuple[Any, Path | None]:
    """A zarr store for a local path, file:// URL or any other fsspec URL."""
    url = os.fspath(path_or_url)
    if "://" not in url or url.startswith("file://"):
        path = Path(url.removeprefix("file://")).expanduser().absolute()
        return LocalStore(path, read_only=read_only), path
    try:
        return FsspecStore.from_url(url, read_only=read_only), None
    except (ImportError, ValueError, TypeError) as e:
        raise StoreError(f"cannot open {url!r} through fsspec ({e}); install the fsspec backend for this "
                         "protocol or use a local path") from e


def _coerce(spec: ArraySpec, value: Any, key: str) -> np.ndarray:
    """Validate one step's value; casts only within a kind (float64 -> float32), never for images."""
    a = np.asarray(value)
    if a.shape != spec.shape:
        raise StoreError(f"{key}: expected shape {spec.shape} per step, got {a.shape}; "
                         "convert it to the store's schema before adding")
    want = np.dtype(spec.dtype)
    if a.dtype != want:
        if is_image_key(key) or not np.can_cast(a.dtype, want, "same_kind"):
            raise StoreError(f"{key}: expected dtype {want}, got {a.dtype}; cast it explicitly "
                             f"(e.g. np.asarray(x, np.{want}))")
        a = a.astype(want)
    if want.kind == "f" and not np.isfinite(a).all():
        raise StoreError(f"{key}: contains NaN or Inf; fix the source (sensor dropout?) before adding")
    return a


class EpisodeStore:
    """A zarr v3 episode store. Create with `EpisodeStore.create`, open with `EpisodeStore.open`."""

    def __init__(self, group: zarr.Group, mode: str, url: str, path: Path | None, lock=None):
        self._group, self._mode, self.url, self._path, self._lock = group, mode, url, path, lock
        attrs = dict(group.attrs)
        self.schema: dict[str, ArraySpec] = schema_from_json(attrs["keys"])
        self.fps: float = float(attrs["fps"])
        self.robot: str = str(attrs["robot"])
        self.image_codec: str = str(attrs.get("image_codec", "lossless"))
        self._open_arrays()
        self._writer: EpisodeWriter | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None  # background frame writes
        self._lowdim: dict[str, np.ndarray] | None = None  # committed low-dim rows, loaded on first use
        self._hist_total: dict[str, np.ndarray] | None = None  # (3, 256) pixel counts over committed episodes
        self._stats_memo: dict | None = None  # statistics computed by this handle, when attrs were stale
        self._load()

    # ----------------------------------------------------------------------------------- create/open
    @classmethod
    def create(cls, path_or_url, schema: dict[str, ArraySpec], fps: float, robot: str,
               image_codec: str = "lossless", attrs: Mapping | None = None) -> "EpisodeStore":
        """A new empty store; refuses to touch anything that already exists at the location."""
        schema = check_schema(dict(schema))
        if image_codec not in ("lossless", "lossy"):
            raise StoreError(f"image_codec must be 'lossless' or 'lossy', got {image_codec!r}")
        if not (np.isfinite(fps) and fps > 0):
            raise StoreError(f"fps must be a positive number, got {fps!r}")
        attrs = _json_attrs(attrs or {})
        store, path = _resolve(path_or_url, read_only=False)
        if path is not None and path.exists() and not (path.is_dir() and not any(path.iterdir())):
            raise StoreError(f"{path} already exists; open it with EpisodeStore.open(path, mode='a') "
                             "or choose a new path")
        existed = path is not None and path.exists()  # an empty folder: the user's, kept on failure
        try:
            cls._create_layout(store, schema, fps, robot, image_codec, attrs)
        except (FileExistsError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError) as e:
            raise StoreError(f"{path_or_url} already holds zarr data; open it or choose a new path") from e
        except OSError as e:  # a full or read-only disk: leave nothing half-made behind
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)
                if existed:
                    path.mkdir(exist_ok=True)
            raise StoreError(f"cannot create the store {path_or_url}: {e.strerror or e}; nothing was left "
                             "behind. Free disk space or choose a writable location") from e
        return cls.open(path_or_url, mode="a")

    @staticmethod
    def _create_layout(store, schema: dict[str, ArraySpec], fps: float, robot: str, image_codec: str,
                       attrs: dict) -> None:
        group = zarr.open_group(store, mode="w-", zarr_format=3)
        lossless = ZstdCodec(level=3)
        for key, spec in schema.items():
            codec = ({"serializer": ImageCodec(), "compressors": None}
                     if is_image_key(key) and image_codec == "lossy" else {"compressors": lossless})
            group.create_array(f"data/{key}", shape=(0, *spec.shape), chunks=(_chunk_frames(spec), *spec.shape),
                               dtype=spec.dtype, fill_value=0, **codec)
            if is_image_key(key):
                group.create_array(f"meta/stats/{key}", shape=(0, 3, 256), chunks=(256, 3, 256),
                                   dtype="int64", fill_value=0, compressors=lossless)
        for field, dtype in META_FIELDS.items():
            group.create_array(f"meta/episodes/{field}", shape=(0,), chunks=(LOWDIM_CHUNK_FRAMES,),
                               dtype=dtype, **({} if dtype is str else {"fill_value": 0}))
        group.create_array("meta/episode_ends", shape=(0,), chunks=(LOWDIM_CHUNK_FRAMES,), dtype="int64",
                           fill_value=0, compressors=lossless)
        # The format marker goes last: a create that dies half-way is "not a reverie store", not a
        # store with missing arrays.
        group.attrs.update({
            "format": FORMAT, "schema_version": SCHEMA_VERSION, "fps": float(fps), "robot": str(robot),
            "image_codec": image_codec, "keys": schema_to_json(schema), "attrs": attrs,
        })

    @classmethod
    def open(cls, path_or_url, mode: str = "r") -> "EpisodeStore":
        if mode not in ("r", "a"):
            raise StoreError(f"mode must be 'r' (read) or 'a' (append), got {mode!r}")
        url = os.fspath(path_or_url)
        store, path = _resolve(url, read_only=mode == "r")
        if path is not None and not path.exists():
            raise StoreError(f"no episode store at {path}; check the path, or create one with "
                             "EpisodeStore.create (or `reverie sim demos`, `reverie data import`)")
        try:
            group = zarr.open_group(store, mode="r" if mode == "r" else "r+")
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError,
                ValueError, TypeError) as e:
            where = "is not a zarr group" if path is not None else "holds no zarr group (missing, or not a store)"
            raise StoreError(f"{url} {where}, so not a reverie episode store; point at the store's root "
                             "(<name>.zarr) or create one with EpisodeStore.create") from e
        attrs = dict(group.attrs)
        if attrs.get("format") != FORMAT:
            hint = ("it looks like a diffusion-policy/UMI replay buffer: convert it with "
                    "`reverie data import zarr-replay SRC OUT`" if "meta" in group and "data" in group
                    else "create stores with EpisodeStore.create or `reverie data import`")
            raise StoreError(f"{url} is a zarr group but not a reverie episode store; {hint}")
        version = int(attrs.get("schema_version", -1))
        if version > SCHEMA_VERSION:
            raise StoreError(f"{url} was written with store schema version {version}, newer than this reverie "
                             f"reads ({SCHEMA_VERSION}); upgrade reverie (pip install -U reverie)")
        lock = _lock(path) if (mode == "a" and path is not None) else None
        try:
            return cls(group, mode, url, path, lock)
        except KeyError as e:
            _unlock(lock)
            raise StoreError(f"{url} lacks {e}: the store is damaged; re-import or restore it from a copy") from e
        except DECODE_ERRORS as e:  # an array's metadata or a chunk of the episode table
            _unlock(lock)
            raise damaged(url, "its episode table or an array's metadata", e) from e
        except BaseException:
            _unlock(lock)
            raise

    def close(self) -> None:
        """Release the writer lock (mode 'a'). An open episode writer is discarded."""
        if self._writer is not None:
            self._writer.discard()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        _unlock(self._lock)
        self._lock = None

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:  # one thread: blocks of one episode must land in order
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="reverie-store-writer")
        return self._pool

    def __del__(self) -> None:
        _unlock(getattr(self, "_lock", None))  # a store dropped without close() must not keep the lock

    def __enter__(self) -> "EpisodeStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open_arrays(self) -> None:
        """zarr handles for every array; they cache shapes, so refresh() makes new ones."""
        group = self._group
        # zarr by default compares every written chunk with the fill value to skip storing empty ones;
        # that comparison cost 2/3 of the write time of 480x640 frames, and our chunks are rarely empty.
        self._data = {key: group[f"data/{key}"].with_config({"write_empty_chunks": True}) for key in self.schema}
        self._meta = {field: group[f"meta/episodes/{field}"] for field in META_FIELDS}
        self._hist = {key: group[f"meta/stats/{key}"] for key in self.schema if is_image_key(key)}
        self._ends_array = group["meta/episode_ends"]

    # ------------------------------------------------------------------------------------- recovery
    def _load(self) -> None:
        """Read the committed episode table; report (and in mode 'a' truncate) an interrupted tail."""
        ends = np.asarray(self._ends_array[:], np.int64)
        meta = {field: arr[:] for field, arr in self._meta.items()}
        extra_rows = [len(a) for a in meta.values()] + [h.shape[0] for h in self._hist.values()]
        lengths = np.asarray(meta["length"], np.int64)
        data_len = {key: arr.shape[0] for key, arr in self._data.items()}
        n = len(ends)

        def committed(i: int) -> bool:
            prev = ends[i - 1] if i else 0
            return (min(len(a) for a in meta.values()) > i and all(h.shape[0] > i for h in self._hist.values())
                    and lengths[i] > 0 and ends[i] - prev == lengths[i] and min(data_len.values()) >= ends[i])

        # Only the last entry can be half-written (one writer, episode_ends written last).
        if n and not committed(n - 1):
            n -= 1
        prev = np.concatenate([[0], ends[:max(n - 1, 0)]])
        if n and (len(lengths) < n or np.any(ends[:n] - prev != lengths[:n]) or min(data_len.values()) < ends[n - 1]):
            raise StoreError(f"{self.url}: meta/episode_ends disagrees with meta/episodes/length or the data "
                             "arrays before the last episode; this is damage, not an interrupted write. "
                             "Nothing was changed; restore the store from a copy")
        end = int(ends[n - 1]) if n else 0
        tail = max(data_len.values()) - end
        interrupted = tail > 0 or len(ends) > n or max(extra_rows, default=0) > n
        if interrupted:
            what = (f"{self.url}: an interrupted episode left {tail} frames past the last committed episode "
                    f"({n} episodes, {end} frames)")
            if self._mode == "a":
                log.warning("%s; truncating them", what)
                self._truncate(n, end)
            elif self._path is not None and _appender_active(self._path):
                log.debug("%s: an episode is being recorded (%d frames so far)", self.url, tail)
            else:
                log.warning("%s; ignoring them (opening with mode='a' truncates them)", what)
        stats_stale = (self._group.attrs.get("stats") or {}).get("episodes") != n
        if self._mode == "a" and self._path is not None and (interrupted or stats_stale):
            # A killed write can leave zarr's temp file (<chunk>.<uuid>.partial); only look for them
            # after signs of a crash, since walking a large store takes a while.
            for partial in self._path.rglob("*.partial"):
                partial.unlink(missing_ok=True)
        self._ends = ends[:n].copy()
        self._meta_rows = {field: np.asarray(v[:n]) for field, v in meta.items()}

    def _truncate(self, n: int, end: int) -> None:
        """Shrink everything to n episodes / end frames; episode_ends first so nothing is half-visible."""
        if self._ends_array.shape[0] > n:
            self._ends_array.resize((n,))
        for arr in (*self._meta.values(), *self._hist.values()):
            if arr.shape[0] > n:
                arr.resize((n, *arr.shape[1:]))
        for arr in self._data.values():
            if arr.shape[0] > end:
                arr.resize((end, *arr.shape[1:]))

    def refresh(self) -> None:
        """Re-read the episode table, e.g. to follow a recording made by another process (mode 'r')."""
        if self._writer is not None:
            raise StoreError("refresh() is for readers; this store has an open episode writer")
        self._lowdim = self._hist_total = self._stats_memo = None
        self._group = zarr.open_group(self._group.store, mode="r" if self._mode == "r" else "r+")  # fresh attrs
        self._open_arrays()
        self._load()

    # ------------------------------------------------------------------------------------ reading
    @property
    def attrs(self) -> dict:
        """User attributes given at create time (a copy; change them with update_attrs)."""
        return dict(self._group.attrs.get("attrs", {}))

    def update_attrs(self, values: Mapping) -> None:
        self._require_append("update attributes")
        self._group.attrs["attrs"] = {**self.attrs, **_json_attrs(values)}

    @property
    def keys(self) -> list[str]:
        return list(self.schema)

    @property
    def num_episodes(self) -> int:
        return len(self._ends)

    @property
    def num_frames(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __len__(self) -> int:
        return self.num_episodes

    @property
    def episode_ends(self) -> np.ndarray:
        """(E,) int64 committed end rows (exclusive)."""
        return self._ends.copy()

    def _index(self, i: int) -> int:
        n = self.num_episodes
        if not -n <= i < n:
            raise StoreError(f"episode {i} out of range: {self.url} has {n} episodes (0..{n - 1})")
        return int(i) % n

    def bounds(self, i: int) -> tuple[int, int]:
        i = self._index(i)
        return (int(self._ends[i - 1]) if i else 0), int(self._ends[i])

    def episode(self, i: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """key -> (T, ...) array of episode i (negative indices count from the end)."""
        start, stop = self.bounds(i)
        with decoding(self.url, f"episode {i}"):
            return {key: self._data[key][start:stop] for key in self._check_keys(keys)}

    def meta(self, i: int) -> EpisodeMeta:
        i = self._index(i)
        rows = {field: v[i] for field, v in self._meta_rows.items()}
        start, stop = self.bounds(i)
        success = None if int(rows["success"]) < 0 else bool(rows["success"])
        return EpisodeMeta(i, str(rows["instruction"]), str(rows["source"]), int(rows["round"]), success,
                           str(rows["notes"]), start, stop - start)

    def iter_episodes(self, keys: list[str] | None = None) -> Iterator[tuple[dict[str, np.ndarray], EpisodeMeta]]:
        for i in range(self.num_episodes):
            yield self.episode(i, keys), self.meta(i)

    def array(self, key: str) -> zarr.Array:
        """The underlying zarr array of a key (rows past num_frames are not committed)."""
        return self._data[self._check_keys([key])[0]]

    def chunk_frames(self, key: str) -> int:
        return int(self.array(key).chunks[0])

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        """Committed rows [start, stop) of one key in one zarr call."""
        if not 0 <= start <= stop <= self.num_frames:
            raise StoreError(f"rows [{start}, {stop}) outside the {self.num_frames} committed frames")
        with decoding(self.url, f"data/{key} rows [{start}, {stop})"):
            return self._data[key][start:stop]

    def lowdim(self) -> dict[str, np.ndarray]:
        """key -> (N, ...) every committed row of the non-image keys, loaded into memory once."""
        if self._lowdim is None:
            end = self.num_frames
            with decoding(self.url, "a low-dimensional array"):
                self._lowdim = {key: arr[:end] for key, arr in self._data.items() if not is_image_key(key)}
        return self._lowdim

    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """key -> {mean, std, min, max, p01, p99} (float32; per dim, per channel for images)."""
        def current(entry) -> bool:
            return bool(entry) and entry.get("episodes") == self.num_episodes and set(entry["keys"]) == set(self.schema)

        cached = self._group.attrs.get("stats")
        if not current(cached):
            if not current(self._stats_memo):  # read-only handles keep what they computed
                self._stats_memo = {"episodes": self.num_episodes, "keys": stats_lib.to_json(self._compute_stats())}
                if self._mode == "a":
                    self._group.attrs["stats"] = self._stats_memo
            cached = self._stats_memo
        return stats_lib.from_json(cached["keys"])

    def _compute_stats(self) -> dict[str, dict[str, np.ndarray]]:
        out = {key: stats_lib.from_rows(rows) for key, rows in self.lowdim().items()}
        if self.num_episodes:
            if self._hist_total is None:  # summed once per session, then kept current by commits
                self._hist_total = {key: hist[: self.num_episodes].sum(0) for key, hist in self._hist.items()}
            out.update({key: stats_lib.from_histogram(total) for key, total in self._hist_total.items()})
        return {key: s for key, s in out.items() if s}

    def _check_keys(self, keys) -> list[str]:
        if keys is None:
            return list(self.schema)
        unknown = [k for k in keys if k not in self.schema]
        if unknown:
            raise StoreError(f"{self.url} has no keys {unknown}; it holds {list(self.schema)}")
        return list(keys)

    def __repr__(self) -> str:
        return (f"EpisodeStore({self.url!r}, mode={self._mode!r}, episodes={self.num_episodes}, "
                f"frames={self.num_frames}, fps={self.fps}, keys={self.keys})")

    # ------------------------------------------------------------------------------------ writing
    def _require_append(self, what: str) -> None:
        if self._mode != "a":
            raise StoreError(f"cannot {what}: {self.url} is open read-only; open it with mode='a'")
        if self._lock is None and self._path is not None:
            raise StoreError(f"cannot {what}: the store was closed; open it again with mode='a'")

    def episode_writer(self, instruction: str, source: str, round: int = 0, notes: str = "") -> "EpisodeWriter":
        """A writer for one new episode: add() steps, then commit() or discard()."""
        self._require_append("write episodes")
        if self._writer is not None:
            raise StoreError("another episode writer is still open on this store; commit or discard it first")
        self._writer = EpisodeWriter(self, instruction, source, round, notes)
        return self._writer

    def add_episode(self, steps: Mapping[str, np.ndarray], instruction: str, source: str, round: int = 0,
                    success: bool | None = None, notes: str = "") -> int:
        """Append a whole episode given as key -> (T, ...) arrays; returns its index."""
        steps = {key: np.asarray(value) for key, value in steps.items()}
        lengths = {key: (v.shape[0] if v.ndim else None) for key, v in steps.items()}
        if len(set(lengths.values())) != 1 or None in lengths.values():
            raise StoreError(f"add_episode needs (T, ...) arrays with one T for every key, got lengths {lengths}")
        with self.episode_writer(instruction, source, round, notes) as writer:
            writer.add_block(steps)
            return writer.commit(success)

    def delete_last_episode(self) -> EpisodeMeta:
        """Remove the last committed episode (episode_ends shrinks first); returns its metadata."""
        self._require_append("delete episodes")
        if self._writer is not None:
            raise StoreError("an episode writer is open; commit or discard it before deleting episodes")
        if not self.num_episodes:
            raise StoreError(f"{self.url} has no episodes to delete")
        last = self.meta(-1)
        n = self.num_episodes - 1
        self._truncate(n, last.start)
        self._ends = self._ends[:n]
        self._meta_rows = {field: v[:n] for field, v in self._meta_rows.items()}
        if self._lowdim is not None:
            self._lowdim = {key: v[: last.start] for key, v in self._lowdim.items()}
        self._hist_total = None  # deletions are rare: re-sum on the next statistics update
        self._update_stats()
        return last

    def set_success(self, episodes, success: bool | None) -> list[bool | None]:
        """Label committed episodes success True / False / None (unknown) after the fact; returns
        their previous labels, in the order given. Only meta/episodes/success is written: the chunks
        holding these episodes (4096 episodes each) are rewritten whole, each atomically (zarr writes
        a temp file and renames it), so a crash leaves every chunk either old or new; data,
        episode_ends and lengths are never touched. The written column is read back and checked."""
        self._require_append("relabel episodes")
        if self._writer is not None:
            raise StoreError("an episode writer is open; commit or discard it before relabelling episodes")
        if success is not None and not isinstance(success, (bool, np.bool_)):
            raise StoreError(f"success must be True, False or None (unknown), got {success!r}")
        wanted = [self._index(int(i)) for i in episodes]  # out-of-range indices raise before any write
        if not wanted:
            raise StoreError("no episodes given to relabel; pass at least one episode index")
        previous = [self.meta(i).success for i in wanted]
        n, arr = self.num_episodes, self._meta["success"]
        column = np.asarray(self._meta_rows["success"], np.int8).copy()
        column[wanted] = -1 if success is None else int(bool(success))
        chunk = int(arr.chunks[0])
        for c in sorted({i // chunk for i in wanted}):
            lo, hi = c * chunk, min((c + 1) * chunk, n)
            arr[lo:hi] = column[lo:hi]
        written = np.asarray(arr[:n], np.int8)
        if not np.array_equal(written, column):
            raise StoreError(f"relabelling {self.url}: meta/episodes/success reads back differently from what "
                             "was written (a concurrent writer?); data rows were not touched; run it again")
        self._meta_rows["success"] = written
        return previous

    def _commit(self, writer: "EpisodeWriter", success: bool | None) -> int:
        i, start, length = self.num_episodes, writer.start, writer.length
        rows = {"instruction": writer.instruction, "source": writer.source, "notes": writer.notes,
                "round": writer.round, "success": -1 if success is None else int(bool(success)), "length": length}
        for key, hist in writer.histograms.items():  # before `length`: committed() checks all rows exist
            _append_row(self._hist[key], i, hist)
        for field in META_FIELDS:  # `length` last
            _append_row(self._meta[field], i, rows[field])
        _append_row(self._ends_array, i, start + length)  # <- the commit point
        self._ends = np.append(self._ends, start + length)
        for field, value in rows.items():
            self._meta_rows[field] = np.append(self._meta_rows[field], value)
        if self._lowdim is not None:
            self._lowdim = {key: np.concatenate([v, writer.lowdim_rows(key)]) for key, v in self._lowdim.items()}
        if self._hist_total is not None:
            self._hist_total = {key: total + writer.histograms[key] for key, total in self._hist_total.items()}
        self._update_stats()
        return i

    def _update_stats(self) -> None:
        stats = self._compute_stats()
        self._group.attrs["stats"] = {"episodes": self.num_episodes, "keys": stats_lib.to_json(stats)}


# What zarr and its codecs raise for a chunk or metadata file that does not decode (bit rot, a
# truncated copy, a file from elsewhere): zstd's RuntimeError, json's ValueError, shape TypeErrors.
DECODE_ERRORS = (RuntimeError, ValueError, TypeError)


def damaged(url: str, what: str, e: Exception) -> StoreError:
    return StoreError(f"{url}: {what} does not decode ({type(e).__name__}: {str(e)[:80]}); the store is "
                      "damaged: restore it from a copy or import it again")


@contextlib.contextmanager
def decoding(url: str, what: str):
    """Reads inside raise a StoreError naming `what` when a chunk does not decode."""
    try:
        yield
    except DECODE_ERRORS as e:
        raise damaged(url, what, e) from e


def _json_attrs(values: Mapping) -> dict:
    """User attributes go into zarr.json, so they must be plain JSON (no numpy scalars)."""
    try:
        return json.loads(json.dumps(dict(values)))
    except (TypeError, ValueError) as e:
        raise StoreError(f"store attrs must be JSON-serialisable ({e}); convert numpy values with "
                         ".item() or .tolist()") from None


def _append_row(arr: zarr.Array, i: int, value) -> None:
    arr.resize((i + 1, *arr.shape[1:]))
    arr[i] = value


def _lock(path: Path) -> int:
    """An exclusive advisory lock on the store's directory, so two appenders never interleave. Locking
    the directory itself keeps foreign files out of the zarr hierarchy; the kernel drops it on SIGKILL."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"{path} is open for appending by another process; close it there first "
                         "(reading with mode='r' is always allowed)") from None
    return fd


def _appender_active(path: Path) -> bool:
    """Whether another process holds the append lock (so rows past the end are a live recording)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


class EpisodeWriter:
    """Streams one episode into the store. Rows are validated on add and buffered; a full buffer
    (~FLUSH_BYTES) is handed to a background thread that compresses and writes it past the committed
    end while add() fills a second buffer, so long episodes never sit in RAM and a control loop calling
    add() does not stall on compression. Only commit() makes the rows visible."""

    def __init__(self, store: EpisodeStore, instruction: str, source: str, round: int, notes: str):
        try:
            TextSpec().validate(instruction, "instruction")
            TextSpec(max_chars=4096).validate(notes, "notes")
        except ReverieError as e:
            raise StoreError(str(e)) from None
        if source not in SOURCES:
            raise StoreError(f"source must be one of {SOURCES}, got {source!r}")
        if int(round) != round or round < 0:
            raise StoreError(f"round must be a non-negative integer, got {round!r}")
        self.store, self.instruction, self.source, self.round, self.notes = store, instruction, source, int(round), notes
        self.start = store.num_frames
        self.length = 0  # rows added (handed to the background writer + buffered)
        self._submitted = 0  # rows handed to the background writer
        frame_bytes = sum(int(np.prod(s.shape, dtype=np.int64)) * np.dtype(s.dtype).itemsize
                          for s in store.schema.values())
        self._capacity = max(1, FLUSH_BYTES // frame_bytes)
        self._buffer = self._new_buffer()
        self._spare: dict[str, np.ndarray] | None = None  # second buffer, made on the first flush
        self._buffered = 0
        self._pending: concurrent.futures.Future | None = None
        self._lowdim_blocks: dict[str, list[np.ndarray]] = {k: [] for k in store.schema if not is_image_key(k)}
        self.histograms = {key: np.zeros((3, 256), np.int64) for key in store.schema if is_image_key(key)}
        self._ended = False  # a row with is_last was added
        self._open = True

    def _new_buffer(self) -> dict[str, np.ndarray]:
        return {key: np.empty((self._capacity, *s.shape), s.dtype) for key, s in self.store.schema.items()}

    def __enter__(self) -> "EpisodeWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self._open:  # an exception (or no commit) inside the block leaves nothing behind
            self.discard()

    def add(self, step: Mapping[str, Any]) -> None:
        """Append one row: key -> value of that key's per-step shape and dtype."""
        self._check_open()
        if self._pending is not None and self._pending.done():
            self._wait()  # report a failed background write at once, not one buffer later
        schema = self.store.schema
        missing, unknown = [k for k in schema if k not in step], [k for k in step if k not in schema]
        if missing or unknown:
            raise StoreError(f"step keys do not match the schema: missing {missing}, unknown {unknown}; "
                             f"the store holds {list(schema)}")
        row = {key: _coerce(spec, step[key], key) for key, spec in schema.items()}
        self._ended = self._check_flags(self.length, self._ended, row["is_first"], row["is_last"],
                                        row.get("is_terminal", False))
        for key, value in row.items():
            self._buffer[key][self._buffered] = value
        self._buffered += 1
        self.length += 1
        if self._buffered == self._capacity:
            self._flush()

    def add_block(self, steps: Mapping[str, np.ndarray]) -> None:
        """Append T rows at once (key -> (T, ...)); validated as a block, same rules as add()."""
        self._check_open()
        schema = self.store.schema
        missing, unknown = [k for k in schema if k not in steps], [k for k in steps if k not in schema]
        if missing or unknown:
            raise StoreError(f"episode keys do not match the schema: missing {missing}, unknown {unknown}")
        total = len(steps["is_first"])
        block = {key: _coerce(ArraySpec((total, *spec.shape), spec.dtype), steps[key], key)
                 for key, spec in schema.items()}
        ended = self._ended
        terminal = block.get("is_terminal", np.zeros(total, bool))
        for t in range(total):  # all rows checked before any is buffered
            ended = self._check_flags(self.length + t, ended, block["is_first"][t], block["is_last"][t], terminal[t])
        self._ended = ended
        t = 0
        while t < total:
            n = min(self._capacity - self._buffered, total - t)
            for key, value in block.items():
                self._buffer[key][self._buffered:self._buffered + n] = value[t:t + n]
            self._buffered += n
            self.length += n
            t += n
            if self._buffered == self._capacity:
                self._flush()

    @staticmethod
    def _check_flags(row: int, ended: bool, is_first, is_last, is_terminal) -> bool:
        """Episode structure: is_first on row 0 only, nothing after is_last, terminal implies last."""
        if ended:
            raise StoreError(f"row {row} was added after the row with is_last=True; commit the episode first")
        if bool(is_first) != (row == 0):
            raise StoreError(f"is_first must be True on the first row only (row {row} has is_first={bool(is_first)})")
        if is_terminal and not is_last:
            raise StoreError(f"row {row} has is_terminal=True but is_last=False; a terminal row ends "
                             "the episode, so set is_last too")
        return bool(is_last)

    def _flush(self) -> None:
        """Hand the buffered rows to the background writer and switch to the spare buffer."""
        self._wait()  # the previous block is on disk: its buffer is free and rows land in order
        n = self._buffered
        if not n:
            return
        block = {key: buf[:n] for key, buf in self._buffer.items()}
        self._buffer, self._spare = (self._spare if self._spare is not None else self._new_buffer()), self._buffer
        self._pending = self.store._executor().submit(self._write, block, self.start + self._submitted)
        self._submitted += n
        self._buffered = 0

    def _write(self, block: dict[str, np.ndarray], row: int) -> None:
        """(background thread) rows [row, row + n) of every key, past the committed end."""
        n = len(block["is_first"])
        for key, arr in self.store._data.items():
            arr.resize((row + n, *arr.shape[1:]))
            arr[row:row + n] = block[key]
            if key in self.histograms:
                self.histograms[key] += stats_lib.image_histogram(block[key])
            else:
                self._lowdim_blocks[key].append(block[key].copy())

    def _wait(self) -> None:
        """Wait for the background write; if it failed, drop the episode and say why."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            pending.result()
        except Exception as e:
            self.discard()
            raise StoreError(f"writing this episode's frames to {self.store.url} failed ({type(e).__name__}: {e}); "
                             "the episode was discarded and committed episodes are intact. Fix the cause "
                             "(disk space? permissions?) and record it again") from e

    def lowdim_rows(self, key: str) -> np.ndarray:
        return np.concatenate(self._lowdim_blocks[key])

    def commit(self, success: bool | None = None) -> int:
        """Write the rest, then the episode's meta, then episode_ends (the commit point). Returns its index."""
        self._check_open()
        if self.length == 0:
            raise StoreError("cannot commit an empty episode; add steps first or discard() the writer")
        if not self._ended:
            raise StoreError("the last row must have is_last=True; set it on the final step (the store does "
                             "not edit rows), or discard() the episode")
        self._flush()
        self._wait()  # every row on disk before any meta row: data first
        before = self.store.num_episodes
        try:
            index = self.store._commit(self, success)
        except Exception as e:
            if self.store.num_episodes > before:  # episode_ends was written: the episode is in
                self._close()
                raise StoreError(f"episode {before} was committed, but updating the store statistics failed "
                                 f"({type(e).__name__}: {e}); stats() recomputes them") from e
            self.discard()  # never for a committed episode: that would drop committed rows
            raise StoreError(f"committing the episode to {self.store.url} failed ({type(e).__name__}: {e}); "
                             "it was discarded and committed episodes are intact") from e
        self._close()
        return index

    def discard(self) -> None:
        """Drop this episode: rows already written past the committed end are truncated."""
        if not self._open:
            return
        self._open = False
        if self._pending is not None:
            concurrent.futures.wait([self._pending])  # its error, if any, is moot: the rows go anyway
            self._pending = None
        # Truncate to the committed end, not to self.start: an interrupt (Ctrl-C) that lands after
        # episode_ends was written must not take a committed episode's rows with it.
        end = self.store.num_frames
        for arr in self.store._data.values():
            if arr.shape[0] > end:
                arr.resize((end, *arr.shape[1:]))
        self._close()

    def _close(self) -> None:
        self._open = False
        self._buffer = self._spare = {}
        self.store._writer = None

    def _check_open(self) -> None:
        if not self._open:
            raise StoreError("this episode writer was committed or discarded; get a new one from episode_writer()")
