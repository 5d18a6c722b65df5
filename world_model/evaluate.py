"""`reverie eval-wm checkpoint=RUN_DIR [data=STORE[,STORE...]] [out=DIR]`: open-loop evaluation.

On held-out episodes (those training left out, see world_model/data.py), for windows of
`context + horizon` rows: observe the first `context` frames, then imagine `horizon` steps under the
recorded actions and decode them. Reported per horizon h = 1..horizon:
  - image MSE / PSNR of the prediction, and of the copy-last-frame baseline (the last context frame)
  - the same MSE under a zero-action counterfactual (same start state, actions set to 0)
  - joint-state MSE of the predicted state (backends with `decode_state`) under the recorded actions,
    under zero actions, and of the copy-last-state baseline: if imagination follows the commands, the
    recorded actions track the true joints and zero actions do not
Plus reward MAE / accuracy (|error| < 0.1) and continue accuracy over imagined steps. Backends with
a tokenizer (`reconstruct`) add its reconstruction MSE / PSNR over every frame of the same windows:
the floor under the open-loop curves. Writes eval.json, eval.png (curves) and eval.gif (real |
imagined, context frames framed in grey). A checkpoint whose dynamics is untrained (shortcut
stage=tokenizer) gets the reconstruction only (GIF: real | reconstructed).
When the stores hold the sim's ground truth (`privileged/*`, datasets/schema.py), `probe` reports
whether the features carry the cubes: ridge R² from the features of whole observed episodes to the
target cube's x, y and every cube's x, y, fit on the training episodes and scored on the held-out ones,
next to the same probe from the raw image pooled to 16x16 (world_model/probe.py; the gate is
R² >= 0.8 on every cube's x, y). Stores without the keys: `probe: {"skipped": why}`. `probe=false` turns it off.
Works through the backend interface only (observe / imagine / decode, optional reconstruct).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from reverie.config import command_config
from reverie.errors import ConfigError
from reverie.world_model import checkpoint
from reverie.world_model.backend import option, replay_policy
from reverie.world_model.data import ROW_KEYS, Language, collate, data_paths, open_stores, split_episodes
from reverie.world_model.distributed import pick_device

log = logging.getLogger(__name__)
MOVED = 0.05  # rad: a joint displacement large enough that its direction is not noise
SPLITS = {"holdout": "held-out", "train": "training", "all": "any"}  # split= -> the episodes it scores


def eval_windows(stores, holdout: float, split: str, length: int, count: int, action_rows: slice,
                 image_key: str, cameras: tuple[str, ...] = ()) -> list[dict]:
    """Up to `count` windows of `length` rows spread evenly over the evaluation episodes; only
    windows whose actions in `action_rows` are all known (the replayed commands)."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: choose holdout, train (to compare and see overfitting) or all")
    candidates = []  # (store, episode, start)
    for s, store in enumerate(stores):
        train, held = split_episodes(store.num_episodes, holdout)
        episodes = {"holdout": held, "train": train}.get(split, list(range(store.num_episodes)))
        for e in episodes:
            mask = store.episode(e, ["action_mask"])["action_mask"]
            for start in range(0, len(mask) - length + 1):
                if mask[start:start + length][action_rows].all():
                    candidates.append((s, e, start))
    if not candidates:
        raise ConfigError(
            f"no evaluation window: need {SPLITS[split]}, action-labelled episodes of at least {length} rows "
            f"(context + horizon). Train with holdout>0 on a store with more episodes, pass split=all, "
            f"or lower context/horizon")
    pick = np.unique(np.linspace(0, len(candidates) - 1, min(count, len(candidates))).round().astype(int))
    windows, cache = [], {}
    for i in pick:
        s, e, start = candidates[i]
        if (s, e) not in cache:
            cache[(s, e)] = (stores[s].episode(e, [image_key, *cameras, *ROW_KEYS]), stores[s].meta(e).instruction)
        ep, instruction = cache[(s, e)]
        w = {k: v[start:start + length] for k, v in ep.items()}
        windows.append(w | {"instruction": instruction, "start": start, "store": s, "episode": e})
    return windows


