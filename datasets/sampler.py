"""Random training windows from episode stores, for world-model and policy training.

A window is `length` (T) consecutive rows of one episode; windows never cross an episode boundary.
Every committed episode contributes, short ones included: an episode of L rows has window starts
0..max(L - T, 0) (`starts="fit"`, the default), or 0..L-1 with `starts="every"` (every row begins
a window, so a policy that learns from each window's first row sees every row equally often), and a
window that runs past the episode's end is padded. Padding repeats the
episode's last row (images and low-dim keys alike, so shapes stay fixed and values sane), except
that `action_mask`, `is_first`, `is_last` and `is_terminal` are False and `reward` is 0 there. Every
window carries `valid` (T,) bool, True on real rows and False on padding; consumers mask their
per-step losses with it (world_model/rssm.py, shortcut_backend.py). Padding only ever follows the
real rows, so causal models see the real rows exactly as without it.

Rows are copied as stored, so `is_first` is True at a window's first row only when that row is the
episode's first. Models reset their recurrent state at every window start anyway, so a window that
starts mid-episode simply begins from a fresh state.

Reading. Low-dimensional keys are loaded into memory once per store (EpisodeStore.lowdim). Images are
read per window, chunk by chunk (a T=32 window of 64x64 frames spans one or two 32-frame chunks):
ChunkReader decodes a local store's chunk files directly, since zarr costs ~1 ms per call, and decoded
chunks stay in a small LRU cache (`cache_bytes`, per process). benchmarks/store.py measures both paths
against numpy memmaps.

Mass. `per="row"` (default, for world models): an episode is drawn with probability proportional to
its length L, so every row is about equally likely to be covered, short episodes included.
`per="episode"`: every episode is equally likely, whatever its length (e.g. for policies, so short
successful demos are not outweighed by long failures). Within an episode the window start is uniform.

Weighting. `weights={"source": {"teleop": 2, "video": 1}}` gives each category of a field a share of
the samples proportional to its weight, whatever its size (within a category, the `per` mass above).
Fields: "source", "instruction", "success" (categories "true", "false", "unknown" for episodes without
a label) and "round" (the integer as a string, e.g. "0"; YAML booleans and integers are accepted as
names). "*" sets the weight of categories not named (default 1), and weight 0 leaves a category out.
Several fields, e.g. `{"source": {...}, "success": {"true": 3, "false": 1}}`, apply in the order given,
each rescaling the mass so that its own categories get shares proportional to its weights: the last
field's shares hold exactly, and within each of its categories the earlier fields' proportions are
kept (all shares hold exactly when the fields are independent, e.g. one success rate in every source).

Several stores with different schemas: only keys present in all, with the same shape and dtype, are
sampled (or the `keys` asked for, which must be common).
"""

from __future__ import annotations

import collections
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
from reverie.datasets.store import EpisodeStore, decoding
from reverie.errors import StoreError

