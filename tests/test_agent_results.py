"""benchmarks/agent.py keeps the rows other runs measured when a run re-measures some of them."""

import importlib.util
from pathlib import Path


def load_harness():
    spec = importlib.util.spec_from_file_location("agent_harness", Path(__file__).parents[1] / "benchmarks" / "agent.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_partial_run_merges_into_the_task_results():
    merged = load_harness().merged
    kept = {"demo_success": 0.72, "rows": {"bc from scratch": {"success_rate": 0.5}, "rl": {"success_rate": 0.2}},
            "seconds": {"0": {"bc from scratch": 10.0, "rl": 99.0}}, "wm_probe": {"0": {"r2": 0.1}}}
    new = {"demo_success": 0.72, "rows": {"bc from scratch": {"success_rate": 0.6}, "wrist": {"success_rate": 0.7}},
           "seconds": {"0": {"bc from scratch": 12.0}, "1": {"wrist": 5.0}}, "wm_probe": {"0": None}}
    out = merged(kept, new)
    assert {k: v["success_rate"] for k, v in out["rows"].items()} == {"bc from scratch": 0.6, "rl": 0.2, "wrist": 0.7}
    assert out["seconds"] == {"0": {"bc from scratch": 12.0, "rl": 99.0}, "1": {"wrist": 5.0}}
    assert out["wm_probe"] == {"0": {"r2": 0.1}}  # a scratch-only run measured no probe: the old one stays
    dropped = merged(kept, new, drop=("rl",))
    assert "rl" not in dropped["rows"] and "rl" not in dropped["seconds"]["0"]
