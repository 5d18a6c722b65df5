"""`reverie data info STORE [--json]` and `reverie data view STORE episode=N [out=DIR]`.

info: what a store holds at a glance (episodes, frames, keys, sources, instructions, success rate,
      interrupted tail, bytes on disk); `--json` prints the same as one JSON object for scripts.
view: one episode as a PNG contact sheet (evenly spaced frames per camera, labelled with their row
      and timestamp, above a plot of state and action over time) and an animated GIF at the
      store's rate. Both are meant for eyeballing an import or a recording before training on it.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np

from reverie.errors import ReverieError, StoreError

SHEET_COLUMNS = 8  # frames per camera on the contact sheet
GIF_MIN_HEIGHT, GIF_MAX_HEIGHT = 128, 240  # GIF frame height: viewable, yet small for 480p stores
GIF_BLOCK = 64  # frames read per zarr call when building the GIF


def open_store(path: str):
    from reverie.datasets.store import EpisodeStore

    return EpisodeStore.open(path, mode="r")


def summary(path: str) -> dict:
    store = open_store(path)
    metas = [store.meta(i) for i in range(store.num_episodes)]
    labelled = [m.success for m in metas if m.success is not None]
    return {
        "store": str(path),
        "episodes": store.num_episodes,
        "frames": store.num_frames,
        "fps": store.fps,
        "robot": store.robot,
        "image_codec": store.image_codec,
        "keys": {k: {"shape": list(s.shape), "dtype": s.dtype, "units": s.units} for k, s in store.schema.items()},
        "sources": dict(collections.Counter(m.source for m in metas).most_common()),
        "instructions": dict(collections.Counter(m.instruction for m in metas).most_common()),
        "rounds": dict(sorted(collections.Counter(int(m.round) for m in metas).items())),
        "success": {"labelled": len(labelled), "successes": int(sum(labelled)),
                    "failures": len(labelled) - int(sum(labelled)), "unknown": len(metas) - len(labelled),
                    "rate": (sum(labelled) / len(labelled)) if labelled else None},
        "lengths": {"min": min((m.length for m in metas), default=0), "max": max((m.length for m in metas), default=0)},
        # Rows past the last committed end: an interrupted writer (mode "r" leaves them; "a" truncates).
        "interrupted_frames": max(store.array(k).shape[0] for k in store.keys) - store.num_frames,
        "bytes_on_disk": disk_bytes(path),
        "imported_from": store.attrs.get("imported_from"),
    }


def disk_bytes(path: str) -> int:
    import fsspec

    fs, p = fsspec.core.url_to_fs(str(path))
    return int(fs.du(p, total=True))


def format_summary(s: dict) -> str:
    rate = s["success"]["rate"]
    lines = [
        f"store         {s['store']}",
        f"robot         {s['robot']}   images {s['image_codec']}"
        + (f"   imported from {s['imported_from']}" if s["imported_from"] else ""),
        f"episodes      {s['episodes']}   frames {s['frames']}   fps {s['fps']:g}   "
        f"length {s['lengths']['min']}..{s['lengths']['max']} frames",
        "keys",
        *[f"  {k:<16} {str(tuple(v['shape'])):<14} {v['dtype']:<8} {v['units']}".rstrip() for k, v in s["keys"].items()],
        "sources       " + (", ".join(f"{k} {n}" for k, n in s["sources"].items()) or "-"),
        "rounds        " + (", ".join(f"round {k}: {n}" for k, n in s["rounds"].items()) or "-"),
        "instructions",
        *[f"  {n:>5} x {text!r}" for text, n in list(s["instructions"].items())[:20]],
        *([f"  ... and {len(s['instructions']) - 20} more"] if len(s["instructions"]) > 20 else []),
        "success       " + (f"{s['success']['successes']}/{s['success']['labelled']} labelled episodes "
                            f"({100 * rate:.0f}%)" if rate is not None else "no episode labelled")
        + f"   labels: {s['success']['successes']} success, {s['success']['failures']} failure, "
          f"{s['success']['unknown']} unknown (set with `reverie data label`)",
        "interrupted   " + (f"{s['interrupted_frames']} frames past the last committed episode (truncated "
                            f"when the store is next opened for appending)" if s["interrupted_frames"] else "none"),
        f"size on disk  {_human(s['bytes_on_disk'])}",
    ]
    return "\n".join(lines)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def view(path: str, episode: int, out: str | None = None) -> tuple[Path, Path]:
    """Write the contact sheet and GIF of one episode; returns (png, gif)."""
    store = open_store(path)
    if not 0 <= episode < store.num_episodes:
        raise ReverieError(f"episode={episode} is out of range: {path} holds {store.num_episodes} episode(s), "
                           f"numbered 0..{store.num_episodes - 1}")
    if out is None:
        if "://" in str(path):
            raise ReverieError(f"{path} is remote; pass out=DIR for the PNG and GIF")
        out_dir = Path(path).parent / f"{Path(path).name.removesuffix('.zarr')}_view"
    else:
        out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cams = sorted(k for k in store.keys if k.startswith("image/"))
    # Low-dim rows in full; images only as needed, so a long 480x640 episode never sits in memory.
    ep = store.episode(episode, keys=[k for k in store.keys if k not in cams])
    meta = store.meta(episode)
    png = out_dir / f"episode_{episode:04d}.png"
    gif = out_dir / f"episode_{episode:04d}.gif"
    contact_sheet(store, ep, meta, cams, png)
    write_gif(store, meta, cams, gif)
    return png, gif


def contact_sheet(store, ep: dict, meta, cams: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = meta.length
    picks = np.unique(np.linspace(0, n - 1, min(SHEET_COLUMNS, n)).round().astype(int))
    plots = [k for k in ("state", "action") if k in ep and ep[k].ndim == 2 and ep[k].shape[1]]
    rows = len(cams) + len(plots)
    fig = plt.figure(figsize=(1.6 * len(picks), 1.8 * len(cams) + 2.2 * len(plots) + 0.6))
    grid = fig.add_gridspec(rows, len(picks), height_ratios=[1.0] * len(cams) + [1.2] * len(plots))
    t0 = float(ep["timestamp"][0])
    for r, cam in enumerate(cams):
        for c, t in enumerate(picks):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(store.read(cam, meta.start + t, meta.start + t + 1)[0], interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"t={t}  {float(ep['timestamp'][t]) - t0:.2f}s", fontsize=7)
            if c == 0:
                ax.set_ylabel(cam.removeprefix("image/"), fontsize=8)
    for r, key in enumerate(plots, start=len(cams)):
        ax = fig.add_subplot(grid[r, :])
        ax.plot(np.arange(n), ep[key], linewidth=0.8)
        if key == "action" and not ep["action_mask"].any():
            ax.text(0.5, 0.5, "no actions (action_mask False)", transform=ax.transAxes, ha="center", va="center")
        ax.set_ylabel(f"{key} ({ep[key].shape[1]})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlim(0, max(n - 1, 1))
        ax.set_xlabel("row" if r == rows - 1 else "", fontsize=8)
    success = {None: "unlabelled", True: "success", False: "failure"}[meta.success]
    fig.suptitle(f"episode {meta.index}: {meta.instruction or '(no instruction)'}  |  {meta.source}, round {meta.round}, "
                 f"{success}, {n} frames, return {float(np.sum(ep['reward'])):.3g}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_gif(store, meta, cams: list[str], path: Path) -> None:
    """Cameras side by side, scaled to GIF_MIN_HEIGHT..GIF_MAX_HEIGHT rows, at the store's rate."""
    import cv2
    import imageio.v3 as iio

    if not cams:
        raise StoreError("this store has no image keys, so there is nothing to animate")
    height = store.schema[cams[0]].shape[0]
    target = int(np.clip(height, GIF_MIN_HEIGHT, GIF_MAX_HEIGHT))
    # Small frames grow by whole multiples (nearest: crisp pixels); large ones shrink (area average).
    scale = int(np.ceil(target / height)) if height < target else target / height
    filt = cv2.INTER_NEAREST if scale >= 1 else cv2.INTER_AREA
    # GIF delays are in 1/100 s and most viewers cap playback near 50 Hz: faster stores drop frames.
    step = max(1, int(np.ceil(store.fps / 50)))
    frames = []
    for a in range(0, meta.length, GIF_BLOCK):  # read in blocks; keep only the scaled frames
        b = min(a + GIF_BLOCK, meta.length)
        block = np.concatenate([store.read(c, meta.start + a, meta.start + b) for c in cams], axis=2)
        frames += [cv2.resize(f, None, fx=scale, fy=scale, interpolation=filt) if scale != 1 else f
                   for f in block[(-a) % step::step]]
    iio.imwrite(path, np.stack(frames), duration=1000 * step / store.fps, loop=0)


