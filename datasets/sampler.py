"""Random training windows from episode stores, for world-model and policy training.

A window is `length` consecutive rows of one episode; windows never cross an episode boundary, and
episodes shorter than `length` are skipped. Rows are copied as stored, so `is_first` is True at a
window's first row only when that row is the episode's first. Models reset their recurrent state
at every window start anyway, so a window that starts mid-episode simply begins from a fresh state.

Reading. Low-dimensional keys are loaded into memory once per store (EpisodeStore.lowdim). Images are
read per window, chunk by chunk (a T=32 window of 64x64 frames spans one or two 32-frame chunks):
ChunkReader decodes a local store's chunk files directly, since zarr costs ~1 ms per call, and decoded
chunks stay in a small LRU cache (`cache_bytes`, per process). benchmarks/store.py measures both paths
against numpy memmaps.

Weighting. `weights={"source": {"teleop": 2, "video": 1}}` (or `{"instruction": {...}}`) gives each
category a share of the samples proportional to its weight, whatever its size; "*" sets the weight of
categories not named (default 1), and weight 0 leaves a category out. Within a category every window
is equally likely. Without weights every window of every store is equally likely.

Several stores with different schemas: only keys present in all, with the same shape and dtype, are
sampled (or the `keys` asked for, which must be common).
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numcodecs
import numpy as np
import torch.utils.data
from zarr.codecs import BytesCodec, ZstdCodec
from zarr.storage import LocalStore

from reverie.datasets.codecs import ImageCodec
from reverie.datasets.schema import is_image_key
from reverie.datasets.store import EpisodeStore
from reverie.errors import StoreError

log = logging.getLogger(__name__)

CATEGORY_FIELDS = ("source", "instruction")


def _open(stores) -> list[EpisodeStore]:
    if isinstance(stores, (EpisodeStore, str, os.PathLike)):
        stores = [stores]
    opened = [s if isinstance(s, EpisodeStore) else EpisodeStore.open(s, mode="r") for s in stores]
    if not opened:
        raise StoreError("WindowSampler needs at least one store")
    return opened


def common_keys(stores: Sequence[EpisodeStore], keys: Sequence[str] | None = None) -> list[str]:
    """Keys every store holds with the same per-step shape and dtype (in the first store's order)."""
    first = stores[0].schema
    same = [k for k in first if all(k in s.schema and s.schema[k].shape == first[k].shape
                                    and s.schema[k].dtype == first[k].dtype for s in stores)]
    if keys is None:
        return same
    bad = [k for k in keys if k not in same]
    if bad:
        raise StoreError(f"keys {bad} are not in every store with one shape and dtype; common keys: {same}")
    return list(keys)


class ChunkReader:
    """Time-chunks of one image array. For arrays the store writes itself on a local disk (bytes+zstd,
    or the reverie.image codec) it reads the chunk file and decodes it directly, and for JPEG chunks
    decodes only the frames asked for: zarr's own path costs about a millisecond per call, most of a
    64x64 window's read time. Anything else (remote stores, other codecs) goes through zarr."""

    def __init__(self, array):
        self.array, self.chunk_shape = array, tuple(array.chunks)
        self.chunk = self.chunk_shape[0]
        self.fill = np.zeros(self.chunk_shape, array.dtype) + array.fill_value
        self._zstd = None
        self._dir = None
        codecs = getattr(array.metadata, "codecs", ())
        if isinstance(array.store, LocalStore) and getattr(array.metadata, "zarr_format", 2) == 3:
            if len(codecs) == 2 and isinstance(codecs[0], BytesCodec) and isinstance(codecs[1], ZstdCodec):
                self._zstd = numcodecs.Zstd()
                self._dir = Path(array.store.root) / array.path
            elif len(codecs) == 1 and isinstance(codecs[0], ImageCodec):
                self._dir = Path(array.store.root) / array.path

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) (any range), one zarr call on the fallback path."""
        if self._dir is None:
            return self.array[start:stop]
        first, last = start // self.chunk, (stop - 1) // self.chunk
        parts = [self.chunk_rows(c, max(start - c * self.chunk, 0), min(stop - c * self.chunk, self.chunk))
                 for c in range(first, last + 1)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def chunk_rows(self, c: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Rows [lo, hi) of chunk c, relative to the chunk's first row."""
        hi = self.chunk if hi is None else hi
        if self._dir is None:
            return self.array[c * self.chunk + lo:c * self.chunk + hi]
        key = self.array.metadata.encode_chunk_key((c,) + (0,) * (len(self.chunk_shape) - 1))
        try:
            data = (self._dir / key).read_bytes()
        except FileNotFoundError:  # zarr leaves chunks equal to the fill value unwritten
            return self.fill[lo:hi]
        if self._zstd is None:
            return ImageCodec.decode_frames(data, self.chunk_shape, lo, hi)
        return np.frombuffer(self._zstd.decode(data), self.array.dtype).reshape(self.chunk_shape)[lo:hi]


