"""Recording through the virtual serial robot: keyboard teleop driven from code, a simulated
leader arm (a second virtual bus), operator events, loop reports, Ctrl-C."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from reverie.cli import main as cli
from reverie.datasets.store import EpisodeStore
from reverie.robot_io.camera_setup import build_cameras
from reverie.robot_io.config import load_arm
from reverie.robot_io.loop_report import loop_report
from reverie.robot_io.record import Plan, Recorder, open_or_create_store
from reverie.robot_io.arm_bus import make_bus
from reverie.robot_io.robot import Robot
from reverie.robot_io.teleop import KeyboardTeleop
from reverie.robot_io.virtual.launcher import LAUNCH, VirtualArm


@pytest.fixture(scope="module")
def so101(tmp_path_factory):
    with VirtualArm("feetech", link=tmp_path_factory.mktemp("rec") / "so101") as v:
        yield v


class ScriptedKeys(KeyboardTeleop):
    """The operator, played by code: `script[(episode, step)]` lists the keys pressed just before
    the recorder asks for that step's target (the episode counter advances on each begin())."""

    def __init__(self, arm, script, interrupt_at=None):
        super().__init__(arm)
        self.script, self.interrupt_at = script, interrupt_at
        self.episode, self.step = -1, 0

    def begin(self, present):
        super().begin(present)
        self.episode, self.step = self.episode + 1, 0

    def target(self, present):
        if (self.episode, self.step) == self.interrupt_at:
            raise KeyboardInterrupt
        for key in self.script.get((self.episode, self.step), "q"):  # default: pan left
            self.press(key)
        self.step += 1
        return super().target(present)


def _arm(virtual, **kw):
    return load_arm("so101_virtual", port=virtual.link, cameras=virtual.camera_config(), **kw)


def _torque_off(virtual):
    arm = load_arm("so101_virtual", port=virtual.link)
    with make_bus(arm) as bus:
        return set(bus.sync_read("Torque_Enable", arm.ids).values()) == {0}


def test_three_keyboard_episodes_with_operator_events_make_a_readable_store(so101, tmp_path, capsys):
    arm = _arm(so101)
    script = {
        # A key pressed while step s is computed is handled before row s + 1.
        (0, 3): "+", (0, 8): " ",          # success, then stop: rows 0-9
        (1, 2): "x",                       # re-record: this try is discarded
        (2, 2): "c", (2, 5): "c-",         # correction segment over rows 3-5, then failure
        (3, 1): "w",                       # unlabelled, runs to the step limit
    }
    teleop = ScriptedKeys(arm, script)
    robot = Robot(arm, cameras=build_cameras(arm.cameras), control_hz=30)
    out = tmp_path / "demos.zarr"
    robot.connect()
    try:
        store = open_or_create_store(str(out), robot, 30.0)
        plan = Plan("pan to the left", episodes=3, fps=30.0, max_steps=12, start="auto")
        results = Recorder(robot, teleop, store, plan).run()
        store.close()
    finally:
        robot.disconnect()
    assert _torque_off(so101)
    assert [r.success for r in results] == [True, False, None]
    assert [r.steps for r in results] == [10, 12, 12]

    store = EpisodeStore.open(out)
    assert store.num_episodes == 3 and store.robot == "so101_virtual" and store.fps == 30.0
    for i, steps in enumerate((10, 12, 12)):
        ep, meta = store.episode(i), store.meta(i)
        assert meta.instruction == "pan to the left" and meta.source == "teleop" and meta.length == steps
        assert ep["image/front"].shape == (steps, 64, 64, 3) and ep["image/front"].max() > 0
        assert np.all(np.diff(ep["timestamp"]) > 0)  # measured, increasing
        skew = ep["capture_time/front"] - ep["timestamp"]
        assert np.all(np.diff(ep["capture_time/front"]) >= 0) and np.all(np.abs(skew) < 0.5)
        assert ep["action_mask"][:-1].all() and not ep["action_mask"][-1]
        assert ep["is_first"][0] and ep["is_last"][-1] and ep["is_last"].sum() == 1
        assert np.all(np.abs(ep["action"]) <= 1.0)
        assert ep["action"][:-1, 0].mean() > 0.5  # the pan key pressed every step
        assert ep["state"][-1, 0] > ep["state"][0, 0] + 0.1  # and the arm followed it
    assert store.meta(0).success is True and store.meta(1).success is False and store.meta(2).success is None
    np.testing.assert_array_equal(store.episode(1)["correction"],
                                  [False] * 3 + [True] * 3 + [False] * 6)

    printed = capsys.readouterr().out
    assert "episode 2 discarded; recording it again" in printed
    assert printed.count("Hz (target 30 Hz)") == 3 and "dropped frames: front" in printed

    assert cli(["data", "info", str(out)]) == 0
    assert "3" in capsys.readouterr().out


