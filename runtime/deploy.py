"""`reverie deploy bundle=BUNDLE robot=<sim|virtual link=PATH|feetech port=...|dynamixel port=...> instruction="..."`

Runs an exported policy on a robot without torch (numpy, onnxruntime, tokenizers, pyserial, OpenCV).

Options (key=value):
  episodes=1        episodes to run; steps=N caps each (default: sim time limit 300, robots 300)
  task=all seed=0   sim: task family and scene seed of the first episode (episode k: seed+k);
                    virtual: episode k>0 asks serve-bus for the scene of seed+k (robot_io/virtual/scene.py)
  link= frames=     robot=virtual: the serve-bus link, and its frame-file prefix (default <link>.frames)
  port= camera= calibration=   feetech/dynamixel: serial port, OpenCV camera (index or path) for the
                    bundle's main camera (its other cameras: the arm config's), calibration JSON
  arm=NAME|YAML     this robot's own arm config (default: the shipped config the bundle was exported
                    for): its joint limits, max_step and max_velocity are authoritative; the bundle can
                    only narrow them, and one asking for more is refused before torque
  stdin=true        read new instructions from standard input, one per line
  socket=PORT token=TOKEN      also accept them on 127.0.0.1:PORT (0: a free port), token required
  record=STORE round=0         record the episodes into an episode store (source=policy)
  threads=1         onnxruntime threads
  report=PATH       also write the per-episode summaries (rate, jitter, deadline misses, bus faults
                    ridden out, how the arm was left...) as JSON; after a fault too, the episode it
                    cut short (or a last entry) carrying `fault`. Its folder must exist.

Before anything moves: the bundle's checksums and graph signatures, the instruction, the bundle's
limits against the robot's own, and the robot's cameras (every one the bundle reads), joints and
rate against the manifest. While running: the loop keeps the manifest's rate with deadlines measured
on time.perf_counter, every action goes through the robot's safety limits, and any fault or
non-finite action ends in a safe stop (robot: safe pose, then torque off).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from reverie.errors import ConfigError, HardwareError, ReverieError, did_you_mean
from reverie.runtime import targets
from reverie.runtime.bundle import Bundle
from reverie.runtime.instructions import InstructionChannel, SocketServer, StdinReader

log = logging.getLogger(__name__)
ROBOTS = targets.kinds()  # sim, virtual, then one per servo family (runtime/targets.py)
KEYS = {"bundle", "robot", "instruction", "episodes", "steps", "task", "seed", "link", "frames", "port", "arm",
        "camera", "calibration", "stdin", "socket", "token", "record", "round", "threads", "report"}
CHOICES = {"robot": ROBOTS, "stdin": ("true", "false")}  # for shell completion
REQUIRED = ("bundle", "robot", "instruction")


def parse(argv: list[str]) -> dict:
    """key=value arguments (no hydra: the runtime path imports no config framework). With --cfg job
    the result carries `show`: what deploy would run with, required options left at ???."""
    from reverie.cli import cfg_flag

    if any(a in ("-h", "--help") for a in argv):
        return {"help": True}
    argv = list(argv)
    show = cfg_flag(argv)
    args = {}
    for a in argv:
        key, eq, value = a.partition("=")
        if not eq:
            raise ConfigError(f"unexpected argument {a!r}: deploy takes key=value options ({', '.join(sorted(KEYS))})")
        if key not in KEYS:
            raise ConfigError(f"unknown option {key!r}{did_you_mean(key, sorted(KEYS))}; deploy takes "
                              f"{', '.join(sorted(KEYS))}")
        args[key] = value
    for key in REQUIRED:
        if key not in args and not show:
            raise ConfigError(f'missing {key}=...; usage: reverie deploy bundle=BUNDLE robot=sim instruction="..."')
    robots = targets.kinds()  # a family registered at run time is a robot= too
    if args.get("robot", robots[0]) not in robots:
        raise ConfigError(f"robot={args['robot']!r}{did_you_mean(args['robot'], robots)}; choose one of "
                          f"{', '.join(robots)}")
    for key, default in (("episodes", 1), ("steps", 300), ("seed", 0), ("round", 0), ("threads", 1)):
        try:
            args[key] = int(args.get(key, default))
        except ValueError as e:
            raise ConfigError(f"{key}={args[key]!r} must be an integer") from e
    if args["episodes"] < 1 or args["steps"] < 1 or args["threads"] < 1:
        raise ConfigError(f"episodes={args['episodes']}, steps={args['steps']}, threads={args['threads']}: each "
                          "must be at least 1")
    if args.get("socket") is not None:
        if not (args["socket"].isdigit() and int(args["socket"]) <= 65535):
            raise ConfigError(f"socket={args['socket']!r} must be a TCP port number 0-65535 (0: any free port)")
        args["socket"] = int(args["socket"])
    if args.get("report"):
        check_report_path(Path(args["report"]))
    args["stdin"] = str(args.get("stdin", "true")).lower() in ("1", "true", "yes")
    return args | ({"show": True} | {k: args.get(k, "???") for k in REQUIRED} if show else {})


def check_report_path(path: Path) -> None:
    """Before anything runs: a report that could not be written at the end would lose the run's numbers."""
    if path.is_dir():
        raise ConfigError(f"report={path} is a folder; pass a file path, e.g. report={path / 'report.json'}")
    if not path.parent.is_dir():
        raise ConfigError(f"report={path}: folder {path.parent} does not exist; create it first or pick another path")


