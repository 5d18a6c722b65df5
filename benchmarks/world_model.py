"""World-model throughput: the RSSM update and imagination at the `cpu` and `s` presets, every speed
switch on and off, and the reference DreamerV3 PyTorch port at the same sizes, in one interleaved run.

    .venv/bin/python benchmarks/world_model.py [--presets cpu,s] [--threads 1,2] [--rounds 3]
        [--steps cpu=4,s=2] [--switches core,fused_norm,compile_norm,channels_last,prefetch[,bf16]] [--compile]
        [--peer auto|none|PYTHON] [--shortcut cpu|none] [--out PATH]

Update: full optimiser steps (loss, backward, clip, Adam) on one random batch in the
world_model/backend.py contract at the preset's batch size, sequence length and image size, 6-joint
spec; frames/s = batch x seq / median step time. Variants: `default` (the training defaults: v3 core,
fused and compiled norms, channels_last, fp32) and, per switch, the default with that one switch flipped
(core=wide, fused_norm off, compile_norm off, channels_last off, bf16 autocast on, torch.compile on with --compile, prefetch off: the
prefetch pair trains from a 64x64 toy store through TrainData, data loading included). Interleaved: each
round runs `steps` of every variant and of the peer, the order reversed every other round, so a load
that comes and goes weighs on all alike; medians over all rounds. Imagination: `observe` a 4-step
context, then `imagine` batch 256 for horizon 16 under a small MLP policy, interleaved the same way;
frames/s = 256 x 16 / median. The peer: NM512/dreamerv3-torch's `_train` at the same deter, hidden,
stoch, classes, units, layers, cnn depth, batch and sequence (benchmarks/dreamerv3_torch_setup.sh sets
it up in its own venv; `--peer auto` finds it there), its per-step times read from its own process.
Writes benchmarks/results/world_model.json (load average before and after) and prints a table.
At the defaults on a quiet 2-core box: ~28 min (s: ~12 s a step at 1 thread, the peer ~20 s; cpu: ~0.8 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from reverie.config import compose
from reverie.world_model import networks
from reverie.world_model.backend import DataSpec, build, model_config

J = A = 6
HERE = Path(__file__).parent
RESULTS = HERE / "results" / "world_model.json"
PEER_ROOT = Path(os.environ.get("REVERIE_CACHE", Path.home() / ".cache" / "reverie")) / "dreamerv3-torch"
# each switch: the value that differs from the training default (reverie/conf/train_wm.yaml, rssm.yaml)
FLIPS = {"core": "wide", "fused_norm": False, "compile_norm": False, "channels_last": False, "bf16": True,
         "compile": True, "prefetch": 0}
DEFAULT = {"core": "v3", "fused_norm": True, "compile_norm": True, "channels_last": True, "bf16": False,
           "compile": False, "prefetch": None}


def random_batch(b: int, t: int, size: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    first = torch.zeros(b, t, dtype=torch.bool)
    first[:, 0] = True
    return {
        "image": torch.randint(0, 256, (b, t, size, size, 3), dtype=torch.uint8, generator=g).float() / 255,
        "state": torch.randn(b, t, J, generator=g), "action": torch.rand(b, t, A, generator=g) * 2 - 1,
        "action_mask": torch.ones(b, t, dtype=torch.bool), "reward": torch.rand(b, t, generator=g),
        "is_first": first, "is_last": torch.zeros(b, t, dtype=torch.bool),
        "is_terminal": torch.zeros(b, t, dtype=torch.bool),
        "instruction_embedding": torch.nn.functional.normalize(torch.randn(b, 384, generator=g), dim=-1),
    }


class Variant:
    """One model (and optimiser) with the switches in `sw`; step() is one timed update."""

    def __init__(self, name: str, preset: str, sw: dict, store: str | None):
        self.name, self.sw = name, sw
        cfg = compose("train_wm", ["world_model=rssm", f"preset={preset}", f"data={store or 'unused'}",
                                   f"world_model.core={sw['core']}", "threads=0"])
        mcfg = model_config(cfg)
        self.mcfg, self.frames = mcfg, int(mcfg.batch_size) * int(mcfg.seq_len)
        self.data = None
        if sw["prefetch"] is not None:  # trains from a store: data loading is part of the step
            from reverie.world_model.data import TrainData

            self.data = TrainData(cfg, mcfg)
            self.data.start_stream(0, int(sw["prefetch"]))
            spec = self.data.spec
        else:
            spec = DataSpec((int(mcfg.image_size),) * 2 + (3,), J, A)
            self.batch = random_batch(int(mcfg.batch_size), int(mcfg.seq_len), int(mcfg.image_size))
        torch.manual_seed(0)
        self.model = build("rssm", mcfg, spec)
        networks.set_fused_norm(self.model, sw["fused_norm"], sw["compile_norm"])
        networks.set_channels_last(self.model, sw["channels_last"])
        self.params = sum(p.numel() for p in self.model.parameters())
        self.module = torch.compile(self.model) if sw["compile"] else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=float(mcfg.lr), eps=float(mcfg.adam_eps))
        self.times: list[float] = []
        self.imagine_times: list[float] = []
        start = time.perf_counter()
        self.step(timed=False)  # warm-up (and, with compile, the compilation)
        self.first_step_s = time.perf_counter() - start

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.sw["bf16"] else contextlib.nullcontext()

    def step(self, timed: bool = True) -> None:
        start = time.perf_counter()
        batch = self.data.next() if self.data is not None else self.batch
        self.model.train()
        with self.autocast():
            loss, _ = self.module(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.mcfg.grad_clip))
        self.opt.step()
        if timed:
            self.times.append(time.perf_counter() - start)

    def imagine(self, ib: int = 256, horizon: int = 16) -> None:
        if not hasattr(self, "_ctx"):
            size = int(self.mcfg.image_size)
            self._ctx = random_batch(ib, 4, size)
            self._policy = torch.nn.Sequential(torch.nn.Linear(self.model.feat_dim, 64), torch.nn.SiLU(),
                                               torch.nn.Linear(64, A), torch.nn.Tanh())
        self.model.eval()
        with torch.no_grad(), self.autocast():
            state, _ = self.model.observe(self._ctx)
            start = time.perf_counter()
            self.model.imagine(state, self._policy, horizon)
            self.imagine_times.append(time.perf_counter() - start)

    def close(self) -> None:
        if self.data is not None:
            self.data.stop()


def peer_python(arg: str) -> str | None:
    if arg == "none":
        return None
    if arg != "auto":
        return arg
    python = PEER_ROOT / "venv" / "bin" / "python"
    return str(python) if python.exists() and (PEER_ROOT / "src" / "models.py").exists() else None


def run_peer(python: str, mcfg, threads: int, steps: int) -> dict:
    """One peer process: a warm-up step, then `steps` timed ones (its own clock)."""
    args = dict(deter=mcfg.deter, hidden=mcfg.hidden, stoch=mcfg.stoch, classes=mcfg.classes, units=mcfg.units,
                layers=mcfg.layers, cnn_depth=mcfg.cnn_depth, batch=mcfg.batch_size, seq=mcfg.seq_len,
                image=mcfg.image_size, steps=steps, threads=threads)
    cmd = [python, str(HERE / "dreamerv3_torch_peer.py"), "--src", str(PEER_ROOT / "src")]
    cmd += [f"--{k.replace('_', '-')}={int(v)}" for k, v in args.items()]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"dreamerv3-torch peer failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_preset(preset: str, threads: int, rounds: int, steps: int, switches: list[str], store: str,
                 peer: str | None) -> dict:
    torch.set_num_threads(threads)
    variants = [Variant("default", preset, dict(DEFAULT), None)]
    for s in switches:
        if s == "prefetch":  # a data-loading pair: both from the store, the thread on and off
            variants.append(Variant("prefetch=2", preset, dict(DEFAULT, prefetch=2), store))
            variants.append(Variant("prefetch=0", preset, dict(DEFAULT, prefetch=0), store))
        else:
            variants.append(Variant(f"{s}={FLIPS[s]}", preset, dict(DEFAULT, **{s: FLIPS[s]}), store))
    peer_times, peer_params = [], None
    imaginers = [v for v in variants if v.name in ("default", "core=wide")]
    for r in range(rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        if peer and r % 2 == 1:
            res = run_peer(peer, variants[0].mcfg, threads, steps)
            peer_times += res["step_s"]
            peer_params = res["params_m"]
        for v in order:
            for _ in range(steps):
                v.step()
        for v in (imaginers if r % 2 == 0 else imaginers[::-1]):
            v.imagine()
        if peer and r % 2 == 0:
            res = run_peer(peer, variants[0].mcfg, threads, steps)
            peer_times += res["step_s"]
            peer_params = res["params_m"]
    frames = variants[0].frames
    base = statistics.median(variants[0].times)
    rows = []
    for v in variants:
        med = statistics.median(v.times)
        row = {"variant": v.name, "params_m": v.params / 1e6, "update_frames_per_s": v.frames / med,
               "update_step_s": med, "steps": len(v.times), "vs_default": base / med,
               "first_step_s": v.first_step_s}
        if v.imagine_times:
            row["imagine_frames_per_s"] = 256 * 16 / statistics.median(v.imagine_times)
        rows.append(row)
        v.close()
    m = variants[0].mcfg
    out = {"preset": preset, "threads": threads, "batch": int(m.batch_size), "seq_len": int(m.seq_len),
           "image": int(m.image_size), "sizes": {k: int(m[k]) for k in ("deter", "hidden", "stoch", "classes",
                                                                          "units", "layers", "cnn_depth")},
           "variants": rows}
    if peer_times:
        peer_fps = frames / statistics.median(peer_times)
        out["dreamerv3_torch"] = {"params_m": peer_params, "update_frames_per_s": peer_fps,
                                  "steps": len(peer_times), "ratio_reverie_over_peer": rows[0]["update_frames_per_s"] / peer_fps}
    return out


def shortcut_rows(presets: list[str]) -> list[dict]:
    """The transformer backend's plain rows (update and imagination), as before issue 22."""
    rows = []
    for preset in presets:
        cfg = compose("train_wm", ["world_model=shortcut", f"preset={preset}", "data=unused"])
        mcfg = model_config(cfg)
        size, b, t = int(mcfg.image_size), int(mcfg.batch_size), int(mcfg.seq_len)
        torch.manual_seed(0)
        model = build("shortcut", mcfg, DataSpec((size, size, 3), J, A))
        opt = torch.optim.Adam(model.parameters(), lr=float(mcfg.lr), eps=float(mcfg.adam_eps))
        batch = random_batch(b, t, size)
        times = []
        for i in range(4):
            start = time.perf_counter()
            loss, _ = model.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - start)
        rows.append({"backend": "shortcut", "preset": preset, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                     "update_frames_per_s": b * t / statistics.median(times[1:])})
    return rows


