"""World-model update of NM512/dreamerv3-torch at given sizes on random batches; run with the peer's own
venv (benchmarks/dreamerv3_torch_setup.sh), never imported by reverie.

    <peer venv>/bin/python benchmarks/dreamerv3_torch_peer.py --src DIR --deter 512 --hidden 128 ...

Builds the port's WorldModel (its configs.yaml defaults, CPU, fp32, no compile) with an image and a
6-d vector observation (matching reverie's encoder/decoder inputs), 6-d actions, and times its own
`_train` (forward, loss, backward, clip, Adam) on one fixed random batch. Prints one JSON line:
params, per-step seconds (after one warm-up step), frames/s = batch x seq / median.
"""

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--src", required=True)
    for k, v in dict(deter=512, hidden=128, stoch=16, classes=16, units=256, layers=2, cnn_depth=16,
                     batch=16, seq=16, image=64, steps=5, threads=1, warmup=1).items():
        p.add_argument(f"--{k.replace('_', '-')}", type=int, default=v)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    sys.path.insert(0, a.src)
    from ruamel.yaml import YAML

    import models  # the port's modules, from its own checkout
    import networks

    # the port's MLP defaults to device="cuda" where the encoder builds one without passing a device
    init = networks.MLP.__init__
    init.__defaults__ = tuple("cpu" if d == "cuda" else d for d in init.__defaults__)

    conf = YAML(typ="safe").load((Path(a.src) / "configs.yaml").read_text())["defaults"]
    conf.update(device="cpu", compile=False, precision=32, dyn_deter=a.deter, dyn_hidden=a.hidden,
                dyn_stoch=a.stoch, dyn_discrete=a.classes, units=a.units, num_actions=6)
    for key in ("encoder", "decoder"):
        conf[key] = dict(conf[key], cnn_depth=a.cnn_depth, mlp_keys="state", mlp_layers=a.layers, mlp_units=a.units)
    config = types.SimpleNamespace(**conf)
    box = lambda *s: types.SimpleNamespace(shape=s)  # noqa: E731  (what the port reads of a gym space)
    obs_space = types.SimpleNamespace(spaces={"image": box(a.image, a.image, 3), "state": box(6),
                                              "is_first": box(1), "is_terminal": box(1)})
    torch.manual_seed(0)
    wm = models.WorldModel(obs_space, box(6), 0, config)
    rng = np.random.default_rng(0)
    b, t = a.batch, a.seq
    first = np.zeros((b, t), np.float32)
    first[:, 0] = 1
    data = {"image": rng.integers(0, 256, (b, t, a.image, a.image, 3)).astype(np.float32),
            "state": rng.normal(size=(b, t, 6)).astype(np.float32),
            "action": rng.uniform(-1, 1, (b, t, 6)).astype(np.float32),
            "reward": rng.uniform(size=(b, t)).astype(np.float32), "is_first": first,
            "is_terminal": np.zeros((b, t), np.float32), "discount": np.ones((b, t), np.float32)}
    for _ in range(a.warmup):
        wm._train(data)
    times = []
    for _ in range(a.steps):
        start = time.perf_counter()
        wm._train(data)
        times.append(time.perf_counter() - start)
    step = statistics.median(times)
    print(json.dumps({"impl": "dreamerv3-torch", "params_m": sum(p.numel() for p in wm.parameters()) / 1e6,
                      "threads": a.threads, "step_s": times, "frames_per_s": b * t / step}))


if __name__ == "__main__":
    main()
