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

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def clear(self) -> None:
        self.buffer.clear()

    def packets(self) -> list[Any]:
        out = []
        while (packet := self._next()) is not None:
            out.append(packet)
        return out

    @abc.abstractmethod
    def _next(self) -> Any | None:
        """Pop one whole packet off `self.buffer`, or None until more bytes arrive."""
