"""`reverie eval policy=AGENT env=arm/touch episodes=N [suites=[train,heldout,shifted]] [instruction=TEXT] out=DIR`

Honest evaluation: success rate per instruction with 95% Wilson intervals, the mean return and the
mean per-episode max reward (the largest single-step reward: what coverage-style tasks score) with
95% Student-t intervals, and episode videos, separately per suite:
  train    the training paraphrases, nominal sim
  heldout  paraphrases never seen in training (generalisation of the language conditioning)
  shifted  the `shifted` sim preset, outside the randomisation ranges (sim-to-sim transfer)
Seeds are fixed per episode index, so every policy meets the same initial states.
`instruction=TEXT` gives every episode that instruction (for the sim arm it also sets the goal; for
gym/ and dmc/ envs it is what the policy is told); without it the env draws or keeps its own.
Robots (env=robot/<arm config> link=PTY | port=DEV, robot_io/robot_env.py) run the `train` suite only
(they have no held-out paraphrases or shifted physics); other suites are skipped with a note. Other
envs (dmc/, gym/) have `train` only. Suites are checked before any episode runs.
Writes eval.json, eval.md and eval.png (and GIFs) to `out`.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from reverie.config import command_config
from reverie.errors import ConfigError
from reverie.policy.rollout import EpisodeResult, check_action_units, run_episode
from reverie.policy.stats import mean_interval, wilson_interval

log = logging.getLogger(__name__)

# The suites evaluate knows (the module docstring says what each means); each env family
# (sim/registry.py) says which it runs and the env options each adds.
SUITES = ("train", "heldout", "shifted")


def suite_options(env_name: str, suites: list[str], instruction: str | None = None) -> dict[str, dict]:
    """suite -> the env options it adds, for the suites this env runs; raises on any suite it cannot
    run, so a bad list fails before the first episode. The env's family (sim/registry.py) knows which
    it has: the sim arm all of them, a robot `train` (the rest skipped with a note), any other env
    `train` only."""
    unknown = [s for s in suites if s not in SUITES]
    if unknown or not suites:
        raise ConfigError(f"{'unknown suite(s) ' + str(unknown) if unknown else 'no suites'} in suites="
                          f"{list(suites)}: choose from {sorted(SUITES)}, e.g. suites=[train,heldout]")
    from reverie.sim.registry import family

    fam = family(env_name)  # a mistyped family fails here too, before anything loads
    if instruction is not None:
        fam.checked_instruction(instruction)  # it sets the goal: one the env understands, or the list that works
        if "heldout" in suites and "heldout" in fam.suites:
            raise ConfigError(f"instruction={instruction!r} gives every episode the same text, so the heldout "
                              "suite (unseen paraphrases) would only repeat train: use suites=[train] or "
                              "suites=[train,shifted], or drop instruction=")
    lacking = [s for s in suites if s not in fam.suites]
    if lacking and not fam.skips_suites:  # a robot skips them (evaluate says so)
        raise ConfigError(f"suite(s) {lacking} exist for the sim arm only (held-out paraphrases, the shifted "
                          f"preset); use suites=[train] for {env_name}")
    return {s: fam.suites[s] for s in suites if s in fam.suites}


def _mean_and_ci(values: list[float]) -> tuple[float, list[float] | None]:
    ci = mean_interval(values)
    return (float(np.mean(values)) if values else 0.0), (None if ci is None else list(ci))


def summarize(results: list[EpisodeResult]) -> dict:
    by_instr = defaultdict(list)
    for r in results:
        by_instr[r.instruction].append(r)
    wins = sum(r.success for r in results)
    lo, hi = wilson_interval(wins, len(results))
    unlabelled = sum(not r.labelled for r in results)  # counted as failures; the report says how many
    mean_return, return_ci = _mean_and_ci([r.ret for r in results])
    mean_max, max_ci = _mean_and_ci([r.max_reward for r in results if r.max_reward is not None])
    return {
        "episodes": len(results), "successes": wins, **({"unlabelled": unlabelled} if unlabelled else {}),
        "success_rate": wins / max(len(results), 1), "ci95": [lo, hi],
        "mean_return": mean_return, "return_ci95": return_ci,  # Student t; None under two episodes
        "mean_max_reward": mean_max, "max_reward_ci95": max_ci,  # per episode, the largest step reward
        "mean_length": float(np.mean([r.length for r in results])) if results else 0.0,
        "per_instruction": {
            text: {"episodes": len(rs), "successes": sum(r.success for r in rs),
                   "success_rate": sum(r.success for r in rs) / len(rs),
                   "ci95": list(wilson_interval(sum(r.success for r in rs), len(rs)))}
            for text, rs in sorted(by_instr.items())},
    }


def evaluate(controller, env_name: str, episodes: int, suites: list[str], seed: int = 10_000,
             env_kwargs: dict | None = None, videos: int = 0, out: Path | None = None,
             progress: bool = True, instruction: str | None = None) -> dict:
    from tqdm import tqdm

    from reverie.sim.registry import make

    if episodes < 1:
        raise ConfigError(f"episodes={episodes}: evaluate at least one episode (e.g. episodes=20)")
    plan = suite_options(env_name, suites, instruction)  # every suite checked before anything runs
    for suite in [s for s in suites if s not in plan]:
        log.warning("suite %r skipped: a robot runs the train suite only", suite)
    report = {}
    for suite, options in plan.items():
        kwargs = dict(env_kwargs or {}) | options
        env = make(env_name, **kwargs)
        check_action_units(controller, env)  # the policy's units (its normaliser) against the env's
        results = []
        try:  # close() parks a robot arm even when an episode fails or is interrupted
            for i in tqdm(range(episodes), desc=f"eval {suite}", disable=not progress, unit="ep"):
                result = run_episode(env, controller, seed=seed + i, instruction=instruction,
                                     record_frames=i < videos)
                if result.frames and out is not None:
                    _write_gif(out / f"{suite}_ep{i:03d}_{'success' if result.success else 'fail'}.gif",
                               result.frames)
                results.append(result)
                if getattr(env, "quit", False):  # the robot's operator pressed Esc
                    log.warning("operator quit after %d of %d episodes", i + 1, episodes)
                    break
        finally:
            env.close()
        report[suite] = summarize(results)
        log.info("%s: success %.1f%% [%.1f, %.1f] over %d episodes", suite,
                 100 * report[suite]["success_rate"], *(100 * x for x in report[suite]["ci95"]), episodes)
    return report


def env_options(cfg) -> dict:
    """env_kwargs plus the robot shortcuts `link=`, `port=`, `operator=` of eval and improve."""
    kwargs = dict(OmegaConf.to_container(cfg.env_kwargs) if cfg.env_kwargs else {})
    shortcuts = {k: cfg.get(k) for k in ("link", "port", "operator") if cfg.get(k) is not None}
    if shortcuts and not str(cfg.env).startswith("robot/"):
        raise ConfigError(f"{sorted(shortcuts)} are options of robot envs (env=robot/<arm config>), not {cfg.env}")
    return kwargs | shortcuts


def _interval(ci: list[float] | None) -> str:
    return "-" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def markdown(report: dict, title: str = "Evaluation") -> str:
    lines = [f"## {title}", "", "| suite | episodes | success | 95% CI | mean return | 95% CI | mean max reward "
             "| 95% CI |", "|---|---|---|---|---|---|---|---|"]
    for suite, s in report.items():
        lo, hi = s["ci95"]
        lines.append(f"| {suite} | {s['episodes']} | {100 * s['success_rate']:.1f}% | "
                     f"[{100 * lo:.1f}, {100 * hi:.1f}] | {s['mean_return']:.3f} | {_interval(s.get('return_ci95'))} "
                     f"| {s.get('mean_max_reward', 0.0):.3f} | {_interval(s.get('max_reward_ci95'))} |")
    for suite, s in report.items():
        lines += ["", f"### {suite}: per instruction", "", "| instruction | episodes | success | 95% CI |",
                  "|---|---|---|---|"]
        for text, p in s["per_instruction"].items():
            lo, hi = p["ci95"]
            lines.append(f"| {text} | {p['episodes']} | {100 * p['success_rate']:.0f}% | "
                         f"[{100 * lo:.0f}, {100 * hi:.0f}] |")
    return "\n".join(lines) + "\n"


def plot(rows: dict[str, dict], path: Path, title: str = "success rate (95% Wilson CI)") -> None:
    """rows: label -> summary (with success_rate and ci95). One bar per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(rows)
    rate = np.array([rows[k]["success_rate"] for k in labels]) * 100
    ci = np.array([rows[k]["ci95"] for k in labels]).T * 100
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(labels)), 3.2))
    ax.bar(labels, rate, yerr=[rate - ci[0], ci[1] - rate], capsize=4, color="#4c72b0")
    ax.set_ylim(0, 100)
    ax.set_ylabel("success %")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write_gif(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.stack(frames), duration=1000 / fps, loop=0)


def write_report(report: dict, out: Path, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=1))
    (out / "eval.md").write_text(markdown(report, title))
    plot(report, out / "eval.png")


def main(argv: list[str]) -> int:
    from reverie.policy.loading import load_controller

    cfg = command_config("eval", argv, __doc__)
    if cfg is None:
        return 0
    instruction = None if cfg.instruction is None else str(cfg.instruction)
    suite_options(cfg.env, list(cfg.suites), instruction)  # a bad suite fails before the policy loads
    controller = load_controller(cfg.policy, cfg.device)
    out = Path(cfg.out)
    report = evaluate(controller, cfg.env, int(cfg.episodes), list(cfg.suites), int(cfg.seed),
                      env_options(cfg), int(cfg.videos), out, bool(cfg.progress), instruction)
    write_report(report, out, f"{cfg.policy} on {cfg.env}")
    print(markdown(report, f"{cfg.policy} on {cfg.env}"))
    print(f"wrote {out}/eval.json, eval.md, eval.png")
    return 0
