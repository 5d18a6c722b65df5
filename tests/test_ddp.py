"""DDP on CPU: two gloo processes under torchrun train the tiny RSSM on different windows and must
end with identical weights (gradients are averaged), equal to what rank 0 checkpoints."""

import json
import os
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

from reverie.world_model.data import write_toy_store

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from safetensors.torch import save_file
    from reverie.config import compose
    from reverie.world_model import distributed
    from reverie.world_model.train import Trainer

    store, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    cfg = compose("train_wm", ["preset=tiny", f"data={store}", f"out={out}", "steps=4", "progress=false",
                               "log_every=2", "image_every=0", "device=cpu"])
    trainer = Trainer(cfg)
    assert distributed.world() == 2, "not running under torchrun with 2 processes"
    trainer.run()
    state = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()}
    save_file(state, f"{out}/params_rank{distributed.rank()}.safetensors")
    distributed.teardown()
""")


def test_two_cpu_ranks_stay_in_sync(tmp_path):
    store = write_toy_store(tmp_path / "toy.zarr", episodes=5, length=20)
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), str(store), str(tmp_path / "run")],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "run"
    rank0 = load_file(run / "params_rank0.safetensors")
    rank1 = load_file(run / "params_rank1.safetensors")
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    # The ranks read different windows (their sampler RNG streams differ) ...
    trainer = json.loads((run / "checkpoint" / "trainer.json").read_text())
    assert trainer["step"] == 4 and trainer["data_rng"]["0"] != trainer["data_rng"]["1"]
    # ... and the checkpoint holds the synchronised weights.
    saved = load_file(run / "checkpoint" / "model.safetensors")
    assert all(torch.equal(saved[k], rank0[k]) for k in saved)
