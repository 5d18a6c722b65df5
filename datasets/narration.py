"""Per-step narration in an episode store: what happened on arriving at each row, in words.

Storage (docs/dataset.md): an optional key `narration`, int16 per row, indexing a store-wide list of
distinct sentences kept in the user attributes (`attrs["narrations"]`); -1 means "not narrated"
(e.g. a video episode appended to a narrated store). Narrations are templated, so a store holds a few
dozen distinct strings over millions of rows: an index keeps the row arrays numeric (the in-memory
low-dim path, statistics and every zarr reader work unchanged) and text is looked up once per string.
The vocabulary is written before the rows that use it, so a committed row never points past it.
"""

from __future__ import annotations

import numpy as np

from reverie.errors import StoreError
from reverie.specs import ArraySpec

KEY = "narration"
ATTR = "narrations"
NONE = -1
SPEC = ArraySpec((), "int16", units=f"index into attrs['{ATTR}']; {NONE}: not narrated")


def with_narration(schema: dict[str, ArraySpec]) -> dict[str, ArraySpec]:
    return {**schema, KEY: SPEC}


def vocabulary(store) -> list[str]:
    return [str(s) for s in store.attrs.get(ATTR, [])]


class Vocabulary:
    """Sentence -> index for one store open for appending; new sentences are added to its attrs."""

    def __init__(self, store):
        self.store = store
        self.texts = vocabulary(store)
        self._index = {t: i for i, t in enumerate(self.texts)}

    def index(self, text: str | None) -> int:
        if text is None:
            return NONE
        text = str(text)
        if text not in self._index:
            if len(self.texts) >= np.iinfo(np.int16).max:
                raise StoreError(f"{self.store.url}: more than {len(self.texts)} distinct narrations; "
                                 "narrations are meant to be short templated sentences")
            self.texts.append(text)
            self._index[text] = len(self.texts) - 1
            self.store.update_attrs({ATTR: self.texts})  # before any row refers to it
        return self._index[text]


def texts(table: list[str], index: np.ndarray) -> list[str | None]:
    """(T,) indices -> T sentences, None where not narrated."""
    return [table[i] if 0 <= i < len(table) else None for i in np.asarray(index).tolist()]
