"""LeRobot both ways, without the lerobot package: the importer's rules on real early-layout data with
in-table PNG frames (tests/data/lerobot_early_png, from lerobot's own test data) and on v3 datasets,
and `data export lerobot`'s files and values read back with pyarrow and PyAV. The round trip against
the official package is benchmarks/lerobot_roundtrip.py (test_lerobot_roundtrip.py, slow)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from reverie import cli
from reverie.datasets.export_lerobot import export
from reverie.datasets.importers import run
from reverie.datasets.store import EpisodeStore, make_schema
from reverie.errors import ReverieError, StoreError
from reverie.specs import ArraySpec

EARLY = Path(__file__).parent / "data" / "lerobot_early_png"


def read_arrow(path: Path):
    import pyarrow as pa
    import pyarrow.ipc as ipc

    with pa.memory_map(str(path)) as f:
        return ipc.open_stream(f).read_all()


def early_copy(tmp_path: Path, name: str = "pusht", fps: float | None = None, edit=None, ipc_file: bool = False) -> Path:
    """A copy of an early fixture, its table changed by `edit(table) -> table`, written as an IPC
    stream (as HF `datasets` does) or file."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    src, root = EARLY / name, tmp_path / name
    shutil.copytree(src, root)
    table = read_arrow(src / "train" / "data-00000-of-00001.arrow")
    table = edit(table) if edit else table
    sink = pa.OSFile(str(root / "train" / "data-00000-of-00001.arrow"), "wb")
    with (ipc.new_file if ipc_file else ipc.new_stream)(sink, table.schema) as w:
        w.write_table(table)
    sink.close()
    if fps is not None:
        (root / "meta_data" / "info.json").write_text(json.dumps({"fps": fps}))
    return root


def png_frames(table) -> np.ndarray:
    import cv2

    return np.stack([cv2.cvtColor(cv2.imdecode(np.frombuffer(c["bytes"], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                     for c in table["observation.image"].to_pylist()])


# --- import ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, frames, fps, dim, hw", [
    ("pusht", 161, 10, 2, (96, 96)),
    ("xarm_lift_medium", 25, 15, 4, (84, 84)),
])
def test_early_layout_with_png_frames_in_the_table(tmp_path, caplog, name, frames, fps, dim, hw):
    """lerobot's pusht and xarm test data (April 2024): frames are PNG cells, there are no videos."""
    out = tmp_path / "o.zarr"
    with caplog.at_level(logging.WARNING):
        run("lerobot", [str(EARLY / name)], str(out), ["size=native"])
    table = read_arrow(EARLY / name / "train" / "data-00000-of-00001.arrow")
    t = table.to_pydict()
    store = EpisodeStore.open(out)
    ep, meta = store.episode(0), store.meta(0)
    assert (store.num_episodes, store.num_frames, store.fps) == (1, frames, fps)
    assert store.schema["image/front"].shape == (*hw, 3)
    np.testing.assert_array_equal(ep["image/front"], png_frames(table))  # every frame, RGB order, lossless
    np.testing.assert_array_equal(ep["state"], np.array(t["observation.state"], np.float32).reshape(frames, dim))
    np.testing.assert_array_equal(ep["action"], np.array(t["action"], np.float32).reshape(frames, dim))
    np.testing.assert_array_equal(ep["reward"], np.r_[0, np.array(t["next.reward"], np.float32)[:-1]])
    assert ep["action_mask"].all() and ep["is_terminal"].tolist() == [False] * (frames - 1) + [True]  # next.done
    assert meta.success is (False if "next.success" in t else None)
    assert "not imported" not in caplog.text and "action-free" not in caplog.text  # every column has a home

    small = tmp_path / "small.zarr"  # the default 64x64, resized from the decoded PNGs
    run("lerobot", [str(EARLY / name)], str(small))
    assert EpisodeStore.open(small).episode(0)["image/front"].shape == (frames, 64, 64, 3)


def test_unmapped_columns_are_named_in_a_warning(tmp_path, caplog):
    import pyarrow as pa

    def add(table):
        n = table.num_rows
        env = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(3 * n, dtype=np.float32)), 3)
        return (table.append_column("observation.environment_state", env)
                .append_column("language_instruction", pa.array(["push"] * n)))

    root = early_copy(tmp_path, edit=add, ipc_file=True)  # an Arrow IPC file reads like a stream
    with caplog.at_level(logging.WARNING):
        run("lerobot", [str(root)], str(tmp_path / "o.zarr"), ["size=8x8"])
    warning = next(r.getMessage() for r in caplog.records if "not imported" in r.getMessage())
    listed = warning.split("takes them): ")[1].split(";")[0]
    assert listed == "observation.environment_state, language_instruction"

    # Named, it is kept: joined onto the state.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run("lerobot", [str(root)], str(tmp_path / "s.zarr"), ["size=8x8", "state=observation.state+observation.environment_state"])
    assert EpisodeStore.open(tmp_path / "s.zarr").schema["state"].shape == (5,)
    assert "observation.environment_state" not in caplog.text and "language_instruction" in caplog.text