def paired_gap(model: np.ndarray, base: np.ndarray, episodes: list) -> dict:
    """Mean per-horizon error difference model - base over windows (W, H), with its standard error
    clustered by episode: windows cut from one episode are not independent, so the SE treats each
    episode's summed deviation as one draw. `better`/`worse`: horizons where the difference is
    beyond two standard errors (about 95%) below/above zero."""
    diff = np.asarray(model, np.float64) - np.asarray(base, np.float64)             # (W, H)
    mean = diff.mean(0)
    groups = np.unique([str(e) for e in episodes], return_inverse=True)[1].ravel()
    g = groups.max() + 1
    sums = np.zeros((g, diff.shape[1]))
    np.add.at(sums, groups, diff - mean)
    se = np.sqrt((sums ** 2).sum(0) * g / max(g - 1, 1)) / len(diff)
    return {"diff": mean.tolist(), "se": se.tolist(), "episodes": int(g),
            "better": [int(h) + 1 for h in np.flatnonzero(mean + 2 * se < 0)],
            "worse": [int(h) + 1 for h in np.flatnonzero(mean - 2 * se > 0)]}


@torch.no_grad()
def evaluate(cfg) -> dict:
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model, tcfg, trainer = checkpoint.load_model(cfg.checkpoint, device)
    mcfg = model.cfg
    paths = data_paths(cfg.data) if cfg.data else trainer["stores"]
    stores = open_stores(paths)
    image_key = trainer.get("image_key", "image/front")
    c, h = int(cfg.context), int(cfg.horizon)
    if c < 1 or h < 1:
        raise ConfigError(f"context={c}, horizon={h}: both must be >= 1")
    windows = eval_windows(stores, float(trainer.get("holdout", 0.0)), cfg.split, c + h, int(cfg.windows),
                           slice(c - 1, c + h - 1), image_key, model.spec.cameras)
    language = Language()
    dynalang = bool(option(mcfg, "dynalang"))
    has_state, has_tok = hasattr(model, "decode_state"), hasattr(model, "reconstruct")
    imagines = model.can_imagine  # False: a tokenizer-only checkpoint, reconstruction only
    if not imagines:
        log.warning("%s: dynamics untrained (stage=%s, step %s): reporting the tokenizer's reconstruction "
                    "only; train world_model.stage=dynamics world_model.tokenizer=RUN for open-loop "
                    "prediction", cfg.checkpoint, option(mcfg, "stage"), trainer["step"])
    sums: dict[str, np.ndarray] = {}
    per_window: dict[str, list] = {"model": [], "copy_last": []}  # image MSE (B, H) per batch
    counts = {"windows": 0, "steps": 0}
    tok_mse: list[torch.Tensor] = []  # per-frame reconstruction MSE, (B*L,) per batch
    gif_frames = None

    def add(key, value):  # value (B, H) -> running sum over windows
        sums[key] = sums.get(key, 0) + value.sum(0).double().cpu().numpy()

    for i in range(0, len(windows), int(cfg.batch_size)):
        batch = model.normalizer.batch(collate(windows[i:i + int(cfg.batch_size)], image_key, int(mcfg.image_size),
                                               language, dynalang, device, cameras=model.spec.cameras))  # model units
        b = batch["image"].shape[0]
        counts["windows"] += b
        if has_tok:
            recon = model.reconstruct(batch["image"]).float()                        # (B, L, h, w, 3)
            tok_mse.append((recon - batch["image"]).square().mean((-3, -2, -1)).flatten().cpu())
            if not imagines:
                if gif_frames is None:
                    gif_frames = _gif_frames(batch["image"][: cfg.gif_rows], recon[: cfg.gif_rows], 0)
                continue
        context = {k: (v[:, :c] if v.dim() > 1 and v.shape[1] == c + h else v) for k, v in batch.items()}
        state, _ = model.observe(context)
        actions = batch["action"][:, c - 1:c + h - 1]                                # (B, H, A)
        traj = model.imagine(state, replay_policy(actions), h)
        zero = model.imagine(state, replay_policy(torch.zeros_like(actions)), h)
        real = batch["image"][:, c:]                                                 # (B, H, h, w, 3)
        pred = model.decode(traj["state"])[:, 1:].float().clamp(0, 1)
        pred_zero = model.decode(zero["state"])[:, 1:].float().clamp(0, 1)
        last = batch["image"][:, c - 1:c].expand_as(real)
        for name, x in (("model", pred), ("copy_last", last), ("zero_action", pred_zero)):
            mse = (x - real).square().mean((-3, -2, -1))                             # (B, H)
            add(f"mse/{name}", mse)
            if name in per_window:
                per_window[name].append(mse.double().cpu().numpy())
            add(f"psnr/{name}", _psnr(mse))
        if has_state:
            true_state = batch["state"][:, c:]                                       # (B, H, J)
            last_state = batch["state"][:, c - 1:c]                                  # (B, 1, J)
            # Direction: where a joint really moved (> MOVED from the context's last state), did the
            # imagined joint move the same way? Counted per (window, horizon, joint).
            true_delta = true_state - last_state
            moved = true_delta.abs() > MOVED                                         # (B, H, J)
            add("state_moved", moved.float().sum(-1))
            for name, s in (("model", model.decode_state(traj["state"])[:, 1:]),
                            ("zero_action", model.decode_state(zero["state"])[:, 1:]),
                            ("copy_last", last_state.expand_as(true_state))):
                add(f"state_mse/{name}", (s.float() - true_state).square().mean(-1))
                if name != "copy_last":
                    same_way = (s.float() - last_state).sign() == true_delta.sign()
                    add(f"state_agree/{name}", (same_way & moved).float().sum(-1))
        reward = batch["reward"][:, c:]
        add("reward_abs_error", (traj["reward"].float() - reward).abs())
        add("reward_correct", ((traj["reward"].float() - reward).abs() < 0.1).float())
        cont = 1.0 - batch["is_terminal"][:, c:].float()
        add("cont_correct", ((traj["cont"].float() > 0.5).float() == cont).float())
        if gif_frames is None:
            gif_frames = _gif_frames(batch["image"][: cfg.gif_rows], pred[: cfg.gif_rows], c)

    n = counts["windows"]
    results = {
        "checkpoint": str(checkpoint.find(cfg.checkpoint)),
        "step": trainer["step"], "backend": trainer["backend"], "stores": paths, "split": cfg.split,
        "windows": n, "context": c, "horizon": h,
    }
    if has_tok:
        mse = torch.cat(tok_mse).double()                                            # (frames,)
        results["tokenizer"] = {"mse": mse.mean().item(), "psnr": _psnr(mse).mean().item(),
                                "psnr_of_mean_mse": _psnr(mse.mean()).item(), "frames": len(mse)}
    out = Path(cfg.out) if cfg.out else checkpoint.find(cfg.checkpoint).parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    per_h = {k: (v / n).tolist() for k, v in sums.items()}
    if imagines:
        results |= _open_loop_results(per_h, has_state)
        results["model_minus_copy_last"] = paired_gap(np.concatenate(per_window["model"]),
                                                      np.concatenate(per_window["copy_last"]),
                                                      [(w["store"], w["episode"]) for w in windows])
    else:
        results["dynamics_untrained"] = True
    results["probe"] = _probe(cfg, model, stores, float(trainer.get("holdout", 0.0)), image_key, imagines)
    (out / "eval.json").write_text(json.dumps(results, indent=1))
    files = ["eval.json", "eval.gif"]
    if imagines:  # no curves without open-loop prediction
        _plot(per_h, has_state, results.get("tokenizer"), out / "eval.png",
              title=f"{trainer['backend']} step {trainer['step']}")
        files.insert(1, "eval.png")
    _write_gif(gif_frames, out / "eval.gif")
    results["files"] = [str(out / f) for f in files]
    return results


