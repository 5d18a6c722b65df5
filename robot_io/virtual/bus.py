"""The servo side of a virtual bus: six emulated servos on a physics arm (the simulator's, in practice).

`VirtualBus.receive(bytes, now)` takes whatever arrived on the wire and returns the replies to send,
each with the time it is due, exactly as the servos on a real bus would answer:

- instruction packets are decoded and carried out by the family's firmware
  (robot_io/<family>/virtual_servo.py); this file is the family-neutral rest. Both families: PING, READ, WRITE, REG_WRITE/ACTION,
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

from reverie.robot_io import servo_families
from reverie.robot_io.virtual.servo import VirtualServo

TICKS_PER_TURN = 4096
CENTRE = 2048
RAD_PER_TICK = 2 * math.pi / TICKS_PER_TURN
MAX_STEP_S = 0.1  # physics catch-up per advance(); longer gaps (a stalled host) are not replayed
# A servo drops a partly received packet after this silence. Real firmware uses a few byte times;
# a pty hands over whole client writes, so a longer value costs nothing and tolerates a busy host.
PACKET_TIMEOUT_S = 0.01


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


class VirtualBus:
    def __init__(self, protocol: str, physics, ids: tuple[int, ...] = (1, 2, 3, 4, 5, 6),
                 models: tuple[str, ...] | None = None, faults: Faults | None = None,
                 baudrate: int = 1_000_000, seed: int = 0):
        family = servo_families.find(protocol)
        if family is None:
            raise ValueError(f"unknown protocol {protocol!r}: use {' or '.join(servo_families.names())}")
        models = tuple(models or family.virtual_models)
        if len(models) != len(ids):
            raise ValueError(f"{len(ids)} servo ids but {len(models)} models: give one model per id")
        unknown = [m for m in models if m not in family.models]
        if unknown:
            raise ValueError(f"unknown {protocol} model(s) {unknown}: choose from {sorted(family.models)}")
        codes = {bps: code for code, bps in family.baud_rates.items()}
        if int(baudrate) not in codes:
            raise ValueError(f"baudrate={baudrate} is no {protocol} Baud_Rate setting: use one of {sorted(codes)}")
        self.protocol, self.physics, self.baudrate = protocol, physics, int(baudrate)
        self.baud_code = codes[self.baudrate]  # what every servo's Baud_Rate register says
        self.family, self.proto = family, family.proto
        self.firmware = family.firmware(self)  # how this family's servos answer
        self.faults = faults or Faults()
        self.rng = np.random.default_rng(seed)
        self.reader = self.proto.Reader("instruction")
        self._bad_frames: list[bytes] = []
        self.reader.on_bad = self._bad_frames.append
        self._last_bytes_at: float | None = None
        # Servo i drives physics joint i, in id order.
        self.servos = [VirtualServo(i, self.firmware, family.models[m], self.baud_code) for i, m in zip(ids, models)]
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
            # Position range, velocity unit and alarm register are the family's.
            self.firmware.present(servo, ticks, ticks_per_s, servo.id in self.faults.alarm_ids)
            moving = abs(ticks_per_s) > 10  # ~0.9 deg/s
            servo.set("Moving", int(moving))

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
        return self.family.instruction_overhead + len(packet.params)

    def _corrupt(self, reply: bytes) -> bytes:
        self.stats["corrupted"] += 1
        damaged = bytearray(reply)
        damaged[-3] ^= 0x5A  # a payload byte: the frame still parses but fails its CRC/checksum
        return bytes(damaged)

    def _bad_frame(self, frame: bytes) -> list:
        return self.firmware.bad_frame(frame)  # Dynamixel answers CRC Error; Feetech stays silent

    # ---- services for the family's firmware -----------------------------------------------------

    def hearing(self) -> list[VirtualServo]:
        """Servos set to the bus's rate; one switched to another Baud_Rate hears only noise."""
        return [s for s in self.servos if s.get("Baud_Rate") == self.baud_code]

    def servo(self, servo_id: int) -> VirtualServo | None:
        for servo in self.hearing():
            if servo.id == servo_id:
                return servo
        return None

    def targets(self, servo_id: int) -> list[VirtualServo]:
        if servo_id == self.proto.BROADCAST_ID:
            return self.hearing()
        servo = self.servo(servo_id)
        return [servo] if servo else []

    def status(self, servo: VirtualServo, error: int = 0, params: bytes = b"", servo_id: int | None = None) -> tuple:
        servo_id = servo.id if servo_id is None else servo_id
        if servo_id in self.faults.alarm_ids:
            error |= self.firmware.alarm_flag
        return servo, self.proto.status_packet(servo_id, error, params)

    def alarmed(self, servo_id: int) -> bool:
        return servo_id in self.faults.alarm_ids

    def _handle(self, packet) -> list[tuple[VirtualServo, bytes]]:
        return self.firmware.handle(packet)

    def sync_write(self, address: int, size: int, body: bytes) -> None:
        if size < 1 or len(body) % (size + 1):
            return  # malformed: real servos cannot tell their slice, so nobody acts on it
        for k in range(0, len(body), size + 1):
            servo = self.servo(body[k])
            if servo:
                self.write(servo, address, body[k + 1:k + 1 + size])

    def power_up(self, servo: VirtualServo) -> None:
        """After a reboot or reset: present registers from the joint, the goal where it stands."""
        self._sync_registers(np.asarray(self.physics.qpos()), np.asarray(self.physics.qvel()))
        servo.set("Goal_Position", servo.get("Present_Position"))

    def write(self, servo: VirtualServo, address: int, data: bytes) -> int:
        """Store `data` as the servo would; returns its status error number (Feetech: always 0)."""
        was_on = servo.get("Torque_Enable")
        error, stored = self.firmware.store(servo, address, data)
        if not stored:
            return error
        if not was_on and servo.get("Torque_Enable") and not servo.covers(address, data, "Goal_Position"):
            # Torque on holds the joint where it is rather than jumping to a stale goal.
            servo.set("Goal_Position", servo.get("Present_Position"))
        if self.on_goal is not None and servo.covers(address, data, "Goal_Position"):
            self.on_goal(servo.id, servo.get("Goal_Position"), servo.get("Present_Position"))
        return 0
