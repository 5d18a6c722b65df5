"""The agent's reward head, trained with its classes balanced, and the check that data can teach it.

Success rewards are rare: on a touch store about 80 of 50k rows (0.16%) pay. Trained on every row
equally, the symexp two-hot head learns "0 everywhere" and imagination RL then optimises nothing.
`reward_loss` gives the rewarded rows (reward != 0) and the unrewarded rows each half of the batch's
weight (when the batch holds both; otherwise every row counts equally), so the head is pushed to
separate them however rare the positives are. The BC stage (policy/train.py `bc_step`) and the RL
stage's `rl.reward_steps` phase (`reward_step` below) both train the head with it; AgentData's
`rewards.positive_fraction` makes sure batches hold positives at all.

Balancing moves the head's prior: it learns P(reward | state) as if half the rows paid, so a state
that resembles the rewarded ones is predicted to pay almost surely (touch, 1,500 BC steps: 0.38 on
average on rows that do not pay, 44% of them above 0.5, against 0.78 on the rows that do; imagination
RL then optimised a reward of ~0.4 per step everywhere). `calibration(data)` measures the rate at which
training rows pay; with `rewards.calibrate=true` the agent's `predict_reward` moves the head's
log-odds back by logit(rate) (logit adjustment, the Bayes correction for a classifier trained at a
50% prior), exact when rewards take one nonzero value (success labels, sparse task rewards); with
several values the head is used as trained. Off by default: on touch (front + wrist, seed 0) the
calibrated reward gave imagination RL 23% [16, 32] against 30% [22, 40] uncalibrated: the head ranks
paying rows only 2.2:1 above the others, and that, not its prior, is what RL's advantages follow.

`check_reward_signal` refuses RL on data with neither recorded rewards nor success labels.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch
from torch import Tensor

from reverie.errors import ConfigError

log = logging.getLogger(__name__)


def balanced_weights(reward: Tensor, valid: Tensor | None = None) -> Tensor:
    """(B, T) reward, optional (B, T) bool valid -> (B, T) weights summing to 1 over valid rows:
    rows with reward != 0 share 1/2 and rows with reward == 0 share 1/2 when both occur; uniform
    over the valid rows otherwise (all zeros when no row is valid)."""
    mask = torch.ones_like(reward, dtype=torch.bool) if valid is None else valid.bool()
    pos = (reward != 0) & mask
    neg = (reward == 0) & mask
    n_pos, n_neg = pos.sum().float(), neg.sum().float()
    # torch.where, not `if`: no device -> host read per step
    balanced = pos.float() * (0.5 / n_pos.clamp(min=1.0)) + neg.float() * (0.5 / n_neg.clamp(min=1.0))
    uniform = mask.float() / mask.sum().float().clamp(min=1.0)
    return torch.where((n_pos > 0) & (n_neg > 0), balanced, uniform)


def reward_loss(agent, feat: Tensor, instr: Tensor, reward: Tensor, valid: Tensor | None = None) -> Tensor:
    """Class-balanced two-hot loss of the agent's reward head (a scalar to minimise).

    feat (B, T, F) world-model features, instr (B, I) instruction embeddings, reward (B, T) targets,
    valid (B, T) bool rows that count (padding False) or None for all. Gradients reach the reward
    head only through `feat` if the caller lets them (pass features computed under no_grad)."""
    per_row = agent.twohot.loss(agent.reward_logits(feat, instr), reward)   # (B, T)
    return (per_row * balanced_weights(reward, valid)).sum()


def reward_step(wm, agent, batch: dict, optimizer, amp=contextlib.nullcontext) -> dict[str, Tensor]:
    """One reward-head-only step on a data batch: the frozen world model filters the window, the
    balanced loss updates the parameters `optimizer` holds (the reward head's)."""
    with torch.no_grad(), amp():
        _, feat = wm.observe(batch)
    feat = feat.float()
    instr, reward = batch["instruction_embedding"], batch["reward"]
    valid = batch.get("valid")
    loss = reward_loss(agent, feat, instr, reward, valid)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(agent.reward.parameters(), 100.0)
    optimizer.step()
    with torch.no_grad():
        pred = agent.predict_reward(feat, instr)
        mask = torch.ones_like(reward, dtype=torch.bool) if valid is None else valid.bool()
        pos, neg = (reward != 0) & mask, (reward == 0) & mask
        err = (pred - reward).abs()
        return {"reward/loss": loss.detach(), "reward/positives": pos.float().sum(),
                "reward/pos_error": (err * pos).sum() / pos.sum().clamp(min=1),
                "reward/neg_error": (err * neg).sum() / neg.sum().clamp(min=1)}


def check_reward_signal(data) -> None:
    """Refuse (ConfigError naming the fixes) training data with no recorded reward and no success
    label in its training episodes: imagination RL would optimise a reward head that predicts 0."""
    counts = data.reward_signal()
    if counts["rewarded_rows"] or counts["success_episodes"]:
        return
    held = counts["held_rewarded_rows"] or counts["held_success_episodes"]
    where = (" (only held-out episodes have any: lower holdout= or label more episodes)" if held else "")
    raise ConfigError(
        f"stage=rl has nothing to optimise: the training episodes of {data.paths} have no recorded "
        f"reward (every reward is 0) and no episode labelled success{where}. Either label episodes "
        "after the fact with `reverie data label STORE episodes=0,3,5-9 success=true` (and "
        "success=false for failures), or train with the language-goal reward rewards.dllm.enabled=true "
        "(needs a world model trained with world_model.describe=true)")


def calibration(data) -> dict | None:
    """AgentData -> {"value": R, "rate": share of training rows that pay R} for the agent's
    predict_reward, from the training episodes' recorded rewards and success labels (a labelled
    episode's final row pays rewards.success_reward, as AgentData serves it). None when no row pays
    or the rewards take several nonzero values (then the balanced head is used as trained)."""
    values, paying, rows = set(), 0, 0
    for s, store in enumerate(data.stores):
        reward = store.lowdim()["reward"]
        for e in range(store.num_episodes):
            if (s, e) in data.held:
                continue
            meta = store.meta(e)
            r = np.asarray(reward[meta.start:meta.start + meta.length], np.float64)
            if (s, e) in data.labelled:
                r = r.copy()
                r[-1] = data.success_reward
            values |= set(np.unique(r[r != 0]).tolist())
            paying += int(np.count_nonzero(r))
            rows += len(r)
    if not paying:
        return None
    if len(values) > 1:
        log.info("reward head left as trained (balanced): rewards take %d values, the prior correction "
                 "needs one", len(values))
        return None
    return {"value": float(values.pop()), "rate": paying / rows}
