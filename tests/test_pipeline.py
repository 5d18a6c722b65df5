"""The main job end to end at the tiny preset: every stage runs and the report folder is complete."""

import json
import subprocess
import sys
from pathlib import Path

TINY = ["preset=tiny", "demos.episodes=8", "demos.time_limit=30", "wm.steps=6", "pixel_bc.steps=5", "bc.steps=5", "rl.steps=3",
        "+improve.episodes=2", "improve.wm_steps=2", "improve.rl_steps=2", "eval.episodes=2",
        "eval.final_episodes=2", "deploy.steps=12", "deploy.episodes=2", "+wm_eval.split=all", "+wm_eval.context=4",
        "+wm_eval.horizon=8", "+export.parity_steps=100"]


def test_tiny_pipeline_writes_the_whole_report(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([str(Path(sys.executable).parent / "reverie"), "pipeline", f"out={out}", *TINY],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (out / "report.md").read_text()
    for stage in ("demos", "world model", "pixel BC", "world-model BC", "imagination RL", "corrective round",
                  "evaluate", "export", "deploy"):
        assert f"| {stage} |" in report
    for row in ("behaviour cloning, pixels", "behaviour cloning, world-model features", "imagination RL",
                "round 1", "final agent, train", "final agent, heldout", "final agent, shifted"):
        assert f"| {row} |" in report
    assert "Final agent: **" in report
    for f in ("success.png", "curves.png", "wm_real_vs_imagined.gif", "bundle/policy.onnx",
              "bundle/manifest.json", "improve/round_1/policy.zarr"):
        assert (out / f).exists(), f
    for i in range(3):  # two new scenes per instruction, each scored by the virtual robot
        episodes = json.loads((out / "deploy" / f"instruction_{i}.json").read_text())
        assert len(episodes) == 2 and all(e["steps"] == 12 and e["success"] in (True, False) for e in episodes)
    summary = json.loads((out / "deploy" / "summary.json").read_text())
    assert [s["episodes"] for s in summary] == [2, 2, 2]
    assert all(s["success_rate"] == s["successes"] / 2 for s in summary)
    assert "| poke the blue block | 2 |" in report  # the held-out paraphrase was deployed
    bundle = json.loads((out / "bundle" / "manifest.json").read_text())
    assert bundle["observation"].get("extra_images", []) in ([], [{"key": "image/wrist", "shape": [64, 64, 3],
                                                                   "dtype": "uint8"}])
    assert "| target cube x, y |" in report
    pixel_cfg = (out / "pixel_bc" / "config.yaml").read_text()  # the pipeline's augmentations reach the pixel BC
    assert "colour_swap: 0.5" in pixel_cfg and "mirror: 0.5" in pixel_cfg  # the cube probe of eval-wm (sim demos record the ground truth)


def test_pipeline_refuses_a_used_report_folder(tmp_path):
    (tmp_path / "old.txt").write_text("keep me")
    done = subprocess.run([str(Path(sys.executable).parent / "reverie"), "pipeline", f"out={tmp_path}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "not empty" in done.stderr
    assert (tmp_path / "old.txt").read_text() == "keep me"


def test_a_stage_section_becomes_the_commands_own_overrides():
    from omegaconf import OmegaConf

    from reverie.workflows.pipeline import settings

    section = OmegaConf.create({"steps": 3000, "bc_scratch": {"mirror": 0.5, "cameras": ["image/wrist"]},
                                "note": "it's a \\ test", "minutes": None, "finetune": True})
    assert settings(section) == ["steps=3000", "bc_scratch.mirror=0.5", "bc_scratch.cameras=['image/wrist']",
                                 "note='it\\'s a \\\\ test'", "minutes=null", "finetune=true"]
    assert settings(OmegaConf.create({})) == []


def test_a_typo_in_a_stage_setting_is_refused_before_anything_runs(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([str(Path(sys.executable).parent / "reverie"), "pipeline", f"out={out}",
                           "+pixel_bc.bc_scratch.mirrorr=0.5"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "`pixel_bc` settings are keys of `train_agent`" in done.stderr
    assert "did you mean bc_scratch.mirror=0.5" in done.stderr and not out.exists()
