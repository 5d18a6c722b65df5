"""Feetech STS/SCS codec: known answers derived from the published protocol, sign-magnitude, parsing."""

import pytest

from reverie.robot_io.feetech import control_table as table, protocol as p

H = bytes.fromhex


@pytest.mark.parametrize("packet, expected", [
    # ~(01 + 02 + 01) & FF = FB
    (p.ping(1), "ff ff 01 02 01 fb"),
    # read 2 bytes of Present_Position (0x38 = 56) from id 1
    (p.read(1, 56, 2), "ff ff 01 04 02 38 02 be"),
    # Goal_Position (42 = 0x2a) := 2048, little-endian 00 08
    (p.write(1, 42, p.encode_value(2048, 2, 15)), "ff ff 01 05 03 2a 00 08 c4"),
    (p.sync_read(56, 2, [1, 2]), "ff ff fe 06 82 38 02 01 02 3c"),
    (p.sync_write(42, 2, {1: H("00 08"), 2: H("00 04")}), "ff ff fe 0a 83 2a 02 01 00 08 02 00 04 39"),  # FE+0A+83+2A+02+01+00+08+02+00+04 = 0x1C6
    # status: healthy ping reply; read reply carrying 2048
    (p.status_packet(1, 0), "ff ff 01 02 00 fc"),
    (p.status_packet(1, 0, H("00 08")), "ff ff 01 04 00 00 08 f2"),
])
def test_known_answers(packet, expected):
    assert packet == H(expected)


def test_sign_magnitude_and_byte_order():
    assert p.encode_value(-100, 2, 15) == H("64 80")             # STS: bit 15 is the sign, LE
    assert p.decode_value(H("64 80"), 15) == -100
    assert p.decode_value(H("64 80"), None) == 0x8064
    assert p.encode_value(-5, 2, 10) == H("05 04")               # load: sign in bit 10
    assert p.encode_value(1000, 2, None, "big") == H("03 e8")    # SCS: big-endian
    assert p.decode_value(H("80 64"), 15, "big") == -100
    with pytest.raises(ValueError):
        p.encode_value(40000, 2, 15)
    with pytest.raises(ValueError):
        p.encode_value(-1, 2, None)


def test_reader_resyncs_and_rejects_bad_checksums():
    good = p.status_packet(4, 0, H("ff 07"))
    bad = bytearray(p.status_packet(5, 0, H("00 08")))
    bad[-1] ^= 0xFF
    stream = b"\xff\x00\xff" + bytes(bad) + good + p.status_packet(6, 0x20)
    reader = p.Reader("status")
    out = []
    for byte in stream:  # one byte at a time, the worst case a serial port can deliver
        reader.feed(bytes([byte]))
        out += reader.packets()
    assert [(q.id, q.params, q.error) for q in out] == [(4, H("ff 07"), 0), (6, b"", 0x20)]
    assert reader.crc_errors == 1 and reader.last_bad == bytes(bad)


def test_instruction_decode_and_alarm_words():
    packet = p.decode(p.sync_read(56, 2, [1, 2, 3]), "instruction")
    assert packet == p.Packet(0xFE, p.Instruction.SYNC_READ, H("38 02 01 02 03"), None)
    assert p.describe_error(0x24) == "overheating; overload"
    assert p.describe_error(0) == "no error"
    with pytest.raises(ValueError, match="checksum"):
        p.decode(H("ff ff 01 02 00 fd"))


def test_sts3215_table():
    model = table.MODELS["sts3215"]
    r = model.registers
    assert model.number == 777 and r["Model_Number"].address == 3
    assert (r["Torque_Enable"].address, r["Goal_Position"].address, r["Present_Position"].address) == (40, 42, 56)
    assert r["Return_Delay_Time"].address == 7 and r["Goal_Position"].sign_bit == 15
    spans = sorted((reg.address, reg.address + reg.size) for reg in r.values())
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
