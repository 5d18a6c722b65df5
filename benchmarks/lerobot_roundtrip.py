"""LeRobot both ways, against the official `lerobot` package (0.6.x from PyPI).

    .venv/bin/python benchmarks/lerobot_roundtrip.py [--cache DIR] [--setup-only]

lerobot pins its own torch and needs Python >= 3.12, so it lives in a virtual environment of its own
under the cache folder (default ~/.cache/reverie/lerobot_roundtrip), made on first use and reused:
  python   the first of $REVERIE_LEROBOT_PYTHON, python3.13 / python3.12 on PATH, or one built there
           from Debian's CPython source package (this project's machines run Debian 12, whose
           Python is 3.11, and reach only package registries)
  torch    the CPU build from PyTorch's index when it is reachable, else what PyPI has
  lerobot  lerobot[dataset]>=0.6,<0.7
reverie itself runs here, in this interpreter; the lerobot side is benchmarks/lerobot_side.py, run in
that environment. Two directions, each on the same small episodes (two cameras, state, action):
  (a) LeRobot's writer (LeRobotDataset.create, add_frame, save_episode) writes a dataset, with
      videos and with in-table images; `reverie data import lerobot` reads it; states, actions and
      tasks must be equal, frames equal (images) or within codec tolerance (video).
  (b) `reverie data export lerobot` writes a store; LeRobotDataset loads it; the same checks.
Writes benchmarks/results/lerobot_roundtrip.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "lerobot_roundtrip.json"
LEROBOT = "lerobot[dataset]>=0.6,<0.7"
PSNR_BAR = 30.0  # dB between a store's frames and LeRobot's decode of the same video: codec tolerance
DEBIAN_SRC = "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main"


def sh(cmd: list[str], log: Path | None = None, **kw) -> subprocess.CompletedProcess:
    """Run a setup step under nice (the machine is shared); its output goes to `log`."""
    print("  $", " ".join(map(str, cmd)), flush=True)
    with open(log or os.devnull, "a") as f:
        return subprocess.run(["nice", "-n", "19", *map(str, cmd)], stdout=f, stderr=subprocess.STDOUT, **kw)


def find_python(cache: Path) -> Path:
    """A Python >= 3.12 for lerobot: given, on PATH, built before, or built now."""
    for candidate in (os.environ.get("REVERIE_LEROBOT_PYTHON"), shutil.which("python3.13"), shutil.which("python3.12"),
                      cache / "python3.13" / "bin" / "python3.13"):
        # Run it: a pyenv shim is on PATH whether or not that version is installed.
        if candidate and subprocess.run([candidate, "-c", "import sys, venv; assert sys.version_info >= (3, 12)"],
                                        capture_output=True).returncode == 0:
            return Path(candidate)
    return build_python(cache)


def build_python(cache: Path) -> Path:
    """CPython 3.13 from Debian trixie's source package (apt-get source with a private source list,
    so the machine's apt setup is untouched), configured into cache/python3.13."""
    apt, log = cache / "apt", cache / "python-build.log"
    (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(DEBIAN_SRC + "\n")
    opts = ["-o", f"Dir::Etc::SourceList={apt / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={apt / 'lists'}", "-o", f"Dir::Cache={apt}"]
    src = apt / "src"
    src.mkdir(exist_ok=True)
    print("building CPython 3.13 from Debian's source package (about 10 minutes on 2 cores)", flush=True)
    for step in (["apt-get", *opts, "update"], ["apt-get", *opts, "source", "--download-only", "python3.13"]):
        if sh(step, log, cwd=src).returncode:
            sys.exit(f"could not fetch Debian's python3.13 source (see {log}); set REVERIE_LEROBOT_PYTHON to a "
                     f"Python >= 3.12 instead")
    tarball = next(src.glob("python3.13_*.orig.tar.xz"))
    build = cache / "build"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    sh(["tar", "-xf", tarball, "-C", build], log)
    tree = next(build.glob("Python-*"))
    prefix = cache / "python3.13"
    for step in (["./configure", f"--prefix={prefix}", "--disable-test-modules"], ["make", "-j2"], ["make", "install"]):
        if sh(step, log, cwd=tree).returncode:
            sys.exit(f"building CPython failed at {' '.join(step)} (see {log})")
    shutil.rmtree(build, ignore_errors=True)
    return prefix / "bin" / "python3.13"


def make_venv(cache: Path) -> Path:
    """cache/venv with lerobot 0.6.x; reused when it already imports."""
    venv, log = cache / "venv", cache / "venv-install.log"
    python = venv / "bin" / "python"
    probe = "import lerobot, importlib.metadata as m; v = m.version('lerobot'); assert v.startswith('0.6'), v; print(v)"
    if python.exists() and subprocess.run([python, "-c", probe], capture_output=True).returncode == 0:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    base = find_python(cache)
    print(f"making {venv} with {base}", flush=True)
    sh([base, "-m", "venv", venv], log, check=True)
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    sh([*pip, "-U", "pip"], log)
    # CPU torch first, so pip does not take PyPI's CUDA build when the CPU index is reachable.
    if sh([*pip, "torch>=2.7,<2.12", "torchvision>=0.22,<0.27", "--index-url",
           "https://download.pytorch.org/whl/cpu", "--timeout", "20", "--retries", "0"], log).returncode:
        print("  (PyTorch's CPU index is unreachable: torch comes from PyPI)", flush=True)
    if sh([*pip, LEROBOT], log).returncode:
        sys.exit(f"installing {LEROBOT} failed; see {log}")
    return python


def lerobot_side(python: Path, *args) -> dict:
    out = subprocess.run([python, HERE / "lerobot_side.py", *map(str, args)], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    if out.returncode:
        sys.exit(f"lerobot_side.py {' '.join(map(str, args))} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


def compare(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], cameras: list[str], lossless: bool) -> dict:
    """Per key: equal (low-dim) or PSNR / max error (frames)."""
    row = {k: bool(np.array_equal(ref[k], got[k])) for k in ("state", "action", "next.reward", "next.done", "episode", "frame")}
    row["tasks"] = list(ref["tasks"]) == list(got["tasks"])
    for cam in cameras:
        a, b = ref[f"image/{cam}"], got[f"image/{cam}"]
        row[f"{cam}_shape"] = a.shape == b.shape
        if a.shape == b.shape:
            row[f"{cam}_max_abs"] = int(np.abs(a.astype(int) - b).max())
            row[f"{cam}_psnr_db"] = round(psnr(a, b), 2) if row[f"{cam}_max_abs"] else None  # None: identical
    frames_ok = all(row.get(f"{c}_shape") and (row[f"{c}_max_abs"] == 0 if lossless else
                                               row[f"{c}_psnr_db"] is None or row[f"{c}_psnr_db"] >= PSNR_BAR)
                    for c in cameras)
    row["passed"] = all(row[k] for k in ("state", "action", "next.reward", "next.done", "episode", "frame", "tasks")) \
        and frames_ok
    return row


def store_arrays(path: Path) -> dict[str, np.ndarray]:
    """A store flattened the way lerobot_side.py dumps a LeRobotDataset."""
    from reverie.datasets.store import EpisodeStore

    store = EpisodeStore.open(path)
    eps = [store.episode(i) for i in range(store.num_episodes)]
    out = {k: np.concatenate([e[k] for e in eps]) for k in eps[0] if k.startswith("image/") or k in ("state", "action")}
    # LeRobot's next.* at frame t is the store's row t+1 (reward) and the episode's end (is_terminal).
    out["next.reward"] = np.concatenate([np.r_[e["reward"][1:], 0] for e in eps]).astype(np.float32)
    out["next.done"] = np.concatenate([e["is_terminal"] for e in eps])
    out["episode"] = np.concatenate([np.full(len(e["state"]), i) for i, e in enumerate(eps)])
    out["frame"] = np.concatenate([np.arange(len(e["state"])) for e in eps])
    out["tasks"] = np.array([store.meta(i).instruction for i in range(store.num_episodes)])
    return out


def npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                        / "reverie" / "lerobot_roundtrip")
    parser.add_argument("--setup-only", action="store_true", help="make the lerobot environment and stop")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON result goes")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    python = make_venv(args.cache)
    versions = lerobot_side(python, "versions")
    print(f"lerobot environment ready in {time.time() - t0:.0f} s: {versions}", flush=True)
    if args.setup_only:
        return 0

    from reverie.datasets.export_lerobot import export
    from reverie.datasets.importers import run

    rows = []
    with tempfile.TemporaryDirectory(prefix="lerobot_roundtrip_") as tmp:
        tmp = Path(tmp)
        for images in ("video", "image"):
            # (a) LeRobot writes, reverie imports.
            root = tmp / f"lerobot_{images}"
            made = lerobot_side(python, "write", root, images, tmp / f"written_{images}.npz")
            run("lerobot", [str(root)], str(tmp / f"imported_{images}.zarr"), ["size=native"])
            ref, got = npz(tmp / f"written_{images}.npz"), store_arrays(tmp / f"imported_{images}.zarr")
            rows.append({"direction": "lerobot -> reverie", "images": images, "frames": int(len(ref["state"])),
                         "episodes": made["episodes"], "codec": made.get("codec") or "png",
                         **compare(ref, got, made["cameras"], lossless=images == "image")})
            # (b) reverie exports that store, LeRobot loads it.
            out = tmp / f"exported_{images}"
            export(str(tmp / f"imported_{images}.zarr"), str(out), {"images": "video" if images == "video" else "png"})
            loaded = lerobot_side(python, "read", out, tmp / f"loaded_{images}.npz")
            ref, got = store_arrays(tmp / f"imported_{images}.zarr"), npz(tmp / f"loaded_{images}.npz")
            rows.append({"direction": "reverie -> lerobot", "images": images, "frames": int(len(ref["state"])),
                         "episodes": loaded["episodes"], "codec": "h264" if images == "video" else "png",
                         **compare(ref, got, made["cameras"], lossless=images == "image")})

    result = {"benchmark": "lerobot_roundtrip", "lerobot": versions, "reverie_python": platform.python_version(),
              # LeRobotDataset reads videos with PyAV here: torchcodec's wheel needs FFmpeg's shared libraries
              "lerobot_video_backend": "pyav",
              "psnr_bar_db": PSNR_BAR, "seconds": round(time.time() - t0, 1), "rows": rows,
              "passed": all(r["passed"] for r in rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    cams = made["cameras"]
    def frames(r, c):
        return "exact" if r.get(f"{c}_max_abs") == 0 else f"{r.get(c + '_psnr_db')} dB, max {r.get(c + '_max_abs')}"

    keys = ("state", "action", "next.reward", "next.done", "tasks")
    print(f"{'direction':<20} {'images':<6} {'codec':<5} {'frames':>6} " + " ".join(f"{k:>11}" for k in keys)
          + " " + " ".join(f"{c:>17}" for c in cams) + "  passed")
    for r in rows:
        print(f"{r['direction']:<20} {r['images']:<6} {str(r['codec']):<5} {r['frames']:>6} "
              + " ".join(f"{'equal' if r[k] else 'DIFFERENT':>11}" for k in keys) + " "
              + " ".join(f"{frames(r, c):>17}" for c in cams) + f"  {r['passed']}")
    print(f"-> {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
