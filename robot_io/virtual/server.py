"""The virtual robot's server: a physics arm answering servo packets on a pseudo-terminal.

`reverie sim serve-bus protocol=<family> link=PATH` (sim/serve_bus.py) builds the simulator's arm
and hands it here. This opens a pseudo-terminal, symlinks its slave side at `link` (so clients open
it like /dev/ttyACM0) and answers servo packets on it (robot_io/virtual/bus.py) while the physics
runs in real time. Camera frames go to memory-mapped files (robot_io/virtual/frames.py). The link
and frame files are removed on exit (Ctrl-C, SIGTERM, or the disconnect_after_s fault).

A pty has no baud rate, so a client opened at the "wrong" baud still talks to it; the server
emulates the timing of `baudrate` instead. Options: reverie/conf/serve_bus.yaml.

With `instruction="touch the red cube"` the server also scores that task, through the world it was
given (the sim's privileged state), at `score_hz`, and keeps `<link>.status` (JSON: instruction,
success, and the time of the latest onset of success) current, so a client that only speaks the servo
protocol, such as the torch-free runtime or the robot env, can report whether an episode succeeded.

Between episodes a client resets the scene through `<link>.reset` (robot_io/virtual/scene.py): the
world lays out the scene of that seed and a new scored instruction, success cleared. The arm is left
where it stands (the client moves it home first), so the servo registers never jump.

The world is any object with: `physics` (the servo interface of robot_io/virtual/bus.py, plus
render(camera) and close()), `tracker(instruction)` (an object whose success() says whether the
instruction is achieved; ConfigError for one it cannot score) and `reset(seed, instruction)` (a new
scene, returning the instruction it scores and the cube positions). Nothing here imports the simulator.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
import tty
from collections import deque
from pathlib import Path

from reverie.errors import ConfigError, ReverieError, did_you_mean
from reverie.robot_io import servo_families
from reverie.robot_io.virtual.bus import Faults, VirtualBus
from reverie.robot_io.virtual.frames import FrameWriter
from reverie.robot_io.virtual.scene import read_json, request_path, status_path, write_json

log = logging.getLogger(__name__)
IDLE_STEP_S = 0.01  # physics keeps time while no packets arrive


class _Stop(Exception):
    pass


def _raise_stop(*_):
    raise _Stop


def open_link(link: Path) -> tuple[int, int]:
    """openpty, raw mode, slave symlinked at `link`. Returns (master, slave) fds."""
    if link.is_symlink():
        target = os.readlink(link)
        if target.startswith("/dev/pts/") and not Path(target).exists():
            link.unlink()  # left behind by a server that was killed
    if link.exists() or link.is_symlink():
        raise ConfigError(f"link {link} already exists: another serve-bus may be running; stop it or "
                          f"pick another link=PATH")
    master, slave = os.openpty()
    # Raw mode on our side too, so no echo or newline translation ever touches the packets, even
    # before a client has configured the port.
    tty.setraw(slave)
    tty.setraw(master)
    os.set_blocking(master, False)
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.ttyname(slave), link)
    return master, slave


def check_options(cfg) -> Faults:
    """Refuse a bad protocol or fault setting before anything is built; returns the faults."""
    known = servo_families.names()
    if cfg.protocol not in known:
        raise ConfigError(f"protocol={cfg.protocol!r}{did_you_mean(cfg.protocol, known)}: use "
                          + " or ".join(f"protocol={name}" for name in known))
    try:
        return Faults(float(cfg.drop), float(cfg.corrupt), float(cfg.delay_ms), tuple(cfg.alarm_ids))
    except ValueError as e:
        raise ConfigError(str(e)) from e


def served_cameras(cfg) -> tuple[str, ...]:
    return tuple(cfg.cameras) if cfg.camera_fps > 0 else ("front",)


def serve(cfg, world) -> int:
    """Serve `world.physics` as a servo bus on cfg.link until stopped (options: conf/serve_bus.yaml)."""
    faults = check_options(cfg)
    physics, cameras = world.physics, served_cameras(cfg)
    try:
        bus = VirtualBus(cfg.protocol, physics, ids=tuple(cfg.ids),
                         models=tuple(cfg.models) if cfg.models else None, faults=faults,
                         baudrate=cfg.baudrate, seed=cfg.seed)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"serve-bus: {e}") from e

    goal_log = open(cfg.goal_log, "w") if cfg.goal_log else None  # noqa: SIM115 (closed on exit below)
    if goal_log:  # every goal a servo accepts, for checks that no goal left the limits (benchmarks/faults.py)
        goal_log.write("time id goal present\n")
        bus.on_goal = lambda i, goal, present: goal_log.write(f"{time.time():.4f} {i} {goal} {present}\n")
    link = Path(cfg.link)
    master, slave = open_link(link)
    writers = {}
    prefix = cfg.frames or f"{link}.frames"
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        if cfg.camera_fps > 0:
            h, w = cfg.image_size
            writers = {c: FrameWriter(f"{prefix}.{c}", h, w) for c in cameras}
            # The first render creates the GL context (hundreds of ms). Do it before "ready" so no
            # client exchange ever waits behind it, and so a frame exists when clients connect.
            for camera, writer in writers.items():
                writer.write(physics.render(camera), time.time())
        log.info("serving %s bus (ids %s) on %s -> %s", cfg.protocol, list(cfg.ids), link, os.readlink(link))
        request_path(link).unlink(missing_ok=True)  # a request left for an earlier server is not ours
        scene = Scene(world, writers, link, cfg.instruction, float(cfg.score_hz))
        print(f"ready {link}", flush=True)  # tests and scripts wait for this line
        _loop(bus, physics, master, writers, cfg, scene)
    except (_Stop, KeyboardInterrupt):
        log.info("stopping")
    finally:
        link.unlink(missing_ok=True)
        status_path(link).unlink(missing_ok=True)
        request_path(link).unlink(missing_ok=True)
        for writer in writers.values():
            writer.close()
        for fd in (master, slave):
            try:
                os.close(fd)
            except OSError:
                pass
        physics.close()
        if goal_log:
            goal_log.close()
        log.info("served %s", bus.stats)
    return 0


class Scorer:
    """Scores one instruction on the served scene and publishes it in `<link>.status`."""

    def __init__(self, instruction: str, tracker, path: Path, hz: float, reset: dict | None = None):
        self.instruction, self.tracker, self.path, self.period = instruction, tracker, path, 1.0 / hz
        self.next, self.success_at, self.started = 0.0, None, time.time()
        self.succeeding = False
        self.reset = reset or {}  # the acknowledgement of the scene reset that made this episode
        self.write()

    def update(self, now: float) -> None:
        if now < self.next:
            return
        self.next = now + self.period
        succeeding = self.tracker.success()
        # `success` stays True once reached; `success_time` is the latest onset, so a client that
        # runs several episodes (robot_io/robot_env.py) counts a success only if it began after its
        # episode started.
        if succeeding and not self.succeeding:
            self.success_at = time.time()
            self.write()
        self.succeeding = succeeding

    def write(self) -> None:
        write_json(self.path, {"instruction": self.instruction, "success": self.success_at is not None,
                               "success_time": self.success_at, "started": self.started, **self.reset})


class Scene:
    """The served episode: serves `<link>.reset` requests (robot_io/virtual/scene.py) through the
    world's reset(seed, instruction) and owns the Scorer of the current instruction (None: nothing scored)."""

    def __init__(self, world, writers: dict, link: Path, instruction: str | None, score_hz: float):
        self.world, self.physics, self.writers, self.hz = world, world.physics, writers, float(score_hz)
        self.request, self.status = request_path(link), status_path(link)
        self.scorer = self._scorer(instruction) if instruction else None

    def _scorer(self, instruction: str, reset: dict | None = None) -> Scorer:
        return Scorer(instruction, self.world.tracker(instruction), self.status, self.hz, reset)

    def update(self, now: float) -> None:
        if self.request.exists():
            self.serve(read_json(self.request))
        if self.scorer is not None:
            self.scorer.update(now)

    def serve(self, request: dict | None) -> None:
        self.request.unlink(missing_ok=True)  # consumed: each request resets once
        if request is None or "id" not in request:
            log.warning("ignoring an unreadable scene reset request")
            return
        try:
            self.scorer = self.reset(request.get("seed"), request.get("instruction"), request["id"])
        except (ReverieError, TypeError, ValueError) as e:
            log.warning("scene reset %s refused: %s", request["id"], e)
            write_json(self.status, {**(read_json(self.status) or {}), "reset": request["id"], "error": str(e)})

    def reset(self, seed, instruction: str | None, rid) -> Scorer:
        # The world lays out the scene and keeps the arm where the bus holds it (or refuses first).
        instruction, cubes = self.world.reset(seed, instruction)
        for camera, writer in self.writers.items():  # no client frame from before the reset after the ack
            writer.write(self.physics.render(camera), time.time())
        log.info("scene reset %s: seed %s, %r", rid, seed, instruction)
        return self._scorer(instruction, {"reset": rid, "seed": seed, "cubes": cubes})


