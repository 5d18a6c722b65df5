"""`reverie data label`: success labels set after the fact, frames untouched, bad input refused."""

import numpy as np
import pytest

from reverie import cli
from reverie.datasets.label import parse_episodes
from reverie.datasets.schema import make_schema
from reverie.datasets.store import EpisodeStore
from reverie.errors import ReverieError, StoreError


def episode(n: int, rng) -> dict:
    return {
        "image/front": rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8),
        "state": rng.normal(size=(n, 2)).astype(np.float32),
        "action": rng.uniform(-1, 1, (n, 2)).astype(np.float32),
        "action_mask": np.arange(n) < n - 1, "reward": np.zeros(n, np.float32),
        "is_first": np.arange(n) == 0, "is_last": np.arange(n) == n - 1,
        "is_terminal": np.zeros(n, bool), "timestamp": np.arange(n) / 10,
    }


@pytest.fixture
def store_path(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "s.zarr"
    with EpisodeStore.create(path, make_schema({"front": (8, 8)}, 2, 2), fps=10.0, robot="toy") as store:
        for i, n in enumerate((5, 6, 7, 4, 5, 6)):
            store.add_episode(episode(n, rng), instruction=f"task {i % 2}", source="teleop",
                              success=True if i == 0 else None)
    return path


def labels(path) -> list:
    store = EpisodeStore.open(path, "r")
    return [store.meta(i).success for i in range(store.num_episodes)]


def test_label_round_trip_leaves_frames_alone(store_path, capsys):
    before = EpisodeStore.open(store_path, "r")
    frames = {k: before.array(k)[:] for k in before.keys}
    ends, lengths = before.episode_ends, [before.meta(i).length for i in range(6)]

    assert cli.main(["data", "label", str(store_path), "episodes=1,3-4", "success=true"]) == 0
    assert "3 episode(s) success" in capsys.readouterr().out
    assert labels(store_path) == [True, True, None, True, True, None]
    assert cli.main(["data", "label", str(store_path), "episodes=4,5", "success=false"]) == 0
    assert cli.main(["data", "label", str(store_path), "episodes=0", "success=none"]) == 0
    assert labels(store_path) == [None, True, None, True, False, False]

    after = EpisodeStore.open(store_path, "r")
    assert np.array_equal(after.episode_ends, ends) and [after.meta(i).length for i in range(6)] == lengths
    for k, v in frames.items():
        assert np.array_equal(after.array(k)[:], v), k
    assert [after.meta(i).instruction for i in range(6)] == [f"task {i % 2}" for i in range(6)]

    assert cli.main(["data", "info", str(store_path)]) == 0
    assert "labels: 2 success, 2 failure, 2 unknown" in capsys.readouterr().out
    # still appendable, and the new episode's label is its own
    with EpisodeStore.open(store_path, "a") as store:
        store.add_episode(episode(5, np.random.default_rng(1)), instruction="x", source="teleop", success=True)
    assert labels(store_path) == [None, True, None, True, False, False, True]


def test_set_success_api(store_path):
    with EpisodeStore.open(store_path, "a") as store:
        assert store.set_success([2, 0], False) == [None, True]
        assert store.meta(2).success is False and store.meta(0).success is False
        with pytest.raises(StoreError, match="out of range"):
            store.set_success([1, 99], True)
        assert store.meta(1).success is None  # nothing written when any index is bad
        with pytest.raises(StoreError, match="True, False or None"):
            store.set_success([1], 1)
    with pytest.raises(StoreError, match="read-only"):
        EpisodeStore.open(store_path, "r").set_success([0], True)


def test_parse_episodes():
    assert parse_episodes("0,3,5-7,3", 10) == [0, 3, 5, 6, 7]
    assert parse_episodes("all", 3) == [0, 1, 2]


@pytest.mark.parametrize("argv, match", [
    (["episodes=0,9", "success=true"], "episode 9 is out of range.*0..5"),
    (["episodes=3-1", "success=true"], "runs backwards"),
    (["episodes=a", "success=true"], "not an episode number"),
    (["episodes=0,,1", "success=true"], "empty item"),
    (["episodes=-1", "success=true"], "not an episode number|start at 0"),
    (["episodes=0", "success=maybe"], "choose true, false or none"),
    (["episodes=0"], "missing.*success"),
    (["episodes=0", "success=true", "colour=red"], "colour"),
])
def test_bad_input_is_refused_and_writes_nothing(store_path, argv, match):
    from reverie.datasets import label

    with pytest.raises(ReverieError, match=match):
        label.main(["label", str(store_path), *argv])
    assert labels(store_path) == [True, None, None, None, None, None]


def test_missing_store_and_cli_exit_code(tmp_path, capsys):
    assert cli.main(["data", "label", str(tmp_path / "nope.zarr"), "episodes=0", "success=true"]) == 2
    assert "no episode store" in capsys.readouterr().err
