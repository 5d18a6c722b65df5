"""How a virtual Feetech STS servo answers (the servo side of robot_io/virtual/bus.py).

PING, READ, WRITE, REG_WRITE/ACTION, SYNC_READ, SYNC_WRITE. The status byte only carries alarm
flags (voltage, encoder, temperature, current, overload), so an STS servo acknowledges what it
ignores and stays silent on a bad checksum or an unknown instruction: it has no flag to report them
with. Its memory is the 256 addresses a READ can name, unlisted ones reading 0.
"""

from __future__ import annotations

from reverie.robot_io.feetech import protocol as ft

ADDRESSES = 256  # READ/WRITE name one byte of address
OVERLOAD = 0x20  # the alarm flag a faulted virtual servo reports
SUPPLY = 120  # x 0.1 V: the STS3215's 12 V supply
TICKS = 4096  # one turn; Present_Position stays within it


class FeetechFirmware:
    alarm_flag = OVERLOAD

    def __init__(self, family, bus):
        self.family, self.bus = family, bus

    def memory_size(self, model) -> int:
        return ADDRESSES

    def factory(self, servo) -> None:
        servo.set("Present_Voltage", SUPPLY)

    def present(self, servo, ticks: int, ticks_per_s: float, alarm: bool) -> None:
        servo.set("Present_Position", min(max(ticks, 0), TICKS - 1))
        servo.set("Present_Velocity", int(round(ticks_per_s / 50.0)))  # 50 steps/s = 0.732 rpm
        servo.set("Status", OVERLOAD if alarm else 0)

    def answers(self, servo, instruction: int) -> bool:
        """Status_Return_Level 0: PING and READ only; 1: every instruction."""
        return servo.get("Status_Return_Level") >= 1 or instruction in (ft.Instruction.PING, ft.Instruction.READ)

    def bad_frame(self, frame: bytes) -> list:
        return []  # no checksum flag in the status byte: an STS servo stays silent

    def store(self, servo, address: int, data: bytes) -> tuple[int, bool]:
        # A write to read-only memory is ignored; Feetech's error byte has no code for it.
        return 0, servo.write(address, data)

    def handle(self, packet) -> list:
        bus = self.bus
        I, p, broadcast = ft.Instruction, packet.params, packet.id == ft.BROADCAST_ID
        if packet.instruction == I.PING:
            return [bus.status(s) for s in bus.targets(packet.id)]
        if packet.instruction == I.READ and len(p) == 2 and not broadcast:
            # Any of the 256 addresses reads (unlisted ones as 0): an STS servo has no error to report.
            servo = bus.servo(packet.id)
            data = servo.read(p[0], p[1]) if servo else None
            return [bus.status(servo, 0, data)] if data is not None else []
        if (packet.instruction in (I.WRITE, I.REG_WRITE) and len(p) >= 2) or packet.instruction == I.ACTION:
            replies = []
            for servo in bus.targets(packet.id):
                servo_id, answers = servo.id, self.answers(servo, packet.instruction)
                # Nor has it a code for a value out of range: those are stored as written, so a
                # Goal_Position past the angle limits is acknowledged and the joint stops at the limit.
                # The STS tables define Torque_Enable 0 and 1 only; our choice is that any nonzero
                # value holds torque.
                if packet.instruction == I.WRITE:
                    bus.write(servo, p[0], p[1:])
                elif packet.instruction == I.REG_WRITE:
                    servo.registered = (p[0], bytes(p[1:]))
                elif servo.registered is not None:
                    bus.write(servo, *servo.registered)
                    servo.registered = None
                if not broadcast and answers:
                    replies.append(bus.status(servo, 0, b"", servo_id))
            return replies
        if packet.instruction == I.SYNC_READ and broadcast and len(p) >= 3:
            replies = []
            for servo_id in p[2:]:
                servo = bus.servo(servo_id)
                data = servo.read(p[0], p[1]) if servo else None
                if data is not None:
                    replies.append(bus.status(servo, 0, data))
            return replies
        if packet.instruction == I.SYNC_WRITE and broadcast and len(p) >= 2:
            bus.sync_write(p[0], p[1], p[2:])
        return []  # unknown instructions and malformed parameters get no reply
