"""The results table: what each stage of reverie adds, on the sim arm, same data and seeds per row.

    .venv/bin/python benchmarks/agent.py [--tasks touch push] [--seeds 0 1] [--stages scratch bc rl rounds]

Run one task at a time on a 2-core machine (heavy runs never in parallel), then merge:
    .venv/bin/python benchmarks/agent.py --tasks touch && .venv/bin/python benchmarks/agent.py --tasks push
    .venv/bin/python benchmarks/agent.py --merge
A stage whose output already exists under --out is reused, so an interrupted run continues.

Per task: scripted demos (seeds 0..demos-1) at a skill where behaviour cloning often fails, then per
training seed: one world model (a fixed number of steps: results must not depend on machine load) ->
  1. behaviour cloning from scratch (pixels + state + instruction, no world model)
  2. behaviour cloning on world-model features, fine-tuning the world model (policy/bc.py)
  3. imagination RL with the behaviour-cloning prior
  4. + one corrective round     5. + two corrective rounds
  (--stages scratch scratch_rounds: two corrective rounds of the pixel BC of row 1 instead: record
  --scratch-round-episodes with it, clone on for --scratch-round-steps from its weights, twice)
Each row is a CLI command on the same world model: `reverie train-agent stage=bc_scratch`, `stage=bc`,
`stage=rl init=BC`, then `reverie improve rounds=1` twice; `reverie eval policy=...` scores any of them.
Every behaviour-cloning row clones the successful demos. Each row: success over --eval-episodes per
seed (seeds from 50,000 + 10,000 * training seed: disjoint from the demos), pooled over the training
seeds with a 95% Wilson interval, each seed's own figure, the other suites (held-out paraphrases,
shifted sim), and the action error on held-out successful demos, teacher-forced and closed-loop
(policy/action_error.py). Targets (issue 19): touch BC >= 75%, RL >= BC + 10, two rounds >= RL; push BC
>= 40%, RL >= BC + 10; lift BC >= 25%. Each task's figures go to benchmarks/results/agent/<task>.json
after each seed; --merge writes benchmarks/results/agent.json and agent.md and prints the table.
Slow (about an hour per task and seed on 2 cores at the cpu preset); not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results"
REFERENCE_SKILL = 0.5  # the issue's demos (200 at skill 0.5); a run at another skill adds rows named for it


def success(controller, task: str, episodes: int, seed: int, time_limit: int, suites=("train",)) -> dict:
    """The evaluation every row gets: fixed seeds from `seed`, Wilson interval, per suite; the sim
    renders every camera the controller reads."""
    from reverie.policy.evaluate import evaluate

    keys = getattr(controller, "image_keys", None) or [getattr(controller, "image_key", "image/front")]
    cameras = [k.split("/", 1)[1] for k in keys]
    return evaluate(controller, f"arm/{task}", episodes, list(suites), seed=seed,
                    env_kwargs={"time_limit": time_limit, "cameras": cameras}, progress=False)


def report(task: str, name: str, row: dict) -> None:
    err = row.get("action_error")
    extra = f"  action error teacher-forced {err['teacher_forced']:.3f} closed-loop {err['closed_loop']:.3f}" if err else ""
    print(f"[{task}] {name}: {100 * row['success_rate']:.1f}% of {row['episodes']} "
          f"[{100 * row['ci95'][0]:.0f}, {100 * row['ci95'][1]:.0f}]{extra}", flush=True)


def eval_seed(seed: int) -> int:
    """Evaluation episodes start here: disjoint from the demos (seeds 0..demos-1) and per training seed."""
    return 50_000 + 10_000 * seed


def run_task(task: str, args, root: Path, seed: int) -> dict:
    """One training seed of the whole chain; a stage whose output exists under `root` is reused."""
    from reverie.config import compose
    from reverie.datasets.store import EpisodeStore
    from reverie.policy.action_error import action_errors
    from reverie.workflows.improve import improve
    from reverie.policy.loading import load_controller
    from reverie.policy.train import train
    from reverie.sim.demos import record
    from reverie.world_model.data import split_episodes
    from reverie.world_model.evaluate import evaluate as evaluate_wm
    from reverie.world_model.train import Trainer

    root.mkdir(parents=True, exist_ok=True)
    times, rows = {}, {}

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        times[name] = round(time.perf_counter() - start, 1)
        print(f"[{task} seed {seed}] {name}: {times[name]:.0f} s", flush=True)
        return out

    # one demo set per task (and camera set), shared by the training seeds
    store = root.parent / ("demos.zarr" if args.cameras == ["front"] else f"demos_{'_'.join(args.cameras)}.zarr")
    if not store.exists():
        timed("demos", lambda: record(compose("sim_demos", [
            f"task={task}", f"episodes={args.demos}", f"skill={args.skill}", f"time_limit={args.time_limit}",
            f"out={store}", f"seed={args.demos_seed}", f"cameras=[{','.join(args.cameras)}]"])))
    opened = EpisodeStore.open(store, "r")
    demo_rate = float(np.mean([bool(opened.meta(e).success) for e in range(opened.num_episodes)]))
    held = split_episodes(opened.num_episodes, 0.1)[1]
    held_ok = [e for e in held if opened.meta(e).success] or held  # error on demos worth imitating

    def score(name, controller, suites=("train",)):
        report_ = success(controller, task, args.eval_episodes, eval_seed(seed), args.time_limit, suites)
        rows[name] = report_["train"] | {"action_error": action_errors(controller, opened, held_ok)}
        rows[name]["suites"] = {k: {f: v[f] for f in ("episodes", "successes", "success_rate", "ci95")}
                                for k, v in report_.items()}
        report(task, name, rows[name])

    tag = f", {args.wm_label}" if args.wm_label else ""           # the world-model rows' names and folders
    sub = f"_{re.sub(r'[^A-Za-z0-9]+', '_', args.wm_label).strip('_')}" if args.wm_label else ""
    wm = root / f"wm{sub}"
    if args.bc_label:  # the agent rows on that world model, trained another way, get names and folders of their own
        tag += f", {args.bc_label}"
        sub += f"_{re.sub(r'[^A-Za-z0-9]+', '_', args.bc_label).strip('_')}"
    stages = set(args.stages)
    scratch_only = stages <= {"scratch", "scratch_rounds"} and args.scratch_wm
    if scratch_only:  # the pixel baseline reads only a model's data choices (camera, resolution, units)
        wm = Path(args.scratch_wm)
    elif not (wm / "checkpoint").exists():
        budget = [f"steps={args.wm_steps}"] + ([f"minutes={args.wm_minutes}"] if args.wm_minutes else [])
        timed("world model", lambda: Trainer(compose("train_wm", [
            f"world_model={args.backend}", f"preset={args.preset}", f"data={store}", f"out={wm}", f"seed={seed}",
            "progress=false", f"threads={args.threads}", *budget, *args.wm_set])).run())
    wm_eval = {} if scratch_only else timed("world model eval", lambda: evaluate_wm(compose("eval_wm", [
        f"checkpoint={wm}", *(["split=all", "horizon=4"] if args.quick else [])])))
    common = [f"wm={wm}", f"seed={seed}", "progress=false", f"threads={args.threads}"]

    if "scratch" in stages:  # `reverie train-agent stage=bc_scratch`
        extra = [f"image/{c}" for c in args.cameras[1:]]  # the first camera is the world model's
        name = "bc from scratch" + (f", {'+'.join(args.cameras)} cameras" if extra else "") + \
            (f", {args.scratch_label}" if args.scratch_label else "")
        scratch = root / ("scratch_bc" + (f"_{'_'.join(args.cameras)}" if extra else "") +
                          (f"_{re.sub(r'[^A-Za-z0-9]+', '_', args.scratch_label).strip('_')}" if args.scratch_label else ""))
        if not (scratch / "scratch_bc.json").exists():  # reused, like every stage, when it is there
            timed(name, lambda: train(compose("train_agent", [
                "stage=bc_scratch", f"out={scratch}", f"steps={args.scratch_steps}", f"data={store}", *common,
                f"bc_scratch.cameras=[{','.join(extra)}]", *args.scratch_set])))
        score(name, load_controller(scratch), args.suites)
        if "scratch_rounds" in stages:  # `reverie improve agent=<the pixel BC>`: record, clone on, twice
            agent = scratch
            for k in (1, 2):
                result = timed(f"{name}, round {k}", lambda: improve(compose("improve", [
                    f"wm={wm}", f"agent={agent}", f"env=arm/{task}", f"out={scratch}_improve{k}", "rounds=1",
                    f"episodes={args.scratch_round_episodes}", f"bc_steps={args.scratch_round_steps}",
                    "eval_episodes=1", "progress=false", f"seed={2000 * k + 200 * seed}",  # scenes 1000 on
                    f"+env_kwargs.time_limit={args.time_limit}", f"+env_kwargs.cameras=[{','.join(args.cameras)}]"
                ]))["round 1"])
                agent = Path(result["agent"])
                score(f"{name}, + {k} corrective round{'s' if k > 1 else ''}", load_controller(agent), args.suites)
    bc = root / f"bc{sub}"
    if stages & {"bc", "rl", "rounds"}:
        if not (bc / "agent").exists():
            timed("bc on world-model features" + tag, lambda: train(compose("train_agent", [
                "stage=bc", f"out={bc}", f"steps={args.bc_steps}", *common, *args.bc_set])))
        if "bc" in stages:  # --stages rl alone trains RL from the BC agent there without re-scoring it
            score("bc on world-model features" + tag, load_controller(bc), args.suites)
    if args.rl_label:  # RL (and rounds) trained another way from the same BC agent: rows of their own
        tag += f", {args.rl_label}"
        sub += f"_{re.sub(r'[^A-Za-z0-9]+', '_', args.rl_label).strip('_')}"
    rl = root / f"rl{sub}"
    if stages & {"rl", "rounds"}:
        if not (rl / "agent").exists():
            timed("imagination rl" + tag, lambda: train(compose("train_agent", [
                "stage=rl", f"init={bc}", f"out={rl}", f"steps={args.rl_steps}", *common, *args.rl_set])))
        score("imagination rl with prior" + tag, load_controller(rl), args.suites)
    if "rounds" in stages:
        agent, wm_run = rl / "agent", wm
        for k in (1, 2):
            result = timed(f"round {k}", lambda: improve(compose("improve", [
                f"wm={wm_run}", f"agent={agent}", f"prior={bc}", f"env=arm/{task}", f"out={root / f'improve{k}{sub}'}",
                "rounds=1", f"episodes={args.round_episodes}", f"wm_steps={args.round_wm_steps}",
                f"rl_steps={args.round_rl_steps}", "eval_episodes=1", "progress=false", f"seed={seed * 100 + k}",
                f"+env_kwargs.time_limit={args.time_limit}", f"+env_kwargs.cameras=[{','.join(args.cameras)}]",
                f"beta={0.3 * 0.5 ** (k - 1)}"]))["round 1"])
            agent, wm_run = Path(result["agent"]), Path(result["world_model"])
            score(f"+ {k} corrective round{'s' if k > 1 else ''}{tag}", load_controller(agent), args.suites)
    beats = wm_eval.get("beats_copy_last_at_every_horizon")
    if args.skill != REFERENCE_SKILL:  # rows beside the reference ones: named for their demos, which they carry
        rows = {f"{name}, skill-{args.skill} demos": row | {"demos": {"skill": args.skill, "success": demo_rate}}
                for name, row in rows.items()}
        times = {f"{name}, skill-{args.skill} demos": t for name, t in times.items()}
        demo_rate = None  # the task's demo_success stays the reference demos'
    return {"demo_success": demo_rate, "rows": rows, "seconds": times, "wm_beats_copy_last": beats,
            "wm_probe": wm_eval.get("probe")}


def pool_seeds(per_seed: dict[int, dict]) -> dict:
    """Seeds' results -> one task entry: each row pools every seed's episodes (Wilson interval over
    all of them) and keeps each seed's own figures under `seeds`."""
    from reverie.policy.stats import wilson_interval

    first = next(iter(per_seed.values()))
    rows = {}
    for name in first["rows"]:
        parts = {s: r["rows"][name] for s, r in per_seed.items() if name in r["rows"]}
        wins, n = sum(p["successes"] for p in parts.values()), sum(p["episodes"] for p in parts.values())
        rows[name] = {"episodes": n, "successes": wins, "success_rate": wins / max(n, 1),
                      "ci95": list(wilson_interval(wins, n)),
                      "action_error": {k: float(np.mean([p["action_error"].get(k, np.nan) for p in parts.values()]))
                                       for k in ("teacher_forced", "closed_loop")},
                      "seeds": {str(s): p for s, p in parts.items()},
                      **({"demos": parts[next(iter(parts))]["demos"]} if "demos" in first["rows"][name] else {})}
    return {"demo_success": first["demo_success"], "rows": rows,
            "seconds": {str(s): r["seconds"] for s, r in per_seed.items()},
            "wm_beats_copy_last": {str(s): r["wm_beats_copy_last"] for s, r in per_seed.items()},
            "wm_probe": {str(s): r.get("wm_probe") for s, r in per_seed.items()}}


