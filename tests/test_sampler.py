"""Window sampler: windows stay inside episodes, match the store, pad short episodes, honour weights, and
feed a DataLoader."""

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from reverie.datasets.sampler import ChunkCache, ChunkReader, WindowDataset, WindowSampler
from reverie.datasets.store import EpisodeStore, make_schema
from reverie.errors import StoreError


def episode(T, seed, cameras=("front",), video=False, hw=(8, 8)):
    rng = np.random.default_rng(seed)
    steps = {f"image/{c}": rng.integers(0, 256, (T, *hw, 3), dtype=np.uint8) for c in cameras}
    return steps | {
        "state": rng.normal(size=(T, 2)).astype(np.float32),
        "action": rng.uniform(-1, 1, (T, 2)).astype(np.float32),
        "action_mask": np.zeros(T, bool) if video else np.arange(T) < T - 1,
        "reward": np.zeros(T, np.float32),
        "is_first": np.arange(T) == 0,
        "is_last": np.arange(T) == T - 1,
        "is_terminal": np.zeros(T, bool),
        "timestamp": np.arange(T) / 10 + seed,  # unique per row: identifies where a window came from
    }


def make_store(path, lengths, sources=None, cameras=("front",), codec="lossless", success=None, rounds=None):
    schema = make_schema(cameras={c: (8, 8) for c in cameras}, state_dim=2, action_dim=2)
    store = EpisodeStore.create(path, schema, fps=10.0, robot="x", image_codec=codec)
    for i, T in enumerate(lengths):
        source = sources[i] if sources else "scripted"
        store.add_episode(episode(T, i, cameras, video=source == "video"), instruction=f"task {i % 2}",
                          source=source, success=success[i] if success else None,
                          round=rounds[i] if rounds else 0)
    store.close()
    return EpisodeStore.open(path)


def test_windows_match_store_and_never_cross_episodes(tmp_path):
    store = make_store(tmp_path / "s.zarr", [5, 40, 3, 70, 33, 9])  # 32-frame image chunks: windows straddle them
    sampler = WindowSampler(store, length=9, seed=0, cache_bytes=20_000)  # small: forces evictions
    seen_first, episodes = 0, [store.episode(i) for i in range(len(store))]
    for _ in range(300):
        s = sampler.sample()
        ep = episodes[s["episode"]]
        offset = int(np.searchsorted(ep["timestamp"], s["timestamp"][0]))
        n = min(9, len(ep["timestamp"]) - offset)  # real rows: all 9 unless the episode is shorter
        assert n == 9 or offset == 0  # inside one episode; only short episodes pad
        assert s["valid"].tolist() == [True] * n + [False] * (9 - n)
        for key in store.keys:
            np.testing.assert_array_equal(s[key][:n], ep[key][offset:offset + n], err_msg=key)
        assert s["is_first"][0] == (offset == 0) and not s["is_first"][1:].any()
        assert s["instruction"] == store.meta(s["episode"]).instruction and s["store"] == 0
        seen_first += offset == 0
    assert seen_first > 0  # episode starts are reachable
    assert sampler.cache.hits > 0 and sampler.cache.bytes <= 20_000 + 8 * 8 * 3 * 32
    assert WindowSampler(store, length=71).sample()["valid"].sum() < 71  # longer than every episode: padded


def test_weights_give_each_source_its_share(tmp_path):
    # 10x more teleop frames than video frames; equal weights must still give ~equal shares.
    store = make_store(tmp_path / "s.zarr", [100, 100, 10, 10], sources=["teleop", "teleop", "video", "video"])
    plain = WindowSampler(store, length=4, keys=["state"], seed=1)
    share = np.mean([plain.sample()["episode"] >= 2 for _ in range(2000)])
    assert 0.075 < share < 0.11  # per row: 20 of the 220 rows are video
    equal = WindowSampler(store, length=4, keys=["state"], weights={"source": {"teleop": 1, "video": 1}}, seed=1)
    share = np.mean([equal.sample()["episode"] >= 2 for _ in range(2000)])
    assert 0.45 < share < 0.55
    only_video = WindowSampler(store, length=4, keys=["state"], weights={"source": {"*": 0, "video": 1}}, seed=1)
    assert {only_video.sample()["episode"] for _ in range(50)} == {2, 3}
    by_task = WindowSampler(store, length=4, keys=["state"], weights={"instruction": {"task 1": 3, "task 0": 1}})
    assert 0.7 < np.mean([by_task.sample()["instruction"] == "task 1" for _ in range(2000)]) < 0.8
    with pytest.raises(StoreError, match="weights"):
        WindowSampler(store, length=4, weights={"robot": {"a": 1}})
    with pytest.raises(StoreError, match="no episode to sample"):
        WindowSampler(store, length=4, weights={"source": {"*": 0}})


