"""A scripted teleoperator: solves arm tasks from privileged sim state, with human-like imperfections.

It follows the task's plan of Cartesian waypoints for the grasp point between the fingers (each task
plans its own, sim/tasks/: above the cube, down, close, up; or behind the cube, down, through), moves a reference point toward the current waypoint at a
bounded speed, solves inverse kinematics for it (damped least squares on MuJoCo's site Jacobian,
gripper pointing down, yaw aligned to the cube), and emits the joint-delta action that moves the
servo targets toward that solution. Its actions are in the env's action space, so its episodes are
valid training data.

One `skill` in [0, 1] sets the imperfections (u = 1 - skill is the "clumsiness"):
  noise          Gaussian action noise, std 0.02 + 0.5 u
  hesitation     pauses of 1-4 steps, probability 0.2 u per step
  overshoot      each waypoint is first aimed with an error of std 3 u cm, corrected late
                 (after 1-6 steps at the wrong spot), or with probability 0.3 u never corrected
  wrong cube     probability 0.5 u of heading for another cube; noticed once above it with
                 probability `skill`, otherwise the whole task is done on the wrong cube
  early grasp    probability 0.5 u of closing the gripper before the fingers are down
  sloppiness     "close enough" is (1 + 1.5 u) times the expert's tolerance
At every skill it leans in where the servos fall short (an integral term; soft or latent presets)
and retries a lift that comes up empty, as a person would.
"""

from __future__ import annotations

import mujoco
import numpy as np

from reverie.errors import ConfigError
from reverie.sim.arm_env import ArmEnv
from reverie.sim.scripted_plan import CLOSED, OPEN, Waypoint
from reverie.sim.tasks import registry
from reverie.specs import TimeStep

LEASH = 0.04  # metres the reference may lead the gripper
BIAS_LIMIT = 0.02  # metres of integral correction per axis


class IK:
    """Damped least squares on the grasp site; position and orientation (gripper pointing down)."""

    def __init__(self, env: ArmEnv):
        phys = env.phys
        self.model, self.data = phys.model, mujoco.MjData(phys.model)  # scratch data, never stepped
        self.qadr, self.vadr, self.site = phys.qpos_adr[:5], phys.dof_adr[:5], phys.grasp_site
        self.lower, self.upper = phys.lower[:5], phys.upper[:5]

    def solve(self, q0: np.ndarray, pos: np.ndarray, yaw: float, iters: int = 12) -> np.ndarray:
        """q0 (5,) arm joints -> (5,) joints putting the grasp site at pos, pointing down, at yaw."""
        m, d = self.model, self.data
        c, s = np.cos(yaw), np.sin(yaw)
        y = np.array([c, s, 0.0])
        z = np.array([0.0, 0.0, -1.0])
        rd = np.stack([np.cross(y, z), y, z], 1)  # (3, 3) desired frame, columns = axes
        jacp, jacr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
        q = q0.astype(np.float64).copy()
        for _ in range(iters):
            d.qpos[self.qadr] = q
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            r = d.site_xmat[self.site].reshape(3, 3)
            e_pos = pos - d.site_xpos[self.site]  # (3,)
            e_rot = 0.5 * sum(np.cross(r[:, i], rd[:, i]) for i in range(3))  # (3,) small-angle axis
            mujoco.mj_jacSite(m, d, jacp, jacr, self.site)
            # Position matters in metres, orientation in radians: weight orientation to ~5 cm/rad.
            jac = np.concatenate([jacp[:, self.vadr], 0.05 * jacr[:, self.vadr]])  # (6, 5)
            err = np.concatenate([e_pos, 0.05 * e_rot])  # (6,)
            dq = jac.T @ np.linalg.solve(jac @ jac.T + 1e-4 * np.eye(6), err)
            q = np.clip(q + dq, self.lower, self.upper)
            if np.linalg.norm(e_pos) < 1e-3 and np.linalg.norm(e_rot) < 1e-2:
                break
        return q