def test_cameras_left_out_by_the_option_are_named(tmp_path, caplog):
    store = small_store(tmp_path / "s.zarr")
    export(str(store), str(tmp_path / "lr"))
    with caplog.at_level(logging.WARNING):
        run("lerobot", [str(tmp_path / "lr")], str(tmp_path / "o.zarr"), ["cameras=observation.images.front"])
    assert "observation.images.wrist" in caplog.text and "cameras= leaves them out" in caplog.text


def test_no_action_column_is_stored_action_free_and_said(tmp_path, caplog):
    root = early_copy(tmp_path, edit=lambda t: t.drop_columns(["action"]))
    with caplog.at_level(logging.WARNING):
        run("lerobot", [str(root)], str(tmp_path / "o.zarr"), ["size=8x8"])
    assert "no action column" in caplog.text and "action-free" in caplog.text and "action=<column>" in caplog.text
    store = EpisodeStore.open(tmp_path / "o.zarr")
    ep = store.episode(0)
    assert not ep["action_mask"].any() and not ep["action"].any()
    assert "none in LeRobot" in store.schema["action"].units and store.attrs["import"]["action"]["columns"] == []


def test_next_done_marks_the_last_row_terminal(tmp_path, caplog):
    import pyarrow as pa

    run("lerobot", [str(EARLY / "pusht")], str(tmp_path / "ignore.zarr"), ["size=8x8", "done=ignore"])
    assert not EpisodeStore.open(tmp_path / "ignore.zarr").episode(0)["is_terminal"].any()  # no success either

    def done_at(frames):
        def edit(table):
            done = np.zeros(table.num_rows, bool)
            done[frames] = True
            return table.set_column(table.schema.get_field_index("next.done"), "next.done", pa.array(done))
        return edit

    # next.done at the frame before the last points at the last row: terminal.
    run("lerobot", [str(early_copy(tmp_path / "a", edit=done_at([159])))], str(tmp_path / "a.zarr"), ["size=8x8"])
    assert EpisodeStore.open(tmp_path / "a.zarr").episode(0)["is_terminal"][-1]
    # Earlier, it has no row to land on: said, and the episode is not terminal.
    with caplog.at_level(logging.WARNING):
        run("lerobot", [str(early_copy(tmp_path / "b", edit=done_at([50, 80])))], str(tmp_path / "b.zarr"), ["size=8x8"])
    assert "next.done at frames [50, 80] before its end" in caplog.text
    assert not EpisodeStore.open(tmp_path / "b.zarr").episode(0)["is_terminal"].any()
    with pytest.raises(StoreError, match="done='maybe': choose terminal or ignore"):
        run("lerobot", [str(EARLY / "pusht")], str(tmp_path / "c.zarr"), ["done=maybe"])


def write_video(path: Path, n: int, fps: int) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.height, stream.width, stream.pix_fmt = 16, 16, "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 20 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_videos_at_mixed_frame_rates_are_an_error_naming_them(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    rates = [50, 50, 50, 50, 15, 15, 15, 10, 10, 10]  # the 10-video import
    for i, fps in enumerate(rates):
        write_video(folder / f"clip{i}.mp4", 6, fps)
    out = tmp_path / "o.zarr"
    with pytest.raises(StoreError, match=r"10 videos have 3 frame rates \(50 fps: clip0.mp4, clip1.mp4, clip2.mp4 and "
                                         r"1 more; 15 fps: clip4.mp4, clip5.mp4, clip6.mp4; 10 fps: .*own store"):
        run("video", [str(folder)], str(out))
    assert not out.exists()
    run("video", [str(folder / "clip4.mp4"), str(folder / "clip5.mp4")], str(out))  # one rate: fine
    assert EpisodeStore.open(out).fps == 15