def write_report(path: Path, results: list[dict]) -> None:
    try:
        path.write_text(json.dumps(results, indent=1))
    except OSError as e:
        raise ConfigError(f"could not write report={path} ({e.strerror}); free space or pick another path") from e


@dataclasses.dataclass
class EpisodeStats:
    steps: int = 0
    success: bool | None = None
    misses: int = 0
    periods: list = dataclasses.field(default_factory=list)   # s between consecutive observations
    act_ms: list = dataclasses.field(default_factory=list)    # policy step latency
    clamped: int = 0
    instructions: int = 1
    stopped: str = ""
    faults: dict = dataclasses.field(default_factory=dict)    # servo arms: bus noise ridden out

    def summary(self, hz: float) -> dict:
        p = np.asarray(self.periods) if self.periods else np.zeros(1)
        return {"steps": self.steps, "success": self.success, "rate_hz": float(1.0 / p.mean()) if p.mean() else 0.0,
                "target_hz": hz, "jitter_ms": float(p.std() * 1e3), "period_p99_ms": float(np.percentile(p, 99) * 1e3),
                "deadline_misses": self.misses, "miss_fraction": self.misses / max(self.steps, 1),
                "policy_p50_ms": float(np.percentile(self.act_ms, 50)) if self.act_ms else 0.0,
                "policy_p99_ms": float(np.percentile(self.act_ms, 99)) if self.act_ms else 0.0,
                "clamped_steps": self.clamped, "instructions": self.instructions, "stopped": self.stopped,
                "faults": self.faults}


def make_target(bundle: Bundle, args: dict):
    return targets.open_target(bundle.manifest, args["robot"], args)


class Deployment:
    """The control loop over a verified bundle, a connected target and an instruction channel."""

    def __init__(self, bundle: Bundle, target, channel: InstructionChannel, recorder=None):
        self.bundle, self.target, self.channel, self.recorder = bundle, target, channel, recorder
        self.period = 1.0 / bundle.control_hz
        self.current: EpisodeStats | None = None

    def episode(self, max_steps: int) -> EpisodeStats:
        stats = self.current = EpisodeStats()  # the episode in progress, for a report cut short by a fault
        # A servo arm (ArmTarget's robot_io.Robot) counts the bus faults it rode out since connect.
        fault_counts = getattr(getattr(self.target, "robot", None), "fault_counts", None)
        faults_before = fault_counts() if fault_counts else {}
        text, embedding, version = self.channel.current()
        self.bundle.reset()
        obs = self.target.reset(text)                        # robots move to their home pose here
        started = time.time()
        print(f"episode started at {self.bundle.control_hz:g} Hz: {text}", flush=True)
        if self.recorder:
            self.recorder.begin(text)
            self.recorder.observe(obs, time.time())
        last_obs = time.perf_counter()
        deadline = last_obs + self.period
        first_version = stats_version = version
        while True:
            text, embedding, version = self.channel.current()  # a new instruction applies from here
            if version != stats_version:
                print(f"step {stats.steps}: following instruction {version}: {text}", flush=True)
                stats_version = version
            tick = time.perf_counter()
            action = self.bundle.act_on(obs, embedding)          # every camera the bundle reads
            stats.act_ms.append((time.perf_counter() - tick) * 1e3)
            if not np.all(np.isfinite(action)):
                raise HardwareError(f"the policy produced a non-finite action {action.tolist()} at step "
                                    f"{stats.steps + 1}; stopping the arm (check the bundle's parity numbers)")
            if self.recorder:
                self.recorder.act(action)
            late = False
            if not self.target.paced:  # the sim returns at once: hold the command to its tick
                now = time.perf_counter()
                late = now > deadline
                if late:
                    deadline = now  # restart the schedule instead of bursting to catch up
                else:
                    time.sleep(deadline - now)
                deadline += self.period
            obs, done, info = self.target.step(action)     # robots: write, wait for the tick, observe
            now = time.perf_counter()
            stats.periods.append(now - last_obs)
            # A miss: the command went out after its tick, or the step took over 1.5 periods (the
            # robot_io loop report's "late" threshold), e.g. a slow camera or serial read.
            late = late or bool(info.get("late", False)) or now - last_obs > 1.5 * self.period
            last_obs = now
            stats.misses += int(late)
            stats.clamped += int(info.get("clamped", False))
            stats.steps += 1
            stats.instructions = version - first_version + 1
            if "success" in info:
                stats.success = bool(stats.success) or info["success"]
            last = done or stats.steps >= max_steps
            if self.recorder:
                self.recorder.observe(obs, time.time(), info.get("reward", 0.0), last, info.get("terminal", False))
            if last:
                break
        if fault_counts:
            stats.faults = {k: v - faults_before.get(k, 0) for k, v in fault_counts().items()}
        if stats.success is None and hasattr(self.target, "episode_success"):
            stats.success = self.target.episode_success(started)
        if self.recorder:
            notes = "; ".join(f"instruction {v}: {t}" for v, t in self.channel.changes if v > first_version)
            self.recorder.end(stats.success, notes)
        self.current = None
        return stats


