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
