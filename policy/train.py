"""`reverie train-agent stage=<bc|rl|bc_scratch> wm=WM_RUN [data=STORE,...] out=AGENT_DIR [init=AGENT_DIR]`

stage=bc  behaviour cloning on world-model features: the frozen world model filters each window,
          the actor learns a_t from feat_t (and the instruction), the reward head learns r_t.
stage=rl  reinforcement learning purely in imagination (Dreamer 4): start from dataset contexts,
          roll the frozen world model forward with the actor, TD(lambda) returns from the agent's
          reward head and slow critic, PMPO on the sign of the advantage plus a reverse KL to the
          frozen behaviour-cloning prior. No environment interaction. With rewards.dllm.enabled=true
          the reward also holds DLLM's language-goal reward (policy/dllm.py): the world model
          describes each imagined step, and reaching the instruction pays once, scaled by novelty.
          Without DLLM, data with no recorded reward and no success label is refused (fix: `reverie
          data label`). rl.reward_steps > 0 first trains the reward head alone on data batches with
          the class-balanced loss of policy/reward.py.
stage=bc_scratch  the baseline without a world model (policy/scratch_bc.py, the "bc from scratch" row
          of benchmarks/agent.py): a reactive policy on one frame and the state. wm= still decides the
          data, camera, resolution and units (the world model's own), so the rows compare like for
          like; its weights are not loaded. Sizes: agent.* for the head, bc_scratch.* for the rest.
          Writes a folder `reverie eval` and `reverie export` take as policy=. Trains on the CPU.

device=auto|cpu|cuda|cuda:N puts the world model, agent, prior and batches on one device. As in
train-wm, precision=auto runs the frozen world model's passes (observe, imagine) under bf16 autocast
on GPU; their features are cast back to float32, so the heads' losses and the return math stay fp32.
Step functions return metrics as tensors: they are read back (a GPU sync) only every log_every steps.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from reverie.config import command_config, show
from reverie.errors import ConfigError, did_you_mean
from reverie.policy import checkpoint
from reverie.policy.agent import Agent
from reverie.policy import bc as bc_lib
from reverie.policy.data import AgentData
from reverie.policy.dllm import DLLMReward
from reverie.policy.pmpo import pmpo_loss
from reverie.policy.reward import calibration, check_reward_signal, reward_step
from reverie.datasets.augment import window_augment
from reverie.policy.returns import lambda_returns, trajectory_weights
from reverie.world_model import checkpoint as wm_checkpoint
from reverie.world_model import distributed

log = logging.getLogger(__name__)


def rl_step(wm, agent: Agent, prior: Agent, batch: dict, actor_opt, value_opt, c,
            dllm: DLLMReward | None = None, amp=contextlib.nullcontext) -> dict[str, torch.Tensor]:
    instr = batch["instruction_embedding"]                                 # (B, 384)
    with torch.no_grad():
        with amp():  # the frozen world model's passes; the actor samples inside imagine
            state, _ = wm.observe(batch)
            traj = wm.imagine(state, lambda f: agent.policy(f, instr).sample(), c.horizon)
        feat, action, cont = (traj[k].float() for k in ("feat", "action", "cont"))  # (B,H+1,F) (B,H,A) (B,H)
        reward = agent.predict_reward(feat[:, 1:], instr)                  # (B, H) extrinsic
    metrics = {}
    if dllm is not None:  # language-goal reward on top of the data's (all of it on unlabelled data)
        intrinsic, metrics = dllm(feat[:, 1:], instr)                      # (B, H)
        metrics["rl/extrinsic_reward"] = reward.mean()
        reward = reward + intrinsic
    with torch.no_grad():
        slow = agent.predict_value(feat, instr, slow=True)                 # (B, H+1)
        ret = lambda_returns(reward, cont, slow, c.gamma, c.lam)           # (B, H)
        weight = trajectory_weights(cont, c.gamma)                         # (B, H)
    start = feat[:, :-1]                                                   # (B, H, F)
    value_logits = agent.value_logits(start, instr)
    value = agent.twohot.mean(value_logits)
    advantage = ret - value.detach()
    dist = agent.policy(start, instr)
    kl = dist.kl(prior.policy(start, instr))                               # (B, H)
    actor_loss, pmpo_metrics = pmpo_loss(dist.log_prob(action).flatten(), advantage.flatten(),
                                         kl.flatten(), weight.flatten(), c.alpha, c.beta)
    metrics |= pmpo_metrics
    # Critic: two-hot regression to the returns, regularised toward the slow critic (DreamerV3).
    value_loss = (weight * (agent.twohot.loss(value_logits, ret)
                            + agent.twohot.loss(value_logits, slow[:, :-1]))).mean()
    actor_opt.zero_grad(set_to_none=True)
    value_opt.zero_grad(set_to_none=True)
    (actor_loss + value_loss).backward()
    torch.nn.utils.clip_grad_norm_(agent.actor.parameters(), 100.0)
    torch.nn.utils.clip_grad_norm_(agent.value.parameters(), 100.0)
    actor_opt.step()
    value_opt.step()
    agent.update_slow_value(c.slow_rate)
    metrics |= {"rl/return": ret.mean(), "rl/reward": reward.mean(), "rl/value": value.detach().mean(),
                "rl/advantage_abs": advantage.detach().abs().mean(), "rl/cont": cont.mean(),
                "rl/entropy": dist.entropy().detach().mean(), "rl/actor_loss": actor_loss.detach(),
                "rl/value_loss": value_loss.detach()}
    return metrics


def checked_stage(cfg) -> tuple[str, int]:
    """(stage, steps), refused before the world model loads when they cannot train."""
    stage, stages = str(cfg.stage), sorted(STAGES | BASELINES)
    if stage not in stages:
        raise ConfigError(f"stage={stage!r}{did_you_mean(stage, stages)}: choose one of {stages}")
    steps = cfg.steps if cfg.steps is not None else cfg[stage].steps
    if not (isinstance(steps, int) and not isinstance(steps, bool)) or steps < 1:
        raise ConfigError(f"steps={steps}: train at least one whole step (e.g. steps={cfg[stage].steps})")
    for key, least in (("log_every", 1), ("threads", 0)):
        if cfg[key] < least:
            raise ConfigError(f"{key}={cfg[key]} must be at least {least}")
    return stage, steps


def train(cfg) -> Path:
    stage, steps = checked_stage(cfg)
    torch.manual_seed(int(cfg.seed))
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if stage in BASELINES:
        return BASELINES[stage](cfg, steps)
    device = distributed.pick_device(cfg.device)
    wm_path = checkpoint.world_model_of(cfg.init, cfg.wm) if cfg.init else str(cfg.wm)
    if wm_path != str(cfg.wm):
        log.info("init=%s acts on the world model behaviour cloning fine-tuned for it: %s (not wm=%s)",
                 cfg.init, wm_path, cfg.wm)
    frame = int(cfg.bc.frame) if stage == "bc" and not cfg.init else 0
    wm, wm_cfg, wm_info = wm_checkpoint.load_model(wm_path, device, {"frame": frame} if frame else None)
    wm.requires_grad_(False)
    sc = cfg[stage]
    data = AgentData(cfg, wm_cfg, wm_info, batch_size=int(sc.batch_size),
                     seq_len=int(sc.seq_len if stage == "bc" else sc.context), device=device,
                     weights=sc.weights if stage == "bc" else None,  # rl: imagination starts from any row
                     augment=window_augment(sc, int(cfg.seed), "bc") if stage == "bc" else None)
    if stage == "rl" and not cfg.rewards.dllm.enabled:
        check_reward_signal(data)  # no reward and no success label: nothing for RL to optimise
    if cfg.init:
        agent, init_info = checkpoint.load(cfg.init, device)
        if agent.feat_dim != wm.feat_dim:
            raise ConfigError(f"init={cfg.init} was trained on features of size {agent.feat_dim}, "
                              f"the world model {cfg.wm} has {wm.feat_dim}; use a matching agent")
    else:
        if stage == "rl":
            raise ConfigError("stage=rl needs init=<behaviour-cloning agent> (its frozen copy is the prior); "
                              "run `reverie train-agent stage=bc ...` first")
        sizes = {k: v for k, v in OmegaConf.to_container(cfg.agent).items() if k != "ensemble"}  # ensemble: the controller's
        agent, init_info = Agent(wm.feat_dim, wm.spec.action_dim, wm.spec.instruction_dim, **sizes).to(device), {}
    # this data's rate of paying rows (policy/reward.py), when asked for
    agent.reward_calibration = calibration(data) if cfg.rewards.calibrate else None
    agent.train()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(show(cfg))
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    writer = SummaryWriter(str(out / "tb"))
    history = []
    step_fn = STAGES[stage](cfg, wm, agent, init_info, **({"data": data} if stage == "rl" else {}))
    bar = tqdm(total=steps, desc=f"train-agent {stage}", unit="step", dynamic_ncols=True,
               disable=not cfg.progress)
    tick = time.perf_counter()
    for step in range(1, steps + 1):
        metrics = step_fn(data.next())
        bar.update(1)
        if step % cfg.log_every == 0 or step == steps:
            metrics = {k: float(v) for k, v in metrics.items()}  # the only device -> host reads
            metrics["perf/steps_per_s"] = cfg.log_every / max(time.perf_counter() - tick, 1e-9)
            tick = time.perf_counter()
            history.append({"step": step, **metrics})
            for k, v in metrics.items():
                writer.add_scalar(k, v, step)
            key = "bc/nll" if stage == "bc" else "rl/return"
            bar.set_postfix({key.split("/")[1]: f"{metrics[key]:.3g}"})
    bar.close()
    writer.close()
    sizes = {"feat_dim": agent.feat_dim, "action_dim": agent.action_dim,
             "instr_dim": agent.instr_dim, **OmegaConf.to_container(cfg.agent)}
    world_model, finetuned = Path(wm_path).resolve(), wm_path != str(cfg.wm)
    if stage == "bc" and cfg.bc.finetune:  # the features the agent was trained on are the tuned model's
        world_model = wm_checkpoint.save_finetuned(wm_path, out / "world_model", wm, wm_cfg if frame else None)
        world_model, finetuned = world_model.resolve(), True
    # The train-wm run these features descend from (an RL agent on a BC-tuned copy keeps BC's base).
    base = Path(init_info["base_world_model"] if wm_path != str(cfg.wm) else cfg.wm).resolve()
    info = {"stage": stage, "steps": steps, "world_model": str(world_model), "finetuned_world_model": finetuned,
            "base_world_model": str(base),
            "backend": wm_info["backend"], "image_key": data.image_key, "sizes": sizes,
            "stores": data.paths, "holdout": float(cfg.holdout), "normalizer": data.normalizer.to_json(),
            "prior": str(cfg.prior or cfg.init or ""), "history": history,
            "reward_calibration": agent.reward_calibration,
            "lineage": [*init_info.get("lineage", []), {"stage": stage, "steps": steps}]}
    path = checkpoint.save(out / "agent", agent, info)
    log.info("agent saved to %s", path)
    return path


def _amp(cfg, wm):
    """A fresh autocast context per use, following train-wm's precision convention."""
    return lambda: distributed.autocast(wm.device, str(cfg.precision))


