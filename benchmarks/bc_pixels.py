"""A quick pixel-BC check outside the pipeline: a CNN (FiLM on the instruction) + state -> the next
`chunk` actions (MSE on tanh outputs), from a store's successful episodes, scored on 100 sim episodes
from seed 50,000 with temporal ensembling of the overlapping chunks. One core, ~10 minutes.

    .venv/bin/reverie sim demos task=touch episodes=200 skill=0.5 time_limit=60 out=/tmp/touch.zarr seed=0
    .venv/bin/python benchmarks/bc_pixels.py --store /tmp/touch.zarr --chunk 8 --film 1 --shift 4 --steps 3000
    # the faster half of the successful demos only (touch: 51% [41, 61] vs 64% on all of them):
    .venv/bin/python benchmarks/bc_pixels.py --store /tmp/touch.zarr --filter fast:0.5 --steps 3000
    # with the wrist camera too (demos recorded with cameras=[front,wrist]):
    .venv/bin/python benchmarks/bc_pixels.py --store /tmp/touchw.zarr --cameras front,wrist --steps 3000

Prints one JSON line. What policy/scratch_bc.py's recipe is checked against.
"""
import argparse
import json
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from reverie.datasets.store import EpisodeStore
from reverie.language import embed
from reverie.sim.arm_env import make_arm_env
from reverie.policy.stats import wilson_interval

p = argparse.ArgumentParser()
p.add_argument("--store", default="/tmp/exp/touch.zarr"); p.add_argument("--chunk", type=int, default=8)
p.add_argument("--film", type=int, default=1); p.add_argument("--shift", type=int, default=4)
p.add_argument("--filter", default="success", help="success, all, or fast:Q (successful episodes no longer than quantile Q of their lengths)"); p.add_argument("--steps", type=int, default=3000)
p.add_argument("--eval", type=int, default=100); p.add_argument("--seed", type=int, default=0)
p.add_argument("--batch", type=int, default=64); p.add_argument("--depth", type=int, default=16)
p.add_argument("--suite", default="train"); p.add_argument("--task", default="touch")
p.add_argument("--save", default="")
p.add_argument("--cameras", default="front", help="comma-separated: one CNN per camera, features concatenated")
a = p.parse_args()
torch.set_num_threads(1); torch.manual_seed(a.seed)

st = EpisodeStore.open(a.store, "r")
ok_lengths = [st.meta(e).length for e in range(st.num_episodes) if st.meta(e).success]
max_len = np.quantile(ok_lengths, float(a.filter.split(":")[1])) if a.filter.startswith("fast:") else np.inf
K = a.chunk
CAMS = [f"image/{c}" for c in a.cameras.split(",")]
imgs, states, Y, M, instr = [], [], [], [], []
texts = []
for e in range(st.num_episodes):
    m = st.meta(e)
    if a.filter != "all" and (not m.success or m.length > max_len):
        continue
    ep = st.episode(e, keys=[*CAMS, "state", "action", "action_mask"])
    L = int(ep["action_mask"].sum())  # rows with actions (the last row has none)
    idx = np.arange(L)[:, None] + np.arange(K)[None]
    imgs.append(np.stack([ep[c][:L] for c in CAMS], 1)); states.append(ep["state"][:L])  # (L, C, H, W, 3)
    Y.append(ep["action"][np.minimum(idx, L - 1)]); M.append(idx < L)
    texts += [m.instruction] * L
uniq = sorted(set(texts)); E = dict(zip(uniq, embed(uniq)))
IM = torch.tensor(np.concatenate(imgs)); S = torch.tensor(np.concatenate(states))
Y = torch.tensor(np.concatenate(Y)); M = torch.tensor(np.concatenate(M)).float()
I = torch.tensor(np.stack([E[t] for t in texts]))
s_mu, s_sd = S.mean(0), S.std(0) + 1e-3
print(f"rows {len(S)} from {len(imgs)} episodes", flush=True)


