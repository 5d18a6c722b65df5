"""ArmPhysics: the SO-101-class arm on its table, as servos see it.

Knows joints, servo targets, cubes and cameras; knows nothing about tasks, rewards or control rates,
so the virtual servo bus can drive it from goal-position writes exactly as the env does.

    phys = ArmPhysics(preset="nominal", seed=0, image_size=(64, 64), cameras=("front",))
    phys.reset()                    # new cube layout (and variation), arm at HOME
    phys.set_targets(q)             # (6,) radians, clipped to the joint ranges
    phys.step(0.1)                  # seconds of physics
    phys.qpos(), phys.qvel()        # (6,) float64
    phys.render("front")            # (H, W, 3) uint8
"""

from __future__ import annotations

import os
import pathlib
import sys
import weakref

# Headless Linux (no display): render through EGL, unless the user chose a backend. MuJoCo reads this
# when it is first imported, so it only helps if nothing imported mujoco before us.
if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from reverie.errors import ConfigError, HardwareError  # noqa: E402
from reverie.sim import randomization  # noqa: E402

ASSET = pathlib.Path(__file__).parent / "assets" / "so101.xml"
JOINT_NAMES = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
CAMERAS = ("front", "wrist")
# Upper arm vertical, forearm horizontal, gripper tilted down and half open: above the workspace,
# out of the front camera's view of the cubes.
HOME = np.array([0.0, 0.0, 1.57, 1.2, 0.0, 1.0])
CUBE_HALF = 0.015  # metres
# Cube centres are drawn in this box (metres, world frame); wide enough to vary, inside the reach
# left for a 6 cm push forward or sideways.
CUBE_X = (0.12, 0.20)
CUBE_Y = (-0.11, 0.11)
CUBE_MIN_GAP = 0.07  # centre to centre, so the open gripper fits between cubes
# Finger slide (each side, metres) = FINGER_OFFSET + FINGER_GAIN * gripper radians (see so101.xml).
FINGER_OFFSET, FINGER_GAIN = 0.00272, 0.016


