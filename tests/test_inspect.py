"""`reverie data info` and `reverie data view` on a small store written here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reverie import cli
from reverie.datasets.store import EpisodeStore, make_schema

H, W = 24, 32


def episode(n: int, rng, actions: bool = True, terminal: bool = False) -> dict[str, np.ndarray]:
    img = np.zeros((n, H, W, 3), np.uint8)
    for t in range(n):  # a bar moving right, so frames differ visibly
        img[t, :, : (t + 1) * W // n, 1] = 200
    return {
        "image/front": img, "state": rng.normal(size=(n, 3)).astype(np.float32),
        "action": (rng.uniform(-1, 1, size=(n, 2)) if actions else np.zeros((n, 2))).astype(np.float32),
        "action_mask": np.full(n, actions), "reward": np.r_[0, np.ones(n - 1)].astype(np.float32),
        "is_first": np.arange(n) == 0, "is_last": np.arange(n) == n - 1,
        "is_terminal": (np.arange(n) == n - 1) & terminal, "timestamp": 5.0 + np.arange(n) / 10,
    }


@pytest.fixture
def store_path(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "demo.zarr"
    with EpisodeStore.create(path, make_schema({"front": (H, W)}, 3, 2), fps=10.0, robot="so101") as store:
        store.add_episode(episode(12, rng, terminal=True), instruction="pick the red cube", source="teleop", success=True)
        store.add_episode(episode(9, rng), instruction="pick the red cube", source="teleop", success=False)
        store.add_episode(episode(7, rng, actions=False), instruction="", source="video")
    return path


def leave_interrupted_tail(path, rows: int) -> None:
    """What a writer killed mid-episode leaves: data arrays longer than the last committed end."""
    import zarr

    data = zarr.open_group(str(path), mode="r+")["data"]
    for _, arr in data.arrays():
        arr.resize((arr.shape[0] + rows, *arr.shape[1:]))


def test_info_text_and_json(store_path, capsys):
    leave_interrupted_tail(store_path, 5)
    assert cli.main(["data", "info", str(store_path)]) == 0
    text = capsys.readouterr().out
    assert "episodes      3   frames 28   fps 10" in text
    assert "robot         so101" in text
    assert "image/front      (24, 32, 3)" in text and "uint8" in text
    assert "teleop 2, video 1" in text
    assert "2 x 'pick the red cube'" in text and "1 x ''" in text
    assert "1/2 labelled episodes (50%)" in text
    assert "labels: 1 success, 1 failure, 1 unknown" in text
    assert "5 frames past the last committed episode" in text

    assert cli.main(["data", "info", str(store_path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["episodes"], s["frames"], s["fps"]) == (3, 28, 10.0)
    assert s["keys"]["state"] == {"shape": [3], "dtype": "float32", "units": s["keys"]["state"]["units"]}
    assert set(s["keys"]) == set(make_schema({"front": (H, W)}, 3, 2))
    assert s["sources"] == {"teleop": 2, "video": 1}
    assert s["instructions"] == {"pick the red cube": 2, "": 1}
    assert s["success"] == {"labelled": 2, "successes": 1, "failures": 1, "unknown": 1, "rate": 0.5}
    assert s["interrupted_frames"] == 5 and s["bytes_on_disk"] > 0
    # info only reads: the interrupted rows are still there for `mode="a"` to deal with.
    assert EpisodeStore.open(store_path, mode="r").array("state").shape[0] == 28 + 5


def test_view_writes_contact_sheet_and_gif(store_path, tmp_path, capsys):
    import imageio.v3 as iio

    out = tmp_path / "views"
    assert cli.main(["data", "view", str(store_path), "episode=0", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    png, gif = out / "episode_0000.png", out / "episode_0000.gif"
    assert str(png) in printed and str(gif) in printed
    sheet = iio.imread(png)
    assert sheet.ndim == 3 and sheet.shape[0] > 200 and sheet.shape[1] > 400
    frames = iio.imread(gif, index=None)
    assert frames.shape[0] == 12 and frames.shape[1] >= 128  # every row, upscaled to be viewable
    ep = EpisodeStore.open(store_path, mode="r").episode(0)["image/front"]
    scale = frames.shape[1] // H
    small = frames[:, ::scale, ::scale, :3].astype(int)
    assert np.abs(small - ep).mean() < 4  # the GIF shows the stored frames (palette rounding aside)

    # Default folder sits next to the store; an action-free episode still gets its sheet.
    assert cli.main(["data", "view", str(store_path), "episode=2"]) == 0
    assert (store_path.parent / "demo_view" / "episode_0002.png").exists()
    assert iio.imread(store_path.parent / "demo_view" / "episode_0002.gif", index=None).shape[0] == 7


def test_bad_input_errors(store_path, tmp_path, capsys):
    cases = [
        (["data", "info", str(tmp_path / "missing.zarr")], "no episode store at"),
        (["data", "info", str(tmp_path)], "not a zarr group"),
        (["data", "view", str(store_path), "episode=3"], "episode=3 is out of range"),
        (["data", "view", str(store_path), "episode=first"], "not an episode number"),
        (["data", "view", str(store_path), "frames=3"], "takes episode=N and out=DIR"),
        (["data", "info", str(store_path), "--yaml"], "takes only STORE and --json"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
