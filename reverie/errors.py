"""Errors a user can cause. Each message names the problem and the fix; the CLI prints it without a
traceback and exits with status 2."""


class ReverieError(Exception):
    """Base class for user-facing errors (bad config, path, dataset, bundle, port, instruction)."""


class ConfigError(ReverieError):
    pass


class StoreError(ReverieError):
    pass


class HardwareError(ReverieError):
    pass


class BundleError(ReverieError):
    pass


def closest(word, options) -> str | None:
    """The option a mistyped `word` most likely meant, or None: two letters swapped (amr -> arm), or
    else difflib's ratio of at least 0.75, which takes dropped or moved letters (polcy, tny, setps)
    but not merely similar words (colour, holdout)."""
    import difflib

    word, options = str(word), [str(o) for o in options]
    swapped = [o for o in options if sorted(o) == sorted(word) and sum(a != b for a, b in zip(o, word)) == 2]
    near = swapped or difflib.get_close_matches(word, options, n=1, cutoff=0.75)
    return near[0] if near else None


def did_you_mean(word, options) -> str:
    """' (did you mean X?)' for the closest option, '' when none is close: to follow the bad word."""
    near = closest(word, options)
    return f" (did you mean {near}?)" if near else ""
