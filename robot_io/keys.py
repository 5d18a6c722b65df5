"""Single key presses from the terminal, on a background thread, for teleop and operator keys.

The terminal is put in cbreak mode (keys arrive without Enter, Ctrl-C still interrupts) and is
always restored on stop, even after a crash, so the user's shell is left usable. Only used when
stdin is a terminal: in scripts and tests, code calls the device's `press()` directly.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def split_keys(chunk: str) -> list[str]:
    """Single keys of one read. Arrow and function keys arrive as escape sequences (ESC [ ... or
    ESC O x) and are dropped, since none is ours; a lone ESC is the Esc key."""
    keys, i = [], 0
    while i < len(chunk):
        if chunk[i] == "\x1b" and i + 1 < len(chunk) and chunk[i + 1] in "[O":
            i += 2
            while i < len(chunk) and not ("@" <= chunk[i] <= "~"):  # parameters, up to the final byte
                i += 1
            i += 1
            continue
        keys.append(chunk[i])
        i += 1
    return keys


class TerminalKeys:
    def __init__(self, on_key: Callable[[str], None], stream=None):
        self.on_key = on_key
        self.stream = stream or sys.stdin
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved = None

    @staticmethod
    def available(stream=None) -> bool:
        stream = stream or sys.stdin
        try:
            return stream.isatty() and os.name == "posix"
        except (AttributeError, ValueError):
            return False

    def __enter__(self) -> "TerminalKeys":
        import termios
        import tty

        fd = self.stream.fileno()
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self._thread = threading.Thread(target=self._run, args=(fd,), name="terminal-keys", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import termios

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._saved is not None:
            termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self._saved)

    def _run(self, fd: int) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.05)
            if not ready:
                continue
            for key in split_keys(os.read(fd, 64).decode(errors="ignore")):
                try:
                    self.on_key(key)
                except Exception:  # a bad handler must not kill key input mid-recording
                    log.exception("key handler failed for %r", key)
