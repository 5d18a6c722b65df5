"""Dynamixel Protocol 2.0 packet codec, both directions (instruction and status packets).

Wire layout, from the ROBOTIS e-manual (Protocol 2.0):

    FF FF FD 00 | ID | LEN_L LEN_H | INST | PARAM ... | CRC_L CRC_H

LEN counts the bytes after itself: instruction + (stuffed) parameters + 2 CRC bytes. A status packet
is the same frame with INST = 0x55 followed by an ERROR byte, then its parameters. The CRC is
CRC-16 with polynomial 0x8005, initial value 0, no bit reflection, over everything from the first
header byte to the last parameter byte (after stuffing), sent low byte first.

Byte stuffing keeps the header pattern out of the payload: wherever FF FF FD appears in the
instruction/parameter field, an extra FD is inserted (FF FF FD -> FF FF FD FD). The receiver
removes it again. Multi-byte values are little-endian, signed values two's complement.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from reverie.robot_io.framing import FrameReader

HEADER = b"\xff\xff\xfd\x00"
BROADCAST_ID = 0xFE
STATUS = 0x55
ALERT_BIT = 0x80  # set in a status packet's error byte while the servo has a hardware error
MAX_LENGTH = 1024  # a sane upper bound on LEN, so line noise never makes us wait for 64 KiB


class Instruction(enum.IntEnum):
    PING = 0x01
    READ = 0x02
    WRITE = 0x03
    REG_WRITE = 0x04
    ACTION = 0x05
    FACTORY_RESET = 0x06
    REBOOT = 0x08
    CLEAR = 0x10
    STATUS = 0x55
    SYNC_READ = 0x82
    SYNC_WRITE = 0x83
    FAST_SYNC_READ = 0x8A
    BULK_READ = 0x92
    BULK_WRITE = 0x93
    FAST_BULK_READ = 0x9A


# The low 7 bits of the status error byte: what went wrong with the instruction itself.
RESULT_FAIL, INSTRUCTION_ERROR, CRC_ERROR, RANGE_ERROR, LENGTH_ERROR, LIMIT_ERROR, ACCESS_ERROR = range(1, 8)
ERRORS = {
    0x01: "result fail (the instruction could not be processed)",
    0x02: "instruction error (undefined instruction, or ACTION without REG_WRITE)",
    0x03: "CRC error (the servo received a packet whose CRC did not match)",
    0x04: "data range error (value outside the register's range)",
    0x05: "data length error (fewer bytes than the register needs)",
    0x06: "data limit error (value outside the configured limit)",
    0x07: "access error (read-only register, EEPROM write with torque on, or no such address)",
}


def _crc_table() -> list[int]:
    # Built from the polynomial rather than pasted, so the table cannot carry a typo.
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) ^ _CRC_TABLE[((crc >> 8) ^ byte) & 0xFF]) & 0xFFFF
    return crc


def stuff(payload: bytes) -> bytes:
    """Insert FD after every FF FF FD in the instruction/parameter field."""
    if b"\xff\xff\xfd" not in payload:
        return bytes(payload)
    return payload.replace(b"\xff\xff\xfd", b"\xff\xff\xfd\xfd")


def unstuff(payload: bytes) -> bytes:
    if b"\xff\xff\xfd\xfd" not in payload:
        return bytes(payload)
    return payload.replace(b"\xff\xff\xfd\xfd", b"\xff\xff\xfd")


class Packet(NamedTuple):
    """A decoded packet. `error` is None for instruction packets, the error byte for status ones."""

    id: int
    instruction: int
    params: bytes
    error: int | None = None


def _frame(servo_id: int, body: bytes) -> bytes:
    body = stuff(body)
    length = len(body) + 2
    head = HEADER + bytes((servo_id, length & 0xFF, length >> 8))
    crc = crc16(head + body)
    return head + body + bytes((crc & 0xFF, crc >> 8))


def instruction_packet(servo_id: int, instruction: int, params: bytes = b"") -> bytes:
    if not 0 <= servo_id <= 0xFE:
        raise ValueError(f"Dynamixel id {servo_id} outside 0..254")
    return _frame(servo_id, bytes((instruction,)) + bytes(params))


def status_packet(servo_id: int, error: int, params: bytes = b"") -> bytes:
    return _frame(servo_id, bytes((STATUS, error)) + bytes(params))


def u16(value: int) -> bytes:
    return int(value).to_bytes(2, "little")


def ping(servo_id: int) -> bytes:
    return instruction_packet(servo_id, Instruction.PING)


def read(servo_id: int, address: int, size: int) -> bytes:
    return instruction_packet(servo_id, Instruction.READ, u16(address) + u16(size))


def write(servo_id: int, address: int, data: bytes) -> bytes:
    return instruction_packet(servo_id, Instruction.WRITE, u16(address) + bytes(data))


def sync_read(address: int, size: int, ids: list[int]) -> bytes:
    return instruction_packet(BROADCAST_ID, Instruction.SYNC_READ, u16(address) + u16(size) + bytes(ids))


def sync_write(address: int, size: int, data: dict[int, bytes]) -> bytes:
    params = bytearray(u16(address) + u16(size))
    for servo_id, value in data.items():
        if len(value) != size:
            raise ValueError(f"sync write to id {servo_id}: {len(value)} bytes, expected {size}")
        params += bytes((servo_id,)) + value
    return instruction_packet(BROADCAST_ID, Instruction.SYNC_WRITE, bytes(params))


def bulk_read(requests: list[tuple[int, int, int]]) -> bytes:
    """One packet reading (id, address, size) per servo; each servo answers in list order."""
    params = b"".join(bytes((i,)) + u16(a) + u16(n) for i, a, n in requests)
    return instruction_packet(BROADCAST_ID, Instruction.BULK_READ, params)


def encode_value(value: int, size: int, signed: bool) -> bytes:
    """Little-endian; signed registers use two's complement. Out-of-range values raise ValueError."""
    return int(value).to_bytes(size, "little", signed=signed)