def _loop(bus, physics, master: int, writers: dict, cfg, scene: Scene) -> None:
    pending: deque[tuple[float, bytes]] = deque()
    started = time.monotonic()
    frame_period = 1.0 / cfg.camera_fps if cfg.camera_fps > 0 else None
    next_frame = started
    disconnect_at = started + cfg.disconnect_after_s if cfg.disconnect_after_s is not None else None
    bus.advance(started)
    while True:
        now = time.monotonic()
        if disconnect_at is not None and now >= disconnect_at:
            log.warning("disconnecting (disconnect_after_s=%s fault)", cfg.disconnect_after_s)
            return
        wake = [now + IDLE_STEP_S]
        if pending:
            wake.append(pending[0][0])
        elif frame_period is not None:
            wake.append(next_frame)
        if disconnect_at is not None:
            wake.append(disconnect_at)
        readable, _, _ = select.select([master], [], [], max(0.0, min(wake) - now))
        if readable:
            try:
                data = os.read(master, 4096)
            except (BlockingIOError, InterruptedError):
                data = b""
            if data:
                # Half duplex: a host that talks again has stopped listening, and a reply not yet sent
                # would collide with its packet, so it is not sent (a unicast ACTION's status, which
                # the Dynamixel SDK never reads, must not become the answer to its next READ).
                bus.stats["talked_over"] += len(pending)
                pending.clear()
                pending.extend(bus.receive(data, time.monotonic()))
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            if select.select([master], [], [], 0)[0]:
                break  # the host spoke while we were busy: read it first (it may cancel this reply)
            _, reply = pending.popleft()
            try:
                os.write(master, reply)
            except BlockingIOError:
                pass  # nobody reads the port and its buffer is full: the reply is lost on the wire
        if not pending:
            bus.advance(now)
            scene.update(now)  # scene resets too happen between exchanges, never inside one
            # Render only between exchanges: a frame takes milliseconds, which would otherwise
            # land inside some reply's return delay.
            if frame_period is not None and now >= next_frame:
                for camera, writer in writers.items():
                    writer.write(physics.render(camera), time.time())
                next_frame = max(next_frame + frame_period, now)
