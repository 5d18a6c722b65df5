"""Bundles for the export and runtime tests, built once per pytest session and shared between the
three test files through the session's base temp folder (pytest runs them in one process).

quick_bundle:    an untrained behaviour-cloning-from-scratch policy on a synthetic 64x64 store,
                 exported for the virtual SO-101 with a short parity check (seconds).
trained_bundles: the issue's end-to-end path: scripted sim demos -> tiny world model (rssm and
                 shortcut) -> behaviour-cloned agent -> export with the 1,000-step parity check
                 (minutes: used by tests marked slow).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

LAUNCH = "import sys; from reverie.cli import main; sys.exit(main())"
# Run a command through the CLI and report which heavy modules it imported.
PROBE = ("import sys; from reverie.cli import main; rc = main(sys.argv[1:]); "
         "print('IMPORTED', sorted(m for m in ('torch', 'omegaconf', 'hydra', 'zarr', 'transformers') "
         "if m in sys.modules), flush=True); sys.exit(rc)")


def synthetic_store(path: Path, episodes: int = 2, length: int = 30, seed: int = 0,
                    texts: tuple[str, ...] = ("touch the red cube", "push the blue cube to the left"),
                    success: bool = False) -> Path:
    from reverie.datasets.schema import make_schema
    from reverie.datasets.store import EpisodeStore

    rng = np.random.default_rng(seed)
    store = EpisodeStore.create(path, make_schema({"front": (64, 64)}, 6, 6), fps=30.0, robot="sim/so101")
    for e in range(episodes):
        with store.episode_writer(instruction=texts[e % 2], source="scripted") as w:
            for t in range(length):
                w.add({"image/front": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                       "state": rng.normal(0, 0.5, 6).astype(np.float32),
                       "action": rng.uniform(-1, 1, 6).astype(np.float32), "action_mask": t < length - 1,
                       "reward": np.float32(0), "is_first": t == 0, "is_last": t == length - 1,
                       "is_terminal": False, "timestamp": np.float64(t / 30)})
            w.commit(success=success)
    store.close()
    return path


def export(policy: Path, out: Path, *overrides: str) -> Path:
    from reverie.config import compose
    from reverie.export.onnx_export import export as run_export

    return run_export(compose("export", [f"policy={policy}", f"out={out}", *overrides]))


def quick_bundle(base: Path) -> Path:
    out = base / "quick" / "bundle"
    if (out / "manifest.json").exists():
        return out
    import torch

    from reverie.policy.scratch_bc import ScratchPolicy, save

    torch.manual_seed(0)
    store = synthetic_store(base / "quick" / "store.zarr")
    policy = ScratchPolicy(16, 6, 6, cnn_depth=4, units=32, layers=1)
    ckpt = save(base / "quick" / "scratch", policy.eval(), {"image_key": "image/front", "stores": [str(store)]})
    return export(ckpt, out, "arm=so101_virtual", "parity_steps=40")


def trained_bundles(base: Path) -> dict[str, Path]:
    """{"rssm": bundle, "shortcut": bundle}, exported for the virtual SO-101 at 30 Hz."""
    root = base / "trained"
    outs = {b: root / f"bundle_{b}" for b in ("rssm", "shortcut")}
    if all((p / "manifest.json").exists() for p in outs.values()):
        return outs
    from reverie.config import compose
    from reverie.policy.train import train
    from reverie.sim.demos import record
    from reverie.world_model.train import Trainer

    store = root / "demos.zarr"
    if not store.exists():  # skill 0.3: long, fumbling episodes, 1,000+ rows from 20 of them
        record(compose("sim_demos", ["task=all", "episodes=20", "skill=0.3", f"out={store}",
                                     "control_hz=30"]))
    for b, out in outs.items():
        Trainer(compose("train_wm", ["preset=tiny", f"world_model={b}", f"data={store}",
                                     f"out={root / f'wm_{b}'}", "steps=5", "progress=false"])).run()
        agent = train(compose("train_agent", ["stage=bc", f"wm={root / f'wm_{b}'}", f"out={root / f'agent_{b}'}",
                                              "steps=3", "progress=false"]))
        export(agent.parent, out, "arm=so101_virtual", "overwrite=true")
    return outs


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", PROBE, *args]


def assert_torque_never_enabled(link) -> None:
    """A refused deployment must stop before connect(): no servo on the virtual arm at `link` has torque."""
    from reverie.robot_io.bus import ServoBus

    bus = ServoBus(str(link), "feetech", timeout_s=0.1)
    bus.connect()
    try:
        assert not any(bus.read(i, "Torque_Enable") for i in range(1, 7))
    finally:
        bus.close()
