"""`reverie data label STORE episodes=LIST success=true|false|none`

Sets the success label of episodes after recording, e.g. once teleop data has been reviewed:
imagination RL (`train-agent stage=rl`) learns its reward from these labels when a store records no
reward. Only the per-episode label changes (EpisodeStore.set_success); frames are never rewritten.

    episodes=0,3,5        single episodes (numbered as `reverie data info` / `data view` number them)
    episodes=0-9,12       inclusive ranges and singles
    episodes=all          every committed episode
    success=true          true | false | none (none clears the label: unknown)

The store must not be open for appending elsewhere (a recording in progress).
"""

from __future__ import annotations

from reverie.errors import ReverieError

USAGE = "usage: reverie data label STORE episodes=0,3,5-9|all success=true|false|none"
VALUES = {"true": True, "false": False, "none": None, "unknown": None}
NAMES = {True: "success", False: "failure", None: "unknown"}


def parse_episodes(text: str, num_episodes: int) -> list[int]:
    """'0,3,5-9' or 'all' -> sorted unique indices, each checked against the store's episode count."""
    text = str(text).strip()
    if text.lower() == "all":
        if not num_episodes:
            raise ReverieError("episodes=all: the store has no episodes to label")
        return list(range(num_episodes))
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise ReverieError(f"episodes={text!r} has an empty item; write e.g. episodes=0,3,5-9")
        lo, dash, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if dash else a
        except ValueError:
            raise ReverieError(f"episodes={text!r}: {part!r} is not an episode number or a range like 5-9; "
                               "write e.g. episodes=0,3,5-9 or episodes=all") from None
        if a < 0 or b < 0:
            raise ReverieError(f"episodes={text!r}: episode numbers start at 0 (got {part!r})")
        if b < a:
            raise ReverieError(f"episodes={text!r}: range {part!r} runs backwards; write it as {b}-{a}")
        if b >= num_episodes:
            raise ReverieError(f"episodes={text!r}: episode {b} is out of range; the store holds "
                               f"{num_episodes} episode(s), numbered 0..{num_episodes - 1}")
        out.update(range(a, b + 1))
    return sorted(out)


def parse_success(text: str) -> bool | None:
    value = str(text).strip().lower()
    if value not in VALUES:
        raise ReverieError(f"success={text!r}: choose true, false or none (none clears the label)")
    return VALUES[value]


def label(path: str, episodes: str, success: str) -> dict:
    """Relabel episodes of the store at `path`; returns {"episodes", "success", "before", "counts"}."""
    from reverie.datasets.store import EpisodeStore

    value = parse_success(success)  # bad input is reported before the store is opened for writing
    with EpisodeStore.open(path, mode="a") as store:
        indices = parse_episodes(episodes, store.num_episodes)
        before = store.set_success(indices, value)
        counts = label_counts(store)
    changed = sum(b is not value for b in before)
    return {"episodes": indices, "success": value, "changed": changed,
            "before": {NAMES[k]: sum(b is k for b in before) for k in (True, False, None)}, "counts": counts}


def label_counts(store) -> dict[str, int]:
    """{"success", "failure", "unknown"}: how many committed episodes carry each label."""
    labels = [store.meta(i).success for i in range(store.num_episodes)]
    return {NAMES[k]: sum(v is k for v in labels) for k in (True, False, None)}


def main(argv: list[str]) -> int:
    from reverie.config import split_args

    words, overrides = split_args(argv)
    if words[:1] == ["label"]:
        words = words[1:]
    if "-h" in words or "--help" in words:
        print(__doc__)
        return 0
    if len(words) != 1:
        raise ReverieError(f"`data label` takes one STORE path, got {words or 'none'}\n{USAGE}")
    opts = dict(o.split("=", 1) for o in overrides)
    unknown = set(opts) - {"episodes", "success"}
    missing = {"episodes", "success"} - set(opts)
    if unknown or missing:
        raise ReverieError("`data label` takes episodes= and success=" + (f", not {sorted(unknown)}" if unknown else "")
                           + (f"; missing {sorted(missing)}" if missing else "") + f"\n{USAGE}")
    out = label(words[0], opts["episodes"], opts["success"])
    c = out["counts"]
    print(f"labelled {len(out['episodes'])} episode(s) {NAMES[out['success']]} ({out['changed']} changed) in "
          f"{words[0]}\nnow: {c['success']} success, {c['failure']} failure, {c['unknown']} unknown")
    return 0
