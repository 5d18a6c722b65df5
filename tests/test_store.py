"""Episode store: round trips, metadata, statistics, codecs, recovery of interrupted writes, bad input."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import zarr

import reverie.datasets.store as store_mod
from reverie.datasets.codecs import ImageCodec
from reverie.datasets.schema import SCHEMA_VERSION
from reverie.datasets.store import EpisodeMeta, EpisodeStore, make_schema
from reverie.errors import StoreError

SCHEMA = make_schema(cameras={"front": (16, 16)}, state_dim=3, action_dim=2)


def episode(T, seed=0, video=False):
    rng = np.random.default_rng(seed)
    return {
        "image/front": rng.integers(0, 256, (T, 16, 16, 3), dtype=np.uint8),
        "state": rng.normal(size=(T, 3)).astype(np.float32),
        "action": (np.zeros((T, 2)) if video else rng.uniform(-1, 1, (T, 2))).astype(np.float32),
        "action_mask": np.zeros(T, bool) if video else np.arange(T) < T - 1,
        "reward": rng.normal(size=T).astype(np.float32),
        "is_first": np.arange(T) == 0,
        "is_last": np.arange(T) == T - 1,
        "is_terminal": np.zeros(T, bool),
        "timestamp": np.cumsum(rng.uniform(0.09, 0.11, T)),  # measured, jittery, never re-derived
    }


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


@pytest.fixture
def small_flush(monkeypatch):
    """Flush every few rows so streaming writes cross chunk and flush boundaries in tiny tests."""
    monkeypatch.setattr(store_mod, "FLUSH_BYTES", 5000)


def test_round_trip_streaming_and_whole(tmp_path, small_flush):
    store = EpisodeStore.create(tmp_path / "s.zarr", SCHEMA, fps=10.0, robot="sim/so101", attrs={"task": "reach"})
    eps = [episode(40, 0), episode(7, 1, video=True), episode(75, 2)]
    assert store.add_episode(eps[0], instruction="touch the red cube", source="scripted") == 0
    assert store.add_episode(eps[1], instruction="", source="video", notes="phone clip") == 1
    writer = store.episode_writer(instruction="push blue", source="teleop", round=2)
    for t in range(75):
        writer.add({key: value[t] for key, value in eps[2].items()})
    assert writer.commit(success=True) == 2
    store.close()

    store = EpisodeStore.open(tmp_path / "s.zarr")
    assert (len(store), store.num_episodes, store.num_frames) == (3, 3, 122)
    assert store.fps == 10.0 and store.robot == "sim/so101" and store.attrs == {"task": "reach"}
    assert store.keys == list(SCHEMA) and store.schema == SCHEMA
    for i, ep in enumerate(eps):
        assert_same(store.episode(i), ep)
    assert store.meta(2) == EpisodeMeta(2, "push blue", "teleop", 2, True, "", 47, 75)
    assert store.meta(1) == EpisodeMeta(1, "", "video", 0, None, "phone clip", 40, 7)
    assert not store.episode(1)["action_mask"].any()  # action-free episodes are ordinary episodes
    assert [m.index for _, m in store.iter_episodes()] == [0, 1, 2]
    assert_same(store.episode(-1, keys=["state"]), {"state": eps[2]["state"]})
    # Any zarr reader sees the replay-buffer layout.
    raw = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert list(raw["meta/episode_ends"][:]) == [40, 47, 122]
    assert raw.attrs["schema_version"] == SCHEMA_VERSION and raw.attrs["keys"]["state"]["shape"] == [3]


def test_fsspec_urls(tmp_path):
    for url in ["memory://stores/a.zarr", f"file://{tmp_path}/b.zarr"]:
        store = EpisodeStore.create(url, SCHEMA, fps=5.0, robot="x")
        ep = episode(9)
        store.add_episode(ep, instruction="wave", source="policy", success=False)
        store.close()
        reopened = EpisodeStore.open(url)
        assert_same(reopened.episode(0), ep)
        assert reopened.meta(0).success is False


def test_stats_exact_and_current(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", SCHEMA, fps=10.0, robot="x")
    eps = [episode(30, 0), episode(50, 1), episode(20, 2)]
    for ep in eps:
        store.add_episode(ep, instruction="a", source="scripted")
    all_pixels = np.concatenate([e["image/front"] for e in eps]).reshape(-1, 3)
    np.testing.assert_allclose(store.stats()["image/front"]["mean"], all_pixels.mean(0), rtol=1e-5)
    store.delete_last_episode()  # statistics follow deletions too
    stats = store.stats()
    state = np.concatenate([e["state"] for e in eps[:2]]).astype(np.float64)
    np.testing.assert_allclose(stats["state"]["mean"], state.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["state"]["std"], state.std(0), rtol=1e-5)
    np.testing.assert_allclose(stats["state"]["p99"], np.percentile(state, 99, axis=0), rtol=1e-5)
    pixels = np.concatenate([e["image/front"] for e in eps[:2]]).reshape(-1, 3)
    np.testing.assert_allclose(stats["image/front"]["mean"], pixels.mean(0), rtol=1e-5)
    np.testing.assert_array_equal(stats["image/front"]["min"], pixels.min(0))
    np.testing.assert_array_equal(stats["image/front"]["p01"],
                                  np.percentile(pixels, 1, axis=0, method="inverted_cdf"))
    assert stats["action_mask"]["mean"].shape == () and stats["state"]["min"].dtype == np.float32
    # Stored in the root attrs, so a reader gets them without scanning data.
    attrs = zarr.open_group(str(tmp_path / "s.zarr"), mode="r").attrs["stats"]
    assert attrs["episodes"] == 2 and np.allclose(attrs["keys"]["state"]["mean"], state.mean(0), rtol=1e-5)


def test_lossy_images_readable_by_plain_zarr(tmp_path):
    schema = make_schema(cameras={"front": (48, 64)}, state_dim=1, action_dim=1)
    store = EpisodeStore.create(tmp_path / "s.zarr", schema, fps=10.0, robot="x", image_codec="lossy")
    T = 10
    yy, xx = np.mgrid[:48, :64]
    frames = np.stack([np.stack([xx * 4 + t, yy * 5, (xx + yy) * 2], -1) for t in range(T)]).clip(0, 255)
    ep = {key: value[:, :1] if value.ndim == 2 else value for key, value in episode(T).items()
          if key != "image/front"}
    store.add_episode(ep | {"image/front": frames.astype(np.uint8)}, instruction="a", source="video")
    got = zarr.open_array(str(tmp_path / "s.zarr/data/image/front"), mode="r")[:]
    mse = np.mean((got.astype(np.float64) - frames) ** 2)
    assert 10 * np.log10(255**2 / mse) > 38  # smooth gradients at q95 4:4:4: visually identical
    meta = json.loads((tmp_path / "s.zarr/data/image/front/zarr.json").read_text())
    assert meta["codecs"][0] == {"name": "reverie.image", "configuration": {"format": "jpeg", "quality": 90}}
    # A fresh process needs nothing but `import reverie.datasets` to read it with plain zarr.
    code = ("import sys, zarr, reverie.datasets; "
            "print(zarr.open_array(sys.argv[1], mode='r')[:].mean())")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.zarr/data/image/front")],
                         capture_output=True, text=True, check=True).stdout
    assert abs(float(out) - got.mean()) < 1e-9


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_image_codec_frame_bytes_round_trip(fmt):
    yy, xx = np.mgrid[:24, :32]
    frames = np.stack([np.stack([xx * 8, yy * 10, np.full_like(xx, 40 * t)], -1) for t in range(3)])
    frames = frames.clip(0, 255).astype(np.uint8)
    data = ImageCodec(format=fmt, quality=95).encode_frames(frames)
    decoded = ImageCodec.decode_frames(data, frames.shape)
    assert decoded.shape == frames.shape and np.abs(decoded.astype(int) - frames).mean() < 3
    assert decoded[..., 2].mean(axis=(1, 2)).round(-1).tolist() == [0, 40, 80]  # RGB order kept
    with pytest.raises(ValueError, match="format"):
        ImageCodec(format="png")


def test_interrupted_episode_reported_and_truncated(tmp_path, small_flush, caplog):
    path = tmp_path / "s.zarr"
    store = EpisodeStore.create(path, SCHEMA, fps=10.0, robot="x")
    first = episode(12)
    store.add_episode(first, instruction="a", source="scripted")
    writer = store.episode_writer("b", "scripted")
    for t in range(30):  # flushes several blocks past the committed end, then "crashes"
        writer.add({key: value[t] for key, value in episode(40, 1).items()})
    assert store.array("state").shape[0] > 12
    writer._wait()  # its rows are on disk; now abandon it like a killed process would: the lock
    store._writer = None  # goes, the rows past the committed end stay
    store.close()

    with caplog.at_level(logging.WARNING):
        reader = EpisodeStore.open(path, mode="r")
    assert "frames" in caplog.text and "ignoring" in caplog.text
    assert reader.num_episodes == 1 and reader.array("state").shape[0] > 12  # read-only: untouched
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        store = EpisodeStore.open(path, mode="a")
    assert "truncating" in caplog.text
    assert store.array("image/front").shape[0] == 12
    assert_same(store.episode(0), first)
    store.add_episode(episode(5, 3), instruction="c", source="scripted")  # still writable
    assert store.meta(1).start == 12 and store.num_frames == 17


def test_half_written_episode_ends_entry_is_not_committed(tmp_path):
    """Growing episode_ends is two writes (shape, then value). A crash between them leaves the fill
    value, or a stale end from a deleted episode; neither may count as a commit."""
    path = tmp_path / "s.zarr"
    store = EpisodeStore.create(path, SCHEMA, fps=10.0, robot="x")
    eps = [episode(10, 0), episode(10, 1), episode(10, 2)]
    for ep in eps:
        store.add_episode(ep, instruction="a", source="scripted")
    store.delete_last_episode()  # the chunk of episode_ends still holds the stale value 30
    store.close()
    group = zarr.open_group(str(path), mode="r+")
    group["meta/episode_ends"].resize((3,))  # a crash right after growing the shape
    assert group["meta/episode_ends"][2] == 30
    store = EpisodeStore.open(path, mode="a")
    assert store.num_episodes == 2 and group["meta/episode_ends"].shape == (2,)
    for i in range(2):
        assert_same(store.episode(i), eps[i])


def test_delete_last_and_discard(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", SCHEMA, fps=10.0, robot="x")
    store.add_episode(episode(6, 0), instruction="a", source="scripted")
    store.add_episode(episode(8, 1), instruction="b", source="teleop")
    assert store.delete_last_episode().instruction == "b"
    with store.episode_writer("c", "correction") as writer:
        writer.add({key: value[0] for key, value in episode(8).items()})
        writer.discard()
    assert (store.num_episodes, store.num_frames, store.array("state").shape[0]) == (1, 6, 6)
    with pytest.raises(RuntimeError), store.episode_writer("d", "policy") as writer:
        writer.add({key: value[0] for key, value in episode(8).items()})
        raise RuntimeError("the robot faulted")  # leaving the block discards the episode
    assert store.array("state").shape[0] == 6 and store.episode_writer("e", "policy") is not None


def test_appenders_exclude_each_other(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", SCHEMA, fps=10.0, robot="x")
    with pytest.raises(StoreError, match="another process"):
        EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    assert EpisodeStore.open(tmp_path / "s.zarr", mode="r").num_episodes == 0
    store.close()
    EpisodeStore.open(tmp_path / "s.zarr", mode="a").close()


# ------------------------------------------------------------------------------------- bad input
def test_missing_path_and_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="no episode store"):
        EpisodeStore.open(tmp_path / "nope.zarr")
    (tmp_path / "folder").mkdir()
    with pytest.raises(StoreError, match="not a"):
        EpisodeStore.open(tmp_path / "folder")
    replay = zarr.open_group(str(tmp_path / "replay.zarr"), mode="w")
    replay.create_array("meta/episode_ends", shape=(1,), dtype="int64")
    replay.create_array("data/action", shape=(1, 2), dtype="float32")
    with pytest.raises(StoreError, match="zarr-replay"):
        EpisodeStore.open(tmp_path / "replay.zarr")
    with pytest.raises(StoreError, match="already exists"):
        EpisodeStore.create(tmp_path / "replay.zarr", SCHEMA, fps=10.0, robot="x")
    assert set(zarr.open_group(str(tmp_path / "replay.zarr"), mode="r").keys()) == {"meta", "data"}
    with pytest.raises(StoreError, match="mode"):
        EpisodeStore.open(tmp_path / "replay.zarr", mode="w")


def test_newer_schema_version_refused(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", SCHEMA, fps=10.0, robot="x")
    store.add_episode(episode(4), instruction="a", source="scripted")
    store.close()
    zarr.open_group(str(tmp_path / "s.zarr"), mode="r+").attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(StoreError, match="newer.*upgrade"):
        EpisodeStore.open(tmp_path / "s.zarr", mode="a")


@pytest.mark.parametrize("key, value, match", [
    ("state", np.zeros(4, np.float32), "shape"),
    ("image/front", np.zeros((16, 16, 3), np.float32), "dtype"),
    ("image/front", np.zeros((16, 16, 3), np.int64), "dtype"),
    ("action_mask", np.int64(1), "dtype"),
    ("state", np.array([0, np.nan, 0], np.float32), "NaN"),
    ("reward", np.float32(np.inf), "NaN or Inf"),
    ("timestamp", np.float64(-np.inf), "NaN or Inf"),
])
def test_bad_steps_rejected_and_committed_data_intact(tmp_path, key, value, match):
    store = EpisodeStore.create(tmp_path / "s.zarr", SCHEMA, fps=10.0, robot="x")
    good = episode(5)
    store.add_episode(good, instruction="a", source="scripted")
    bad = {k: v.copy() for k, v in episode(5, 1).items()}
    with pytest.raises(StoreError, match=match):
        store.add_episode({**bad, key: np.stack([value] * 5)}, instruction="b", source="scripted")
    writer = store.episode_writer("b", "scripted")
    with pytest.raises(StoreError, match=match):
        writer.add({**{k: v[0] for k, v in bad.items()}, key: value})
    writer.discard()
    store.close()
    store = EpisodeStore.open(tmp_path / "s.zarr")
    assert store.num_episodes == 1 and store.array("state").shape[0] == 5
    assert_same(store.episode(0), good)


def test_bad_episode_structure_rejected(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", SCHEMA, fps=10.0, robot="x")
    ep = episode(6)
    with pytest.raises(StoreError, match="source"):
        store.add_episode(ep, instruction="a", source="youtube")
    with pytest.raises(StoreError, match="missing"):
        store.add_episode({k: v for k, v in ep.items() if k != "timestamp"}, instruction="a", source="video")
    with pytest.raises(StoreError, match="is_last"):
        store.add_episode(ep | {"is_last": np.zeros(6, bool)}, instruction="a", source="scripted")
    with pytest.raises(StoreError, match="is_first"):
        store.add_episode(ep | {"is_first": np.ones(6, bool)}, instruction="a", source="scripted")
    with pytest.raises(StoreError, match="empty"), store.episode_writer("a", "scripted") as writer:
        writer.commit()
    with pytest.raises(StoreError, match="out of range"):
        store.episode(0)
    assert store.num_episodes == 0 and store.array("state").shape[0] == 0
    with pytest.raises(StoreError, match="read-only"):
        EpisodeStore.open(tmp_path / "s.zarr", mode="r").episode_writer("a", "scripted")


def test_failed_background_write_discards_episode(tmp_path, small_flush, monkeypatch):
    store = EpisodeStore.create(tmp_path / "s.zarr", SCHEMA, fps=10.0, robot="x")
    good = episode(6)
    store.add_episode(good, instruction="a", source="scripted")
    real_write, calls = store_mod.EpisodeWriter._write, []

    def write_then_fail(self, block, row):
        calls.append(row)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_write(self, block, row)

    monkeypatch.setattr(store_mod.EpisodeWriter, "_write", write_then_fail)
    writer = store.episode_writer("b", "teleop")
    bad = episode(40, 1)
    with pytest.raises(StoreError, match="No space left.*discarded.*intact"):
        for t in range(40):
            writer.add({key: value[t] for key, value in bad.items()})
        writer.commit()
    monkeypatch.setattr(store_mod.EpisodeWriter, "_write", real_write)
    assert store.num_episodes == 1 and store.array("state").shape[0] == 6
    assert_same(store.episode(0), good)
    store.add_episode(episode(5, 2), instruction="c", source="scripted")  # the store goes on
    assert store.num_frames == 11


def test_reader_of_a_live_recording_sees_committed_episodes_quietly(tmp_path, small_flush, caplog):
    store = EpisodeStore.create(tmp_path / "s.zarr", SCHEMA, fps=10.0, robot="x")
    store.add_episode(episode(6), instruction="a", source="scripted")
    writer = store.episode_writer("b", "teleop")
    for t in range(30):
        writer.add({key: value[t] for key, value in episode(40, 1).items()})
    writer._wait()  # rows past the committed end are on disk while the recording goes on
    with caplog.at_level(logging.WARNING):
        reader = EpisodeStore.open(tmp_path / "s.zarr", mode="r")
    assert reader.num_episodes == 1 and not caplog.records  # not reported as a crash
    for t in range(30, 40):
        writer.add({key: value[t] for key, value in episode(40, 1).items()})
    writer.commit()
    reader.refresh()
    assert reader.num_episodes == 2 and reader.meta(1).length == 40
    assert reader._group.attrs["stats"]["episodes"] == 2  # the writer's statistics, not recomputed
    (tmp_path / "empty").mkdir()  # an empty folder is a fine place for a new store
    EpisodeStore.create(tmp_path / "empty", SCHEMA, fps=10.0, robot="x").close()


def test_failed_commit_discards_but_never_loses_a_committed_episode(tmp_path, monkeypatch):
    store = EpisodeStore.create(tmp_path / "s.zarr", SCHEMA, fps=10.0, robot="x")
    good = episode(6)
    store.add_episode(good, instruction="a", source="scripted")
    real_append, calls = store_mod._append_row, []

    def append_then_fail(arr, i, value):
        calls.append(1)
        if len(calls) == 3:  # a meta row: before the commit point
            raise OSError(5, "Input/output error")
        real_append(arr, i, value)

    monkeypatch.setattr(store_mod, "_append_row", append_then_fail)
    with pytest.raises(StoreError, match="discarded.*intact"):
        store.add_episode(episode(8, 1), instruction="b", source="teleop")
    monkeypatch.setattr(store_mod, "_append_row", real_append)
    assert (store.num_episodes, store.array("state").shape[0]) == (1, 6)

    def broken_stats(self):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store_mod.EpisodeStore, "_update_stats", broken_stats)  # after the commit point
    second = episode(8, 2)
    with pytest.raises(StoreError, match="was committed"):
        store.add_episode(second, instruction="c", source="teleop")
    monkeypatch.undo()
    store.close()
    store = EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    assert store.num_episodes == 2 and store.meta(1).instruction == "c"
    assert_same(store.episode(0), good)
    assert_same(store.episode(1), second)
    np.testing.assert_allclose(store.stats()["reward"]["mean"],
                               np.concatenate([good["reward"], second["reward"]]).mean(), rtol=1e-5)


def test_interrupt_after_commit_point_keeps_the_episode(tmp_path, monkeypatch):
    store = EpisodeStore.create(tmp_path / "s.zarr", SCHEMA, fps=10.0, robot="x")
    ep = episode(7)

    def interrupted(self):
        raise KeyboardInterrupt  # Ctrl-C right after episode_ends was written

    monkeypatch.setattr(store_mod.EpisodeStore, "_update_stats", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.add_episode(ep, instruction="a", source="teleop")  # the `with` block's discard runs
    monkeypatch.undo()
    assert store.num_episodes == 1 and store.array("state").shape[0] == 7
    assert_same(store.episode(0), ep)


def test_stale_statistics_are_recomputed_by_readers(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", SCHEMA, fps=10.0, robot="x")
    eps = [episode(9, 0), episode(5, 1)]
    for ep in eps:
        store.add_episode(ep, instruction="a", source="scripted")
    store.close()
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    group.attrs["stats"] = {**group.attrs["stats"], "episodes": 1}  # as a crash after the commit point leaves them
    reader = EpisodeStore.open(tmp_path / "s.zarr", mode="r")
    state = np.concatenate([e["state"] for e in eps]).astype(np.float64)
    for _ in range(2):  # computed once, then remembered by the handle
        np.testing.assert_allclose(reader.stats()["state"]["max"], state.max(0), rtol=1e-6)
    assert zarr.open_group(str(tmp_path / "s.zarr"), mode="r").attrs["stats"]["episodes"] == 1  # readers never write