def print_episode(i: int, s: dict) -> None:
    success = "n/a" if s["success"] is None else ("yes" if s["success"] else "no")
    print(f"episode {i}: success {success}, {s['steps']} steps at {s['rate_hz']:.1f} Hz (target "
          f"{s['target_hz']:g}), jitter {s['jitter_ms']:.2f} ms, p99 period {s['period_p99_ms']:.1f} ms, "
          f"{s['deadline_misses']} deadline misses ({100 * s['miss_fraction']:.2f}%), policy step p50 "
          f"{s['policy_p50_ms']:.2f} ms p99 {s['policy_p99_ms']:.2f} ms, {s['instructions']} instruction(s)"
          + (f"; bus: {f['reads_retried']} reads retried, {f['read_faults']} failed, {f['steps_held']} steps "
             f"held" if (f := s.get("faults")) else ""), flush=True)


def deploy(args: dict, results: list[dict] | None = None) -> list[dict]:
    """Verify, connect, check, run; always ends with the target stopped. Returns per-episode summaries,
    appended to `results` as they come: after a fault it holds the episodes that ran, the last one cut
    short with its `fault`."""
    if args.get("record"):  # before anything moves: the robot's install may not have the recording extra
        try:
            import reverie.datasets.store  # noqa: F401  (zarr, which recording.py imports only when it opens the store)
        except ModuleNotFoundError as e:
            raise ConfigError(f"record= needs the Python module {e.name!r}, which this install lacks: "
                              'pip install "reverie[record]", or deploy without record=') from e
    bundle = Bundle.load(args["bundle"], threads=args["threads"])       # BundleError before anything moves
    channel = InstructionChannel(bundle.encoder.encode, bundle.max_chars)
    channel.set(args["instruction"])                                    # ConfigError before anything moves
    target = make_target(bundle, args)
    server = recorder = run = None
    results = [] if results is None else results
    try:
        cameras, state_dim, action_dim, hz = target.describe()         # nothing powered yet
        bundle.check_robot(cameras, state_dim, action_dim, hz, what=args["robot"], camera_fix=target.camera_fix)
        if args.get("socket") is not None:                              # token and port, before torque
            server = SocketServer(channel, int(args["socket"]), args.get("token"))
        target.connect()                                                # torque on where the arm is
        if server:
            server.start()
            print(f"instructions: 127.0.0.1:{server.port} token {server.token}", flush=True)
        if args["stdin"]:
            StdinReader(channel).start()
        if args.get("record"):
            from reverie.runtime.recording import Recorder

            recorder = Recorder(args["record"], bundle.cameras, bundle.state_dim, bundle.action_dim,
                                bundle.control_hz, bundle.manifest["robot"]["name"], args["round"])
        run = Deployment(bundle, target, channel, recorder)
        for i in range(args["episodes"]):
            stats = run.episode(args["steps"])
            results.append(stats.summary(bundle.control_hz))
            print_episode(i, results[-1])
    except (ReverieError, KeyboardInterrupt) as e:
        if recorder:
            recorder.discard()
        outcome = target.safe_stop()
        log.error("safe stop: %s", outcome)
        if run is not None and run.current is not None:
            results.append({**run.current.summary(bundle.control_hz), "stopped": outcome,
                            "fault": str(e) or "interrupted"})
        if isinstance(e, KeyboardInterrupt):
            raise
        raise type(e)(f"{e}\n(safe stop: {outcome})") from e
    finally:
        if server:
            server.stop()
        if recorder:
            recorder.close()
        target.close()
    parked = getattr(getattr(target, "robot", None), "parked", "")  # what the final disconnect did
    if parked:
        print(f"arm: {parked}", flush=True)
        if results:
            results[-1]["stopped"] = parked
    return results


def main(argv: list[str]) -> int:
    args = parse(list(argv))
    if args.get("help"):
        print(__doc__)
        return 0
    if args.pop("show", False):
        print("\n".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in args.items()))
        return 0
    results: list[dict] = []
    try:
        deploy(args, results)
    except (ReverieError, KeyboardInterrupt) as e:  # the report still tells what ran, and how it ended
        if not (results and "fault" in results[-1]):
            results.append({"fault": str(e) or "interrupted"})
        raise
    finally:
        if args.get("report"):
            write_report(Path(args["report"]), results)
    if len(results) > 1:
        rates = [r["success"] for r in results if r["success"] is not None]
        if rates:
            print(f"success {sum(rates)}/{len(rates)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