def main(argv: list[str]) -> int:
    from reverie.config import split_args

    words, overrides = split_args(argv)
    if not words or words[0] not in ("info", "view"):
        raise ReverieError("usage: reverie data info STORE [--json] | reverie data view STORE episode=N [out=DIR]")
    command, rest = words[0], words[1:]
    flags = [w for w in rest if w.startswith("-")]
    paths = [w for w in rest if not w.startswith("-")]
    if "-h" in flags or "--help" in flags:
        print(__doc__)
        return 0
    if len(paths) != 1:
        raise ReverieError(f"`data {command}` takes one STORE path, got {paths or 'none'}")
    if command == "info":
        unknown = set(flags) - {"--json"} | {o.partition('=')[0] for o in overrides}
        if unknown:
            raise ReverieError(f"`data info` takes only STORE and --json, not {sorted(unknown)}")
        s = summary(paths[0])
        print(json.dumps(s, indent=2) if "--json" in flags else format_summary(s))
        return 0
    opts = dict(o.split("=", 1) for o in overrides)
    unknown = set(opts) - {"episode", "out"} | set(flags)
    if unknown:
        raise ReverieError(f"`data view` takes episode=N and out=DIR, not {sorted(unknown)}")
    try:
        episode = int(opts.get("episode", 0))
    except ValueError as e:
        raise ReverieError(f"episode={opts['episode']!r} is not an episode number; pass e.g. episode=0") from e
    png, gif = view(paths[0], episode, opts.get("out"))
    print(f"contact sheet  {png}\nanimation      {gif}")
    return 0
