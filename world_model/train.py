"""`reverie train-wm world_model=<rssm|shortcut> data=STORE[,STORE...] preset=<tiny|cpu|s|m|l> steps=N out=RUN_DIR`

Backend-agnostic: the backend comes from the registry (world_model/backend.py) and is used only
through `loss(batch)`, plus `observe` / `imagine` / `decode` for the TensorBoard images. The same
loop runs single-process (CPU or GPU) and under `torchrun` (DDP, or FSDP when the preset says so).

Resume: `resume=true` continues the run in `out`; `resume=PATH` starts from the checkpoint at PATH (a
run or checkpoint folder) and writes to `out`. Step counter, optimiser state, torch
RNG and the data sampler's RNG all continue, so a resumed CPU run equals an uninterrupted one (with
`augment` on, the same windows, but the augmentations' coins start again from the run's seed).

Schedule and averaging: `warmup=N lr_end=F` warm the rate up linearly, then decay it on a cosine to
lr * F by the end of the steps or of `minutes`; `ema=0.999` keeps a moving average of the weights
(world_model/ema.py) that the checkpoint hands to evaluation, policy training and export.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from reverie.config import command_config, show
from reverie.datasets.augment import window_augment
from reverie.errors import ConfigError
from reverie.world_model import checkpoint, distributed, networks
from reverie.world_model.backend import build, model_config, option, replay_policy
from reverie.world_model.data import TrainData
from reverie.world_model.ema import EMA

log = logging.getLogger(__name__)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decoupled decay on the weight matrices (linear, embedding) only. Norm gains and
    biases stay undecayed: pulling a gain to zero fights the normalisation it scales. With no decay
    one group, so checkpoints from before the split resume unchanged."""
    if weight_decay <= 0:
        return [{"params": list(model.parameters()), "weight_decay": 0.0}]
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": matrices, "weight_decay": weight_decay}, {"params": vectors, "weight_decay": 0.0}]