# row -> where run_task leaves its policy, relative to out/<task>
SAVED = {"bc from scratch": "scratch_bc", "bc on world-model features": "bc", "imagination rl with prior": "rl",
         "+ 1 corrective round": "improve1/round_1/agent", "+ 2 corrective rounds": "improve2/round_1/agent"}


def rescore(task: str, args, root: Path) -> dict:
    """Evaluate the saved policies of a finished run (every seed under root) on `args.rescore`
    episodes from other seeds (70,000 on), without retraining."""
    from reverie.policy.loading import load_controller

    old = json.loads((RESULTS / "agent" / f"{task}.json").read_text())["task"]
    per_seed = {}
    for seed_dir in sorted(root.glob("seed*")):
        rows = {}
        for name, rel in SAVED.items():
            if not (seed_dir / rel).exists():
                print(f"[{task}] {name}: no saved policy at {seed_dir / rel}, skipped", flush=True)
                continue
            rows[name] = success(load_controller(seed_dir / rel), task, args.rescore, 70_000, args.time_limit)["train"]
            rows[name]["action_error"] = old["rows"].get(name, {}).get("action_error", {})
            report(task, name, rows[name])
        per_seed[seed_dir.name] = {**old, "rows": rows}
    return {**pool_seeds(per_seed), "eval_seed": 70_000}