def test_appending_at_another_frame_rate_is_refused(tmp_path):
    out = tmp_path / "o.zarr"
    run("lerobot", [str(EARLY / "pusht")], str(out), ["size=8x8"])  # 10 fps
    with pytest.raises(StoreError, match="is a 10 fps store and this import is 15 fps.*new OUT"):
        run("lerobot", [str(EARLY / "xarm_lift_medium")], str(out), ["size=8x8"])
    assert EpisodeStore.open(out).num_episodes == 1


def test_lerobot_frame_rate_disagreements_are_errors(tmp_path):
    # The table's timestamps advance at 10 fps; info.json claims 30.
    with pytest.raises(StoreError, match=r"episode 0's timestamps advance at 10 fps but the dataset is 30 fps"):
        run("lerobot", [str(early_copy(tmp_path, fps=30))], str(tmp_path / "o.zarr"))
    # A v3 camera whose video info states another rate than the dataset: refused before OUT is made.
    export(str(small_store(tmp_path / "s.zarr")), str(tmp_path / "lr"))
    info_path = tmp_path / "lr" / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["features"]["observation.images.wrist"]["info"]["video.fps"] = 15
    info_path.write_text(json.dumps(info))
    with pytest.raises(StoreError, match="camera observation.images.wrist is a 15 fps video but the dataset is 10 fps"):
        run("lerobot", [str(tmp_path / "lr")], str(tmp_path / "v3.zarr"))
    assert not (tmp_path / "v3.zarr").exists()


# --- export ------------------------------------------------------------------------------------------


def small_store(path: Path, fps: float = 10) -> Path:
    """Two episodes, two cameras, rewards, a terminal end, success labels, unknown final actions,
    capture times off the frame grid and an extra key (`correction`)."""
    rng = np.random.default_rng(0)
    schema = make_schema(cameras={"front": (64, 64), "wrist": (32, 48)}, state_dim=6, action_dim=6)
    schema["correction"] = ArraySpec((), "bool")
    store = EpisodeStore.create(path, schema, fps=fps, robot="so101")
    for i, n in enumerate([7, 12]):
        t = np.arange(n)
        def frames(h, w):  # smooth gradients that move: what a codec handles as it would a camera
            y, x = np.mgrid[:h, :w]
            return np.stack([np.stack([3 * x + 5 * k, 3 * y + 20 * i, np.full_like(x, 90 + 5 * k)], -1)
                             for k in t]).astype(np.uint8)
        store.add_episode({
            "image/front": frames(64, 64), "image/wrist": frames(32, 48),
            "state": rng.normal(size=(n, 6)).astype(np.float32), "action": rng.uniform(-1, 1, (n, 6)).astype(np.float32),
            "action_mask": t < n - 1, "reward": np.r_[0, rng.uniform(size=n - 1)].astype(np.float32),
            "is_first": t == 0, "is_last": t == n - 1, "is_terminal": (t == n - 1) & (i == 1),
            "timestamp": 100.0 * i + t / fps + 0.003 * (t % 2), "correction": t % 3 == 0,
        }, instruction=["touch the red cube", "tap the blue block"][i], source="teleop", success=bool(i))
    store.close()
    return path


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / max(mse, 1e-12))


