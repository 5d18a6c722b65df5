"""Batches for world-model training and evaluation, from episode stores via the window sampler.

Windows (T rows of one episode, numpy) come from reverie.datasets.sampler.WindowSampler; this file
turns a list of them into the batch contract of world_model/backend.py on the training device:
images uint8 -> float in [0, 1] (resized to the preset's square size when the store differs),
instruction strings -> 384-d embeddings with reverie.language.embed (cached per unique string), and,
for Dynalang, one language token per step, and with `describe` the sentence embedding of each row's
narration (datasets/narration.py) as the description head's target.

Every training episode contributes, short ones included: the sampler pads windows past an episode's
end and marks real rows in `valid`, which collate passes on as batch["valid"] (B, T) bool (all True
for windows without it); the backends' losses average over the valid rows only.

Held-out episodes: the last `ceil(holdout * N)` episodes of each store (none when a store has only
one episode) are excluded from training; evaluation uses exactly those.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from reverie.datasets import narration
from reverie.errors import ConfigError
from reverie.world_model.backend import DataSpec, option

ROW_KEYS = ("state", "action", "action_mask", "reward", "is_first", "is_last", "is_terminal")


def data_paths(data: Any) -> list[str]:
    if data is None or data == "???":
        raise ConfigError("no training data: pass data=STORE (or data=STORE1,STORE2)")
    paths = [data] if isinstance(data, str) else list(data)
    paths = [str(p) for p in paths if str(p)]
    if not paths:
        raise ConfigError("data= is empty: pass data=STORE (or data=STORE1,STORE2)")
    return paths


def open_stores(paths: list[str]) -> list:
    from reverie.datasets.store import EpisodeStore

    stores = []
    for p in paths:
        stores.append(EpisodeStore.open(p, "r"))  # StoreError names the path and the fix
    return stores


def split_episodes(num_episodes: int, holdout: float) -> tuple[list[int], list[int]]:
    """(train, held-out) episode indices: the last ceil(holdout * N) episodes are held out."""
    if not 0 <= holdout < 1:
        raise ConfigError(f"holdout={holdout}: must be a fraction in [0, 1)")
    held = math.ceil(holdout * num_episodes) if num_episodes > 1 else 0
    cut = num_episodes - held
    return list(range(cut)), list(range(cut, num_episodes))


class Language:
    """Instruction embeddings and per-step language tokens, cached per unique string.

    Tokens (Dynalang): the instruction's word-piece ids, streamed one per step through the episode
    (repeating), each represented by the sentence encoder's own 384-d input token embedding.
    """

    def __init__(self):
        self._embed: dict[str, np.ndarray] = {}
        self._tokens: dict[str, np.ndarray] = {}

    def embed(self, texts: list[str]) -> np.ndarray:
        missing = sorted({t for t in texts if t not in self._embed})
        if missing:
            from reverie.language import embed

            for t, v in zip(missing, embed(missing)):
                self._embed[t] = v
        return np.stack([self._embed[t] for t in texts])                # (N, 384)

    def tokens(self, text: str) -> np.ndarray:
        if text not in self._tokens:
            from reverie.language import default_encoder

            enc = default_encoder()
            with enc.lock:
                ids = enc.tokenizer(text or " ", truncation=True, max_length=128)["input_ids"]
            table = enc.model.get_input_embeddings().weight.detach()
            self._tokens[text] = table[torch.as_tensor(ids)].cpu().numpy().astype(np.float32)  # (L, D)
        return self._tokens[text]

    @staticmethod
    def token_dim() -> int:
        from reverie.language import EMBED_DIM

        return EMBED_DIM


def make_spec(stores: list, image_key: str, image_size: int, dynalang: bool,
              cameras: tuple[str, ...] = (), whose: str = "bc_scratch.cameras") -> DataSpec:
    """`cameras`: extra camera keys the batches carry beside `image_key` (a world model's own, train-wm
    cameras=, or a policy's); `whose` names the option that asked for them, for the error."""
    schemas = [s.schema for s in stores]
    if image_key in cameras or len(set(cameras)) < len(cameras):
        what = f"repeats the main camera {image_key!r}" if image_key in cameras else "names a camera twice"
        raise ConfigError(f"{whose}={list(cameras)} {what}: list each extra camera once, e.g. [image/wrist]")
    for path, schema in zip((s.url for s in stores), schemas):
        for key, fix in [(image_key, "pass image_key=<one of those>"),
                         *((c, f"drop it from {whose} or record it (sim: cameras=[front,wrist])")
                           for c in cameras)]:
            if key not in schema:
                cams = sorted(k for k in schema if k.startswith("image/"))
                raise ConfigError(f"store {path} has no camera {key!r} (it has {cams}); {fix}")
    state_dims = {s["state"].shape[0] for s in schemas}
    action_dims = {s["action"].shape[0] for s in schemas}
    if len(state_dims) > 1 or len(action_dims) > 1:
        raise ConfigError(f"stores disagree on state/action sizes ({state_dims}, {action_dims}); "
                          "train on stores recorded with the same arm")
    return DataSpec(image_shape=(image_size, image_size, 3), state_dim=state_dims.pop(),
                    action_dim=action_dims.pop(), lang_dim=Language.token_dim() if dynalang else 0,
                    cameras=tuple(cameras))


def _frames(windows: list[dict], key: str, size: int, device) -> Tensor:
    """The windows' frames of one camera -> (B, T, size, size, 3) float in [0, 1] on `device`."""
    image = torch.from_numpy(np.stack([w[key] for w in windows])).to(device)  # (B, T, h, w, 3) u8
    image = image.float() / 255.0
    if image.shape[2:4] != (size, size):
        b, t, h, w, _ = image.shape
        x = image.reshape(b * t, h, w, 3).permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        image = x.permute(0, 2, 3, 1).reshape(b, t, size, size, 3).clamp(0, 1)
    return image


def collate(windows: list[dict], image_key: str, image_size: int, language: Language,
            dynalang: bool, device: torch.device, narrations: list[list[str]] | None = None,
            cameras: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """Sampler windows (each key (T, ...)) -> the batch contract on `device`, plus `valid` (B, T) bool
    from the windows' `valid` (True where a window has none). With `narrations` (each store's sentence
    table) the windows' `narration` indices become `describe_target` (B, T, 384) and `describe_mask`
    (B, T), False on rows that were not narrated and on padding. Each key in `cameras` (a policy's
    extra cameras) comes as its own (B, T, s, s, 3) entry beside "image" (the world model's camera)."""
    batch: dict[str, Tensor] = {"image": _frames(windows, image_key, image_size, device)}
    for key in cameras:  # a policy's extra cameras, under their own keys
        batch[key] = _frames(windows, key, image_size, device)
    image = batch["image"]
    for key in ROW_KEYS:
        value = torch.from_numpy(np.stack([np.asarray(w[key]) for w in windows])).to(device)
        batch[key] = value.bool() if key in ("action_mask", "is_first", "is_last", "is_terminal") else value.float()
    t = image.shape[1]
    valid = np.stack([np.asarray(w["valid"], bool) if "valid" in w else np.ones(t, bool) for w in windows])
    batch["valid"] = torch.from_numpy(valid).to(device)                         # (B, T) bool
    texts = [str(w.get("instruction", "")) for w in windows]
    batch["instruction_embedding"] = torch.from_numpy(language.embed(texts)).to(device)
    if dynalang:
        t = batch["image"].shape[1]
        tokens = []
        for w, text in zip(windows, texts):
            table = language.tokens(text)                                       # (L, D)
            start = int(w.get("start", 0))  # windows without a start index stream from their first row
            tokens.append(table[(start + np.arange(t)) % len(table)])
        batch["lang_token"] = torch.from_numpy(np.stack(tokens)).to(device)      # (B, T, D)
    if narrations is not None:
        said = [narration.texts(narrations[int(w["store"])], w[narration.KEY]) for w in windows]
        mask = np.array([[s is not None for s in row] for row in said]) & valid   # (B, T)
        flat = [s if s is not None else "" for row in said for s in row]
        target = language.embed(flat).reshape(*mask.shape, -1) * mask[..., None]  # (B, T, 384)
        batch["describe_target"] = torch.from_numpy(target.astype(np.float32)).to(device)
        batch["describe_mask"] = torch.from_numpy(mask).to(device)
    return batch


class TrainData:
    """Endless training batches for one rank, drawn with reverie.datasets.sampler.

    workers=0: one in-process WindowSampler whose generator is seeded by (seed, rank) and saved in
    checkpoints, so a resumed run draws exactly the windows an uninterrupted run would.
    workers>0: a DataLoader over WindowDataset (each worker its own generator); resuming reseeds
    from (seed, rank, step) instead of restoring the stream.
    Held-out episodes are rejected as they are drawn (they are a small fraction), which keeps the
    sampler's weighting (`weights` by source, instruction, success or round; mass `per` row or
    episode, cfg.per, default row) over the training episodes. Every training episode is drawn, short
    ones padded (batch["valid"]), so a store with any training episode trains.
    Batches carry state and action in model units: `self.normalizer` (from the stores and
    cfg.normalize, or the one given, e.g. the world model's for agent data) is applied in next().
    """

    def __init__(self, cfg, mcfg, rank: int = 0, world: int = 1, device: torch.device | str = "cpu",
                 normalizer=None, augment=None, cameras=None, starts: str = "fit", whose: str = "bc_scratch.cameras"):
        from reverie.datasets.normalize import from_stores
        from reverie.datasets.sampler import WindowSampler

        self.paths = data_paths(cfg.data)
        self.stores = open_stores(self.paths)
        # store units -> model units for state and action (datasets/normalize.py); next() applies it
        self.normalizer = normalizer if normalizer is not None else from_stores(self.stores, cfg.normalize)
        self.image_key, self.image_size = cfg.image_key, int(mcfg.image_size)
        self.dynalang = bool(option(mcfg, "dynalang"))
        # extra cameras the batches carry beside "image": given (a policy's, or its world model's), else the
        # world model's own from its config (train-wm cameras=)
        self.cameras = tuple(str(c) for c in (cameras if cameras is not None else cfg.cameras))
        self.spec = make_spec(self.stores, self.image_key, self.image_size, self.dynalang, self.cameras,
                              whose if cameras is not None else "cameras")
        self.batch_size, self.length = int(mcfg.batch_size), int(mcfg.seq_len)
        self.device = torch.device(device)
        self.language = Language()
        self.held = {(s, e) for s, store in enumerate(self.stores)
                     for e in split_episodes(store.num_episodes, float(cfg.holdout))[1]}
        self.keys = [self.image_key, *self.cameras, *ROW_KEYS]
        self.narrations = None  # each store's sentence table when the model learns to describe steps
        if bool(option(mcfg, "describe")):
            bare = [p for p, st in zip(self.paths, self.stores) if narration.KEY not in st.schema]
            if bare:
                raise ConfigError(f"world_model.describe=true needs per-step narration, and {bare} have none: "
                                  "train on stores recorded by `reverie sim demos` (they narrate each step) "
                                  "or set world_model.describe=false")
            self.narrations = [narration.vocabulary(st) for st in self.stores]
            self.keys.append(narration.KEY)
        self.weights = _plain(cfg.weights)
        self.per = str(cfg.per)
        self.starts = str(starts)  # "every": a window may start at any row (policy rows)
        self.seed, self.rank, self.workers = int(cfg.seed), rank, int(cfg.workers)
        self.sampler = WindowSampler(self.stores, self.length, self.keys, self.weights,
                                     seed=np.random.SeedSequence([self.seed, rank]), per=self.per,
                                     starts=self.starts)
        if not any(p > 0 and key not in self.held for key, p in self.sampler.episode_probs.items()):
            raise ConfigError(f"no training episode to draw in {self.paths} after holding out {len(self.held)}"
                              f"{f' with weights={self.weights}' if self.weights else ''}: record more episodes, "
                              "lower holdout=, or give a training episode's category a weight > 0")
        self._stream = None
        self._prefetch, self._state = None, None
        self.augment = augment  # window -> window before collation (a policy's, e.g. datasets/colour_swap.py)

    def _draw(self) -> dict:
        if self.workers <= 0:
            return self.sampler.sample()
        return next(self._stream)

    def _make(self) -> dict[str, Tensor]:
        windows = []
        while len(windows) < self.batch_size:
            w = self._draw()
            if (w["store"], w["episode"]) not in self.held:
                windows.append(self.augment(w) if self.augment else w)
        return self.normalizer.batch(collate(windows, self.image_key, self.image_size, self.language, self.dynalang,
                                             self.device, self.narrations, self.cameras))

    def next(self) -> dict[str, Tensor]:
        if self._prefetch is None:
            return self._make()
        batch, self._state = self._prefetch.get()
        return batch

    def start_stream(self, step: int = 0, prefetch: int = 0) -> None:
        """With workers > 0: (re)start the DataLoader stream, seeded by (seed, rank, step). With prefetch > 0:
        a thread prepares that many batches ahead (window reads, image decoding, collation), so they
        overlap the update; next() returns exactly the batches the plain loop would, and get_state()
        the sampler's state as of the last batch returned, so checkpoints resume the same stream."""
        self.stop()
        if self.workers > 0:
            self._start_loader(step)
        if prefetch > 0:
            self._state = self.sampler.rng.bit_generator.state   # (a fresh dict each read)
            self._prefetch = _Prefetch(self._make, lambda: self.sampler.rng.bit_generator.state, prefetch)

    def stop(self) -> None:
        """End the prefetch thread (if any); the sampler state stays that of the last batch returned."""
        if self._prefetch is not None:
            self._prefetch.close()
            self.sampler.rng.bit_generator.state = self._state
            self._prefetch = None

    def _start_loader(self, step: int) -> None:
        from reverie.datasets.sampler import WindowDataset

        dataset = WindowDataset(self.paths, self.length, self.keys, self.weights,
                                seed=self.seed * 1_000_003 + self.rank * 7919 + step, per=self.per,
                                starts=self.starts)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rank * 7919 + step)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=self.workers,
                                             generator=g, persistent_workers=True)
        self._stream = _forever(loader)

    def get_state(self) -> dict:
        if self._prefetch is not None:  # the thread's sampler is ahead by the queued batches
            return self._state
        return self.sampler.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        if self._prefetch is not None:
            raise RuntimeError("TrainData.set_state while prefetching: set it before start_stream")
        self.sampler.rng.bit_generator.state = state

    def gather_state(self) -> dict[str, dict]:
        """Every rank's sampler RNG state, keyed by rank (collective under torch.distributed)."""
        from reverie.world_model import distributed

        if not distributed.is_distributed():
            return {"0": self.get_state()}
        states = [None] * distributed.world()
        torch.distributed.all_gather_object(states, self.get_state())
        return {str(r): s for r, s in enumerate(states)}


