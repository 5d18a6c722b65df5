"""The virtual servos in-process: protocol answers, reply timing, torque, faults, frame sharing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reverie.robot_io.dynamixel import protocol as dxl
from reverie.robot_io.feetech import protocol as ft
from reverie.sim.arm import ArmPhysics
from reverie.robot_io.virtual.frames import FrameFileCamera, FrameWriter
from reverie.robot_io.virtual.bus import PACKET_TIMEOUT_S, Faults, VirtualBus, rad_to_ticks, ticks_to_rad

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


def test_bad_checksum_feetech_is_silent_dynamixel_answers_crc_error(physics):
    bus = make("feetech", physics)
    packet = bytearray(ft.read(1, 56, 2))
    packet[-1] ^= 0x01
    assert bus.receive(bytes(packet), 1.0) == []  # the STS status byte has no checksum flag
    assert bus.stats["bad_packets"] == 1
    packet = bytearray(dxl.read(3, 132, 4))
    packet[-1] ^= 0x01
    bus = make("dynamixel", physics)
    [(_, s)] = ask(bus, bytes(packet) + dxl.ping(2), 1.0)  # the good packet after it is still served
    assert (s.id, s.error) == (2, 0) and bus.stats["bad_packets"] == 1 and bus.stats["talked_over"] == 1
    [(_, s)] = ask(bus, bytes(packet), 2.0)
    assert (s.id, s.error, s.params) == (3, dxl.CRC_ERROR, b"")


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
    [(_, s)] = ask(bus, dxl.instruction_packet(2, 0x07))
    assert s.error == 0x02  # undefined instruction: instruction error, not silence
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


def test_replies_the_host_talks_over_are_not_sent(physics):
    bus = make("dynamixel", physics)
    ask(bus, dxl.instruction_packet(4, dxl.Instruction.REG_WRITE, dxl.u16(65) + b"\x01"))
    # A unicast ACTION answered, but the host sent its READ straight after: only the READ is answered.
    [(_, s)] = ask(bus, dxl.instruction_packet(4, dxl.Instruction.ACTION) + dxl.read(4, 65, 1), 1.0)
    assert (s.id, s.params) == (4, b"\x01") and bus.stats["talked_over"] == 1


def test_a_truncated_packet_is_dropped_after_the_inter_byte_timeout(physics):
    for protocol, proto, truncated in (("dynamixel", dxl, bytes.fromhex("ff ff fd 00 01 ff 03 02")),
                                       ("feetech", ft, bytes.fromhex("ff ff 01 ff 02"))):
        bus = make(protocol, physics)
        assert bus.receive(truncated, 1.0) == []
        assert bus.receive(proto.ping(1), 1.0 + PACKET_TIMEOUT_S / 2) == []  # still inside that packet
        [(_, s)] = ask(bus, proto.ping(2), 1.0 + 2 * PACKET_TIMEOUT_S)
        assert s.id == 2 and bus.stats["timed_out"] == 1


def test_baud_rate_register_matches_the_bus_and_a_servo_switched_away_goes_silent(physics):
    for protocol, proto, address, codes in (("dynamixel", dxl, 8, {1_000_000: 3, 57_600: 1}),
                                            ("feetech", ft, 6, {1_000_000: 0, 500_000: 1})):
        for baud, code in codes.items():
            physics.reset(0)
            bus = VirtualBus(protocol, physics, baudrate=baud)
            assert {s.get("Baud_Rate") for s in bus.servos} == {code}
        [(_, s)] = ask(bus, proto.write(3, address, bytes((codes[1_000_000],))))
        assert s.id == 3 and s.error == 0  # answered at the old rate, then switched
        assert bus.receive(proto.ping(3), 1.0) == [] and len(bus.receive(proto.ping(2), 1.0)) == 1
    with pytest.raises(ValueError, match="no dynamixel Baud_Rate setting"):
        VirtualBus("dynamixel", physics, baudrate=123_456)


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
