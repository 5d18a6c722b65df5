"""The servo side of a virtual bus: six emulated servos on the simulated arm.

`VirtualBus.receive(bytes, now)` takes whatever arrived on the wire and returns the replies to send,
each with the time it is due, exactly as the servos on a real bus would answer:

- instruction packets are decoded per protocol; a packet whose CRC/checksum fails gets no reply;
- PING, READ, WRITE, REG_WRITE/ACTION, SYNC_READ, SYNC_WRITE (and BULK_READ on Dynamixel) act on
  one control-table memory per servo, laid out and initialised per the model's published table;
  other instructions get Dynamixel's "instruction error" status, or silence on Feetech;
- each reply leaves after the request's own wire time, then the servo's Return_Delay_Time
  (x 2 us, factory default), then its own wire time; sync/bulk read replies follow one another;
- Goal_Position drives the physics actuator of the joint (clamped to the position limits);
  Torque_Enable = 0 makes the joint limp (its actuator target follows the present position);
- Present_Position/Velocity are the physics joints, quantised to 4096 ticks per turn:
  ticks = 2048 + rad * 4096 / (2 pi). Real arms map ticks to joint angles through calibration
  (robot_io/config.py); the virtual arm's calibration is this identity around 2048.

The physics is any object with ArmPhysics' servo interface: lower, upper, set_targets(q),
step(seconds), qpos(), qvel(). `advance(now)` steps it by the wall time since the last call, so the
arm moves in real time between packets.

Faults (for tests of the client's error handling): `drop` loses an instruction packet with that
probability (nothing applied, no reply), `corrupt` flips a byte in a reply, `delay_ms` holds every
reply back, `alarm_ids` makes those servos report an overload alarm in every status packet.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from reverie.robot_io.dynamixel import control_table as dxl_table, protocol as dxl
from reverie.robot_io.feetech import control_table as ft_table, protocol as ft

TICKS_PER_TURN = 4096
CENTRE = 2048
RAD_PER_TICK = 2 * math.pi / TICKS_PER_TURN
MAX_STEP_S = 0.1  # physics catch-up per advance(); longer gaps (a stalled host) are not replayed

DEFAULT_MODELS = {
    "feetech": ("sts3215",) * 6,
    # Koch v1.1 follower: XL430-W250 on the loaded shoulder joints, XL330-M288 elsewhere.
    "dynamixel": ("xl430-w250", "xl430-w250") + ("xl330-m288",) * 4,
}
# Supply voltage (x 0.1 V) the virtual servos report: 12 V STS3215, 5 V XL330, 12 V XL430/XM430.
SUPPLY = {"sts3215": 120, "xl330-m077": 50, "xl330-m288": 50}


def ticks_to_rad(ticks: float) -> float:
    return (ticks - CENTRE) * RAD_PER_TICK


def rad_to_ticks(rad: float) -> int:
    return int(round(rad / RAD_PER_TICK)) + CENTRE


@dataclasses.dataclass
class Faults:
    drop: float = 0.0
    corrupt: float = 0.0
    delay_ms: float = 0.0
    alarm_ids: tuple[int, ...] = ()

    def __post_init__(self):
        for name in ("drop", "corrupt"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"fault {name}={p} is a probability: use a value in [0, 1]")
        if self.delay_ms < 0:
            raise ValueError(f"fault delay_ms={self.delay_ms} must be >= 0")


class VirtualServo:
    """One servo's control-table memory, initialised from the model's defaults."""

    def __init__(self, servo_id: int, family: str, model):
        self.family, self.model = family, model
        size = max(r.address + r.size for r in model.registers.values())
        self.memory = bytearray(size)
        self.writable = bytearray(size)  # 1 where a RW register lives
        for name, reg in model.registers.items():
            self.set(name, reg.default)
            if reg.access == "RW":
                self.writable[reg.address:reg.address + reg.size] = b"\x01" * reg.size
        self.set("ID", servo_id)
        if family == "dynamixel":
            self.set("Firmware_Version", model.firmware)
        self.registered: tuple[int, bytes] | None = None  # REG_WRITE held until ACTION
        self.set("Present_Voltage", SUPPLY.get(model.name, 120))
        self.set("Present_Temperature", 30)

    @property
    def id(self) -> int:
        return self.get("ID")

    @property
    def return_delay_s(self) -> float:
        return self.get("Return_Delay_Time") * 2e-6

    def _codec(self, name: str):
        reg = self.model.registers[name]
        if self.family == "feetech":
            return reg, (lambda v: ft.encode_value(v, reg.size, reg.sign_bit, self.model.byteorder),
                         lambda b: ft.decode_value(b, reg.sign_bit, self.model.byteorder))
        return reg, (lambda v: dxl.encode_value(v, reg.size, reg.signed),
                     lambda b: dxl.decode_value(b, reg.signed))

    def get(self, name: str) -> int:
        reg, (_, decode) = self._codec(name)
        return decode(bytes(self.memory[reg.address:reg.address + reg.size]))

    def set(self, name: str, value: int) -> None:
        reg, (encode, _) = self._codec(name)
        self.memory[reg.address:reg.address + reg.size] = encode(value)

    def read(self, address: int, size: int) -> bytes | None:
        if size < 1 or address + size > len(self.memory):
            return None
        return bytes(self.memory[address:address + size])

    def write(self, address: int, data: bytes) -> bool:
        """Store `data`; False (and nothing stored) if any byte is outside the table or read-only."""
        end = address + len(data)
        if not data or end > len(self.memory) or not all(self.writable[address:end]):
            return False
        self.memory[address:end] = data
        return True


class VirtualBus:
    def __init__(self, protocol: str, physics, ids: tuple[int, ...] = (1, 2, 3, 4, 5, 6),
                 models: tuple[str, ...] | None = None, faults: Faults | None = None,
                 baudrate: int = 1_000_000, seed: int = 0):
        if protocol not in DEFAULT_MODELS:
            raise ValueError(f"unknown protocol {protocol!r}: use feetech or dynamixel")
        tables = ft_table.MODELS if protocol == "feetech" else dxl_table.MODELS
        models = tuple(models or DEFAULT_MODELS[protocol])
        if len(models) != len(ids):
            raise ValueError(f"{len(ids)} servo ids but {len(models)} models: give one model per id")
        unknown = [m for m in models if m not in tables]
        if unknown:
            raise ValueError(f"unknown {protocol} model(s) {unknown}: choose from {sorted(tables)}")
        self.protocol, self.physics, self.baudrate = protocol, physics, int(baudrate)
        self.proto = ft if protocol == "feetech" else dxl
        self.faults = faults or Faults()
        self.rng = np.random.default_rng(seed)
        self.reader = self.proto.Reader("instruction")
        # Servo i drives physics joint i, in id order.
        self.servos = [VirtualServo(i, protocol, tables[m]) for i, m in zip(ids, models)]
        self.stats = {"packets": 0, "bad_packets": 0, "dropped": 0, "corrupted": 0, "replies": 0}
        # Called (id, goal, present) for every Goal_Position a servo accepts (serve-bus goal_log=).
        self.on_goal = None
        self._last = None
        self._sync_registers(np.asarray(physics.qpos()), np.zeros(len(self.servos)))
        for servo in self.servos:  # a powered-up servo's goal is where it stands
            servo.set("Goal_Position", servo.get("Present_Position"))

    # ---- time -----------------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Step the physics by the wall time since the last call, then refresh present registers."""
        if self._last is None:
            self._last = now
            return
        dt = min(now - self._last, MAX_STEP_S)
        self._last = now
        if dt <= 0:
            return
        self._apply_targets()
        self.physics.step(dt)
        self._sync_registers(np.asarray(self.physics.qpos()), np.asarray(self.physics.qvel()))

    def _apply_targets(self) -> None:
        q = np.asarray(self.physics.qpos(), np.float64)
        targets = q.copy()  # limp joints: the target follows the joint
        for j, servo in enumerate(self.servos):
            if servo.get("Torque_Enable"):
                lo, hi = servo.get("Min_Position_Limit"), servo.get("Max_Position_Limit")
                goal = servo.get("Goal_Position")
                if lo < hi:  # both zero means "no limit" (multi-turn) on STS servos
                    goal = min(max(goal, lo), hi)
                targets[j] = ticks_to_rad(goal)
        self.physics.set_targets(targets)

    def _sync_registers(self, q: np.ndarray, qd: np.ndarray) -> None:
        for j, servo in enumerate(self.servos):
            ticks = rad_to_ticks(float(q[j]))
            ticks_per_s = float(qd[j]) / RAD_PER_TICK
            if self.protocol == "feetech":
                servo.set("Present_Position", min(max(ticks, 0), TICKS_PER_TURN - 1))
                servo.set("Present_Velocity", int(round(ticks_per_s / 50.0)))  # 50 steps/s = 0.732 rpm
            else:
                servo.set("Present_Position", ticks)
                servo.set("Present_Velocity", int(round(ticks_per_s * 60 / TICKS_PER_TURN / 0.229)))
            moving = abs(ticks_per_s) > 10  # ~0.9 deg/s
            servo.set("Moving", int(moving))
            if self.protocol == "dynamixel":
                servo.set("Hardware_Error_Status", 0x20 if servo.id in self.faults.alarm_ids else 0)
            else:
                servo.set("Status", 0x20 if servo.id in self.faults.alarm_ids else 0)

    # ---- wire -----------------------------------------------------------------------------------

    def wire_s(self, n_bytes: int) -> float:
        return n_bytes * 10 / self.baudrate  # 8N1: 10 bits per byte

    def receive(self, data: bytes, now: float) -> list[tuple[float, bytes]]:
        """Bytes arrived at `now`; returns [(due time, reply bytes)] in sending order."""
        self.reader.feed(data)
        bad_before = self.reader.crc_errors
        out: list[tuple[float, bytes]] = []
        line_free = now  # half duplex: one talker at a time
        for packet in self.reader.packets():
            self.stats["packets"] += 1
            if self.faults.drop and self.rng.random() < self.faults.drop:
                self.stats["dropped"] += 1
                continue
            self.advance(now)
            replies = self._handle(packet)
            self._apply_targets()
            # A servo acts once the request's last byte is in; then each waits its return delay.
            start = max(now, line_free) + self.wire_s(self._length(packet))
            for servo, reply in replies:
                start += servo.return_delay_s + self.faults.delay_ms / 1e3
                if self.faults.corrupt and self.rng.random() < self.faults.corrupt:
                    reply = self._corrupt(reply)
                out.append((start, reply))
                self.stats["replies"] += 1
                start += self.wire_s(len(reply))
            line_free = start
        self.stats["bad_packets"] += self.reader.crc_errors - bad_before
        return out

    def _length(self, packet) -> int:
        overhead = 10 if self.protocol == "dynamixel" else 6
        return overhead + len(packet.params)

    def _corrupt(self, reply: bytes) -> bytes:
        self.stats["corrupted"] += 1
        damaged = bytearray(reply)
        damaged[-3] ^= 0x5A  # a payload byte: the frame still parses but fails its CRC/checksum
        return bytes(damaged)

    # ---- instructions ---------------------------------------------------------------------------

    def _servo(self, servo_id: int) -> VirtualServo | None:
        for servo in self.servos:
            if servo.id == servo_id:
                return servo
        return None

    def _targets(self, servo_id: int) -> list[VirtualServo]:
        if servo_id == self.proto.BROADCAST_ID:
            return list(self.servos)
        servo = self._servo(servo_id)
        return [servo] if servo else []

    def _status(self, servo: VirtualServo, error: int = 0, params: bytes = b"") -> tuple:
        if servo.id in self.faults.alarm_ids:
            error |= dxl.ALERT_BIT if self.protocol == "dynamixel" else 0x20
        return servo, self.proto.status_packet(servo.id, error, params)

    def _answers(self, servo: VirtualServo, instruction: int) -> bool:
        """Status_Return_Level: Dynamixel 0 = PING only, 1 = +READ, 2 = all; Feetech 0 = PING/READ."""
        level = servo.get("Status_Return_Level")
        reads = (self.proto.Instruction.PING, self.proto.Instruction.READ)
        if self.protocol == "dynamixel":
            return level >= 2 or instruction == dxl.Instruction.PING or (level == 1 and instruction in reads)
        return level >= 1 or instruction in reads

    def _handle(self, packet) -> list[tuple[VirtualServo, bytes]]:
        if self.protocol == "dynamixel":
            return self._handle_dynamixel(packet)
        return self._handle_feetech(packet)

    def _handle_feetech(self, packet) -> list:
        I, p, broadcast = ft.Instruction, packet.params, packet.id == ft.BROADCAST_ID
        if packet.instruction == I.PING:
            return [self._status(s) for s in self._targets(packet.id)]
        if packet.instruction == I.READ and len(p) == 2 and not broadcast:
            servo = self._servo(packet.id)
            data = servo.read(p[0], p[1]) if servo else None
            return [self._status(servo, 0, data)] if data is not None else []
        if (packet.instruction in (I.WRITE, I.REG_WRITE) and len(p) >= 2) or packet.instruction == I.ACTION:
            replies = []
            for servo in self._targets(packet.id):
                # A write to read-only memory is ignored; Feetech's error byte has no code for it.
                if packet.instruction == I.WRITE:
                    self._write(servo, p[0], p[1:])
                elif packet.instruction == I.REG_WRITE:
                    servo.registered = (p[0], bytes(p[1:]))
                elif servo.registered is not None:
                    self._write(servo, *servo.registered)
                    servo.registered = None
                if not broadcast and self._answers(servo, packet.instruction):
                    replies.append(self._status(servo))
            return replies
        if packet.instruction == I.SYNC_READ and broadcast and len(p) >= 3:
            replies = []
            for servo_id in p[2:]:
                servo = self._servo(servo_id)
                data = servo.read(p[0], p[1]) if servo else None
                if data is not None:
                    replies.append(self._status(servo, 0, data))
            return replies
        if packet.instruction == I.SYNC_WRITE and broadcast and len(p) >= 2:
            self._sync_write(p[0], p[1], p[2:])
        return []  # unknown instructions and malformed parameters get no reply

    def _handle_dynamixel(self, packet) -> list:
        I, p, broadcast = dxl.Instruction, packet.params, packet.id == dxl.BROADCAST_ID
        u16 = lambda b, i: b[i] | (b[i + 1] << 8)  # noqa: E731
        if packet.instruction == I.PING:
            return [self._status(s, 0, dxl.u16(s.model.number) + bytes((s.get("Firmware_Version"),)))
                    for s in self._targets(packet.id)]
        if packet.instruction == I.SYNC_READ and broadcast and len(p) >= 5:
            return self._reads([(i, u16(p, 0), u16(p, 2)) for i in p[4:]])
        if packet.instruction == I.BULK_READ and broadcast and len(p) >= 5 and len(p) % 5 == 0:
            return self._reads([(p[k], u16(p, k + 1), u16(p, k + 3)) for k in range(0, len(p), 5)])
        if packet.instruction == I.SYNC_WRITE and broadcast and len(p) >= 4:
            self._sync_write(u16(p, 0), u16(p, 2), p[4:])
            return []
        targets = self._targets(packet.id)
        replies = []
        for servo in targets:
            if packet.instruction == I.READ and len(p) == 4:
                data = servo.read(u16(p, 0), u16(p, 2))
                reply = self._status(servo, 0, data) if data is not None else self._status(servo, 0x07)
            elif packet.instruction == I.WRITE and len(p) >= 3:
                reply = self._status(servo, 0 if self._write(servo, u16(p, 0), p[2:]) else 0x07)
            elif packet.instruction == I.REG_WRITE and len(p) >= 3:
                servo.registered = (u16(p, 0), bytes(p[2:]))
                servo.set("Registered_Instruction", 1)
                reply = self._status(servo)
            elif packet.instruction == I.ACTION:
                # ACTION without a pending REG_WRITE is an instruction error (e-manual, error 0x02).
                ok = servo.registered is not None and self._write(servo, *servo.registered)
                reply = self._status(servo, 0 if ok else 0x02 if servo.registered is None else 0x07)
                servo.registered = None
                servo.set("Registered_Instruction", 0)
            elif packet.instruction in (I.READ, I.WRITE, I.REG_WRITE):
                reply = self._status(servo, 0x05)  # data length error
            else:
                reply = self._status(servo, 0x02)  # instruction error: not emulated
            if not broadcast and self._answers(servo, packet.instruction):
                replies.append(reply)
        return replies

    def _reads(self, requests: list[tuple[int, int, int]]) -> list:
        replies = []
        for servo_id, address, size in requests:
            servo = self._servo(servo_id)
            data = servo.read(address, size) if servo else None
            if data is not None:
                replies.append(self._status(servo, 0, data))
            elif servo:
                replies.append(self._status(servo, 0x07))
        return replies

    def _sync_write(self, address: int, size: int, body: bytes) -> None:
        if size < 1 or len(body) % (size + 1):
            return  # malformed: real servos cannot tell their slice, so nobody acts on it
        for k in range(0, len(body), size + 1):
            servo = self._servo(body[k])
            if servo:
                self._write(servo, address, body[k + 1:k + 1 + size])

    def _write(self, servo: VirtualServo, address: int, data: bytes) -> bool:
        torque_reg = servo.model.registers["Torque_Enable"]
        eeprom_end = torque_reg.address  # both families: EEPROM below Torque_Enable
        if self.protocol == "dynamixel" and address < eeprom_end and servo.get("Torque_Enable"):
            return False  # Dynamixel: EEPROM is locked while torque is on (access error)
        was_on = servo.get("Torque_Enable")
        if not servo.write(address, data):
            return False
        if not was_on and servo.get("Torque_Enable") and not _covers(address, data, servo, "Goal_Position"):
            # Torque on holds the joint where it is rather than jumping to a stale goal.
            servo.set("Goal_Position", servo.get("Present_Position"))
        if self.on_goal is not None and _covers(address, data, servo, "Goal_Position"):
            self.on_goal(servo.id, servo.get("Goal_Position"), servo.get("Present_Position"))
        return True


def _covers(address: int, data: bytes, servo: VirtualServo, name: str) -> bool:
    reg = servo.model.registers[name]
    return address <= reg.address and address + len(data) >= reg.address + reg.size