class _Prefetch:
    """A daemon thread calling make() into a bounded queue, each batch paired with state() after it (the
    sampler RNG a checkpoint saves). Errors in the thread surface at the next get()."""

    def __init__(self, make, state, depth: int):
        import queue
        import threading

        self._queue, self._stop = queue.Queue(maxsize=depth), threading.Event()
        self._make, self._state = make, state
        self._thread = threading.Thread(target=self._run, name="reverie-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import queue

        while not self._stop.is_set():
            try:
                item = (self._make(), self._state(), None)
            except BaseException as e:  # handed to the consumer, which raises it
                item = (None, None, e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return

    def get(self):
        batch, state, error = self._queue.get()
        if error is not None:
            raise error
        return batch, state

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _forever(loader):
    while True:
        yield from loader


def _plain(value):
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def write_toy_store(path, episodes: int = 6, length: int = 24, size: int = 16, video_episodes: int = 1,
                    seed: int = 0):
    """A small synthetic store for tests and benchmarks: a bright square on a dark table moves by the
    commanded action (state = its position, gripper-like third joint = action[2] integrated); reward 1
    while it is within 0.3 of the centre. Episodes 1..video_episodes are action-free video
    (action_mask False), the rest (including the last, held-out ones) are action-labelled. Returns the path."""
    from reverie.datasets.schema import make_schema
    from reverie.datasets.store import EpisodeStore

    rng = np.random.default_rng(seed)
    store = EpisodeStore.create(path, make_schema({"front": (size, size)}, 3, 3), fps=10.0, robot="toy")
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1                      # (size, size) in [-1, 1]
    for e in range(episodes):
        pos = rng.uniform(-0.7, 0.7, 3).astype(np.float32)
        rows = {k: [] for k in ("image/front", "state", "action")}
        for t in range(length):
            action = np.clip(rng.normal(0, 0.6, 3), -1, 1).astype(np.float32)
            img = np.full((size, size, 3), 30, np.uint8)
            square = (np.abs(xx - pos[0]) < 0.2) & (np.abs(yy - pos[1]) < 0.2)
            img[square] = (230, 200, int(127 + 127 * pos[2]))
            rows["image/front"].append(img)
            rows["state"].append(pos.copy())
            rows["action"].append(action)
            pos = np.clip(pos + 0.2 * action, -0.9, 0.9).astype(np.float32)
        video = 1 <= e <= video_episodes
        mask = np.full(length, not video)
        mask[-1] = False
        state = np.stack(rows["state"])
        steps = {
            "image/front": np.stack(rows["image/front"]), "state": state,
            "action": np.stack(rows["action"]) * mask[:, None], "action_mask": mask,
            "reward": (np.linalg.norm(state[:, :2], axis=-1) < 0.3).astype(np.float32) * (np.arange(length) > 0),
            "is_first": np.arange(length) == 0, "is_last": np.arange(length) == length - 1,
            "is_terminal": np.zeros(length, bool), "timestamp": np.arange(length) / 10.0,
        }
        store.add_episode(steps, instruction="move the square" if e % 2 == 0 else "touch the centre",
                          source="video" if video else "scripted")
    store.close()
    return path
