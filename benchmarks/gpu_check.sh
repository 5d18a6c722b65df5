#!/usr/bin/env bash
# The prepared GPU check (issue 22): < 10 minutes on one GPU (sized for an H200). Each part runs in its
# own process under its own timeout and writes its own JSON; a failed or timed-out part is recorded as
# such and the rest still run. The merged result goes to $OUT/gpu_check.json (OUT defaults to
# benchmarks/results) and, when run from the repository, to benchmarks/results/gpu_check.json too.
#
#   OUT=/some/dir PYTHON=.venv/bin/python benchmarks/gpu_check.sh     (GPU_CHECK_COPY=0: no copy in the repo;
#                                                                     GPU_CHECK_BUDGET=540: seconds for all parts)
#
# Parts: env (GPU, torch, CUDA); RSSM update + imagination frames/s and peak memory at presets s and m
# in fp32 and bf16 (eager), then with torch.compile (bf16; first_step_s is the compile time); a
# 2-process DDP step (torchrun --nproc_per_node=2; two ranks share the GPU if there is only one: NCCL
# first, gloo if NCCL refuses); the same with FSDP (world_model/distributed.py's fully_shard path).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
PY="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}"
BUDGET="${GPU_CHECK_BUDGET:-540}"   # seconds for all parts; a part that would not fit is skipped
parts="$(mktemp -d)"
mkdir -p "$OUT"
t0=$(date +%s)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# run NAME TIMEOUT CMD...: CMD writes $parts/NAME.json itself; failures/timeouts leave a note instead
run() {
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - t0) ))
  if (( left < 20 )); then
    echo "{\"part\": \"$name\", \"ok\": false, \"note\": \"skipped: the ${BUDGET}s budget was spent\"}" > "$parts/$name.skip.json"
    return 0
  fi
  (( limit > left )) && limit=$left
  echo "== $name (timeout ${limit}s)" >&2
  local rc=0 start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$parts/$name.log" 2>&1 || rc=$?
  echo "{\"part\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - start )), \"timed_out\": $( (( rc == 124 || rc == 137 )) && echo true || echo false )}" > "$parts/$name.status.json"
  tail -c 3000 "$parts/$name.log" > "$parts/$name.tail" || true
  (( rc == 0 )) || echo "   $name failed (rc $rc): $(tail -n 3 "$parts/$name.log" | tr '\n' ' ' | cut -c1-300)" >&2
  return 0
}

"$PY" -c "import reverie" 2>/dev/null || "$PY" -m pip install -q -e . --no-deps || true

run env 60 "$PY" -c "
import json, torch, subprocess, platform
row = {'torch': torch.__version__, 'cuda': torch.version.cuda, 'available': torch.cuda.is_available(),
       'gpus': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
       'bf16': torch.cuda.is_available() and torch.cuda.is_bf16_supported(), 'platform': platform.platform(),
       'nccl': torch.cuda.nccl.version() if torch.cuda.is_available() else None}
try:
    row['nvidia_smi'] = subprocess.run(['nvidia-smi', '--query-gpu=name,memory.total,driver_version', '--format=csv,noheader'],
                                       capture_output=True, text=True, timeout=20).stdout.strip()
except Exception as e:
    row['nvidia_smi'] = repr(e)
json.dump(row, open('$parts/env.json', 'w')); print(row)"

for preset in s m; do
  for precision in fp32 bf16; do
    run "update_${preset}_${precision}_eager" 90 "$PY" benchmarks/gpu_throughput.py --preset $preset \
      --precision $precision --compile 0 --json "$parts/update_${preset}_${precision}_eager.json"
  done
done

# DDP / FSDP: two processes; the toy store is written once, before the ranks start
"$PY" -c "from reverie.world_model.data import write_toy_store; write_toy_store('$parts/toy.zarr', episodes=6, length=80, size=64)" \
  > "$parts/store.log" 2>&1 || true
for mode in ddp fsdp; do
  run "${mode}_nccl" 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 benchmarks/gpu_ddp_step.py \
    "$parts/toy.zarr" "$parts/run_${mode}_nccl" "$parts/${mode}_nccl.json" "$mode" s
  if [[ ! -s "$parts/${mode}_nccl.json" ]]; then
    run "${mode}_gloo" 90 env REVERIE_DIST_BACKEND=gloo "$PY" -m torch.distributed.run --standalone \
      --nproc_per_node=2 benchmarks/gpu_ddp_step.py "$parts/toy.zarr" "$parts/run_${mode}_gloo" "$parts/${mode}_gloo.json" "$mode" s
  fi
done

# compile last: the slowest parts, cut by the budget first
for preset in s m; do
  run "update_${preset}_bf16_compile" 200 "$PY" benchmarks/gpu_throughput.py --preset $preset \
    --precision bf16 --compile 1 --steps 10 --json "$parts/update_${preset}_bf16_compile.json"
done
run "update_s_fp32_compile" 150 "$PY" benchmarks/gpu_throughput.py --preset s --precision fp32 --compile 1 \
  --json "$parts/update_s_fp32_compile.json"

"$PY" - "$parts" "$OUT/gpu_check.json" "$(( $(date +%s) - t0 ))" <<'PYEOF'
import json, sys
from pathlib import Path
parts, out, seconds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
result = {"issue": 22, "seconds": seconds, "parts": {}}
names = sorted({p.name.split(".")[0] for p in parts.glob("*.json")} | {p.stem.split(".")[0] for p in parts.glob("*.log")})
for name in names:
    if name in ("store",):
        continue
    row = {}
    for suffix in (".status.json", ".skip.json", ".json"):
        f = parts / f"{name}{suffix}"
        if f.exists():
            try:
                row |= json.loads(f.read_text())
            except ValueError:
                row["unreadable"] = f.name
    if (parts / f"{name}.log").exists() and not row.get("ok", False):
        log = (parts / f"{name}.log").read_text(errors="replace")
        row["errors"] = [l for l in log.splitlines() if "Error" in l or "error:" in l][-6:]
        row["log_tail"] = log[-1500:]
    result["parts"][name] = row
out.write_text(json.dumps(result, indent=1))
print(json.dumps({k: {x: v.get(x) for x in ("ok", "rc", "update_frames_per_s", "peak_mem_gb", "first_step_s")}
                  for k, v in result["parts"].items()}, indent=1))
PYEOF
if [[ "${GPU_CHECK_COPY:-1}" == 1 && -f pyproject.toml ]] && [[ "$(realpath "$OUT")" != "$(realpath benchmarks/results)" ]]; then
  cp "$OUT/gpu_check.json" benchmarks/results/gpu_check.json || true
fi
echo "wrote $OUT/gpu_check.json" >&2
