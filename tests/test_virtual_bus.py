"""The virtual servos in-process: protocol answers, reply timing, torque, faults, frame sharing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reverie.robot_io.dynamixel import protocol as dxl
from reverie.robot_io.feetech import protocol as ft
from reverie.sim.arm import ArmPhysics
from reverie.sim.frame_share import FrameFileCamera, FrameWriter
from reverie.sim.virtual_bus import Faults, VirtualBus, rad_to_ticks, ticks_to_rad

IDS = [1, 2, 3, 4, 5, 6]


@pytest.fixture(scope="module")
def physics():
    phys = ArmPhysics(preset="nominal", seed=0)
    yield phys
    phys.close()


def make(protocol, physics, **faults):
    physics.reset(0)
    bus = VirtualBus(protocol, physics, faults=Faults(**faults))
    bus.advance(0.0)
    return bus


def ask(bus, packet, now=0.0):
    """Send one packet; decode the replies with the protocol's own status reader."""
    proto = ft if bus.protocol == "feetech" else dxl
    replies = bus.receive(packet, now)
    return [(due, proto.decode(data)) for due, data in replies]


def test_tick_mapping():
    assert rad_to_ticks(0.0) == 2048 and rad_to_ticks(math.pi / 2) == 3072
    assert ticks_to_rad(1024) == pytest.approx(-math.pi / 2)
    assert rad_to_ticks(ticks_to_rad(3000)) == 3000


def test_feetech_ping_timing_and_model(physics):
    bus = make("feetech", physics)
    [(due, status)] = ask(bus, ft.ping(1), now=10.0)
    assert (status.id, status.error, status.params) == (1, 0, b"")
    # request on the wire (6 bytes x 10 bits at 1 Mbaud) + Return_Delay_Time 250 x 2 us
    assert due == pytest.approx(10.0 + 60e-6 + 500e-6)
    [(_, status)] = ask(bus, ft.read(1, 3, 2), now=10.1)
    assert ft.decode_value(status.params, None) == 777


def test_sync_read_answers_in_order_with_the_joints(physics):
    for protocol, proto, size in (("feetech", ft, 2), ("dynamixel", dxl, 4)):
        bus = make(protocol, physics)
        address = 56 if protocol == "feetech" else 132
        replies = ask(bus, proto.sync_read(address, size, [3, 1, 2, 4, 5, 6]), now=1.0)
        assert [s.id for _, s in replies] == [3, 1, 2, 4, 5, 6]
        dues = [d for d, _ in replies]
        assert all(b - a >= 500e-6 for a, b in zip(dues, dues[1:])), "replies must not overlap"
        got = {s.id: int.from_bytes(s.params, "little", signed=True) for _, s in replies}
        expected = {i: rad_to_ticks(q) for i, q in zip(IDS, physics.qpos())}
        assert got == expected


def test_bad_checksum_gets_no_reply(physics):
    bus = make("feetech", physics)
    packet = bytearray(ft.read(1, 56, 2))
    packet[-1] ^= 0x01
    assert bus.receive(bytes(packet), 1.0) == []
    assert bus.stats["bad_packets"] == 1
    packet = bytearray(dxl.ping(1))
    packet[-1] ^= 0x01
    bus = make("dynamixel", physics)
    assert bus.receive(bytes(packet), 1.0) == [] and bus.stats["bad_packets"] == 1


def test_torque_off_is_limp_and_torque_on_tracks_goals(physics):
    bus = make("feetech", physics)
    start = rad_to_ticks(physics.qpos()[0])
    goal = ft.encode_value(start + 400, 2, 15)
    bus.receive(ft.sync_write(42, 2, {1: goal}), 0.0)
    for t in np.arange(0.01, 0.5, 0.01):
        bus.advance(float(t))
    assert abs(rad_to_ticks(physics.qpos()[0]) - start) < 20
    assert physics.targets()[0] == pytest.approx(physics.qpos()[0], abs=1e-3)  # target follows joint

    [(_, ack)] = ask(bus, ft.write(1, 40, b"\x01"), now=0.5)
    assert ack.error == 0 and bus.servos[0].get("Goal_Position") == bus.servos[0].get("Present_Position")
    bus.receive(ft.sync_write(42, 2, {1: goal}), 0.5)
    for t in np.arange(0.51, 2.0, 0.01):
        bus.advance(float(t))
    assert physics.targets()[0] == pytest.approx(ticks_to_rad(start + 400))
    assert abs(rad_to_ticks(physics.qpos()[0]) - (start + 400)) < 20