def test_enter_starts_and_esc_ends_recording(so101, tmp_path):
    arm = _arm(so101)
    teleop = ScriptedKeys(arm, {(0, 4): "\x1b"})
    robot = Robot(arm, cameras=build_cameras(arm.cameras))
    robot.connect()
    try:
        store = open_or_create_store(str(tmp_path / "keys.zarr"), robot, 30.0)
        teleop.press("\r")  # Enter: the recorder waits for it before moving the arm
        plan = Plan("wait for me", episodes=5, fps=30.0, max_steps=50, start="key", start_timeout_s=30)
        results = Recorder(robot, teleop, store, plan, say=lambda line: None).run()
        assert [r.steps for r in results] == [6] and store.num_episodes == 1  # Esc kept it, then quit
        store.close()
    finally:
        robot.disconnect()


def test_loop_report_flags_a_slow_loop_and_repeated_frames():
    stamps = np.cumsum(np.full(30, 1 / 18))  # 18 Hz against a 30 Hz target
    frames = {"front": [(i // 2, 0.001) for i in range(30)]}  # every frame shown twice
    report = loop_report(stamps, 30.0, frames)
    assert report.below_target and abs(report.achieved_hz - 18) < 0.01
    assert report.dropped_frames == {"front": 15} and report.late_steps == 29  # each over 1.5 periods
    text = "\n".join(report.lines())
    assert "WARNING: loop ran at 18.0 Hz, below the 30 Hz target" in text and "stale or repeated" in text
    steady = loop_report(np.arange(30) / 30, 30.0, {"front": [(i, 0.001) for i in range(30)]})
    assert not steady.below_target and steady.dropped_frames == {"front": 0} and len(steady.lines()) == 1


def _cli_args(virtual, out, *extra):
    return ["record", f"robot.port={virtual.link}", f"robot.cameras.front.path={virtual.frames_prefix}.front",
            "instruction=reach", "fps=30", "episode_s=0.4", "start=auto", f"out={out}", *extra]


def test_record_command_with_a_simulated_leader_arm(so101, tmp_path, capsys):
    out = tmp_path / "leader.zarr"
    with VirtualArm("feetech", link=tmp_path / "leader", camera_fps=0) as leader:
        code = cli(_cli_args(so101, out, "teleop=leader", f"leader_port={leader.link}", "episodes=2"))
    assert code == 0, capsys.readouterr().err
    store = EpisodeStore.open(out)
    assert store.num_episodes == 2
    ep = store.episode(1)
    assert ep["action_mask"][:-1].all() and np.abs(ep["action"][:-1]).max() > 0.05  # the limp leader moved
    assert "recorded 2 episode(s)" in capsys.readouterr().out
    assert _torque_off(so101)


def test_ctrl_c_mid_episode_keeps_committed_episodes_and_parks_the_arm(so101, tmp_path):
    """A real SIGINT to a `reverie record` process, pressed twice (the second lands while parking)."""
    out = tmp_path / "interrupted.zarr"
    args = _cli_args(so101, out, "episodes=20", "episode_s=1")[1:]
    record = subprocess.Popen([sys.executable, "-c", LAUNCH, "record", *args], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"},
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in record.stdout:  # the first episode is committed: interrupt the second mid-way
        lines.append(line)
        if "committed as #0" in line:
            time.sleep(0.5)
            record.send_signal(signal.SIGINT)
            time.sleep(0.2)
            record.send_signal(signal.SIGINT)
            break
    lines += record.stdout.readlines()
    assert record.wait(timeout=60) == 130, "".join(lines)
    text = "".join(lines)
    assert "1 new episode(s) committed" in text and "unfinished episode was discarded" in text
    assert "arm moved to its safe pose; torque released" in text
    store = EpisodeStore.open(out)
    assert store.num_episodes == 1 and store.num_frames == store.meta(0).length == 30
    assert _torque_off(so101)


def _session(virtual, out, episodes, say=lambda line: None):
    """One `reverie record` session in code: connect, append `episodes`, park. Returns their indices."""
    arm = _arm(virtual)
    robot = Robot(arm, cameras=build_cameras(arm.cameras), control_hz=30)
    robot.connect()
    try:
        store = open_or_create_store(str(out), robot, 30.0)
        plan = Plan("pan to the left", episodes=episodes, fps=30.0, max_steps=6, start="auto")
        results = Recorder(robot, ScriptedKeys(arm, {(0, 1): "c"}), store, plan, say=say).run()
        store.close()
    finally:
        robot.disconnect()
    return [r.index for r in results]


def _contents(out):
    with EpisodeStore.open(out) as store:
        return store.schema, [(store.meta(i), store.episode(i)) for i in range(store.num_episodes)]


def _assert_same_episodes(before, after):
    for (meta, ep), (meta2, ep2) in zip(before, after, strict=False):
        assert meta == meta2 and ep.keys() == ep2.keys()
        for key in ep:  # bit for bit, not just numerically equal
            assert ep[key].dtype == ep2[key].dtype and ep[key].tobytes() == ep2[key].tobytes(), key


def _files(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _old_episode(schema, steps=4):
    """Rows of a made-up committed episode, for stores written by earlier sessions."""
    rng = np.random.default_rng(0)
    ep = {k: rng.uniform(-1, 1, (steps, *s.shape)).astype(s.dtype) if s.dtype != "bool" else np.zeros(steps, bool)
          for k, s in schema.items()}
    ep["is_first"][0] = ep["is_last"][-1] = True
    return ep


def test_a_second_session_appends_after_the_first_which_stays_bit_identical(so101, tmp_path):
    out = tmp_path / "sessions.zarr"
    assert _session(so101, out, 2) == [0, 1]
    schema, first = _contents(out)
    assert _session(so101, out, 1) == [2]
    schema2, both = _contents(out)
    assert schema2 == schema and len(both) == 3
    _assert_same_episodes(first, both[:2])
    assert both[2][1]["correction"][2:].all() and both[2][0].start == first[1][0].start + first[1][0].length


def test_a_store_from_before_correction_and_capture_times_is_appended_to_without_them(so101, tmp_path, caplog):
    from reverie.datasets.schema import make_schema

    out = tmp_path / "old.zarr"
    old_schema = make_schema({"front": (64, 64)}, state_dim=6, action_dim=6)  # what record wrote at first
    with EpisodeStore.create(out, old_schema, fps=30.0, robot="so101_virtual") as store:
        store.add_episode(_old_episode(old_schema), instruction="an older session", source="teleop")
    _, before = _contents(out)
    said = []
    assert _session(so101, out, 1, say=said.append) == [1]
    schema, after = _contents(out)
    assert schema == old_schema and len(after) == 2  # the store keeps one set of columns
    _assert_same_episodes(before, after[:1])
    assert "predates ['correction', 'capture_time/front']" in caplog.text
    assert any("correction segment started at step 2 (not stored" in line for line in said)


@pytest.mark.parametrize("kind", ["camera", "fps"])
def test_a_store_with_another_schema_is_refused_and_left_untouched(so101, tmp_path, capsys, kind):
    from reverie.datasets.schema import make_schema

    out = tmp_path / "other.zarr"
    size, fps = ((32, 32), 30.0) if kind == "camera" else ((64, 64), 15.0)
    schema = make_schema({"front": size}, state_dim=6, action_dim=6)
    with EpisodeStore.create(out, schema, fps=fps, robot="so101_virtual") as store:
        store.add_episode(_old_episode(schema), instruction="another camera setup", source="teleop")
    files = _files(out)
    assert cli(_cli_args(so101, out, "episodes=1")) == 2
    err = capsys.readouterr().err
    expected = ("image/front is 32x32x3 uint8 in the store but 64x64x3 uint8 from this robot" if kind == "camera"
                else "recorded at 15 fps, this session runs at 30")
    assert f"cannot append to {out}" in err and expected in err and "new out=" in err, err
    assert _files(out) == files
    assert _torque_off(so101)
