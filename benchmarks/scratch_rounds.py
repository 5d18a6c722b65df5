"""Corrective data rounds for the pixel baseline: deploy a bc_scratch policy in the sim, record its
episodes (success labels from the env, source=policy, round=k), retrain bc_scratch from scratch on
the demos plus every round so far (successful episodes cloned, as for the demos), and score it as
benchmarks/agent.py scores its rows (100 train-suite episodes from 50,000 + 10,000 x seed).
Rollout seeds start at 20,000 + 1,000 x round: disjoint from the demos (0..199) and the evaluation.

    .venv/bin/python benchmarks/scratch_rounds.py --policy P --demos D/touch/demos.zarr --wm W --out OUT [--rounds 1] [--episodes 100]

Appends one JSON line per round to --log.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from agent import eval_seed, success  # noqa: E402

from reverie.config import compose  # noqa: E402
from reverie.policy.improve import record_rollouts  # noqa: E402
from reverie.policy.loading import load_controller  # noqa: E402
from reverie.policy.train import train  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--policy", required=True, help="the bc_scratch folder deployed in round 1")
p.add_argument("--demos", required=True); p.add_argument("--wm", required=True, help="data choices only")
p.add_argument("--out", required=True); p.add_argument("--task", default="touch")
p.add_argument("--rounds", type=int, default=1); p.add_argument("--episodes", type=int, default=100)
p.add_argument("--steps", type=int, default=3000); p.add_argument("--seed", type=int, default=0)
p.add_argument("--log", default="scratch_rounds.jsonl")
a = p.parse_args()
import torch  # noqa: E402

torch.set_num_threads(1)
out, policy, stores = Path(a.out), Path(a.policy), [a.demos]
for k in range(1, a.rounds + 1):
    t0 = time.time()
    store = out / f"round_{k}.zarr"
    deployed = record_rollouts(load_controller(policy), f"arm/{a.task}", a.episodes, store, k,
                               seed=20_000 + 1_000 * k, env_kwargs={"time_limit": 60}, progress=False)
    stores.append(str(store))
    policy = out / f"round_{k}"
    train(compose("train_agent", ["stage=bc_scratch", f"wm={a.wm}", f"data={','.join(stores)}", f"out={policy}",
                                  f"steps={a.steps}", f"seed={a.seed}", "progress=false", "threads=1"]))
    r = success(load_controller(policy), a.task, 100, eval_seed(a.seed), 60)["train"]
    row = {"task": a.task, "round": k, "deployed_success": deployed.get("success_rate"), "stores": stores,
           "steps": a.steps, "seed": a.seed, "success": r["success_rate"], "ci95": r["ci95"], "seconds": round(time.time() - t0)}
    print(json.dumps(row), flush=True)
    open(a.log, "a").write(json.dumps(row) + "\n")