def _probe(cfg, model, stores, holdout: float, image_key: str, imagines: bool) -> dict:
    """world_model/probe.py's cube probe, or {"skipped": why}."""
    from reverie.world_model.probe import feature_probe

    if not cfg.probe:
        return {"skipped": "probe=false"}
    if not imagines:
        return {"skipped": "dynamics untrained: no features to probe"}
    cap = cfg.probe_episodes
    cap = None if cap is None else int(cap)
    result = feature_probe(model, stores, holdout=holdout, image_key=image_key, max_train_episodes=cap,
                           max_test_episodes=cap, seed=int(cfg.seed))
    if result is None:
        return {"skipped": "no store holds privileged/target and privileged/objects (sim ground truth); "
                           "record the data with `reverie sim demos` to probe the features for the cubes"}
    return result


def probe_lines(probe: dict | None) -> list[str]:
    """eval.json's `probe` -> text lines (eval-wm's table, the pipeline report)."""
    from reverie.world_model.probe import table as probe_table

    if not probe:
        return []
    if "skipped" in probe:
        return [f"cube probe: skipped ({probe['skipped']})"]
    return probe_table(probe).splitlines()


def _ratio(hits: list, total: list) -> float:
    return float(np.sum(hits) / max(np.sum(total), 1e-12))