class Tower(nn.Module):
    def __init__(self, d=16, film=True):
        super().__init__()
        ch = [3, d, 2 * d, 4 * d, 8 * d]
        self.convs = nn.ModuleList(nn.Conv2d(ch[i], ch[i + 1], 4, 2, 1) for i in range(4))
        self.norms = nn.ModuleList(nn.GroupNorm(1, ch[i + 1]) for i in range(4))
        self.film = nn.ModuleList(nn.Linear(384, 2 * ch[i + 1]) for i in range(4)) if film else None

    def forward(self, img, ins):
        x = img.permute(0, 3, 1, 2).float() / 255 - 0.5
        for i in range(4):
            x = self.norms[i](self.convs[i](x))
            if self.film is not None:
                g, b = self.film[i](ins).chunk(2, -1)
                x = x * (1 + g[..., None, None]) + b[..., None, None]
            x = F.silu(x)
        return x.flatten(1)


class Net(nn.Module):
    def __init__(self, d=16, film=True, cams=1):
        super().__init__()
        self.towers = nn.ModuleList(Tower(d, film) for _ in range(cams))
        self.state = nn.Linear(6, 128)
        self.instr = nn.Linear(384, 128)
        self.head = nn.Sequential(nn.Linear(cams * 8 * d * 16 + 256, 256), nn.SiLU(), nn.Linear(256, 256), nn.SiLU(),
                                  nn.Linear(256, K * 6))

    def forward(self, img, state, ins):  # img (N, cams, H, W, 3)
        feats = [t(img[:, c], ins) for c, t in enumerate(self.towers)]
        h = torch.cat([*feats, F.silu(self.state((state - s_mu) / s_sd)), F.silu(self.instr(ins))], -1)
        return torch.tanh(self.head(h)).reshape(-1, K, 6)


def shift(img, pad):  # (N, cams, H, W, 3): each camera shifted on its own
    if pad == 0:
        return img
    n, v = img.shape[:2]
    return shift_one(img.flatten(0, 1), pad).reshape(img.shape)


def shift_one(img, pad):
    n, h, w, c = img.shape
    x = F.pad(img.permute(0, 3, 1, 2).float(), (pad,) * 4, mode="replicate")
    out = torch.empty(n, c, h, w)
    offs = torch.randint(0, 2 * pad + 1, (n, 2))
    for j in range(n):
        out[j] = x[j, :, offs[j, 0]:offs[j, 0] + h, offs[j, 1]:offs[j, 1] + w]
    return out.permute(0, 2, 3, 1)


net = Net(a.depth, bool(a.film), len(CAMS))
opt = torch.optim.AdamW(net.parameters(), 3e-4, weight_decay=1e-4)
t0 = time.time()
for s in range(1, a.steps + 1):
    i = torch.randint(len(S), (a.batch,))
    pred = net(shift(IM[i], a.shift), S[i], I[i])
    loss = ((pred - Y[i]).square().mean(-1) * M[i]).sum() / M[i].sum()
    opt.zero_grad(); loss.backward(); opt.step()
    if s % 500 == 0:
        print(f"step {s} loss {loss.item():.4f} {time.time()-t0:.0f}s", flush=True)
net.eval()
if a.save:
    torch.save(net.state_dict(), a.save)

env = make_arm_env(a.task, time_limit=60, instruction_set="heldout" if a.suite == "heldout" else "train",
                   cameras=tuple(c.split("/")[1] for c in CAMS))
wins = 0
for ep_i in range(a.eval):
    ts = env.reset(seed=50_000 + a.seed * 1000 + ep_i)
    ins = torch.tensor(embed([ts.observation["instruction"]]))
    buf, t = [], 0
    while not ts.last():
        with torch.no_grad():
            img = torch.tensor(np.stack([ts.observation[c] for c in CAMS]))[None]
            chunk = net(img, torch.tensor(ts.observation["state"])[None], ins)[0].numpy()
        buf.append((t, chunk)); buf = [(t0_, c) for t0_, c in buf if t - t0_ < K]
        ws = [np.exp(-0.1 * (t - t0_)) for t0_, c in buf]
        act = sum(w * c[t - t0_] for w, (t0_, c) in zip(ws, buf)) / sum(ws)
        ts = env.step(act.astype(np.float32)); t += 1
    wins += bool(ts.info["success"])
lo, hi = wilson_interval(wins, a.eval)
print(json.dumps({"args": vars(a), "success": wins / a.eval, "ci95": [lo, hi], "train_s": time.time() - t0}), flush=True)
