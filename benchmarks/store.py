"""Episode store speed and size: write frames/s, random window reads against numpy memmap, bytes on disk.

    .venv/bin/python benchmarks/store.py            # writes benchmarks/results/store.json, prints a table
    .venv/bin/python benchmarks/store.py --quick    # a smoke run (fewer frames and batches)

Real frames: the ALOHA sim insertion demo's top camera (480x640 H.264, ../shared/fixtures/lerobot_v1),
decoded with PyAV; the 64x64 rows use the same frames resized (INTER_AREA). Low-dim keys are random.

Write rows time the recorder's path, one `EpisodeWriter.add` per step and a commit per episode,
including validation, streaming flushes and statistics. Read rows draw B=16 windows of T=32 rows with
WindowSampler.sample_batch (all keys) and, in the same run, the same number of windows from np.load
memmaps of the same arrays (already in the page cache, as the store's chunk files are). The sampler is
timed without its chunk cache (one zarr call per window and image key) and with it in steady state
(the 64x64 data fits in its 256 MiB). Timings report wall and process CPU time (all threads), since
the machine may be shared; the load average is recorded. Targets: write >= 1000 frames/s at 64x64
and >= 60 at 480x640; window reads within 2x of memmap.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import tempfile
import time

import av
import cv2
import numpy as np

from reverie.datasets.sampler import WindowSampler
from reverie.datasets.store import EpisodeStore, make_schema

VIDEO = (pathlib.Path(__file__).resolve().parents[2] / "shared/fixtures/lerobot_v1/aloha_sim_insertion_human"
         / "videos/observation.images.top_episode_000000.mp4")
OUT = pathlib.Path(__file__).parent / "results" / "store.json"
B, T = 16, 32


def load_frames(n: int) -> np.ndarray:
    """(n, 480, 640, 3) uint8 RGB frames of the fixture video (looped if n exceeds its length)."""
    with av.open(str(VIDEO)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack([frames[i % len(frames)] for i in range(n)])


def photo_frames(n: int) -> np.ndarray:
    """(n, 480, 640, 3) views of a real photograph (matplotlib's grace_hopper.jpg), each under a small
    random rotation, zoom and sub-pixel shift as from a moving camera: photographic content, where zstd
    gains little and JPEG a lot, without the exact repeats that plain crops would hand to zstd."""
    from matplotlib import cbook

    photo = cv2.cvtColor(cv2.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)), cv2.COLOR_BGR2RGB)
    big = cv2.resize(photo, (640, 480), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(n):
        warp = cv2.getRotationMatrix2D((320 + rng.uniform(-20, 20), 240 + rng.uniform(-20, 20)),
                                       rng.uniform(-3, 3), rng.uniform(1.05, 1.15))
        frames.append(cv2.warpAffine(big, warp, (640, 480), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return np.stack(frames)


def episodes(frames: np.ndarray, episode_len: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, len(frames) - episode_len + 1, episode_len):
        n = episode_len
        out.append({
            "image/front": frames[start:start + n],
            "state": rng.normal(size=(n, 6)).astype(np.float32),
            "action": rng.uniform(-1, 1, (n, 6)).astype(np.float32),
            "action_mask": np.arange(n) < n - 1,
            "reward": np.zeros(n, np.float32),
            "is_first": np.arange(n) == 0,
            "is_last": np.arange(n) == n - 1,
            "is_terminal": np.zeros(n, bool),
            "timestamp": start / 50 + np.arange(n) / 50,
        })
    return out


def clocks():
    return time.perf_counter(), time.process_time()


def since(t0) -> tuple[float, float]:
    wall, cpu = clocks()
    return wall - t0[0], cpu - t0[1]


def du(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bench_write(root: pathlib.Path, eps, hw, codec: str, content: str) -> tuple[dict, EpisodeStore]:
    path = root / f"{hw[0]}x{hw[1]}_{codec}_{content}.zarr"
    store = EpisodeStore.create(path, make_schema({"front": hw}, 6, 6), fps=50.0, robot="aloha", image_codec=codec)
    n = sum(len(e["state"]) for e in eps)
    add_ms = []  # per-call latency: what a control loop calling add() at a fixed rate would feel
    t0 = clocks()
    for i, ep in enumerate(eps):
        writer = store.episode_writer("insert the peg", "teleop")
        for t in range(len(ep["state"])):
            step = {key: value[t] for key, value in ep.items()}
            a = time.perf_counter()
            writer.add(step)
            add_ms.append(1e3 * (time.perf_counter() - a))
        writer.commit(success=True)
    wall, cpu = since(t0)
    images = np.concatenate([e["image/front"] for e in eps])
    got = store.read("image/front", 0, n)
    # Squared error summed per frame by OpenCV (no float copy of the whole video).
    mse = sum(cv2.norm(a, b, cv2.NORM_L2SQR) for a, b in zip(got, images)) / images.size
    raw_images = images.nbytes
    row = {"size": f"{hw[0]}x{hw[1]}", "content": content, "codec": codec, "frames": n,
           "write_fps_wall": n / wall, "write_fps_cpu": n / cpu,
           "add_ms_median": float(np.median(add_ms)), "add_ms_max": float(np.max(add_ms)),
           "image_bytes_raw": raw_images, "image_bytes_disk": du(path / "data/image/front"),
           "store_bytes_raw": int(sum(v.nbytes for e in eps for v in e.values())), "store_bytes_disk": du(path),
           "psnr_db": float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)}
    row["image_ratio"] = row["image_bytes_raw"] / row["image_bytes_disk"]
    row["store_ratio"] = row["store_bytes_raw"] / row["store_bytes_disk"]
    return row, store


def bench_paced(root: pathlib.Path, ep: dict[str, np.ndarray], codec: str, hz: float = 30.0) -> dict:
    """add() latency when frames arrive at a camera's rate, as in recording: background flushes then
    run between frames, so a control loop never waits on compression."""
    hw = ep["image/front"].shape[1:3]
    store = EpisodeStore.create(root / f"paced_{codec}.zarr", make_schema({"front": hw}, 6, 6), fps=hz,
                                robot="aloha", image_codec=codec)
    writer, add_ms = store.episode_writer("insert the peg", "teleop"), []
    tick = time.perf_counter()
    for t in range(len(ep["state"])):
        tick += 1.0 / hz
        time.sleep(max(0.0, tick - time.perf_counter()))
        step = {key: value[t] for key, value in ep.items()}
        a = time.perf_counter()
        writer.add(step)
        add_ms.append(1e3 * (time.perf_counter() - a))
    a = time.perf_counter()
    writer.commit()
    commit_ms = 1e3 * (time.perf_counter() - a)
    store.close()
    return {"size": f"{hw[0]}x{hw[1]}", "codec": codec, "hz": hz, "frames": len(add_ms),
            "add_ms_median": float(np.median(add_ms)), "add_ms_p99": float(np.percentile(add_ms, 99)),
            "add_ms_max": float(np.max(add_ms)), "commit_ms": commit_ms}


def memmaps(root: pathlib.Path, store: EpisodeStore) -> dict[str, np.ndarray]:
    out = {}
    for key in store.keys:
        file = root / f"{store.url.rsplit('/', 1)[-1]}_{key.replace('/', '_')}.npy"
        np.save(file, store.read(key, 0, store.num_frames))
        out[key] = np.load(file, mmap_mode="r")
    return out


def memmap_batch(mm: dict[str, np.ndarray], ends: np.ndarray, rng: np.random.Generator) -> dict:
    """The baseline: B random in-episode windows gathered from memmaps, one fancy index per key."""
    starts = np.concatenate([[0], ends[:-1]])
    n_starts = np.maximum(ends - starts - T + 1, 0)
    cdf = np.cumsum(n_starts) / n_starts.sum()
    episodes = np.searchsorted(cdf, rng.random(B), side="right")
    first = starts[episodes] + (rng.random(B) * n_starts[episodes]).astype(np.int64)
    index = first[:, None] + np.arange(T)  # (B, T)
    return {key: arr[index] for key, arr in mm.items()}


def bench_reads(root: pathlib.Path, store: EpisodeStore, batches: int) -> dict:
    """Batches/s of memmap, uncached and cached sampler, timed interleaved so load changes on a shared
    machine hit all three alike."""
    mm = memmaps(root, store)
    rng = np.random.default_rng(0)
    ends = store.episode_ends
    cold = WindowSampler(store, T, seed=0, cache_bytes=0)
    warm = WindowSampler(store, T, seed=0)
    readers = {"memmap": lambda: memmap_batch(mm, ends, rng), "uncached": lambda: cold.sample_batch(B),
               "cached": lambda: warm.sample_batch(B)}
    for _ in range(batches):  # warm-up: page cache, and the sampler's chunk cache in steady state
        for read in readers.values():
            read()
    warm.cache.hits = warm.cache.misses = 0
    spent = {name: [0.0, 0.0] for name in readers}
    for _ in range(batches):
        for name, read in readers.items():
            t0 = clocks()
            read()
            wall, cpu = since(t0)
            spent[name][0] += wall
            spent[name][1] += cpu
    rate = {name: (batches / wall, batches / cpu) for name, (wall, cpu) in spent.items()}
    return {
        "size": f"{store.schema['image/front'].shape[0]}x{store.schema['image/front'].shape[1]}",
        "codec": store.image_codec, "frames": store.num_frames, "batches": batches,
        **{f"{name}_batches_per_s_{clock}": rate[name][i] for name in rate for i, clock in enumerate(("wall", "cpu"))},
        "cache_hit_rate": warm.cache.hits / max(warm.cache.hits + warm.cache.misses, 1),
        "memmap_over_uncached_wall": rate["memmap"][0] / rate["uncached"][0],
        "memmap_over_cached_wall": rate["memmap"][0] / rate["cached"][0],
        "memmap_over_uncached_cpu": rate["memmap"][1] / rate["uncached"][1],
        "memmap_over_cached_cpu": rate["memmap"][1] / rate["cached"][1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames and batches (smoke run)")
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args()
    n64, n480, batches, batches480 = (1000, 64, 20, 1) if args.quick else (6000, 256, 60, 3)

    frames = load_frames(n480 if args.quick else 500)
    photos = photo_frames(16 if args.quick else 32)
    n_paced = 48 if args.quick else 150
    small = np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in frames])
    small = np.concatenate([small] * (n64 // len(small) + 1))[:n64]
    root = pathlib.Path(tempfile.mkdtemp(prefix="reverie_store_bench_"))
    writes, reads, paced = [], [], []
    try:
        for codec in ("lossless", "lossy"):
            row, store = bench_write(root, episodes(small, 250), (64, 64), codec, "sim")
            writes.append(row)
            reads.append(bench_reads(root, store, batches))
            row, store = bench_write(root, episodes(frames[:n480], n480 // 2), (480, 640), codec, "sim")
            writes.append(row)
            reads.append(bench_reads(root, store, batches480))
            writes.append(bench_write(root, episodes(photos, len(photos)), (480, 640), codec, "photo")[0])
            paced.append(bench_paced(root, episodes(frames[:n_paced], n_paced)[0], codec))
            shutil.rmtree(root)
            root.mkdir()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    for row in writes:  # how much smaller lossy is than lossless on the same frames
        twin = next(r for r in writes if r["codec"] == "lossless" and r["size"] == row["size"]
                    and r["content"] == row["content"])
        row["lossless_over_this"] = twin["image_bytes_disk"] / row["image_bytes_disk"]
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_average_1m": os.getloadavg()[0]},
        "frames_source": {"sim": VIDEO.name, "photo": "matplotlib sample_data/grace_hopper.jpg crops"}, "window": {"batch": B, "length": T},
        "writes": writes, "reads": reads, "paced_add": paced,
        "targets": {"write_fps_64x64": 1000, "write_fps_480x640": 60, "read_ratio_max": 2.0},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{'size':<8} {'content':<7} {'codec':<9} {'frames':>6} {'write f/s wall':>14} {'f/s cpu':>8} "
          f"{'add ms med/max':>14} {'raw/img':>8} {'raw/store':>9} {'lossless/this':>13} {'PSNR dB':>8}")
    for r in writes:
        print(f"{r['size']:<8} {r['content']:<7} {r['codec']:<9} {r['frames']:>6} {r['write_fps_wall']:>14.0f} "
              f"{r['write_fps_cpu']:>8.0f} {r['add_ms_median']:>6.2f}/{r['add_ms_max']:<7.1f} "
              f"{r['image_ratio']:>8.1f} {r['store_ratio']:>9.1f} "
              f"{r['lossless_over_this']:>13.1f} {r['psnr_db']:>8.1f}")
    print(f"\nwindow reads, B={B} T={T}, batches/s (wall and cpu); slowdown = memmap rate / store rate:")
    print(f"{'size':<8} {'codec':<9} {'memmap':>13} {'uncached':>13} {'cached':>13} {'hit':>5} "
          f"{'slowdown uncached':>17} {'slowdown cached':>15}")
    for r in reads:
        pair = lambda name: f"{r[name + '_wall']:.1f}/{r[name + '_cpu']:.1f}"  # noqa: E731
        print(f"{r['size']:<8} {r['codec']:<9} {pair('memmap_batches_per_s'):>13} {pair('uncached_batches_per_s'):>13} "
              f"{pair('cached_batches_per_s'):>13} {r['cache_hit_rate']:>5.2f} "
              f"{r['memmap_over_uncached_wall']:>7.1f}/{r['memmap_over_uncached_cpu']:<9.1f} "
              f"{r['memmap_over_cached_wall']:>7.2f}/{r['memmap_over_cached_cpu']:<7.2f}")
    print("\nadd() latency with frames arriving at a camera's rate (ms):")
    for r in paced:
        print(f"{r['size']:<8} {r['codec']:<9} {r['hz']:.0f} Hz x {r['frames']}: median {r['add_ms_median']:.2f}, "
              f"p99 {r['add_ms_p99']:.2f}, max {r['add_ms_max']:.1f}; commit {r['commit_ms']:.0f}")
    print(f"\nload average {result['machine']['load_average_1m']:.2f} on {result['machine']['cores']} cores; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
