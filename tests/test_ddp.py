"""DDP on CPU: two gloo processes under torchrun train the tiny RSSM on different windows and must
end with identical weights (gradients are averaged), equal to what rank 0 checkpoints. The FSDP
variant (sharded parameters, full state gathered for checkpoints) is marked slow."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
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

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    store, out, fsdp = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    cfg = compose("train_wm", ["preset=tiny", f"data={store}", f"out={out}", "steps=4", "progress=false",
                               "log_every=2", "image_every=0", "device=cpu", f"fsdp={fsdp}"])
    trainer = Trainer(cfg)
    assert distributed.world() == 2, "not running under torchrun with 2 processes"
    trainer.run()
    full = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True))
    state = {k: v.detach().contiguous() for k, v in full.items()}
    save_file(state, f"{out}/params_rank{distributed.rank()}.safetensors")
    distributed.teardown()
""")


@pytest.mark.parametrize("fsdp", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["ddp", "fsdp"])
def test_two_cpu_ranks_stay_in_sync(tmp_path, fsdp):
    store = write_toy_store(tmp_path / "toy.zarr", episodes=5, length=20)
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), str(store), str(tmp_path / "run"), str(fsdp).lower()],
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
