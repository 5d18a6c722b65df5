"""`reverie sim demos`: scripted episodes land in an episode store with the row conventions."""

import numpy as np
import pytest

from reverie.cli import main as cli_main
from reverie.datasets.store import EpisodeStore
from reverie.errors import ConfigError, StoreError
from reverie.sim import demos, tasks


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("demos") / "touch.zarr"
    assert demos.main(["demos", "task=touch", "episodes=2", "seed=3", f"out={path}", "image_size=[32,32]"]) == 0
    return path


def test_demos_write_episodes_with_the_row_convention(store_path):
    store = EpisodeStore.open(store_path)
    assert store.num_episodes == 2 and store.robot == "sim/so101" and store.fps == 10.0
    assert store.schema["image/front"].shape == (32, 32, 3)
    for i in range(2):
        ep, meta = store.episode(i), store.meta(i)
        n = len(ep["reward"])
        assert meta.source == "scripted" and meta.round == 0
        assert tasks.parse_instruction(meta.instruction).task == "touch"
        assert ep["is_first"].tolist() == [True] + [False] * (n - 1)
        assert ep["is_last"].tolist() == [False] * (n - 1) + [True]
        assert ep["action_mask"].tolist() == [True] * (n - 1) + [False]
        assert not ep["action"][-1].any() and np.abs(ep["action"]).max() <= 1.0
        assert ep["reward"][0] == 0.0 and np.all(np.diff(ep["timestamp"]) > 0)
        # An expert touch succeeds: sparse reward 1 on the terminal row only.
        assert meta.success and ep["is_terminal"][-1] and ep["reward"].tolist() == [0.0] * (n - 1) + [1.0]
        assert ep["image/front"].std() > 5
    store.close()


def test_demos_replay_from_their_seed(store_path, tmp_path):
    # Episode 1 of the store was recorded with seed 3 + 1: recording it alone reproduces it.
    again = tmp_path / "again.zarr"
    demos.main(["demos", "task=touch", "episodes=1", "seed=4", f"out={again}", "image_size=[32,32]"])
    a, b = EpisodeStore.open(store_path), EpisodeStore.open(again)
    for key in ("state", "action", "image/front"):
        np.testing.assert_array_equal(a.episode(1)[key], b.episode(0)[key])
    assert a.meta(1).instruction == b.meta(0).instruction
    a.close()
    b.close()


def test_append_and_its_checks(store_path, tmp_path):
    copy = tmp_path / "more.zarr"
    demos.main(["demos", "task=lift", "episodes=1", f"out={copy}", "image_size=[32,32]"])
    demos.main(["demos", "task=push", "episodes=1", f"out={copy}", "image_size=[32,32]", "append=true"])
    store = EpisodeStore.open(copy)
    assert [tasks.parse_instruction(store.meta(i).instruction).task for i in range(2)] == ["lift", "push"]
    store.close()
    demos.main(["demos", "task=touch", "episodes=1", f"out={copy}", "image_size=[32,32]", "append=true",
                "randomization=shifted", "instruction_set=heldout"])
    store = EpisodeStore.open(copy)
    assert store.num_episodes == 3 and "preset=shifted" in store.meta(2).notes
    assert store.meta(2).instruction in [tasks.render(t, tasks.parse_instruction(store.meta(2).instruction))
                                         for t in tasks.TEMPLATES["touch"]["heldout"]]
    store.close()
    with pytest.raises(ConfigError, match="image_size"):
        demos.main(["demos", "episodes=1", f"out={copy}", "append=true"])  # 64x64 into a 32x32 store
    with pytest.raises(StoreError, match="already exists"):
        demos.main(["demos", "episodes=1", f"out={copy}", "image_size=[32,32]"])


def test_user_errors_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="out="):
        demos.main(["demos", "episodes=1"])
    with pytest.raises(ConfigError, match="arm task"):
        demos.main(["demos", "task=juggle", f"out={tmp_path / 'x.zarr'}"])
    with pytest.raises(ConfigError, match="skill"):
        demos.main(["demos", "skill=2", f"out={tmp_path / 'y.zarr'}"])
    with pytest.raises(ConfigError):
        demos.main(["demos", "colour=red"])  # not a key of sim_demos.yaml
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()


def test_cli_routes_to_demos(capsys, tmp_path):
    assert cli_main(["sim", "demos", "--help"]) == 0
    assert "skill" in capsys.readouterr().out
    assert cli_main(["sim", "demos", "episodes=1"]) == 2  # missing out=: a clean error, exit 2
    assert "out=" in capsys.readouterr().err
