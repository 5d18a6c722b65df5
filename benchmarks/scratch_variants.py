"""Variants of the pixel BC (the harness's scratch row), trained on the same AgentData (16 x 16
windows, successful demos) and scored like benchmarks/agent.py (100 train episodes from 50,000 +
10,000 x seed, chunks ensembled at 0.1). Appends one JSON line to --log. The figures in
results/agent_session_issue19.md (second 2026-12-02 section) came from:

    .venv/bin/python benchmarks/scratch_variants.py --wm D/touch/seed0/wm --out /tmp/v --steps 750   # or 1500, 3000
    .venv/bin/python benchmarks/scratch_variants.py --wm D/touch/seed0/wm --out /tmp/v --kw '{"keypoints": 32}' --ensemble none
    .venv/bin/python benchmarks/scratch_variants.py --wm D/touch/seed0/wm --out /tmp/v --mse 1
    # bc_pixels.py's recipe piece by piece (third 2026-12-02 section):
    .venv/bin/python benchmarks/scratch_variants.py --wm W --out /tmp/v --batch 64 --steps 3000 --kw '{"sample": "rows", "norm": "layer", "weight_decay": 1e-4}'
"""
import sys, json, time, argparse
import torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))

from agent import success, eval_seed
torch_seed = torch.manual_seed
from reverie.config import compose
from reverie.policy.data import AgentData
from reverie.policy.scratch_bc import ScratchController, save, train_scratch_bc
from reverie.world_model import checkpoint as wm_checkpoint

p = argparse.ArgumentParser()
p.add_argument("--wm", required=True, help="a world-model run: its data, camera, resolution and units")
p.add_argument("--steps", type=int, default=1500); p.add_argument("--seed", type=int, default=0)
p.add_argument("--out", required=True); p.add_argument("--batch", type=int, default=16)
p.add_argument("--suites", nargs="+", default=["train"]); p.add_argument("--episodes", type=int, default=100)
p.add_argument("--kw", default="{}"); p.add_argument("--data", default=""); p.add_argument("--task", default="touch"); p.add_argument("--mse", type=int, default=0); p.add_argument("--log", default="scratch_variants.jsonl")
p.add_argument("--ensemble", default="0.1", help="temporal-ensembling decay, or none (receding horizon)")
a = p.parse_args()
torch.set_num_threads(1)
_, wm_cfg, wm_info = wm_checkpoint.load_model(a.wm)
kw = dict(chunk=8, film=True) | json.loads(a.kw)
rows = kw.get("sample") == "rows"  # independent rows: windows of `chunk` rows from any start, first row used
data = AgentData(compose("train_agent", [f"wm={a.wm}", *([f"data={a.data}"] if a.data else []), f"seed={a.seed}", "progress=false", "threads=1"]), wm_cfg, wm_info,
                 batch_size=a.batch, seq_len=kw["chunk"] if rows else 16, weights={"success": {"true": 1, "false": 0}},
                 starts="every" if rows else "fit")
torch_seed(a.seed)
if a.mse:  # the chunk loss as squared error on the mean (bc_scratch.loss=mse)
    kw["loss"] = "mse"
t = time.time(); pol, hist = train_scratch_bc(data, steps=a.steps, progress=False, **kw); tt = time.time() - t
save(__import__("pathlib").Path(a.out), pol, {"image_key": "image/front",  # loads as it was scored
                                              "ensemble": None if a.ensemble == "none" else float(a.ensemble)})
r = success(ScratchController(pol, "image/front", ensemble=None if a.ensemble == "none" else float(a.ensemble)), a.task, a.episodes, eval_seed(a.seed), 60, a.suites)
out = {"task": a.task, "data": a.data, "kw": kw, "steps": a.steps, "mse": a.mse, "ensemble": a.ensemble, "batch": a.batch, "seed": a.seed, "train_s": round(tt), "loss_last": hist[-1][f"bc/{kw.get('loss', 'nll')}"],
       **{k: [v["success_rate"], v["ci95"]] for k, v in r.items()}}
print(json.dumps(out), flush=True)
open(a.log, "a").write(json.dumps(out) + "\n")
