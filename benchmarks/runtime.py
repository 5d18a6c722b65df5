"""Runtime benchmark: policy step latency (onnxruntime vs PyTorch eager), instruction encoding, and a
long control loop against the virtual serial robot. Writes benchmarks/results/runtime.json.

    .venv/bin/python benchmarks/runtime.py                 # 10,000 control steps (about 6 minutes)
    .venv/bin/python benchmarks/runtime.py --steps 1000    # shorter loop
    .venv/bin/python benchmarks/runtime.py --preset tiny   # other model sizes

Latency: one control step of the `cpu` preset (64x64 images) for each backend, the same untrained
weights in both engines (latency does not depend on training), pinned to one core, 1 thread each.
Loop: `reverie deploy robot=virtual` in its own process (the torch-free path, as on a robot) against
`reverie sim serve-bus`, at the manifest's 30 Hz; rate, jitter and deadline misses from its report.
Targets (issue 8): step p99 <= 2 ms for `cpu` at 64x64; onnxruntime >= 1.5x faster than eager;
< 0.5% deadline misses.
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

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).resolve().parent / "results" / "runtime.json"


def pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()), "n": len(a)}


def build_step(backend: str, preset: str):
    """Untrained world model + agent of the preset, at the store resolution 64x64."""
    import torch

    from reverie.config import compose
    from reverie.export.policy_module import AgentStep
    from reverie.policy.agent import Agent
    from reverie.world_model.backend import DataSpec, build, model_config

    torch.manual_seed(0)
    cfg = model_config(compose("train_wm", [f"preset={preset}", f"world_model={backend}", "data=x"]))
    size = int(cfg.image_size)
    wm = build(backend, cfg, DataSpec((size, size, 3), 6, 6)).eval()
    wm.deterministic = True
    agent_cfg = compose("train_agent", ["wm=x"]).agent
    agent = Agent(wm.feat_dim, 6, units=int(agent_cfg.units), layers=int(agent_cfg.layers)).eval()
    step = AgentStep(wm, agent, (64, 64)).eval()  # the backend's own onnx_step inside
    step.sizes = {k: v for k, v in dict(cfg).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return step


def time_step(backend: str, preset: str, workdir: Path, iters: int) -> dict:
    import torch

    from reverie.export.onnx_export import export_policy
    from reverie.runtime.text_encoder import session

    step = build_step(backend, preset)
    path = workdir / f"{backend}.onnx"
    export_policy(step, path, 18)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    state, instr = rng.normal(0, 0.5, (1, 6)).astype(np.float32), np.zeros((1, 384), np.float32)
    instr[0, 0] = 1.0

    sess = session(path, threads=1)
    carried = [s.zeros().numpy() for s in step.state_specs()]
    onnx_ms = []
    for i in range(iters + 50):
        feeds = dict(zip(step.input_names(), [image, state, instr, *carried]))
        t = time.perf_counter()
        out = sess.run(None, feeds)
        if i >= 50:  # warm-up excluded
            onnx_ms.append((time.perf_counter() - t) * 1e3)
        carried = out[1:]

    torch.set_num_threads(1)
    timg, tstate, tinstr = torch.from_numpy(image), torch.from_numpy(state), torch.from_numpy(instr)
    carried_t = [s.zeros() for s in step.state_specs()]
    eager_ms = []
    with torch.no_grad():
        for i in range(iters // 2 + 20):
            t = time.perf_counter()
            out = step(timg, tstate, tinstr, *carried_t)
            if i >= 20:
                eager_ms.append((time.perf_counter() - t) * 1e3)
            carried_t = list(out[1:])
    onnx, eager = percentiles(onnx_ms), percentiles(eager_ms)
    return {"backend": backend, "preset": preset, "sizes": step.sizes, "onnxruntime": onnx, "eager": eager,
            "speedup_p50": eager["p50_ms"] / onnx["p50_ms"], "onnx_bytes": path.stat().st_size}


def time_encoder(bundle: Path, n: int = 200) -> dict:
    from reverie.runtime.text_encoder import TextEncoder

    enc = TextEncoder(bundle, threads=1)
    colours, verbs = ["red", "green", "blue"], ["touch", "lift", "push", "pick up", "nudge"]
    ms = []
    for i in range(n + 10):
        text = f"{verbs[i % 5]} the {colours[i % 3]} cube, attempt {i}"  # distinct: no cache hits
        t = time.perf_counter()
        enc.encode(text)
        if i >= 10:
            ms.append((time.perf_counter() - t) * 1e3)
    return percentiles(ms)


def make_bundle(workdir: Path, preset: str) -> Path:
    """An rssm bundle of the preset for the virtual SO-101 (untrained weights: the loop's timing is
    what is measured; no parity replay, the tests cover that)."""
    from omegaconf import OmegaConf

    from reverie.runtime import manifest
    from reverie.export.onnx_export import (export_policy, export_text_encoder, manifest_content,
                                            robot_section)
    from reverie.language import model_dir

    step = build_step("rssm", preset)
    out = workdir / "bundle"
    out.mkdir()
    export_policy(step, out / "policy.onnx", 18)
    export_text_encoder(out / "text_encoder.onnx", 18, Path("~/.cache/reverie/text_encoder").expanduser())
    shutil.copyfile(model_dir() / "tokenizer.json", out / "tokenizer.json")
    robot = robot_section(OmegaConf.create({"arm": "so101_virtual", "control_hz": None}), None)
    content = manifest_content(step, {"kind": "rssm"}, workdir, "image/front", (64, 64, 3), robot, 18, 512,
                               {"note": "benchmark bundle, untrained weights, parity not measured"})
    manifest.write(out, content)
    return out


def control_loop(bundle: Path, workdir: Path, steps: int, core: int) -> dict:
    """`reverie deploy robot=virtual` for `steps` steps; the server and the client on separate cores
    when there are two (as a robot's own servos would be)."""
    from reverie.robot_io.virtual.launcher import VirtualArm

    link, report = workdir / "arm", workdir / "report.json"
    if hasattr(os, "sched_setaffinity"):  # the server may use every core; the client gets `core`
        os.sched_setaffinity(0, set(range(os.cpu_count())))
    launch = "import sys; from reverie.cli import main; sys.exit(main())"
    with VirtualArm("feetech", link=link):
        cmd = [sys.executable, "-c", launch, "deploy", f"bundle={bundle}", "robot=virtual", f"link={link}",
               "instruction=touch the red cube", f"steps={steps}", "stdin=false", f"report={report}"]
        if shutil.which("taskset"):
            cmd = ["taskset", "-c", str(core), *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=steps / 30 * 2 + 300)
    return json.loads(report.read_text())[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10_000, help="control steps against the virtual robot (0: skip)")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--iters", type=int, default=1000, help="timed policy steps per engine and backend")
    ap.add_argument("--core", type=int, default=0)
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_1min": load},
               "preset": args.preset, "image": [64, 64]}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        pin(args.core)
        results["policy_step"] = [time_step(b, args.preset, workdir, args.iters) for b in ("rssm", "shortcut")]
        bundle = make_bundle(workdir, args.preset)
        results["instruction_encoding"] = time_encoder(bundle)
        if args.steps:
            results["control_loop"] = control_loop(bundle, workdir, args.steps, args.core)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print_table(results)
    return 0