class ScriptedTeleop:
    def __init__(self, env: ArmEnv, skill: float = 1.0, seed: int | None = None):
        if not 0.0 <= skill <= 1.0:
            raise ConfigError(f"skill={skill}: use a value in [0, 1] (1 = expert, 0.5 = clumsy)")
        self.env, self.skill, self.u = env, float(skill), 1.0 - float(skill)
        self.rng = np.random.default_rng(seed)
        self.ik = IK(env)
        self.max_delta = np.asarray(env.cfg.max_delta)
        if env.cfg.action_mode != "delta":
            raise ConfigError("the scripted teleoperator emits joint deltas: create the env with action_mode=delta")

    # --- planning -------------------------------------------------------------------------------
    def reset(self, timestep: TimeStep | None = None, seed: int | None = None) -> None:
        """Plan the episode from the env's goal (call after env.reset); a seed makes it replayable."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        goal, phys = self.env.goal, self.env.phys
        self.colour = goal.colour
        others = [c for c in phys.cube_names if c != goal.colour]
        self.wrong = str(self.rng.choice(others)) if self.rng.random() < 0.5 * self.u else None
        self.notices = self.rng.random() < self.skill
        self.plan = self._plan(self.wrong or goal.colour)
        self.index, self.settled, self.pause = 0, 0, 0
        self.ref = phys.grasp_pos()  # (3,) Cartesian reference, moves toward the waypoint
        self.bias = np.zeros(3)  # (3,) learned offset for what the servos fall short by (sag, soft gains)
        self.aim_error, self.correct_in = self._aim_error()
        self.early_close = self.rng.random() < 0.5 * self.u

    def _plan(self, colour: str) -> list[Waypoint]:
        """The goal's task plans the waypoints (sim/tasks/<task>.py) on the cube `colour`."""
        goal, phys = self.env.goal, self.env.phys
        cube = phys.cube_pos(colour)
        natural = np.arctan2(cube[1], cube[0]) + np.pi / 2  # closing axis with wrist_roll at 0
        return registry.get(goal.task).plan(goal, phys, colour, natural)

    def _aim_error(self) -> tuple[np.ndarray, int]:
        """A sloppy first aim at the next waypoint and when it gets corrected (-1: never)."""
        err = self.rng.normal(0, 0.03 * self.u, 3) * [1, 1, 0.3]
        err[2] = abs(err[2])  # a person overshoots above the table, not into it
        never = self.rng.random() < 0.3 * self.u
        return err, (-1 if never else int(self.rng.integers(1, 7)))

    # --- acting ---------------------------------------------------------------------------------
    def act(self, timestep: TimeStep | None = None) -> np.ndarray:
        phys, wp = self.env.phys, self.plan[self.index]
        self._advance(phys, wp)
        wp = self.plan[self.index]
        if self.pause > 0 or self.rng.random() < 0.2 * self.u:
            self.pause = self.pause - 1 if self.pause > 0 else int(self.rng.integers(0, 4))
            return np.clip(self.rng.normal(0, 0.05 * self.u, 6), -1, 1).astype(np.float32)
        aim = wp.pos + (self.aim_error if self.correct_in != 0 else 0.0)
        step = aim - self.ref
        self.ref = self.ref + step * min(1.0, wp.speed / max(np.linalg.norm(step), 1e-9))
        # Keep the reference on a short leash: a target far ahead of a blocked gripper saturates the
        # servos and drives the fingers into the table instead of along it.
        lead = self.ref - phys.grasp_pos()
        self.ref = phys.grasp_pos() + lead * min(1.0, LEASH / max(np.linalg.norm(lead), 1e-9))
        # Near the goal, aim past it by what the gripper keeps falling short (an integral term): soft or
        # loaded servos settle short of their targets, and a person leans in until it lines up.
        err = aim - phys.grasp_pos()
        if np.linalg.norm(err) < 0.03:
            self.bias = np.clip(self.bias + 0.3 * err, -BIAS_LIMIT, BIAS_LIMIT)
        cmd = self.env.commanded  # (6,) servo targets after the last action
        q = self.ik.solve(cmd[:5], self.ref + self.bias, wp.yaw)
        gripper = wp.gripper
        if self.early_close and wp.name == "down" and wp.gripper == OPEN:
            gripper = CLOSED if np.linalg.norm(phys.grasp_pos() - wp.pos) < 0.03 else OPEN
        want = np.append(q, gripper) - cmd  # (6,) radians to go
        action = want / self.max_delta + self.rng.normal(0, 0.02 + 0.5 * self.u, 6)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _advance(self, phys, wp: Waypoint) -> None:
        """Move to the next waypoint once this one is reached (and settled); replan on mistakes."""
        here = phys.grasp_pos()
        aim = wp.pos + (self.aim_error if self.correct_in != 0 else 0.0)
        # A clumsy operator calls it "there" sooner; an uncorrected aim is accepted within 2 cm.
        tol = wp.tol * (1.0 + 1.5 * self.u)
        if np.linalg.norm(here - aim) > (max(tol, 0.02) if self.correct_in == -1 else tol):
            return
        if self.correct_in > 0:  # at the sloppy spot: the late correction counts down
            self.correct_in -= 1
            return
        if self.settled < wp.settle:
            self.settled += 1
            return
        if self.wrong is not None and self.notices and wp.name == "above":  # noticed the wrong cube: start over
            self.wrong = None
            self.plan, self.index = self._plan(self.colour), 0
        elif registry.get(self.env.goal.task).missed(wp, phys, self.wrong or self.colour):  # e.g. lift came up empty
            self.plan, self.index = self._plan(self.wrong or self.colour), 0
        elif self.index + 1 < len(self.plan):
            self.index += 1
        self.settled = 0
        self.aim_error, self.correct_in = self._aim_error()


def run_episode(env: ArmEnv, teleop: ScriptedTeleop, seed: int | None = None) -> tuple[list, bool]:
    """Roll out one episode; returns [(timestep, action sent after it)] and success."""
    ts = env.reset(seed=seed)
    # The teleoperator's own draws get a stream of their own, so the seed fixes the whole episode.
    teleop.reset(ts, seed=None if seed is None else seed + 1_000_003)
    rows = []
    while not ts.last():
        action = teleop.act(ts)
        rows.append((ts, action))
        ts = env.step(action)
    rows.append((ts, None))
    return rows, bool(ts.info["success"])
