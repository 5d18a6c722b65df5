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


def _tiny_agent(root: Path, episodes: int, time_limit: int, wm_steps: int, bc_steps: int,
                holdout: float, agent_options: tuple = ()) -> dict:
    """Scripted touch demos -> tiny world model -> tiny BC agent under `root` (seconds), all on the CPU.
    `agent_options` join the train-agent overrides returned as `common`."""
    from reverie.config import compose
    from reverie.policy import train as agent_train
    from reverie.sim.demos import record
    from reverie.world_model.train import Trainer

    store = root / "demos.zarr"
    record(compose("sim_demos", ["task=touch", f"episodes={episodes}", "skill=1.0", f"out={store}",
                                 f"time_limit={time_limit}"]))
    Trainer(compose("train_wm", ["preset=tiny", f"data={store}", f"out={root / 'wm'}", f"steps={wm_steps}",
                                 "progress=false", f"holdout={holdout}", "device=cpu"])).run()
    common = [f"wm={root / 'wm'}", "progress=false", "log_every=1", f"holdout={holdout}", "bc.seq_len=6",
              "rl.context=4", "device=cpu", *agent_options]
    bc = agent_train.train(compose("train_agent", ["stage=bc", f"out={root / 'bc'}", f"steps={bc_steps}",
                                                   *common]))
    return {"root": root, "store": store, "wm": root / "wm", "bc": bc, "common": common}


@pytest.fixture(scope="session")
def tiny_agent():
    """The builder above, for tests that need a world model and a BC agent to act with."""
    return _tiny_agent
