"""`reverie improve rounds=R env=arm/touch wm=WM_RUN agent=AGENT prior=BC_AGENT data=STORE[,..] out=DIR`

Corrective data rounds (Dreamer 4): each round k
  1. deploys the current policy in the environment and records its episodes into a new store
     (source=policy, round=k, success labels from the environment);
  2. fine-tunes the world model on all data so far (the demos plus every round's episodes);
  3. continues imagination RL from the current agent with a weaker prior (beta * prior_decay^k);
     a pixel BC (train-agent stage=bc_scratch) instead continues its cloning on all data so far for
     bc_steps, its success weights keeping the episodes that succeeded (steps 2-3 by kind: ROUNDS);
  4. evaluates, and appends a row to the per-round table (improve.md / improve.json / improve.png).
Every round's store, world model and agent are kept under `out/round_<k>/`. `device=` applies to
every stage: the deployed and evaluated controllers, the fine-tune and the RL.
With env=robot/<arm config> (link=PTY for the virtual robot, port=DEV operator=keyboard for a real
arm; robot_io/robot_env.py) step 1 runs on the robot, and the operator may take over with teleop
(key `c`): those rows are stored with correction=True and the episode with source=correction.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from reverie.config import command_config, compose
from reverie.errors import ConfigError
from reverie.policy.record import record_rollouts


def improve(cfg) -> dict:
    from reverie.policy.checkpoint import world_model_of
    from reverie.policy.evaluate import env_options, evaluate, plot
    from reverie.policy.loading import load_controller
    from reverie.world_model import checkpoint as wm_checkpoint
    from reverie.world_model.distributed import pick_device

    pick_device(cfg.device)  # a bad or absent device fails here, before any round starts
    agent_dir = str(cfg.agent)
    pixel_bc = _kind(agent_dir) == "scratch_bc.json"  # refuses a folder no round can update, before anything runs
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    # the BC-fine-tuned model, when the agent has one; a pixel BC reads only wm='s data choices
    wm_run = str(cfg.wm) if pixel_bc else world_model_of(agent_dir, cfg.wm)
    prior = str(cfg.prior or cfg.agent)
    _, wm_cfg, wm_info = wm_checkpoint.load_model(wm_run)
    trained_on = json.loads((Path(agent_dir) / "scratch_bc.json").read_text())["stores"] if pixel_bc else wm_info["stores"]
    stores = list(cfg.data) if cfg.data else list(trained_on)
    env_kwargs = env_options(cfg)  # env_kwargs plus the robot shortcuts link=/port=/operator=
    rows = {}
    if cfg.eval_start:
        rows["round 0"] = evaluate(load_controller(agent_dir, cfg.device), cfg.env,
                                   int(cfg.eval_episodes), list(cfg.suites), env_kwargs=env_kwargs,
                                   progress=cfg.progress)
    for k in range(1, int(cfg.rounds) + 1):
        rdir = out / f"round_{k}"
        # 1. deploy and record
        store_path = rdir / "policy.zarr"
        if store_path.exists():
            raise ConfigError(f"{store_path} exists: each round writes a new store; pass a new out=")
        deployed = record_rollouts(load_controller(agent_dir, cfg.device), cfg.env, int(cfg.episodes),
                                   store_path, k, seed=int(cfg.seed) + 1000 * k, env_kwargs=env_kwargs,
                                   progress=cfg.progress)
        stores.append(str(store_path))
        # 2-3. the policy's kind updates it on every store so far
        agent_dir, made = ROUNDS[_kind(agent_dir)](cfg, k, agent_dir, prior, wm_run, wm_cfg, stores, rdir)
        wm_run = made.get("world_model", wm_run)
        # 4. evaluate
        report = evaluate(load_controller(agent_dir, cfg.device), cfg.env, int(cfg.eval_episodes),
                          list(cfg.suites), env_kwargs=env_kwargs, progress=cfg.progress)
        rows[f"round {k}"] = report | {"deployed": deployed, "agent": agent_dir, "world_model": wm_run,
                                       "store": str(store_path)} | made
        _write_table(rows, out)
    _write_table(rows, out)
    plot({name: r[cfg.suites[0]] for name, r in rows.items()}, out / "improve.png",
         f"success per round ({cfg.suites[0]})")
    return rows


def _world_model_round(cfg, k, agent_dir, prior, wm_run, wm_cfg, stores, rdir) -> tuple[str, dict]:
    """An agent on world-model features: fine-tune the world model on everything, then more
    imagination RL with a weaker prior (beta * prior_decay^k)."""
    from reverie.policy import train as agent_train
    from reverie.world_model import checkpoint as wm_checkpoint
    from reverie.world_model.train import Trainer

    prev_step = json.loads((wm_checkpoint.find(wm_run) / "trainer.json").read_text())["step"]
    # The saved, resolved training config keeps backend and size preset; only data and run change.
    ft_cfg = OmegaConf.merge(wm_cfg, {"data": list(stores), "out": str(rdir / "wm"), "resume": wm_run,
                                      "steps": prev_step + int(cfg.wm_steps), "seed": int(cfg.seed) + k,
                                      "progress": bool(cfg.progress), "device": str(cfg.device)})
    Trainer(ft_cfg).run()
    wm_run = str(rdir / "wm")
    beta = float(cfg.beta) * float(cfg.prior_decay) ** k
    rl_overrides = ["stage=rl", f"wm={wm_run}", f"init={agent_dir}", f"prior={prior}",
                    f"data=[{','.join(repr(s) for s in stores)}]", f"out={rdir}",
                    f"steps={int(cfg.rl_steps)}", f"rl.beta={beta}", f"seed={int(cfg.seed) + k}",
                    f"progress={cfg.progress}", f"device={cfg.device}"]
    return str(agent_train.train(compose("train_agent", rl_overrides))), {"beta": beta, "world_model": wm_run}


def _pixel_bc_round(cfg, k, agent_dir, prior, wm_run, wm_cfg, stores, rdir) -> tuple[str, dict]:
    """The pixel BC (stage=bc_scratch): continue its cloning for bc_steps on the demos plus every
    round's episodes, with the settings it was trained with (its config.yaml); its success weights
    keep the successful episodes, so what it got right (and an operator's corrected episodes that
    ended well) joins the demos it clones."""
    from reverie.policy import train as agent_train

    saved = OmegaConf.load(Path(agent_dir) / "config.yaml")
    run = OmegaConf.merge(saved, {"init": str(agent_dir), "data": list(stores), "out": str(rdir / "agent"),
                                  "steps": int(cfg.bc_steps), "seed": int(cfg.seed) + k,
                                  "progress": bool(cfg.progress), "device": str(cfg.device)})
    return str(agent_train.train(run)), {"bc_steps": int(cfg.bc_steps)}


# a policy folder's marker file -> how a round updates that kind of policy
ROUNDS = {"agent.json": _world_model_round, "scratch_bc.json": _pixel_bc_round}


def _kind(agent_dir) -> str:
    for marker in ROUNDS:
        if (Path(agent_dir) / marker).exists():
            return marker
    raise ConfigError(f"agent={agent_dir} holds no policy a round can update (expected agent.json from "
                      "`reverie train-agent stage=bc|rl` or scratch_bc.json from stage=bc_scratch)")


def _write_table(rows: dict, out: Path) -> None:
    (out / "improve.json").write_text(json.dumps(rows, indent=1, default=str))
    first = next(iter(rows.values()))
    suites = [s for s in first if s != "deployed" and isinstance(first[s], dict) and "success_rate" in first[s]]
    lines = ["| round | " + " | ".join(f"{s} success [95% CI]" for s in suites) + " | deployed success |",
             "|---|" + "---|" * (len(suites) + 1)]
    for name, r in rows.items():
        cells = [f"{100 * r[s]['success_rate']:.1f}% [{100 * r[s]['ci95'][0]:.0f}, {100 * r[s]['ci95'][1]:.0f}]"
                 for s in suites]
        dep = r.get("deployed")
        lines.append(f"| {name} | " + " | ".join(cells) + " | "
                     + (f"{100 * dep['success_rate']:.1f}% of {dep['episodes']}" if dep else "-")
                     + (f" ({dep['corrected']} corrected)" if dep and dep.get("corrected") else "") + " |")
    (out / "improve.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    cfg = command_config("improve", argv, __doc__)
    if cfg is None:
        return 0
    rows = improve(cfg)
    print((Path(cfg.out) / "improve.md").read_text())
    return 0 if rows else 1
