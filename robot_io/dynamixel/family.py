"""The Dynamixel Protocol 2.0 family behind robot_io's servo-family interface (robot_io/servo_family.py)."""

from __future__ import annotations

from reverie.errors import HardwareError
from reverie.robot_io.dynamixel import control_table, protocol
from reverie.robot_io.servo_family import ServoFamily


class Dynamixel(ServoFamily):
    name = "dynamixel"
    proto = protocol
    models = control_table.MODELS
    by_number = control_table.BY_NUMBER
    baud_rates = control_table.BAUD_RATES
    status_overhead = 11  # FF FF FD 00 ID LEN LEN 55 ERR ... CRC CRC
    instruction_overhead = 10  # FF FF FD 00 ID LEN LEN INST ... CRC CRC
    default_model = None  # models differ per joint: learn each from its ping reply
    # Koch v1.1 follower: XL430-W250 on the loaded shoulder joints, XL330-M288 elsewhere.
    virtual_models = ("xl430-w250", "xl430-w250") + ("xl330-m288",) * 4
    bulk_read = staticmethod(protocol.bulk_read)

    def encode(self, model, reg, value: int) -> bytes:
        return protocol.encode_value(value, reg.size, reg.signed)

    def decode(self, model, reg, data: bytes) -> int:
        return protocol.decode_value(data, reg.signed)

    def alarm(self, error: int) -> str | None:
        return protocol.describe_error(protocol.ALERT_BIT) if error & protocol.ALERT_BIT else None

    def fault(self, error: int) -> str | None:
        return protocol.describe_error(error & 0x7F) if error & 0x7F else None

    def same_layout(self, a, b) -> bool:
        return (a.address, a.size, a.signed) == (b.address, b.size, b.signed)

    def model_number(self, bus, servo_id: int, ping_reply) -> int:
        params = ping_reply.params  # model number (2 bytes) and firmware version
        if len(params) < 3:
            raise HardwareError(f"servo {servo_id}: PING reply too short: {params.hex(' ') or 'nothing'}")
        return params[0] | (params[1] << 8)

    def firmware(self, bus):
        from reverie.robot_io.dynamixel.virtual_servo import DynamixelFirmware

        return DynamixelFirmware(self, bus)


FAMILY = Dynamixel()