CATEGORY_FIELDS = ("source", "instruction", "success", "round")
PER = ("row", "episode")
STARTS = ("fit", "every")


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
            with decoding(str(self.array.store), f"{self.array.path} rows [{start}, {stop})"):
                return self.array[start:stop]
        first, last = start // self.chunk, (stop - 1) // self.chunk
        parts = [self.chunk_rows(c, max(start - c * self.chunk, 0), min(stop - c * self.chunk, self.chunk))
                 for c in range(first, last + 1)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def chunk_rows(self, c: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Rows [lo, hi) of chunk c, relative to the chunk's first row."""
        hi = self.chunk if hi is None else hi
        if self._dir is None:
            with decoding(str(self.array.store), f"{self.array.path} chunk {c}"):
                return self.array[c * self.chunk + lo:c * self.chunk + hi]
        key = self.array.metadata.encode_chunk_key((c,) + (0,) * (len(self.chunk_shape) - 1))
        try:
            data = (self._dir / key).read_bytes()
        except FileNotFoundError:  # zarr leaves chunks equal to the fill value unwritten
            return self.fill[lo:hi]
        with decoding(str(self._dir), f"chunk {key}"):
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
    """Draws windows of `length` rows. sample() -> {key: (T, ...), "valid": (T,) bool, "instruction": str,
    "episode": int, "store": int}; "episode" indexes the episode within store number "store".
    sample_batch(B) draws B windows at once into (B, T, ...) arrays (vectorised draws and low-dim
    gathers). `per` and `weights`: see the module docstring."""

    def __init__(self, stores, length: int, keys: Sequence[str] | None = None,
                 weights: Mapping[str, Mapping] | None = None, seed=0,
                 cache_bytes: int = 256 << 20, per: str = "row", starts: str = "fit"):
        if int(length) < 1:
            raise StoreError(f"window length must be >= 1, got {length}")
        if per not in PER:
            raise StoreError(f"per={per!r}: choose one of {PER}")
        if starts not in STARTS:
            raise StoreError(f"starts={starts!r}: choose one of {STARTS}")
        self.starts = starts
        self.stores = _open(stores)
        self.length, self.per = int(length), per
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
        tables = self._parse_weights(weights)
        metas = [(si, store.meta(ei)) for si, store in enumerate(self.stores) for ei in range(store.num_episodes)]
        for si, m in metas:
            if m.length < 1:
                raise StoreError(f"{self.stores[si].url}: episode {m.index} has no rows (meta/episode_ends "
                                 f"repeats {m.start}), so no window can be drawn from it; rewrite the "
                                 "store without empty episodes (reverie data import ...)")
        if not metas:
            raise StoreError(f"no committed episode in {[s.url for s in self.stores]}; record or import some first")
        self._store = np.array([si for si, _ in metas])                    # (E,) over all stores
        self._episode = np.array([m.index for _, m in metas])
        self._start = np.array([m.start for _, m in metas], np.int64)      # global first row
        self._len = np.array([m.length for _, m in metas], np.int64)
        self._n_starts = (np.maximum(self._len - self.length, 0) + 1       # window starts 0..max(L-T, 0)
                          if self.starts == "fit" else self._len.copy())  # or 0..L-1
        self._instruction = [m.instruction for _, m in metas]
        mass = self._len.astype(np.float64) if self.per == "row" else np.ones(len(metas))
        for field, table in tables:  # each field in turn: its categories get their weights' shares
            categories = np.array([_category(getattr(m, field)) for _, m in metas], dtype=object)
            for cat in set(categories):
                members = categories == cat
                total = mass[members].sum()
                if total > 0:  # an earlier field may have removed the whole category already
                    mass[members] *= float(table.get(cat, table.get("*", 1.0))) / total
        if mass.sum() <= 0:
            raise StoreError(f"weights {weights} leave no episode to sample; give some category a weight > 0")
        self._cdf = np.cumsum(mass) / mass.sum()

    @staticmethod
    def _parse_weights(weights) -> list[tuple[str, dict[str, float]]]:
        """{field: {category: weight}} -> [(field, {category name: weight})] in the order given."""
        if not weights:
            return []
        if not isinstance(weights, Mapping) or any(f not in CATEGORY_FIELDS for f in weights):
            raise StoreError(f"weights must map fields {CATEGORY_FIELDS} to {{category: weight}}, e.g. "
                             f"{{'source': {{'teleop': 2, '*': 1}}}}; got {weights!r}")
        out = []
        for field, table in weights.items():
            if not isinstance(table, Mapping):
                raise StoreError(f"weights[{field!r}] must be {{category: weight}}, got {table!r}")
            table = {_category(k): v for k, v in table.items()}
            bad = {k: v for k, v in table.items() if not (isinstance(v, (int, float, np.number)) and np.isfinite(v) and v >= 0)}
            if bad:
                raise StoreError(f"weights must be finite and >= 0, got {bad}")
            if field == "success" and set(table) - {"true", "false", "unknown", "*"}:
                raise StoreError(f"weights['success'] names {sorted(set(table) - {'true', 'false', 'unknown', '*'})}; "
                                 "success categories are true, false, unknown (no label) and *")
            out.append((field, {k: float(v) for k, v in table.items()}))
        return out

    @property
    def episode_probs(self) -> dict[tuple[int, int], float]:
        """(store, episode) -> probability that a window is drawn from that episode."""
        probs = np.diff(self._cdf, prepend=0.0)
        return {(int(s), int(e)): float(p) for s, e, p in zip(self._store, self._episode, probs)}

    @property
    def num_windows(self) -> int:
        """Number of distinct windows (window starts) over all episodes."""
        return int(self._n_starts.sum())

    def _draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """n random windows -> (index rows into the episode table, global start rows), each (n,)."""
        rows = np.searchsorted(self._cdf, self.rng.random(n), side="right").clip(max=len(self._cdf) - 1)
        offsets = (self.rng.random(n) * self._n_starts[rows]).astype(np.int64)
        return rows, self._start[rows] + offsets

    def sample(self) -> dict:
        rows, starts = self._draw(1)
        j, start = int(rows[0]), int(starts[0])
        si, end = int(self._store[j]), int(self._start[j] + self._len[j])
        index = np.minimum(start + np.arange(self.length), end - 1)       # (T,) padding repeats the last row
        n = min(end - start, self.length)                                 # real rows
        out = {key: self._read_image(si, key, start, n) if is_image_key(key) else self._lowdim[si][key][index]
               for key in self.keys}
        out["valid"] = start + np.arange(self.length) < end              # (T,)
        _mask_padding(out, out["valid"])
        return out | {"instruction": self._instruction[j], "episode": int(self._episode[j]), "store": si}

    def _read_image(self, si: int, key: str, start: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, start + n) of an image key into out (T, ...), the last one repeated over rows n..T-1."""
        if out is None:
            shape, dtype = self._shapes[key]
            out = np.empty((self.length, *shape), dtype)
        self.cache.read((si, key), self._readers[si][key], start, start + n, out[:n])
        out[n:] = out[n - 1]
        return out

    def sample_batch(self, batch_size: int) -> dict:
        """{key: (B, T, ...)}, "valid" (B, T) bool, "instruction" (list of B str), "episode" and
        "store" (B,) int."""
        rows, starts = self._draw(batch_size)
        stores, ends = self._store[rows], self._start[rows] + self._len[rows]   # (B,)
        batch = {key: np.empty((batch_size, self.length, *shape), dtype) for key, (shape, dtype) in self._shapes.items()}
        steps = starts[:, None] + np.arange(self.length)                         # (B, T) global rows
        batch["valid"] = steps < ends[:, None]
        index = np.minimum(steps, ends[:, None] - 1)                             # padding: the last row
        real = np.minimum(ends - starts, self.length)                            # (B,) rows before padding
        for si in np.unique(stores):
            mine = np.flatnonzero(stores == si)
            for key in self._lowdim_keys:  # one fancy-index gather per key
                batch[key][mine] = self._lowdim[si][key][index[mine]]
            for key in self._image_keys:
                for b in mine:
                    self._read_image(int(si), key, int(starts[b]), int(real[b]), batch[key][b])
        _mask_padding(batch, batch["valid"])
        batch["instruction"] = [self._instruction[j] for j in rows]
        batch["episode"] = self._episode[rows].copy()
        batch["store"] = stores.copy()
        return batch

    def __iter__(self) -> Iterator[dict]:
        while True:
            yield self.sample()


def _category(value) -> str:
    """A meta value or a weight table's key -> category name: success True/False/None -> "true" /
    "false" / "unknown", round 3 -> "3", text as is."""
    if value is None:
        return "unknown"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    return str(value)


def _mask_padding(window: dict, valid: np.ndarray) -> None:
    """In place, on (T,) or (B, T) rows: flags are False and reward 0 where `valid` is False."""
    if valid.all():
        return
    for key in ("action_mask", "is_first", "is_last", "is_terminal"):
        if key in window:
            window[key] &= valid
    if "reward" in window:
        window["reward"][~valid] = 0


class WindowDataset(torch.utils.data.IterableDataset):
    """Windows as a torch IterableDataset, for a DataLoader with any number of workers.

    Stores are opened inside each worker (zarr handles do not survive fork well) and each worker
    draws from its own generator seeded by (seed, epoch, torch's worker seed): torch derives worker
    seeds from its global RNG, so `torch.manual_seed` makes runs repeatable, and the epoch term keeps
    persistent workers from repeating themselves. `samples_per_epoch` windows per epoch are split
    across workers; each worker keeps its own sampler and image cache.
    """

    def __init__(self, stores, length: int, keys=None, weights=None, seed: int = 0,
                 samples_per_epoch: int = 10_000, cache_bytes: int = 256 << 20, per: str = "row",
                 starts: str = "fit"):
        if isinstance(stores, (EpisodeStore, str, os.PathLike)):
            stores = [stores]
        self.urls = [s.url if isinstance(s, EpisodeStore) else os.fspath(s) for s in stores]
        # Check everything in the main process, where an error is readable, not inside a worker.
        self.keys = WindowSampler(self.urls, length, keys, weights, seed, cache_bytes=0, per=per, starts=starts).keys
        self.length, self.weights, self.seed, self.per, self.starts = length, weights, seed, per, starts
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
            self._sampler = WindowSampler(self.urls, self.length, self.keys, self.weights, 0, self.cache_bytes,
                                          self.per, self.starts)
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
