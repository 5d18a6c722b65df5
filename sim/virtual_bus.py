"""The servo side of a virtual bus: six emulated servos on the simulated arm.

`VirtualBus.receive(bytes, now)` takes whatever arrived on the wire and returns the replies to send,
each with the time it is due, exactly as the servos on a real bus would answer:

- instruction packets are decoded per protocol. Both families: PING, READ, WRITE, REG_WRITE/ACTION,
  SYNC_READ, SYNC_WRITE. Dynamixel Protocol 2.0 also: BULK_READ/WRITE, FAST_SYNC_READ,
  FAST_BULK_READ, REBOOT, FACTORY_RESET, CLEAR, indirect addresses, and the status error numbers
  of the e-manual (CRC, data range, data length, data limit, access, instruction errors). Feetech's
  status byte only carries alarm flags (voltage, encoder, temperature, current, overload), so a
  Feetech servo acknowledges what it ignores and stays silent on a bad checksum or an unknown
  instruction: it has no flag to report them with;
- each servo holds one control-table memory laid out and initialised per the model's published
  table (Feetech: the 256 addresses a READ can name, unlisted ones reading 0); its ID and Baud_Rate
  are the bus's, and a servo whose Baud_Rate no longer matches the bus rate hears nothing;
- a status packet comes from the ID the servo had when the instruction arrived (an ID change is
  acknowledged by the old ID);
- each reply leaves after the request's own wire time, then the servo's Return_Delay_Time
  (x 2 us, factory default), then its own wire time; sync/bulk read replies follow one another.
  Half duplex: replies to a request the host has already talked over are not sent (see receive);
- a packet whose bytes stop arriving for PACKET_TIMEOUT_S is dropped (the servos' inter-byte
  timeout), so a truncated header with a large length field cannot swallow the packets after it;
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
# A servo drops a partly received packet after this silence. Real firmware uses a few byte times;
# a pty hands over whole client writes, so a longer value costs nothing and tolerates a busy host.
PACKET_TIMEOUT_S = 0.01
FEETECH_ADDRESSES = 256  # READ/WRITE name one byte of address
CLEAR_MULTI_TURN = b"\x01\x44\x58\x4c\x22"  # CLEAR's option 1 and its fixed key "DXL\""
RESETS = {0xFF: (), 0x01: ("ID",), 0x02: ("ID", "Baud_Rate")}  # FACTORY_RESET option -> what it keeps

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

    def __init__(self, servo_id: int, family: str, model, baud_code: int):
        self.family, self.model = family, model
        size = max(r.address + r.size for r in model.registers.values())
        size = FEETECH_ADDRESSES if family == "feetech" else size
        self.memory = bytearray(size)
        self.writable = bytearray(size)  # 1 where a RW register lives
        self.register_at: list = [None] * size  # the register each byte belongs to
        for reg in model.registers.values():
            for a in range(reg.address, reg.address + reg.size):
                self.register_at[a] = reg
            if reg.access == "RW":
                self.writable[reg.address:reg.address + reg.size] = b"\x01" * reg.size
        self.eeprom_end = model.registers["Torque_Enable"].address  # both families: EEPROM below it
        # Indirect Data byte -> address of its Indirect Address register (Dynamixel).
        self.indirect = {data + k: first + 2 * k for first, data, count in getattr(model, "indirect", ())
                         for k in range(count)}
        self.indirect_start = min(self.indirect, default=size)
        self.factory()
        self.set("ID", servo_id)
        self.set("Baud_Rate", baud_code)

    def factory(self) -> None:
        """Every register at its factory value, as a new servo (or a factory reset) has it."""
        self.memory[:] = bytes(len(self.memory))
        for name, reg in self.model.registers.items():
            self.set(name, reg.default)
        if self.family == "dynamixel":
            self.set("Firmware_Version", self.model.firmware)
        self.registered: tuple[int, bytes] | None = None  # REG_WRITE held until ACTION
        self.set("Present_Voltage", SUPPLY.get(self.model.name, 120))
        self.set("Present_Temperature", 30)

    def reboot(self) -> None:
        """Power cycle: EEPROM kept, RAM back to its defaults (torque off, errors cleared)."""
        eeprom = bytes(self.memory[:self.eeprom_end])
        self.factory()
        self.memory[:self.eeprom_end] = eeprom

    def factory_reset(self, keep: tuple[str, ...]) -> None:
        kept = {name: self.get(name) for name in keep}
        self.factory()
        for name, value in kept.items():
            self.set(name, value)

    @property
    def id(self) -> int:
        return self.get("ID")

    @property
    def return_delay_s(self) -> float:
        return self.get("Return_Delay_Time") * 2e-6

    def _codec(self, reg):
        if self.family == "feetech":
            return (lambda v: ft.encode_value(v, reg.size, reg.sign_bit, self.model.byteorder),
                    lambda b: ft.decode_value(b, reg.sign_bit, self.model.byteorder))
        return (lambda v: dxl.encode_value(v, reg.size, reg.signed),
                lambda b: dxl.decode_value(b, reg.signed))

    def get(self, name: str, memory: bytearray | None = None) -> int:
        reg = self.model.registers[name]
        memory = self.memory if memory is None else memory
        return self._codec(reg)[1](bytes(memory[reg.address:reg.address + reg.size]))

    def set(self, name: str, value: int) -> None:
        reg = self.model.registers[name]
        self.memory[reg.address:reg.address + reg.size] = self._codec(reg)[0](value)

    def _target(self, address: int) -> int:
        """The byte an access to `address` reaches: itself, or where its Indirect Address points."""
        pointer = self.indirect.get(address)
        if pointer is None:
            return address
        target = int.from_bytes(self.memory[pointer:pointer + 2], "little")
        return address if target in self.indirect or target >= len(self.memory) else target

    def read(self, address: int, size: int) -> bytes | None:
        if size < 1 or address + size > len(self.memory):
            return None
        if address + size <= self.indirect_start:
            return bytes(self.memory[address:address + size])
        return bytes(self.memory[self._target(a)] for a in range(address, address + size))

    def write(self, address: int, data: bytes) -> bool:
        """Feetech: store `data`; False (and nothing stored) if any byte is outside the table or read-only."""
        end = address + len(data)
        if not data or end > len(self.memory) or not all(self.writable[address:end]):
            return False
        self.memory[address:end] = data
        return True

    def stage(self, address: int, data: bytes) -> tuple[int, bytearray | None]:
        """Dynamixel: the status error number a WRITE of `data` gets and, when 0, the memory after it."""
        end = address + len(data)
        if not data:
            return dxl.LENGTH_ERROR, None
        if end > len(self.memory):
            return dxl.ACCESS_ERROR, None
        first, last = self.register_at[address], self.register_at[end - 1]
        if (first and first.address != address) or (last and last.address + last.size != end):
            return dxl.LENGTH_ERROR, None  # e-manual: part of a multi-byte item is a length error
        targets = [self._target(a) for a in range(address, end)]
        torque_on = self.get("Torque_Enable")
        if not all(self.writable[t] for t in targets) or (torque_on and min(targets) < self.eeprom_end):
            return dxl.ACCESS_ERROR, None  # read-only, reserved, or EEPROM while torque is on
        staged = bytearray(self.memory)
        for t, byte in zip(targets, data):
            staged[t] = byte
        names = {name for name, reg in self.model.registers.items()
                 if any(reg.address <= t < reg.address + reg.size for t in targets)}
        for name in sorted(names):
            error = self._check(name, self.get(name, staged), staged)
            if error:
                return error, None
        return 0, staged

    def _check(self, name: str, value: int, memory: bytearray) -> int:
        if not self.model.registers[name].accepts(value):
            return dxl.RANGE_ERROR
        limit = {"Goal_Velocity": "Velocity_Limit", "Goal_PWM": "PWM_Limit", "Goal_Current": "Current_Limit"}
        if name in limit and abs(value) > self.get(limit[name], memory):
            return dxl.LIMIT_ERROR
        if name == "Goal_Position":
            mode = self.get("Operating_Mode", memory)
            if mode == 3 and not self.get("Min_Position_Limit", memory) <= value <= self.get("Max_Position_Limit", memory):
                return dxl.LIMIT_ERROR  # position mode: the goal must lie within the position limits
            if mode in (4, 5) and abs(value) > 1_048_575:  # extended position: +-256 turns
                return dxl.RANGE_ERROR
        return 0


class VirtualBus:
    def __init__(self, protocol: str, physics, ids: tuple[int, ...] = (1, 2, 3, 4, 5, 6),
                 models: tuple[str, ...] | None = None, faults: Faults | None = None,
                 baudrate: int = 1_000_000, seed: int = 0):
        if protocol not in DEFAULT_MODELS:
            raise ValueError(f"unknown protocol {protocol!r}: use feetech or dynamixel")
        table = ft_table if protocol == "feetech" else dxl_table
        models = tuple(models or DEFAULT_MODELS[protocol])
        if len(models) != len(ids):
            raise ValueError(f"{len(ids)} servo ids but {len(models)} models: give one model per id")
        unknown = [m for m in models if m not in table.MODELS]
        if unknown:
            raise ValueError(f"unknown {protocol} model(s) {unknown}: choose from {sorted(table.MODELS)}")
        codes = {bps: code for code, bps in table.BAUD_RATES.items()}
        if int(baudrate) not in codes:
            raise ValueError(f"baudrate={baudrate} is no {protocol} Baud_Rate setting: use one of {sorted(codes)}")
        self.protocol, self.physics, self.baudrate = protocol, physics, int(baudrate)
        self.baud_code = codes[self.baudrate]  # what every servo's Baud_Rate register says
        self.proto = ft if protocol == "feetech" else dxl
        self.faults = faults or Faults()
        self.rng = np.random.default_rng(seed)
        self.reader = self.proto.Reader("instruction")
        self._bad_frames: list[bytes] = []
        self.reader.on_bad = self._bad_frames.append
        self._last_bytes_at: float | None = None
        # Servo i drives physics joint i, in id order.
        self.servos = [VirtualServo(i, protocol, table.MODELS[m], self.baud_code) for i, m in zip(ids, models)]
        self.stats = {"packets": 0, "bad_packets": 0, "dropped": 0, "corrupted": 0, "replies": 0,
                      "timed_out": 0, "talked_over": 0}
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
        """Bytes arrived at `now`; returns [(due time, reply bytes)] in sending order.

        Half duplex: when one burst holds several requests, the host was talking while the servos
        waited out their return delay, so only the last request's replies are sent (the earlier ones
        would collide with it). serve-bus applies the same rule to replies still pending when new
        bytes arrive. That is what lets the SDKs send a unicast ACTION, or a WRITE without reading
        its status, and go straight on: the status they never read does not land in their next read.
        """
        if self.reader.buffer and self._last_bytes_at is not None and now - self._last_bytes_at > PACKET_TIMEOUT_S:
            self.stats["timed_out"] += 1
            self.reader.clear()  # the rest of that packet never came: the servos forget it
        self._last_bytes_at = now
        self.reader.feed(data)
        bad_before = self.reader.crc_errors
        requests: list[tuple[int, list]] = []  # (wire bytes of the request, its replies)
        while True:
            packet = self.reader.next()
            for frame in self._bad_frames:
                requests.append((len(frame), self._bad_frame(frame)))
            self._bad_frames.clear()
            if packet is None:
                break
            self.stats["packets"] += 1
            if self.faults.drop and self.rng.random() < self.faults.drop:
                self.stats["dropped"] += 1
                continue
            self.advance(now)
            replies = self._handle(packet)
            self._apply_targets()
            requests.append((self._length(packet), replies))
        out: list[tuple[float, bytes]] = []
        line_free = now
        for k, (length, replies) in enumerate(requests):
            # A servo acts once the request's last byte is in; then each waits its return delay.
            start = line_free = max(now, line_free) + self.wire_s(length)
            if k < len(requests) - 1:
                self.stats["talked_over"] += len(replies)
                continue
            for servo, reply in replies:
                start += servo.return_delay_s + self.faults.delay_ms / 1e3
                if self.faults.corrupt and self.rng.random() < self.faults.corrupt:
                    reply = self._corrupt(reply)
                out.append((start, reply))
                self.stats["replies"] += 1
                start += self.wire_s(len(reply))
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

    def _bad_frame(self, frame: bytes) -> list:
        """Dynamixel answers a packet whose CRC fails with CRC Error (0x03), from the ID it names.
        Feetech's status byte has no checksum flag: an STS servo stays silent."""
        if self.protocol != "dynamixel" or frame[4] == dxl.BROADCAST_ID:
            return []
        servo = self._servo(frame[4])
        if servo is None or not self._answers(servo, frame[7]):
            return []
        return [self._status(servo, dxl.CRC_ERROR)]

    # ---- instructions ---------------------------------------------------------------------------

    def _hearing(self) -> list[VirtualServo]:
        """Servos set to the bus's rate; one switched to another Baud_Rate hears only noise."""
        return [s for s in self.servos if s.get("Baud_Rate") == self.baud_code]

    def _servo(self, servo_id: int) -> VirtualServo | None:
        for servo in self._hearing():
            if servo.id == servo_id:
                return servo
        return None

    def _targets(self, servo_id: int) -> list[VirtualServo]:
        if servo_id == self.proto.BROADCAST_ID:
            return self._hearing()
        servo = self._servo(servo_id)
        return [servo] if servo else []

    def _status(self, servo: VirtualServo, error: int = 0, params: bytes = b"", servo_id: int | None = None) -> tuple:
        servo_id = servo.id if servo_id is None else servo_id
        if servo_id in self.faults.alarm_ids:
            error |= dxl.ALERT_BIT if self.protocol == "dynamixel" else 0x20
        return servo, self.proto.status_packet(servo_id, error, params)

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
            # Any of the 256 addresses reads (unlisted ones as 0): an STS servo has no error to report.
            servo = self._servo(packet.id)
            data = servo.read(p[0], p[1]) if servo else None
            return [self._status(servo, 0, data)] if data is not None else []
        if (packet.instruction in (I.WRITE, I.REG_WRITE) and len(p) >= 2) or packet.instruction == I.ACTION:
            replies = []
            for servo in self._targets(packet.id):
                servo_id, answers = servo.id, self._answers(servo, packet.instruction)
                # A write to read-only memory is ignored; Feetech's error byte has no code for it, nor
                # for a value out of range. Those are stored as written: a Goal_Position past the angle
                # limits is acknowledged and the joint stops at the limit. The STS tables define
                # Torque_Enable 0 and 1 only; our choice is that any nonzero value holds torque.
                if packet.instruction == I.WRITE:
                    self._write(servo, p[0], p[1:])
                elif packet.instruction == I.REG_WRITE:
                    servo.registered = (p[0], bytes(p[1:]))
                elif servo.registered is not None:
                    self._write(servo, *servo.registered)
                    servo.registered = None
                if not broadcast and answers:
                    replies.append(self._status(servo, 0, b"", servo_id))
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
        I, p, broadcast, inst = dxl.Instruction, packet.params, packet.id == dxl.BROADCAST_ID, packet.instruction
        u16 = lambda b, i: b[i] | (b[i + 1] << 8)  # noqa: E731
        if inst == I.PING:
            return [self._status(s, 0, dxl.u16(s.model.number) + bytes((s.get("Firmware_Version"),)))
                    for s in sorted(self._targets(packet.id), key=lambda s: s.id)]
        if inst in (I.SYNC_READ, I.FAST_SYNC_READ) and broadcast and len(p) >= 5:
            requests = [(i, u16(p, 0), u16(p, 2)) for i in p[4:]]
            return self._fast_read(requests) if inst == I.FAST_SYNC_READ else self._reads(requests)
        if inst in (I.BULK_READ, I.FAST_BULK_READ) and broadcast and len(p) >= 5 and len(p) % 5 == 0:
            requests = [(p[k], u16(p, k + 1), u16(p, k + 3)) for k in range(0, len(p), 5)]
            return self._fast_read(requests) if inst == I.FAST_BULK_READ else self._reads(requests)
        if inst == I.SYNC_WRITE and broadcast and len(p) >= 4:
            self._sync_write(u16(p, 0), u16(p, 2), p[4:])
            return []
        if inst == I.BULK_WRITE and broadcast:
            self._bulk_write(p)
            return []
        replies = []
        for servo in self._targets(packet.id):
            # The status goes out from the ID, and per the Status_Return_Level, the servo had when
            # the instruction arrived: an ID change is acknowledged by the old ID.
            servo_id, answers = servo.id, self._answers(servo, inst)
            error, data = self._execute(servo, inst, p, broadcast)
            if not broadcast and answers:
                replies.append(self._status(servo, error, data, servo_id))
        return replies

    def _execute(self, servo: VirtualServo, inst: int, p: bytes, broadcast: bool) -> tuple[int, bytes]:
        """One Dynamixel instruction on one servo: (status error number, status parameters)."""
        I, u16 = dxl.Instruction, lambda i: p[i] | (p[i + 1] << 8)
        if inst in (I.READ, I.WRITE, I.REG_WRITE) and len(p) < (4 if inst == I.READ else 3):
            return dxl.LENGTH_ERROR, b""
        if inst == I.READ:
            size = u16(2)
            data = servo.read(u16(0), size) if len(p) == 4 else None
            return (0, data) if data is not None else (dxl.ACCESS_ERROR if size else dxl.LENGTH_ERROR, b"")
        if inst == I.WRITE:
            return self._write(servo, u16(0), p[2:]), b""
        if inst == I.REG_WRITE:  # checked as a WRITE now, stored at ACTION
            error, _ = servo.stage(u16(0), p[2:])
            if not error:
                servo.registered = (u16(0), bytes(p[2:]))
                servo.set("Registered_Instruction", 1)
            return error, b""
        if inst == I.ACTION:
            if servo.registered is None:
                return dxl.INSTRUCTION_ERROR, b""  # e-manual: ACTION without a REG_WRITE
            error = self._write(servo, *servo.registered)
            servo.registered = None
            servo.set("Registered_Instruction", 0)
            return error, b""
        if inst == I.REBOOT:
            servo.reboot()
            self._power_up(servo)
            return 0, b""
        if inst == I.FACTORY_RESET:
            if len(p) != 1:
                return dxl.LENGTH_ERROR, b""
            if p[0] not in RESETS:
                return dxl.RANGE_ERROR, b""
            if broadcast and p[0] == 0xFF:
                return 0, b""  # e-manual: a broadcast Reset All is not carried out
            if servo.get("Torque_Enable"):
                return dxl.ACCESS_ERROR, b""  # it rewrites EEPROM, which torque locks (our reading)
            servo.factory_reset(RESETS[p[0]])
            self._power_up(servo)
            return 0, b""
        if inst == I.CLEAR:
            if len(p) != len(CLEAR_MULTI_TURN):
                return dxl.LENGTH_ERROR, b""
            if bytes(p) != CLEAR_MULTI_TURN:
                return dxl.RANGE_ERROR, b""
            # Allowed only while the servo stands still; the virtual joints never leave their first
            # turn, so the count it clears is already 0.
            return (dxl.RESULT_FAIL if servo.get("Moving") else 0), b""
        return dxl.INSTRUCTION_ERROR, b""

    def _power_up(self, servo: VirtualServo) -> None:
        """After a reboot or reset: present registers from the joint, the goal where it stands."""
        self._sync_registers(np.asarray(self.physics.qpos()), np.asarray(self.physics.qvel()))
        servo.set("Goal_Position", servo.get("Present_Position"))

    def _reads(self, requests: list[tuple[int, int, int]]) -> list:
        replies = []
        for servo_id, address, size in requests:
            servo = self._servo(servo_id)
            data = servo.read(address, size) if servo else None
            if data is not None:
                replies.append(self._status(servo, 0, data))
            elif servo:
                replies.append(self._status(servo, dxl.ACCESS_ERROR if size else dxl.LENGTH_ERROR))
        return replies

    def _fast_read(self, requests: list[tuple[int, int, int]]) -> list:
        """FAST_SYNC_READ / FAST_BULK_READ: the servos fill one status packet from ID 0xFE in turn, each
        adding ERR, ID, its data and a CRC over the packet so far; the last CRC closes the packet.
        A silent servo breaks the chain: the packet ends short of its LEN. (Not byte-stuffed: the
        SDK reads these packets raw.)"""
        length = 1 + sum(size + 4 for _, _, size in requests)
        packet = bytearray(dxl.HEADER + bytes((dxl.BROADCAST_ID, length & 0xFF, length >> 8, dxl.STATUS)))
        first = None
        for servo_id, address, size in requests:
            servo = self._servo(servo_id)
            if servo is None:
                break
            first = first or servo
            data = servo.read(address, size)
            error = 0 if data is not None else dxl.ACCESS_ERROR
            error |= dxl.ALERT_BIT if servo_id in self.faults.alarm_ids else 0
            packet += bytes((error, servo_id)) + (data if data is not None else bytes(size))
            crc = dxl.crc16(bytes(packet))
            packet += bytes((crc & 0xFF, crc >> 8))
        return [(first, bytes(packet))] if first else []

    def _sync_write(self, address: int, size: int, body: bytes) -> None:
        if size < 1 or len(body) % (size + 1):
            return  # malformed: real servos cannot tell their slice, so nobody acts on it
        for k in range(0, len(body), size + 1):
            servo = self._servo(body[k])
            if servo:
                self._write(servo, address, body[k + 1:k + 1 + size])

    def _bulk_write(self, p: bytes) -> None:
        """BULK_WRITE: ID, address, length, data per servo. Malformed: nobody acts on it."""
        writes, k = [], 0
        while k + 5 <= len(p):
            size = p[k + 3] | (p[k + 4] << 8)
            writes.append((p[k], p[k + 1] | (p[k + 2] << 8), p[k + 5:k + 5 + size]))
            k += 5 + size
        if k != len(p) or not writes:
            return
        for servo_id, address, data in writes:
            servo = self._servo(servo_id)
            if servo:
                self._write(servo, address, data)

    def _write(self, servo: VirtualServo, address: int, data: bytes) -> int:
        """Store `data` as the servo would; returns its status error number (Feetech: always 0)."""
        was_on = servo.get("Torque_Enable")
        if self.protocol == "dynamixel":
            error, staged = servo.stage(address, data)
            if error:
                return error
            servo.memory[:] = staged
        elif not servo.write(address, data):
            return 0
        if not was_on and servo.get("Torque_Enable") and not _covers(address, data, servo, "Goal_Position"):
            # Torque on holds the joint where it is rather than jumping to a stale goal.
            servo.set("Goal_Position", servo.get("Present_Position"))
        if self.on_goal is not None and _covers(address, data, servo, "Goal_Position"):
            self.on_goal(servo.id, servo.get("Goal_Position"), servo.get("Present_Position"))
        return 0


def _covers(address: int, data: bytes, servo: VirtualServo, name: str) -> bool:
    reg = servo.model.registers[name]
    return address <= reg.address and address + len(data) >= reg.address + reg.size