def test_export_writes_the_v3_layout_and_values(tmp_path):
    import av
    import pyarrow.parquet as pq

    store = EpisodeStore.open(small_store(tmp_path / "s.zarr"))
    out = tmp_path / "lr"
    assert cli.main(["data", "export", "lerobot", str(store.url), str(out)]) == 0
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet", "meta/info.json",
                     "meta/stats.json", "meta/tasks.parquet",
                     "videos/observation.images.front/chunk-000/file-000.mp4",
                     "videos/observation.images.wrist/chunk-000/file-000.mp4"]
    info = json.loads((out / "meta" / "info.json").read_text())
    assert (info["codebase_version"], info["fps"], info["robot_type"]) == ("v3.0", 10, "so101")
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (2, 19, 2)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    f = info["features"]
    assert f["observation.images.wrist"]["dtype"] == "video" and f["observation.images.wrist"]["shape"] == [32, 48, 3]
    assert f["observation.state"]["shape"] == f["action"]["shape"] == [6] and f["next.done"]["dtype"] == "bool"
    assert {"reverie.action_mask", "reverie.timestamp", "reverie.correction", "next.success"} <= set(f)

    data = pq.read_table(out / "data" / "chunk-000" / "file-000.parquet")
    assert set(data.column_names) == {k for k, v in f.items() if v["dtype"] != "video"}
    assert pq.ParquetFile(out / "data" / "chunk-000" / "file-000.parquet").num_row_groups == 2  # one per episode
    d = {k: np.array(v) for k, v in data.to_pydict().items()}
    eps = pq.read_table(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    assert [e["length"] for e in eps] == [7, 12] and [e["dataset_from_index"] for e in eps] == [0, 7]
    assert [e["tasks"] for e in eps] == [["touch the red cube"], ["tap the blue block"]]
    for i, e in enumerate(eps):
        ep, rows = store.episode(i), slice(e["dataset_from_index"], e["dataset_to_index"])
        n = e["length"]
        np.testing.assert_array_equal(d["observation.state"][rows], ep["state"])
        np.testing.assert_array_equal(d["action"][rows], ep["action"])
        np.testing.assert_array_equal(d["reverie.action_mask"][rows], ep["action_mask"])
        np.testing.assert_array_equal(d["next.reward"][rows], np.r_[ep["reward"][1:], 0])  # reward of arriving at t+1
        assert d["next.done"][rows].tolist() == [False] * (n - 1) + [i == 1]
        assert d["next.success"][rows].tolist() == [False] * (n - 1) + [i == 1]
        np.testing.assert_allclose(d["timestamp"][rows], np.arange(n) / 10, atol=1e-6)
        np.testing.assert_array_equal(d["reverie.timestamp"][rows], ep["timestamp"])
        np.testing.assert_array_equal(d["reverie.correction"][rows], ep["correction"])
        assert d["episode_index"][rows].tolist() == [i] * n and d["task_index"][rows].tolist() == [i] * n
        assert d["frame_index"][rows].tolist() == list(range(n)) and d["index"][rows].tolist() == list(range(rows.start, rows.stop))
        for cam in ("front", "wrist"):
            key = f"observation.images.{cam}"
            assert e[f"videos/{key}/from_timestamp"] == rows.start / 10 and e[f"videos/{key}/to_timestamp"] == rows.stop / 10
    tasks = pq.read_table(out / "meta" / "tasks.parquet")
    assert tasks.to_pydict() == {"task_index": [0, 1], "task": ["touch the red cube", "tap the blue block"]}
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]  # LeRobot reads it with pandas
    stats = json.loads((out / "meta" / "stats.json").read_text())
    assert set(stats["observation.state"]) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
    np.testing.assert_allclose(stats["observation.state"]["mean"], store.lowdim()["state"].mean(0), rtol=1e-5)
    assert np.array(stats["observation.images.front"]["mean"]).shape == (3, 1, 1) and stats["action"]["count"] == [19]

    for cam in ("front", "wrist"):  # frame i of the file is at exactly i / fps; within codec tolerance
        with av.open(str(out / "videos" / f"observation.images.{cam}" / "chunk-000" / "file-000.mp4")) as c:
            decoded = [(float(fr.pts * fr.time_base), fr.to_ndarray(format="rgb24")) for fr in c.decode(video=0)]
        np.testing.assert_allclose([t for t, _ in decoded], np.arange(19) / 10, atol=1e-4)
        frames = np.concatenate([store.episode(i)[f"image/{cam}"] for i in range(2)])
        assert psnr(np.stack([x for _, x in decoded]), frames) > 35


