"""The Feetech STS/SCS family behind robot_io's servo-family interface (robot_io/servo_family.py)."""

from __future__ import annotations

from reverie.robot_io.feetech import control_table, protocol
from reverie.robot_io.servo_family import ServoFamily


class Feetech(ServoFamily):
    name = "feetech"
    proto = protocol
    models = control_table.MODELS
    by_number = control_table.BY_NUMBER
    baud_rates = control_table.BAUD_RATES
    status_overhead = 6  # FF FF ID LEN ERR ... CHK
    instruction_overhead = 6  # FF FF ID LEN INST ... CHK
    default_model = "sts3215"
    virtual_models = ("sts3215",) * 6  # SO-100/SO-101
    bulk_read = None  # STS servos have SYNC_READ only

    def encode(self, model, reg, value: int) -> bytes:
        return protocol.encode_value(value, reg.size, reg.sign_bit, model.byteorder)

    def decode(self, model, reg, data: bytes) -> int:
        return protocol.decode_value(data, reg.sign_bit, model.byteorder)

    def alarm(self, error: int) -> str | None:
        return protocol.describe_error(error) if error else None

    def fault(self, error: int) -> str | None:
        return None  # Feetech's error byte only carries alarm flags

    def same_layout(self, a, b) -> bool:
        return (a.address, a.size, a.sign_bit) == (b.address, b.size, b.sign_bit)

    def model_number(self, bus, servo_id: int, ping_reply) -> int:
        # A Feetech ping reply carries no parameters: read Model_Number after it.
        reg = control_table.MODEL_NUMBER
        raw = bus.exchange(protocol.read(servo_id, reg.address, reg.size), [servo_id], "READ", "Model_Number", reg.size)
        return int.from_bytes(raw[servo_id].params, "little")

    def firmware(self, bus):
        from reverie.robot_io.feetech.virtual_servo import FeetechFirmware

        return FeetechFirmware(self, bus)


FAMILY = Feetech()
