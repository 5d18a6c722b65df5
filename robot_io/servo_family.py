"""What a servo family (a wire protocol and its control tables) provides, behind one interface.

The client bus (robot_io/bus.py), the arm config and the virtual robot (robot_io/virtual/) know a
family only through this interface, looked up by name in robot_io/servo_families.py; everything
protocol-specific lives in the family's own folder (robot_io/feetech/, robot_io/dynamixel/):

    proto              the packet codec module: Reader, ping/read/write/sync_read/sync_write,
                       status_packet, BROADCAST_ID, Instruction (PING, READ ...)
    models, by_number  control tables by model name and by model number; baud_rates: code -> bit/s
    encode / decode    a register value <-> its bytes on the wire
    alarm / fault      a status error byte -> words for a hardware alarm / a rejected instruction
    model_number(bus)  the ping: which model answers at an id
    bulk_read          None, or (id, address, size) list -> one packet (families without one: None)
    firmware(bus)      the servo side: how a virtual servo of this family answers (robot_io/virtual/)
"""

from __future__ import annotations

import abc
from typing import Any, Callable


class ServoFamily(abc.ABC):
    name: str  # what arm configs and `protocol=` call it
    proto: Any  # the packet codec module
    models: dict[str, Any]
    by_number: dict[int, Any]
    baud_rates: dict[int, int]  # Baud_Rate register value -> bits per second
    status_overhead: int  # bytes of a status packet around its parameters
    instruction_overhead: int  # bytes of an instruction packet around its parameters
    # A servo id the bus has not pinged is taken to be this model (None: ping it to learn it).
    default_model: str | None = None
    # The six servos of this family's virtual arm (`reverie sim serve-bus protocol=<name>`).
    virtual_models: tuple[str, ...] = ()
    bulk_read: Callable[[list[tuple[int, int, int]]], bytes] | None = None

    @abc.abstractmethod
    def encode(self, model, reg, value: int) -> bytes: ...

    @abc.abstractmethod
    def decode(self, model, reg, data: bytes) -> int: ...

    @abc.abstractmethod
    def alarm(self, error: int) -> str | None:
        """Words for the hardware alarm flagged in a status error byte, or None."""

    @abc.abstractmethod
    def fault(self, error: int) -> str | None:
        """Words for why the servo rejected the instruction, or None (it was carried out)."""

    @abc.abstractmethod
    def same_layout(self, a, b) -> bool:
        """Whether two models' registers can share one sync packet (address, size and coding)."""

    @abc.abstractmethod
    def model_number(self, bus, servo_id: int) -> int:
        """Ping `servo_id` through `bus.exchange` and return its model number."""

    @abc.abstractmethod
    def firmware(self, bus):
        """The servo side of the family for a virtual bus (robot_io/virtual/bus.py)."""

    def __repr__(self) -> str:
        return f"<servo family {self.name}>"
