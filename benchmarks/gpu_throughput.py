"""One GPU throughput measurement for benchmarks/gpu_check.sh: the RSSM update at a preset, precision and
compile setting, on random batches; writes one JSON object.

    python benchmarks/gpu_throughput.py --preset s --precision bf16 --compile 0 --steps 10 --json OUT.json

frames/s = batch x seq / median step time (CUDA-synchronised); first_step_s includes the compilation;
peak_mem_gb = torch.cuda.max_memory_allocated over the whole run; imagination frames/s at batch 256 x 16.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from world_model import random_batch  # noqa: E402  (benchmarks/world_model.py)

from reverie.config import compose  # noqa: E402
from reverie.world_model import distributed, networks  # noqa: E402
from reverie.world_model.backend import DataSpec, build, model_config  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="s")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--compile", type=int, default=0)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", required=True)
    p.add_argument("--device", default="cuda", help="cuda; cpu only to smoke-test this script")
    a = p.parse_args()
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    row = {"preset": a.preset, "precision": a.precision, "compile": bool(a.compile), "ok": False}
    Path(a.json).write_text(json.dumps(row))  # a crash still leaves the row saying what was tried
    cfg = compose("train_wm", ["world_model=rssm", f"preset={a.preset}", "data=unused"])
    m = model_config(cfg)
    torch.manual_seed(0)
    model = build("rssm", m, DataSpec((int(m.image_size),) * 2 + (3,), 6, 6)).to(dev)
    networks.set_channels_last(model, True)
    module = torch.compile(model) if a.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=float(m.lr), eps=float(m.adam_eps))
    b, t = int(m.batch_size), int(m.seq_len)
    batch = {k: v.to(dev) for k, v in random_batch(b, t, int(m.image_size)).items()}

    def step():
        with distributed.autocast(dev, a.precision):
            loss, metrics = module(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(m.grad_clip))
        opt.step()
        return loss

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    loss = step()
    sync()
    row["first_step_s"] = time.perf_counter() - start
    for _ in range(a.warmup - 1):
        step()
    times = []
    for _ in range(a.steps):
        sync()
        start = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - start)
    row |= {"params_m": sum(q.numel() for q in model.parameters()) / 1e6, "batch": b, "seq_len": t,
            "step_s": statistics.median(times), "update_frames_per_s": b * t / statistics.median(times),
            "loss": float(loss), "finite": bool(torch.isfinite(loss))}
    model.eval()
    policy = torch.nn.Sequential(torch.nn.Linear(model.feat_dim, 64), torch.nn.SiLU(), torch.nn.Linear(64, 6),
                                 torch.nn.Tanh()).to(dev)
    ctx = {k: v.to(dev) for k, v in random_batch(256, 4, int(m.image_size)).items()}
    with torch.no_grad(), distributed.autocast(dev, a.precision):
        state, _ = model.observe(ctx)
        times = []
        for _ in range(4):
            sync()
            start = time.perf_counter()
            model.imagine(state, policy, 16)
            sync()
            times.append(time.perf_counter() - start)
    row |= {"imagine_frames_per_s": 256 * 16 / statistics.median(times[1:]),
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None,
            "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "ok": True}
    Path(a.json).write_text(json.dumps(row))
    print(json.dumps(row))


if __name__ == "__main__":
    main()
