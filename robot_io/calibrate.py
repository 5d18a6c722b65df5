"""`reverie robot calibrate robot=<arm> port=PORT out=calib.json`: measure an arm's middle pose and
range of motion, interactively, and write the calibration JSON that `calibration=` loads.

Steps (the only place in reverie that waits for a person; Robot.connect never does):
  1. torque off on every servo, so the operator can move the arm by hand (support it first);
  2. the operator puts the arm in its middle pose (every joint centred, gripper closed) and presses
     Enter: those readings become each joint's zero;
  3. the operator moves every joint end to end while positions are polled; Enter ends the sweep.
`main(argv, prompt=...)` takes the prompt function, so tests drive the steps from code. With the
default prompt, stdin must be a terminal: the command refuses before touching the arm otherwise.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable

from reverie.config import command_config
from reverie.errors import ConfigError, HardwareError
from reverie.robot_io.calibration import RangeRecorder, make_calibration, read_ticks, save_calibration
from reverie.robot_io.config import ArmConfig, arm_from_command
from reverie.robot_io.arm_bus import connect_bus, make_bus

log = logging.getLogger(__name__)
POLL_S = 0.02


NO_OPERATOR = ("calibration needs an operator at a terminal, who moves the arm by hand and presses Enter "
               "at each step, but stdin is not a terminal (closed, or redirected from a file or pipe). Run "
               "`reverie robot calibrate` in an interactive terminal (over ssh: `ssh -t`); there is no "
               "unattended mode, since the ranges come from moving the joints. Nothing was sent to the arm")


def operator_at_terminal() -> bool:
    try:  # `cmd <&-` leaves sys.stdin None; a closed or detached stream raises ValueError
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):
        return False


def calibrate(arm: ArmConfig, bus, prompt: Callable[[str], str] = input, say: Callable[[str], None] = print) -> dict:
    """Run the interactive steps on a connected bus; returns the calibration dict."""
    asked, released = prompt, False

    def prompt(text: str) -> str:  # Ctrl-D or a terminal closed mid-way: a message, not a traceback
        try:
            return asked(text)
        except EOFError:
            arm_state = "torque is off (support the arm)" if released else "the arm was not touched"
            raise ConfigError(f"calibration stopped: input ended (Ctrl-D, or the terminal closed) at "
                              f"\"{text.split(':')[0]}\"; nothing was written and {arm_state}. Run it "
                              "again at a terminal") from None

    say(f"Calibrating {arm.name} ({len(arm.joints)} joints) on {arm.port}.")
    prompt("Support the arm with one hand: torque will be switched off. Press Enter when ready. ")
    bus.set_torque(arm.ids, False)
    released = True
    prompt("Step 1/2: move the arm to its middle pose (every joint centred in its travel, gripper "
           "closed), hold it still and press Enter. ")
    middle = read_ticks(bus, arm)
    say("  middle: " + ", ".join(f"{j.name}={middle[j.id]}" for j in arm.joints))

    ranges = RangeRecorder(arm)
    ranges.add(middle)
    stop, failure = threading.Event(), []

    def sweep():  # polls while the main thread waits for Enter
        while not stop.wait(POLL_S):
            try:
                ranges.add(read_ticks(bus, arm))
            except HardwareError as e:
                failure.append(e)
                return

    poller = threading.Thread(target=sweep, name="calibration-sweep", daemon=True)
    poller.start()
    try:
        prompt("Step 2/2: move every joint slowly from one end stop to the other (the gripper fully "
               "open and closed), then press Enter. ")
    finally:
        stop.set()
        poller.join(timeout=2.0)
    if failure:
        raise failure[0]
    ranges.add(read_ticks(bus, arm))
    calibration = make_calibration(arm, middle, ranges)
    for name, c in calibration["joints"].items():
        say(f"  {name:<14} zero {c['zero_ticks']:>4}  range {c['range_ticks'][0]:>4}..{c['range_ticks'][1]:<4}")
    return calibration


def main(argv: list[str], prompt: Callable[[str], str] = input, say: Callable[[str], None] = print) -> int:
    cfg = command_config("calibrate", argv, __doc__, word="calibrate")
    if cfg is None:
        return 0
    if not cfg.out:
        raise ConfigError("calibrate needs out=PATH for the calibration JSON, e.g. out=calib/so101.json")
    arm = arm_from_command(cfg)
    if prompt is input and not operator_at_terminal():  # input() would raise EOFError mid-way
        raise ConfigError(NO_OPERATOR)
    bus = make_bus(arm)
    connect_bus(bus, arm)
    try:
        calibration = calibrate(arm, bus, prompt=prompt, say=say)
    finally:
        bus.close()  # torque stays off: the operator is holding the arm
    path = save_calibration(calibration, cfg.out)
    say(f"wrote {path}; use it with `calibration={path}` (for example `reverie record robot={arm.name} "
        f"calibration={path} ...`)")
    return 0