def test_several_stores_sample_common_keys(tmp_path):
    a = make_store(tmp_path / "a.zarr", [20, 20], cameras=("front", "wrist"))
    b = make_store(tmp_path / "b.zarr", [30], cameras=("front",), codec="lossy")
    sampler = WindowSampler([a, str(tmp_path / "b.zarr")], length=6, seed=0)
    assert "image/wrist" not in sampler.keys and "image/front" in sampler.keys
    stores = {sampler.sample()["store"] for _ in range(100)}
    assert stores == {0, 1}
    batch = sampler.sample_batch(4)
    assert batch["image/front"].shape == (4, 6, 8, 8, 3) and batch["state"].shape == (4, 6, 2)
    assert len(batch["instruction"]) == 4 and batch["episode"].shape == (4,)
    with pytest.raises(StoreError, match="not in every store"):
        WindowSampler([a, b], length=6, keys=["image/wrist"])


def test_dataloader_with_workers(tmp_path):
    store = make_store(tmp_path / "s.zarr", [30, 25, 40], codec="lossy")
    dataset = WindowDataset(store, length=8, seed=3, samples_per_epoch=24)

    def stamps(workers):
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=workers)
        batches = list(loader)
        assert len(batches) == 6 and batches[0]["image/front"].shape == (4, 8, 8, 8, 3)
        assert batches[0]["image/front"].dtype == torch.uint8 and len(batches[0]["instruction"]) == 4
        return torch.cat([b["timestamp"][:, 0] for b in batches])

    two = stamps(2)
    assert len(set(two.tolist())) > 12  # workers draw different windows, not copies of each other
    assert torch.equal(two, stamps(2))  # torch.manual_seed makes the stream repeatable
    assert len(stamps(0)) == 24
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2, persistent_workers=True)
    first, second = ([float(s["timestamp"][0]) for s in loader] for _ in range(2))
    assert len(first) == 24 and first != second  # persistent workers do not replay the last epoch
    # Spawned workers receive a pickled copy; it must leave the open stores behind and reopen them.
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy._sampler is None and next(iter(copy))["state"].shape == (8, 2)


@pytest.mark.parametrize("codec", ["lossless", "lossy"])
def test_chunk_reader_and_cache_read_like_zarr(tmp_path, codec):
    local = make_store(tmp_path / "s.zarr", [50, 50], codec=codec)
    remote = make_store(f"memory://sampler/{codec}.zarr", [50, 50], codec=codec)  # zarr fallback path
    for store in (local, remote):
        arr = store.array("image/front")
        reader = ChunkReader(arr)
        assert (reader._dir is not None) == (store is local)
        cached, direct = ChunkCache(max_bytes=10**6), ChunkCache(max_bytes=0)
        for start, stop in [(0, 5), (30, 70), (31, 33), (95, 100), (0, 100), (64, 96)]:
            want = arr[start:stop]
            np.testing.assert_array_equal(cached.read(("k",), reader, start, stop), want)
            np.testing.assert_array_equal(direct.read(("k",), reader, start, stop), want)
        assert cached.hits > 0


def counts(sampler, n=3000):
    return np.bincount([sampler.sample()["episode"] for _ in range(n)], minlength=len(sampler._len)) / n


def test_short_episodes_are_sampled_padded_and_masked(tmp_path):
    store = make_store(tmp_path / "s.zarr", [3, 5, 40])
    episodes = [store.episode(i) for i in range(3)]
    sampler = WindowSampler(store, length=16, seed=0)
    assert (counts(sampler, 600) * 600 > 20).all()  # every episode, the two shorter than the window too

    def check(w, ep):  # one window (T, ...) against its episode
        offset = int(np.searchsorted(ep["timestamp"], w["timestamp"][0]))
        n = min(16, len(ep["timestamp"]) - offset)
        assert w["valid"].dtype == bool and w["valid"].tolist() == [True] * n + [False] * (16 - n)
        for key in ("image/front", "state", "action", "timestamp"):  # real rows, then the last one repeated
            np.testing.assert_array_equal(w[key][:n], ep[key][offset:offset + n], err_msg=key)
            np.testing.assert_array_equal(w[key][n:], np.repeat(ep[key][-1:], 16 - n, 0), err_msg=key)
        assert not w["action_mask"][n:].any() and not w["reward"][n:].any()
        assert w["is_last"].tolist() == ([False] * (n - 1) + [True] + [False] * (16 - n) if n < 16
                                         else list(ep["is_last"][offset:offset + 16]))
        return n

    padded = [check(s, episodes[s["episode"]]) < 16 for s in (sampler.sample() for _ in range(100))]
    assert any(padded) and not all(padded)
    batch = sampler.sample_batch(64)  # the vectorised path pads the same way
    assert batch["valid"].shape == (64, 16) and set(batch["episode"]) == {0, 1, 2}
    for b in range(64):
        check({k: v[b] for k, v in batch.items() if isinstance(v, np.ndarray) and v.ndim > 1},
              episodes[batch["episode"][b]])
    item = next(iter(WindowDataset(store, length=16, samples_per_epoch=1)))
    assert item["valid"].shape == (16,)


