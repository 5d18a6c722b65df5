"""A servo bus over pyserial: servos of one family (Feetech STS, Dynamixel Protocol 2.0 ...) on one port.

    bus = ServoBus(port="/dev/ttyACM0", protocol="feetech", models={1: "sts3215", 2: "sts3215"})
    bus.connect()
    positions = bus.sync_read("Present_Position", [1, 2])   # one packet out, one reply per servo
    bus.sync_write("Goal_Position", {1: 2048, 2: 2100})     # one packet, no replies
    bus.close()

Every exchange is half duplex: send one instruction packet, then collect the status packets it
asks for. A missing or corrupt reply is retried up to `retries` times per servo: a sync or bulk
read keeps the replies that arrived and asks again only the servos still missing (a servo that
missed the request will not answer late). After that MissingReply (a HardwareError) names the
servo, the instruction, the register and the bytes that did come back, and carries the values the
other servos did answer. Errors reported by a servo in its status packet (Dynamixel error
numbers) are not retried: they would repeat. Hardware alarms (Dynamixel alert bit, any Feetech
alarm flag) raise ServoAlarm after the exchange completed, with the values read so far attached,
so safety code can still act on them.

Timing: each read waits up to `timeout_s` for the expected bytes. USB adapters add their own
latency (FTDI latency timer, 16 ms by default) and each servo waits Return_Delay_Time before
answering; docs/serial.md shows how to bring both down to what a 30-100 Hz loop needs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from pathlib import Path
from typing import Any

import serial

try:
    import termios  # pyserial's POSIX backend lets termios.error escape when a port vanishes
    _PORT_ERRORS: tuple = (serial.SerialException, OSError, termios.error)
except ImportError:  # Windows
    _PORT_ERRORS = (serial.SerialException, OSError)

from reverie.errors import HardwareError
from reverie.robot_io import servo_families

log = logging.getLogger(__name__)


class ServoAlarm(HardwareError):
    """A servo reported a hardware alarm (overload, overheating, voltage ...) in its status packet.

    `servo_id`, `description` name it; `values` holds what the exchange read (may be partial)."""

    def __init__(self, message: str, servo_id: int, description: str, values: dict[int, int] | None = None):
        super().__init__(message)
        self.servo_id = servo_id
        self.description = description
        self.values = values or {}


class MissingReply(HardwareError):
    """Servos in `missing` gave no valid reply (none, short, or failing its checksum) after every
    retry. `values` holds what the others answered (sync and bulk reads), so a control loop can
    keep the joints it did hear from."""

    def __init__(self, message: str, missing: list[int], replies: dict[int, Any]):
        super().__init__(message)
        self.missing = missing
        self.replies = replies
        self.values: dict[int, int] = {}


@dataclasses.dataclass
class BusStats:
    """Counters since connect. `retries` counts re-sent packets (a sync read re-sent to the servos
    still missing counts once); `timeouts` attempts where a reply never came (or came short);
    `crc_errors` replies that failed their CRC/checksum."""

    packets_sent: int = 0
    replies: int = 0
    retries: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    alarms: int = 0
    bytes_out: int = 0
    bytes_in: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _hex(data: bytes, limit: int = 48) -> str:
    if not data:
        return "nothing"
    text = data[:limit].hex(" ")
    return text + (f" ... ({len(data)} bytes)" if len(data) > limit else "")


class ServoBus:
    def __init__(self, port: str, protocol: str, baudrate: int = 1_000_000, timeout_s: float = 0.02,
                 retries: int = 2, models: dict[int, str] | None = None):
        family = servo_families.find(protocol)
        if family is None:
            raise HardwareError(f"unknown servo protocol {protocol!r}: use one of {sorted(servo_families.names())}")
        self.family = family  # everything protocol-specific goes through it (robot_io/servo_family.py)
        self.port, self.protocol, self.baudrate = str(port), protocol, int(baudrate)
        self.timeout_s, self.retries = float(timeout_s), int(retries)
        self.models: dict[int, Any] = {}
        for servo_id, name in (models or {}).items():
            self.models[int(servo_id)] = self._model(str(name).lower(), servo_id)
        self.stats = BusStats()
        self._serial: serial.Serial | None = None
        self._reader = self.family.proto.Reader("status")
        self._lock = threading.Lock()  # one exchange at a time (control loop vs. watchdog thread)

    # ---- connection -------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._serial is not None and self._serial.is_open

    def connect(self) -> None:
        """Open the port and ping every servo in `models`; raise naming what is missing or wrong.
        With no models configured it only opens the port (models are then learnt on first use)."""
        if self.is_connected:
            return
        self._open()
        try:
            if self.models:
                self._check_servos()
        except BaseException:
            self.close()
            raise
        _warn_latency_timer(self.port)

    def _open(self) -> None:
        path = Path(self.port)
        if not self.port.startswith(("socket://", "rfc2217://", "loop://")) and not path.exists():
            raise HardwareError(
                f"serial port {self.port} does not exist: is the arm's USB adapter plugged in? List "
                f"ports with `python -m serial.tools.list_ports`; for the virtual robot start "
                f"`reverie sim serve-bus protocol={self.protocol} link={self.port}` first")
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            raise HardwareError(
                f"no permission to open {self.port}: add yourself to its group "
                f"(`sudo usermod -aG dialout $USER`, then log in again) or fix the udev rule")
        try:
            self._serial = serial.serial_for_url(
                self.port, baudrate=self.baudrate, timeout=self.timeout_s, write_timeout=1.0)
        except (serial.SerialException, OSError, ValueError) as e:
            raise HardwareError(f"cannot open serial port {self.port} at {self.baudrate} baud: {e}") from e
        self.stats = BusStats()

    def _check_servos(self) -> None:
        found, missing = {}, []
        for servo_id in self.models:
            try:
                found[servo_id] = self.ping(servo_id, _configured=True)
            except ServoAlarm as e:  # it answered: present, but report the alarm after the scan
                found[servo_id] = self.models[servo_id].number
                log.warning("%s", e)
            except HardwareError:
                missing.append(servo_id)
        if not found:
            raise HardwareError(
                f"no servo answered on {self.port} at {self.baudrate} baud (pinged ids "
                f"{sorted(self.models)} with {self.protocol} packets): check the servos' power supply, "
                f"that their Baud_Rate matches (Feetech factory: 1000000, Dynamixel X factory: 57600) "
                f"and that protocol={self.protocol} is right for this arm")
        if missing:
            raise HardwareError(
                f"servo id(s) {missing} did not answer on {self.port} (ids {sorted(found)} did): check "
                f"their cables and that their IDs are set (each servo needs a unique ID)")
        for servo_id, number in found.items():
            model = self.models[servo_id]
            if number != model.number:
                actual = self.family.by_number.get(number)
                raise HardwareError(
                    f"servo {servo_id} on {self.port} is model number {number} "
                    f"({actual.name if actual else 'unknown'}), but the config says {model.name} "
                    f"({model.number}): fix the model in the arm config")

    def close(self) -> None:
        if self._serial is not None:
            try:
                self._serial.close()
            except _PORT_ERRORS:
                pass  # the port may already be gone (unplugged); nothing left to release
        self._serial = None

    def __enter__(self) -> "ServoBus":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- public operations ----------------------------------------------------------------------

    def ping(self, servo_id: int, _configured: bool = False) -> int:
        """Model number of servo `servo_id`, as its family learns it (Dynamixel: from the ping reply;
        Feetech: ping, then read Model_Number, since a Feetech ping reply carries no parameters)."""
        replies = self.exchange(self.family.proto.ping(servo_id), [servo_id], "PING")
        number = self.family.model_number(self, servo_id, replies[servo_id])
        if servo_id not in self.models and number in self.family.by_number:
            self.models[servo_id] = self.family.by_number[number]
        return number

    def read(self, servo_id: int, name: str) -> int:
        model, reg = self._register(servo_id, name)
        packet = self.family.proto.read(servo_id, reg.address, reg.size)
        replies = self.exchange(packet, [servo_id], "READ", name, reg.size)
        return self.family.decode(model, reg, replies[servo_id].params)

    def write(self, servo_id: int, name: str, value: int) -> None:
        """Write one register and wait for the servo's acknowledgement."""
        model, reg = self._register(servo_id, name, writing=True)
        data = self._encode(servo_id, model, reg, name, value)
        self.exchange(self.family.proto.write(servo_id, reg.address, data), [servo_id], "WRITE", name)

    def sync_read(self, name: str, ids: list[int]) -> dict[int, int]:
        """One SYNC_READ packet for all `ids`; each servo answers with its own status packet."""
        ids = [int(i) for i in ids]
        model, reg = self._shared_register(name, ids)
        packet = lambda some: self.family.proto.sync_read(reg.address, reg.size, some)  # noqa: E731
        try:
            replies = self.exchange(packet, ids, "SYNC_READ", name, reg.size, alarms=False)
        except MissingReply as e:
            e.values = self._decode_some(e.replies, {i: (self.models[i], reg) for i in ids})
            raise
        values = {i: self.family.decode(self.models[i], reg, replies[i].params) for i in ids}
        self._raise_alarms(replies, "SYNC_READ", name, values)
        return values

    def sync_write(self, name: str, values: dict[int, int]) -> None:
        """One SYNC_WRITE packet; broadcast, so no servo answers (and nothing confirms it)."""
        ids = [int(i) for i in values]
        model, reg = self._shared_register(name, ids, writing=True)
        data = {int(i): self._encode(int(i), self.models[int(i)], reg, name, v) for i, v in values.items()}
        self.exchange(self.family.proto.sync_write(reg.address, reg.size, data), [], "SYNC_WRITE", name)

    def bulk_read(self, requests: dict[int, str]) -> dict[int, int]:
        """One BULK_READ packet reading a (possibly different) register per servo (Dynamixel 2.0)."""
        if self.family.bulk_read is None:
            raise HardwareError(f"bulk read is no {self.protocol} instruction; use sync_read on {self.protocol}")
        regs = {int(i): self._register(int(i), name) for i, name in requests.items()}
        packet = lambda some: self.family.bulk_read([(i, regs[i][1].address, regs[i][1].size) for i in some])  # noqa: E731
        label = ",".join(sorted(set(requests.values())))
        try:
            replies = self.exchange(packet, list(regs), "BULK_READ", label, alarms=False,
                                     sizes={i: reg.size for i, (_, reg) in regs.items()})
        except MissingReply as e:
            e.values = self._decode_some(e.replies, regs)
            raise
        values = {i: self.family.decode(m, reg, replies[i].params) for i, (m, reg) in regs.items()}
        self._raise_alarms(replies, "BULK_READ", label, values)
        return values

    def set_torque(self, ids: list[int], enabled: bool) -> None:
        # One acknowledged WRITE per servo rather than a sync write: whether torque is really on
        # or off is a safety fact, and only a status reply confirms it.
        for servo_id in ids:
            self.write(int(servo_id), "Torque_Enable", 1 if enabled else 0)

    # ---- internals ------------------------------------------------------------------------------

    def _model(self, name: str, servo_id: int):
        if name not in self.family.models:
            raise HardwareError(
                f"servo {servo_id}: unknown {self.protocol} model {name!r}; known: {sorted(self.family.models)}")
        return self.family.models[name]

    def _register(self, servo_id: int, name: str, writing: bool = False):
        if servo_id not in self.models:
            if self.family.default_model is None:
                self.ping(servo_id)  # learn the model from the ping reply
            else:
                self.models[servo_id] = self.family.models[self.family.default_model]
        model = self.models.get(servo_id)
        if model is None:
            raise HardwareError(f"servo {servo_id} answered with an unknown model number; pass models={{...}}")
        reg = model.registers.get(name)
        if reg is None:
            raise HardwareError(f"servo {servo_id} ({model.name}) has no register {name!r}")
        if writing and reg.access != "RW":
            raise HardwareError(f"register {name} of {model.name} is read-only (servo {servo_id})")
        return model, reg

    def _shared_register(self, name: str, ids: list[int], writing: bool = False):
        if not ids:
            raise HardwareError(f"sync access to {name} needs at least one servo id")
        first_model, first = self._register(ids[0], name, writing)
        for servo_id in ids[1:]:
            model, reg = self._register(servo_id, name, writing)
            if not self.family.same_layout(reg, first):
                raise HardwareError(
                    f"{name} sits at a different address/size on servo {servo_id} ({model.name}) than on "
                    f"servo {ids[0]} ({first_model.name}): one sync packet cannot cover both; read them "
                    f"separately" + (" or with bulk_read" if self.family.bulk_read else ""))
        return first_model, first

    def _encode(self, servo_id: int, model, reg, name: str, value: int) -> bytes:
        try:
            return self.family.encode(model, reg, int(value))
        except (ValueError, OverflowError) as e:
            raise HardwareError(f"value {value} does not fit {name} of servo {servo_id} ({model.name}): {e}") from e

    def _decode_some(self, replies: dict[int, Any], regs: dict[int, tuple]) -> dict[int, int]:
        """Values of the replies that did arrive, where their size is right."""
        return {i: self.family.decode(m, reg, replies[i].params) for i, (m, reg) in regs.items()
                if i in replies and len(replies[i].params) == reg.size}

    def exchange(self, packet, expect: list[int], instruction: str, register: str = "",
                  size: int | None = None, alarms: bool = True,
                  sizes: dict[int, int] | None = None) -> dict[int, Any]:
        """Send `packet`, collect one status packet from each id in `expect`, retrying on a timeout
        or a corrupt reply. `packet` is bytes, or ids -> bytes for an exchange several servos
        answer: a retry then asks only the servos still missing and keeps the replies that came.
        Returns {id: Packet}."""
        if not self.is_connected:
            raise HardwareError(f"bus on {self.port} is not connected: call connect() first")
        what = f"{instruction} {register}".strip()
        sizes = sizes or {i: size or 0 for i in expect}
        build = packet if callable(packet) else (lambda ids: packet)
        got: dict[int, Any] = {}
        with self._lock:
            for attempt in range(self.retries + 1):
                if attempt:
                    self.stats.retries += 1
                waiting = [i for i in expect if i not in got]
                expected_bytes = sum(self.family.status_overhead + sizes.get(i, 0) for i in waiting)
                new, received, bad = self._send_and_collect(build(waiting), waiting, expected_bytes, what)
                got.update(new)
                if len(got) == len(expect):
                    break
                if bad:
                    self.stats.crc_errors += bad
                else:
                    self.stats.timeouts += 1
            else:
                missing = [i for i in expect if i not in got]
                cause = ("a reply that failed its checksum" if bad else
                         "an incomplete reply" if self._reader.buffer else "no reply")
                answered = f" (servo(s) {sorted(got)} did)" if got else ""
                raise MissingReply(
                    f"servo(s) {missing} gave {cause} to {what} on {self.port}{answered} after "
                    f"{self.retries + 1} tries ({self.timeout_s * 1e3:.0f} ms timeout each); last bytes "
                    f"received: {_hex(received)}", missing, got)
        for servo_id, status in got.items():
            fault = self.family.fault(status.error)
            if fault:
                reply = self.family.proto.status_packet(servo_id, status.error, status.params)
                raise HardwareError(f"servo {servo_id} rejected {what}: {fault}; reply: {_hex(reply)}")
            want = sizes.get(servo_id, 0)
            if want and len(status.params) != want:
                raise HardwareError(f"servo {servo_id} answered {what} with {len(status.params)} data "
                                    f"bytes, expected {want}: {_hex(status.params)}")
        if alarms:
            self._raise_alarms(got, instruction, register, {})
        return got

    def _send_and_collect(self, packet: bytes, expect: list[int], expected_bytes: int, what: str):
        ser = self._serial
        reader = self._reader
        reader.clear()
        crc_before = reader.crc_errors
        received = bytearray()
        got: dict[int, Any] = {}
        try:
            # Stale bytes (a late reply to an exchange we already gave up on) must not be taken
            # for this exchange's answer.
            ser.reset_input_buffer()
            ser.write(packet)
            ser.flush()
            self.stats.packets_sent += 1
            self.stats.bytes_out += len(packet)
            while len(got) < len(expect):
                chunk = ser.read(max(1, expected_bytes - len(received)))
                if not chunk:
                    break  # timeout_s passed with nothing more
                received += chunk
                self.stats.bytes_in += len(chunk)
                reader.feed(chunk)
                for status in reader.packets():
                    if status.id in expect and status.id not in got:
                        got[status.id] = status
                        self.stats.replies += 1
                if reader.crc_errors > crc_before and len(received) >= expected_bytes and not reader.buffer:
                    break  # every expected byte came and a frame was bad: retry now, not after timeout_s
        except _PORT_ERRORS as e:
            self.close()
            raise HardwareError(
                f"serial port {self.port} failed during {what} ({e}): was the adapter unplugged or the "
                f"virtual robot stopped? Reconnect it and connect() again") from e
        return got, bytes(received), reader.crc_errors - crc_before

    def _raise_alarms(self, replies: dict[int, Any], instruction: str, register: str,
                      values: dict[int, int]) -> None:
        what = f"{instruction} {register}".strip()
        for servo_id, status in replies.items():
            alarm = self.family.alarm(status.error)
            if alarm:
                self.stats.alarms += 1
                raise ServoAlarm(
                    f"servo {servo_id} reports a hardware alarm in its reply to {what}: {alarm}. "
                    f"Check load, supply voltage and temperature; bring the arm to a safe pose",
                    servo_id, alarm, values)


def _warn_latency_timer(port: str) -> None:
    """FTDI adapters batch USB reads for `latency_timer` ms (16 by default): warn, since that alone
    caps a sync read at ~60 Hz. See docs/serial.md."""
    try:
        name = Path(os.path.realpath(port)).name
        timer = Path(f"/sys/bus/usb-serial/devices/{name}/latency_timer")
        if timer.exists() and int(timer.read_text().strip()) > 1:
            log.warning("%s: USB latency timer is %s ms; set it to 1 ms for fast control loops "
                        "(docs/serial.md)", port, timer.read_text().strip())
    except (OSError, ValueError):
        pass
