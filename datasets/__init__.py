"""reverie.datasets: the zarr episode store, window sampler, statistics and importers."""

# Registers the lossy image codec with zarr, so `zarr.open` reads lossy stores after this import.
from reverie.datasets import codecs as _codecs  # noqa: F401
