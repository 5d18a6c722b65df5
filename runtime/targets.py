"""What a deployment drives: the sim arm env, or a servo-bus arm (virtual or physical) via robot_io.

Both expose describe() -> ({camera key: image shape}, state dim, action dim, rate) before anything is
powered, `camera_fix` (how to give this robot a camera the bundle reads and it lacks),
connect() (servo arms: torque on where the arm is, no motion), reset(instruction) -> obs,
step(action) -> (obs, done, info), safe_stop() -> what it did, and `paced`: whether step() itself
waits for the control tick (robot_io.Robot does; the sim returns at once and the runtime paces it).
Every action passes the robot's safety limits (robot_io/safety.py) before it reaches a joint; for a
servo arm those are the robot's own (its arm config on this computer), which a bundle can only narrow.

The robot= kinds are a table (openers()): `sim`, then the servo-bus links (links()): `virtual`
(VirtualLink: the serve-bus link, its frame files and task score) and one SerialLink per servo family
in robot_io/servo_families.py. Each link owns what differs between them (the port option, the
servo check, the cameras and how to add one, the task score), so nothing here branches on a name.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from reverie.errors import BundleError, ConfigError, HardwareError, did_you_mean
from reverie.runtime import manifest as manifest_lib
from reverie.robot_io.safety import SafetyFilter

log = logging.getLogger(__name__)


class SimTarget:
    """The sim arm env at the bundle's cameras, rate and action scaling. Safety in servo-target space:
    joint ranges, at most the per-step delta from the previous target, at most twice it from where
    the joint is (the env's own lead bound)."""

    paced = False

    def __init__(self, manifest: dict, task: str = "all", seed: int = 0, time_limit: int = 300):
        try:
            from reverie.sim.arm_env import make_arm_env
        except ImportError as e:  # the robot's computer usually has no simulator
            raise ConfigError(f"robot=sim needs the simulator ({e.name} is not installed): pip install "
                              '"reverie[train]", or deploy to robot=virtual|feetech|dynamixel') from e

        robot = manifest["robot"]
        cameras = tuple(key.split("/", 1)[1] for key in manifest_lib.cameras(manifest))
        # The sim renders every camera at one size, the main camera's; check_robot names any other.
        h, w, _ = manifest["observation"]["image"]["shape"]
        self.hz = float(manifest["control_hz"])
        self.scale = np.asarray(robot["action_scale"], np.float64)                # (6,)
        self.mode = robot["action_mode"]
        self.env = make_arm_env(task, image_size=(h, w), cameras=cameras, control_hz=self.hz,
                                max_delta=tuple(self.scale), action_mode=self.mode, time_limit=time_limit)
        self.camera_fix = ""  # it renders every camera the bundle names (an unknown one fails above)
        phys = self.env.phys
        self.safety = SafetyFilter(phys.lower, phys.upper, 2 * self.scale, self.scale * self.hz)
        self.seed, self.episode = seed, 0
        self.clamped = 0

    @classmethod
    def open(cls, manifest: dict, robot: str, args: dict) -> "SimTarget":
        """robot=sim [task= seed= steps=]: the episode's time limit is the deployment's step cap."""
        return cls(manifest, task=args.get("task", "all"), seed=args["seed"], time_limit=args["steps"])

    def describe(self):
        spec = self.env.observation_spec()
        images = {k: v.shape for k, v in spec.items() if k.startswith("image/")}
        return images, spec["state"].shape[0], self.env.action_spec().shape[0], self.hz

    def connect(self) -> None:
        pass

    def reset(self, instruction: str) -> dict:
        try:
            ts = self.env.reset(seed=self.seed + self.episode, instruction=instruction)
        except ConfigError:
            # The sim scores only phrasings it can parse; any other text still drives the policy.
            ts = self.env.reset(seed=self.seed + self.episode)
            log.warning("the sim cannot score %r; its success is for %r", instruction, self.env.instruction)
        self.episode += 1
        return ts.observation

    def _goal(self, action: np.ndarray, target: np.ndarray) -> np.ndarray:
        if self.mode == "delta":
            return target + action * self.scale
        lo, hi = self.env.phys.lower, self.env.phys.upper
        return lo + (action + 1.0) / 2.0 * (hi - lo)

    def _action(self, goal: np.ndarray, target: np.ndarray) -> np.ndarray:
        if self.mode == "delta":
            return (goal - target) / self.scale
        lo, hi = self.env.phys.lower, self.env.phys.upper
        return 2.0 * (goal - lo) / (hi - lo) - 1.0

    def step(self, action: np.ndarray):
        target = self.env.commanded                                               # (6,) servo targets
        goal = self._goal(np.clip(action, -1, 1), target)
        safe, clamped = self.safety.filter(goal, self.env.phys.qpos(), target, 1.0 / self.hz)
        self.clamped += clamped.any
        ts = self.env.step(np.clip(self._action(safe, target), -1, 1).astype(np.float32))
        return ts.observation, ts.last(), {"success": bool(ts.info.get("success")), "reward": ts.reward,
                                           "terminal": ts.last() and ts.discount == 0.0}

    def safe_stop(self) -> str:
        return "sim: episode ended, arm holds its targets"

    def close(self) -> None:
        self.env.close()


class ArmTarget:
    """A servo-bus arm through robot_io.Robot, which clamps every goal with its SafetyFilter, holds
    position through its watchdog, and parks (safe pose, then torque off) on any fault."""

    paced = True

    def __init__(self, arm, hz: float, status: Path | None = None, seed: int = 0, camera_fix: str = ""):
        from reverie.robot_io.camera_setup import build_cameras
        from reverie.robot_io.robot import Robot

        self.robot = Robot(arm, cameras=build_cameras(arm.cameras), control_hz=hz)
        self.hz, self.camera_fix = hz, camera_fix
        self.status = status  # the virtual robot's task score (`reverie sim serve-bus instruction=...`)
        self.seed, self.episode = seed, 0  # the virtual robot's scene of each episode after the first

    def episode_success(self, since: float) -> bool | None:
        """Success since wall time `since`, when the robot scores its task (the virtual one can);
        None otherwise (a physical arm cannot tell)."""
        if self.status is None or not self.status.exists():
            return None
        try:
            status = json.loads(self.status.read_text())
        except (OSError, ValueError):
            return None
        return bool(status.get("success")) and float(status.get("success_time") or 0) >= since

    def describe(self):
        """Every camera's shape (one frame read each), joints and rate, before any torque is enabled."""
        if not self.robot.cameras:
            raise HardwareError(f"arm {self.robot.arm.name!r} has no camera configured; the policy needs "
                                "one (robot=virtual serves one; on hardware pass camera=0 or a /dev/video path)")
        shapes = {}
        for name, camera in self.robot.cameras.items():
            if hasattr(camera, "connect"):
                camera.connect()
            try:
                shapes[f"image/{name}"] = np.asarray(camera.read().image).shape
            finally:
                camera.close()  # Robot.connect opens it again
        joints = len(self.robot.arm.joints)
        return shapes, joints, joints, self.robot.control_hz

    def connect(self) -> None:
        self.robot.connect()  # checks every servo and enables torque where the arm is: no motion yet

    def reset(self, instruction: str) -> dict:
        obs = self.robot.reset(instruction=instruction).observation  # moves to the home pose
        if self.status is not None and self.episode > 0:
            # The virtual robot: a fresh scene per episode, as robot=sim's reset(seed + episode). The
            # first episode runs on the scene serve-bus started with, so one episode needs no request.
            self._new_scene(instruction)
            obs = self.robot.reset(instruction=instruction).observation  # already home: o_0 of the new scene
        self.episode += 1
        return obs

    def _new_scene(self, instruction: str) -> None:
        from reverie.robot_io.virtual.scene import reset_scene

        link, seed = self.status.with_suffix(""), self.seed + self.episode
        try:
            reset_scene(link, seed, instruction)
        except ConfigError:
            # As robot=sim: any text drives the policy, but the sim scores only phrasings it parses.
            served = reset_scene(link, seed, None)
            log.warning("the virtual robot cannot score %r; its success is for %r", instruction, served["instruction"])

    def step(self, action: np.ndarray):
        ts = self.robot.step(action)
        return ts.observation, ts.last(), {"late": bool(ts.info.get("late")), "clamped": bool(ts.info.get("clamped"))}

    def safe_stop(self) -> str:
        return self.robot.disconnect() or "arm already stopped"

    def close(self) -> None:
        self.robot.disconnect()


# The limits a bundle may only narrow: (field, joint attribute, side) with side +1 where a larger
# bundle value is wider (upper limit, step, velocity) and -1 where a smaller one is (lower limit).
LIMITS = (("lower limit", lambda j: j.limits[0], -1), ("upper limit", lambda j: j.limits[1], 1),
          ("max_step", lambda j: j.max_step, 1), ("max_velocity", lambda j: j.max_velocity, 1))


def deploy_arm(manifest: dict, robot: str, args: dict):
    """The ArmConfig a deployment drives: the robot's own arm config on this computer (`arm=NAME|YAML`,
    default the shipped config the bundle was exported for; `calibration=` applies to it), which is
    authoritative for servos, calibration, safe pose and limits. The bundle brings what its actions
    mean (action mode and scale, rate, home pose) and may narrow the joint limits, max_step and
    max_velocity; a bundle asking for more than the robot allows is refused, before any torque."""
    from reverie.robot_io.config import arm_from_mapping, read_arm_yaml

    section, exported_for = manifest["robot"], manifest_lib.arm_config(manifest)
    if exported_for is None:
        raise BundleError(f"this bundle's actions are scaled for the simulator ({section.get('name')}), not "
                          f"for a servo arm (its manifest has no robot.config); deploy it with robot=sim, or "
                          f"re-export with arm=<arm config> (e.g. arm=so101_virtual for robot=virtual)")
    try:
        wanted = arm_from_mapping(exported_for)
    except ConfigError as e:
        raise BundleError(f"the bundle's arm config is invalid ({e}); re-run `reverie export`") from e
    source = args.get("arm") or section.get("name")
    raw = read_arm_yaml(source)
    if args.get("calibration"):
        raw["calibration"] = args["calibration"]
    own = arm_from_mapping(raw)
    links()[robot].check_servos(own, source)
    if wanted.protocol != own.protocol or wanted.names != own.names:
        raise BundleError(f"the bundle was exported for {wanted.name} ({wanted.protocol} servos, joints "
                          f"{wanted.names}), this robot is {own.name} ({own.protocol}, joints {own.names}); "
                          f"re-export with arm={own.name} or pass arm=<this robot's arm config>")
    wider = [(j.name, field, get(b), get(j)) for j, b in zip(own.joints, wanted.joints)
             for field, get, side in LIMITS if side * (get(b) - get(j)) > 1e-9 * max(1.0, abs(get(j)))]
    if wider:
        joint, field, theirs, mine = wider[0]
        where = own.name if str(source) == own.name else f"{own.name} ({source})"
        more = f" (and {len(wider) - 1} more)" if len(wider) > 1 else ""
        raise BundleError(f"bundle {section.get('name')} is wider than this robot allows: joint {joint!r} "
                          f"{field} {theirs:g} in the bundle, {mine:g} in the robot's arm config {where}"
                          f"{more}; a bundle can only narrow the robot's limits: re-export it "
                          f"with arm={own.name}, or if this arm really allows more, raise the limit in its "
                          f"own arm config and pass arm=<that YAML>")
    data = own.to_dict()  # calibrated: the ticks are this robot's
    for joint, b in zip(data["joints"], wanted.joints):
        joint.update(limits=list(b.limits), max_step=b.max_step, max_velocity=b.max_velocity,
                     action_scale=b.action_scale)
    data.update(action_mode=wanted.action_mode, home_pose=list(wanted.home_pose),
                control_hz=float(manifest["control_hz"]))
    try:
        return arm_from_mapping(data)
    except ConfigError as e:  # e.g. the robot's safe pose outside the bundle's narrower limits
        raise BundleError(f"the bundle's limits do not fit this robot: {e}") from e


class VirtualLink:
    """robot=virtual link=PATH [frames=PREFIX]: the virtual robot of `reverie sim serve-bus link=PATH`,
    which speaks whichever servo family its arm config names, writes one frame file per camera it
    serves (<link>.frames.<camera>) and scores its task (<link>.status)."""

    name = "virtual"
    port_hint = " (is `reverie sim serve-bus` running with that link?)"

    def port(self, args: dict) -> str:
        port = args.get("link")
        if not port:
            raise ConfigError("robot=virtual needs link=PATH: the link of `reverie sim serve-bus link=PATH`")
        return port

    def check_servos(self, own, source) -> None:
        """Any family: the virtual robot serves the one its arm config names."""

    def cameras(self, port: str, names: list[str], cameras: dict, args: dict, hw: tuple[int, int]) -> tuple[dict, str]:
        """-> (the arm's cameras on this link, how to give it a camera the bundle reads and it lacks)."""
        prefix = args.get("frames") or f"{port}.frames"
        # serve-bus writes a frame file per camera it serves before it is ready: an extra camera
        # without one is not served, which check_robot reports (the main one waits, as before).
        cameras = {c: {"type": "frame_file", "path": f"{prefix}.{c}"} for c in names
                   if c == names[0] or Path(f"{prefix}.{c}").exists()}
        return cameras, f"start `reverie sim serve-bus link={port} cameras=[{','.join(names)}]`"

    def status(self, port: str) -> Path | None:
        return Path(f"{port}.status")


class SerialLink:
    """robot=<servo family> port=DEV [camera=...]: a physical arm of that family on a serial port; its
    cameras are its arm config's, camera= replacing the main one."""

    port_hint = ""

    def __init__(self, family: str):
        self.name = family

    def port(self, args: dict) -> str:
        port = args.get("port")
        if not port:
            raise ConfigError(f"robot={self.name} needs port=...: /dev/ttyACM0 (Linux) or /dev/tty.usbmodem... (macOS)")
        return port

    def check_servos(self, own, source) -> None:
        if own.protocol != self.name:
            raise BundleError(f"this robot's arm config {own.name!r} ({source}) has {own.protocol} servos, not "
                              f"robot={self.name}; use robot={own.protocol} or pass arm=<this robot's arm config>")

    def cameras(self, port: str, names: list[str], cameras: dict, args: dict, hw: tuple[int, int]) -> tuple[dict, str]:
        camera, (h, w) = names[0], hw
        fix = (f"list {','.join(names)} under `cameras:` in this robot's arm config and pass arm=<that YAML>"
               + (f"; camera= sets only the main one, {camera}" if len(names) > 1 else ""))
        if args.get("camera") is not None:  # the main camera; the others stay the arm config's
            source = args["camera"]
            cameras = {**{c: cameras[c] for c in names[1:] if c in cameras},
                       camera: {"type": "opencv", "source": int(source) if str(source).isdigit() else source,
                                "width": w, "height": h}}
        return cameras, fix

    def status(self, port: str) -> Path | None:
        return None  # a physical arm cannot score its task


def links() -> dict:
    """robot= name -> how deploy reaches a servo-bus arm: the virtual robot, then one per servo family."""
    from reverie.robot_io import servo_families

    return {"virtual": VirtualLink(), **{name: SerialLink(name) for name in servo_families.names()}}


def openers() -> dict:
    """robot= name -> (manifest, robot, args) -> its target: the sim, the virtual robot, each servo family."""
    return {"sim": SimTarget.open, **{name: arm_target for name in links()}}


def kinds() -> tuple[str, ...]:
    """Every robot= a deployment drives."""
    return tuple(openers())


def open_target(manifest: dict, robot: str, args: dict):
    """The target of robot=<kind>, built from the deploy options."""
    opener = openers().get(robot)
    if opener is None:  # deploy's parse refuses it first; a caller that skips parse hears the same
        raise ConfigError(f"robot={robot!r}{did_you_mean(robot, kinds())}; choose one of {', '.join(kinds())}")
    return opener(manifest, robot, args)


def arm_target(manifest: dict, robot: str, args: dict) -> ArmTarget:
    """robot=virtual link=PATH | <servo family> port=... -> an ArmTarget on this port, driving
    `deploy_arm`: this robot's arm config narrowed by the bundle; `links()[robot]` owns what differs."""
    link = links()[robot]
    names = [key.split("/", 1)[1] for key in manifest_lib.cameras(manifest)]  # the main camera first
    h, w, _ = manifest["observation"]["image"]["shape"]
    port = link.port(args)
    arm = deploy_arm(manifest, robot, args)
    cameras, fix = link.cameras(port, names, dict(arm.cameras), args, (h, w))
    if not Path(port).exists():
        raise HardwareError(f"port {port} does not exist: check the cable and `ls /dev/tty*`" + link.port_hint)
    arm = dataclasses.replace(arm, port=str(port), cameras=cameras)
    return ArmTarget(arm, float(manifest["control_hz"]), link.status(port), int(args.get("seed", 0)), fix)