def legacy_rows(rssm: list[dict], shortcut: list[dict]) -> list[dict]:
    """The flat `rows` the file has always had (backend, preset, train_frames_per_s, ...; other tools
    read them): each RSSM preset and thread count at the training defaults, then the shortcut rows."""
    out = []
    for r in rssm:
        d = r["variants"][0]  # "default"
        out.append({"backend": "rssm", "preset": r["preset"], "threads": r["threads"], "params_m": d["params_m"],
                    "batch": r["batch"], "seq_len": r["seq_len"], "image": r["image"], "fits": True,
                    "train_step_s": d["update_step_s"], "train_frames_per_s": d["update_frames_per_s"],
                    **({"imagine_frames_per_s": d["imagine_frames_per_s"]} if "imagine_frames_per_s" in d else {})})
    out += [{"fits": True, **{("train_frames_per_s" if k == "update_frames_per_s" else k): v for k, v in r.items()}}
            for r in shortcut]
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="cpu,s")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", default="cpu=4,s=2,tiny=4", help="timed steps per variant and round, per preset")
    p.add_argument("--switches", default=None, help="default: core,fused_norm,compile_norm,channels_last,prefetch, "
                   "and bf16 where the CPU has it natively (emulated bf16 ran 0.08-0.11x here: minutes a step at s)")
    p.add_argument("--compile", action="store_true", help="add the torch.compile variant (minutes to compile)")
    p.add_argument("--peer", default="auto", help="auto | none | the peer venv's python")
    p.add_argument("--shortcut", default="cpu", help="presets for the shortcut backend's plain rows, or none")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    steps = dict(kv.split("=") for kv in args.steps.split(","))
    from reverie.world_model.distributed import cpu_has_bf16

    if args.switches is None:
        args.switches = "core,fused_norm,compile_norm,channels_last,prefetch" + (",bf16" if cpu_has_bf16() else "")
    switches = [s for s in args.switches.split(",") if s] + (["compile"] if args.compile else [])
    peer = peer_python(args.peer)
    load_before = os.getloadavg()
    start = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        from reverie.world_model.data import write_toy_store

        store = str(write_toy_store(Path(tmp) / "toy.zarr", episodes=8, length=80, size=64))
        for preset in args.presets.split(","):
            for threads in [int(t) for t in args.threads.split(",")]:
                rows.append(bench_preset(preset, threads, args.rounds, int(steps.get(preset, 2)), switches,
                                         store, peer))
                print(json.dumps(rows[-1]), flush=True)
    torch.set_num_threads(max(int(t) for t in args.threads.split(",")))
    extra = shortcut_rows(args.shortcut.split(",")) if args.shortcut != "none" else []
    result = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "cpu_bf16": cpu_has_bf16(), "switches": switches,
                    "load_avg_before": load_before, "load_avg_after": os.getloadavg(), "device": "cpu"},
        "note": ("model-only update and imagination on random batches (prefetch rows: from a 64x64 toy store, "
                 "data loading included); interleaved rounds, medians; dreamerv3-torch = NM512's port at the same "
                 "sizes" + ("" if peer else " (not installed: benchmarks/dreamerv3_torch_setup.sh)")),
        "duration_s": time.monotonic() - start,
        "rssm": rows, "shortcut": extra,
        "rows": legacy_rows(rows, extra),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\n{'preset':<6} {'thr':>3} {'variant':<20} {'params':>8} {'update fr/s':>12} {'vs default':>10} "
          f"{'imagine fr/s':>13}")
    for r in rows:
        for v in r["variants"]:
            im = f"{v['imagine_frames_per_s']:>13.0f}" if "imagine_frames_per_s" in v else f"{'':>13}"
            print(f"{r['preset']:<6} {r['threads']:>3} {v['variant']:<20} {v['params_m']:>7.2f}M "
                  f"{v['update_frames_per_s']:>12.0f} {v['vs_default']:>9.2f}x {im}")
        if "dreamerv3_torch" in r:
            d = r["dreamerv3_torch"]
            print(f"{r['preset']:<6} {r['threads']:>3} {'dreamerv3-torch':<20} {d['params_m']:>7.2f}M "
                  f"{d['update_frames_per_s']:>12.0f}   reverie/peer {d['ratio_reverie_over_peer']:.2f}x")
    for r in extra:
        print(f"shortcut {r['preset']:<6} {r['params_m']:>7.2f}M {r['update_frames_per_s']:>12.0f} update fr/s")
    la, lb = result["machine"]["load_avg_before"], result["machine"]["load_avg_after"]
    print(f"(load average {la[0]:.1f} before, {lb[0]:.1f} after, on {os.cpu_count()} cores; "
          f"{result['duration_s'] / 60:.1f} min)\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
