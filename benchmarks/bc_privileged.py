"""The ceiling a learned policy should approach: behaviour cloning on privileged sim state.

    .venv/bin/python benchmarks/bc_privileged.py --task touch --chunk 8 --filter success --exec first

No pixels, no world model: an MLP from the joints, the target cube's and every cube's xyz, the target's
colour and the push direction (one-hots) to the next `chunk` actions (MSE on tanh outputs), trained on
the scripted teleoperator's demos (seeds 0..demos-1), evaluated on 100 episodes from seed 50,000.
--filter success clones the successful demos only; --exec first executes the first action of each
chunk (re-planned every step, what reverie's agents do), ensemble averages the overlapping chunks
(ACT's temporal ensembling), open runs each chunk open-loop. Prints one JSON line; with --results
it is appended to benchmarks/results/bc_privileged.jsonl. About a minute a run on one core.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from reverie.sim.arm_env import make_arm_env
from reverie.sim.scripted_teleop import ScriptedTeleop, run_episode
from reverie.sim.randomization import COLOURS
from reverie.policy.stats import wilson_interval

p = argparse.ArgumentParser()
p.add_argument("--task", default="touch"); p.add_argument("--demos", type=int, default=200)
p.add_argument("--skill", type=float, default=0.5); p.add_argument("--chunk", type=int, default=1)
p.add_argument("--filter", default="success"); p.add_argument("--exec", default="ensemble")
p.add_argument("--steps", type=int, default=3000); p.add_argument("--eval", type=int, default=100)
p.add_argument("--seed", type=int, default=0); p.add_argument("--loss", default="mse")
p.add_argument("--time-limit", type=int, default=60)
p.add_argument("--results", action="store_true", help="append the result to benchmarks/results/bc_privileged.jsonl")
a = p.parse_args()
torch.set_num_threads(1); torch.manual_seed(a.seed)

def obs_vec(env, ts):
    cubes = np.concatenate([env.phys.cube_pos(c) for c in COLOURS])
    target = env.phys.cube_pos(env.goal.colour)
    onehot = np.eye(3)[COLOURS.index(env.goal.colour)]
    dirs = ["left", "right", "forward"]
    d = np.eye(3)[dirs.index(env.goal.direction)] if env.goal.direction else np.zeros(3)
    return np.concatenate([ts.observation["state"], target, cubes, onehot, d]).astype(np.float32)

env = make_arm_env(a.task, render=False, time_limit=a.time_limit)
teleop = ScriptedTeleop(env, skill=a.skill)
eps = []
t0 = time.time()
for i in range(a.demos):
    ts = env.reset(seed=i); teleop.reset(ts, seed=i + 1_000_003)
    X, A = [], []
    while not ts.last():
        act = teleop.act(ts); X.append(obs_vec(env, ts)); A.append(act); ts = env.step(act)
    eps.append((np.stack(X), np.stack(A), bool(ts.info["success"])))
print(f"demos {np.mean([e[2] for e in eps]):.2f} success, {time.time()-t0:.0f}s", flush=True)
keep = [e for e in eps if e[2]] if a.filter == "success" else eps
K = a.chunk
Xs, Ys, Ms = [], [], []
for X, A, _ in keep:
    L = len(A)
    idx = np.arange(L)[:, None] + np.arange(K)[None]
    Ms.append(idx < L); Ys.append(A[np.minimum(idx, L - 1)]); Xs.append(X)
X = torch.tensor(np.concatenate(Xs)); Y = torch.tensor(np.concatenate(Ys)); M = torch.tensor(np.concatenate(Ms)).float()
mu, sd = X.mean(0), X.std(0) + 1e-3
net = nn.Sequential(nn.Linear(X.shape[1], 256), nn.SiLU(), nn.Linear(256, 256), nn.SiLU(), nn.Linear(256, K * 6))
opt = torch.optim.Adam(net.parameters(), 3e-4)
for s in range(a.steps):
    i = torch.randint(len(X), (256,))
    pred = torch.tanh(net((X[i] - mu) / sd)).reshape(-1, K, 6)
    loss = ((pred - Y[i]).square().mean(-1) * M[i]).sum() / M[i].sum()
    opt.zero_grad(); loss.backward(); opt.step()
print(f"rows {len(X)} final loss {loss.item():.4f}", flush=True)

wins = 0
for i in range(a.eval):
    ts = env.reset(seed=50_000 + a.seed * 1000 + i)
    buf = []  # (t_predicted, chunk)
    t = 0; queue = []
    while not ts.last():
        with torch.no_grad():
            chunk = torch.tanh(net((torch.tensor(obs_vec(env, ts)) - mu) / sd)).reshape(K, 6).numpy()
        if a.exec == "ensemble":
            buf.append((t, chunk)); buf = [(t0_, c) for t0_, c in buf if t - t0_ < K]
            ws = [np.exp(-0.1 * (t - t0_)) for t0_, c in buf]  # older predictions weigh less
            act = sum(w * c[t - t0_] for w, (t0_, c) in zip(ws, buf)) / sum(ws)
        elif a.exec == "open":
            if not queue: queue = list(chunk)
            act = queue.pop(0)
        else:
            act = chunk[0]
        ts = env.step(act); t += 1
    wins += bool(ts.info["success"])
lo, hi = wilson_interval(wins, a.eval)
result = {"args": vars(a), "demo_success": float(np.mean([e[2] for e in eps])), "episodes": a.eval,
          "success_rate": wins / a.eval, "ci95": [lo, hi]}
print(json.dumps(result), flush=True)
if a.results:
    with open(Path(__file__).parent / "results" / "bc_privileged.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
