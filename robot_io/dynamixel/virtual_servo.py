"""How a virtual Dynamixel Protocol 2.0 servo answers (the servo side of robot_io/virtual/bus.py).

PING, READ, WRITE, REG_WRITE/ACTION, SYNC_READ/WRITE, BULK_READ/WRITE, FAST_SYNC_READ,
FAST_BULK_READ, REBOOT, FACTORY_RESET, CLEAR, indirect addresses, and the status error numbers of
the e-manual (CRC, data range, data length, data limit, access, instruction errors).
"""

from __future__ import annotations

from reverie.robot_io.dynamixel import protocol as dxl

CLEAR_MULTI_TURN = b"\x01\x44\x58\x4c\x22"  # CLEAR's option 1 and its fixed key "DXL\""
RESETS = {0xFF: (), 0x01: ("ID",), 0x02: ("ID", "Baud_Rate")}  # FACTORY_RESET option -> what it keeps
# Supply voltage (x 0.1 V) the virtual servos report: 5 V XL330, 12 V XL430/XM430.
SUPPLY = {"xl330-m077": 50, "xl330-m288": 50}
HARDWARE_OVERLOAD = 0x20  # Hardware_Error_Status bit a faulted virtual servo reports


class DynamixelFirmware:
    alarm_flag = dxl.ALERT_BIT

    def __init__(self, family, bus):
        self.family, self.bus = family, bus

    def memory_size(self, model) -> int:
        return max(r.address + r.size for r in model.registers.values())

    def factory(self, servo) -> None:
        servo.set("Firmware_Version", servo.model.firmware)
        servo.set("Present_Voltage", SUPPLY.get(servo.model.name, 120))

    def present(self, servo, ticks: int, ticks_per_s: float, alarm: bool) -> None:
        servo.set("Present_Position", ticks)
        servo.set("Present_Velocity", int(round(ticks_per_s * 60 / 4096 / 0.229)))  # x 0.229 rev/min
        servo.set("Hardware_Error_Status", HARDWARE_OVERLOAD if alarm else 0)

    def answers(self, servo, instruction: int) -> bool:
        """Status_Return_Level: 0 = PING only, 1 = +READ, 2 = all."""
        level = servo.get("Status_Return_Level")
        reads = (dxl.Instruction.PING, dxl.Instruction.READ)
        return level >= 2 or instruction == dxl.Instruction.PING or (level == 1 and instruction in reads)

    def bad_frame(self, frame: bytes) -> list:
        """A packet whose CRC fails is answered with CRC Error (0x03), from the ID it names."""
        if frame[4] == dxl.BROADCAST_ID:
            return []
        servo = self.bus.servo(frame[4])
        if servo is None or not self.answers(servo, frame[7]):
            return []
        return [self.bus.status(servo, dxl.CRC_ERROR)]

    def store(self, servo, address: int, data: bytes) -> tuple[int, bool]:
        error, staged = self.stage(servo, address, data)
        if error:
            return error, False
        servo.memory[:] = staged
        return 0, True

    def stage(self, servo, address: int, data: bytes) -> tuple[int, bytearray | None]:
        """Dynamixel: the status error number a WRITE of `data` gets and, when 0, the memory after it."""
        end = address + len(data)
        if not data:
            return dxl.LENGTH_ERROR, None
        if end > len(servo.memory):
            return dxl.ACCESS_ERROR, None
        first, last = servo.register_at[address], servo.register_at[end - 1]
        if (first and first.address != address) or (last and last.address + last.size != end):
            return dxl.LENGTH_ERROR, None  # e-manual: part of a multi-byte item is a length error
        targets = [servo.target(a) for a in range(address, end)]
        torque_on = servo.get("Torque_Enable")
        if not all(servo.writable[t] for t in targets) or (torque_on and min(targets) < servo.eeprom_end):
            return dxl.ACCESS_ERROR, None  # read-only, reserved, or EEPROM while torque is on
        staged = bytearray(servo.memory)
        for t, byte in zip(targets, data):
            staged[t] = byte
        names = {name for name, reg in servo.model.registers.items()
                 if any(reg.address <= t < reg.address + reg.size for t in targets)}
        for name in sorted(names):
            error = self._check(servo, name, servo.get(name, staged), staged)
            if error:
                return error, None
        return 0, staged

    def _check(self, servo, name: str, value: int, memory: bytearray) -> int:
        if not servo.model.registers[name].accepts(value):
            return dxl.RANGE_ERROR
        limit = {"Goal_Velocity": "Velocity_Limit", "Goal_PWM": "PWM_Limit", "Goal_Current": "Current_Limit"}
        if name in limit and abs(value) > servo.get(limit[name], memory):
            return dxl.LIMIT_ERROR
        if name == "Goal_Position":
            mode = servo.get("Operating_Mode", memory)
            if mode == 3 and not servo.get("Min_Position_Limit", memory) <= value <= servo.get("Max_Position_Limit", memory):
                return dxl.LIMIT_ERROR  # position mode: the goal must lie within the position limits
            if mode in (4, 5) and abs(value) > 1_048_575:  # extended position: +-256 turns
                return dxl.RANGE_ERROR
        return 0

    def handle(self, packet) -> list:
        I, p, broadcast, inst = dxl.Instruction, packet.params, packet.id == dxl.BROADCAST_ID, packet.instruction
        u16 = lambda b, i: b[i] | (b[i + 1] << 8)  # noqa: E731
        if inst == I.PING:
            return [self.bus.status(s, 0, dxl.u16(s.model.number) + bytes((s.get("Firmware_Version"),)))
                    for s in sorted(self.bus.targets(packet.id), key=lambda s: s.id)]
        if inst in (I.SYNC_READ, I.FAST_SYNC_READ) and broadcast and len(p) >= 5:
            requests = [(i, u16(p, 0), u16(p, 2)) for i in p[4:]]
            return self._fast_read(requests) if inst == I.FAST_SYNC_READ else self._reads(requests)
        if inst in (I.BULK_READ, I.FAST_BULK_READ) and broadcast and len(p) >= 5 and len(p) % 5 == 0:
            requests = [(p[k], u16(p, k + 1), u16(p, k + 3)) for k in range(0, len(p), 5)]
            return self._fast_read(requests) if inst == I.FAST_BULK_READ else self._reads(requests)
        if inst == I.SYNC_WRITE and broadcast and len(p) >= 4:
            self.bus.sync_write(u16(p, 0), u16(p, 2), p[4:])
            return []
        if inst == I.BULK_WRITE and broadcast:
            self._bulk_write(p)
            return []
        replies = []
        for servo in self.bus.targets(packet.id):
            # The status goes out from the ID, and per the Status_Return_Level, the servo had when
            # the instruction arrived: an ID change is acknowledged by the old ID.
            servo_id, answers = servo.id, self.answers(servo, inst)
            error, data = self._execute(servo, inst, p, broadcast)
            if not broadcast and answers:
                replies.append(self.bus.status(servo, error, data, servo_id))
        return replies

    def _execute(self, servo, inst: int, p: bytes, broadcast: bool) -> tuple[int, bytes]:
        """One Dynamixel instruction on one servo: (status error number, status parameters)."""
        I, u16 = dxl.Instruction, lambda i: p[i] | (p[i + 1] << 8)
        if inst in (I.READ, I.WRITE, I.REG_WRITE) and len(p) < (4 if inst == I.READ else 3):
            return dxl.LENGTH_ERROR, b""
        if inst == I.READ:
            size = u16(2)
            data = servo.read(u16(0), size) if len(p) == 4 else None
            return (0, data) if data is not None else (dxl.ACCESS_ERROR if size else dxl.LENGTH_ERROR, b"")
        if inst == I.WRITE:
            return self.bus.write(servo, u16(0), p[2:]), b""
        if inst == I.REG_WRITE:  # checked as a WRITE now, stored at ACTION
            error, _ = self.stage(servo, u16(0), p[2:])
            if not error:
                servo.registered = (u16(0), bytes(p[2:]))
                servo.set("Registered_Instruction", 1)
            return error, b""
        if inst == I.ACTION:
            if servo.registered is None:
                return dxl.INSTRUCTION_ERROR, b""  # e-manual: ACTION without a REG_WRITE
            error = self.bus.write(servo, *servo.registered)
            servo.registered = None
            servo.set("Registered_Instruction", 0)
            return error, b""
        if inst == I.REBOOT:
            servo.reboot()
            self.bus.power_up(servo)
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
            self.bus.power_up(servo)
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

    def _reads(self, requests: list[tuple[int, int, int]]) -> list:
        replies = []
        for servo_id, address, size in requests:
            servo = self.bus.servo(servo_id)
            data = servo.read(address, size) if servo else None
            if data is not None:
                replies.append(self.bus.status(servo, 0, data))
            elif servo:
                replies.append(self.bus.status(servo, dxl.ACCESS_ERROR if size else dxl.LENGTH_ERROR))
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
            servo = self.bus.servo(servo_id)
            if servo is None:
                break
            first = first or servo
            data = servo.read(address, size)
            error = 0 if data is not None else dxl.ACCESS_ERROR
            error |= dxl.ALERT_BIT if self.bus.alarmed(servo_id) else 0
            packet += bytes((error, servo_id)) + (data if data is not None else bytes(size))
            crc = dxl.crc16(bytes(packet))
            packet += bytes((crc & 0xFF, crc >> 8))
        return [(first, bytes(packet))] if first else []

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
            servo = self.bus.servo(servo_id)
            if servo:
                self.bus.write(servo, address, data)