def test_export_imports_back_unchanged(tmp_path):
    """reverie -> LeRobot -> reverie: every key but the video frames exactly; PNG frames exactly too."""
    src = EpisodeStore.open(small_store(tmp_path / "s.zarr"))
    for images in ("video", "png"):
        export(src.url, str(tmp_path / images), {"images": images})
        run("lerobot", [str(tmp_path / images)], str(tmp_path / f"{images}.zarr"), ["size=native"])
        back = EpisodeStore.open(tmp_path / f"{images}.zarr")
        assert back.fps == 10 and back.robot == "so101" and back.num_episodes == 2
        for i in range(2):
            a, b = src.episode(i), back.episode(i)
            for key in ("state", "action", "action_mask", "reward", "is_first", "is_last", "is_terminal", "timestamp"):
                np.testing.assert_array_equal(b[key], a[key], err_msg=f"{images} {key}")
            assert (back.meta(i).instruction, back.meta(i).success) == (src.meta(i).instruction, src.meta(i).success)
            for cam in ("image/front", "image/wrist"):
                if images == "png":
                    np.testing.assert_array_equal(b[cam], a[cam])
                else:
                    assert psnr(b[cam], a[cam]) > 35
    info = json.loads((tmp_path / "png" / "meta" / "info.json").read_text())
    assert info["features"]["observation.images.front"]["dtype"] == "image" and info["video_path"] is None
    assert not (tmp_path / "png" / "videos").exists()


def test_action_free_store_exports_without_an_action(tmp_path):
    out = tmp_path / "v.zarr"
    run("lerobot", [str(early_copy(tmp_path, edit=lambda t: t.drop_columns(["action"])))], str(out), ["size=8x8"])
    export(str(out), str(tmp_path / "lr"))
    features = json.loads((tmp_path / "lr" / "meta" / "info.json").read_text())["features"]
    assert "action" not in features and "reverie.action_mask" not in features


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", ["not a store", "OUT exists", "OUT's folder missing", "OUT unwritable",
                                  "bad option", "bad images", "fractional fps", "unknown kind"])
def test_export_bad_input_is_one_line_exit_2_store_untouched(tmp_path, capsys, monkeypatch, case):
    store = small_store(tmp_path / "s.zarr", fps=12.5 if case == "fractional fps" else 10)
    before = snapshot(store)
    out, extra, kind = tmp_path / "out", [], "lerobot"
    src = str(store)
    if case == "not a store":
        (tmp_path / "plain").mkdir()
        src = str(tmp_path / "plain")
    elif case == "OUT exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "OUT's folder missing":
        out = tmp_path / "missing" / "out"
    elif case == "OUT unwritable":
        def refuse(self, *a, **k):
            raise PermissionError(13, "Permission denied", str(self))
        monkeypatch.setattr(Path, "mkdir", refuse)  # root ignores file modes, so refuse as a read-only disk would
    elif case == "bad option":
        extra = ["colour=red"]
    elif case == "bad images":
        extra = ["images=gif"]
    elif case == "unknown kind":
        kind = "rlds"
    capsys.readouterr()
    assert cli.main(["data", "export", kind, src, str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err
    assert len(err.splitlines()) == 1 or case == "unknown kind"  # the kind error lists the usage below it
    expected = {"not a store": "not a reverie episode store", "OUT exists": "already exists; export into a new folder",
                "OUT's folder missing": "does not exist; create it first", "OUT unwritable": "Permission denied; nothing was left",
                "bad option": "unknown option 'colour'", "bad images": "images='gif': choose video or png",
                "fractional fps": "12.5 fps) is not a whole number", "unknown kind": "unknown export kind 'rlds'"}[case]
    assert expected in err, err
    monkeypatch.undo()
    assert snapshot(store) == before
    if case == "OUT exists":
        assert snapshot(out) == {"keep.txt": b"mine"}
    elif case != "not a store":
        assert not out.exists() and not list(out.parent.glob(".*partial"))


def test_export_help_and_fps_override(tmp_path, capsys):
    assert cli.main(["data", "export", "--help"]) == 0
    assert "data export lerobot STORE OUT" in capsys.readouterr().out
    store = small_store(tmp_path / "s.zarr", fps=29.97)
    export(str(store), str(tmp_path / "lr"))  # NTSC's 29.97 is LeRobot's 30
    assert json.loads((tmp_path / "lr" / "meta" / "info.json").read_text())["fps"] == 30
    store = small_store(tmp_path / "s12.zarr", fps=12.5)
    export(str(store), str(tmp_path / "lr12"), {"fps": "12"})
    assert json.loads((tmp_path / "lr12" / "meta" / "info.json").read_text())["fps"] == 12
    with pytest.raises(ReverieError, match="crf='best'"):
        export(str(store), str(tmp_path / "lr2"), {"crf": "best"})
