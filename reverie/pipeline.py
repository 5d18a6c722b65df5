"""`reverie pipeline [task=touch] [backend=rssm] [preset=cpu] [out=DIR]`: the whole job, one command.

    demos          scripted teleoperator on the sim arm -> demos.zarr
    world model    train-wm on the demos, then eval-wm (open-loop metrics, real-vs-imagined GIF)
    bc             behaviour cloning on world-model features (and the from-scratch baseline)
    rl             imagination RL with the BC prior (no environment interaction)
    round 1        one corrective round: deploy, record, fine-tune the world model, more RL
    evaluate       success with 95% intervals for every stage; the final agent also on held-out
                   paraphrases and the shifted sim
    export         the ONNX bundle, verified against PyTorch
    deploy         the torch-free runtime drives the virtual serial robot, one instruction per run
                   (one of them a held-out paraphrase)

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

from omegaconf import OmegaConf

from reverie.config import command_config, compose, show
from reverie.errors import ReverieError

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
    rate = record(compose("sim_demos", [f"task={c.task}", f"episodes={c.demos.episodes}",
                                        f"skill={c.demos.skill}", f"time_limit={c.demos.time_limit}",
                                        f"seed={c.seed}", f"out={store}"]))
    run.success["teleoperator (demos)"] = {"success_rate": rate, "episodes": int(c.demos.episodes)}
    return store


def world_model(run: Run, store: Path) -> Path:
    from reverie.world_model.evaluate import evaluate, table
    from reverie.world_model.train import Trainer

    c = run.cfg
    out = run.out / "wm"
    overrides = [f"world_model={c.backend}", f"preset={c.choices.preset}", f"data={store}", f"out={out}",
                 f"seed={c.seed}", f"threads={c.threads}"]
    overrides += [f"steps={c.wm.steps}"] if c.wm.steps else []
    overrides += [f"minutes={c.wm.minutes}"] if c.wm.minutes else []
    Trainer(compose("train_wm", overrides)).run()
    e = c.wm_eval
    results = evaluate(compose("eval_wm", [f"checkpoint={out}", f"out={run.out / 'wm_eval'}", f"split={e.split}",
                                           f"context={e.context}", f"horizon={e.horizon}"]))
    print(table(results))
    run.results["wm_eval"] = results
    return out


def _agent_overrides(run: Run, wm: Path) -> list[str]:
    return [f"wm={wm}", f"seed={run.cfg.seed}", f"threads={run.cfg.threads}"]


def behaviour_cloning(run: Run, wm: Path) -> Path:
    from reverie.policy.train import train

    return train(compose("train_agent", ["stage=bc", f"out={run.out / 'bc'}", f"steps={run.cfg.bc.steps}",
                                         *_agent_overrides(run, wm)]))


def imagination_rl(run: Run, wm: Path, bc: Path) -> Path:
    from reverie.policy.train import train

    return train(compose("train_agent", ["stage=rl", f"init={bc}", f"out={run.out / 'rl'}",
                                         f"steps={run.cfg.rl.steps}", *_agent_overrides(run, wm)]))


def corrective_round(run: Run, wm: Path, rl: Path, bc: Path) -> Path:
    from reverie.policy.improve import improve

    c = run.cfg
    rows = improve(compose("improve", [
        f"wm={wm}", f"agent={rl}", f"prior={bc}", f"env=arm/{c.task}", f"out={run.out / 'improve'}",
        "rounds=1", f"episodes={c.improve.episodes}", f"wm_steps={c.improve.wm_steps}",
        f"rl_steps={c.improve.rl_steps}", f"eval_episodes={c.eval.episodes}", f"seed={c.seed}",
        *[f"+env_kwargs.{k}={v}" for k, v in (c.env_kwargs or {}).items()]]))
    run.success["round 1"] = rows["round 1"]["train"]
    return Path(rows["round 1"]["agent"])


def evaluate_stages(run: Run, agents: dict[str, Path], final: Path) -> dict:
    from reverie.policy.evaluate import evaluate, markdown, plot
    from reverie.policy.loading import load_controller

    c = run.cfg
    env_kwargs = OmegaConf.to_container(c.env_kwargs) if c.env_kwargs else {}
    for name, path in agents.items():
        if name in run.success:
            continue
        report = evaluate(load_controller(path), f"arm/{c.task}", int(c.eval.episodes), ["train"],
                          seed=10_000, env_kwargs=env_kwargs, out=run.out / "eval" / name)
        run.success[name] = report["train"]
    final_report = evaluate(load_controller(final), f"arm/{c.task}", int(c.eval.final_episodes),
                            ["train", "heldout", "shifted"], seed=20_000, env_kwargs=env_kwargs, videos=2,
                            out=run.out / "eval" / "final")
    (run.out / "eval" / "final.md").write_text(markdown(final_report, "final agent"))
    order = ["teleoperator (demos)", *agents]  # stage order, whatever order they were scored in
    run.success = {k: run.success[k] for k in order if k in run.success}
    rows = {k: v for k, v in run.success.items() if "ci95" in v}
    rows |= {f"final: {s}": final_report[s] for s in ("heldout", "shifted")}
    plot(rows, run.out / "success.png", f"arm/{c.task}: success per stage (95% Wilson CI)")
    return final_report


def export_bundle(run: Run, agent: Path) -> Path:
    """For the sim arm's twin on the virtual serial robot: same limits, scaling and rate as the sim."""
    bundle = run.out / "bundle"
    _reverie(["export", f"policy={agent}", f"out={bundle}", f"arm={run.cfg.deploy.arm}",
              f"parity_steps={run.cfg.export.parity_steps}"])
    return bundle