class ChunkCache:
    """LRU cache of decoded time-chunks, bounded in bytes; max_bytes=0 reads straight through."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = int(max_bytes), 0
        self._items: collections.OrderedDict[tuple, np.ndarray] = collections.OrderedDict()
        self.hits = self.misses = 0

    def read(self, name: tuple, reader: ChunkReader, start: int, stop: int,
             out: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) of the reader's array, copied into `out` (a new array if None)."""
        if out is None:
            out = np.empty((stop - start, *reader.chunk_shape[1:]), reader.array.dtype)
        if self.max_bytes <= 0:
            self.misses += 1
            out[...] = reader.rows(start, stop)
            return out
        chunk = reader.chunk
        for c in range(start // chunk, (stop - 1) // chunk + 1):
            block = self._items.get((name, c))
            if block is None:
                self.misses += 1
                block = np.ascontiguousarray(reader.chunk_rows(c))
                self._put((name, c), block)
            else:
                self.hits += 1
                self._items.move_to_end((name, c))
            lo, hi = max(start, c * chunk), min(stop, (c + 1) * chunk)
            out[lo - start:hi - start] = block[lo - c * chunk:hi - c * chunk]
        return out

    def _put(self, key: tuple, block: np.ndarray) -> None:
        self._items[key] = block
        self.bytes += block.nbytes
        while self.bytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.nbytes


class WindowSampler:
    """Draws windows of `length` rows. sample() -> {key: (T, ...), "instruction": str, "episode": int,
    "store": int}; "episode" indexes the episode within store number "store". sample_batch(B) draws B
    windows at once into (B, T, ...) arrays (vectorised draws and low-dim gathers)."""

    def __init__(self, stores, length: int, keys: Sequence[str] | None = None,
                 weights: Mapping[str, Mapping[str, float]] | None = None, seed=0,
                 cache_bytes: int = 256 << 20):
        if int(length) < 1:
            raise StoreError(f"window length must be >= 1, got {length}")
        self.stores = _open(stores)
        self.length = int(length)
        self.keys = common_keys(self.stores, keys)
        self.rng = np.random.default_rng(seed)
        self.cache = ChunkCache(cache_bytes)
        spec = self.stores[0].schema
        self._shapes = {key: (spec[key].shape, np.dtype(spec[key].dtype)) for key in self.keys}
        self._image_keys = [k for k in self.keys if is_image_key(k)]
        self._lowdim_keys = [k for k in self.keys if not is_image_key(k)]
        self._lowdim = [{k: v for k, v in s.lowdim().items() if k in self.keys} for s in self.stores]
        self._readers = [{k: ChunkReader(s.array(k)) for k in self._image_keys} for s in self.stores]
        self._build_index(weights)

    def _build_index(self, weights) -> None:
        rows = []  # (store, episode, first row, number of window starts, instruction, category)
        field, table = self._parse_weights(weights)
        longest = 0
        for si, store in enumerate(self.stores):
            for ei in range(store.num_episodes):
                meta = store.meta(ei)
                longest = max(longest, meta.length)
                if meta.length >= self.length:
                    rows.append((si, ei, meta.start, meta.length - self.length + 1, meta.instruction,
                                 getattr(meta, field) if field else ""))
        skipped = sum(len(s) for s in self.stores) - len(rows)
        if skipped:
            log.info("skipping %d episodes shorter than the window length %d", skipped, self.length)
        if not rows:
            raise StoreError(f"no episode has at least {self.length} rows (longest: {longest}); "
                             "lower the window length")
        self._store, self._episode, self._start, self._n_starts = (np.array([r[k] for r in rows]) for k in range(4))
        self._instruction = [r[4] for r in rows]
        mass = self._n_starts.astype(np.float64)
        if field:  # each category gets its weight's share; windows uniform within a category
            categories = np.array([r[5] for r in rows], dtype=object)
            for cat in set(categories):
                members = categories == cat
                weight = float(table.get(cat, table.get("*", 1.0)))
                mass[members] *= weight / mass[members].sum()
        if mass.sum() <= 0:
            raise StoreError(f"weights {weights} leave no episode to sample; give some category a weight > 0")
        self._cdf = np.cumsum(mass) / mass.sum()

    @staticmethod
    def _parse_weights(weights) -> tuple[str | None, dict]:
        if not weights:
            return None, {}
        if len(weights) != 1 or next(iter(weights)) not in CATEGORY_FIELDS:
            raise StoreError(f"weights must be {{'source': {{...}}}} or {{'instruction': {{...}}}}, got {weights!r}")
        field, table = next(iter(weights.items()))
        bad = {k: v for k, v in table.items() if not (np.isfinite(v) and v >= 0)}
        if bad:
            raise StoreError(f"weights must be finite and >= 0, got {bad}")
        return field, dict(table)

    @property
    def num_windows(self) -> int:
        """Number of distinct windows (window starts) over all eligible episodes."""
        return int(self._n_starts.sum())

    def _draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """n random windows -> (index rows into the episode table, global start rows)."""
        rows = np.searchsorted(self._cdf, self.rng.random(n), side="right").clip(max=len(self._cdf) - 1)
        offsets = (self.rng.random(n) * self._n_starts[rows]).astype(np.int64)
        return rows, self._start[rows] + offsets

    def sample(self) -> dict:
        rows, starts = self._draw(1)
        j, start = int(rows[0]), int(starts[0])
        si = int(self._store[j])
        out = {key: self._read(si, key, start) for key in self.keys}
        return out | {"instruction": self._instruction[j], "episode": int(self._episode[j]), "store": si}

    def _read(self, si: int, key: str, start: int, out: np.ndarray | None = None) -> np.ndarray:
        stop = start + self.length
        if key in self._lowdim[si]:
            rows = self._lowdim[si][key][start:stop]
            if out is None:
                return rows.copy()
            out[...] = rows
            return out
        return self.cache.read((si, key), self._readers[si][key], start, stop, out)

    def sample_batch(self, batch_size: int) -> dict:
        """{key: (B, T, ...)} plus "instruction" (list of B str), "episode" and "store" (B,) int."""
        rows, starts = self._draw(batch_size)
        stores = self._store[rows]
        batch = {key: np.empty((batch_size, self.length, *shape), dtype) for key, (shape, dtype) in self._shapes.items()}
        steps = np.arange(self.length)
        for si in np.unique(stores):
            mine = np.flatnonzero(stores == si)
            index = starts[mine, None] + steps  # (b, T) rows: one fancy-index gather per key
            for key in self._lowdim_keys:
                batch[key][mine] = self._lowdim[si][key][index]
            for key in self._image_keys:
                for b in mine:
                    self._read(int(si), key, int(starts[b]), batch[key][b])
        batch["instruction"] = [self._instruction[j] for j in rows]
        batch["episode"] = self._episode[rows].copy()
        batch["store"] = stores.copy()
        return batch

    def __iter__(self) -> Iterator[dict]:
        while True:
            yield self.sample()


class WindowDataset(torch.utils.data.IterableDataset):
    """Windows as a torch IterableDataset, for a DataLoader with any number of workers.

    Stores are opened inside each worker (zarr handles do not survive fork well) and each worker
    draws from its own generator seeded by (seed, epoch, torch's worker seed): torch derives worker
    seeds from its global RNG, so `torch.manual_seed` makes runs repeatable, and the epoch term keeps
    persistent workers from repeating themselves. `samples_per_epoch` windows per epoch are split
    across workers; each worker keeps its own sampler and image cache.
    """

    def __init__(self, stores, length: int, keys=None, weights=None, seed: int = 0,
                 samples_per_epoch: int = 10_000, cache_bytes: int = 256 << 20):
        if isinstance(stores, (EpisodeStore, str, os.PathLike)):
            stores = [stores]
        self.urls = [s.url if isinstance(s, EpisodeStore) else os.fspath(s) for s in stores]
        # Check everything in the main process, where an error is readable, not inside a worker.
        self.keys = WindowSampler(self.urls, length, keys, weights, seed, cache_bytes=0).keys
        self.length, self.weights, self.seed = length, weights, seed
        self.samples_per_epoch, self.cache_bytes = int(samples_per_epoch), cache_bytes
        self.epoch = 0  # iterations of this process's copy
        self._sampler: WindowSampler | None = None  # per process, kept across epochs (its cache too)
        self._pid = -1

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        # The epoch counter lives in this process's copy: persistent workers keep their torch seed
        # across epochs, so without it every epoch would repeat the first one's windows.
        entropy = [self.seed, self.epoch] + ([] if info is None else [info.seed])
        self.epoch += 1
        if self._sampler is None or self._pid != os.getpid():  # opened here, after any fork
            self._sampler = WindowSampler(self.urls, self.length, self.keys, self.weights, 0, self.cache_bytes)
            self._pid = os.getpid()
        self._sampler.rng = np.random.default_rng(np.random.SeedSequence(entropy))
        count = self.samples_per_epoch // workers + (worker < self.samples_per_epoch % workers)
        for _ in range(count):
            yield self._sampler.sample()

    def __getstate__(self) -> dict:
        # Workers started by spawn or forkserver get a pickled copy: they open their own stores.
        return self.__dict__ | {"_sampler": None, "_pid": -1}

    def __len__(self) -> int:
        return self.samples_per_epoch
