"""`reverie data import <kind> SRC... OUT [key=value ...]`: bring outside data into an episode store.

Each kind lives in its own module with `OPTIONS` (name -> help) and
`read(srcs, opts, existing) -> Source`, where `existing` is OUT's schema when appending to a store.
Readers only translate the outside layout into store rows; this file owns the store side: creating
OUT (or appending to it when it already exists), and committing one episode at a time so a failure
half-way leaves every episode before it committed and readable.

Row convention (CONTRIBUTING.md): row t holds o_t, reward r_t received on arriving at o_t (0 on the
first row), and a_t, the command sent after seeing o_t (`action_mask` False where unknown).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from typing import Iterator

import numpy as np

from reverie.errors import ReverieError, StoreError
from reverie.specs import ArraySpec

# kind -> module with OPTIONS and read(). Modules load on use: a video import never imports pyarrow.
KINDS: dict[str, str] = {
    "video": "reverie.datasets.import_video",
    "lerobot": "reverie.datasets.import_lerobot",
    "zarr-replay": "reverie.datasets.import_zarr_replay",
}

# Options every kind accepts; a kind's OPTIONS add to these.
COMMON_OPTIONS = {
    "size": "image size HxW in the store, e.g. 64x64 (default), or `native` to keep the source's",
    "instruction": "task text for episodes whose source has none (default: empty)",
    "robot": "robot name recorded in the store attrs (default: from the source, else `unknown`)",
    "image_codec": "lossless (default) or lossy, for a new store",
    "source": "episode source label: teleop, scripted, policy, correction or video "
              "(default: video for videos, teleop otherwise)",
}

DEFAULT_SIZE = (64, 64)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Episode:
    # key -> (T, ...) rows for every key of the schema; or an iterator of such blocks (see stream_rows)
    # for episodes too long to hold in memory.
    steps: dict[str, np.ndarray] | Iterator[dict[str, np.ndarray]]
    instruction: str = ""
    success: bool | None = None
    notes: str = ""


@dataclasses.dataclass
class Source:
    """What a reader found: the layout of its rows and a lazy stream of episodes."""

    schema: dict[str, ArraySpec]
    fps: float
    robot: str
    source: str  # the store's episode source label: video | teleop | scripted | ...
    episodes: Iterator[Episode]
    num_episodes: int
    attrs: dict = dataclasses.field(default_factory=dict)


def schema_for(cameras: dict[str, tuple[int, int]], state_dim: int, action_dim: int,
               units: str = "") -> dict[str, ArraySpec]:
    """The standard schema; with `units`, state and action keep the source's own units and range
    (LeRobot PushT states are pixels, not radians) instead of claiming radians and [-1, 1]."""
    from reverie.datasets.schema import make_schema

    schema = make_schema(cameras=cameras, state_dim=state_dim, action_dim=action_dim)
    if units:
        schema["state"] = ArraySpec((state_dim,), "float32", units=units)
        schema["action"] = ArraySpec((action_dim,), "float32", units=units)
    return schema


def dims_help(what: str) -> str:
    return (f"dimensions of the {what} vector to keep: a python slice or indices, e.g. 0:2, 0,1, -1 or 0:2,4 "
            f"(default: all); counted after the {what}= columns are flattened and joined")


@dataclasses.dataclass
class Pick:
    """Which source columns, and which dimensions of them joined, make up the store's state or action."""

    key: str  # state | action
    columns: list[str]
    width: int  # of the source columns flattened and joined
    dims: list[int] | None = None  # kept dimensions, in order; None keeps all

    @property
    def out_width(self) -> int:
        return self.width if self.dims is None else len(self.dims)

    def apply(self, rows: np.ndarray | None) -> np.ndarray | None:
        """(T, width) source rows -> (T, out_width)."""
        return rows if rows is None or self.dims is None else rows[:, self.dims]

    def record(self) -> dict:
        """For the store attrs (`import`): what was taken from where."""
        return {"columns": list(self.columns), "source_width": self.width,
                "dims": list(range(self.width)) if self.dims is None else list(self.dims)}

    def note(self) -> str:
        """'; dims [0, 1] of state (5 wide)' for the key's units, or '' when every dimension is kept."""
        if self.dims is None:
            return ""
        return f"; dims {self.dims} of {'+'.join(self.columns)} ({self.width} wide)"