def table(results: dict) -> str:
    lines = []
    wide = max([30, *(len(n) for r in results["tasks"].values() for n in r["rows"])])  # the row-name column
    for task, r in sorted(results["tasks"].items()):
        base = r["rows"].get("bc on world-model features", {"success_rate": 0.0})["success_rate"]
        demos = (f"demos at skill {results['args']['skill']}: {100 * r['demo_success']:.0f}% success"
                 if r.get("demo_success") is not None else "demos named per row")
        lines += [f"arm/{task} ({demos})",
                  f"  {'row':<{wide}} {'episodes':>8} {'success':>8} {'95% CI':>14} {'vs BC':>7} "
                  f"{'err TF':>7} {'err CL':>7}  per seed"]
        for name, s in r["rows"].items():
            err = s.get("action_error") or {}
            seeds = " ".join(f"{100 * p['success_rate']:.0f}%" for p in s.get("seeds", {}).values())
            lines.append(f"  {name:<{wide}} {s['episodes']:>8} {100 * s['success_rate']:>7.1f}% "
                         f"[{100 * s['ci95'][0]:>4.0f}, {100 * s['ci95'][1]:>4.0f}] "
                         f"{100 * (s['success_rate'] - base):>+6.1f} "
                         f"{err.get('teacher_forced', float('nan')):>7.3f} {err.get('closed_loop', float('nan')):>7.3f}  {seeds}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["touch", "push"])
    p.add_argument("--backend", default="rssm")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--skill", type=float, default=0.5)
    p.add_argument("--demos", type=int, default=200)
    p.add_argument("--time-limit", type=int, default=60)
    p.add_argument("--demos-seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (eval seeds follow them)")
    p.add_argument("--stages", nargs="+", default=["scratch", "bc", "rl", "rounds"],
                   help="rows to run: scratch bc rl rounds (rl needs bc, rounds need rl); scratch_rounds: "
                   "two corrective rounds of the scratch row's pixel BC (needs scratch)")
    p.add_argument("--suites", nargs="+", default=["train", "heldout", "shifted"])
    p.add_argument("--wm-steps", type=int, default=1500, help="world-model steps: results compare at fixed steps")
    p.add_argument("--wm-minutes", type=float, default=0.0, help="optional wall-clock cap on the world model (0: none)")
    p.add_argument("--scratch-steps", type=int, default=3000)
    p.add_argument("--scratch-wm", default="", help="with --stages scratch only: take the camera, resolution "
                   "and units from this world-model run instead of training one (its weights are not used)")
    p.add_argument("--scratch-set", nargs="*", default=[], help="more train-agent overrides for the scratch row, "
                   "e.g. bc_scratch.loss=mse")
    p.add_argument("--scratch-label", default="", help="appended to the scratch row's name and folder, so a "
                   "variant (--scratch-set) gets its own row, e.g. 'colour swap'")
    p.add_argument("--wm-set", nargs="*", default=[], help="more train-wm overrides for the world model")
    p.add_argument("--wm-label", default="", help="appended to the world-model rows' names (bc, rl, rounds) and "
                   "their folders, so a world model trained with --wm-set gets rows of its own")
    p.add_argument("--bc-label", default="", help="appended after --wm-label to the bc, rl and rounds rows' names and "
                   "folders (not the world model's): agents trained another way on the same world model")
    p.add_argument("--rl-label", default="", help="appended after --bc-label to the rl and rounds rows' names "
                   "and folders (not the bc row's): RL trained another way from the same BC agent")
    p.add_argument("--bc-set", nargs="*", default=[], help="more train-agent overrides for the bc row")
    p.add_argument("--rl-set", nargs="*", default=[], help="more train-agent overrides for the rl row")
    p.add_argument("--cameras", nargs="+", default=["front"], help="cameras the demos record; the first is the "
                   "world model's, the rest are extra cameras of the scratch row (e.g. front wrist)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--bc-steps", type=int, default=1500)
    p.add_argument("--rl-steps", type=int, default=400)
    p.add_argument("--round-episodes", type=int, default=30)
    p.add_argument("--round-wm-steps", type=int, default=300)
    p.add_argument("--round-rl-steps", type=int, default=150)
    p.add_argument("--scratch-round-episodes", type=int, default=100, help="pixel BC rounds: episodes recorded")
    p.add_argument("--scratch-round-steps", type=int, default=1000, help="pixel BC rounds: cloning steps each")
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--out", default="runs/bench_agent")
    p.add_argument("--quick", action="store_true", help="tiny preset, a few steps: checks the harness only")
    p.add_argument("--merge", action="store_true", help="merge results/agent/<task>.json into agent.json")
    p.add_argument("--rescore", type=int, default=0, help="re-evaluate a finished run's policies on N episodes")
    args = p.parse_args()
    if args.merge:
        return merge()
    if args.rescore:
        torch_threads(args.threads)
        results = {"args": vars(args), "tasks": {t: rescore(t, args, Path(args.out) / t) for t in args.tasks}}
        text = table(results)
        (RESULTS / f"agent_rescore{args.rescore}_{'_'.join(args.tasks)}.json").write_text(json.dumps(results, indent=1))
        (RESULTS / f"agent_rescore{args.rescore}_{'_'.join(args.tasks)}.md").write_text("```\n" + text + "\n```\n")
        return print(text)
    if args.quick:
        args.preset, args.demos, args.wm_steps, args.bc_steps, args.rl_steps = "tiny", 4, 5, 5, 3
        args.scratch_steps, args.seeds, args.suites = 5, args.seeds[:1], ["train"]
        args.round_episodes, args.round_wm_steps, args.round_rl_steps, args.eval_episodes = 2, 2, 2, 2
        args.scratch_round_episodes, args.scratch_round_steps = 2, 2
        args.time_limit = 20
    torch_threads(args.threads)
    results = {"args": vars(args), "tasks": {}}
    for task in args.tasks:
        per_seed = {}
        for seed in args.seeds:
            per_seed[seed] = run_task(task, args, Path(args.out) / task / f"seed{seed}", seed)
            results["tasks"][task] = pool_seeds(per_seed)
            if not args.quick:  # kept the moment each seed is done, beside the rows other runs measured
                part = RESULTS / "agent" / f"{task}.json"
                part.parent.mkdir(parents=True, exist_ok=True)
                old = json.loads(part.read_text()) if part.exists() else {}
                kept = old.get("task", {})
                # args: the reference run's, unless this is one
                run_args = vars(args) if args.skill == REFERENCE_SKILL or "args" not in old else old["args"]
                part.write_text(json.dumps({"args": run_args, "task": merged(kept, results["tasks"][task])},
                                           indent=1))
    print(table(results))
    if not args.quick:
        merge()


def torch_threads(n: int) -> None:
    if n:
        import torch
        torch.set_num_threads(n)


def merged(kept: dict, new: dict, drop: tuple[str, ...] = ()) -> dict:
    """A task's results with `new` measured over `kept`: rows replaced by name (rows in neither run
    kept, `drop` rows removed), per-seed fields (seconds, world-model checks) merged seed by seed, an
    empty value (a scratch-only run has no world-model checks) never overwriting a measured one."""
    def empty(v):
        return v in ({}, None)

    out = {**kept, **{k: v for k, v in new.items() if not empty(v) and not isinstance(v, dict)}}
    out["rows"] = {k: v for k, v in {**kept.get("rows", {}), **new.get("rows", {})}.items() if k not in drop}
    for key in ("seconds", "wm_beats_copy_last", "wm_probe"):
        seeds = {**kept.get(key, {})}
        for seed, v in new.get(key, {}).items():
            if not empty(v):
                seeds[seed] = {**seeds.get(seed, {}), **v} if key == "seconds" else v
        out[key] = {seed: {k: t for k, t in v.items() if k not in drop} if key == "seconds" else v
                    for seed, v in seeds.items()}
    return out


def merge() -> None:
    parts = sorted((RESULTS / "agent").glob("*.json"))
    if not parts:
        raise SystemExit(f"nothing to merge: no {RESULTS / 'agent'}/<task>.json; run a task first")
    loaded = [json.loads(p.read_text()) for p in parts]
    results = {"args": loaded[0]["args"], "tasks": {p.stem: r["task"] for p, r in zip(parts, loaded)}}
    text = table(results)
    (RESULTS / "agent.json").write_text(json.dumps(results, indent=1))
    (RESULTS / "agent.md").write_text("```\n" + text + "\n```\n")
    print(text)
    print(f"wrote {RESULTS / 'agent.json'} and agent.md")


if __name__ == "__main__":
    main()
