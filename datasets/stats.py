"""Normalisation statistics per key: mean, std, min, max, 1st and 99th percentiles.

Two regimes, both exact:
- low-dimensional keys (state, action, reward, flags, timestamp): computed over every committed row,
  per feature dimension. These arrays are small and the store holds them in memory anyway.
- image keys: per channel, in pixel units [0, 255], from a 256-bin histogram per channel. Each
  episode's histogram is computed while it streams in and stored as one row of meta/stats/<key>, so
  merging is a sum and deleting an episode drops its row; no image is ever re-read.

Result shape per statistic: the key's shape for low-dim keys (() for scalars), (3,) for images.
"""

from __future__ import annotations

import cv2
import numpy as np

STAT_NAMES = ("mean", "std", "min", "max", "p01", "p99")


def image_histogram(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 -> (C, 256) int64 counts per channel.

    cv2.calcHist reads uint8 in place (~15x faster than np.bincount, which widens every pixel to
    int64 first); it counts in float32, exact below 2**24, so it sees at most 2**23 pixels a call.
    """
    channels, width = frames.shape[-1], frames.shape[-2]
    rows = np.ascontiguousarray(frames).reshape(-1, width, channels)  # one tall image
    step = max(1, (1 << 23) // width)
    hist = np.zeros((channels, 256), np.int64)
    for r in range(0, len(rows), step):
        for c in range(channels):
            hist[c] += cv2.calcHist([rows[r:r + step]], [c], None, [256], [0, 256]).reshape(256).astype(np.int64)
    return hist


def from_histogram(hist: np.ndarray) -> dict[str, np.ndarray]:
    """(C, 256) counts -> per-channel stats (C,). Percentiles use the lower value (no interpolation)."""
    values = np.arange(hist.shape[-1], dtype=np.float64)
    count = hist.sum(-1)
    if not count.all():
        return {}
    mean = (hist * values).sum(-1) / count
    var = (hist * (values - mean[:, None]) ** 2).sum(-1) / count
    cdf = np.cumsum(hist, -1) / count[:, None]
    nonzero = hist > 0

    def first_value_at(q):  # smallest pixel value whose cumulative share reaches q
        return np.argmax(cdf >= q - 1e-12, axis=-1).astype(np.float64)

    return {
        "mean": mean, "std": np.sqrt(var),
        "min": np.argmax(nonzero, -1).astype(np.float64),
        "max": (hist.shape[-1] - 1 - np.argmax(nonzero[:, ::-1], -1)).astype(np.float64),
        "p01": first_value_at(0.01), "p99": first_value_at(0.99),
    }


def from_rows(rows: np.ndarray) -> dict[str, np.ndarray]:
    """(N, ...) rows -> stats of shape (...). float64 accumulation so large N stays accurate."""
    if len(rows) == 0:
        return {}
    x = rows.astype(np.float64)
    p01, p99 = np.percentile(x, [1, 99], axis=0)
    return {"mean": x.mean(0), "std": x.std(0), "min": x.min(0), "max": x.max(0), "p01": p01, "p99": p99}


def to_json(stats: dict[str, dict[str, np.ndarray]]) -> dict:
    return {key: {name: np.asarray(v).tolist() for name, v in s.items()} for key, s in stats.items()}


def from_json(data: dict) -> dict[str, dict[str, np.ndarray]]:
    return {key: {name: np.asarray(v, np.float32) for name, v in s.items()} for key, s in data.items()}
