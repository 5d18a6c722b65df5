"""Control-cycle latency of ServoBus against the virtual robot, beside the wire-time limit.

One cycle = SYNC_READ Present_Position of 6 servos + SYNC_WRITE Goal_Position of 6 servos, the
exchange a 30-100 Hz control loop makes. For each protocol and each Return_Delay_Time (factory
250 = 500 us, and 0 as docs/serial.md recommends) we time N cycles against `reverie sim
serve-bus` on a pseudo-terminal and report the median and p99 beside two limits at 1 Mbaud:

    wire       bytes on the wire per cycle x 10 bits / baud (8N1)
    wire+delay wire plus the six servos' return delays (each waits before answering)

No camera is served (camera_fps=0): rendering shares the emulator's process and would add its own
jitter, which a real servo does not have. Usage: .venv/bin/python benchmarks/bus.py [cycles]
Writes benchmarks/results/bus.json and prints a table.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from reverie.robot_io.bus import ServoBus

IDS = [1, 2, 3, 4, 5, 6]
BAUD = 1_000_000
MODELS = {
    "feetech": {i: "sts3215" for i in IDS},
    "dynamixel": {1: "xl430-w250", 2: "xl430-w250", **{i: "xl330-m288" for i in IDS[2:]}},
}
RESULTS = Path(__file__).parent / "results" / "bus.json"


def start_server(protocol: str, link: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "reverie.cli", "sim", "serve-bus", f"protocol={protocol}", f"link={link}",
           f"baudrate={BAUD}", "camera_fps=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        raise SystemExit(f"serve-bus did not start for {protocol}")
    return proc


def measure(bus: ServoBus, cycles: int) -> tuple[np.ndarray, float]:
    """Seconds per cycle (cycles,), and bytes on the wire per cycle."""
    goals = bus.sync_read("Present_Position", IDS)
    for _ in range(20):  # warm-up
        bus.sync_read("Present_Position", IDS)
        bus.sync_write("Goal_Position", goals)
    before = bus.stats.bytes_out + bus.stats.bytes_in
    times = np.empty(cycles)
    for k in range(cycles):
        t0 = time.perf_counter()
        present = bus.sync_read("Present_Position", IDS)
        bus.sync_write("Goal_Position", present)
        times[k] = time.perf_counter() - t0
    per_cycle = (bus.stats.bytes_out + bus.stats.bytes_in - before) / cycles
    return times, per_cycle


def main(cycles: int = 500) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for protocol in ("feetech", "dynamixel"):
            link = Path(tmp) / f"bench-{protocol}"
            proc = start_server(protocol, link)
            try:
                bus = ServoBus(str(link), protocol, baudrate=BAUD, timeout_s=0.05, retries=2,
                               models=MODELS[protocol])
                bus.connect()
                for delay in (250, 0):
                    for i in IDS:
                        bus.write(i, "Return_Delay_Time", delay)
                    bus.set_torque(IDS, True)
                    times, wire_bytes = measure(bus, cycles)
                    bus.set_torque(IDS, False)
                    wire_ms = wire_bytes * 10 / BAUD * 1e3
                    rows.append({
                        "protocol": protocol, "return_delay_us": delay * 2, "cycles": cycles,
                        "median_ms": float(np.median(times) * 1e3),
                        "p99_ms": float(np.percentile(times, 99) * 1e3),
                        "max_ms": float(times.max() * 1e3),
                        "bytes_per_cycle": wire_bytes, "wire_ms": wire_ms,
                        "wire_plus_delay_ms": wire_ms + len(IDS) * delay * 2e-3,
                        "retries": bus.stats.retries, "timeouts": bus.stats.timeouts,
                    })
                bus.close()
            finally:
                proc.terminate()
                proc.wait(timeout=10)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "bus control cycle: sync read 6 x Present_Position + sync write 6 x Goal_Position",
        "baud": BAUD, "host": platform.node(), "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "rows": rows}, indent=2) + "\n")
    header = (f"{'protocol':<10} {'ret.delay':>9} {'median':>8} {'p99':>8} {'max':>8} {'bytes':>6} "
              f"{'wire':>7} {'wire+delay':>10} {'median/limit':>12}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['protocol']:<10} {r['return_delay_us']:>7}us {r['median_ms']:>6.2f}ms {r['p99_ms']:>6.2f}ms "
              f"{r['max_ms']:>6.2f}ms {r['bytes_per_cycle']:>6.0f} {r['wire_ms']:>5.2f}ms "
              f"{r['wire_plus_delay_ms']:>8.2f}ms {r['median_ms'] / r['wire_plus_delay_ms']:>11.2f}x")
    print(f"(wrote {RESULTS})")
    return rows


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
