"""Dreamer 4 `shortcut` backend: speed rows (side by side with the RSSM) and quality vs sampling steps.

    .venv/bin/python benchmarks/world_model_shortcut.py [preset=cpu] [threads=1] [checkpoint=RUN data=STORE
                                                        name=ROW plot=PNG speed=false
                                                        windows=48 split=holdout|train]
    .venv/bin/python benchmarks/world_model_shortcut.py mask-half|mask-all SRC.zarr DST.zarr
    .venv/bin/python benchmarks/world_model_shortcut.py labels none=ROW part=ROW full=ROW

Speed (random weights, the preset's sizes, one process): tokenizer and dynamics training frames/s,
generation frames/s at batch 1 for K in {1, 2, 4, 8, 64} sampling steps, imagination steps/s at batch
256 (K = 4), and the RSSM's imagination steps/s at batch 256 measured in the same run (ratio).
Quality (with checkpoint=RUN): open-loop image MSE per horizon for each K against copy-last-frame on
held-out windows (`split=train`: windows of the training episodes, to see overfitting), the K=4 / K=64
error and speed ratios, and whether predictions follow the actions: the predicted joint state under
the recorded actions a vs the negated actions -a should move apart along the commanded direction
(sign agreement of state(a) - state(-a) with the cumulative action), and how much worse the
teacher-forced one-pass prediction gets when every action is marked missing.
`mask-half` writes a copy of a store whose every other episode is action-free (the half-labelled
ablation); `mask-all` one with no actions at all (the video-only baseline). `labels` reads three quality
rows of the JSON (video-only scored with actions=missing, partly and fully labelled) and prints the
share of the action-conditioning gain the partly labelled model recovers (Dreamer 4's measure).
Writes benchmarks/results/world_model_shortcut.json and prints a table; `shortcut_rows()` is what
benchmarks/world_model.py calls to add these rows to its own table.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results" / "world_model_shortcut.json"
KS = (1, 2, 4, 8, 64)


def _batch(b: int, t: int, size: int, j: int, a: int) -> dict:
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(b, t, size, size, 3, generator=g), "state": torch.randn(b, t, j, generator=g),
             "action": torch.rand(b, t, a, generator=g) * 2 - 1, "action_mask": torch.ones(b, t, dtype=torch.bool),
             "reward": torch.zeros(b, t), "is_first": torch.zeros(b, t, dtype=torch.bool),
             "is_last": torch.zeros(b, t, dtype=torch.bool), "is_terminal": torch.zeros(b, t, dtype=torch.bool),
             "instruction_embedding": torch.nn.functional.normalize(torch.randn(b, 384, generator=g), dim=-1)}
    batch["is_first"][:, 0] = True
    return batch


def _timed(fn, reps: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def _build(backend: str, preset: str, j: int = 6, a: int = 6):
    from reverie.config import compose
    from reverie.world_model.backend import DataSpec, build, model_config

    cfg = compose("train_wm", [f"world_model={backend}", f"preset={preset}", "data=unused"])
    mcfg = model_config(cfg)
    torch.manual_seed(0)
    return build(backend, mcfg, DataSpec((mcfg.image_size,) * 2 + (3,), j, a)), mcfg


def shortcut_rows(preset: str = "cpu", reps: int = 2, horizon: int = 4) -> dict:
    """Speed rows of the shortcut backend and the RSSM's imagination rate, measured side by side."""
    model, mcfg = _build("shortcut", preset)
    b, t, size = mcfg.batch_size, mcfg.seq_len, mcfg.image_size
    batch = _batch(b, t, size, 6, 6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    rows: dict[str, float] = {}
    for stage in ("tokenizer", "dynamics"):
        model.updates.fill_(0 if stage == "tokenizer" else 1 << 40)
        model.stage = stage
        model._set_trainable()

        def step():
            loss, _ = model.loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        frames = b * (min(model.tok_seq_len or t, t) if stage == "tokenizer" else t)
        rows[f"train_{stage}_frames_per_s"] = frames / _timed(step, reps)
    model.eval()
    policy = lambda f: torch.zeros(f.shape[0], 6)  # noqa: E731
    ctx = {k: (v[:1, :4] if k != "instruction_embedding" else v[:1]) for k, v in batch.items()}
    with torch.no_grad():
        state, _ = model.observe(ctx)
        for k in KS:
            sec = _timed(lambda: model.imagine(state, policy, horizon, steps=k), reps)
            rows[f"generate_K{k}_frames_per_s"] = horizon / sec
        big = _batch(256, 4, size, 6, 6)
        state, _ = model.observe(big)
        rows["imagine_b256_steps_per_s"] = 256 * horizon / _timed(lambda: model.imagine(state, policy, horizon), 1)
        rssm, _ = _build("rssm", preset)
        rssm.eval()
        rstate, _ = rssm.observe(_batch(256, 4, rssm.cfg.image_size, 6, 6))
        rows["rssm_imagine_b256_steps_per_s"] = 256 * 16 / _timed(lambda: rssm.imagine(rstate, policy, 16), 1)
    rows["imagine_ratio_to_rssm"] = rows["imagine_b256_steps_per_s"] / rows["rssm_imagine_b256_steps_per_s"]
    rows["K4_speedup_over_K64"] = rows["generate_K4_frames_per_s"] / rows["generate_K64_frames_per_s"]
    rows["params_tokenizer_M"] = sum(p.numel() for p in model.tokenizer.parameters()) / 1e6
    rows["params_dynamics_M"] = sum(p.numel() for p in model.dynamics.parameters()) / 1e6
    return rows


@torch.no_grad()
def quality_vs_steps(checkpoint: str, data: str | None = None, context: int = 8, horizon: int = 16,
                     windows: int = 48, batch_size: int = 16, seed: int = 0, split: str = "holdout",
                     actions: str = "recorded") -> dict:
    """Open-loop MSE per horizon for each K, copy-last baseline, and the action-direction test.
    actions="missing": context and rollout are marked action-free (video prediction; the only fair
    score of a model trained without actions, whose action encoder never learned), no direction test."""
    if actions not in ("recorded", "missing"):
        raise ValueError(f"actions={actions!r}: choose recorded or missing")
    known = actions == "recorded"
    from reverie.world_model import checkpoint as ckpt
    from reverie.world_model.backend import replay_policy
    from reverie.world_model.data import Language, collate, data_paths, open_stores
    from reverie.world_model.evaluate import eval_windows, paired_gap

    model, _, trainer = ckpt.load_model(checkpoint)
    paths = data_paths(data.split(",")) if data else trainer["stores"]  # data=A.zarr,B.zarr
    image_key = trainer.get("image_key", "image/front")
    wins = eval_windows(open_stores(paths), float(trainer.get("holdout", 0.1)), split,
                        context + horizon, windows, slice(context - 1, context + horizon - 1), image_key)
    language = Language()
    batches = [model.normalizer.batch(collate(wins[i:i + batch_size], image_key, int(model.cfg.image_size), language,
                                              False, "cpu")) for i in range(0, len(wins), batch_size)]
    out: dict = {"checkpoint": str(checkpoint), "step": trainer["step"], "windows": len(wins), "split": split,
                 "actions": actions,
                 "context": context, "horizon": horizon, "mse": {}, "seconds": {}, "minus_copy_last": {}}
    episodes = [(w["store"], w["episode"]) for w in wins]
    copy, agree, corr = [], [], []
    rec = torch.cat([(model.tokenizer.decode(model.tokenizer.encode(b["image"])).clamp(0, 1) - b["image"])
                     .square().mean((-3, -2, -1)).flatten() for b in batches])
    out["tokenizer_recon_mse"] = float(rec.mean())
    out["tokenizer_recon_psnr"] = float(10 * torch.log10(1 / rec.clamp(min=1e-10)).mean())
    for k in KS:
        torch.manual_seed(seed)
        mses, sec = [], 0.0
        for batch in batches:
            c = context
            ctx = {n: (v[:, :c] if v.dim() > 1 and v.shape[1] == c + horizon else v) for n, v in batch.items()}
            if not known:
                ctx["action_mask"] = torch.zeros_like(ctx["action_mask"])
            state, _ = model.observe(ctx)
            acts = batch["action"][:, c - 1:c + horizon - 1]
            t0 = time.perf_counter()
            traj = model.imagine(state, replay_policy(acts), horizon, steps=k, known=known)
            sec += time.perf_counter() - t0
            real = batch["image"][:, c:]
            pred = model.decode(traj["state"])[:, 1:].clamp(0, 1)  # as eval-wm: images live in [0, 1]
            mses.append((pred - real).square().mean((-3, -2, -1)))  # (B, H)
            if k == KS[0]:
                copy.append((batch["image"][:, c - 1:c] - real).square().mean((-3, -2, -1)))
            if k == 4 and known:  # actions matter: recorded a vs negated -a from the same start
                neg = model.imagine(state, replay_policy(-acts), horizon, steps=k)
                ds = model.decode_state(traj["state"])[:, 1:] - model.decode_state(neg["state"])[:, 1:]
                cum = acts.cumsum(1)  # (B, H, A) commanded displacement (joint-delta actions)
                j = min(ds.shape[-1], cum.shape[-1])
                big = cum[..., :j].abs() > 0.5
                agree.append(((torch.sign(ds[..., :j]) == torch.sign(cum[..., :j])) & big).sum() / big.sum().clamp(min=1))
                corr.append(torch.corrcoef(torch.stack([ds[..., :j].flatten(), cum[..., :j].flatten()]))[0, 1])
        if k == KS[0]:
            copy = torch.cat(copy)                                        # (W, H)
        out["mse"][f"K{k}"] = torch.cat(mses).mean(0).tolist()
        out["minus_copy_last"][f"K{k}"] = paired_gap(torch.cat(mses).numpy(), copy.numpy(), episodes)
        out["seconds"][f"K{k}"] = sec
    out["mse"]["copy_last"] = copy.mean(0).tolist()
    out["teacher_forced"] = action_reliance(model, batches, context, seed)
    m4, m64, base = (np.array(out["mse"][n]) for n in ("K4", "K64", "copy_last"))
    out["K4_beats_copy_last_every_horizon"] = bool((m4 < base).all())
    out["K4_over_K64_mse"] = float(m4.mean() / m64.mean())
    out["K64_over_K4_seconds"] = out["seconds"]["K64"] / out["seconds"]["K4"]
    out["action_sign_agreement"] = float(torch.stack(agree).mean()) if agree else None
    out["action_state_corr"] = float(torch.stack(corr).mean()) if corr else None
    return out


@torch.no_grad()
def action_reliance(model, batches: list[dict], context: int, seed: int = 0) -> dict:
    """How much the dynamics leans on actions: its one-pass x-prediction error (latent MSE) on the
    frames after `context`, noised to tau in {1/4, 1/2, 3/4} behind a clean context (tau 1 - ctx_noise),
    with the recorded actions vs with every action marked missing. A model that predicts motion from
    context alone scores nearly the same under both."""
    from reverie.world_model.shortcut import d_index

    dyn, gen = model.dynamics, torch.Generator().manual_seed(seed)
    err = {"recorded": [], "missing": []}
    for batch in batches:
        z1 = model.pack_z(model.tokenizer.encode(model._image(batch)))  # (B, T, S, C)
        prev, known, seg = model._prev_action(batch)
        instr = batch["instruction_embedding"].to(z1.dtype)
        d = d_index(torch.full(z1.shape[:2], 1 / dyn.k_max))
        for level in (0.25, 0.5, 0.75):
            tau = torch.full(z1.shape[:2], level)
            tau[:, :context] = round((1 - model.ctx_noise) * dyn.k_max) / dyn.k_max
            z_tau = (1 - tau[..., None, None]) * torch.randn(z1.shape, generator=gen) + tau[..., None, None] * z1
            for name, mask in (("recorded", known), ("missing", torch.zeros_like(known))):
                x = dyn.predict_x(z_tau, tau, d, prev, mask, instr, seg)[0]
                err[name].append(float((x - z1)[:, context:].square().mean()))
    rec, mis = float(np.mean(err["recorded"])), float(np.mean(err["missing"]))
    return {"latent_mse_recorded_actions": rec, "latent_mse_actions_missing": mis,
            "missing_over_recorded": mis / rec}


def mask_actions(src: str, dst: str, every: int = 2) -> str:
    """Copy a store, making every `every`-th episode action-free (action 0, action_mask False, source
    video): every=2 is the half-labelled ablation (episodes 1, 3, 5, ...), every=1 the video-only one."""
    from reverie.datasets.store import EpisodeStore

    s = EpisodeStore.open(src, "r")
    d = EpisodeStore.create(dst, s.schema, fps=s.fps, robot=s.robot)
    for i, (ep, meta) in enumerate(s.iter_episodes()):
        video = i % every == every - 1
        if video:
            ep = {**ep, "action": np.zeros_like(ep["action"]), "action_mask": np.zeros_like(ep["action_mask"])}
        d.add_episode(ep, meta.instruction, "video" if video else meta.source, meta.round, meta.success)
    d.close()
    return dst


def _split_name(quality: dict) -> str:
    return {"holdout": "held-out", "train": "training-episode"}.get(quality.get("split", "holdout"), "evaluation")


def plot_quality(quality: dict, path: Path) -> Path:
    """Open-loop image MSE per horizon for each K, copy-last and the tokenizer floor (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hs = np.arange(1, quality["horizon"] + 1)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, curve in quality["mse"].items():
        ax.plot(hs, curve, "--k" if name == "copy_last" else "-o", ms=3, lw=1.5 if name == "K4" else 1,
                label="copy last" if name == "copy_last" else f"{name[1:]} sampling steps")
    ax.axhline(quality["tokenizer_recon_mse"], color="gray", lw=1, ls="-.", label="tokenizer reconstruction")
    ax.set_xlabel("open-loop horizon")
    ax.set_ylabel("image MSE")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    missing = ", actions missing" if quality.get("actions") == "missing" else ""
    ax.set_title(f"shortcut world model, step {quality['step']}, {quality['windows']} {_split_name(quality)} "
                 f"windows{missing}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(rows: dict, quality: dict | None) -> str:
    lines = [f"{k:<34} {v:>10.2f}" for k, v in rows.items()]
    if quality:
        lines.append(f"open-loop MSE per horizon (step {quality['step']}, {quality['windows']} "
                     f"{_split_name(quality)} windows):")
        lines.append("  h " + " ".join(f"{n:>9}" for n in quality["mse"]))
        for h in range(quality["horizon"]):
            lines.append(f"{h + 1:>3} " + " ".join(f"{quality['mse'][n][h]:>9.5f}" for n in quality["mse"]))
        lines.append("  horizons beyond 2 SE (clustered by episode) of copy-last: "
                     + "; ".join(f"{k} better {len(g['better'])} worse {g['worse']}"
                                 for k, g in quality["minus_copy_last"].items()))
        for key in ("tokenizer_recon_mse", "tokenizer_recon_psnr", "K4_beats_copy_last_every_horizon", "K4_over_K64_mse", "K64_over_K4_seconds",
                    "action_sign_agreement", "action_state_corr"):
            lines.append(f"{key:<34} {quality[key]}")
        for key, value in quality["teacher_forced"].items():
            lines.append(f"teacher-forced {key:<19} {value:.5f}")
    return "\n".join(lines)


def label_recovery(none: dict, part: dict, full: dict) -> dict:
    """Dreamer 4's measure of learning from partly labelled data: the share of the action-conditioning
    gain (video-only model -> all-labelled model) that the partly labelled model recovers, per K, in
    MSE and in PSNR of the per-horizon mean MSE (the paper: 85% in PSNR with actions on 4% of the data).
    Arguments are quality rows on the same windows."""
    def psnr(curve):
        return float(np.mean(10 * np.log10(1 / np.asarray(curve))))

    out = {}
    for k in (n for n in full["mse"] if n != "copy_last"):
        m = {name: float(np.mean(row["mse"][k])) for name, row in (("none", none), ("part", part), ("full", full))}
        p = {name: psnr(row["mse"][k]) for name, row in (("none", none), ("part", part), ("full", full))}
        out[k] = {"mse": m, "psnr": p, "recovered_mse": (m["none"] - m["part"]) / (m["none"] - m["full"]),
                  "recovered_psnr": (p["part"] - p["none"]) / (p["full"] - p["none"])}
    return out


def main(argv: list[str]) -> int:
    if argv[:1] in (["mask-half"], ["mask-all"]):
        print(mask_actions(argv[1], argv[2], every=2 if argv[0] == "mask-half" else 1))
        return 0
    if argv[:1] == ["labels"]:  # labels none=ROW part=ROW full=ROW: rows of quality in the JSON
        rows = json.loads(RESULTS.read_text())["quality"]
        names = dict(a.split("=", 1) for a in argv[1:] if "=" in a)
        wanted = [names.get(k) for k in ("none", "part", "full")]
        if None in wanted or not set(wanted) <= rows.keys():
            raise SystemExit(f"labels needs none=ROW part=ROW full=ROW, each a row of quality in {RESULTS} "
                             f"(got {names}); score the runs first (actions=missing for the video-only one)")
        rec = label_recovery(*(rows[n] for n in wanted))
        print(f"{'K':<4} {'MSE none':>9} {'part':>9} {'full':>9} {'recovered':>9}   "
              f"{'PSNR none':>9} {'part':>7} {'full':>7} {'recovered':>9}")
        for k, r in rec.items():
            m, p = r["mse"], r["psnr"]
            print(f"{k:<4} {m['none']:>9.5f} {m['part']:>9.5f} {m['full']:>9.5f} {r['recovered_mse']:>9.1%}   "
                  f"{p['none']:>9.2f} {p['part']:>7.2f} {p['full']:>7.2f} {r['recovered_psnr']:>9.1%}")
        return 0
    args = dict(a.split("=", 1) for a in argv)
    torch.set_num_threads(int(args.get("threads", 1)))
    rows = shortcut_rows(args.get("preset", "cpu")) if args.get("speed", "true") == "true" else {}
    quality = (quality_vs_steps(args["checkpoint"], args.get("data"), windows=int(args.get("windows", 48)),
                                split=args.get("split", "holdout"), actions=args.get("actions", "recorded"))
               if "checkpoint" in args else None)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    result = previous | ({"speed": rows, "preset": args.get("preset", "cpu"),
                          "threads": torch.get_num_threads()} if rows else {})
    if quality:
        result.setdefault("quality", {})[args.get("name", quality["checkpoint"])] = quality
        if "plot" in args:
            print(f"wrote {plot_quality(quality, Path(args['plot']))}")
    RESULTS.write_text(json.dumps(result, indent=1))
    print(table(rows, quality))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
