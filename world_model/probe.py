"""Do the world model's features carry the objects? Linear probes on held-out episodes.

    r2 = probe_r2(f_train, y_train, f_test, y_test, groups_train=episode_ids)  # {"r2": [...], "mean": ...}
    report = feature_probe(wm, stores, holdout=0.1, image_key="image/front")   # None: no ground truth

`probe_r2` standardises the features (training statistics), fits a closed-form ridge regression
(with intercept) for every candidate strength, picks the strength with the best R² in 5-fold
cross-validation over the training episodes (whole episodes per fold, so no frame of a validation
episode is fitted), refits on all training rows and reports R² per target dimension on the test
rows (1 - SS_res / SS_tot around the test mean: 0 is "predicts the mean", below 0 is worse).

`feature_probe` filters whole episodes through `wm.observe` (in chunks of the model's seq_len, the
state carried across chunks) and probes from the per-row features to the sim's ground truth
(datasets/schema.py `privileged/*`): the target cube's x, y and every cube's x, y, trained on the
training episodes of world_model/data.py `split_episodes` and scored on its held-out ones. The same
probe from the raw image average-pooled to 16x16 (768 numbers) is the baseline: a cube the pixels
show linearly but the features do not is information the model dropped. Which cube is the target
is in the instruction, not the image, so plain pixels cannot give the target's position (R² ~0 by
construction); `pixels_given_target` is their baseline with that bit added (the pooled image copied
into the slot of the target cube, zeros in the others: one linear map per cube). The gate (GATE) is on
every cube's x, y from the features, the measure of the learning-core issue. Stores without the keys
are skipped with a note (all of them: the result is None).

Few layouts: every row of an episode shows the same cubes, so the probe effectively has one sample
per episode; with ~50 training episodes the pixel baseline is data-limited, and R² moves by ~0.1
between splits.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
import torch.nn.functional as F

from reverie.datasets.schema import PRIVILEGED_OBJECTS, PRIVILEGED_TARGET, has_privileged
from reverie.errors import ConfigError
from reverie.world_model.backend import option

log = logging.getLogger(__name__)

RIDGES = tuple(float(a) for a in 10.0 ** np.arange(-2, 6))  # on standardised features
POOL = 16  # pixel baseline: images average-pooled to POOL x POOL x 3
GATE = 0.8  # the learning-core gate: held-out R² of every cube's x, y from the features


def _r2(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N, D) -> (D,) coefficient of determination; NaN where the target does not vary."""
    ss_res = ((y - pred) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ss_tot > 1e-12, 1.0 - ss_res / np.maximum(ss_tot, 1e-300), np.nan)


