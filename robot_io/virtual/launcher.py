"""Start and stop the virtual serial robot (`reverie sim serve-bus`, robot_io/virtual/server.py) as a child process.

    with VirtualArm("feetech", link="/tmp/arm") as v:       # returns once the port is ready
        arm = load_arm("so101_virtual", port=v.link, cameras=v.camera_config())
        ...

The server runs in its own process, exactly as for a user, so the client talks to a real
pseudo-terminal through pyserial and nothing in-process is shared. Used by the recorder's and
runtime's tests and by scripts that want a robot without hardware.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from reverie.errors import HardwareError
from reverie.robot_io import servo_families
from reverie.robot_io.virtual.frames import FrameFileCamera

LAUNCH = "import sys; from reverie.cli import main; sys.exit(main())"


class VirtualArm:
    def __init__(self, protocol: str = "feetech", link: str | Path = "/tmp/reverie-arm",
                 startup_timeout_s: float = 60.0, **options):
        self.protocol = protocol
        self.link = str(link)
        self.options = options
        self.timeout_s = startup_timeout_s
        self.process: subprocess.Popen | None = None
        self.output: list[str] = []

    @property
    def frames_prefix(self) -> str:
        return str(self.options.get("frames") or f"{self.link}.frames")

    def camera_config(self, cameras=("front",)) -> dict:
        """The `cameras:` section of an arm config that reads this server's frames."""
        if self.options.get("camera_fps", 30) == 0:
            return {}
        return {c: {"type": "frame_file", "path": f"{self.frames_prefix}.{c}"} for c in cameras}

    def start(self) -> "VirtualArm":
        args = [f"protocol={self.protocol}", f"link={self.link}"]
        args += [f"{k}={_value(v)}" for k, v in self.options.items()]
        env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
        self.process = subprocess.Popen([sys.executable, "-c", LAUNCH, "sim", "serve-bus", *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        ready = threading.Event()

        def pump():  # keep reading so the child never blocks on a full pipe
            for line in self.process.stdout:
                self.output.append(line.rstrip())
                if line.startswith("ready "):
                    ready.set()

        threading.Thread(target=pump, name="virtual-arm-output", daemon=True).start()
        deadline = time.monotonic() + self.timeout_s
        while not ready.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(self.output[-15:])
                raise HardwareError(f"virtual arm did not start on {self.link}:\n{tail}")
        self._wait_for_first_frame(deadline)
        self._wait_for_bus(deadline)
        return self

    def _wait_for_bus(self, deadline: float) -> None:
        """Ping the first servo until it answers: a freshly started server (imports, physics
        warm-up) can miss a client's first 20 ms timeouts. Skipped when faults are injected that
        would keep it from answering, since then silence is the point. Speaks the family's packets
        directly (any status from that id counts, an alarmed one too), not robot_io's client bus."""
        if any(float(self.options.get(k, 0) or 0) > 0 for k in ("drop", "corrupt", "delay_ms")):
            return
        import serial

        first = int(list(self.options.get("ids", [1]))[0])
        proto = servo_families.find(self.protocol).proto
        reader = proto.Reader("status")
        with serial.serial_for_url(self.link, baudrate=int(self.options.get("baudrate", 1_000_000)),
                                   timeout=0.1) as port:
            while True:
                port.reset_input_buffer()
                reader.clear()
                port.write(proto.ping(first))
                port.flush()
                until = time.monotonic() + 0.1
                while time.monotonic() < until:
                    reader.feed(port.read(64))
                    if any(status.id == first for status in reader.packets()):
                        return
                if time.monotonic() > deadline:
                    self.stop()
                    raise HardwareError(f"virtual arm on {self.link} never answered a ping")

    def _wait_for_first_frame(self, deadline: float) -> None:
        """The server's first render sets up GL, which stalls its bus for a moment after "ready";
        a client connecting then would see timeouts that no real arm shows. Wait it out."""
        if not self.camera_config():
            return
        camera = FrameFileCamera(next(iter(self.camera_config().values()))["path"])
        try:
            camera.connect(timeout_s=max(0.1, deadline - time.monotonic()))
            camera.read(timeout_s=max(0.1, deadline - time.monotonic()))
        except HardwareError:
            self.stop()
            raise
        finally:
            camera.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM (the server removes its link and frame files), then kill if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> "VirtualArm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _value(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(str(x) for x in v) + "]"
    if v is None:
        return "null"
    return str(v)
