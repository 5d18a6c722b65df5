"""Crash safety: a writer process is SIGKILLed at random moments, mid-episode and mid-commit; every
committed episode must read back bit-identical and the store must stay writable.

Each episode's content is a pure function of the seed written into its instruction, so the parent
can check any episode it finds without a journal from the child.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import zarr

from reverie.datasets.store import EpisodeStore, make_schema

SCHEMA = make_schema(cameras={"front": (12, 16)}, state_dim=4, action_dim=3)

CHILD = r"""
import sys
import numpy as np
import reverie.datasets.store as store_mod
from reverie.datasets.store import EpisodeStore
sys.path.insert(0, sys.argv[2])
from crash_episode import make_episode

store_mod.FLUSH_BYTES = 6000  # flush every few rows: kills land between flushes as well as inside them
store = EpisodeStore.open(sys.argv[1], mode="a")
seed = int(sys.argv[3])
print("ready", flush=True)
while True:
    ep = make_episode(seed)
    writer = store.episode_writer(f"seed {seed}", "scripted", round=seed % 3)
    for t in range(len(ep["state"])):
        writer.add({key: value[t] for key, value in ep.items()})
    print("commit", seed, flush=True)
    writer.commit(success=bool(seed % 2))
    print("committed", seed, flush=True)
    seed += 1
"""

EPISODE = r"""
import numpy as np

def make_episode(seed):
    rng = np.random.default_rng(seed)
    T = int(rng.integers(3, 60))
    return {
        "image/front": rng.integers(0, 256, (T, 12, 16, 3), dtype=np.uint8),
        "state": rng.normal(size=(T, 4)).astype(np.float32),
        "action": rng.uniform(-1, 1, (T, 3)).astype(np.float32),
        "action_mask": rng.random(T) < 0.8,
        "reward": rng.normal(size=T).astype(np.float32),
        "is_first": np.arange(T) == 0,
        "is_last": np.arange(T) == T - 1,
        "is_terminal": (np.arange(T) == T - 1) & (seed % 2 == 0),
        "timestamp": np.cumsum(rng.uniform(0.01, 0.2, T)),
    }
"""


def check_all(path, helper_dir):
    """Open (truncating any interrupted tail) and compare every episode with its regenerated content."""
    sys.path.insert(0, str(helper_dir))
    from crash_episode import make_episode

    store = EpisodeStore.open(path, mode="a")
    seeds = []
    for ep, meta in store.iter_episodes():
        seed = int(meta.instruction.split()[1])
        want = make_episode(seed)
        assert meta.length == len(want["state"]) and meta.success == bool(seed % 2) and meta.round == seed % 3
        for key, value in want.items():
            assert ep[key].dtype == value.dtype and np.array_equal(ep[key], value), (seed, key)
        seeds.append(seed)
    assert all(arr.shape[0] == store.num_frames for arr in map(store.array, store.keys))
    return store, seeds


def test_sigkill_writer_at_random_moments(tmp_path):
    (tmp_path / "crash_episode.py").write_text(EPISODE)
    path = tmp_path / "s.zarr"
    EpisodeStore.create(path, SCHEMA, fps=10.0, robot="sim").close()
    rng = np.random.default_rng(0)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    next_seed, announced, tails = 0, [], []
    for round_ in range(12):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(tmp_path), str(next_seed)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        mid_commit = round_ % 2 == 1
        if mid_commit:  # wait for a commit to start, then kill within its ~15 small writes
            while not (line := child.stdout.readline()).startswith("commit "):
                if line.startswith("committed"):
                    announced.append(int(line.split()[1]))
            time.sleep(rng.uniform(0, 0.08))
        else:
            time.sleep(rng.uniform(0.05, 1.0))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        assert child.returncode == -signal.SIGKILL
        announced += [int(line.split()[1]) for line in out.splitlines() if line.startswith("committed")]
        raw = zarr.open_group(str(path), mode="r")
        ends = raw["meta/episode_ends"][:]
        tails.append(raw["data/state"].shape[0] - (ends[-1] if len(ends) else 0))

        store, seeds = check_all(path, tmp_path)
        # Nothing the child saw committed is lost; at most the episode being committed appears extra.
        assert set(announced) <= set(seeds) and seeds == list(range(len(seeds)))
        store.close()
        next_seed = len(seeds)

    # Still writable after all that: one more episode goes in and reads back.
    sys.path.insert(0, str(tmp_path))
    from crash_episode import make_episode

    store = EpisodeStore.open(path, mode="a")
    store.add_episode(make_episode(next_seed), instruction=f"seed {next_seed}", source="scripted",
                      round=next_seed % 3, success=bool(next_seed % 2))
    store.close()
    _, seeds = check_all(path, tmp_path)
    assert seeds[-1] == next_seed
    # The kills did land inside episodes (rows past the committed end), and episodes got committed.
    assert sum(t > 0 for t in tails) >= 4 and next_seed >= 3, (tails, next_seed)


class Crash(BaseException):
    """Like a kill: not an Exception, so the writer's error handling does not run."""


