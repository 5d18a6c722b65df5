"""Importers: videos written here with PyAV, the real LeRobot fixtures (early layout, and a v3 copy
built from them), and replay buffers written here in zarr formats 2 and 3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from reverie import cli
from reverie.datasets.importers import run
from reverie.datasets.store import EpisodeStore
from reverie.errors import ReverieError, StoreError

FPS = 10


def moving_square(n: int, h: int, w: int) -> np.ndarray:
    """(n, h, w, 3) uint8 frames: a white square sliding right over a blue-to-red background."""
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i, ..., 0] = 40 + 200 * i // max(n - 1, 1)
        frames[i, ..., 2] = 160
        x = i * (w - 12) // max(n - 1, 1)
        frames[i, h // 3: h // 3 + 12, x: x + 12] = 255
    return frames


def write_video(path: Path, frames: np.ndarray, codec: str, fps: int = FPS) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def pts_seconds(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.array([float(f.pts * f.time_base) for f in c.decode(video=0)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / max(mse, 1e-12))


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("videos")
    made = {}
    for name, codec, n in [("a.mp4", "libx264", 12), ("b.webm", "libvpx-vp9", 9), ("c.mkv", "mpeg4", 7)]:
        made[name] = moving_square(n, 48, 80)
        write_video(folder / name, made[name], codec)
    (folder / "notes.txt").write_text("not a video, and not picked up by the folder scan")
    return folder, made


def test_video_folder_imports_one_action_free_episode_per_file(videos, tmp_path, monkeypatch):
    import cv2

    from reverie.datasets import import_video

    monkeypatch.setattr(import_video, "BLOCK_BYTES", 5 * 64 * 64 * 3)  # stream in blocks of 5 frames
    folder, made = videos
    out = tmp_path / "v.zarr"
    assert cli.main(["data", "import", "video", str(folder), str(out), "instruction=stack the cubes"]) == 0
    store = EpisodeStore.open(out, mode="r")
    assert store.num_episodes == 3 and store.num_frames == 12 + 9 + 7
    assert store.schema["image/front"].shape == (64, 64, 3) and store.fps == FPS
    for i, (name, src) in enumerate(sorted(made.items())):
        ep, meta = store.episode(i), store.meta(i)
        assert meta.source == "video" and meta.instruction == "stack the cubes" and name in meta.notes
        assert len(ep["timestamp"]) == len(src)
        np.testing.assert_array_equal(ep["timestamp"], pts_seconds(folder / name))  # the file's own clock
        assert not ep["action_mask"].any() and not ep["action"].any() and not ep["state"].any()
        assert ep["is_first"][0] and ep["is_last"][-1] and ep["is_first"].sum() == ep["is_last"].sum() == 1
        # The content survived encode -> decode -> INTER_AREA resize (lossy codecs: a PSNR bound).
        want = np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in src])
        assert psnr(ep["image/front"], want) > 28, name


def test_video_size_option_and_list_of_files(videos, tmp_path):
    folder, made = videos
    out = tmp_path / "v.zarr"
    run("video", [str(folder / "c.mkv"), str(folder / "a.mp4")], str(out), ["size=32x48", "camera=wrist"])
    store = EpisodeStore.open(out, mode="r")
    assert store.schema["image/wrist"].shape == (32, 48, 3)
    assert [store.meta(i).length for i in range(2)] == [7, 12]  # argument order kept


def test_corrupt_video_names_the_file_and_writes_nothing(videos, tmp_path):
    folder, _ = videos
    bad = tmp_path / "in"
    shutil.copytree(folder, bad)
    data = (bad / "a.mp4").read_bytes()
    (bad / "b.webm").unlink()
    (bad / "broken.mp4").write_bytes(data[: len(data) // 3])  # truncated: the index (moov) is lost
    out = tmp_path / "v.zarr"
    with pytest.raises(StoreError, match="cannot open video .*broken.mp4.*corrupt, truncated or not a video"):
        run("video", [str(bad)], str(out))
    assert not out.exists()  # every file is probed before the store is created
    (tmp_path / "fake.mkv").write_text("plain text with a video extension")
    with pytest.raises(StoreError, match="fake.mkv"):
        run("video", [str(folder / "a.mp4"), str(tmp_path / "fake.mkv")], str(out))
    assert not out.exists()


def test_failed_import_into_a_store_leaves_it_intact(videos, tmp_path):
    folder, _ = videos
    out = tmp_path / "v.zarr"
    run("video", [str(folder / "a.mp4")], str(out))
    before = EpisodeStore.open(out, mode="r").episode(0)
    with pytest.raises(StoreError, match="no_such.mp4"):
        run("video", [str(folder / "b.webm"), str(folder / "no_such.mp4")], str(out))
    store = EpisodeStore.open(out, mode="r")
    assert store.num_episodes == 1
    for key, value in store.episode(0).items():
        np.testing.assert_array_equal(value, before[key])


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    with pytest.raises(ReverieError, match="unknown import kind 'hdf5'.*video, lerobot, zarr-replay"):
        run("hdf5", [str(tmp_path)], str(tmp_path / "o.zarr"))
    with pytest.raises(StoreError, match="does not exist"):
        run("video", [str(tmp_path / "missing")], str(tmp_path / "o.zarr"))
    with pytest.raises(StoreError, match="not a LeRobot dataset"):
        run("lerobot", [str(tmp_path)], str(tmp_path / "o.zarr"))
    with pytest.raises(ReverieError, match="(?s)unknown option .colour.*instruction="):
        run("video", [str(tmp_path)], str(tmp_path / "o.zarr"), ["colour=red"])
    with pytest.raises(ReverieError, match="size='big'"):
        run("video", [str(tmp_path)], str(tmp_path / "o.zarr"), ["size=big"])
    with pytest.raises(ReverieError, match="source='human'.*teleop"):
        run("video", [str(tmp_path)], str(tmp_path / "o.zarr"), ["source=human"])
    assert cli.main(["data", "import", "zarr-replay", str(tmp_path / "nope.zarr"), str(tmp_path / "o.zarr")]) == 2
    assert "nope.zarr does not exist" in capsys.readouterr().err


# --- LeRobot ---------------------------------------------------------------------------------------


def arrow_table(root: Path):
    import pyarrow as pa
    import pyarrow.ipc as ipc

    with pa.memory_map(str(next((root / "train").glob("*.arrow")))) as f:
        return ipc.open_stream(f).read_all()


def decoded_frames(path: Path, size=(64, 64)) -> np.ndarray:
    """Every frame of a video, decoded and resized independently of the importer."""
    import av
    import cv2

    with av.open(str(path)) as c:
        return np.stack([cv2.resize(f.to_ndarray(format="rgb24"), size[::-1], interpolation=cv2.INTER_AREA)
                         for f in c.decode(video=0)])


@pytest.mark.parametrize("name, frames, fps, dim, camera", [
    ("pusht", 161, 10, 2, "front"),
    ("aloha_sim_insertion_human", 500, 50, 14, "top"),
])
def test_lerobot_early_layout_matches_the_source_table(fixtures_dir, tmp_path, name, frames, fps, dim, camera):
    root = fixtures_dir / "lerobot_v1" / name
    out = tmp_path / f"{name}.zarr"
    run("lerobot", [str(root)], str(out), ["instruction=do the task"])
    store = EpisodeStore.open(out, mode="r")
    table = arrow_table(root).to_pydict()
    assert (store.num_episodes, store.num_frames, store.fps) == (1, frames, fps)
    ep, meta = store.episode(0), store.meta(0)
    assert ep["state"].shape == ep["action"].shape == (frames, dim)
    np.testing.assert_array_equal(ep["state"], np.array(table["observation.state"], np.float32))
    np.testing.assert_array_equal(ep["action"], np.array(table["action"], np.float32))
    np.testing.assert_array_equal(ep["timestamp"], np.array(table["timestamp"], np.float32).astype(np.float64))
    assert ep["action_mask"].all() and meta.source == "teleop" and meta.instruction == "do the task"
    # Frame t of the video is the frame at table timestamp t (both files are at a constant rate).
    video = next((root / "videos").glob("*.mp4"))
    np.testing.assert_array_equal(ep[f"image/{camera}"], decoded_frames(video))
    if "next.reward" in table:  # pusht: next.reward of frame t is the reward on arriving at t + 1
        np.testing.assert_array_equal(ep["reward"][1:], np.array(table["next.reward"], np.float32)[:-1])
        assert ep["reward"][0] == 0 and meta.success is False
    else:
        assert not ep["reward"].any() and meta.success is None
    # Both set next.done at their last frame: the last row is terminal, and no other.
    assert table["next.done"][-1] and ep["is_terminal"].tolist() == [False] * (frames - 1) + [True]


def build_v3(src: Path, dst: Path, split: int, success_tail: int = 0, episode_tasks: bool = True) -> dict:
    """A LeRobot v3 dataset made from the single-episode early pusht fixture, split into two episodes
    at frame `split`, sharing one video file (episode 1 starts at from_timestamp = split / fps).
    The last `success_tail` frames get next.success = True, to exercise the success mapping.
    Without `episode_tasks` the episode rows list no tasks and tasks.parquet keeps the strings as an
    unnamed pandas index (`__index_level_0__`), so task_index has to be looked up; that variant also
    carries an `image` feature (PNG bytes in the table): 8x8 tiles whose colour encodes the row."""
    import cv2
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = arrow_table(src).to_pydict()
    n, fps = len(t["timestamp"]), 10
    ep = np.array([0] * split + [1] * (n - split))
    frame = np.concatenate([np.arange(split), np.arange(n - split)])
    success = np.zeros(n, bool)
    success[n - success_tail:] = success_tail > 0
    fsl = lambda col: pa.FixedSizeListArray.from_arrays(pa.array(np.array(col, np.float32).ravel()), 2)  # noqa: E731
    data = pa.table({
        "observation.state": fsl(t["observation.state"]), "action": fsl(t["action"]),
        "timestamp": pa.array(frame / fps, pa.float32()), "frame_index": frame, "episode_index": ep,
        "index": np.arange(n), "task_index": ep,
        "next.reward": pa.array(t["next.reward"], pa.float32()), "next.done": t["next.done"], "next.success": success,
    })
    if not episode_tasks:
        rgb = [np.full((8, 8, 3), [i, 255 - i, 7], np.uint8) for i in range(n)]  # OpenCV writes BGR: convert
        cells = [{"bytes": cv2.imencode(".png", cv2.cvtColor(x, cv2.COLOR_RGB2BGR))[1].tobytes(),
                  "path": f"frame_{i:06d}.png"} for i, x in enumerate(rgb)]
        data = data.append_column("observation.images.wrist", pa.array(cells))
    (dst / "data" / "chunk-000").mkdir(parents=True)
    pq.write_table(data, dst / "data" / "chunk-000" / "file-000.parquet")
    video_key = "observation.image"
    (dst / "videos" / video_key / "chunk-000").mkdir(parents=True)
    shutil.copy(next((src / "videos").glob("*.mp4")), dst / "videos" / video_key / "chunk-000" / "file-000.mp4")
    tasks = ["push the T onto the target", "push the T onto the target, again"]
    (dst / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    task_column = "task" if episode_tasks else "__index_level_0__"
    pq.write_table(pa.table({"task_index": [0, 1], task_column: tasks}), dst / "meta" / "tasks.parquet")
    pq.write_table(pa.table({
        **({"tasks": [[tasks[0]], [tasks[1]]]} if episode_tasks else {}),
        "episode_index": [0, 1], "length": [split, n - split],
        "data/chunk_index": [0, 0], "data/file_index": [0, 0],
        "dataset_from_index": [0, split], "dataset_to_index": [split, n],
        f"videos/{video_key}/chunk_index": [0, 0], f"videos/{video_key}/file_index": [0, 0],
        f"videos/{video_key}/from_timestamp": [0.0, split / fps], f"videos/{video_key}/to_timestamp": [split / fps, n / fps],
        "stats/action/mean": [[0.0, 0.0], [0.0, 0.0]],  # real v3 metadata carries per-episode stats columns
        "meta/episodes/chunk_index": [0, 0], "meta/episodes/file_index": [0, 0],
    }), dst / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    info = {
        "codebase_version": "v3.0", "robot_type": "pusht_sim", "fps": fps, "total_episodes": 2, "total_frames": n,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": {
            video_key: {"dtype": "video", "shape": [96, 96, 3], "names": ["height", "width", "channels"]},
            "observation.state": {"dtype": "float32", "shape": [2]}, "action": {"dtype": "float32", "shape": [2]},
            "next.reward": {"dtype": "float32", "shape": [1]}, "next.success": {"dtype": "bool", "shape": [1]},
            **({} if episode_tasks else {"observation.images.wrist": {"dtype": "image", "shape": [8, 8, 3]}}),
        },
    }
    (dst / "meta" / "info.json").write_text(json.dumps(info))
    return t


def test_lerobot_v3_layout_with_shared_video_file(fixtures_dir, tmp_path):
    src = fixtures_dir / "lerobot_v1" / "pusht"
    root, split = tmp_path / "pusht_v3", 70
    t = build_v3(src, root, split, success_tail=2)
    out = tmp_path / "v3.zarr"
    run("lerobot", [str(root)], str(out), ["size=native"])
    store = EpisodeStore.open(out, mode="r")
    assert (store.num_episodes, store.num_frames, store.fps) == (2, 161, 10)
    assert store.schema["image/front"].shape == (96, 96, 3) and store.robot == "pusht_sim"
    state, action = np.array(t["observation.state"], np.float32), np.array(t["action"], np.float32)
    video = decoded_frames(next((src / "videos").glob("*.mp4")), size=(96, 96))
    reward = np.array(t["next.reward"], np.float32)
    for i, rows in enumerate([slice(0, split), slice(split, 161)]):
        ep, meta = store.episode(i), store.meta(i)
        np.testing.assert_array_equal(ep["state"], state[rows])
        np.testing.assert_array_equal(ep["action"], action[rows])
        np.testing.assert_array_equal(ep["image/front"], video[rows])  # from_timestamp offset honoured
        np.testing.assert_allclose(ep["timestamp"], np.arange(rows.stop - rows.start) / 10, atol=1e-6)
        np.testing.assert_array_equal(ep["reward"], np.r_[0, reward[rows][:-1]])
        assert meta.instruction.startswith("push the T onto the target")
    assert store.meta(0).success is False and store.meta(1).success is True
    assert store.episode(1)["is_terminal"][-1] and not store.episode(0)["is_terminal"].any()

    # Episode 1's video offset half a frame off: its frames cannot be matched, so it fails, naming the
    # video, while episode 0, already committed, stays readable.
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta_file = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    meta = pq.read_table(meta_file)
    col = "videos/observation.image/from_timestamp"
    meta = meta.set_column(meta.schema.get_field_index(col), col, pa.array([0.0, split / 10 + 0.05]))
    pq.write_table(meta, meta_file)
    bad = tmp_path / "bad.zarr"
    with pytest.raises(StoreError, match="(?s)file-000.mp4: no frame within 25 ms.*1 episode.s. of this import were committed"):
        run("lerobot", [str(root)], str(bad), ["size=native"])
    np.testing.assert_array_equal(EpisodeStore.open(bad, mode="r").episode(0)["state"], state[:split])


def test_lerobot_v3_task_index_and_image_features(fixtures_dir, tmp_path):
    build_v3(fixtures_dir / "lerobot_v1" / "pusht", tmp_path / "ds", split=100, episode_tasks=False)
    run("lerobot", [str(tmp_path / "ds")], str(tmp_path / "o.zarr"), ["size=native"])
    store = EpisodeStore.open(tmp_path / "o.zarr", mode="r")
    assert [store.meta(i).instruction for i in range(2)] == ["push the T onto the target",
                                                            "push the T onto the target, again"]
    assert [store.meta(i).length for i in range(2)] == [100, 61]
    assert store.schema["image/wrist"].shape == (8, 8, 3) and store.schema["image/front"].shape == (96, 96, 3)
    wrist = store.episode(1)["image/wrist"]  # PNG decoded, colour channels in RGB order
    np.testing.assert_array_equal(wrist[:, 0, 0], np.stack([np.arange(100, 161), 255 - np.arange(100, 161),
                                                            np.full(61, 7)], 1))


def test_lerobot_v2_layout(fixtures_dir, tmp_path):
    """v2.1: per-episode parquet and video, JSON-lines metadata; built from the early pusht fixture."""
    import pyarrow.parquet as pq

    src, root = fixtures_dir / "lerobot_v1" / "pusht", tmp_path / "v21"
    table = arrow_table(src)
    (root / "data" / "chunk-000").mkdir(parents=True)
    (root / "videos" / "chunk-000" / "observation.image").mkdir(parents=True)
    (root / "meta").mkdir()
    pq.write_table(table.drop_columns(["observation.image"]), root / "data" / "chunk-000" / "episode_000000.parquet")
    shutil.copy(next((src / "videos").glob("*.mp4")),
                root / "videos" / "chunk-000" / "observation.image" / "episode_000000.mp4")
    (root / "meta" / "episodes.jsonl").write_text(json.dumps(
        {"episode_index": 0, "tasks": ["push the T onto the target"], "length": table.num_rows}) + "\n")
    (root / "meta" / "info.json").write_text(json.dumps({
        "codebase_version": "v2.1", "fps": 10, "chunks_size": 1000,
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": {"observation.image": {"dtype": "video", "shape": [96, 96, 3]}}}))
    run("lerobot", [str(root)], str(tmp_path / "o.zarr"))
    store = EpisodeStore.open(tmp_path / "o.zarr", mode="r")
    ep, t = store.episode(0), table.to_pydict()
    assert store.num_frames == 161 and store.meta(0).instruction == "push the T onto the target"
    np.testing.assert_array_equal(ep["state"], np.array(t["observation.state"], np.float32))
    np.testing.assert_array_equal(ep["image/front"], decoded_frames(next((src / "videos").glob("*.mp4"))))


def test_unknown_lerobot_version_is_refused_with_the_fix(tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v4.0", "fps": 30}))
    with pytest.raises(StoreError, match="LeRobot v4.0 dataset.*conversion scripts"):
        run("lerobot", [str(tmp_path)], str(tmp_path / "o.zarr"))


def test_lerobot_camera_selection_and_renaming(fixtures_dir, tmp_path):
    root = fixtures_dir / "lerobot_v1" / "aloha_sim_insertion_human"
    with pytest.raises(StoreError, match="no camera 'observation.images.wrist'.*observation.images.top"):
        run("lerobot", [str(root)], str(tmp_path / "o.zarr"), ["cameras=observation.images.wrist"])
    build_v3(fixtures_dir / "lerobot_v1" / "pusht", tmp_path / "ds", split=100, episode_tasks=False)
    run("lerobot", [str(tmp_path / "ds")], str(tmp_path / "o.zarr"), ["cameras=observation.image:overhead", "size=8x8"])
    store = EpisodeStore.open(tmp_path / "o.zarr", mode="r")
    assert [k for k in store.keys if k.startswith("image/")] == ["image/overhead"]  # the wrist images are left out


def test_appending_video_to_an_imported_store(fixtures_dir, videos, tmp_path):
    out = tmp_path / "mixed.zarr"
    run("lerobot", [str(fixtures_dir / "lerobot_v1" / "pusht")], str(out))
    run("video", [str(videos[0] / "c.mkv")], str(out))  # resized to the store's 64x64, state width 2
    store = EpisodeStore.open(out, mode="r")
    assert [store.meta(i).source for i in range(2)] == ["teleop", "video"]
    assert store.episode(1)["state"].shape == (7, 2) and not store.episode(1)["action_mask"].any()
    with pytest.raises(StoreError, match="image/front. rows have shape \\(32, 32, 3\\).*store expects \\(64, 64, 3\\)"):
        run("video", [str(videos[0] / "c.mkv")], str(out), ["size=32x32"])
    assert EpisodeStore.open(out, mode="r").num_episodes == 2


# --- zarr replay buffers -----------------------------------------------------------------------------


def write_buffer(path: Path, fmt: int, arrays: dict[str, np.ndarray], ends: list[int]) -> None:
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    data, meta = root.create_group("data"), root.create_group("meta")
    for key, value in arrays.items():
        data.create_array(key, shape=value.shape, dtype=value.dtype, chunks=(8, *value.shape[1:]))[:] = value
    meta.create_array("episode_ends", shape=(len(ends),), dtype="int64")[:] = ends


def test_zarr_replay_diffusion_policy_pusht_layout_format2(tmp_path):
    rng = np.random.default_rng(0)
    n, ends = 25, [10, 25]
    img = moving_square(n, 32, 32).astype(np.float32)  # PushT stores float frames in 0..255
    state, action = rng.normal(size=(n, 5)).astype(np.float32), rng.normal(size=(n, 2)).astype(np.float32)
    src = tmp_path / "pusht_replay.zarr"
    write_buffer(src, 2, {"img": img, "state": state, "action": action, "keypoint": rng.normal(size=(n, 9, 2))}, ends)
    out = tmp_path / "o.zarr"
    with pytest.raises(ReverieError, match="no timestamps; pass fps="):
        run("zarr-replay", [str(src)], str(out))
    run("zarr-replay", [str(src)], str(out), ["fps=10", "size=native", "instruction=push the T"])
    store = EpisodeStore.open(out, mode="r")
    assert (store.num_episodes, store.num_frames, store.fps) == (2, 25, 10)
    for i, rows in enumerate([slice(0, 10), slice(10, 25)]):
        ep, meta = store.episode(i), store.meta(i)
        np.testing.assert_array_equal(ep["image/front"], img[rows].astype(np.uint8))
        np.testing.assert_array_equal(ep["state"], state[rows])
        np.testing.assert_array_equal(ep["action"], action[rows])
        np.testing.assert_allclose(ep["timestamp"], np.arange(rows.stop - rows.start) / 10)
        assert ep["action_mask"].all() and meta.instruction == "push the T" and "i/10 Hz" in meta.notes


def test_zarr_replay_umi_layout_format3(tmp_path):
    rng = np.random.default_rng(1)
    n, ends = 18, [6, 18]
    arrays = {
        "camera0_rgb": moving_square(n, 24, 24),
        "robot0_gripper_width": rng.uniform(size=(n, 1)).astype(np.float32),
        "robot0_eef_pos": rng.normal(size=(n, 3)).astype(np.float32),
        "robot0_eef_rot_axis_angle": rng.normal(size=(n, 3)).astype(np.float32),
        "action": rng.normal(size=(n, 7)).astype(np.float32),
        "timestamp": 100.0 + np.cumsum(rng.uniform(0.05, 0.07, size=n)),
    }
    src = tmp_path / "umi.zarr"
    write_buffer(src, 3, arrays, ends)
    out = tmp_path / "o.zarr"
    run("zarr-replay", [str(src)], str(out), ["size=16x16"])
    store = EpisodeStore.open(out, mode="r")
    assert store.schema["image/camera0"].shape == (16, 16, 3) and store.schema["state"].shape == (7,)
    ep = store.episode(1)
    want = np.concatenate([arrays["robot0_eef_pos"], arrays["robot0_eef_rot_axis_angle"],
                           arrays["robot0_gripper_width"]], axis=1)[6:18]
    np.testing.assert_array_equal(ep["state"], want)  # position, rotation, gripper: UMI's order
    np.testing.assert_array_equal(ep["timestamp"], arrays["timestamp"][6:18])
    assert 14 < store.fps < 20  # median rate of the measured timestamps


def test_zarr_replay_without_actions_is_action_free_and_names_what_it_leaves(tmp_path, caplog):
    """A UMI buffer records poses, not commands: no data/action. Its extra keys are named too."""
    import logging

    rng = np.random.default_rng(2)
    n = 10
    arrays = {"camera0_rgb": moving_square(n, 16, 16), "robot0_eef_pos": rng.normal(size=(n, 3)).astype(np.float32),
              "robot0_demo_start_pose": rng.normal(size=(n, 6)).astype(np.float32),
              "timestamp": np.arange(n) / 20.0}
    write_buffer(tmp_path / "umi.zarr", 3, arrays, [4, 10])
    with caplog.at_level(logging.WARNING):
        run("zarr-replay", [str(tmp_path / "umi.zarr")], str(tmp_path / "o.zarr"), ["size=8x8"])
    assert "not imported (no store key takes them): data/robot0_demo_start_pose;" in caplog.text
    assert "has no data/action, so its episodes are stored action-free" in caplog.text
    store = EpisodeStore.open(tmp_path / "o.zarr", mode="r")
    assert not store.lowdim()["action_mask"].any() and "none in replay buffer" in store.schema["action"].units


def test_zarr_replay_key_mapping_and_bad_buffers(tmp_path):
    n = 12
    arrays = {"agentview_image": moving_square(n, 16, 16), "qpos": np.ones((n, 3), np.float32),
              "gripper": np.zeros((n, 1), np.float32), "cmd": np.full((n, 4), 0.5, np.float32)}
    src = tmp_path / "r.zarr"
    write_buffer(src, 3, arrays, [n])
    out = tmp_path / "o.zarr"
    run("zarr-replay", [str(src)], str(out),
        ["state=qpos+gripper", "action=cmd", "images=agentview_image:front", "fps=20", "size=native", "source=scripted"])
    ep = EpisodeStore.open(out, mode="r").episode(0)
    assert EpisodeStore.open(out, mode="r").meta(0).source == "scripted"
    np.testing.assert_array_equal(ep["state"], np.concatenate([arrays["qpos"], arrays["gripper"]], 1))
    np.testing.assert_array_equal(ep["action"], arrays["cmd"])
    np.testing.assert_array_equal(ep["image/front"], arrays["agentview_image"])
    with pytest.raises(StoreError, match="no data/joints"):
        run("zarr-replay", [str(src)], str(tmp_path / "o2.zarr"), ["state=joints", "fps=20"])
    write_buffer(tmp_path / "short.zarr", 2, arrays, [5, n + 4])
    with pytest.raises(StoreError, match="truncated"):
        run("zarr-replay", [str(tmp_path / "short.zarr")], str(tmp_path / "o3.zarr"), ["fps=20"])
    # UMI ships buffers as .zarr.zip: a zip of the store folder.
    shutil.make_archive(str(tmp_path / "r.zarr"), "zip", root_dir=src)
    run("zarr-replay", [str(tmp_path / "r.zarr.zip")], str(tmp_path / "z.zarr"),
        ["state=qpos+gripper", "action=cmd", "fps=20", "size=native"])
    np.testing.assert_array_equal(EpisodeStore.open(tmp_path / "z.zarr", mode="r").episode(0)["image/agentview"],
                                  arrays["agentview_image"])
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a zarr group"):
        run("zarr-replay", [str(tmp_path / "plain")], str(tmp_path / "o4.zarr"))


# --- picking state / action columns and dimensions ----------------------------------------------------


def pusht_replay(path: Path, n: int = 12) -> dict[str, np.ndarray]:
    """A tiny diffusion-policy PushT replay buffer: state is 5-D (agent xy, block xy, block angle)."""
    rng = np.random.default_rng(2)
    arrays = {"img": moving_square(n, 16, 16).astype(np.float32),
              "state": rng.normal(size=(n, 5)).astype(np.float32),
              "action": rng.normal(size=(n, 2)).astype(np.float32)}
    write_buffer(path, 2, arrays, [5, n])
    return arrays


@pytest.mark.parametrize("dims, keep", [("0:2", [0, 1]), ("0,1", [0, 1]), ("-1,0:2", [4, 0, 1]), ("::2", [0, 2, 4])])
def test_zarr_replay_state_dims_slice_the_state(tmp_path, dims, keep):
    arrays = pusht_replay(tmp_path / "r.zarr")
    out = tmp_path / "o.zarr"
    assert cli.main(["data", "import", "zarr-replay", str(tmp_path / "r.zarr"), str(out), "fps=10",
                     "size=native", "state=state", f"state_dims={dims}", "action_dims=1"]) == 0
    store = EpisodeStore.open(out, mode="r")
    assert store.schema["state"].shape == (len(keep),) and store.schema["action"].shape == (1,)
    assert f"dims {keep} of state (5 wide)" in store.schema["state"].units
    assert "dims [1] of action (2 wide)" in store.schema["action"].units
    assert store.attrs["import"] == {"state": {"columns": ["state"], "source_width": 5, "dims": keep},
                                     "action": {"columns": ["action"], "source_width": 2, "dims": [1]}}
    np.testing.assert_array_equal(store.episode(1)["state"], arrays["state"][5:, keep])
    np.testing.assert_array_equal(store.episode(1)["action"], arrays["action"][5:, [1]])


def test_lerobot_state_dims_keeps_one_dimension(fixtures_dir, tmp_path):
    root = fixtures_dir / "lerobot_v1" / "pusht"
    out = tmp_path / "p.zarr"
    run("lerobot", [str(root)], str(out), ["state=observation.state", "state_dims=0", "size=8x8"])
    store = EpisodeStore.open(out, mode="r")
    table = arrow_table(root).to_pydict()
    assert store.schema["state"].shape == (1,) and store.schema["action"].shape == (2,)
    np.testing.assert_array_equal(store.episode(0)["state"], np.array(table["observation.state"], np.float32)[:, :1])
    np.testing.assert_array_equal(store.episode(0)["action"], np.array(table["action"], np.float32))
    assert store.attrs["import"]["state"] == {"columns": ["observation.state"], "source_width": 2, "dims": [0]}
    assert store.attrs["import"]["action"]["dims"] == [0, 1]
    assert "dims [0] of observation.state (2 wide)" in store.schema["state"].units


def test_bad_state_and_dims_options_write_nothing(fixtures_dir, tmp_path):
    pusht_replay(tmp_path / "r.zarr")
    src, out = str(tmp_path / "r.zarr"), tmp_path / "o.zarr"
    cases = [
        (["state_dims=0:7"], r"state_dims='0:7': slice bound 7 is out of range, state \(state\) is 5 wide"),
        (["state_dims=5"], r"dimension 5 is out of range, state \(state\) is 5 wide .dimensions 0..4"),
        (["action_dims=-3"], r"dimension -3 is out of range, action \(action\) is 2 wide"),
        (["state_dims=x"], r"state_dims='x' is not a dimension selection; write a python slice \(state_dims=0:2\)"),
        (["state_dims=0:2,1"], r"picks dimension\(s\) \[1\] more than once"),
        (["state_dims=3:1"], r"keeps no dimension of state"),
        (["state=pos"], r"no data/pos \(keys: \['action', 'img', 'state'\]\); pass state= with an existing key"),
    ]
    for opts, message in cases:
        with pytest.raises(ReverieError, match=message):
            run("zarr-replay", [src], str(out), ["fps=10", *opts])
        assert not out.exists()
    root = str(fixtures_dir / "lerobot_v1" / "pusht")
    with pytest.raises(StoreError, match=r"no column 'observation.pos'.*observation.state.*pass state=/action="):
        run("lerobot", [root], str(out), ["state=observation.pos"])
    with pytest.raises(ReverieError, match=r"state_dims='2': dimension 2 is out of range, state \(observation.state\) "
                                           r"is 2 wide.*state_dims=0:2"):
        run("lerobot", [root], str(out), ["state_dims=2"])
    with pytest.raises(ReverieError, match="takes no state column; name one with state=<column>"):
        run("lerobot", [root], str(out), ["state=", "state_dims=0"])
    assert not out.exists()
    with pytest.raises(ReverieError, match="unknown option 'state_dims' for `data import video`"):
        run("video", [str(tmp_path)], str(out), ["state_dims=0"])
