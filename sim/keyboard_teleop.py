"""Keyboard teleoperation of the sim arm: keys -> joint-delta actions in the env's action space.

Two keys per joint (one row of the keyboard each way):

    q / a   shoulder_pan   +/-        e / d   elbow_flex   +/-        t / g   wrist_roll  +/-
    w / s   shoulder_lift  +/-        r / f   wrist_flex   +/-        y / h   gripper open/close
    space   hold still               backspace   new episode (in the viewer)

From code (headless tests, other front ends) call `press`/`release` for held keys or `tap` for a
single step's nudge, then `act()` once per control step. In the MuJoCo passive viewer every key
press is one tap (the viewer reports presses, not releases):

    reverie sim teleop task=lift randomization=nominal
"""

from __future__ import annotations

import sys
import time

import numpy as np

from reverie.errors import ConfigError, HardwareError, ReverieError

# key -> (joint index, direction)
KEYMAP = {
    "q": (0, 1.0), "a": (0, -1.0),
    "w": (1, 1.0), "s": (1, -1.0),
    "e": (2, 1.0), "d": (2, -1.0),
    "r": (3, 1.0), "f": (3, -1.0),
    "t": (4, 1.0), "g": (4, -1.0),
    "y": (5, 1.0), "h": (5, -1.0),
}
GLFW_BACKSPACE, GLFW_SPACE = 259, 32


class KeyboardTeleop:
    def __init__(self, speed: float = 0.5):
        if not 0.0 < speed <= 1.0:
            raise ConfigError(f"keyboard speed={speed}: use a fraction of the per-step limit in (0, 1]")
        self.speed = float(speed)
        self.held: set[str] = set()
        self.taps: list[str] = []
        self.reset_requested = False

    def _check(self, key: str) -> str:
        key = key.lower()
        if key not in KEYMAP and key != " ":
            raise ConfigError(f"key {key!r} is not mapped: use one of {''.join(sorted(KEYMAP))} or space")
        return key

    def press(self, key: str) -> None:
        self.held.add(self._check(key))

    def release(self, key: str) -> None:
        self.held.discard(self._check(key))

    def tap(self, key: str) -> None:
        self.taps.append(self._check(key))

    def act(self) -> np.ndarray:
        """The action for this control step: (6,) float32 in [-1, 1]; taps are used up."""
        action = np.zeros(6, np.float32)
        for key in [*self.held, *self.taps]:
            if key in KEYMAP:
                joint, sign = KEYMAP[key]
                action[joint] += sign * self.speed
        self.taps.clear()
        return np.clip(action, -1.0, 1.0)

    def key_callback(self, keycode: int) -> None:
        """For mujoco.viewer.launch_passive: GLFW key codes (letters arrive as upper-case ASCII)."""
        if keycode == GLFW_BACKSPACE:
            self.reset_requested = True
        elif keycode == GLFW_SPACE:
            self.taps.clear()
        elif 0 <= keycode < 128 and chr(keycode).lower() in KEYMAP:
            self.taps.append(chr(keycode).lower())


def run_viewer(env, teleop: KeyboardTeleop) -> None:
    """Drive `env` from the keyboard in the MuJoCo passive viewer, at the env's control rate."""
    import os

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise HardwareError("no display for the MuJoCo viewer (DISPLAY is unset): run on a desktop session, "
                            "or drive KeyboardTeleop from code")
    import mujoco.viewer
    ts = env.reset()
    print(f"instruction: {env.instruction}\n{__doc__}")
    period = 1.0 / env.cfg.control_hz
    with mujoco.viewer.launch_passive(env.phys.model, env.phys.data, key_callback=teleop.key_callback) as viewer:
        while viewer.is_running():
            start = time.monotonic()
            if ts.last() or teleop.reset_requested:
                print(f"episode over: success={ts.info.get('success', False)}")
                teleop.reset_requested = False
                ts = env.reset()
                print(f"instruction: {env.instruction}")
            ts = env.step(teleop.act())
            viewer.sync()
            time.sleep(max(0.0, period - (time.monotonic() - start)))


def main(argv: list[str] | None = None) -> int:
    from reverie.config import command_config
    from reverie.sim.arm_env import make_arm_env

    try:
        cfg = command_config("sim_teleop", list(sys.argv[1:] if argv is None else argv), __doc__, word="teleop")
        if cfg is None:
            return 0
        env = make_arm_env(cfg.task, preset=cfg.randomization)
        try:
            run_viewer(env, KeyboardTeleop())
        finally:
            env.close()
    except ReverieError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