class _Ridge:
    """Closed-form ridge for many strengths at once through one SVD of the standardised features."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        self.mu, sd = x.mean(0), x.std(0)
        self.scale = np.where(sd > 1e-8, 1.0 / np.maximum(sd, 1e-8), 0.0)  # constant features drop out
        self.y_mu = y.mean(0)
        u, s, vt = np.linalg.svd((x - self.mu) * self.scale, full_matrices=False)
        self._u_y, self._s, self._vt = u.T @ (y - self.y_mu), s, vt               # (k, D), (k,), (k, F)

    def weights(self, alpha: float) -> np.ndarray:
        shrink = self._s / (self._s ** 2 + alpha)                                  # (k,)
        return self._vt.T @ (shrink[:, None] * self._u_y)                          # (F, D)

    def predict(self, x: np.ndarray, alpha: float) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.mu) * self.scale) @ self.weights(alpha) + self.y_mu


def probe_r2(features_train, targets_train, features_test, targets_test, ridges=RIDGES,
             groups_train=None, folds: int = 5) -> dict:
    """Ridge probe features (N, F) -> targets (N, D); R² on the test rows per dimension and mean.

    The ridge strength is picked on the training rows only, by `folds`-fold cross-validation over
    whole episodes (groups_train (N,): the episode of each training row; without it, contiguous
    blocks of rows). Rows of one episode share their cube layout, so a row split would leak it.
    Returns {"r2": [D], "mean", "ridge", "val_r2" (cross-validated mean R² at that strength),
    "train_rows", "test_rows"}; an R² is None where the target does not vary over the test rows. R²
    needs several test episodes: within one episode the cubes barely move, so SS_tot is tiny and any
    error gives a large negative R²."""
    xtr, ytr = np.asarray(features_train, np.float64), np.asarray(targets_train, np.float64)
    xte, yte = np.asarray(features_test, np.float64), np.asarray(targets_test, np.float64)
    xtr, xte = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
    ytr, yte = ytr.reshape(len(ytr), -1), yte.reshape(len(yte), -1)
    if len(xtr) != len(ytr) or len(xte) != len(yte) or xtr.shape[1] != xte.shape[1]:
        raise ConfigError(f"probe_r2: features/targets disagree: train {xtr.shape} -> {ytr.shape}, "
                          f"test {xte.shape} -> {yte.shape}")
    if len(xtr) < 4 or len(xte) < 2:
        raise ConfigError(f"probe_r2: {len(xtr)} training and {len(xte)} test rows; record more episodes")
    ridges = [float(a) for a in np.atleast_1d(ridges)]
    if groups_train is None:  # contiguous blocks
        fold = np.arange(len(xtr)) * min(folds, len(xtr)) // len(xtr)
    else:  # whole episodes, dealt round-robin in first-seen order
        uniq, first = np.unique(np.asarray(groups_train), return_index=True)
        rank = {g: i for i, g in enumerate(uniq[np.argsort(first)].tolist())}
        fold = np.array([rank[g] for g in np.asarray(groups_train).tolist()]) % max(min(folds, len(uniq)), 1)
    alpha, val_r2 = ridges[0], None
    if len(ridges) > 1 and len(np.unique(fold)) > 1:
        pred = {a: np.zeros_like(ytr) for a in ridges}
        for k in np.unique(fold):
            held = fold == k
            fit = _Ridge(xtr[~held], ytr[~held])
            for a in ridges:
                pred[a][held] = fit.predict(xtr[held], a)
        scores = [np.nanmean(_r2(pred[a], ytr)) for a in ridges]
        scores = [s if np.isfinite(s) else -np.inf for s in scores]
        best = int(np.argmax(scores))
        alpha, val_r2 = ridges[best], float(scores[best])
    r2 = _r2(_Ridge(xtr, ytr).predict(xte, alpha), yte)
    # None (JSON null) for a dimension that does not vary in the test rows: R² is undefined there.
    return {"r2": [float(v) if np.isfinite(v) else None for v in r2],
            "mean": float(np.nanmean(r2)) if np.isfinite(r2).any() else None,
            "ridge": alpha, "val_r2": val_r2, "train_rows": int(len(xtr)), "test_rows": int(len(xte))}


def pool_pixels(images: np.ndarray, size: int = POOL) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size * size * 3) float32 in [0, 1], average-pooled."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return F.adaptive_avg_pool2d(x, size).permute(0, 2, 3, 1).reshape(len(x), -1).numpy()


@torch.no_grad()
def episode_features(wm, episode: dict, instruction: str, image_key: str, language, chunk: int | None = None) -> np.ndarray:
    """wm.observe over one whole episode (key -> (T, ...) store rows) -> (T, F) float32 features,
    `chunk` rows at a time (default the model's seq_len) with the latent state carried over."""
    from reverie.world_model.data import ROW_KEYS, collate

    mcfg = wm.cfg
    chunk = int(chunk or mcfg.seq_len)
    dynalang = bool(option(mcfg, "dynalang"))
    n = len(episode["is_first"])
    feats, state = [], None
    for start in range(0, n, chunk):
        w = {k: episode[k][start:start + chunk] for k in (image_key, *wm.spec.cameras, *ROW_KEYS)}
        w = wm.normalizer.batch(w) if hasattr(wm, "normalizer") else w  # the model's units
        batch = collate([w | {"instruction": instruction, "start": start}], image_key, int(mcfg.image_size),
                        language, dynalang, wm.device, cameras=wm.spec.cameras)
        if state is not None:  # a_{start-1}, sent before this chunk's first row
            prev = episode["action"][start - 1:start]
            prev = wm.normalizer.normalize("action", prev) if hasattr(wm, "normalizer") else prev
            batch["prev_action"] = torch.as_tensor(prev, dtype=torch.float32, device=wm.device)
            batch["prev_action_mask"] = torch.as_tensor(episode["action_mask"][start - 1:start], device=wm.device)
        state, feat = wm.observe(batch, state)
        feats.append(feat[0].float().cpu().numpy())
    return np.concatenate(feats).reshape(n, -1)


# The probed quantities: name -> (key, column indices) of the privileged columns.
def target_slot(target: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """(T, 3), (T, 3 * K) -> (T,) index of the cube the target is (the nearest; they coincide)."""
    cubes = np.asarray(objects, np.float64).reshape(len(objects), -1, 3)
    return np.linalg.norm(cubes - np.asarray(target, np.float64)[:, None], axis=-1).argmin(1)


def _given_slot(x: np.ndarray, slot: np.ndarray, k: int) -> np.ndarray:
    """(N, F) features, (N,) slot -> (N, K * F): x in block `slot`, zeros elsewhere."""
    out = np.zeros((len(x), k, x.shape[1]), np.float32)
    out[np.arange(len(x)), slot] = x
    return out.reshape(len(x), -1)


def _targets(objects: int) -> dict[str, tuple[str, list[int]]]:
    return {"target_xy": (PRIVILEGED_TARGET, [0, 1]),
            "objects_xy": (PRIVILEGED_OBJECTS, [3 * i + j for i in range(objects) for j in (0, 1)])}


def feature_probe(wm, stores, holdout: float = 0.1, image_key: str = "image/front", ridges=RIDGES,
                  max_train_episodes: int | None = 200, max_test_episodes: int | None = 200,
                  pixels: bool = True, seed: int = 0) -> dict | None:
    """Probe `wm`'s features (and pooled pixels) for the cubes on held-out episodes.

    stores: EpisodeStores or paths. holdout: the training run's fraction (world_model/data.py
    split_episodes); when it leaves no held-out episode the last 20% are scored instead and the result
    says `held_out_by_training: false`. At most max_*_episodes per split, evenly spaced. Returns None
    (with a logged note) when no store has the privileged keys, else {"target_xy": {"features": ...,
    "pixels": ..., "pixels_given_target": ...}, "objects_xy": {"features": ..., "pixels": ...}, "gate", "passes_gate", episode counts, "skipped_stores": [urls]}
    with probe_r2's results."""
    from reverie.world_model.data import Language, open_stores

    if wm is None and not pixels:
        raise ConfigError("feature_probe: nothing to probe (no world model and pixels=False)")
    stores = [open_stores([os.fspath(s)])[0] if isinstance(s, (str, os.PathLike)) else s for s in stores]
    cameras = tuple(wm.spec.cameras) if wm is not None else ()  # the model's extra cameras
    usable = [s for s in stores if has_privileged(s.schema) and all(k in s.schema for k in (image_key, *cameras))]
    skipped = [s.url for s in stores if s not in usable]
    if not usable:
        log.info("cube probe skipped: no store has %s and %s (record with `reverie sim demos`); %s",
                 PRIVILEGED_TARGET, PRIVILEGED_OBJECTS, skipped)
        return None
    from reverie.world_model.data import split_episodes

    objects = {s.schema[PRIVILEGED_OBJECTS].shape[0] // 3 for s in usable}
    if len(objects) > 1:
        raise ConfigError(f"stores disagree on the number of cubes ({sorted(objects)}); probe them separately")
    n_objects = objects.pop()
    quantities = _targets(n_objects)
    by_training = True
    splits = []
    for s in usable:
        train, held = split_episodes(s.num_episodes, holdout)
        if not held or not train:
            by_training = False
            train, held = split_episodes(s.num_episodes, 0.2)
        splits.append((train, held))
    if not all(h for _, h in splits) or not all(t for t, _ in splits):
        log.info("cube probe skipped: every store needs at least two episodes (one to fit, one to score)")
        return None

    def spread(eps: list[int], cap: int | None) -> list[int]:
        if cap is None or len(eps) <= cap:
            return eps
        return [eps[i] for i in np.unique(np.linspace(0, len(eps) - 1, cap).round().astype(int))]

    language = Language()
    if wm is not None:
        was_training = wm.training
        wm.eval()
        torch.manual_seed(seed)  # the posterior samples its stochastic state
    rows = {split: {"feat": [], "pix": [], "slot": [], "y": {q: [] for q in quantities}, "group": []}
            for split in ("train", "test")}
    counts = {"train": 0, "test": 0}
    keys = [image_key, *cameras, "state", "action", "action_mask", "reward", "is_first", "is_last", "is_terminal",
            PRIVILEGED_TARGET, PRIVILEGED_OBJECTS]
    for si, (s, (train, held)) in enumerate(zip(usable, splits)):
        for split, eps in (("train", spread(train, max_train_episodes)), ("test", spread(held, max_test_episodes))):
            for e in eps:
                ep = s.episode(e, keys)
                r = rows[split]
                if wm is not None:
                    r["feat"].append(episode_features(wm, ep, s.meta(e).instruction, image_key, language))
                if pixels:
                    r["pix"].append(pool_pixels(ep[image_key]))
                for q, (key, cols) in quantities.items():
                    r["y"][q].append(np.asarray(ep[key], np.float64)[:, cols])
                r["slot"].append(target_slot(ep[PRIVILEGED_TARGET], ep[PRIVILEGED_OBJECTS]))
                r["group"].append(np.full(len(ep["is_first"]), si * 1_000_000 + e))
                counts[split] += 1
    if wm is not None and was_training:
        wm.train()
    cat = {split: {"feat": np.concatenate(r["feat"]) if r["feat"] else None,
                   "pix": np.concatenate(r["pix"]) if r["pix"] else None,
                   "slot": np.concatenate(r["slot"]), "y": {q: np.concatenate(v) for q, v in r["y"].items()},
                   "group": np.concatenate(r["group"])} for split, r in rows.items()}
    tr, te = cat["train"], cat["test"]
    result: dict = {}
    for q in quantities:
        result[q] = {}
        for name, key in (("features", "feat"), ("pixels", "pix")):
            if tr[key] is not None:
                result[q][name] = probe_r2(tr[key], tr["y"][q], te[key], te["y"][q], ridges, tr["group"])
    if tr["pix"] is not None:
        result["target_xy"]["pixels_given_target"] = probe_r2(
            _given_slot(tr["pix"], tr["slot"], n_objects), tr["y"]["target_xy"],
            _given_slot(te["pix"], te["slot"], n_objects), te["y"]["target_xy"], ridges, tr["group"])
    feat_r2 = result["objects_xy"].get("features", {}).get("mean")
    result |= {"gate": GATE, "passes_gate": None if feat_r2 is None else bool(feat_r2 >= GATE),
               "train_episodes": counts["train"], "test_episodes": counts["test"],
               "held_out_by_training": by_training, "pool": POOL,
               "feature_dim": None if tr["feat"] is None else int(tr["feat"].shape[1]),
               "stores": [s.url for s in usable], "skipped_stores": skipped}
    return result


def table(result: dict | None) -> str:
    """A few lines for the terminal / markdown."""
    if result is None:
        return "cube probe: skipped (no privileged/target in the stores; record them with `reverie sim demos`)"
    lines = [f"cube probe (ridge, R² on {result['test_episodes']} held-out episodes, fit on "
             f"{result['train_episodes']}{'' if result['held_out_by_training'] else '; the model may have trained on them'}):"]
    pool = f"{result['pool']}x{result['pool']}"
    names = {"features": "features", "pixels": f"pixels {pool}",
             "pixels_given_target": f"pixels {pool} + which cube is the target"}
    for q, label in (("objects_xy", "every cube x,y"), ("target_xy", "target cube x,y")):
        parts = [f"{names[name]} " + ("n/a" if r["mean"] is None else f"{r['mean']:+.3f}") for name, r in result[q].items()]
        lines.append(f"  {label}: " + ", ".join(parts))
    if result["passes_gate"] is not None:
        lines.append(f"  gate: features' R² on every cube x,y >= {result['gate']}: {result['passes_gate']}")
    return "\n".join(lines)
