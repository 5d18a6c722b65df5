"""Open an arm's servo bus and check that every configured servo is there and is the right model.

Shared by the follower (Robot), the leader arm (LeaderFollower) and `reverie robot calibrate`, so a
missing, silent, alarming or wrong servo reads the same everywhere: which id, which joint, what came
back on the wire, and what to check.
"""

from __future__ import annotations

from reverie.errors import HardwareError
from reverie.robot_io.bus import ServoAlarm, ServoBus
from reverie.robot_io.config import ArmConfig


def make_bus(arm: ArmConfig, role: str = "arm") -> ServoBus:
    if not arm.port:
        raise HardwareError(f"{role} {arm.name!r} has no port: pass port=/dev/ttyACM0 (Linux) or "
                            f"/dev/tty.usbmodem... (macOS); `ls /dev/tty*` before and after plugging it in")
    # No `models=`: the bus would check them inside connect() with messages that cannot name our
    # joints; connect_bus() pings every id itself, and the bus learns each model from its answer.
    return ServoBus(arm.port, protocol=arm.protocol, baudrate=arm.baudrate, timeout_s=arm.timeout_s,
                    retries=arm.retries)


def connect_bus(bus, arm: ArmConfig, role: str = "arm") -> None:
    """Open the port, then ping every configured id and compare its model with the config. Errors
    name the servo, its joint, what went wrong on the wire and what to check."""
    bus.connect()
    try:
        _verify_servos(bus, arm, role)
    except BaseException:
        bus.close()
        raise


def _verify_servos(bus, arm: ArmConfig, role: str) -> None:
    silent, alarms, wrong = [], [], []
    for j in arm.joints:
        try:
            got = bus.ping(j.id)
        except ServoAlarm as e:  # it answered, but flags overload/overheating/voltage
            alarms.append(f"servo {j.id} (joint {j.name}) reports {e.description}")
            continue
        except HardwareError as e:
            silent.append((j, e))
            continue
        want = bus.family.models[j.model].number if j.model in bus.family.models else None
        if want is None:
            raise HardwareError(f"arm {arm.name!r}, joint {j.name}: unknown {arm.protocol} model "
                                f"{j.model!r}; known: {sorted(bus.family.models)}")
        if got != want:
            actual = bus.family.by_number.get(got)
            wrong.append(f"id {j.id} (joint {j.name}) is model number {got} "
                         f"({actual.name if actual else 'unknown'}), the config says {j.model} ({want})")
    where = f"{role} {arm.name!r} on {arm.port}"
    if silent and len(silent) == len(arm.joints):
        raise HardwareError(
            f"no servo answered on {where} at {arm.baudrate} baud: {first_line(silent[0][1])}. Check "
            f"that the arm is powered, that the port is its bus adapter, that baudrate matches the "
            f"servos' Baud_Rate (SO-101 and Koch arms are set to 1000000) and that protocol="
            f"{arm.protocol} is right")
    if silent:
        lines = "; ".join(f"id {j.id} (joint {j.name}): {first_line(e)}" for j, e in silent)
        raise HardwareError(
            f"servo id(s) {[j.id for j, _ in silent]} did not answer on {where} while the others did "
            f"({lines}). Check that servo's cable in the daisy chain and that its ID is set")
    if wrong:
        raise HardwareError(f"wrong servo model on {where}: " + "; ".join(wrong) +
                            ". Fix `model:` in the arm config or fit the right servo")
    if alarms:
        raise HardwareError(f"hardware alarm on {where}: " + "; ".join(alarms) + ". Power the arm "
                            f"off, check for a blocked joint, the supply voltage and temperature, then retry")


def first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__