class ArmPhysics:
    def __init__(self, preset: str = "nominal", seed: int | None = 0,
                 image_size: tuple[int, int] = (64, 64), cameras: tuple[str, ...] = ("front",)):
        self.preset = randomization.check_preset(preset)
        bad = [c for c in cameras if c not in CAMERAS]
        if bad or not cameras:
            raise ConfigError(f"unknown camera(s) {bad or list(cameras)}: choose from {list(CAMERAS)}, "
                              f"e.g. cameras=[front] or cameras=[front,wrist]")
        height, width = (int(s) for s in image_size)
        if height < 8 or width < 8 or height > 2048 or width > 2048:
            raise ConfigError(f"image_size {tuple(image_size)} out of range: use (height, width) "
                              f"between 8 and 2048 pixels, e.g. image_size=[64,64]")
        self.cameras, self.image_size = tuple(cameras), (height, width)

        self.model = mujoco.MjModel.from_xml_path(str(ASSET))
        # The offscreen framebuffer must hold the largest image we render.
        self.model.vis.global_.offwidth = max(width, 64)
        self.model.vis.global_.offheight = max(height, 64)
        self.data = mujoco.MjData(self.model)
        m = self.model
        jid = [m.joint(n).id for n in JOINT_NAMES]
        self.qpos_adr = m.jnt_qposadr[jid]  # (6,) indices of the joints in data.qpos
        self.dof_adr = m.jnt_dofadr[jid]  # (6,) indices in data.qvel and Jacobian columns
        self._finger_qadr = m.jnt_qposadr[[m.joint("finger_left").id, m.joint("finger_right").id]]
        self.actuators = np.array([m.actuator(n).id for n in JOINT_NAMES])
        self.lower = m.jnt_range[jid, 0].copy()  # (6,) radians
        self.upper = m.jnt_range[jid, 1].copy()
        self.cube_names = randomization.COLOURS
        self._cube_qadr = {c: m.jnt_qposadr[m.joint(f"cube_{c}").id] for c in self.cube_names}
        self.cube_bodies = {c: m.body(f"cube_{c}").id for c in self.cube_names}
        self._gripper_body_ids = np.array([m.body(n).id for n in ("gripper", "finger_left", "finger_right")])
        self.grasp_site = m.site("grasp").id
        self.editor = randomization.ModelEditor(m)
        self.variation = randomization.NOMINAL
        self._rng = np.random.default_rng(seed)
        self._renderer: mujoco.Renderer | None = None  # created on first render: one GL context, reused

    # --- episode ---------------------------------------------------------------------------------
    def reset(self, seed: int | None = None, arm: np.ndarray | None = None) -> None:
        """New variation and cube layout; arm at HOME with its servos holding HOME, or at rest at joint
        values `arm` (6,) holding them (serve-bus resets the scene around an arm the bus drives)."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.variation = randomization.sample(self.preset, self._rng)
        self.editor.apply(self.variation)
        mujoco.mj_resetData(self.model, self.data)
        # Masses changed: recompute what the compiler derived from them (the constraint solver's
        # inverse weights); with stale ones a heavier cube is launched off the table on contact.
        mujoco.mj_setConst(self.model, self.data)
        pose = HOME if arm is None else np.clip(np.asarray(arm, np.float64).reshape(6), self.lower, self.upper)
        self._set_joints(pose)
        self.data.ctrl[self.actuators] = pose
        for colour, (x, y, yaw) in zip(self.cube_names, self._cube_layout()):
            a = self._cube_qadr[colour]
            self.data.qpos[a:a + 3] = (x, y, CUBE_HALF)
            self.data.qpos[a + 3:a + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
        mujoco.mj_forward(self.model, self.data)

    def _cube_layout(self) -> list[tuple[float, float, float]]:
        """Rejection-sample non-overlapping cube centres; yaw in [-45, 45) degrees covers all poses."""
        while True:
            xy = np.stack([self._rng.uniform(*CUBE_X, len(self.cube_names)),
                           self._rng.uniform(*CUBE_Y, len(self.cube_names))], -1)  # (3, 2)
            gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(xy))
            if gaps.min() >= CUBE_MIN_GAP:
                yaw = self._rng.uniform(-np.pi / 4, np.pi / 4, len(xy))
                return [(float(x), float(y), float(w)) for (x, y), w in zip(xy, yaw)]

    def _set_joints(self, q: np.ndarray) -> None:
        self.data.qpos[self.qpos_adr] = q
        self.data.qpos[self._finger_qadr] = FINGER_OFFSET + FINGER_GAIN * q[5]

    # --- servos ----------------------------------------------------------------------------------
    def set_targets(self, q: np.ndarray) -> None:
        """Servo goal positions, (6,) radians; clipped to the joint ranges like the servos' limits."""
        q = np.asarray(q, np.float64).reshape(6)
        self.data.ctrl[self.actuators] = np.clip(q, self.lower, self.upper)

    def targets(self) -> np.ndarray:
        return self.data.ctrl[self.actuators].copy()

    def step(self, seconds: float) -> None:
        n = max(1, int(round(seconds / self.model.opt.timestep)))
        mujoco.mj_step(self.model, self.data, nstep=n)

    def qpos(self) -> np.ndarray:
        return self.data.qpos[self.qpos_adr].copy()  # (6,) radians

    def qvel(self) -> np.ndarray:
        return self.data.qvel[self.dof_adr].copy()  # (6,) rad/s

    def gripper_opening(self) -> float:
        q = self.data.qpos[self.qpos_adr[5]]
        return float(np.clip((q - self.lower[5]) / (self.upper[5] - self.lower[5]), 0.0, 1.0))

    @property
    def time(self) -> float:
        return float(self.data.time)

    # --- privileged scene state (tasks, scripted teleoperator) ---------------------------------
    def cube_pos(self, colour: str) -> np.ndarray:
        return self.data.xpos[self.cube_bodies[colour]].copy()  # (3,) metres

    def cube_yaw(self, colour: str) -> float:
        r = self.data.xmat[self.cube_bodies[colour]].reshape(3, 3)
        return float(np.arctan2(r[1, 0], r[0, 0]))

    def grasp_pos(self) -> np.ndarray:
        return self.data.site_xpos[self.grasp_site].copy()  # (3,) between the fingers

    def touching(self, colour: str) -> bool:
        """True when any gripper geom (palm or finger) is in contact with the cube."""
        n = self.data.ncon
        if n == 0:
            return False
        bodies = self.model.geom_bodyid[self.data.contact.geom[:n]]  # (ncon, 2)
        cube = (bodies == self.cube_bodies[colour]).any(1)
        gripper = np.isin(bodies, self._gripper_body_ids).any(1)
        return bool((cube & gripper).any())

    # --- cameras ---------------------------------------------------------------------------------
    def render(self, camera: str = "front") -> np.ndarray:
        if camera not in self.cameras:
            raise ConfigError(f"camera {camera!r} not enabled: pass cameras={list(self.cameras) + [camera]}")
        if self._renderer is None:
            try:
                self._renderer = mujoco.Renderer(self.model, *self.image_size)
            except mujoco.FatalError as e:
                raise HardwareError(f"cannot open an OpenGL context for the sim cameras ({e}); on a machine "
                                    f"without a display set MUJOCO_GL=egl (or osmesa) before starting") from e
            # Shadows and reflections triple the cost of a 64x64 frame under software GL.
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
            # Free the GL context before interpreter teardown, even if close() is never called.
            self._finalizer = weakref.finalize(self, self._renderer.close)
        self._renderer.update_scene(self.data, camera=camera)
        return self._renderer.render()  # (H, W, 3) uint8, a fresh array

    def close(self) -> None:
        if self._renderer is not None:
            self._finalizer()
            self._renderer = None