def test_dynamixel_errors_bulk_read_and_status_return_level(physics):
    bus = make("dynamixel", physics)
    [(_, s)] = ask(bus, dxl.write(2, 132, b"\x00\x00\x00\x00"))
    assert s.error == 0x07  # Present_Position is read-only: access error
    ask(bus, dxl.write(2, 64, b"\x01"))
    [(_, s)] = ask(bus, dxl.write(2, 9, b"\x00"))
    assert s.error == 0x07  # EEPROM (Return_Delay_Time) while torque is on
    [(_, s)] = ask(bus, dxl.instruction_packet(2, dxl.Instruction.REBOOT))
    assert s.error == 0x02  # not emulated: instruction error, not silence
    [(_, ping)] = ask(bus, dxl.ping(3))
    assert ping.params[:2] == dxl.u16(1200)  # XL330-M288 on the Koch wrist

    replies = ask(bus, dxl.bulk_read([(1, 0, 2), (4, 64, 1)]))
    assert [(s.id, s.params) for _, s in replies] == [(1, dxl.u16(1060)), (4, b"\x00")]

    ask(bus, dxl.write(5, 68, b"\x01"))  # Status_Return_Level 1: answer PING and READ only
    assert bus.receive(dxl.write(5, 65, b"\x01"), 1.0) == []
    assert len(bus.receive(dxl.read(5, 65, 1), 1.0)) == 1


def test_registered_write_waits_for_action(physics):
    bus = make("dynamixel", physics)
    [(_, s)] = ask(bus, dxl.instruction_packet(4, dxl.Instruction.ACTION))
    assert s.error == 0x02  # ACTION with nothing registered
    before = bus.servos[3].get("LED")
    [(_, s)] = ask(bus, dxl.instruction_packet(4, dxl.Instruction.REG_WRITE, dxl.u16(65) + b"\x01"))
    assert s.error == 0 and bus.servos[3].get("LED") == before == 0
    assert bus.servos[3].get("Registered_Instruction") == 1
    assert bus.receive(dxl.instruction_packet(dxl.BROADCAST_ID, dxl.Instruction.ACTION), 1.0) == []
    assert bus.servos[3].get("LED") == 1 and bus.servos[3].get("Registered_Instruction") == 0

    bus = make("feetech", physics)
    ask(bus, ft.instruction_packet(2, ft.Instruction.REG_WRITE, bytes((41, 7))))
    assert bus.servos[1].get("Acceleration") == 0
    assert bus.receive(ft.instruction_packet(ft.BROADCAST_ID, ft.Instruction.ACTION), 1.0) == []
    assert bus.servos[1].get("Acceleration") == 7


def test_faults(physics):
    bus = make("dynamixel", physics, drop=1.0)
    assert bus.receive(dxl.ping(1), 1.0) == [] and bus.stats["dropped"] == 1

    bus = make("dynamixel", physics, corrupt=1.0)
    [(_, data)] = bus.receive(dxl.ping(1), 1.0)
    with pytest.raises(ValueError, match="CRC"):
        dxl.decode(data)

    bus = make("feetech", physics, delay_ms=5.0, alarm_ids=(2,))
    [(due, s)] = ask(bus, ft.ping(2), now=1.0)
    assert s.error == 0x20 and due == pytest.approx(1.0 + 60e-6 + 500e-6 + 5e-3)
    with pytest.raises(ValueError, match="probability"):
        Faults(drop=1.5)


def test_frame_file_round_trip(tmp_path):
    writer = FrameWriter(tmp_path / "cam.front", 8, 12)
    camera = FrameFileCamera(tmp_path / "cam.front", name="front")
    camera.connect()
    image = np.arange(8 * 12 * 3, dtype=np.uint8).reshape(8, 12, 3)
    writer.write(image, 123.5)
    frame = camera.read(new=True)
    assert np.array_equal(frame.image, image) and frame.capture_time == 123.5 and frame.index == 0
    writer.write(image[::-1].copy(), 124.0)
    frame = camera.read(new=True)
    assert frame.index == 1 and np.array_equal(frame.image, image[::-1])
    camera.close()
    writer.close()
    assert not (tmp_path / "cam.front").exists()
