"""Where does a world model lose the cubes? The cube probe (world_model/probe.py) on each stage of the
RSSM's filter: the encoder's embedding, the posterior logits, deter, stoch and the whole feature.

    .venv/bin/python benchmarks/probe_parts.py RUN_DIR [--parts embed logits deter stoch features]

Prints the held-out ridge R² on every cube's x, y and on the target cube's x, y per part (latents
argmax, as in evaluation). `decoded`: the image the features decode to (the posterior's
reconstruction), pooled to 16x16 as the pixel baseline is: the cubes the features draw, read the way
the pixels are read (a linear probe on the features may miss what the decoder reads nonlinearly).
`predicted` (models with a frame latent): the features with the frame latent imagination uses, the
one predicted from (deter, stoch), in place of the observed one. The embedding does not see the
instruction, so its target R² is ~0 by construction. Slow-ish (a minute or three per part on one core); not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class Part:
    """Duck-types the `observe` feature_probe calls, returning one stage of the RSSM's filter."""

    training = False

    def __init__(self, wm, part: str):
        self.wm, self.part = wm, part
        self.cfg, self.normalizer, self.device = wm.cfg, wm.normalizer, wm.device

    def eval(self):
        pass

    def train(self):
        pass

    def observe(self, batch, state=None):
        wm = self.wm
        if self.part == "embed":
            image = batch["image"]
            b, t = image.shape[:2]
            return None, wm.image_enc(image.flatten(0, 1)).reshape(b, t, -1)   # (B, T, E)
        states, last, _, _ = wm._rollout(batch, state)
        if self.part == "logits":
            return last, wm.post_net(torch.cat([states["deter"], wm._embed(batch)], -1))
        if self.part == "decoded":  # what the features draw: the posterior's reconstruction, pooled as the pixel baseline
            import torch.nn.functional as F
            image = wm.decode(states)                                                  # (B, T, H, W, 3)
            b, t = image.shape[:2]
            x = image.float().flatten(0, 1).permute(0, 3, 1, 2)
            return last, F.adaptive_avg_pool2d(x, 16).permute(0, 2, 3, 1).reshape(b, t, -1)
        feat = wm.feat(states)
        d, core = wm.deter_dim, wm.core_dim
        if self.part == "predicted":  # the frame latent as imagination has it: predicted from (deter, stoch)
            return last, torch.cat([feat[..., :core], wm.frame_pred(feat[..., :core])], -1)
        return last, {"deter": feat[..., :d], "stoch": feat[..., d:core], "features": feat}[self.part]


def main() -> None:
    from reverie.world_model import probe
    from reverie.world_model.checkpoint import load_model

    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--parts", nargs="+", default=["embed", "logits", "deter", "stoch", "features", "decoded"])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    wm, _, trainer = load_model(args.run)
    wm.deterministic = True
    for part in args.parts:
        res = probe.feature_probe(Part(wm, part), trainer["stores"], holdout=trainer["holdout"],
                                  image_key=trainer["image_key"], pixels=False)
        print(part, json.dumps({q: round(res[q]["features"]["mean"], 3) for q in ("objects_xy", "target_xy")}),
              flush=True)


if __name__ == "__main__":
    main()
