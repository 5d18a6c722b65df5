"""Feetech STS/SCS packet codec, both directions (instruction and status packets).

Wire layout, from Feetech's published SCS/STS communication protocol:

    instruction:  FF FF | ID | LEN | INST  | PARAM ... | CHK
    status:       FF FF | ID | LEN | ERROR | PARAM ... | CHK

LEN = number of parameters + 2. CHK = ~(ID + LEN + INST/ERROR + PARAMs) & 0xFF. There is no byte
stuffing: a reader resynchronises on the header and rejects frames whose checksum fails.

Values: STS servos store multi-byte registers little-endian, SCS servos big-endian (memory table
address 2, "END", says which). Signed registers are sign-magnitude: the magnitude in the low bits
and the direction in one sign bit (bit 15 for STS positions and speeds, bit 10 for load, bit 11
for the homing offset) -- not two's complement.

The status error byte is a set of alarm flags (0 = healthy), see ALARMS.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from reverie.robot_io.framing import FrameReader

HEADER = b"\xff\xff"
BROADCAST_ID = 0xFE


class Instruction(enum.IntEnum):
    PING = 0x01
    READ = 0x02
    WRITE = 0x03
    REG_WRITE = 0x04
    ACTION = 0x05
    RESET = 0x06
    SYNC_READ = 0x82
    SYNC_WRITE = 0x83


# Bits of the status error byte (and of the Status register, address 65, on STS servos).
ALARMS = {
    0x01: "input voltage out of range",
    0x02: "angle sensor (magnetic encoder) error",
    0x04: "overheating",
    0x08: "overcurrent",
    0x20: "overload",
}


class Packet(NamedTuple):
    """A decoded packet. `error` is None for instruction packets, the error byte for status ones."""

    id: int
    instruction: int | None
    params: bytes
    error: int | None = None


def checksum(body: bytes) -> int:
    """Checksum over ID, LEN, INST/ERROR and parameters."""
    return ~sum(body) & 0xFF


def _frame(servo_id: int, first: int, params: bytes) -> bytes:
    if len(params) > 253:
        raise ValueError(f"Feetech packet with {len(params)} parameter bytes: at most 253 fit")
    body = bytes((servo_id, len(params) + 2, first)) + bytes(params)
    return HEADER + body + bytes((checksum(body),))


def instruction_packet(servo_id: int, instruction: int, params: bytes = b"") -> bytes:
    if not 0 <= servo_id <= 0xFE:
        raise ValueError(f"Feetech id {servo_id} outside 0..254")
    return _frame(servo_id, instruction, params)


def status_packet(servo_id: int, error: int, params: bytes = b"") -> bytes:
    return _frame(servo_id, error, params)


def ping(servo_id: int) -> bytes:
    return instruction_packet(servo_id, Instruction.PING)


def read(servo_id: int, address: int, size: int) -> bytes:
    return instruction_packet(servo_id, Instruction.READ, bytes((address, size)))


def write(servo_id: int, address: int, data: bytes) -> bytes:
    return instruction_packet(servo_id, Instruction.WRITE, bytes((address,)) + bytes(data))


def sync_read(address: int, size: int, ids: list[int]) -> bytes:
    """Each listed servo answers with its own status packet, in list order."""
    return instruction_packet(BROADCAST_ID, Instruction.SYNC_READ, bytes((address, size, *ids)))


def sync_write(address: int, size: int, data: dict[int, bytes]) -> bytes:
    params = bytearray((address, size))
    for servo_id, value in data.items():
        if len(value) != size:
            raise ValueError(f"sync write to id {servo_id}: {len(value)} bytes, expected {size}")
        params += bytes((servo_id,)) + value
    return instruction_packet(BROADCAST_ID, Instruction.SYNC_WRITE, bytes(params))


def encode_value(value: int, size: int, sign_bit: int | None, byteorder: str = "little") -> bytes:
    """Sign-magnitude when `sign_bit` is set (bit index within the register), else unsigned."""
    value = int(value)
    if sign_bit is not None:
        magnitude = abs(value)
        if magnitude >= 1 << sign_bit:
            raise ValueError(f"{value} does not fit a sign-magnitude value with sign bit {sign_bit}")
        raw = magnitude | ((1 << sign_bit) if value < 0 else 0)
    else:
        if not 0 <= value < 1 << (8 * size):
            raise ValueError(f"{value} does not fit an unsigned {size}-byte register")
        raw = value
    return raw.to_bytes(size, byteorder)


def decode_value(data: bytes, sign_bit: int | None, byteorder: str = "little") -> int:
    raw = int.from_bytes(data, byteorder)
    if sign_bit is None:
        return raw
    magnitude = raw & ((1 << sign_bit) - 1)
    return -magnitude if raw & (1 << sign_bit) else magnitude


def describe_error(error: int) -> str:
    """Human words for a status error byte (0 -> 'no error')."""
    parts = [text for bit, text in ALARMS.items() if error & bit]
    unknown = error & ~sum(ALARMS)
    if unknown:
        parts.append(f"unknown alarm bits 0x{unknown:02x}")
    return "; ".join(parts) or "no error"


class Reader(FrameReader):
    """Incremental decoder for a byte stream: feed bytes, take whole packets.

    `kind` is "status" (a client reading servo replies) or "instruction" (a servo reading the bus);
    both frames look alike on the wire, so the caller says which it expects. Frames whose checksum
    fails are dropped and counted in `crc_errors`, with their bytes kept in `last_bad`.
    """

    def _next(self) -> Packet | None:
        buf = self.buffer
        while True:
            start = buf.find(HEADER)
            if start < 0:
                keep = 1 if buf.endswith(b"\xff") else 0
                self.skipped += len(buf) - keep
                del buf[: len(buf) - keep]
                return None
            if start:
                self.skipped += start
                del buf[:start]
            # FF FF FF ...: a header preceded by an extra FF (noise or an idle line); 0xFF is no
            # valid id, so slide forward one byte.
            if len(buf) >= 3 and buf[2] == 0xFF:
                self.skipped += 1
                del buf[:1]
                continue
            if len(buf) < 4:
                return None
            length = buf[3]
            if length < 2:
                self.skipped += 1
                del buf[:1]
                continue
            total = 4 + length
            if len(buf) < total:
                return None
            frame = bytes(buf[:total])
            del buf[:total]
            if checksum(frame[2:-1]) != frame[-1]:
                self._reject(frame)
                continue
            servo_id, first, params = frame[2], frame[4], frame[5:-1]
            if self.kind == "status":
                return Packet(servo_id, None, params, first)
            return Packet(servo_id, first, params, None)


def decode(frame: bytes, kind: str = "status") -> Packet:
    """Decode exactly one whole packet; raise ValueError naming what is wrong."""
    return Reader.decode_one(frame, kind)
