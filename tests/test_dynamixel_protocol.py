"""Dynamixel Protocol 2.0 codec: known answers from the ROBOTIS e-manual, stuffing, CRC, parsing."""

import pytest

from reverie.robot_io.dynamixel import control_table as table, protocol as p

H = bytes.fromhex


@pytest.mark.parametrize("packet, expected", [
    (p.ping(1), "ff ff fd 00 01 03 00 01 19 4e"),
    (p.read(1, 132, 4), "ff ff fd 00 01 07 00 02 84 00 04 00 1d 15"),
    (p.write(1, 116, (512).to_bytes(4, "little")), "ff ff fd 00 01 09 00 03 74 00 00 02 00 00 ca 89"),
    (p.sync_read(132, 4, [1, 2]), "ff ff fd 00 fe 09 00 82 84 00 04 00 01 02 ce fa"),
    (p.sync_write(116, 4, {1: (150).to_bytes(4, "little"), 2: (170).to_bytes(4, "little")}),
     "ff ff fd 00 fe 11 00 83 74 00 04 00 01 96 00 00 00 02 aa 00 00 00 82 87"),
    # Status packets: ping reply of a model 1030 servo with firmware 38, read reply of 166.
    (p.status_packet(1, 0, bytes([0x06, 0x04, 0x26])), "ff ff fd 00 01 07 00 55 00 06 04 26 65 5d"),
    (p.status_packet(1, 0, (166).to_bytes(4, "little")), "ff ff fd 00 01 08 00 55 00 a6 00 00 00 8c c0"),
])
def test_known_answers(packet, expected):
    assert packet == H(expected)


def test_crc_check_value():
    # CRC-16/BUYPASS (poly 0x8005, init 0, unreflected) check value over ASCII "123456789".
    assert p.crc16(b"123456789") == 0xFEE8


def test_byte_stuffing_round_trip_and_length():
    data = H("ff ff fd 01")
    packet = p.write(3, 116, data)
    body = packet[7:-2]
    assert body == bytes([p.Instruction.WRITE]) + H("74 00 ff ff fd fd 01")
    assert packet[5] | packet[6] << 8 == len(body) + 2  # LEN counts the stuffed bytes
    decoded = p.decode(packet, "instruction")
    assert decoded == p.Packet(3, p.Instruction.WRITE, H("74 00") + data, None)


def test_status_decode_with_error_and_alert():
    frame = p.status_packet(2, p.ALERT_BIT | 0x07, b"")
    packet = p.decode(frame)
    assert (packet.id, packet.error, packet.params) == (2, 0x87, b"")
    text = p.describe_error(packet.error)
    assert "access error" in text and "hardware alert" in text
    assert p.describe_error(0) == "no error"


def test_reader_resyncs_over_noise_split_frames_and_bad_crc():
    good1 = p.status_packet(1, 0, H("10 20"))
    good2 = p.status_packet(2, 0, H("ff ff fd 30"))  # needs stuffing
    bad = bytearray(p.status_packet(3, 0, H("40")))
    bad[-3] ^= 0x01
    stream = b"\x00\xff\x12" + good1 + bytes(bad) + good2
    reader = p.Reader("status")
    out = []
    for i in range(0, len(stream), 5):  # arrives in pieces, like a serial port delivers it
        reader.feed(stream[i:i + 5])
        out += reader.packets()
    assert [(q.id, q.params) for q in out] == [(1, H("10 20")), (2, H("ff ff fd 30"))]
    assert reader.crc_errors == 1 and reader.last_bad == bytes(bad)


def test_reader_kinds_ignore_the_other_direction():
    instr, status = p.ping(1), p.status_packet(1, 0, H("b0 04 2e"))
    as_servo, as_client = p.Reader("instruction"), p.Reader("status")
    as_servo.feed(instr + status)
    as_client.feed(instr + status)
    assert [q.instruction for q in as_servo.packets()] == [p.Instruction.PING]
    assert [q.params for q in as_client.packets()] == [H("b0 04 2e")]


def test_bulk_read_layout():
    packet = p.bulk_read([(1, 132, 4), (2, 146, 1)])
    decoded = p.decode(packet, "instruction")
    assert decoded.id == p.BROADCAST_ID and decoded.instruction == p.Instruction.BULK_READ
    assert decoded.params == H("01 84 00 04 00 02 92 00 01 00")


def test_signed_values_are_twos_complement():
    assert p.encode_value(-1, 4, True) == H("ff ff ff ff")
    assert p.decode_value(H("00 f8 ff ff"), True) == -2048
    with pytest.raises(OverflowError):
        p.encode_value(70000, 2, False)


def test_control_tables():
    xl330, xl430, xm430 = (table.MODELS[n] for n in ("xl330-m288", "xl430-w250", "xm430-w350"))
    assert (xl330.number, xl430.number, xm430.number) == (1200, 1060, 1020)
    for model in (xl330, xl430, xm430):
        r = model.registers
        assert (r["Goal_Position"].address, r["Present_Position"].address, r["Torque_Enable"].address) == (116, 132, 64)
        assert r["Return_Delay_Time"].address == 9 and r["Return_Delay_Time"].default == 250
        assert r["Model_Number"].default == model.number
        spans = sorted((reg.address, reg.address + reg.size) for reg in r.values())
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), model.name
    assert "Present_Load" in xl430.registers and "Present_Current" in xl330.registers
