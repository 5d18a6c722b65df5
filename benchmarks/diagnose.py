"""Diagnostics behind figures in the issue notes (not targets; see world_model.py / agent.py for those).

    .venv/bin/python benchmarks/diagnose.py joints WM_RUN    # per-joint MSE of the filtered (posterior)
        state and of one imagined step, on held-out windows: which joints the latent keeps
    .venv/bin/python benchmarks/diagnose.py bc AGENT STORE   # a BC agent's action error on the last 20
        episodes of STORE, acting online (teacher-forced) and filtering whole episodes offline
    .venv/bin/python benchmarks/diagnose.py floor STORE[,STORE] [SIZE]   # held-out MSE of a linear
        code (frame PCA) with as many numbers as a tokenizer's latents, and copy-last at h=1: how far a
        tokenizer is from what its capacity allows
    .venv/bin/python benchmarks/diagnose.py failures POLICY [TASK] [EPISODES] [SEED]   # closed-loop
        episodes (seeds from 50,000 + 10,000 x SEED, as agent.py) sorted into: success, touched the
        wrong cube, touched the target without the touch counting, never touched a cube; with the
        gripper's closest approach to the target cube. push: success, target pushed the wrong way,
        target moved too little, another cube pushed, nothing moved (>= 1 cm counts as moved)
    .venv/bin/python benchmarks/diagnose.py memorise WM_RUN [OUT.png] [EPISODES]   # squared error of
        the posterior's reconstruction on the foreground (pixels > 0.1 from the model's mean frame: arm
        and cubes) over the first 16 rows of 20 training and 20 held-out episodes; a model that
        memorises its training layouts draws their cubes and not the held-out ones'. OUT.png: real
        (top) over decoded (bottom) at row 15 of EPISODES (comma-separated; default 4 held-out ones)
    .venv/bin/python benchmarks/diagnose.py reward AGENT STORE [EPISODES]   # the agent's reward head on
        the last EPISODES (20) of STORE, filtered: predicted reward on the success rows (the final row
        of a successful episode, which pays rewards.success_reward) and on every other row; then on 15-step
        imaginations from each of their rows with the agent's policy: what imagination RL optimises
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@torch.no_grad()
def joints(run: str, context: int = 8, windows: int = 64) -> None:
    from reverie.world_model import checkpoint
    from reverie.world_model.backend import replay_policy
    from reverie.world_model.data import Language, collate, open_stores
    from reverie.world_model.evaluate import eval_windows

    model, _, trainer = checkpoint.load_model(run, "cpu")
    image_key = trainer.get("image_key", "image/front")
    stores = open_stores(trainer["stores"])
    picked = eval_windows(stores, float(trainer.get("holdout", 0.0)), "holdout", context + 1, windows,
                          slice(context - 1, context), image_key)
    batch = model.normalizer.batch(collate(picked, image_key, int(model.cfg.image_size), Language(), False,
                                           torch.device("cpu")))
    ctx = {k: (v[:, :context] if v.dim() > 1 and v.shape[1] == context + 1 else v) for k, v in batch.items()}
    last, _ = model.observe(ctx)
    traj = model.imagine(last, replay_policy(batch["action"][:, context - 1:context]), 1)
    state = model.decode_state(traj["state"])                                    # (B, 2, J)
    truth = batch["state"][:, context - 1:context + 1]                           # (B, 2, J)
    fmt = lambda x: " ".join(f"{v:.4f}" for v in x.tolist())                     # noqa: E731
    print(f"{len(picked)} held-out windows of {run}; per-joint MSE")
    print(f"  filtered state, last context row: {fmt((state[:, 0] - truth[:, 0]).square().mean(0))}")
    print(f"  one imagined step:                {fmt((state[:, 1] - truth[:, 1]).square().mean(0))}")
    print(f"  copy-last baseline for that step: {fmt((truth[:, 0] - truth[:, 1]).square().mean(0))}")
    print(f"  joint std over these rows:        {fmt(truth.flatten(0, 1).std(0))}")


@torch.no_grad()
def bc(agent: str, store_path: str, episodes: int = 20) -> None:
    from reverie.datasets.store import EpisodeStore
    from reverie.policy.loading import load_controller
    from reverie.world_model.data import collate

    ctrl = load_controller(agent)
    store = EpisodeStore.open(store_path)
    keys = [ctrl.image_key, "state", "action", "action_mask", "reward", "is_first", "is_last", "is_terminal"]
    online, offline = [], []
    for e in range(store.num_episodes - episodes, store.num_episodes):
        ep, instruction = store.episode(e), store.meta(e).instruction
        ctrl.reset(instruction)
        for t in range(len(ep["state"])):  # act on o_t, then hear the recorded a_t, as in training
            action = ctrl.act({ctrl.image_key: ep[ctrl.image_key][t], "state": ep["state"][t],
                               "instruction": instruction})
            if ep["action_mask"][t]:
                online.append(np.abs(action - ep["action"][t]).mean())
            ctrl.observe_executed(ep["action"][t])
        window = {k: ep[k] for k in keys} | {"instruction": instruction, "start": 0}
        b = ctrl.normalizer.batch(collate([window], ctrl.image_key, ctrl.image_size, ctrl.language, False,
                                          ctrl.wm.device))
        _, feat = ctrl.wm.observe(b)                                             # (1, T, F)
        mode = ctrl.agent.policy(feat[0], b["instruction_embedding"].expand(feat.shape[1], -1)).mode()
        offline.append((mode - b["action"][0]).abs().mean(-1)[b["action_mask"][0]].numpy())
    print(f"{agent} on the last {episodes} episodes of {store_path}: mean |action error| "
          f"online {np.mean(online):.3f}, offline {np.concatenate(offline).mean():.3f} ({len(online)} rows)")


def floor(stores: str, size: str = "32", holdout: float = 0.1, fit_frames: int = 6000) -> None:
    import torch.nn.functional as F

    from reverie.world_model.data import open_stores, split_episodes

    train, test, copy = [], [], []
    for store in open_stores(stores.split(",")):
        episodes = [ep["image/front"] for ep, _ in store.iter_episodes(["image/front"])]
        cut = len(split_episodes(len(episodes), holdout)[0])  # training's held-out split
        for i, frames in enumerate(episodes):
            x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
            x = F.interpolate(x, size=(int(size),) * 2, mode="bilinear", antialias=True).clamp(0, 1)
            (train if i < cut else test).append(x.flatten(1))  # (T, 3 * size * size)
            if i >= cut:
                copy.append((x[1:] - x[:-1]).square().flatten(1).mean(1))
    train, test = torch.cat(train), torch.cat(test)
    train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:fit_frames]]
    mean = train.mean(0)
    basis = torch.linalg.svd(train - mean, full_matrices=False).Vh  # (components, pixels)
    print(f"{stores} at {size}x{size}, {len(test)} held-out frames: mean image {(test - mean).square().mean():.5f}, "
          f"copy-last h=1 {torch.cat(copy).mean():.5f}")
    for rank in (32, 64, 128, 256):
        v = basis[:rank]
        rec = (test - mean) @ v.T @ v
        print(f"  frame PCA, {rank:>3} numbers per frame: MSE {(test - mean - rec).square().mean():.5f}")


def failures(policy: str, task: str = "touch", episodes: str = "40", seed: str = "0") -> None:

    from collections import Counter

    from reverie.policy.loading import load_controller
    from reverie.sim.arm_env import make_arm_env
    from reverie.sim.tasks.goal import DIRECTIONS

    controller = load_controller(policy)
    cameras = tuple(k.split("/", 1)[1] for k in getattr(controller, "image_keys", ["image/front"]))
    env = make_arm_env(task, time_limit=60, cameras=cameras)
    kinds, closest = Counter(), {}
    for i in range(int(episodes)):
        ts = env.reset(seed=50_000 + 10_000 * int(seed) + i)
        controller.reset(ts.observation["instruction"])
        target, others = env.goal.colour, [c for c in env.phys.cube_names if c != env.goal.colour]
        start = {c: env.phys.cube_pos(c)[:2] for c in env.phys.cube_names}
        wrong = hit = False
        near = np.inf
        while not ts.last():
            ts = env.step(controller.act(ts.observation))
            wrong |= any(env.phys.touching(c) for c in others)
            hit |= env.phys.touching(target)
            near = min(near, float(np.linalg.norm(env.phys.grasp_pos() - env.phys.cube_pos(target))))
        if ts.info["success"]:
            kind = "success"
        elif task == "push":
            moved = {c: env.phys.cube_pos(c)[:2] - start[c] for c in env.phys.cube_names}
            along = float(moved[target] @ DIRECTIONS[env.goal.direction])
            kind = ("target pushed the wrong way" if np.linalg.norm(moved[target]) >= 0.01 and along < 0.01
                    else "target moved too little" if np.linalg.norm(moved[target]) >= 0.01
                    else "another cube pushed" if any(np.linalg.norm(moved[c]) >= 0.01 for c in others)
                    else "nothing moved")
        else:
            kind = "wrong cube" if wrong and not hit else "touched, not counted" if hit else "no touch"
        kinds[kind] += 1
        closest.setdefault(kind, []).append(near)
    print(json.dumps({"policy": policy, "task": task, "episodes": int(episodes), "kinds": dict(kinds),
                      "closest_m_median": {k: round(float(np.median(v)), 3) for k, v in closest.items()}}))


@torch.no_grad()
def memorise(run: str, out: str = "", episodes: str = "") -> None:
    from reverie.world_model import checkpoint
    from reverie.world_model.data import ROW_KEYS, Language, collate, open_stores, split_episodes

    wm, _, trainer = checkpoint.load_model(run, "cpu")
    wm.deterministic = True
    image_key = trainer.get("image_key", "image/front")
    store = open_stores(trainer["stores"][:1])[0]
    train, held = split_episodes(store.num_episodes, float(trainer["holdout"]))
    language, keys = Language(), [image_key, *ROW_KEYS]

    def decoded(e):  # -> real (T, H, W, 3), decoded (T, H, W, 3), in [0, 1]
        ep = store.episode(e, keys)
        n = min(len(ep["is_first"]), 16)
        window = wm.normalizer.batch({k: ep[k][:n] for k in keys})
        batch = collate([window | {"instruction": store.meta(e).instruction, "start": 0}], image_key,
                        int(wm.cfg.image_size), language, False, "cpu")
        states, _, _, _ = wm._rollout(batch)
        return batch["image"][0], wm.decode(states)[0]

    def foreground_error(eps):
        errors = []
        for e in eps:
            real, dec = decoded(e)
            mask = (real - wm.pixels.pixel_mean).abs().amax(-1) > 0.1      # (T, H, W): arm and cubes
            errors.append(float(((dec - real) ** 2).sum(-1)[mask].mean()))
        return round(float(np.mean(errors)), 4)

    print(json.dumps({"run": run, "train": foreground_error(train[::max(len(train) // 20, 1)][:20]),
                      "held_out": foreground_error(held[:20])}))
    if out:
        from PIL import Image

        picked = [int(e) for e in episodes.split(",")] if episodes else held[:4]
        tiles = [torch.cat([real[-1], dec[-1]], 0) for real, dec in map(decoded, picked)]   # (2H, W, 3)
        grid = (torch.cat(tiles, 1).clamp(0, 1).numpy() * 255).astype(np.uint8)
        Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(out)


@torch.no_grad()
def reward(agent: str, store_path: str, episodes: str = "20") -> None:
    from reverie.config import compose
    from reverie.datasets.store import EpisodeStore
    from reverie.policy import checkpoint
    from reverie.policy.data import AgentData
    from reverie.policy.loading import load_controller
    from reverie.policy.reward import calibration
    from reverie.world_model import checkpoint as wm_checkpoint
    from reverie.world_model.data import ROW_KEYS, collate

    ctrl = load_controller(agent)
    wm, actor = ctrl.wm, ctrl.agent
    info = json.loads((checkpoint.find(agent) / "agent.json").read_text())
    _, wm_cfg, wm_info = wm_checkpoint.read(info["world_model"])
    cfg = compose("train_agent", [f"wm={info['world_model']}", f"data={store_path}", "progress=false"])
    calibrated = calibration(AgentData(cfg, wm_cfg, wm_info, batch_size=1, seq_len=2))  # as train-agent computes it
    store = EpisodeStore.open(store_path)
    keys = [*ctrl.image_keys, *ROW_KEYS]
    result = {"agent": agent, "episodes": int(episodes), "calibration": calibrated}
    for name, cal in (("as_trained", None), ("calibrated", calibrated)):
        actor.reward_calibration = cal
        paid, unpaid, imagined = [], [], []
        for e in range(store.num_episodes - int(episodes), store.num_episodes):
            ep, meta = store.episode(e, keys), store.meta(e)
            window = {k: ep[k] for k in keys} | {"instruction": meta.instruction, "start": 0}
            b = ctrl.normalizer.batch(collate([window], ctrl.image_key, ctrl.image_size, ctrl.language, False,
                                              wm.device, cameras=ctrl.cameras))
            torch.manual_seed(e)
            _, feat = wm.observe(b)                                              # (1, T, F)
            instr = b["instruction_embedding"]
            pred = actor.predict_reward(feat[0], instr.expand(feat.shape[1], -1))  # (T,)
            pays = torch.zeros(len(pred), dtype=torch.bool)
            pays[-1] = bool(meta.success)
            paid += pred[pays].tolist()
            unpaid += pred[~pays].tolist()
            for t in range(0, feat.shape[1], 4):  # 15-step imaginations from every 4th row
                sub = {k: (v[:, :t + 1] if v.dim() > 1 and v.shape[1] == feat.shape[1] else v) for k, v in b.items()}
                start, _ = wm.observe(sub)
                traj = wm.imagine(start, lambda f: actor.policy(f, instr).mode().clamp(-1, 1), 15)
                imagined.append(actor.predict_reward(traj["feat"][:, 1:], instr).mean().item())
        result[name] = {"success_rows": len(paid),
                        "on_success_rows": round(float(np.mean(paid)), 3) if paid else None,
                        "on_other_rows": round(float(np.mean(unpaid)), 3),
                        "other_rows_above_half_of_success": round(float(np.mean(np.array(unpaid) > 0.5 * np.mean(paid))), 4)
                        if paid else None,
                        "imagined_per_step": round(float(np.mean(imagined)), 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    torch.set_num_threads(1)
    commands = {"joints": joints, "bc": bc, "floor": floor, "failures": failures, "memorise": memorise,
                "reward": reward}
    if len(sys.argv) < 3 or sys.argv[1] not in commands:
        raise SystemExit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