def print_table(r: dict) -> None:
    print(f"\npolicy step, preset {r['preset']}, 64x64, one core (load {r['machine']['load_1min']})")
    print(f"{'backend':<10}{'engine':<13}{'p50 ms':>9}{'p99 ms':>9}")
    for row in r["policy_step"]:
        for engine in ("onnxruntime", "eager"):
            print(f"{row['backend']:<10}{engine:<13}{row[engine]['p50_ms']:>9.3f}{row[engine]['p99_ms']:>9.3f}")
        print(f"{'':<10}{'speed-up':<13}{row['speedup_p50']:>8.2f}x")
    e = r["instruction_encoding"]
    print(f"instruction encoding (MiniLM, onnxruntime, 1 thread): p50 {e['p50_ms']:.2f} ms, p99 {e['p99_ms']:.2f} ms")
    if "control_loop" in r:
        c = r["control_loop"]
        print(f"control loop vs virtual robot: {c['steps']} steps at {c['rate_hz']:.2f} Hz (target {c['target_hz']:g}), "
              f"jitter {c['jitter_ms']:.2f} ms, p99 period {c['period_p99_ms']:.1f} ms, deadline misses "
              f"{c['deadline_misses']} ({100 * c['miss_fraction']:.3f}%)")


if __name__ == "__main__":
    sys.exit(main())