def decode_value(data: bytes, signed: bool) -> int:
    return int.from_bytes(data, "little", signed=signed)


def describe_error(error: int) -> str:
    """Human words for a status error byte (0 -> 'no error')."""
    parts = []
    if error & 0x7F:
        parts.append(ERRORS.get(error & 0x7F, f"unknown error number {error & 0x7F}"))
    if error & ALERT_BIT:
        parts.append("hardware alert (read Hardware_Error_Status, address 70)")
    return "; ".join(parts) or "no error"


class Reader(FrameReader):
    """Incremental decoder for a byte stream: feed bytes, take whole packets.

    `kind` is "status" (a client reading servo replies) or "instruction" (a servo reading the bus).
    Bytes before a header are skipped; a frame whose CRC does not match is dropped and counted in
    `crc_errors`, with its bytes kept in `last_bad` for error messages.
    """

    CHECK = "CRC"

    def _next(self) -> Packet | None:
        buf = self.buffer
        while True:
            start = buf.find(HEADER[:3])
            if start < 0:
                # Keep a possible partial header at the end; drop the rest.
                keep = 2 if buf.endswith(b"\xff\xff") else 1 if buf.endswith(b"\xff") else 0
                self.skipped += len(buf) - keep
                del buf[: len(buf) - keep]
                return None
            if start:
                self.skipped += start
                del buf[:start]
            if len(buf) < 7:
                return None
            length = buf[5] | (buf[6] << 8)
            if buf[3] != 0x00 or length < 3 or length > MAX_LENGTH:
                # Not a real header (FF FF FD inside noise): step past it and search again.
                self.skipped += 1
                del buf[:1]
                continue
            total = 7 + length
            if len(buf) < total:
                return None
            frame = bytes(buf[:total])
            del buf[:total]
            if crc16(frame[:-2]) != (frame[-2] | (frame[-1] << 8)):
                self._reject(frame)
                continue
            packet = self._parse(frame)
            if packet is not None:
                return packet

    def _parse(self, frame: bytes) -> Packet | None:
        body = unstuff(frame[7:-2])
        servo_id, instruction = frame[4], body[0]
        if self.kind == "status":
            if instruction != STATUS or len(body) < 2:
                return None  # another master's instruction on a shared bus: not ours
            return Packet(servo_id, instruction, bytes(body[2:]), body[1])
        if instruction == STATUS:
            return None  # a servo's reply seen by the other servos on the bus
        return Packet(servo_id, instruction, bytes(body[1:]), None)


def decode(frame: bytes, kind: str = "status") -> Packet:
    """Decode exactly one whole packet; raise ValueError naming what is wrong."""
    return Reader.decode_one(frame, kind)
