"""`reverie record robot=<arm> teleop=<keyboard|leader> instruction="..." episodes=N fps=30 out=STORE`

Records teleoperated episodes from a robot into an episode store: created on first use, appended
to afterwards when its keys, shapes, dtypes and fps match what this robot and its cameras record
(otherwise refused, the store untouched; a store from before `correction` or `capture_time/<camera>`
existed is appended to without them). Per episode: the arm goes to its home pose, then each control
step stores the observation o_t (camera images, joint state, measured timestamp) and the action a_t
the teleop device commanded after seeing it, converted into the robot's action space and sent
through the same safety filter a policy's actions go through. After each episode it prints the
achieved loop rate, jitter and dropped camera frames, with a warning when below target.

Operator keys (terminal): Enter start, Space stop and keep, x discard and record again, + success,
- failure, c toggle a correction segment (stored per row in `correction`), Esc stop, keep this
episode and quit. Rows hold `timestamp` (when the joints were read) and `capture_time/<camera>`
(when each image was captured), both measured.
With start=auto episodes begin right after the home move, for scripted runs.

Interruptions: episodes are committed one by one, so Ctrl-C, a crash or an unplugged port never
touch committed episodes. The interrupted episode is discarded, not kept: a demonstration cut off
by a fault ends in the fault, and training on it would teach exactly that. The arm then goes to its
safe pose if the bus still answers, and the message says how many episodes the store holds.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable

import numpy as np

from reverie.config import command_config
from reverie.errors import ConfigError, HardwareError, ReverieError, did_you_mean
from reverie.robot_io.loop_report import LoopReport, loop_report
from reverie.robot_io.teleop import Event
from reverie.specs import ArraySpec

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Plan:
    instruction: str
    episodes: int
    fps: float
    max_steps: int                 # an episode ends here if nobody presses Space
    start: str = "key"             # key | auto
    source: str = "teleop"
    round: int = 0
    start_timeout_s: float | None = None  # key mode: give up waiting for Enter after this long


@dataclasses.dataclass
class EpisodeResult:
    index: int                     # store index of the committed episode
    steps: int
    success: bool | None
    report: LoopReport


def record_schema(robot) -> dict[str, ArraySpec]:
    from reverie.datasets.schema import make_schema

    obs = robot.observation_spec()
    cameras = {k.split("/", 1)[1]: tuple(s.shape[:2]) for k, s in obs.items() if k.startswith("image/")}
    schema = make_schema(cameras, state_dim=obs["state"].shape[0], action_dim=robot.action_spec().shape[0])
    schema["correction"] = ArraySpec((), "bool", units="True while the operator marked a correction")
    for camera in cameras:  # `timestamp` is when the joints were read; each image has its own time
        schema[f"capture_time/{camera}"] = ArraySpec((), "float64", units="s, when the camera frame was captured")
    return schema


def optional_key(key: str) -> bool:
    """Keys added to recordings after the first stores were written: a store that lacks them is
    appended to without them, so its episodes keep one set of columns (see open_or_create_store)."""
    return key == "correction" or key.startswith("capture_time/")


def schema_mismatch(stored: dict[str, ArraySpec], recorded: dict[str, ArraySpec],
                    stored_fps: float, fps: float) -> list[str]:
    """What keeps a session from appending to a store: keys, per-step shapes and dtypes, and fps.
    Units and bounds are descriptions, not layout, so they may differ between versions."""
    def spec(s: ArraySpec) -> str:
        return f"{'x'.join(map(str, s.shape)) or 'scalar'} {s.dtype}"

    problems = []
    lacking = [k for k in recorded if k not in stored and not optional_key(k)]
    if lacking:
        problems.append(f"this robot records {lacking}, which the store lacks")
    unknown = [k for k in stored if k not in recorded]
    if unknown:
        problems.append(f"the store holds {unknown}, which this robot does not record")
    for key in (k for k in recorded if k in stored):
        if spec(stored[key]) != spec(recorded[key]):
            problems.append(f"{key} is {spec(stored[key])} in the store but {spec(recorded[key])} from this robot")
    if abs(stored_fps - fps) > 1e-6:
        problems.append(f"the store was recorded at {stored_fps:g} fps, this session runs at {fps:g} (fps=)")
    return problems


def open_or_create_store(out: str, robot, fps: float):
    """A new store at `out`, or the existing one opened for appending once its schema matches what
    this robot and its cameras write. Optional keys the store predates are left out of the new
    rows rather than refusing: the older episodes cannot gain them, and a column present in only
    some episodes would break readers that stack them."""
    from pathlib import Path

    from reverie.datasets.store import EpisodeStore

    schema = record_schema(robot)
    try:  # read-only first: a store we refuse is left exactly as it was (mode 'a' may truncate a tail)
        existing = EpisodeStore.open(out, "r")
    except ReverieError:
        path = Path(out)
        if path.exists() and not (path.is_dir() and not any(path.iterdir())):
            raise  # something that is not a store (or a damaged one): never overwrite it
        return EpisodeStore.create(out, schema, fps=fps, robot=robot.arm.name)
    with existing:
        problems = schema_mismatch(existing.schema, schema, existing.fps, fps)
    if problems:
        raise ConfigError(f"cannot append to {out}: " + "; ".join(problems) + ". Its episodes were not "
                          f"touched. Record into a new out=, or with the settings of its earlier sessions "
                          f"(same cameras and resolution, fps={existing.fps:g})")
    store = EpisodeStore.open(out, "a")
    skipped = [k for k in schema if k not in store.schema]
    if skipped:
        log.warning("%s predates %s; this session is appended without them, like its earlier episodes "
                    "(record into a new out= to keep them)", out, skipped)
    return store


class Recorder:
    """Runs the episode loop for one robot, one teleop device and one store."""

    def __init__(self, robot, teleop, store, plan: Plan, say: Callable[[str], None] = print):
        self.robot, self.teleop, self.store, self.plan, self.say = robot, teleop, store, plan, say
        self.results: list[EpisodeResult] = []
        self._quit = False

    def run(self) -> list[EpisodeResult]:
        done = 0
        while done < self.plan.episodes and not self._quit:
            if self.plan.start == "key" and not self._wait_for_start(done):
                break
            result = self._episode(done)
            if result is not None:
                self.results.append(result)
                done += 1
        return self.results

    def _wait_for_start(self, done: int) -> bool:
        self.say(f"episode {done + 1}/{self.plan.episodes}: press Enter to start ({self.teleop.help()})")
        while True:
            event = self.teleop.events.get(timeout=self.plan.start_timeout_s)
            if event is None:
                raise HardwareError(f"no Enter within {self.plan.start_timeout_s:g} s; stopped waiting")
            if event is Event.QUIT:
                self._quit = True
                return False
            if event is Event.START:
                return True

    def _episode(self, number: int) -> EpisodeResult | None:
        plan, robot = self.plan, self.robot
        ts = robot.reset(instruction=plan.instruction)
        self.teleop.events.drain()  # keys pressed during the home move are not meant for this episode
        self.teleop.begin(ts.observation["state"])
        writer = self.store.episode_writer(plan.instruction, source=plan.source, round=plan.round)
        success, correction, rerecord = None, False, False
        stamps, frames = [], {}
        try:
            for t in range(plan.max_steps):
                stop = False
                for event in self.teleop.events.drain():
                    if event is Event.STOP:
                        stop = True
                    elif event is Event.RERECORD:
                        stop = rerecord = True
                    elif event is Event.QUIT:
                        stop = self._quit = True
                    elif event in (Event.SUCCESS, Event.FAILURE):
                        success = event is Event.SUCCESS
                    elif event is Event.CORRECTION:
                        correction = not correction
                        lost = "" if "correction" in self.store.schema else " (not stored: the store predates it)"
                        self.say(f"  correction segment {'started' if correction else 'ended'} at step {t}{lost}")
                last = stop or t == plan.max_steps - 1
                state = ts.observation["state"]
                if last:
                    action, known = np.zeros(robot.action_spec().shape, np.float32), False
                else:
                    action, known = robot.action_for_target(self.teleop.target(state), state), True
                row = self._row(ts, t, action, known, last, correction)
                writer.add({k: v for k, v in row.items() if k in self.store.schema or not optional_key(k)})
                stamps.append(ts.info["timestamp"])
                for key, value in ts.info.items():
                    if key.startswith("frame/"):
                        frames.setdefault(key[6:], []).append(value[:2])
                if last:
                    robot.idle()  # saving can outlast the watchdog; the episode is over anyway
                    break
                ts = robot.step(action)
        except BaseException:
            writer.discard()  # see the module docstring: interrupted episodes are not kept
            raise
        if rerecord:
            writer.discard()
            self.say(f"episode {number + 1} discarded; recording it again")
            return None
        index = writer.commit(success=success)
        report = loop_report(stamps, plan.fps, frames)
        label = {True: "success", False: "failure", None: "unlabelled"}[success]
        self.say(f"episode {number + 1}/{plan.episodes} committed as #{index} ({label}): " + report.lines()[0])
        for line in report.lines()[1:]:
            self.say("  " + line)
        return EpisodeResult(index=index, steps=len(stamps), success=success, report=report)

    @staticmethod
    def _row(ts, t: int, action: np.ndarray, known: bool, last: bool, correction: bool) -> dict:
        row = {k: v for k, v in ts.observation.items() if k != "instruction"}
        row.update(action=action, action_mask=known, reward=np.float32(ts.reward if t else 0.0),
                   is_first=t == 0, is_last=last, is_terminal=False,
                   timestamp=np.float64(ts.info["timestamp"]), correction=correction)
        for key, (_, _, capture_time) in ((k, v) for k, v in ts.info.items() if k.startswith("frame/")):
            row[f"capture_time/{key[6:]}"] = np.float64(capture_time)
        return row


def make_teleop(cfg, arm):
    from reverie.robot_io.teleop import make_operator

    return make_operator(cfg.teleop, arm, key="teleop", leader=cfg.leader, leader_port=cfg.leader_port,
                         leader_calibration=cfg.leader_calibration)


def plan_from(cfg) -> Plan:
    if not cfg.instruction:
        raise ConfigError('record needs instruction="..." (what the operator demonstrates, in plain language)')
    if not cfg.out:
        raise ConfigError("record needs out=STORE, e.g. out=data/pick.zarr (created, or appended to)")
    if int(cfg.episodes) < 1 or float(cfg.fps) <= 0 or float(cfg.episode_s) <= 0:
        raise ConfigError("episodes, fps and episode_s must be positive")
    if cfg.start not in ("key", "auto"):
        raise ConfigError(f"start must be key or auto, got {cfg.start!r}{did_you_mean(cfg.start, ('key', 'auto'))}")
    return Plan(instruction=str(cfg.instruction), episodes=int(cfg.episodes), fps=float(cfg.fps),
                max_steps=max(2, int(round(float(cfg.episode_s) * float(cfg.fps)))), start=str(cfg.start),
                source=str(cfg.source), round=int(cfg.round))


def main(argv: list[str]) -> int:
    cfg = command_config("record", argv, __doc__)
    if cfg is None:
        return 0
    plan = plan_from(cfg)
    from reverie.robot_io.camera_setup import build_cameras
    from reverie.robot_io.config import arm_from_command
    from reverie.robot_io.keys import TerminalKeys
    from reverie.robot_io.robot import Robot

    keys = TerminalKeys.available()
    if plan.start == "key" and not keys:
        raise ConfigError("stdin is not a terminal, so no key can start an episode: pass start=auto")
    arm = arm_from_command(cfg)
    teleop = make_teleop(cfg, arm)
    robot = Robot(arm, cameras=build_cameras(arm.cameras), control_hz=plan.fps)
    store, recorder, before = None, None, 0
    try:
        teleop.connect()
        robot.connect()
        store = open_or_create_store(cfg.out, robot, plan.fps)
        before = store.num_episodes
        recorder = Recorder(robot, teleop, store, plan)
        if keys:
            with TerminalKeys(teleop.press):
                recorder.run()
        else:
            recorder.run()
        summary = f"recorded {len(recorder.results)} episode(s) into {cfg.out} ({store.num_episodes} in total)"
    except KeyboardInterrupt:
        kept = f"{_kept(store, before, cfg.out)}; the unfinished episode was discarded" if store else "nothing recorded"
        print(f"interrupted: {kept}", file=sys.stderr)
        return 130
    except HardwareError as e:
        if store is None:
            raise  # nothing was recorded yet: the error alone says it all
        raise HardwareError(f"recording stopped: {e}\n{_kept(store, before, cfg.out)}; the unfinished "
                            f"episode was discarded") from e
    finally:
        robot.disconnect()
        if robot.parked:
            print(f"{arm.name}: {robot.parked}", file=sys.stderr)
        teleop.close()
        if store is not None:
            store.close()
    print(summary)
    low = [r for r in recorder.results if r.report.below_target]
    if low:
        print(f"WARNING: {len(low)} episode(s) ran below {plan.fps:g} Hz; see the reports above")
    return 0


def _kept(store, before: int, out: str) -> str:
    return f"{store.num_episodes - before} new episode(s) committed to {out} are intact ({store.num_episodes} in total)"
