"""Random training windows from episode stores, for world-model and policy training.

A window is `length` consecutive rows of one episode; windows never cross an episode boundary, and
episodes shorter than `length` are skipped. Rows are copied as stored, so `is_first` is True at a
window's first row only when that row is the episode's first. Models reset their recurrent state
at every window start anyway, so a window that starts mid-episode simply begins from a fresh state.

Reading. Low-dimensional keys are loaded into memory once per store (EpisodeStore.lowdim). Images are
read per window: all rows of the window's missing chunks come from zarr in one call and are kept,
decoded, in a small LRU cache (`cache_bytes`), because zarr pays ~1 ms per call and per chunk decode
and a T=32 window of 64x64 frames spans one or two 32-frame chunks.

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

import numpy as np
import torch.utils.data

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


class ChunkCache:
    """LRU cache of decoded time-chunks of zarr arrays, bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = int(max_bytes), 0
        self._items: collections.OrderedDict[tuple, np.ndarray] = collections.OrderedDict()
        self.hits = self.misses = 0

    def read(self, name: tuple, array, chunk: int, start: int, stop: int, limit: int) -> np.ndarray:
        """Rows [start, stop) of `array` whose time chunks are `chunk` rows; rows past `limit` unread."""
        if self.max_bytes <= 0:
            self.misses += 1
            return array[start:stop]
        first, last = start // chunk, (stop - 1) // chunk
        blocks = {}
        for c in range(first, last + 1):
            if (name, c) in self._items:
                self._items.move_to_end((name, c))
                blocks[c] = self._items[(name, c)]
        missing = [c for c in range(first, last + 1) if c not in blocks]
        self.hits += len(blocks)
        self.misses += len(missing)
        if missing:  # one zarr call for the missing run (at most two chunks for a typical window)
            lo, hi = missing[0] * chunk, min((missing[-1] + 1) * chunk, limit)
            rows = array[lo:hi]
            for c in missing:
                blocks[c] = rows[c * chunk - lo:(c + 1) * chunk - lo]
                self._put((name, c), blocks[c])
        parts = [blocks[c][max(start - c * chunk, 0):stop - c * chunk] for c in range(first, last + 1)]
        return parts[0].copy() if len(parts) == 1 else np.concatenate(parts)

    def _put(self, key: tuple, block: np.ndarray) -> None:
        if key in self._items:
            return
        self._items[key] = block
        self.bytes += block.nbytes
        while self.bytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.nbytes


class WindowSampler:
    """Draws windows of `length` rows. sample() -> {key: (T, ...), "instruction": str, "episode": int,
    "store": int}; "episode" indexes the episode within store number "store"."""

    def __init__(self, stores, length: int, keys: Sequence[str] | None = None,
                 weights: Mapping[str, Mapping[str, float]] | None = None, seed: int | None = 0,
                 cache_bytes: int = 256 << 20):
        if int(length) < 1:
            raise StoreError(f"window length must be >= 1, got {length}")
        self.stores = _open(stores)
        self.length = int(length)
        self.keys = common_keys(self.stores, keys)
        self.rng = np.random.default_rng(seed)
        self.cache = ChunkCache(cache_bytes)
        self._lowdim = [{k: v for k, v in s.lowdim().items() if k in self.keys} for s in self.stores]
        self._build_index(weights)

    def _build_index(self, weights) -> None:
        rows = []  # (store, episode, first row, number of window starts, instruction, category)
        field, table = self._parse_weights(weights)
        skipped = 0
        for si, store in enumerate(self.stores):
            for ei in range(store.num_episodes):
                meta = store.meta(ei)
                if meta.length < self.length:
                    skipped += 1
                    continue
                rows.append((si, ei, meta.start, meta.length - self.length + 1, meta.instruction,
                             getattr(meta, field) if field else ""))
        if skipped:
            log.info("skipping %d episodes shorter than the window length %d", skipped, self.length)
        if not rows:
            raise StoreError(f"no episode has at least {self.length} rows; lower the window length "
                             f"(longest: {max((s.meta(i).length for s in self.stores for i in range(len(s))), default=0)})")
        self._store, self._episode, self._start, n_windows = (np.array([r[k] for r in rows]) for k in range(4))
        self._instruction = [r[4] for r in rows]
        mass = n_windows.astype(np.float64)
        if field:  # each category gets its weight's share; windows uniform within a category
            categories = np.array([r[5] for r in rows], dtype=object)
            for cat in set(categories):
                members = categories == cat
                w = float(table.get(cat, table.get("*", 1.0)))
                mass[members] *= w / mass[members].sum()
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
        return int(sum(self.stores[s].meta(e).length - self.length + 1 for s, e in zip(self._store, self._episode)))

    def sample(self) -> dict:
        j = min(int(np.searchsorted(self._cdf, self.rng.random(), side="right")), len(self._cdf) - 1)
        si, ei = int(self._store[j]), int(self._episode[j])
        n_starts = self.stores[si].meta(ei).length - self.length + 1
        start = int(self._start[j]) + int(self.rng.integers(n_starts))
        return self.window(si, start) | {"instruction": self._instruction[j], "episode": ei, "store": si}

    def window(self, store: int, start: int) -> dict[str, np.ndarray]:
        """key -> (T, ...) rows [start, start + T) of one store (global row index)."""
        stop, s = start + self.length, self.stores[store]
        out = {}
        for key in self.keys:
            if is_image_key(key):
                out[key] = self.cache.read((store, key), s.array(key), s.chunk_frames(key), start, stop, s.num_frames)
            else:
                out[key] = self._lowdim[store][key][start:stop].copy()
        return out

    def sample_batch(self, batch_size: int) -> dict:
        """{key: (B, T, ...)} plus "instruction" (list of B str), "episode" and "store" (B,) int."""
        samples = [self.sample() for _ in range(batch_size)]
        batch = {key: np.stack([s[key] for s in samples]) for key in self.keys}
        batch["instruction"] = [s["instruction"] for s in samples]
        batch["episode"] = np.array([s["episode"] for s in samples])
        batch["store"] = np.array([s["store"] for s in samples])
        return batch

    def __iter__(self) -> Iterator[dict]:
        while True:
            yield self.sample()


class WindowDataset(torch.utils.data.IterableDataset):
    """Windows as a torch IterableDataset, for a DataLoader with any number of workers.

    Stores are opened inside each worker (zarr handles do not survive fork well) and each worker
    draws from its own generator seeded by (seed, torch's worker seed): torch derives worker seeds
    from its global RNG once per epoch, so epochs differ and `torch.manual_seed` makes runs
    repeatable. `samples_per_epoch` windows are split across workers; each worker has its own cache.
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
        self.epoch = 0  # main-process iterations only (workers are re-created per epoch)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        if info is None:
            worker, workers, entropy = 0, 1, [self.seed, self.epoch]
            self.epoch += 1
        else:
            worker, workers, entropy = info.id, info.num_workers, [self.seed, info.seed]
        sampler = WindowSampler(self.urls, self.length, self.keys, self.weights,
                                np.random.SeedSequence(entropy), self.cache_bytes)
        count = self.samples_per_epoch // workers + (worker < self.samples_per_epoch % workers)
        for _ in range(count):
            yield sampler.sample()

    def __len__(self) -> int:
        return self.samples_per_epoch