def _psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of images in [0, 1] from their MSE."""
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-10))


def _open_loop_results(per_h: dict, has_state: bool) -> dict:
    """Per-horizon means over the windows -> the open-loop part of eval.json."""
    results = {
        "per_horizon": {k: v for k, v in per_h.items() if "/" in k},
        "reward_mae": float(np.mean(per_h["reward_abs_error"])),
        "reward_accuracy": float(np.mean(per_h["reward_correct"])),
        "cont_accuracy": float(np.mean(per_h["cont_correct"])),
    }
    model_mse, base_mse = np.array(per_h["mse/model"]), np.array(per_h["mse/copy_last"])
    results["beats_copy_last_at_every_horizon"] = bool((model_mse < base_mse).all())
    zero_mse = np.array(per_h["mse/zero_action"])
    results["follows_actions"] = {
        "image_mse_recorded_actions": float(model_mse.mean()),
        "image_mse_zero_actions": float(zero_mse.mean()),
        "image_recorded_better_at_every_horizon": bool((model_mse < zero_mse).all()),
    }
    if has_state:
        s_model, s_zero = np.array(per_h["state_mse/model"]), np.array(per_h["state_mse/zero_action"])
        results["follows_actions"] |= {
            "state_mse_recorded_actions": float(s_model.mean()),
            "state_mse_zero_actions": float(s_zero.mean()),
            "state_mse_copy_last": float(np.mean(per_h["state_mse/copy_last"])),
            "ratio_zero_over_recorded": float(s_zero.mean() / max(s_model.mean(), 1e-12)),
            "recorded_better_at_every_horizon": bool((s_model < s_zero).all()),
            "moved_threshold": MOVED,
            "direction_agreement_recorded": _ratio(per_h["state_agree/model"], per_h["state_moved"]),
            "direction_agreement_zero": _ratio(per_h["state_agree/zero_action"], per_h["state_moved"]),
        }
    return results


def _gif_frames(images: torch.Tensor, pred: torch.Tensor, c: int) -> np.ndarray:
    """(R, C+H, h, w, 3) real and (R, H, h, w, 3) predicted -> (C+H, R*h', 2*w', 3) uint8 frames."""
    real = images.float().cpu()
    pred = torch.cat([real[:, :c], pred.cpu()], 1)
    frames = torch.cat([real, pred], 3)                              # (R, L, h, 2w, 3): real | imagined
    frames[:, :c, :2] = frames[:, :c, -2:] = 0.5                     # grey bar on context frames
    frames = frames.permute(1, 0, 2, 3, 4).flatten(1, 2)             # (L, R*h, 2w, 3)
    scale = max(1, 128 // images.shape[2])
    frames = frames.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return (frames.clamp(0, 1).numpy() * 255).astype(np.uint8)


def _write_gif(frames: np.ndarray, path: Path) -> None:
    import imageio.v2 as imageio

    imageio.mimsave(path, list(frames), duration=0.2, loop=0)


def _plot(per_h: dict, has_state: bool, tokenizer: dict | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hs = np.arange(1, len(per_h["mse/model"]) + 1)
    panels = [("mse", "image MSE"), ("psnr", "PSNR (dB)")] + ([("state_mse", "joint-state MSE")] if has_state else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4))
    for ax, (key, label) in zip(axes, panels):
        for name, style in (("model", "-o"), ("copy_last", "--"), ("zero_action", ":")):
            ax.plot(hs, per_h[f"{key}/{name}"], style, ms=3,
                    label={"model": "model (recorded actions)", "copy_last": "copy last",
                           "zero_action": "model (zero actions)"}[name])
        if tokenizer and key in ("mse", "psnr"):  # the floor: prediction cannot beat reconstruction
            ax.axhline(tokenizer[key], color="k", lw=1, ls="-.", label="tokenizer reconstruction")
        ax.set_xlabel("open-loop horizon")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict) -> str:
    tok = results.get("tokenizer")
    tok_line = (f"tokenizer reconstruction: MSE {tok['mse']:.5f}, PSNR {tok['psnr']:.2f} dB "
                f"(of mean MSE {tok['psnr_of_mean_mse']:.2f} dB) over {tok['frames']} frames") if tok else ""
    probe = probe_lines(results.get("probe"))
    if results.get("dynamics_untrained"):
        return "\n".join([f"{tok_line}; windows {results['windows']}",
                          "dynamics untrained (only the tokenizer stage ran): no open-loop prediction; train it "
                          "with world_model.stage=dynamics world_model.tokenizer=RUN", *probe])
    ph = results["per_horizon"]
    gap = results["model_minus_copy_last"]
    rows = [f"{'h':>3} {'MSE model':>10} {'MSE copy':>10} {'diff +- 2SE':>20} {'PSNR model':>11} {'PSNR copy':>10}"
            + (f" {'state rec':>10} {'state zero':>10}" if "state_mse/model" in ph else "")]
    for i in range(results["horizon"]):
        line = (f"{i + 1:>3} {ph['mse/model'][i]:>10.5f} {ph['mse/copy_last'][i]:>10.5f} "
                f"{gap['diff'][i]:>+10.5f} +- {2 * gap['se'][i]:.5f} "
                f"{ph['psnr/model'][i]:>11.2f} {ph['psnr/copy_last'][i]:>10.2f}")
        if "state_mse/model" in ph:
            line += f" {ph['state_mse/model'][i]:>10.5f} {ph['state_mse/zero_action'][i]:>10.5f}"
        rows.append(line)
    rows.append(f"beats copy-last at every horizon: {results['beats_copy_last_at_every_horizon']} (beyond 2 SE, "
                f"clustered over {gap['episodes']} episodes: better at h={gap['better']}, worse at h={gap['worse']}); "
                f"reward MAE {results['reward_mae']:.4f}, reward acc {results['reward_accuracy']:.3f}, "
                f"continue acc {results['cont_accuracy']:.3f}; windows {results['windows']}")
    f = results["follows_actions"]
    rows.append(f"follows actions: image MSE recorded {f['image_mse_recorded_actions']:.5f} vs zero actions "
                f"{f['image_mse_zero_actions']:.5f} (better at every horizon: "
                f"{f['image_recorded_better_at_every_horizon']})")
    if "state_mse_recorded_actions" in f:
        rows.append(f"  joint state MSE recorded {f['state_mse_recorded_actions']:.5f} vs zero actions "
                    f"{f['state_mse_zero_actions']:.5f} (x{f['ratio_zero_over_recorded']:.2f}, better at every "
                    f"horizon: {f['recorded_better_at_every_horizon']}), copy-last {f['state_mse_copy_last']:.5f}")
        rows.append(f"  joints that moved > {f['moved_threshold']} rad moved the same way in imagination: "
                    f"{100 * f['direction_agreement_recorded']:.1f}% under the recorded actions, "
                    f"{100 * f['direction_agreement_zero']:.1f}% under zero actions")
    if tok:
        rows.append(tok_line)
    return "\n".join(rows + probe)


def main(argv: list[str]) -> int:
    cfg = command_config("eval_wm", argv, __doc__)
    if cfg is None:
        return 0
    results = evaluate(cfg)
    print(table(results))
    print("wrote " + ", ".join(results["files"]))
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    raise SystemExit(main(sys.argv[1:]))