def parse_dims(text: str, option: str) -> list[int | slice]:
    """'0:2' / '0,1' / '-1' / '0:2,4' -> ints and slices (syntax only; ranges are checked by pick())."""
    items: list[int | slice] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if ":" in part:
                bounds = [int(b) if b.strip() else None for b in part.split(":")]
                if len(bounds) > 3 or (len(bounds) == 3 and bounds[2] == 0):
                    raise ValueError(part)
                items.append(slice(*bounds))
            else:
                items.append(int(part))
        except ValueError:
            raise ReverieError(f"{option}={text!r} is not a dimension selection; write a python slice "
                               f"({option}=0:2), indices ({option}=0,1) or both ({option}=0:2,4)") from None
    return items


def pick(opts: dict[str, str], key: str, columns: list[str], width: int) -> Pick:
    """The `<key>_dims=` selection of `columns` (joined: `width` wide), checked against that width."""
    option, text = f"{key}_dims", opts.get(f"{key}_dims")
    if text is None:
        return Pick(key, columns, width)
    named = "+".join(columns)
    if not columns or width == 0:
        raise ReverieError(f"{option}={text!r} selects dimensions of {key}, but this import takes no {key} "
                           f"column; name one with {key}=<column>")

    def out_of_range(what) -> ReverieError:
        return ReverieError(f"{option}={text!r}: {what} is out of range, {key} ({named}) is {width} wide "
                            f"(dimensions 0..{width - 1}, or -{width}..-1 from the end); pick dimensions "
                            f"within it, e.g. {option}=0:{min(2, width)}")

    dims: list[int] = []
    for item in parse_dims(text, option):
        if isinstance(item, int):
            if not -width <= item < width:
                raise out_of_range(f"dimension {item}")
            dims.append(item % width)
        else:  # python would clip a slice past the end; here it is a mistake worth naming
            for bound in (item.start, item.stop):
                if bound is not None and not -width <= bound <= width:
                    raise out_of_range(f"slice bound {bound}")
            dims.extend(range(width)[item])
    if not dims:
        raise ReverieError(f"{option}={text!r} keeps no dimension of {key} ({named}, {width} wide); "
                           f"pick at least one, e.g. {option}=0:{min(2, width)}")
    twice = sorted({d for d in dims if dims.count(d) > 1})
    if twice:
        raise ReverieError(f"{option}={text!r} picks dimension(s) {twice} more than once; list each dimension once")
    return Pick(key, columns, width, dims)


def note_picks(schema: dict[str, ArraySpec], picks: list[Pick]) -> dict[str, ArraySpec]:
    """Append each pick's dims note to its key's units (a new store's schema)."""
    schema = dict(schema)
    for p in picks:
        if p.note() and p.key in schema:
            schema[p.key] = dataclasses.replace(schema[p.key], units=(schema[p.key].units + p.note()).lstrip("; "))
    return schema


