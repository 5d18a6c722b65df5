"""Byte-stream framing shared by the servo protocols: buffer what arrives, cut out whole packets.

Each protocol's Reader subclasses `FrameReader` and implements `_next()`, which pops one packet from
`self.buffer` (or returns None when no whole packet is there yet), skipping garbage and counting
frames that fail their checksum in `crc_errors`.
"""

from __future__ import annotations

import abc
from typing import Any


class FrameReader(abc.ABC):
    """`kind` is "status" (a client reading servo replies) or "instruction" (a servo reading the bus)."""

    def __init__(self, kind: str = "status"):
        if kind not in ("status", "instruction"):
            raise ValueError(f"kind must be 'status' or 'instruction', not {kind!r}")
        self.kind = kind
        self.buffer = bytearray()
        self.crc_errors = 0
        self.skipped = 0
        self.last_bad = b""  # the last frame that failed its checksum, for error messages
        self.on_bad = None  # called with each frame that fails its checksum (a servo may answer it)

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def clear(self) -> None:
        self.buffer.clear()

    def packets(self) -> list[Any]:
        out = []
        while (packet := self._next()) is not None:
            out.append(packet)
        return out

    CHECK = "checksum"  # what the protocol calls its frame check, for error messages

    def next(self) -> Any | None:
        """One whole packet, or None until more bytes arrive (bad frames before it went to on_bad)."""
        return self._next()

    def _reject(self, frame: bytes) -> None:
        self.crc_errors += 1
        self.last_bad = frame
        if self.on_bad is not None:
            self.on_bad(frame)

    @classmethod
    def decode_one(cls, frame: bytes, kind: str = "status") -> Any:
        """Decode exactly one whole packet; raise ValueError naming what is wrong."""
        reader = cls(kind)
        reader.feed(frame)
        packets = reader.packets()
        if reader.crc_errors:
            raise ValueError(f"{cls.CHECK} mismatch in {frame.hex(' ')}")
        if len(packets) != 1 or reader.buffer:
            raise ValueError(f"not one whole {kind} packet: {frame.hex(' ')}")
        return packets[0]

    @abc.abstractmethod
    def _next(self) -> Any | None:
        """Pop one whole packet off `self.buffer`, or None until more bytes arrive."""