class Trainer:
    """One training run; `run()` trains to `steps` and checkpoints. Attributes are for tests/tools."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.mcfg = model_config(cfg)
        self.steps = checked_steps(cfg, self.mcfg)  # before any process group, data or model
        self.device = distributed.setup(cfg.device)
        self.rank, self.world = distributed.rank(), distributed.world()
        torch.set_num_threads(int(cfg.threads) or auto_threads(distributed.local_world()))
        self.backend = cfg.world_model.name
        self.out, resume_from = _resolve_run_dir(cfg)
        torch.manual_seed(cfg.seed * 1000 + self.rank)

        augment = window_augment(cfg.augment, cfg.seed * 1000 + self.rank, "augment")
        if augment is not None and option(self.mcfg, "describe"):
            raise ConfigError("augment.colour_swap / augment.mirror rename the instruction's words but not the "
                              "per-step narration world_model.describe=true learns: set one of them off")
        self.data = TrainData(cfg, self.mcfg, rank=self.rank, world=self.world, device=self.device, augment=augment)
        self.model = build(self.backend, self.mcfg, self.data.spec).to(self.device)
        # speed switches that keep the math (tests/test_train_speed.py): the hand-written RMSNorm and
        # channels_last convolutions
        networks.set_fused_norm(self.model, bool(cfg.fused_norm), bool(cfg.compile_norm))
        networks.set_channels_last(self.model, bool(cfg.channels_last))
        fsdp = bool(option(self.mcfg, "fsdp") if cfg.fsdp is None else cfg.fsdp)
        self.module = distributed.wrap(self.model, self.device, fsdp, bool(cfg.compile))
        groups = param_groups(self.model, float(self.mcfg.weight_decay))
        self.optimizer = torch.optim.AdamW(groups, lr=self.mcfg.lr, eps=self.mcfg.adam_eps)
        decay = cfg.ema if cfg.ema is not None else option(self.mcfg, "ema")
        self.ema = EMA(self.model, float(decay)) if decay else None
        self.step = 0
        if resume_from is not None:
            state = checkpoint.load_training(resume_from, self.model, self.optimizer, self.ema, self.mcfg)
            if state["backend"] != self.backend:
                raise ConfigError(f"resume: checkpoint holds a {state['backend']!r} model but "
                                  f"world_model={self.backend}; pass world_model={state['backend']}")
            self.step = int(state["step"])
            # loading restored the checkpoint's decay; the config's rules, as the schedule's lr does
            for group, wanted in zip(self.optimizer.param_groups, groups):
                group["weight_decay"] = wanted["weight_decay"]
            if self.ema is not None:  # the decay's ramp continues (0: a fresh average at these weights)
                self.ema.updates = int(state.get("ema_updates", 0))
            self.data.set_state(state["data_rng"][str(self.rank)] if self.world > 1
                                else state["data_rng"]["0"])
            self.data.normalizer = checkpoint.normalizer(state)  # the units it was trained in (old: identity)
            log.info("resumed %s at step %d", resume_from, self.step)
        self.data.start_stream(self.step, int(cfg.prefetch))  # workers > 0; the prefetch thread
        self.writer = None
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(show(cfg))
            self.writer = SummaryWriter(str(self.out))

    # ---------------------------------------------------------------------------------------------
    def train_step(self, batch, log: bool = True) -> dict[str, torch.Tensor]:
        """One update. The metrics stay 0-dim tensors (no host sync; `floats` reads them); log=False skips
        the per-module gradient norms, which only the logged steps show."""
        self.model.train()
        with distributed.autocast(self.device, self.cfg.precision):
            loss, metrics = self.module(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        metrics["grad_norm/total"] = _full(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.mcfg.grad_clip))
        if log:
            for name, child in self.model.named_children():
                grads = [_full(p.grad.detach().float().norm()) for p in child.parameters() if p.grad is not None]
                if grads:
                    metrics[f"grad_norm/{name}"] = torch.stack(grads).norm()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        return metrics

    def set_lr(self, done: float) -> float:
        """Linear warm-up over `warmup` steps, then cosine decay to lr * lr_end at done = 1 (lr_end null:
        constant). Transformers on a CPU budget gain most at the end of the decay."""
        lr = float(self.mcfg.lr) * min(1.0, (self.step + 1) / max(int(self.cfg.warmup or 0), 1))
        if self.cfg.lr_end is not None:
            end = float(self.cfg.lr_end)
            lr *= end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def run(self) -> "Trainer":
        cfg = self.cfg
        from tqdm import tqdm

        cap = f", capped at {cfg.minutes} min" if cfg.minutes else ""  # the bar names both budgets
        bar = tqdm(total=self.steps, initial=self.step, desc=f"train-wm {self.backend}{cap}",
                   unit="step", dynamic_ncols=True, disable=self.rank != 0 or not cfg.progress)
        frames = self.mcfg.batch_size * self.mcfg.seq_len * self.world
        tick, tick_step = time.perf_counter(), self.step
        budget, start = (60 * float(cfg.minutes) if cfg.minutes else None), time.monotonic()
        used = 0.0  # fraction of the time budget spent, agreed over ranks (same stop step, same lr)
        while self.step < self.steps:
            self.set_lr(max(self.step / self.steps, used))  # the step or the time budget, if sooner
            batch = self.data.next()
            logged = (self.step + 1) % cfg.log_every == 0 or self.step + 1 == self.steps
            metrics = self.train_step(batch, log=logged)
            self.step += 1
            bar.update(1)
            if logged:
                metrics = distributed.all_mean(floats(metrics), self.device)  # the one host sync
                now = time.perf_counter()
                metrics["perf/lr"] = self.optimizer.param_groups[0]["lr"]
                metrics["perf/frames_per_s"] = frames * (self.step - tick_step) / max(now - tick, 1e-9)
                tick, tick_step = now, self.step
                # With a time cap, the share of it spent: whichever of steps and time reaches 100% ends the run.
                bar.set_postfix(loss=f"{metrics['loss/total']:.3g}", fps=f"{metrics['perf/frames_per_s']:.0f}",
                                **({"time": f"{100 * used:.0f}%"} if budget is not None else {}))
                if self.writer:
                    for k, v in metrics.items():
                        self.writer.add_scalar(k, v, self.step)
            if self.writer and cfg.image_every and (self.step % cfg.image_every == 0 or self.step == 1):
                self.log_images(batch)
            if budget is not None:
                used = _max_over_ranks(time.monotonic() - start, self.device) / budget
            out_of_time = used >= 1
            if self.step % cfg.save_every == 0 or self.step == self.steps or out_of_time:
                self.save()
            if out_of_time:
                log.warning("the %s-minute cap ended the run at step %d of %d: a run on a faster or less loaded "
                            "machine gets more steps; for reproducible results give steps= and no minutes=",
                            cfg.minutes, self.step, self.steps)
                break
        bar.close()
        self.data.stop()
        if self.writer:
            self.writer.close()
        return self

    def save(self) -> Path:
        trainer = {"step": self.step, "backend": self.backend, "spec": self.data.spec.to_json(),
                   "stores": self.data.paths, "holdout": float(self.cfg.holdout),
                   "image_key": self.cfg.image_key, "normalizer": self.data.normalizer.to_json(),
                   "data_rng": self.data.gather_state()}
        if self.ema is not None:
            trainer["ema_updates"] = self.ema.updates
        return checkpoint.save(self.out, self.model, self.optimizer, self.cfg, trainer, self.ema)

    @torch.no_grad()
    def log_images(self, batch) -> None:
        """Real frames above open-loop predictions (context: the first half of the window)."""
        self.model.eval()
        b = {k: v[:1] for k, v in batch.items()}                              # one sequence
        t = b["image"].shape[1]
        ctx = max(1, t // 2)
        context = {k: (v[:, :ctx] if v.dim() > 1 and v.shape[1] == t else v) for k, v in b.items()}
        with distributed.autocast(self.device, self.cfg.precision):
            state, _ = self.model.observe(context)
            traj = self.model.imagine(state, replay_policy(b["action"][:, ctx - 1:]), t - ctx)
            pred = self.model.decode(traj["state"])[0].float()                 # (t-ctx+1, H, W, 3)
        real = b["image"][0].float()                                            # (t, H, W, 3)
        pred = torch.cat([torch.zeros_like(real[:ctx - 1]), pred], 0)           # (t, H, W, 3)
        grid = torch.cat([real, pred], 1)                                       # (t, 2H, W, 3)
        grid = grid.permute(1, 0, 2, 3).reshape(grid.shape[1], -1, 3)           # (2H, t*W, 3)
        self.writer.add_image("real_vs_openloop", grid.clamp(0, 1).cpu().numpy(), self.step,
                              dataformats="HWC")


def checked_steps(cfg, mcfg) -> int:
    """The run's steps, once the budget and schedule keys are known to make sense: refused before any
    data or model is built, not a run that trains nothing, or fails at its first log or save."""
    for key in ("steps", "minutes", "ema", "lr_end"):  # null defaults: hydra cannot check their kind
        value = cfg[key]
        if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
            raise ConfigError(f"{key}={value} must be a number (or null)")
    steps = cfg.steps if cfg.steps is not None else option(mcfg, "steps")
    if steps is None:  # a backend whose sizes come from its own YAML need not set a default run length
        raise ConfigError(f"steps=null and neither the preset nor world_model={cfg.world_model.name} sets "
                          "`steps`: pass steps=N")
    steps = int(steps)
    if steps < 1:
        raise ConfigError(f"steps={steps}: train at least one step (e.g. steps=1000); a run of none "
                          "would write no checkpoint")
    if cfg.minutes is not None and not cfg.minutes > 0:
        raise ConfigError(f"minutes={cfg.minutes} must be positive, or null for no time cap")
    for key, least in (("log_every", 1), ("save_every", 1), ("image_every", 0), ("threads", 0), ("workers", 0),
                       ("prefetch", 0)):
        if cfg[key] < least:
            raise ConfigError(f"{key}={cfg[key]} must be at least {least}")
    for key in ("batch_size", "seq_len"):
        if int(mcfg[key]) < 1:
            raise ConfigError(f"preset.{cfg.world_model.name}.{key}={mcfg[key]} must be at least 1")
    return steps


def floats(metrics: dict) -> dict[str, float]:
    """Metrics (0-dim tensors or numbers) -> floats, in one device-to-host copy."""
    device = next((v.device for v in metrics.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
    values = [v.detach().float().reshape(()) if isinstance(v, torch.Tensor)
              else torch.tensor(float(v), device=device) for v in metrics.values()]
    return dict(zip(metrics, torch.stack(values).tolist())) if values else {}


def auto_threads(local_ranks: int = 1) -> int:
    """threads=0: the machine's physical cores shared by its ranks, at most 4 per process (small RSSM
    ops stop scaling there, and a 2-core box keeps the default of both). Measured: see
    benchmarks/results/world_model.json (threads rows)."""
    cores = _physical_cores()
    return max(1, min(4, cores // max(local_ranks, 1)))


def _physical_cores() -> int:
    """Cores this process may run on, counting SMT siblings once (Linux topology; else os.cpu_count)."""
    import os

    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        try:
            base = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            cores.add(((base / "physical_package_id").read_text().strip(), (base / "core_id").read_text().strip()))
        except OSError:
            cores.add(("", str(cpu)))
    return max(1, len(cores))


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a (possibly FSDP-sharded DTensor) value."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _max_over_ranks(value: float, device: torch.device) -> float:
    """The largest of every rank's value (ranks' clocks differ; their decisions must not)."""
    if not distributed.is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t.item())


def _resolve_run_dir(cfg) -> tuple[Path, Path | None]:
    resume = cfg.resume
    if resume in (None, False, "false", "False", ""):
        return Path(cfg.out), None
    if resume in (True, "true", "True"):
        return Path(cfg.out), checkpoint.find(cfg.out)
    return Path(cfg.out), checkpoint.find(resume)


def main(argv: list[str]) -> int:
    cfg = command_config("train_wm", argv, __doc__)
    if cfg is None:
        return 0
    try:
        trainer = Trainer(cfg).run()
        if trainer.rank == 0:
            print(f"trained {trainer.backend} for {trainer.step} steps; checkpoint: {trainer.out / 'checkpoint'}")
    finally:
        distributed.teardown()
    return 0
