"""docs/extending.md stays right: every file it names exists, and every `file:SYMBOL` it points at is
defined there (a renamed registry or moved module fails here, not in a reader's first try)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "extending.md"
# `path/to/file.py`, `reverie/conf/robot/<arm>.yaml` (templates skipped), `file.py:NAME`
REF = re.compile(r"`((?:[\w.]+/)+[\w.]+\.(?:py|yaml|toml))(?::(\w+))?")


def test_every_file_and_symbol_the_extending_guide_names_exists():
    refs = REF.findall(DOC.read_text())
    assert len(refs) > 20, "the guide names the files of each walkthrough"
    missing = [f for f, _ in refs if not (ROOT / f).exists()]
    assert not missing, f"docs/extending.md names files that do not exist: {sorted(set(missing))}"
    undefined = [f"{f}:{name}" for f, name in refs if name and not re.search(
        rf"^\s*(?:class |def )?{name}\b", (ROOT / f).read_text(), re.M)]
    assert not undefined, f"docs/extending.md points at names not defined there: {sorted(set(undefined))}"