def deploy(run: Run, bundle: Path) -> list[dict]:
    """The torch-free runtime, in its own process, against `reverie sim serve-bus` on a pty.

    One fresh virtual robot per instruction: a new scene, scored for that instruction by the sim
    (serve-bus writes the score next to its link; the runtime reads it and reports success)."""
    c = run.cfg
    results = []
    for i, instruction in enumerate(c.deploy.instructions):
        link = run.out / "deploy" / f"arm{i}"
        link.parent.mkdir(parents=True, exist_ok=True)
        server = subprocess.Popen([_exe(), "sim", "serve-bus", f"protocol={c.deploy.protocol}", f"link={link}",
                                   f"seed={c.seed + i}", f"instruction={instruction}"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ready = server.stdout.readline()  # "ready <link>" once the first frame is rendered
            if not ready.startswith("ready"):
                raise ReverieError(f"the virtual robot did not start: {server.stderr.read()[-2000:]}")
            report = run.out / "deploy" / f"instruction_{i}.json"
            _reverie(["deploy", f"bundle={bundle}", "robot=virtual", f"link={link}",
                      f"instruction={instruction}", f"steps={c.deploy.steps}", f"report={report}"])
            result = json.loads(report.read_text())[0]
            results.append({"instruction": instruction, **result})
            print(f"deploy: {instruction!r}: success={result.get('success')}", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=20)
    return results


def _exe() -> str:
    """The `reverie` entry point of this environment (a script, so the repo root is not on sys.path)."""
    candidate = Path(sys.executable).parent / "reverie"
    return str(candidate) if candidate.exists() else "reverie"


def _reverie(args: list[str]) -> None:
    print(f"$ reverie {' '.join(args)}", flush=True)
    done = subprocess.run([_exe(), *args], env=os.environ.copy())
    if done.returncode != 0:
        raise ReverieError(f"`reverie {' '.join(args)}` failed with exit code {done.returncode}")


def learning_curves(run: Run, agents: dict[str, Path], path: Path) -> None:
    """World-model loss, BC negative log-likelihood and imagined return against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    events = EventAccumulator(str(run.out / "wm")).Reload()
    if "loss/total" in events.Tags()["scalars"]:
        points = events.Scalars("loss/total")
        axes[0].plot([p.step for p in points], [p.value for p in points])
    axes[0].set_title("world model loss")
    for ax, (name, key) in zip(axes[1:], (("bc", "bc/nll"), ("rl", "rl/return"))):
        info = json.loads((agents[name] / "agent.json").read_text())
        ax.plot([h["step"] for h in info["history"]], [h[key] for h in info["history"]])
        ax.set_title(f"{name}: {key}")
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


def write_report(run: Run, final: dict, deployed: list[dict]) -> Path:
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
    for suite in ("heldout", "shifted"):
        s = final[suite]
        lines.append(f"| final agent, {suite} | {s['episodes']} | {100 * s['success_rate']:.1f}% | "
                     f"[{100 * s['ci95'][0]:.0f}, {100 * s['ci95'][1]:.0f}] |")
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
    lines += ["", "## Deployment (torch-free runtime, virtual serial robot)", "",
              "| instruction | success | steps | achieved Hz | deadline misses |", "|---|---|---|---|---|"]
    for d in deployed:
        lines.append(f"| {d['instruction']} | {d.get('success')} | {d.get('steps', '-')} | "
                     f"{d.get('rate_hz', float('nan')):.1f} | {d.get('deadline_misses', '-')} |")
    lines += ["", "![success per stage](success.png)", "", "![learning curves](curves.png)", ""]
    path = run.out / "report.md"
    path.write_text("\n".join(lines))
    return path


def pipeline(cfg) -> Path:
    out = Path(cfg.out or f"runs/{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if out.exists() and any(out.iterdir()):
        raise ReverieError(f"report folder {out} exists and is not empty; pass a new out=")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(show(cfg))
    if cfg.threads:  # every in-process stage (evaluation, rounds) shares this setting
        import torch

        torch.set_num_threads(int(cfg.threads))
    run = Run(cfg, out)
    store = run.stage("demos", demos, run)
    wm = run.stage("world model", world_model, run, store)
    bc = run.stage("behaviour cloning", behaviour_cloning, run, wm)
    rl = run.stage("imagination RL", imagination_rl, run, wm, bc)
    final = run.stage("corrective round", corrective_round, run, wm, rl, bc)
    agents = {"behaviour cloning": bc, "imagination RL": rl, "round 1": final}
    final_report = run.stage("evaluate", evaluate_stages, run, agents, final)
    bundle = run.stage("export", export_bundle, run, final)
    deployed = run.stage("deploy", deploy, run, bundle)
    gif = out / "wm_eval" / "eval.gif"
    if gif.exists():
        (out / "wm_real_vs_imagined.gif").write_bytes(gif.read_bytes())
    learning_curves(run, {"bc": bc, "rl": rl}, out / "curves.png")
    report = write_report(run, final_report, deployed)
    print("\n" + report.read_text())
    print(f"report: {report}")
    return report


def main(argv: list[str]) -> int:
    cfg = command_config("pipeline", argv, __doc__, choices=True)
    if cfg is not None:
        pipeline(cfg)
    return 0
