"""Soak: `reverie deploy robot=virtual` for 10,000 steps at 30 Hz on a noisy bus. Writes
benchmarks/results/faults.json and prints a table.

    nice -n 19 .venv/bin/python benchmarks/faults.py                       # clean, 1%/5% drop, 1%/5% corrupt
    nice -n 19 .venv/bin/python benchmarks/faults.py --cases drop=0.05 corrupt=0.05 --steps 2000

Each case starts `reverie sim serve-bus` with `drop=` (an instruction packet lost: no action, no
reply) or `corrupt=` (a reply that fails its checksum) and `goal_log=`, then runs the torch-free
deploy against it in its own process, exactly as on a robot. The clock is the wall clock: serve-bus
steps its physics in real time and has no faster simulated clock, so a case takes steps / 30 s
(10,000 steps: 5.6 minutes).

Per case: steps run (the run must reach the end), rate, deadline misses and the faults ridden out
(from deploy's report=); every goal a servo accepted (serve-bus goal_log) checked against the arm's
joint limits and max_step from the position the servo had when it took the goal; and whether the
arm ended parked: deploy's own account, and torque off at the safe pose read back over the bus.
The policy is the tests' quick bundle (an untrained scratch-BC policy for the virtual SO-101): its
actions are arbitrary, which is what a safety soak wants.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "faults.json"
CASES = ["clean", "drop=0.01", "drop=0.05", "corrupt=0.01", "corrupt=0.05"]
ARM = "so101_virtual"
TICK_SLACK = 1  # goals are whole ticks: a limit or step may be overshot by the rounding of one tick


def case_options(case: str) -> dict:
    if case == "clean":
        return {}
    key, _, value = case.partition("=")
    if key not in ("drop", "corrupt"):
        raise SystemExit(f"case {case!r}: use clean, drop=P or corrupt=P")
    return {key: float(value)}


def check_goals(path: Path, arm) -> dict:
    """Every accepted goal against the joint limits and max_step, both from the position the servo
    had when it took the goal."""
    rows = np.loadtxt(path, skiprows=1, ndmin=2)  # time id goal present
    out = {"goals": int(len(rows)), "outside_limits": 0, "returning_inside": 0, "beyond_max_step": 0,
           "worst_step_ratio": 0.0}
    for joint in arm.joints:
        mine = rows[rows[:, 1] == joint.id]
        if not len(mine):
            continue
        goal = np.array([joint.to_value(t) for t in mine[:, 2]])
        present = np.array([joint.to_value(t) for t in mine[:, 3]])
        tick = abs(joint.to_value(joint.zero_ticks + 1) - joint.to_value(joint.zero_ticks)) * TICK_SLACK
        lo, hi = joint.limits
        outside = (goal < lo - tick) | (goal > hi + tick)
        # The virtual arm rests folded beyond elbow_flex's limit: torque comes on where it stands and
        # the first goals bring it back inside. Only a goal further out than the joint leaves the limits.
        leaving = ((goal < lo - tick) & (goal < present - tick)) | ((goal > hi + tick) & (goal > present + tick))
        out["outside_limits"] += int(np.sum(leaving))
        out["returning_inside"] += int(np.sum(outside & ~leaving))
        step = np.abs(goal - present)
        out["beyond_max_step"] += int(np.sum(step > joint.max_step + tick))
        out["worst_step_ratio"] = max(out["worst_step_ratio"], float(step.max() / joint.max_step))
    return out


def read_back(link: Path, arm) -> dict:
    """After deploy exited: torque and pose over the (still noisy) bus, with generous retries."""
    from reverie.robot_io.bus import ServoBus

    bus = ServoBus(str(link), arm.protocol, timeout_s=arm.timeout_s, retries=10)
    bus.connect()
    try:
        torque = bus.sync_read("Torque_Enable", arm.ids)
        pose = arm.ticks_to_values(bus.sync_read("Present_Position", arm.ids))
    finally:
        bus.close()
    away = np.abs(pose - np.asarray(arm.safe_pose))[:-1]  # the gripper's opening is not a resting pose
    # 0.3 rad: a limp arm settles a little on its stops after torque is released (tests/test_robot_faults.py).
    return {"torque_off": all(v == 0 for v in torque.values()), "max_from_safe_pose_rad": float(away.max()),
            "at_safe_pose": bool(away.max() <= 0.3)}


def run_case(case: str, bundle: Path, workdir: Path, steps: int, seed: int) -> dict:
    from reverie.robot_io.config import load_arm
    from reverie.robot_io.virtual.launcher import VirtualArm

    name = case.replace("=", "_")
    link, report, goals = workdir / f"arm_{name}", workdir / f"report_{name}.json", workdir / f"goals_{name}.txt"
    arm = load_arm(ARM, port=str(link))
    cmd = [sys.executable, "-c", "import sys; from reverie.cli import main; sys.exit(main())", "deploy",
           f"bundle={bundle}", "robot=virtual", f"link={link}", "instruction=touch the red cube",
           f"steps={steps}", "stdin=false", f"report={report}"]
    started = time.monotonic()
    with VirtualArm("feetech", link=link, goal_log=goals, seed=seed, **case_options(case)) as server:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=steps / 30 * 3 + 600)
        back = read_back(link, arm)
    wall = time.monotonic() - started
    result = {"case": case, **case_options(case), "returncode": run.returncode, "wall_s": round(wall, 1)}
    if run.returncode == 0 and report.exists():
        episode = json.loads(report.read_text())[0]
        result.update({k: episode[k] for k in ("steps", "rate_hz", "deadline_misses", "miss_fraction",
                                               "jitter_ms", "period_p99_ms", "clamped_steps", "faults", "stopped")})
    else:
        result["error"] = (run.stderr or run.stdout).strip().splitlines()[-6:]
    served = [line for line in server.output if "served {" in line]
    if served:  # serve-bus's own count of the faults it injected
        result["injected"] = {k: int(v) for k, v in re.findall(r"'(\w+)': (\d+)", served[-1])}
    result["goal_check"] = check_goals(goals, arm) if goals.exists() else None
    result["parked"] = {**back, "deploy_says": result.get("stopped", "")}
    result["parked"]["ok"] = (back["torque_off"] and back["at_safe_pose"]
                              and result.get("stopped", "").startswith("arm moved to its safe pose"))
    return result


def quick_bundle(workdir: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    import export_setup

    return export_setup.quick_bundle(workdir)


def print_table(results: dict) -> None:
    print(f"\nsoak: {results['steps']} steps at 30 Hz per case on the virtual SO-101 "
          f"(wall clock; load {results['machine']['load_1min']})")
    head = (f"{'case':<14}{'steps':>7}{'misses':>8}{'retried':>9}{'lost':>6}{'held':>6}{'wdog':>6}"
            f"{'goals':>8}{'off lim':>8}{'back in':>8}{'>step':>7}{'worst':>7}  parked")
    print(head)
    for r in results["cases"]:
        f, g = r.get("faults") or {}, r.get("goal_check") or {}
        print(f"{r['case']:<14}{r.get('steps', 'FAIL'):>7}{r.get('deadline_misses', '-'):>8}"
              f"{f.get('reads_retried', '-'):>9}{f.get('read_faults', '-'):>6}{f.get('steps_held', '-'):>6}"
              f"{f.get('watchdog_holds', '-'):>6}{g.get('goals', '-'):>8}{g.get('outside_limits', '-'):>8}"
              f"{g.get('returning_inside', '-'):>8}"
              f"{g.get('beyond_max_step', '-'):>7}{g.get('worst_step_ratio', 0):>7.2f}  "
              f"{'yes' if r['parked']['ok'] else 'NO'}")
    print("misses: deadline misses; retried: packets re-sent; lost: reads that lost a servo after every "
          "retry; held: steps that held the last goal; wdog: watchdog holds; off lim: accepted goals "
          "leaving the joint limits; back in: goals outside them but bringing a joint that stood further out "
          "back; >step: goals beyond max_step from the servo's position; worst: largest step / max_step")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--cases", nargs="+", default=CASES, help="clean, drop=P, corrupt=P")
    ap.add_argument("--bundle", type=Path, help="a bundle for the virtual SO-101 (default: build the quick one)")
    ap.add_argument("--seed", type=int, default=0, help="serve-bus's fault-injection seed")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    for case in args.cases:
        case_options(case)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_1min": load},
               "steps": args.steps, "control_hz": 30, "clock": "wall clock (serve-bus has no simulated clock)",
               "arm": ARM, "cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        bundle = args.bundle or quick_bundle(workdir)
        for case in args.cases:
            print(f"{case}: {args.steps} steps ...", flush=True)
            results["cases"].append(run_case(case, bundle, workdir, args.steps, args.seed))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))  # kept after each case
    print_table(results)
    ok = all(r.get("steps") == args.steps and r["goal_check"] and not r["goal_check"]["outside_limits"]
             and not r["goal_check"]["beyond_max_step"] and r["parked"]["ok"] for r in results["cases"])
    print("every case ran to the end, kept every goal inside the limits and max_step, and parked"
          if ok else "NOT MET: see the table")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
