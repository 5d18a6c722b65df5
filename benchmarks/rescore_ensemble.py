"""Re-score a trained policy folder with another chunk execution (temporal ensembling decay, or
`none` for receding horizon), 100 episodes from 50,000 + 10,000 x seed, as benchmarks/agent.py scores:

    .venv/bin/python benchmarks/rescore_ensemble.py POLICY_DIR 0 train touch 0.1    # or none
"""
import sys, json
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
import torch
from agent import success, eval_seed
from reverie.policy.loading import load_controller
from reverie.policy.ensemble import TemporalEnsemble
path, seed, suites, task = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), sys.argv[4]
ens = None if sys.argv[5] == "none" else float(sys.argv[5])
torch.set_num_threads(1)
c = load_controller(path)
k = c.agent.chunk if hasattr(c, "agent") else c.policy.chunk
c.ensemble = TemporalEnsemble(k, ens)
r = success(c, task, 100, eval_seed(seed), 60, suites)
out = {"path": path, "task": task, "seed": seed, "ensemble": ens, **{k: [v["success_rate"], v["ci95"]] for k, v in r.items()}}
print(json.dumps(out))
