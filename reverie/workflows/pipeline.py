"""`reverie pipeline [task=touch] [backend=rssm] [preset=cpu] [out=DIR]`: the whole job, one command.

    demos          scripted teleoperator on the sim arm, every camera of `cameras` -> demos.zarr
    world model    train-wm on the demos (the first camera), then eval-wm (open-loop metrics,
                   real-vs-imagined GIF, the cube probe)
    pixel BC       behaviour cloning from every camera + state + instruction (stage=bc_scratch)
    world-model BC behaviour cloning on world-model features, fine-tuning the world model (stage=bc)
    rl             imagination RL from the world-model BC, which is also its prior (no env interaction)
    round 1        one corrective round: deploy, record, fine-tune the world model, more RL
    evaluate       success with 95% intervals for every stage; the best stage is the final agent,
                   scored again on fresh seeds, on held-out paraphrases and on the shifted sim
    export         the final agent's ONNX bundle, verified against PyTorch
    deploy         the torch-free runtime drives the virtual serial robot, `deploy.episodes` new
                   scenes per instruction (one of them a held-out paraphrase), success rate per instruction

Everything lands in the report folder (default runs/<timestamp>/): report.md, success.png,
curves.png, wm_real_vs_imagined.gif and every stage's checkpoints and stores.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from omegaconf import OmegaConf

from reverie.config import command_config, compose, show
from reverie.errors import ConfigError, ReverieError

log = logging.getLogger(__name__)


class Run:
    """Stage bookkeeping: prints each stage with its time and keeps results for the report."""

    def __init__(self, cfg, out: Path):
        self.cfg, self.out = cfg, out
        self.times: dict[str, float] = {}
        self.results: dict = {}
        self.success: dict[str, dict] = {}

    def stage(self, name: str, fn, *args):
        print(f"\n== {name} ==", flush=True)
        start = time.perf_counter()
        result = fn(*args)
        self.times[name] = time.perf_counter() - start
        print(f"== {name}: done in {self.times[name]:.0f} s", flush=True)
        self.results[name] = result
        return result


def demos(run: Run) -> Path:
    from reverie.sim.demos import record

    c = run.cfg
    store = run.out / "demos.zarr"
    rate = record(compose("sim_demos", [f"task={c.task}", f"cameras={_listed(c.cameras)}", f"seed={c.seed}",
                                        f"out={store}", *settings(c.demos)]))
    run.success["teleoperator (demos)"] = {"success_rate": rate, "episodes": int(c.demos.episodes)}
    return store


def world_model(run: Run, store: Path) -> Path:
    from reverie.world_model.evaluate import evaluate, table
    from reverie.world_model.train import Trainer

    c = run.cfg
    out = run.out / "wm"
    overrides = [f"world_model={c.backend}", f"preset={c.choices.preset}", f"data={store}", f"out={out}",
                 f"image_key=image/{c.cameras[0]}", f"seed={c.seed}", f"threads={c.threads}", *settings(c.wm)]
    Trainer(compose("train_wm", overrides)).run()
    results = evaluate(compose("eval_wm", [f"checkpoint={out}", f"out={run.out / 'wm_eval'}", *settings(c.wm_eval)]))
    print(table(results))
    run.results["wm_eval"] = results
    return out


def _agent_overrides(run: Run, wm: Path) -> list[str]:
    return [f"wm={wm}", f"seed={run.cfg.seed}", f"threads={run.cfg.threads}"]


def _listed(values) -> str:
    return f"[{','.join(str(v) for v in values)}]"


def settings(section) -> list[str]:
    """A stage's section of pipeline.yaml as overrides of the command it runs. Its keys are that
    command's own, nested as in its config (pixel_bc.bc_scratch.mirror -> bc_scratch.mirror), so each
    value has one source and the command's config checks it (unknown keys, wrong kinds)."""
    def value(v) -> str:
        if isinstance(v, list):
            return f"[{','.join(value(x) for x in v)}]"
        if v is None or isinstance(v, bool):
            return {None: "null", True: "true", False: "false"}[v]
        if isinstance(v, str):
            return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return repr(v)

    def flat(node: dict, prefix: str) -> list[str]:
        return [line for k, v in node.items()
                for line in (flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}={value(v)}"])]

    return flat(OmegaConf.to_container(section, resolve=True) if section else {}, "")


def env_kwargs(cfg) -> dict:
    """The sim arm of every evaluation and round: the demos' cameras and time limit, then env_kwargs."""
    extra = OmegaConf.to_container(cfg.env_kwargs) if cfg.env_kwargs else {}
    return {"cameras": list(cfg.cameras), "time_limit": int(cfg.demos.time_limit)} | extra


# pipeline.yaml section -> (the command config it holds keys of, the overrides that pick its variant)
STAGE_CONFIGS = {"demos": ("sim_demos", []), "wm": ("train_wm", []), "wm_eval": ("eval_wm", []),
                 "pixel_bc": ("train_agent", ["stage=bc_scratch"]), "bc": ("train_agent", ["stage=bc"]),
                 "rl": ("train_agent", ["stage=rl"]), "improve": ("improve", []), "export": ("export", [])}


def check_settings(cfg) -> None:
    """Every stage's section against its command's config before anything runs: a typo in the last
    stage's keys must not wait for the demos and the world model to surface."""
    for section, (name, variant) in STAGE_CONFIGS.items():
        try:
            compose(name, [*variant, *settings(cfg[section])], required=False)
        except ConfigError as e:
            raise ConfigError(f"the pipeline's `{section}` settings are keys of `{name}`: {e}") from None


def pixel_bc(run: Run, wm: Path) -> Path:
    """The world model's camera and every other one of `cameras`, one FiLM CNN each (the world model is
    read for its data choices only: camera, resolution, units)."""
    from reverie.policy.train import train

    extra = [f"image/{c}" for c in run.cfg.cameras[1:]]
    return train(compose("train_agent", ["stage=bc_scratch", f"out={run.out / 'pixel_bc'}",
                                         f"bc_scratch.cameras={_listed(extra)}", *_agent_overrides(run, wm),
                                         *settings(run.cfg.pixel_bc)]))


def behaviour_cloning(run: Run, wm: Path) -> Path:
    from reverie.policy.train import train

    return train(compose("train_agent", ["stage=bc", f"out={run.out / 'bc'}", *_agent_overrides(run, wm),
                                         *settings(run.cfg.bc)]))


def imagination_rl(run: Run, wm: Path, bc: Path) -> Path:
    from reverie.policy.train import train

    return train(compose("train_agent", ["stage=rl", f"init={bc}", f"out={run.out / 'rl'}",
                                         *_agent_overrides(run, wm), *settings(run.cfg.rl)]))


def corrective_round(run: Run, wm: Path, rl: Path, bc: Path) -> Path:
    from reverie.workflows.improve import improve

    c = run.cfg
    rows = improve(compose("improve", [
        f"wm={wm}", f"agent={rl}", f"prior={bc}", f"env=arm/{c.task}", f"out={run.out / 'improve'}",
        "rounds=1", f"eval_episodes={c.eval.episodes}", f"seed={c.seed}",
        *[f"+env_kwargs.{k}={_listed(v) if isinstance(v, list) else v}" for k, v in env_kwargs(c).items()],
        *settings(c.improve)]))
    run.success["round 1"] = rows["round 1"]["train"]
    return Path(rows["round 1"]["agent"])


def evaluate_stages(run: Run, agents: dict[str, Path]) -> tuple[str, dict]:
    """Every stage on the same seeds (from 10,000); the best one is the final agent, scored again on
    fresh seeds (from 20,000, so its figure is not the one it was picked on) in every suite."""
    from reverie.policy.evaluate import evaluate, markdown, plot
    from reverie.policy.loading import load_controller

    c = run.cfg
    kwargs = env_kwargs(c)
    for name, path in agents.items():
        if name in run.success:
            continue
        report = evaluate(load_controller(path), f"arm/{c.task}", int(c.eval.episodes), ["train"],
                          seed=10_000, env_kwargs=kwargs, out=run.out / "eval" / name)
        run.success[name] = report["train"]
    final = max(agents, key=lambda name: run.success[name]["success_rate"])  # the first of equals
    print(f"final agent: {final} ({100 * run.success[final]['success_rate']:.0f}% on the stage evaluation)")
    final_report = evaluate(load_controller(agents[final]), f"arm/{c.task}", int(c.eval.final_episodes),
                            ["train", "heldout", "shifted"], seed=20_000, env_kwargs=kwargs, videos=2,
                            out=run.out / "eval" / "final")
    (run.out / "eval" / "final.md").write_text(markdown(final_report, f"final agent ({final})"))
    order = ["teleoperator (demos)", *agents]  # stage order, whatever order they were scored in
    run.success = {k: run.success[k] for k in order if k in run.success}
    rows = {k: v for k, v in run.success.items() if "ci95" in v}
    rows |= {f"final: {s}": final_report[s] for s in ("train", "heldout", "shifted")}
    plot(rows, run.out / "success.png", f"arm/{c.task}: success per stage (95% Wilson CI)")
    return final, final_report


def export_bundle(run: Run, agent: Path) -> Path:
    """For the sim arm's twin on the virtual serial robot: same limits, scaling and rate as the sim."""
    bundle = run.out / "bundle"
    _reverie(["export", f"policy={agent}", f"out={bundle}", f"arm={run.cfg.deploy.arm}", *settings(run.cfg.export)])
    return bundle


DEPLOY_SEED = 30_000  # the virtual robot's scenes: disjoint from the demos' and every evaluation's


def deploy(run: Run, bundle: Path) -> list[dict]:
    """The torch-free runtime, in its own process, against `reverie sim serve-bus` on a pty.

    One virtual robot per instruction, serving every camera of `cameras`; the runtime asks it for a new
    scene at each episode after the first, and the sim scores each for that instruction (serve-bus
    writes the score next to its link; the runtime reads it and reports success). Returns one row per
    instruction: its episodes, successes and loop rate."""
    c = run.cfg
    rows = []
    for i, instruction in enumerate(c.deploy.instructions):
        link = run.out / "deploy" / f"arm{i}"
        link.parent.mkdir(parents=True, exist_ok=True)
        seed = DEPLOY_SEED + 100 * i
        server = subprocess.Popen([_exe(), "sim", "serve-bus", f"protocol={c.deploy.protocol}", f"link={link}",
                                   f"seed={seed}", f"instruction={instruction}", f"cameras={_listed(c.cameras)}"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ready = server.stdout.readline()  # "ready <link>" once the first frame is rendered
            if not ready.startswith("ready"):
                raise ReverieError(f"the virtual robot did not start: {server.stderr.read()[-2000:]}")
            report = run.out / "deploy" / f"instruction_{i}.json"
            _reverie(["deploy", f"bundle={bundle}", "robot=virtual", f"link={link}", f"instruction={instruction}",
                      f"episodes={c.deploy.episodes}", f"steps={c.deploy.steps}", f"seed={seed}",
                      f"report={report}"])
            episodes = json.loads(report.read_text())
        finally:
            server.terminate()
            server.wait(timeout=20)
        successes = sum(bool(e.get("success")) for e in episodes)
        rows.append({"instruction": instruction, "episodes": len(episodes), "successes": successes,
                     "success_rate": successes / max(1, len(episodes)),
                     "steps": sum(int(e.get("steps", 0)) for e in episodes),
                     "rate_hz": float(np.mean([e.get("rate_hz", np.nan) for e in episodes])),
                     "deadline_misses": sum(int(e.get("deadline_misses", 0)) for e in episodes)})
        print(f"deploy: {instruction!r}: {successes}/{len(episodes)} successful "
              f"({100 * rows[-1]['success_rate']:.0f}%)", flush=True)
    return rows


def _exe() -> str:
    """The `reverie` entry point of this environment (a script, so the repo root is not on sys.path)."""
    candidate = Path(sys.executable).parent / "reverie"
    return str(candidate) if candidate.exists() else "reverie"


def _reverie(args: list[str]) -> None:
    print(f"$ reverie {' '.join(args)}", flush=True)
    done = subprocess.run([_exe(), *args], env=os.environ.copy())
    if done.returncode != 0:
        raise ReverieError(f"`reverie {' '.join(args)}` failed with exit code {done.returncode}")


CURVE_KEYS = ("bc/mse", "bc/nll", "rl/return")  # each agent's history: the curve its panel shows


def learning_curves(run: Run, agents: dict[str, Path], path: Path) -> None:
    """World-model loss, each behaviour cloning's loss and the imagined return against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fig, axes = plt.subplots(1, 1 + len(agents), figsize=(3.6 * (1 + len(agents)), 3.2))
    events = EventAccumulator(str(run.out / "wm")).Reload()
    if "loss/total" in events.Tags()["scalars"]:
        points = events.Scalars("loss/total")
        axes[0].plot([p.step for p in points], [p.value for p in points])
    axes[0].set_title("world model loss")
    for ax, (name, folder) in zip(axes[1:], agents.items()):
        info_file = folder / ("scratch_bc.json" if (folder / "scratch_bc.json").exists() else "agent.json")
        history = json.loads(info_file.read_text())["history"]
        logged = history[0] if history else {}
        key = next((k for k in CURVE_KEYS if k in logged), next((k for k in logged if k != "step"), None))
        if key:
            ax.plot([h["step"] for h in history], [h[key] for h in history])
        ax.set_title(f"{name}: {key}", fontsize=9)
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def probe_report(probe: dict | None) -> list[str]:
    """eval-wm's cube probe (world_model/probe.py) -> report lines: a small table, or why it was skipped."""
    if not probe:
        return []
    if "skipped" in probe:
        return ["", f"Cube probe: skipped ({probe['skipped']})."]

    def r2(q: str, name: str) -> str:
        value = probe[q].get(name, {}).get("mean")
        return "-" if value is None else f"{value:.3f}"

    gate, pool = probe.get("passes_gate"), f"{probe['pool']}x{probe['pool']}"
    return ["", f"### Do the features carry the cubes? (ridge probe, R² on {probe['test_episodes']} held-out "
                f"episodes, fit on {probe['train_episodes']})", "",
            f"| probed | world-model features | pixels {pool} (baseline) | pixels {pool} + which cube is the target |",
            "|---|---|---|---|",
            f"| every cube x, y | {r2('objects_xy', 'features')} | {r2('objects_xy', 'pixels')} | - |",
            f"| target cube x, y | {r2('target_xy', 'features')} | {r2('target_xy', 'pixels')} | "
            f"{r2('target_xy', 'pixels_given_target')} |", "",
            f"Gate (features, every cube x, y: R² >= {probe['gate']}): "
            f"**{'-' if gate is None else ('pass' if gate else 'fail')}**. The instruction, not the image, "
            "says which cube is the target, so plain pixels cannot place it."]


def write_report(run: Run, final_name: str, final: dict, deployed: list[dict]) -> Path:
    lines = ["# reverie pipeline report", "",
             f"Task `arm/{run.cfg.task}`, world model `{run.cfg.backend}` at preset `{run.cfg.choices.preset}`, "
             f"seed {run.cfg.seed}. Generated {datetime.datetime.now().isoformat(timespec='seconds')}.", "",
             "## Stage times", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in run.times.items()]
    lines += [f"| total | {sum(run.times.values()):.0f} |", "", "## Success per stage", "",
              "| stage | episodes | success | 95% CI |", "|---|---|---|---|"]
    for name, s in run.success.items():
        ci = f"[{100 * s['ci95'][0]:.0f}, {100 * s['ci95'][1]:.0f}]" if "ci95" in s else "-"
        lines.append(f"| {name} | {s['episodes']} | {100 * s['success_rate']:.1f}% | {ci} |")
    for suite in ("train", "heldout", "shifted"):
        s = final[suite]
        lines.append(f"| final agent, {suite} | {s['episodes']} | {100 * s['success_rate']:.1f}% | "
                     f"[{100 * s['ci95'][0]:.0f}, {100 * s['ci95'][1]:.0f}] |")
    lines += ["", f"Final agent: **{final_name}**, the best stage above (seeds from 10,000), scored again on "
                  "fresh seeds (from 20,000): the training phrasings, held-out paraphrases and the shifted sim. "
                  "It is the one exported and deployed."]
    wm = run.results.get("wm_eval", {})
    if wm and "per_horizon" in wm:  # a tokenizer-only shortcut run has reconstruction figures only
        ph = wm["per_horizon"]
        lines += ["", f"## World model (open loop, {'held-out' if wm['split'] == 'holdout' else 'all'} episodes)", "",
                  f"Beats copy-last-frame at every horizon 1..{wm['horizon']}: "
                  f"**{wm['beats_copy_last_at_every_horizon']}**; image MSE at h=1 / h={wm['horizon']}: "
                  f"{ph['mse/model'][0]:.4f} / {ph['mse/model'][-1]:.4f} (copy-last "
                  f"{ph['mse/copy_last'][0]:.4f} / {ph['mse/copy_last'][-1]:.4f}).", "",
                  "![real vs imagined](wm_real_vs_imagined.gif)"]
        if "tokenizer" in wm:
            lines[-1:-1] = [f"Tokenizer reconstruction: MSE {wm['tokenizer']['mse']:.4f}, "
                            f"PSNR {wm['tokenizer']['psnr']:.2f} dB.", ""]
    lines += probe_report(wm.get("probe"))
    lines += ["", f"## Deployment (torch-free runtime, virtual serial robot, {run.cfg.deploy.steps} steps an episode)", "",
              "| instruction | episodes | successes | success | achieved Hz | deadline misses |", "|---|---|---|---|---|---|"]
    for d in deployed:
        lines.append(f"| {d['instruction']} | {d['episodes']} | {d['successes']} | {100 * d['success_rate']:.0f}% | "
                     f"{d['rate_hz']:.1f} | {d['deadline_misses']} |")
    lines += ["", "![success per stage](success.png)", "", "![learning curves](curves.png)", ""]
    path = run.out / "report.md"
    path.write_text("\n".join(lines))
    return path


def pipeline(cfg) -> Path:
    out = Path(cfg.out or f"runs/{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if out.exists() and any(out.iterdir()):
        raise ReverieError(f"report folder {out} exists and is not empty; pass a new out=")
    check_settings(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(show(cfg))
    if cfg.threads:  # every in-process stage (evaluation, rounds) shares this setting
        import torch

        torch.set_num_threads(int(cfg.threads))
    run = Run(cfg, out)
    store = run.stage("demos", demos, run)
    wm = run.stage("world model", world_model, run, store)
    pixels = run.stage("pixel BC", pixel_bc, run, wm)
    bc = run.stage("world-model BC", behaviour_cloning, run, wm)
    rl = run.stage("imagination RL", imagination_rl, run, wm, bc)
    improved = run.stage("corrective round", corrective_round, run, wm, rl, bc)
    agents = {"behaviour cloning, pixels": pixels, "behaviour cloning, world-model features": bc,
              "imagination RL": rl, "round 1": improved}
    final, final_report = run.stage("evaluate", evaluate_stages, run, agents)
    bundle = run.stage("export", export_bundle, run, agents[final])
    deployed = run.stage("deploy", deploy, run, bundle)
    (out / "deploy" / "summary.json").write_text(json.dumps(deployed, indent=1))
    gif = out / "wm_eval" / "eval.gif"
    if gif.exists():
        (out / "wm_real_vs_imagined.gif").write_bytes(gif.read_bytes())
    learning_curves(run, {"pixel BC": pixels, "world-model BC": bc, "rl": rl}, out / "curves.png")
    report = write_report(run, final, final_report, deployed)
    print("\n" + report.read_text())
    print(f"report: {report}")
    return report


def main(argv: list[str]) -> int:
    cfg = command_config("pipeline", argv, __doc__, choices=True)
    if cfg is not None:
        pipeline(cfg)
    return 0
