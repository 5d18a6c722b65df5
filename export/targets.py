"""What a deployment drives: the sim arm env, or a servo-bus arm (virtual or physical) via robot_io.

Both expose describe() -> (image shape, state dim, action dim, rate) before anything is powered,
connect() (servo arms: torque on where the arm is, no motion), reset(instruction) -> obs,
step(action) -> (obs, done, info), safe_stop() -> what it did, and `paced`: whether step() itself
waits for the control tick (robot_io.Robot does; the sim returns at once and the runtime paces it).
Every action passes the robot's safety limits (robot_io/safety.py) before it reaches a joint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from reverie.errors import BundleError, ConfigError, HardwareError
from reverie.robot_io.safety import SafetyFilter

log = logging.getLogger(__name__)


class SimTarget:
    """The sim arm env at the bundle's camera, rate and action scaling. Safety in servo-target space:
    joint ranges, at most the per-step delta from the previous target, at most twice it from where
    the joint is (the env's own lead bound)."""

    paced = False

    def __init__(self, manifest: dict, task: str = "all", seed: int = 0, time_limit: int = 300):
        try:
            from reverie.sim.arm_env import make_arm_env
        except ImportError as e:  # the robot's computer usually has no simulator
            raise ConfigError(f"robot=sim needs the simulator ({e.name} is not installed): install reverie "
                              "with its dependencies, or deploy to robot=virtual|feetech|dynamixel") from e

        robot = manifest["robot"]
        camera = manifest["observation"]["image_key"].split("/", 1)[1]
        h, w, _ = manifest["observation"]["image"]["shape"]
        self.hz = float(manifest["control_hz"])
        self.scale = np.asarray(robot["action_scale"], np.float64)                # (6,)
        self.mode = robot["action_mode"]
        self.env = make_arm_env(task, image_size=(h, w), cameras=(camera,), control_hz=self.hz,
                                max_delta=tuple(self.scale), action_mode=self.mode, time_limit=time_limit)
        phys = self.env.phys
        self.safety = SafetyFilter(phys.lower, phys.upper, 2 * self.scale, self.scale * self.hz)
        self.seed, self.episode = seed, 0
        self.clamped = 0

    def describe(self):
        spec = self.env.observation_spec()
        image = next(v for k, v in spec.items() if k.startswith("image/"))
        return image.shape, spec["state"].shape[0], self.env.action_spec().shape[0], self.hz

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

    def __init__(self, arm, hz: float, status: Path | None = None, seed: int = 0):
        from reverie.robot_io.camera_setup import build_cameras
        from reverie.robot_io.robot import Robot

        self.robot = Robot(arm, cameras=build_cameras(arm.cameras), control_hz=hz)
        self.hz = hz
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
        """Camera shape (one frame read), joints and rate, before any torque is enabled."""
        if not self.robot.cameras:
            raise HardwareError(f"arm {self.robot.arm.name!r} has no camera configured; the policy needs "
                                "one (robot=virtual serves one; on hardware pass camera=0 or a /dev/video path)")
        camera = next(iter(self.robot.cameras.values()))
        if hasattr(camera, "connect"):
            camera.connect()
        try:
            shape = np.asarray(camera.read().image).shape
        finally:
            camera.close()  # Robot.connect opens it again
        joints = len(self.robot.arm.joints)
        return shape, joints, joints, self.robot.control_hz

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
        from reverie.robot_io.scene import reset_scene

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


def arm_target(manifest: dict, robot: str, args: dict) -> ArmTarget:
    """robot=virtual link=PATH | feetech port=... | dynamixel port=... -> an ArmTarget built from the
    arm config the bundle was exported with (joints, limits, scaling), on this port."""
    from reverie.robot_io.config import arm_from_mapping

    section = manifest["robot"]
    if section["kind"] != "arm":
        raise BundleError(f"this bundle's actions are scaled for the simulator ({section['name']}), not "
                          f"for a servo arm; deploy it with robot=sim, or re-export with arm=<arm config> "
                          f"(e.g. arm=so101_virtual for robot=virtual)")
    config = dict(section["config"])
    camera = manifest["observation"]["image_key"].split("/", 1)[1]
    h, w, _ = manifest["observation"]["image"]["shape"]
    if robot == "virtual":
        link = args.get("link")
        if not link:
            raise ConfigError("robot=virtual needs link=PATH: the link of `reverie sim serve-bus link=PATH`")
        port = link
        prefix = args.get("frames") or f"{link}.frames"
        config["cameras"] = {camera: {"type": "frame_file", "path": f"{prefix}.{camera}"}}
    else:
        port = args.get("port")
        if not port:
            raise ConfigError(f"robot={robot} needs port=...: /dev/ttyACM0 (Linux) or /dev/tty.usbmodem... (macOS)")
        if robot != config["protocol"]:
            raise BundleError(f"the bundle was exported for {section['name']} ({config['protocol']} servos), "
                              f"not robot={robot}; use robot={config['protocol']} or re-export with arm=<arm config>")
        if args.get("camera") is not None:
            source = args["camera"]
            config["cameras"] = {camera: {"type": "opencv", "source": int(source) if str(source).isdigit() else source,
                                          "width": w, "height": h}}
    if not Path(port).exists():
        raise HardwareError(f"port {port} does not exist: check the cable and `ls /dev/tty*`"
                            + (" (is `reverie sim serve-bus` running with that link?)" if robot == "virtual" else ""))
    config["port"] = str(port)
    if args.get("calibration"):
        config["calibration"] = args["calibration"]
    status = Path(f"{port}.status") if robot == "virtual" else None
    return ArmTarget(arm_from_mapping(config), float(manifest["control_hz"]), status, int(args.get("seed", 0)))