def make_rows(
    schema: dict[str, ArraySpec],
    timestamp: np.ndarray,
    images: dict[str, np.ndarray],
    state: np.ndarray | None = None,
    action: np.ndarray | None = None,
    reward: np.ndarray | None = None,
    terminal: bool = False,
    first: bool = True,
    last: bool = True,
    action_mask: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Assemble one episode's rows. `images` maps camera -> (T, H, W, 3) uint8.

    Missing state/action are zeros; a missing action also clears `action_mask`, so models know the
    zeros are not commands; `action_mask` (T,) bool marks the known rows of a given action (a
    reverie export carries one). `terminal` marks the last row as the task's end (not a time limit).
    `first`/`last` say whether these rows start/end the episode (False for a block in the middle).
    """
    n = len(timestamp)
    if n == 0:
        raise StoreError("an episode with no frames cannot be imported; check the source is not empty")
    rows = {f"image/{cam}": frames for cam, frames in images.items()}
    rows["timestamp"] = np.asarray(timestamp, np.float64)
    rows["state"] = np.zeros((n, *schema["state"].shape), np.float32) if state is None else state
    rows["action"] = np.zeros((n, *schema["action"].shape), np.float32) if action is None else action
    known = np.full(n, True) if action_mask is None else np.asarray(action_mask, bool)
    rows["action_mask"] = known & (action is not None)
    rows["reward"] = np.zeros(n, np.float32) if reward is None else np.asarray(reward, np.float32)
    rows["is_first"] = (np.arange(n) == 0) & first
    rows["is_last"] = (np.arange(n) == n - 1) & last
    rows["is_terminal"] = rows["is_last"] & terminal
    for key, spec in schema.items():
        if key not in rows:
            raise StoreError(f"the importer produced no `{key}` for the store's schema; the store has keys "
                             f"{sorted(schema)} but the source only {sorted(rows)}")
        rows[key] = np.asarray(rows[key]).astype(spec.dtype, copy=False)
        if rows[key].shape != (n, *spec.shape):
            raise StoreError(f"`{key}` rows have shape {rows[key].shape[1:]} but the store expects {spec.shape}; "
                             f"import into a new store, or pass size=/state and action options that match")
    return {k: rows[k] for k in schema}


def stream_rows(schema: dict[str, ArraySpec], blocks: Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]):
    """(timestamps, images) blocks of one episode -> row blocks. One block of lookahead tells which
    block is the last, so only its final row gets is_last."""
    blocks = iter(blocks)
    current, first = next(blocks, None), True
    if current is None:
        raise StoreError("an episode with no frames cannot be imported; check the source is not empty")
    for upcoming in blocks:
        yield make_rows(schema, *current, first=first, last=False)
        current, first = upcoming, False
    yield make_rows(schema, *current, first=first, last=True)


def parse_size(text: str | None, default: tuple[int, int] | None = DEFAULT_SIZE) -> tuple[int, int] | None:
    """'64x64' or '96' -> (H, W); 'native' -> None (keep the source's resolution)."""
    if text is None:
        return default
    if text == "native":
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        h, w = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, 0)
    except ValueError:
        h = w = 0
    if h <= 0 or w <= 0:
        raise ReverieError(f"size={text!r} is not an image size; write it as HxW, e.g. size=64x64, or size=native")
    return h, w


def resize(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """(H, W, 3) uint8 -> size. INTER_AREA averages source pixels, the right filter for shrinking."""
    import cv2

    if size is None or frame.shape[:2] == tuple(size):
        return np.ascontiguousarray(frame)
    return cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def parse_options(kind: str, overrides: list[str], extra: dict[str, str]) -> dict[str, str]:
    known = COMMON_OPTIONS | extra
    opts = {}
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in known:
            listing = "\n".join(f"  {k}=  {h}" for k, h in known.items())
            raise ReverieError(f"unknown option {key!r} for `data import {kind}`; it takes:\n{listing}")
        opts[key] = value
    return opts


def check_options(opts: dict[str, str]) -> None:
    """Values that are easy to mistype fail before any file is read or written."""
    from reverie.datasets.schema import SOURCES

    parse_size(opts.get("size"))
    if opts.get("image_codec", "lossless") not in ("lossless", "lossy"):
        raise ReverieError(f"image_codec={opts['image_codec']!r}: choose lossless or lossy")
    if opts.get("source", "teleop") not in SOURCES:
        raise ReverieError(f"source={opts['source']!r}: choose one of {', '.join(SOURCES)}")
    for option in ("state_dims", "action_dims"):  # syntax only: the widths are known once the source is read
        if option in opts:
            parse_dims(opts[option], option)


def open_or_create(out: str, src: Source, opts: dict[str, str]):
    """Append to OUT if it is already a store (its schema must match), else create it from the source."""
    from reverie.datasets.store import EpisodeStore

    if _exists(out):
        store = EpisodeStore.open(out, mode="a")
        if not same_rate(store.fps, src.fps):
            store.close()
            raise StoreError(f"{out} is a {store.fps:g} fps store and this import is {src.fps:g} fps; a store has one "
                             f"nominal rate, so import into a new OUT path (one store per frame rate)")
        missing = set(src.schema) ^ set(store.schema)
        if missing or any(store.schema[k].shape != s.shape or store.schema[k].dtype != s.dtype
                          for k, s in src.schema.items()):
            raise StoreError(
                f"{out} already holds a store whose keys or shapes differ from this import "
                f"(store: {_describe(store.schema)}; import: {_describe(src.schema)}); import into a new OUT path, "
                f"or pass size=HxW (and state/action options) matching the store")
        return store
    return EpisodeStore.create(out, src.schema, fps=src.fps, robot=opts.get("robot") or src.robot,
                               image_codec=opts.get("image_codec", "lossless"), attrs=src.attrs)


def same_rate(a: float, b: float) -> bool:
    """Two nominal frame rates are one rate within 1% (29.97 and 30 fps footage mix; 15 and 50 do not)."""
    return abs(a - b) <= 0.01 * max(a, b)


def warn_unmapped(where: str, names, hint: str = "") -> None:
    """Name every source column an import leaves out, so nothing is dropped silently."""
    names = list(names)
    if names:
        log.warning("%s: not imported (no store key takes them): %s%s", where, ", ".join(names),
                    f"; {hint}" if hint else "")


def existing_schema(out: str) -> dict[str, ArraySpec] | None:
    """The schema of an existing OUT store, so readers can resize to it; None if OUT is new."""
    if not _exists(out):
        return None
    from reverie.datasets.store import EpisodeStore

    store = EpisodeStore.open(out, mode="r")
    store.close()
    return dict(store.schema)


def run(kind: str, srcs: list[str], out: str, overrides: list[str] = ()) -> list[int]:
    """Import SRCS into OUT; returns the new episode indices."""
    if kind not in KINDS:
        raise ReverieError(f"unknown import kind {kind!r}; choose one of: {', '.join(KINDS)}")
    module = importlib.import_module(KINDS[kind])
    opts = parse_options(kind, list(overrides), module.OPTIONS)
    check_options(opts)
    existing = existing_schema(out)
    if existing is not None and "size" not in opts:
        cams = [s.shape[:2] for k, s in existing.items() if k.startswith("image/")]
        if cams:  # appending: decode straight to the store's resolution
            opts["size"] = f"{cams[0][0]}x{cams[0][1]}"
    source: Source = module.read(srcs, opts, existing)
    label = opts.get("source", source.source)
    store = open_or_create(out, source, opts)
    added = []
    from tqdm import tqdm

    try:
        for ep in tqdm(source.episodes, total=source.num_episodes, desc=f"import {kind}", unit="ep"):
            if isinstance(ep.steps, dict):
                added.append(store.add_episode(ep.steps, instruction=ep.instruction, source=label,
                                               success=ep.success, notes=ep.notes))
                continue
            # Streamed: the writer spills rows to disk as they come; an error discards the episode.
            with store.episode_writer(ep.instruction, label, notes=ep.notes) as writer:
                for block in ep.steps:
                    writer.add_block(block)
                added.append(writer.commit(ep.success))
    except ReverieError as e:
        # Episodes are committed one by one: say what is already safely in OUT.
        raise type(e)(f"{e}\n({len(added)} episode(s) of this import were committed to {out} before the error; "
                      f"they stay there)") from e
    finally:
        store.close()  # releases the append lock
    return added


def _exists(path: str) -> bool:
    import fsspec

    fs, p = fsspec.core.url_to_fs(path)
    return fs.exists(p)


def _describe(schema: dict[str, ArraySpec]) -> str:
    return ", ".join(f"{k} {tuple(s.shape)}" for k, s in sorted(schema.items()) if s.shape)


USAGE = """usage: reverie data import <kind> SRC [SRC ...] OUT [key=value ...]
kinds: video (MP4/WebM/MKV files or a folder of them), lerobot (a LeRobot dataset folder: v3 or v2.x
Parquet, or the early Arrow layout), zarr-replay (a diffusion-policy / UMI replay buffer, zarr format 2 or 3,
a folder or .zarr.zip).
OUT is created, or appended to when it already is a store with the same keys and shapes."""


def main(argv: list[str]) -> int:
    from reverie.config import split_args

    words, overrides = split_args(argv[1:] if argv[:1] == ["import"] else argv)
    if not words or words[0] in ("-h", "--help"):
        print(USAGE)
        for kind, name in KINDS.items():
            module = importlib.import_module(name)
            print(f"\n{kind} options:")
            for k, h in (COMMON_OPTIONS | module.OPTIONS).items():
                print(f"  {k}=  {h}")
        return 0
    if len(words) < 3:
        raise ReverieError(f"expected a kind, at least one SRC and an OUT path, got {words}\n\n{USAGE}")
    kind, srcs, out = words[0], words[1:-1], words[-1]
    added = run(kind, srcs, out, overrides)
    print(f"imported {len(added)} episode(s) into {out}")
    return 0

