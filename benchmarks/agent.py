"""The results table: what each stage of reverie adds, on the sim arm, same data and seeds per row.

    .venv/bin/python benchmarks/agent.py [--tasks touch push] [--preset cpu] [--quick]

On a 2-core machine run one process per task (each uses one torch thread), then merge:
    .venv/bin/python benchmarks/agent.py --tasks touch &  .venv/bin/python benchmarks/agent.py --tasks push
    .venv/bin/python benchmarks/agent.py --merge
Re-score a finished run's saved agents on more (and other) evaluation seeds, without retraining:
    .venv/bin/python benchmarks/agent.py --rescore 300 --tasks touch push

Per task: scripted demos at a skill where behaviour cloning often fails -> one world model ->
  1. behaviour cloning from scratch (pixels + state + instruction, no world model)
  2. behaviour cloning on world-model features
  3. imagination RL with the behaviour-cloning prior
  4. + one corrective round     5. + two corrective rounds
Each row: success rate over the same evaluation seeds with a 95% Wilson interval. Targets (issue 7):
RL >= BC + 15 points; each round >= +5; no row below BC. Each task's figures go to
benchmarks/results/agent/<task>.json as soon as it finishes; --merge writes benchmarks/results/agent.json
and agent.md and prints the table. Slow (tens of minutes per task on 2 cores at the cpu preset); not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results"


def success(controller, task: str, episodes: int, seed: int, time_limit: int) -> dict:
    """The train-suite evaluation every row gets: fixed seeds from `seed`, Wilson interval."""
    from reverie.policy.evaluate import evaluate

    return evaluate(controller, f"arm/{task}", episodes, ["train"], seed=seed,
                    env_kwargs={"time_limit": time_limit}, progress=False)["train"]


def report(task: str, name: str, row: dict) -> None:
    print(f"[{task}] {name}: {100 * row['success_rate']:.1f}% of {row['episodes']} "
          f"[{100 * row['ci95'][0]:.0f}, {100 * row['ci95'][1]:.0f}]", flush=True)


def run_task(task: str, args, root: Path) -> dict:
    from reverie.config import compose
    from reverie.policy.data import AgentData
    from reverie.policy.improve import improve
    from reverie.policy.loading import load_controller
    from reverie.policy.scratch_bc import ScratchController, save as save_scratch, train_scratch_bc
    from reverie.policy.train import train
    from reverie.sim.demos import record
    from reverie.world_model import checkpoint as wm_checkpoint
    from reverie.world_model.evaluate import evaluate as evaluate_wm
    from reverie.world_model.train import Trainer

    root.mkdir(parents=True, exist_ok=True)
    times, rows = {}, {}

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        times[name] = round(time.perf_counter() - start, 1)
        print(f"[{task}] {name}: {times[name]:.0f} s", flush=True)
        return out

    def score(name, controller):
        rows[name] = success(controller, task, args.eval_episodes, 50_000, args.time_limit)
        report(task, name, rows[name])

    store = root / "demos.zarr"
    demo_rate = timed("demos", lambda: record(compose("sim_demos", [
        f"task={task}", f"episodes={args.demos}", f"skill={args.skill}", f"time_limit={args.time_limit}",
        f"out={store}", "seed=0"])))
    wm = root / "wm"
    budget = ([f"steps={args.wm_steps}"] if args.wm_steps else []) + (
        [f"minutes={args.wm_minutes}"] if args.wm_minutes else [])
    timed("world model", lambda: Trainer(compose("train_wm", [
        f"world_model={args.backend}", f"preset={args.preset}", f"data={store}", f"out={wm}", "seed=0",
        "progress=false", f"threads={args.threads}", *budget])).run())
    wm_eval = timed("world model eval", lambda: evaluate_wm(compose("eval_wm", [
        f"checkpoint={wm}", *(["split=all", "horizon=4"] if args.quick else [])])))
    common = [f"wm={wm}", "seed=0", "progress=false", f"threads={args.threads}"]

    _, wm_cfg, wm_info = wm_checkpoint.load_model(wm)
    data = AgentData(compose("train_agent", common), wm_cfg, wm_info, batch_size=16, seq_len=16)
    scratch, _ = timed("bc from scratch", lambda: train_scratch_bc(data, steps=args.bc_steps, progress=False))
    save_scratch(root / "scratch_bc", scratch, {"image_key": "image/front"})  # kept for --rescore
    score("bc from scratch", ScratchController(scratch, "image/front"))

    bc = timed("bc on world-model features", lambda: train(compose("train_agent", [
        "stage=bc", f"out={root / 'bc'}", f"steps={args.bc_steps}", *common])))
    score("bc on world-model features", load_controller(bc))
    rl = timed("imagination rl", lambda: train(compose("train_agent", [
        "stage=rl", f"init={bc}", f"out={root / 'rl'}", f"steps={args.rl_steps}", *common])))
    score("imagination rl with prior", load_controller(rl))

    agent, wm_run = rl, wm
    for k in (1, 2):
        result = timed(f"round {k}", lambda: improve(compose("improve", [
            f"wm={wm_run}", f"agent={agent}", f"prior={bc}", f"env=arm/{task}", f"out={root / f'improve{k}'}",
            "rounds=1", f"episodes={args.round_episodes}", f"wm_steps={args.round_wm_steps}",
            f"rl_steps={args.round_rl_steps}", "eval_episodes=1", "progress=false", f"seed={k}",
            f"+env_kwargs.time_limit={args.time_limit}", f"beta={0.3 * 0.5 ** (k - 1)}"]))["round 1"])
        agent, wm_run = Path(result["agent"]), Path(result["world_model"])
        score(f"+ {k} corrective round{'s' if k > 1 else ''}", load_controller(agent))
    beats = wm_eval.get("beats_copy_last_at_every_horizon")
    return {"demo_success": demo_rate, "rows": rows, "seconds": times, "wm_beats_copy_last": beats}


# row -> where run_task leaves its policy, relative to out/<task>
SAVED = {"bc from scratch": "scratch_bc", "bc on world-model features": "bc", "imagination rl with prior": "rl",
         "+ 1 corrective round": "improve1/round_1/agent", "+ 2 corrective rounds": "improve2/round_1/agent"}


def rescore(task: str, args, root: Path) -> dict:
    """Evaluate the saved policies of a finished run on `args.rescore` episodes from other seeds."""
    from reverie.policy.loading import load_controller

    old = json.loads((RESULTS / "agent" / f"{task}.json").read_text())["task"]
    rows = {}
    for name, rel in SAVED.items():
        if not (root / rel).exists():
            print(f"[{task}] {name}: no saved policy at {root / rel}, skipped", flush=True)
            continue
        rows[name] = success(load_controller(root / rel), task, args.rescore, 70_000, args.time_limit)
        report(task, name, rows[name])
    return {**old, "rows": rows, "eval_seed": 70_000}


def table(results: dict) -> str:
    lines = []
    for task, r in sorted(results["tasks"].items()):
        base = r["rows"]["bc on world-model features"]["success_rate"]
        lines += [f"arm/{task} (demos at skill {results['args']['skill']}: "
                  f"{100 * r['demo_success']:.0f}% success)",
                  f"  {'row':<30} {'success':>8} {'95% CI':>14} {'vs BC':>7}"]
        for name, s in r["rows"].items():
            lines.append(f"  {name:<30} {100 * s['success_rate']:>7.1f}% "
                         f"[{100 * s['ci95'][0]:>4.0f}, {100 * s['ci95'][1]:>4.0f}] "
                         f"{100 * (s['success_rate'] - base):>+6.1f}")
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
    p.add_argument("--wm-steps", type=int, default=0, help="0: the preset's steps")
    p.add_argument("--wm-minutes", type=float, default=20.0, help="wall-clock cap on the world model (0: none)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--bc-steps", type=int, default=1500)
    p.add_argument("--rl-steps", type=int, default=300)
    p.add_argument("--round-episodes", type=int, default=30)
    p.add_argument("--round-wm-steps", type=int, default=300)
    p.add_argument("--round-rl-steps", type=int, default=150)
    p.add_argument("--eval-episodes", type=int, default=40)
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
        args.round_episodes, args.round_wm_steps, args.round_rl_steps, args.eval_episodes = 2, 2, 2, 2
        args.time_limit = 20
    torch_threads(args.threads)
    results = {"args": vars(args), "tasks": {}}
    for task in args.tasks:
        results["tasks"][task] = run_task(task, args, Path(args.out) / task)
        if not args.quick:  # each task is kept the moment it is done
            (RESULTS / "agent").mkdir(parents=True, exist_ok=True)
            (RESULTS / "agent" / f"{task}.json").write_text(
                json.dumps({"args": vars(args), "task": results["tasks"][task]}, indent=1))
    print(table(results))
    if not args.quick:
        merge()


def torch_threads(n: int) -> None:
    if n:
        import torch
        torch.set_num_threads(n)


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