def test_per_episode_mass_and_empty_episodes(tmp_path, monkeypatch):
    store = make_store(tmp_path / "s.zarr", [3, 5, 40])
    by_row = counts(WindowSampler(store, length=16, keys=["state"], seed=0))
    assert np.allclose(by_row, np.array([3, 5, 40]) / 48, atol=0.03)  # per row (default): mass = length
    by_episode = counts(WindowSampler(store, length=16, keys=["state"], seed=0, per="episode"))
    assert np.allclose(by_episode, 1 / 3, atol=0.04)
    with pytest.raises(StoreError, match="per="):
        WindowSampler(store, length=16, per="window")
    # An episode that cannot be sampled (here: no rows) is an error naming it, not a log line.
    meta = store.meta
    monkeypatch.setattr(store, "meta", lambda i: dataclasses.replace(meta(i), length=0) if i == 1 else meta(i))
    with pytest.raises(StoreError, match="episode 1 has no rows"):
        WindowSampler(store, length=16)


def test_weights_by_success_round_and_several_fields(tmp_path):
    store = make_store(tmp_path / "s.zarr", [10] * 6, sources=["teleop"] * 4 + ["video"] * 2,
                       success=[True, True, False, False, None, None], rounds=[0, 0, 0, 1, 1, 2])
    no_failures = WindowSampler(store, length=4, keys=["state"], weights={"success": {"false": 0}})
    assert set(np.flatnonzero(counts(no_failures, 500))) == {0, 1, 4, 5}
    yaml_keys = WindowSampler(store, length=4, keys=["state"], weights={"success": {True: 1, "*": 0}})
    assert set(np.flatnonzero(counts(yaml_keys, 200))) == {0, 1}  # YAML booleans name "true"/"false"
    by_round = counts(WindowSampler(store, length=4, keys=["state"], weights={"round": {0: 3, "1": 1, "2": 0}}))
    assert abs(by_round[:3].sum() - 0.75) < 0.03 and by_round[5] == 0
    # Fields in turn: sources get equal shares, then success 2:1:1 over true/false/unknown.
    both = counts(WindowSampler(store, length=4, keys=["state"], seed=2, weights={
        "source": {"teleop": 1, "video": 1}, "success": {"true": 2, "false": 1, "unknown": 1}}), 4000)
    assert np.allclose(both, [0.25, 0.25, 0.125, 0.125, 0.125, 0.125], atol=0.025)
    with pytest.raises(StoreError, match="success categories are true, false, unknown"):
        WindowSampler(store, length=4, weights={"success": {"yes": 1}})
    with pytest.raises(StoreError, match="finite and >= 0"):
        WindowSampler(store, length=4, weights={"round": {"0": -1}})
    with pytest.raises(StoreError, match="no episode to sample"):  # each field leaves some, together none
        WindowSampler(store, length=4, weights={"source": {"video": 0}, "success": {"unknown": 1, "*": 0}})


def test_every_row_starts_a_window(tmp_path):
    """starts="every": an episode of L rows has L window starts, so a consumer that learns from each
    window's first row sees every row about equally often, the last rows of long episodes included."""
    store = make_store(tmp_path / "s.zarr", [3, 12])
    fit = WindowSampler(store, length=8, keys=["timestamp"], seed=0)
    every = WindowSampler(store, length=8, keys=["timestamp"], seed=0, starts="every")
    assert fit.num_windows == 1 + 5 and every.num_windows == 3 + 12
    firsts = every.sample_batch(6000)["timestamp"][:, 0]
    ts = np.concatenate([store.episode(e)["timestamp"] for e in range(2)])
    share = np.array([np.mean(np.isclose(firsts, t)) for t in ts])
    assert np.allclose(share, 1 / 15, atol=0.015)  # every one of the 15 rows, as often as any other
    tail = every.sample_batch(64)
    assert (~tail["valid"]).any() and tail["valid"][:, 0].all()  # late starts are padded past the end
    with pytest.raises(StoreError, match="starts="):
        WindowSampler(store, length=8, starts="some")
    item = next(iter(WindowDataset(store, length=8, samples_per_epoch=1, starts="every")))
    assert item["valid"].shape == (8,)
