"""`reverie deploy`: runs a bundle on the sim and on the virtual serial robot without torch, and a new
instruction (stdin or the loopback socket) takes over mid-episode."""

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import export_setup  # noqa: E402


class Deploy:
    """`reverie deploy ...` as a child process; collects its output lines as they come."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(export_setup.cli("deploy", *args), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def wait_for(self, pattern: str, timeout_s: float = 60.0) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None and not self.thread.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.lines[-30:]))

    def finish(self, timeout_s: float = 120.0) -> str:
        self.proc.stdin.close()
        self.proc.wait(timeout=timeout_s)
        self.thread.join(timeout=5)
        out = "\n".join(self.lines)
        assert self.proc.returncode == 0, out[-3000:]
        return out


def check_run(out: str, steps: int) -> None:
    """One full episode, the second instruction taken over mid-episode, and no torch imported."""
    episode = re.search(r"episode 0: success \S+, (\d+) steps at ([\d.]+) Hz .* (\d+) deadline misses .* "
                        r"(\d+) instruction\(s\)", out)
    assert episode, out[-2000:]
    assert int(episode.group(1)) == steps and int(episode.group(4)) == 2
    change = re.search(r"step (\d+): following instruction 2", out)
    assert change and 0 < int(change.group(1)) < steps
    assert "IMPORTED []" in out or "IMPORTED ['zarr']" in out, out[-500:]


def test_deploy_on_sim_takes_a_new_instruction_from_stdin(quick):
    bundle = quick
    run = Deploy(f"bundle={bundle}", "robot=sim", "instruction=touch the red cube", "steps=45", "task=touch")
    run.wait_for("episode started")
    time.sleep(0.5)  # ~15 steps in
    run.proc.stdin.write("lift the green cube\n")
    run.proc.stdin.flush()
    check_run(run.finish(), 45)


def deploy_on_virtual_arm(bundle: Path, tmp_path: Path, steps: int) -> tuple[str, Path]:
    from reverie.robot_io.virtual.launcher import VirtualArm
    from reverie.runtime.instructions import send

    link, store = tmp_path / "arm", tmp_path / "deployed.zarr"
    with VirtualArm("feetech", link=link, instruction="touch the red cube"):  # it scores that task
        run = Deploy(f"bundle={bundle}", "robot=virtual", f"link={link}", "instruction=touch the red cube",
                     f"steps={steps}", "socket=0", f"record={store}", "stdin=false")
        port, token = run.wait_for(r"instructions: 127.0.0.1:(\d+) token (\S+)").groups()
        run.wait_for("episode started")
        time.sleep(0.5)
        assert send(int(port), "not-the-token", "lift the blue cube").startswith("error: wrong token")
        assert send(int(port), token, "lift the blue cube") == "ok 2"
        out = run.finish()
    return out, store


def check_store(store: Path, steps: int) -> None:
    from reverie.datasets.store import EpisodeStore

    s = EpisodeStore.open(store)
    meta = s.meta(0)
    assert s.num_episodes == 1 and meta.source == "policy" and meta.instruction == "touch the red cube"
    assert "instruction 2: lift the blue cube" in meta.notes
    ep = s.episode(0)
    assert len(ep["state"]) == steps + 1 and ep["action_mask"][:-1].all() and not ep["action_mask"][-1]
    s.close()


def test_deploy_on_virtual_serial_robot_with_socket_instruction_and_recording(quick, tmp_path):
    bundle = quick
    out, store = deploy_on_virtual_arm(bundle, tmp_path, 45)
    check_run(out, 45)
    assert re.search(r"episode 0: success (yes|no),", out)  # from the virtual robot's task score
    check_store(store, 45)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["rssm", "shortcut"])
def test_trained_bundle_runs_a_full_episode_on_the_virtual_robot(trained, tmp_path, backend):
    """Done-when of the export issue: a trained tiny policy of each backend, exported with parity,
    runs a full episode (300 steps, 10 s at 30 Hz) on the virtual serial robot; the instruction
    changes mid-episode; torch is never imported."""
    bundle = trained[backend]
    out, store = deploy_on_virtual_arm(bundle, tmp_path, 300)
    check_run(out, 300)
    check_store(store, 300)