def _bc(cfg, wm, agent, init_info):
    opt, params = bc_lib.make_optimizer(wm, agent, cfg.bc)
    if cfg.bc.finetune:
        wm.train()
    return lambda batch: bc_lib.bc_step(wm, agent, batch, opt, cfg.bc, _amp(cfg, wm), params)


def _rl(cfg, wm, agent, init_info, data=None):
    """RL's step function; first `rl.reward_steps` reward-head-only steps on data batches (drawn with
    rewards.positive_fraction), after which imagination contexts are drawn without oversampling."""
    reward_steps = int(cfg.rl.reward_steps or 0)
    if reward_steps < 0:
        raise ConfigError(f"rl.reward_steps={reward_steps}: must be >= 0 (0 keeps the bc stage's reward head)")
    if reward_steps:
        if data is None:
            raise ConfigError("rl.reward_steps needs data batches; call _rl with data=AgentData(...)")
        reward_opt = torch.optim.Adam(agent.reward.parameters(), lr=float(cfg.bc.lr), eps=1e-6)
        metrics = {}
        for _ in range(reward_steps):
            metrics = reward_step(wm, agent, data.next(), reward_opt, _amp(cfg, wm))
        log.info("reward head: %d balanced steps before RL, %s", reward_steps,
                 ", ".join(f"{k} {float(v):.3g}" for k, v in metrics.items()))
    if data is not None:
        data.positive_fraction = 0.0  # imagination starts from the data's own distribution of contexts
    prior, _ = checkpoint.load(cfg.prior or cfg.init, wm.device)
    prior.requires_grad_(False)
    actor_opt = torch.optim.Adam(agent.actor.parameters(), lr=float(cfg.rl.lr), eps=1e-6)
    value_opt = torch.optim.Adam(agent.value.parameters(), lr=float(cfg.rl.value_lr), eps=1e-6)
    dllm = DLLMReward(wm, cfg.rewards.dllm) if cfg.rewards.dllm.enabled else None
    return lambda batch: rl_step(wm, agent, prior, batch, actor_opt, value_opt, cfg.rl, dllm, _amp(cfg, wm))


