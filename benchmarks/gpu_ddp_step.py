"""A few DDP (or FSDP) training steps under torchrun for benchmarks/gpu_check.sh; rank 0 writes one JSON.

    torchrun --standalone --nproc_per_node=2 benchmarks/gpu_ddp_step.py STORE OUT_DIR JSON [fsdp] [preset]

Both ranks may share one GPU (device=cuda:0): NCCL refuses that on most versions, so gpu_check.sh retries
with REVERIE_DIST_BACKEND=gloo. Checks the ranks end with identical weights (a checksum all-gathered).
"""

import json
import os
import sys
import time

import torch

from reverie.config import compose
from reverie.world_model import distributed
from reverie.world_model.train import Trainer


def main() -> None:
    store, out, path = sys.argv[1:4]
    fsdp = len(sys.argv) > 4 and sys.argv[4] == "fsdp"
    preset = sys.argv[5] if len(sys.argv) > 5 else "s"
    gpus = torch.cuda.device_count()
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = f"cuda:{local % gpus}" if gpus else "cpu"  # cpu: a smoke test of this script
    cfg = compose("train_wm", [f"preset={preset}", f"data={store}", f"out={out}", "steps=4", "progress=false",
                               "log_every=2", "image_every=0", "save_every=100", f"device={device}",
                               f"fsdp={str(fsdp).lower()}", f"precision={'bf16' if gpus else 'fp32'}", "prefetch=0"])
    start = time.perf_counter()
    trainer = Trainer(cfg)
    if gpus:
        torch.cuda.reset_peak_memory_stats()
    trainer.run()
    if gpus:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True))
    checksum = torch.stack([v.detach().double().sum() for v in full.values()]).sum().reshape(1).to(device)
    sums = [torch.zeros_like(checksum) for _ in range(distributed.world())]
    torch.distributed.all_gather(sums, checksum)
    row = {"ok": True, "fsdp": fsdp, "preset": preset, "world": distributed.world(), "gpus": gpus,
           "backend": torch.distributed.get_backend(), "steps": trainer.step, "seconds_incl_setup": seconds,
           "peak_mem_gb_rank0": torch.cuda.max_memory_allocated() / 2**30 if gpus else None,
           "ranks_in_sync": all(torch.equal(s, sums[0]) for s in sums)}
    if distributed.rank() == 0:
        with open(path, "w") as f:
            json.dump(row, f)
        print(json.dumps(row))
    distributed.teardown()


if __name__ == "__main__":
    main()
