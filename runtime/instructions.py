"""The current instruction of a running deployment, changeable at any moment.

    channel = InstructionChannel(encoder.encode, max_chars=512)
    channel.set("pick up the red cube")            # validated and embedded before it is published
    text, embedding, version = channel.current()    # what the next control step uses
    StdinReader(channel).start()                    # one instruction per line on standard input
    server = SocketServer(channel, port=0).start()  # 127.0.0.1 only; "<token> <instruction>\\n"

New instructions are validated and embedded on the thread that receives them, then swapped in as one
(text, embedding) pair, so the control loop never waits for the encoder and never sees a text with
another text's embedding. A bad instruction (empty, too long, not UTF-8, wrong token) is refused with
a message to its sender; the arm keeps following the current one.

Socket protocol (TCP, loopback only): one request per connection, a single line of at most
`max_bytes` bytes: the token, one space, the instruction. Reply: "ok <version>" or "error: <why>".
The server waits on every open connection at once (selectors), so a silent or trickling client
delays nobody: each request must arrive whole within `request_timeout_s` of connecting, and past
`max_connections` open ones a newcomer closes the oldest.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable

import numpy as np

from reverie.errors import ConfigError

log = logging.getLogger(__name__)
MAX_BYTES = 4096          # one socket request, token included
REQUEST_TIMEOUT_S = 2.0   # from connecting to the newline: a slow client cannot hold its slot longer
MAX_CONNECTIONS = 64      # open at once; more close the oldest


def check_instruction(text: object, max_chars: int) -> str:
    """The instruction, stripped; ConfigError naming the problem otherwise."""
    if not isinstance(text, str):
        raise ConfigError(f"instruction must be text, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise ConfigError('the instruction is empty: say what the arm should do, e.g. instruction="pick up the red cube"')
    if len(text) > max_chars:
        raise ConfigError(f"the instruction has {len(text)} characters, at most {max_chars} are accepted "
                          f"(the encoder reads 128 tokens); shorten it")
    if any(ord(c) < 32 and c not in "\t" for c in text):
        raise ConfigError("the instruction contains control characters; send plain text on one line")
    return text


class InstructionChannel:
    def __init__(self, encode: Callable[[str], np.ndarray], max_chars: int = 512):
        self._encode, self.max_chars = encode, max_chars
        self._lock = threading.Lock()
        self._current: tuple[str, np.ndarray, int] | None = None
        self.changes: list[tuple[int, str]] = []  # (version, text) for the episode notes

    def set(self, text: object) -> int:
        """Validate, embed, publish; returns the new version. Raises ConfigError for a bad text."""
        text = check_instruction(text, self.max_chars)
        embedding = np.asarray(self._encode(text), np.float32).reshape(1, -1)  # (1, 384)
        if not np.all(np.isfinite(embedding)):
            raise ConfigError(f"the encoder returned a non-finite embedding for {text!r}; re-export the bundle")
        with self._lock:
            version = 1 if self._current is None else self._current[2] + 1
            self._current = (text, embedding, version)
            self.changes.append((version, text))
        log.info("instruction %d: %s", version, text)
        return version

    def current(self) -> tuple[str, np.ndarray, int]:
        with self._lock:
            if self._current is None:
                raise ConfigError("no instruction given: pass instruction=\"...\"")
            return self._current


class StdinReader:
    """Each line typed on standard input becomes the instruction (daemon thread; EOF ends it)."""

    def __init__(self, channel: InstructionChannel, stream=None):
        self.channel, self.stream = channel, stream or sys.stdin
        self.thread = threading.Thread(target=self._run, name="instructions-stdin", daemon=True)

    def start(self) -> "StdinReader":
        self.thread.start()
        return self

    def _run(self) -> None:
        for line in self.stream:
            if not line.strip():
                continue  # a stray Enter is not an instruction
            try:
                version = self.channel.set(line)
                print(f"instruction {version}: {line.strip()}", file=sys.stderr, flush=True)
            except ConfigError as e:
                print(f"instruction refused: {e}", file=sys.stderr, flush=True)


class _Request:
    """One open connection: what it has sent so far and when its whole request is due."""

    def __init__(self, conn: socket.socket, deadline: float):
        self.conn, self.deadline, self.data = conn, deadline, b""


class SocketServer:
    """Loopback TCP server for instructions from other programs; requires the token. One thread
    serves every connection through a selector."""

    def __init__(self, channel: InstructionChannel, port: int = 0, token: str | None = None,
                 max_bytes: int = MAX_BYTES, request_timeout_s: float = REQUEST_TIMEOUT_S,
                 max_connections: int = MAX_CONNECTIONS):
        self.channel, self.max_bytes = channel, max_bytes
        self.request_timeout_s, self.max_connections = float(request_timeout_s), int(max_connections)
        self.token = token or secrets.token_urlsafe(16)
        if len(self.token) < 8 or any(c.isspace() for c in self.token):
            raise ConfigError("socket token must be at least 8 characters without spaces")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind(("127.0.0.1", int(port)))  # loopback only: never reachable from the network
        except OSError as e:
            self.sock.close()
            raise ConfigError(f"cannot listen for instructions on 127.0.0.1:{port} ({e}); pick another "
                              "socket=PORT or socket=0 for a free one") from e
        self.sock.listen(self.max_connections)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.sock, selectors.EVENT_READ)
        self._open: dict[socket.socket, _Request] = {}  # in the order they connected
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="instructions-socket", daemon=True)

    def start(self) -> "SocketServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=2.0)
        for request in list(self._open.values()):
            request.conn.close()
        self._open.clear()
        self._selector.close()
        self.sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            wait = min([0.1] + [r.deadline - now for r in self._open.values()])  # 0.1 s: notice stop()
            try:
                ready = self._selector.select(max(wait, 0.0))
            except OSError:
                return  # closed under us by stop()
            for key, _ in ready:
                if key.fileobj is self.sock:
                    self._accept()
                else:
                    self._receive(self._open[key.fileobj])
            now = time.monotonic()
            for request in [r for r in self._open.values() if r.deadline <= now]:
                self._finish(request, f"error: no complete line received within {self.request_timeout_s:g} s; "
                                      f"send '<token> <instruction>\\n' at once")

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # BlockingIOError: nobody else is waiting
                return
            if len(self._open) >= self.max_connections:
                oldest = next(iter(self._open.values()))
                self._finish(oldest, f"error: {self.max_connections} connections open; the oldest is closed: "
                                     f"send the whole request as soon as you connect")
            conn.setblocking(False)
            self._open[conn] = _Request(conn, time.monotonic() + self.request_timeout_s)
            self._selector.register(conn, selectors.EVENT_READ)

    def _receive(self, request: _Request) -> None:
        """Take what arrived; answer once a line, the end of the stream, or too many bytes came."""
        try:
            chunk = request.conn.recv(self.max_bytes + 1 - len(request.data))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._finish(request, None)
            return
        request.data += chunk
        if len(request.data) > self.max_bytes:
            self._finish(request, self.handle(b""))  # too long: the rest is never read
        elif not chunk or b"\n" in request.data:
            self._finish(request, self.handle(request.data))

    def _finish(self, request: _Request, reply: str | None) -> None:
        self._selector.unregister(request.conn)
        del self._open[request.conn]
        with request.conn:
            if reply is not None:
                try:  # a short line into an empty send buffer: it goes at once or the client is gone
                    request.conn.send((reply + "\n").encode())
                except OSError:
                    pass

    def handle(self, data: bytes) -> str:
        if not data:
            return f"error: empty request or longer than {self.max_bytes} bytes; send '<token> <instruction>\\n'"
        try:
            line = data.split(b"\n", 1)[0].decode("utf-8")
        except UnicodeDecodeError:
            return "error: the request is not UTF-8 text"
        token, _, text = line.partition(" ")
        if not hmac.compare_digest(token.encode(), self.token.encode()):
            log.warning("instruction socket: request with a wrong token refused")
            return "error: wrong token"
        try:
            return f"ok {self.channel.set(text)}"
        except ConfigError as e:
            return f"error: {e}"


def send(port: int, token: str, text: str, timeout_s: float = 5.0) -> str:
    """Client side (tests, scripts): send one instruction, return the server's reply line."""
    with socket.create_connection(("127.0.0.1", int(port)), timeout=timeout_s) as conn:
        conn.sendall(f"{token} {text}\n".encode())
        return conn.makefile().readline().strip()
