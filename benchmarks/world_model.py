"""World-model throughput: training frames/s per backend and size preset, and imagination steps/s.

    .venv/bin/python benchmarks/world_model.py [--presets tiny,cpu,s] [--backends rssm,shortcut]
        [--steps 5] [--budget 120]

Training: full optimiser steps (loss, backward, clip, Adam) on batches in the world_model/backend.py
contract at the preset's batch size, sequence length and image size, with a 6-joint arm spec;
frames/s = batch_size * seq_len / median step time (data loading excluded). Imagination: `observe` a
short context, then `imagine` batch 256 for horizon 16 under a small MLP policy; steps/s = 256 * 16
imagined transitions / median time. A preset whose first step exceeds `--budget` seconds is reported as
not fitting this machine. Every backend in the registry gets rows (the transformer's once it exists).
Writes benchmarks/results/world_model.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from reverie.config import compose
from reverie.world_model.backend import DataSpec, build, load_backends, model_config

J = A = 6
RESULTS = Path(__file__).parent / "results" / "world_model.json"


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


def timed(fn, repeats: int, budget: float) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if sum(times) > budget:
            break
    return times


def bench(backend: str, preset: str, steps: int, budget: float) -> dict:
    cfg = compose("train_wm", [f"world_model={backend}", f"preset={preset}", "data=unused"])
    mcfg = model_config(cfg)
    size, b, t = int(mcfg.image_size), int(mcfg.batch_size), int(mcfg.seq_len)
    torch.manual_seed(0)
    model = build(backend, mcfg, DataSpec((size, size, 3), J, A))
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=float(mcfg.lr), eps=float(mcfg.adam_eps))
    batch = random_batch(b, t, size)
    row = {"backend": backend, "preset": preset, "params_m": params / 1e6, "batch": b, "seq_len": t,
           "image": size}

    def train_step():
        loss, _ = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(mcfg.grad_clip))
        opt.step()

    first = timed(train_step, 1, budget)[0]
    if first > budget:
        return row | {"fits": False, "note": f"one training step took {first:.0f}s > budget {budget:.0f}s"}
    times = timed(train_step, steps, budget)
    step_s = statistics.median(times)
    row |= {"fits": True, "train_step_s": step_s, "train_frames_per_s": b * t / step_s}

    model.eval()
    policy = torch.nn.Sequential(torch.nn.Linear(model.feat_dim, 64), torch.nn.SiLU(), torch.nn.Linear(64, A),
                                 torch.nn.Tanh())
    ib, horizon = 256, 16
    ctx = random_batch(ib, 4, size)
    with torch.no_grad():
        state, _ = model.observe(ctx)
        imagine = lambda: model.imagine(state, policy, horizon)  # noqa: E731
        imagine()
        times = timed(imagine, 5, budget)
    im_s = statistics.median(times)
    row |= {"imagine_batch": ib, "imagine_horizon": horizon, "imagine_s": im_s,
            "imagine_steps_per_s": ib * horizon / im_s}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="tiny,cpu,s,m,l")
    parser.add_argument("--backends", default=",".join(sorted(load_backends())))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per preset and phase")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    every = ["tiny", "cpu", "s", "m", "l"]
    for backend in args.backends.split(","):
        for preset in [p for p in every if p not in args.presets.split(",")]:
            rows.append({"backend": backend, "preset": preset, "fits": False,
                         "note": "not attempted on this machine (--presets)"})
        for preset in args.presets.split(","):
            cfg = compose("train_wm", [f"world_model={backend}", f"preset={preset}", "data=unused"])
            if backend not in cfg.preset:
                rows.append({"backend": backend, "preset": preset, "fits": False, "note": "no preset section"})
                continue
            rows.append(bench(backend, preset, args.steps, args.budget))
            print(json.dumps(rows[-1]))
    result = {
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__,
                    "load_avg_1m": os.getloadavg()[0],
                    "device": "cpu"},
        "note": "model-only throughput on random batches in the batch contract; data loading excluded",
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"\n{'backend':<9} {'preset':<6} {'params':>8} {'B x T':>7} {'img':>4} {'train frames/s':>15} "
          f"{'imagine steps/s (256x16)':>25}")
    for r in rows:
        if not r.get("fits"):
            print(f"{r['backend']:<9} {r['preset']:<6}  -- {r.get('note', '')}")
            continue
        print(f"{r['backend']:<9} {r['preset']:<6} {r['params_m']:>7.2f}M {r['batch']:>3}x{r['seq_len']:<3} "
              f"{r['image']:>4} {r['train_frames_per_s']:>15.0f} {r['imagine_steps_per_s']:>25.0f}")
    print(f"(load average {result['machine']['load_avg_1m']:.1f} on {os.cpu_count()} cores)\nwrote {RESULTS}")
    if "shortcut" in args.backends.split(","):  # the transformer's own rows: stages, K-step generation, RSSM ratio
        from world_model_shortcut import main as shortcut_main  # benchmarks/world_model_shortcut.py

        shortcut_main(["preset=cpu" if "cpu" in args.presets.split(",") else "preset=tiny",
                       f"threads={torch.get_num_threads()}"])


if __name__ == "__main__":
    main()