def _scratch_init(path):
    from reverie.policy import scratch_bc

    if not (Path(path) / "scratch_bc.json").exists():
        raise ConfigError(f"init={path}: stage=bc_scratch continues only a pixel BC (a folder with "
                          "scratch_bc.json); drop init= to train one from scratch")
    return scratch_bc.load(path)[0].train()


def train_bc_scratch(cfg, steps: int) -> Path:
    """stage=bc_scratch: the pixel baseline on the world model's data choices (see the module doc)."""
    from reverie.policy import scratch_bc

    init = _scratch_init(cfg.init) if cfg.init else None  # a corrective round continues a pixel BC
    _, wm_cfg, wm_info = wm_checkpoint.read(cfg.wm)
    sc = cfg.bc_scratch
    sample = str(sc.sample)
    # rows: windows of `chunk` rows that may start at any row, of which only the first is a sample
    seq_len, starts = (int(cfg.agent.chunk), "every") if sample == "rows" else (int(sc.seq_len), "fit")
    cameras = [str(c) for c in sc.cameras or []]  # beside the world model's camera
    swap, flip = float(sc.colour_swap), float(sc.mirror)
    data = AgentData(cfg, wm_cfg, wm_info, batch_size=int(sc.batch_size), seq_len=seq_len,
                     device=distributed.pick_device(cfg.device), weights=sc.weights, starts=starts,
                     cameras=cameras, augment=window_augment(sc, int(cfg.seed), "bc_scratch"))
    if data.image_key in cameras:
        raise ConfigError(f"bc_scratch.cameras={cameras} repeats the main camera {data.image_key!r}: "
                          "list only the extra cameras (e.g. bc_scratch.cameras=[image/wrist])")
    sizes = {**OmegaConf.to_container(cfg.agent), "cnn_depth": int(sc.cnn_depth), "keypoints": int(sc.keypoints),
             "norm": str(sc.norm)}  # cameras: from the data's extra cameras
    ensemble = sizes.pop("ensemble", None)  # how the controller executes chunks, not a network size
    if init is not None:
        mine = {**init.sizes, "cameras": 1 + len(cameras)}
        want = {**mine, "image_size": data.image_size, "state_dim": data.spec.state_dim,
                "action_dim": data.spec.action_dim, **{k: v for k, v in sizes.items() if k in mine}}
        if want != mine:
            diff = {k: (mine[k], want[k]) for k in mine if mine[k] != want[k]}
            raise ConfigError(f"init={cfg.init}: its network differs from this run's {diff} (init's, this run's); "
                              "continue it with the settings it was trained with (its config.yaml)")
    policy, history = scratch_bc.train_scratch_bc(data, steps, lr=float(sc.lr), progress=bool(cfg.progress),
                                                  shift=int(sc.shift), sample=sample,
                                                  weight_decay=float(sc.weight_decay),
                                                  loss=str(sc.loss), init=init, **sizes)
    info = {"stage": "bc_scratch", "steps": steps, "image_key": data.image_key,
            "image_keys": [data.image_key, *cameras], "stores": data.paths,
            "holdout": float(cfg.holdout), "base_world_model": str(Path(cfg.wm).resolve()), "history": history,
            "ensemble": ensemble, "colour_swap": swap, "mirror": flip,
            "init": str(Path(cfg.init).resolve()) if cfg.init else None}
    path = scratch_bc.save(Path(cfg.out), policy, info)
    (path / "config.yaml").write_text(show(cfg))
    log.info("behaviour cloning from scratch saved to %s", path)
    return path


STAGES = {"bc": _bc, "rl": _rl}        # agent stages: their step functions, on world-model features
BASELINES = {"bc_scratch": train_bc_scratch}  # stages that train another kind of policy, whole


def main(argv: list[str]) -> int:
    cfg = command_config("train_agent", argv, __doc__)
    if cfg is not None:
        train(cfg)
    return 0
