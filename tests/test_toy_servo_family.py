"""A servo family added from outside robot_io: its own control table, firmware and family object,
plus one registration. The client bus and the virtual bus drive it without knowing its name."""

from __future__ import annotations

import numpy as np
import pytest

from reverie.robot_io import servo_families
from reverie.robot_io.bus import ServoBus
from reverie.robot_io.feetech import protocol as framing  # the toy speaks Feetech-style frames
from reverie.robot_io.feetech.control_table import Model, Register
from reverie.robot_io.feetech.virtual_servo import FeetechFirmware
from reverie.robot_io.servo_family import ServoFamily
from reverie.robot_io.virtual.bus import VirtualBus

TOY = Model("toy-1", 4242, {
    "Model_Number": Register(0, 2, "R", default=4242),
    "ID": Register(2, 1, default=1),
    "Baud_Rate": Register(3, 1),
    "Return_Delay_Time": Register(4, 1),
    "Status_Return_Level": Register(5, 1, default=1),
    "Min_Position_Limit": Register(6, 2),
    "Max_Position_Limit": Register(8, 2, default=4095),
    "Torque_Enable": Register(10, 1),
    "Goal_Position": Register(11, 2),
    "Present_Position": Register(13, 2, "R"),
    "Present_Temperature": Register(15, 1, "R"),
    "Moving": Register(16, 1, "R"),
})


class ToyFirmware(FeetechFirmware):
    def memory_size(self, model) -> int:
        return 17

    def factory(self, servo) -> None:
        pass  # no voltage sensor

    def present(self, servo, ticks: int, ticks_per_s: float, alarm: bool) -> None:
        servo.set("Present_Position", min(max(ticks, 0), 4095))


class Toy(ServoFamily):
    name = "toy"
    proto = framing
    models = {TOY.name: TOY}
    by_number = {TOY.number: TOY}
    baud_rates = {0: 1_000_000}
    status_overhead = instruction_overhead = 6
    default_model = "toy-1"
    virtual_models = ("toy-1", "toy-1")

    def encode(self, model, reg, value):
        return framing.encode_value(value, reg.size, None)

    def decode(self, model, reg, data):
        return framing.decode_value(data, None)

    def alarm(self, error):
        return None

    def fault(self, error):
        return None

    def same_layout(self, a, b):
        return (a.address, a.size) == (b.address, b.size)

    def model_number(self, bus, servo_id, ping_reply):
        raw = bus.exchange(framing.read(servo_id, 0, 2), [servo_id], "READ", "Model_Number", 2)
        return int.from_bytes(raw[servo_id].params, "little")

    def firmware(self, bus):
        return ToyFirmware(self, bus)


class TwoJoints:
    """The servo interface of a physics arm, two joints that go where they are told."""

    lower, upper = np.full(2, -3.0), np.full(2, 3.0)

    def __init__(self):
        self.q, self.target = np.zeros(2), np.zeros(2)

    def set_targets(self, q):
        self.target = np.asarray(q, float)

    def step(self, seconds):
        self.q = self.target.copy()

    def qpos(self):
        return self.q

    def qvel(self):
        return np.zeros(2)


class Wire:
    """A serial port whose other end is a VirtualBus in this process."""

    is_open = True

    def __init__(self, virtual):
        self.virtual, self.pending, self.now = virtual, b"", 0.0

    def reset_input_buffer(self):
        self.pending = b""

    def write(self, data):
        self.now += 0.01
        self.pending += b"".join(reply for _, reply in self.virtual.receive(bytes(data), self.now))

    def flush(self):
        pass

    def read(self, n):
        out, self.pending = self.pending[:n], self.pending[n:]
        return out

    def close(self):
        self.is_open = False


@pytest.fixture
def toy():
    servo_families.register(Toy())
    yield
    servo_families.unregister("toy")


def test_a_registered_family_is_driven_by_the_client_and_the_virtual_bus(toy):
    assert "toy" in servo_families.names()
    physics = TwoJoints()
    virtual = VirtualBus("toy", physics, ids=(1, 2))
    bus = ServoBus("toy-port", "toy")
    bus._serial = Wire(virtual)  # connected, without a pseudo-terminal
    assert bus.ping(2) == 4242
    bus.set_torque([1, 2], True)
    bus.sync_write("Goal_Position", {1: 2148, 2: 1948})
    virtual.advance(0.0)
    virtual.advance(0.05)  # the physics follows the goals
    assert bus.sync_read("Present_Position", [1, 2]) == {1: 2148, 2: 1948}
    with pytest.raises(Exception, match="bulk read is no toy instruction"):
        bus.bulk_read({1: "Present_Position"})


def test_an_unknown_family_names_the_known_ones():
    from reverie.errors import HardwareError

    with pytest.raises(HardwareError, match="use one of \['dynamixel', 'feetech'\]"):
        ServoBus("p", "toy")
    with pytest.raises(ValueError, match="use feetech or dynamixel"):
        VirtualBus("toy", TwoJoints(), ids=(1, 2))
