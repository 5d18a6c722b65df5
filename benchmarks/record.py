"""Control-loop rate of the Robot env against the virtual serial robot, as the recorder sees it.

    .venv/bin/python benchmarks/record.py            # writes benchmarks/results/record.json, prints a table
    .venv/bin/python benchmarks/record.py --quick    # 1 s per rate instead of 4

For each protocol (Feetech SO-101, Dynamixel Koch) the virtual robot (`reverie sim serve-bus`, its
own process, camera at 30 fps) is driven by Robot.step at 30, 60 and 100 Hz with a slow sine on
every joint; each step is one sync write, the paced wait, one sync read of 6 servos and one camera
read. Reported per rate: achieved rate, period std and p99 (jitter), late steps and camera frames
that were stale or repeated (the virtual camera renders 30 fps, so faster loops repeat frames by
design). The virtual arms allow 250 ms replies (see so101_virtual.yaml), so on a busy host slow
replies show up as jitter here rather than errors. The load average is recorded: this machine may
be shared. Target: 30 Hz achieved within 5 % with p99 period under 1.5x the target period.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import tempfile

import numpy as np

from reverie.robot_io.camera_setup import build_cameras
from reverie.robot_io.config import load_arm
from reverie.robot_io.loop_report import loop_report
from reverie.robot_io.robot import Robot
from reverie.robot_io.virtual.launcher import VirtualArm

OUT = pathlib.Path(__file__).parent / "results" / "record.json"
ARMS = {"feetech": "so101_virtual", "dynamixel": "koch_virtual"}
RATES = (30, 60, 100)


def run_rate(robot: Robot, hz: float, seconds: float) -> dict:
    robot.control_hz = hz
    ts = robot.reset(instruction="benchmark")
    stamps, frames = [ts.info["timestamp"]], []
    steps = int(seconds * hz)
    for t in range(steps):
        action = (0.5 * np.sin(2 * np.pi * 0.5 * t / hz + np.arange(6))).astype(np.float32)
        ts = robot.step(action)
        stamps.append(ts.info["timestamp"])
        frames.append(ts.info["frame/front"][:2])
    robot.idle()
    report = loop_report(stamps, hz, {"front": frames})
    return {"target_hz": hz, "steps": report.steps, "achieved_hz": round(report.achieved_hz, 2),
            "period_std_ms": round(report.period_std_ms, 2), "period_p99_ms": round(report.period_p99_ms, 2),
            "late_steps": report.late_steps, "dropped_frames": report.dropped_frames["front"],
            "bus_retries": robot.bus.stats.retries}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else 4.0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for protocol, name in ARMS.items():
            with VirtualArm(protocol, link=pathlib.Path(tmp) / protocol) as v:
                arm = load_arm(name, port=v.link, cameras=v.camera_config())
                robot = Robot(arm, cameras=build_cameras(arm.cameras))
                robot.connect()
                try:
                    for hz in RATES:
                        rows.append({"protocol": protocol, **run_rate(robot, hz, seconds)})
                finally:
                    robot.disconnect()
    result = {"rows": rows, "seconds_per_rate": seconds, "load_average": os.getloadavg(),
              "cpus": os.cpu_count(), "python": platform.python_version()}
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    header = f"{'protocol':<10} {'target':>6} {'achieved':>9} {'std ms':>7} {'p99 ms':>7} {'late':>5} {'stale/rep':>9} {'retries':>7}"
    print(header)
    for r in rows:
        print(f"{r['protocol']:<10} {r['target_hz']:>6} {r['achieved_hz']:>9.2f} {r['period_std_ms']:>7.2f} "
              f"{r['period_p99_ms']:>7.2f} {r['late_steps']:>5} {r['dropped_frames']:>9} {r['bus_retries']:>7}")
    print(f"load average {result['load_average'][0]:.1f} on {result['cpus']} CPUs; wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