def test_crash_after_every_write_of_a_commit(tmp_path, monkeypatch):
    """Deterministic complement to the random kills: stop a commit at each of its writes, both before
    the write and between growing the array's shape and writing the value, then reopen. The episode
    must appear exactly when its episode_ends value landed, and never half."""
    import reverie.datasets.store as store_mod

    sys.path.insert(0, str(tmp_path))
    (tmp_path / "crash_episode.py").write_text(EPISODE)
    from crash_episode import make_episode

    real_append, real_stats = store_mod._append_row, store_mod.EpisodeStore._update_stats
    appends = len(store_mod.META_FIELDS) + 2  # image histogram, meta fields, episode_ends
    stops = [(call, half) for call in range(appends) for half in (False, True)] + [("stats", False)]
    for n, (stop_call, half) in enumerate(stops):
        path = tmp_path / f"s{n}.zarr"
        store = EpisodeStore.create(path, SCHEMA, fps=10.0, robot="sim")
        store.add_episode(make_episode(0), instruction="seed 0", source="scripted", round=0, success=False)
        calls = []

        def failing_append(arr, i, value):
            if len(calls) == stop_call:
                if half:
                    arr.resize((i + 1, *arr.shape[1:]))  # shape grown, value never written
                raise Crash
            calls.append(1)
            real_append(arr, i, value)

        def failing_stats(self):
            raise Crash

        monkeypatch.setattr(store_mod, "_append_row", failing_append)
        if stop_call == "stats":
            monkeypatch.setattr(store_mod.EpisodeStore, "_update_stats", failing_stats)
        writer = store.episode_writer("seed 1", "scripted", round=1)
        writer.add_block(make_episode(1))
        try:
            writer.commit(success=True)
        except Crash:
            pass
        monkeypatch.setattr(store_mod, "_append_row", real_append)
        monkeypatch.setattr(store_mod.EpisodeStore, "_update_stats", real_stats)
        store._writer = None  # abandon it like a killed process: lock released, nothing cleaned up
        store.close()
        store, seeds = check_all(path, tmp_path)
        # Only the episode_ends value (the last append) commits; a crash in the stats update after it
        # keeps the episode, and stats() notices the stale cache and recomputes.
        assert seeds == ([0, 1] if stop_call == "stats" else [0]), (stop_call, half, seeds)
        state = np.concatenate([make_episode(s)["state"] for s in seeds]).astype(np.float64)
        np.testing.assert_allclose(store.stats()["state"]["mean"], state.mean(0), rtol=1e-5)
        store.add_episode(make_episode(2), instruction="seed 2", source="scripted", round=2, success=False)
        store.close()
        assert check_all(path, tmp_path)[1][-1] == 2
