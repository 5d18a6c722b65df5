import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.exists():
        pytest.fail(f"real fixtures not found at {FIXTURES}; the repository expects shared/ beside it")
    return FIXTURES


def _export_setup():
    """tests/export_setup.py (bundle builders shared by the export and runtime tests)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    import export_setup

    return export_setup


@pytest.fixture(scope="session")
def quick(tmp_path_factory) -> Path:
    """The untrained scratch-BC bundle for the virtual SO-101 (built once per session)."""
    return _export_setup().quick_bundle(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict:
    """Trained tiny rssm and shortcut bundles (minutes; slow tests only)."""
    return _export_setup().trained_bundles(tmp_path_factory.getbasetemp())
