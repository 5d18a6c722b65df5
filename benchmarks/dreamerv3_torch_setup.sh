#!/usr/bin/env bash
# Set up the reference DreamerV3 PyTorch port (NM512/dreamerv3-torch) in its own venv, for
# benchmarks/world_model.py's side-by-side rows. Nothing of it is imported by reverie: the benchmark
# runs benchmarks/dreamerv3_torch_peer.py with that venv's python, on its own checkout.
#
#   benchmarks/dreamerv3_torch_setup.sh [SOURCE]     SOURCE: a git dir or URL (default: the local mirror
#                                                    /work/.mirror/NM512+dreamerv3-torch/repo if present,
#                                                    else https://github.com/NM512/dreamerv3-torch)
# Installs into ${REVERIE_CACHE:-~/.cache/reverie}/dreamerv3-torch/{src,venv}; prints the python path.
set -euo pipefail
root="${REVERIE_CACHE:-$HOME/.cache/reverie}/dreamerv3-torch"
mirror=/work/.mirror/NM512+dreamerv3-torch/repo
src="${1:-}"
if [[ -z "$src" ]]; then
  if [[ -d "$mirror" ]]; then src="$mirror"; else src=https://github.com/NM512/dreamerv3-torch; fi
fi
mkdir -p "$root"
if [[ ! -f "$root/src/models.py" ]]; then
  rm -rf "$root/src" "$root/src.git"
  if [[ -d "$src" ]]; then   # a bare mirror or a checkout: export its HEAD, no work tree needed
    mkdir -p "$root/src"
    git --git-dir="$( [[ -d "$src/.git" ]] && echo "$src/.git" || echo "$src")" archive HEAD | tar -x -C "$root/src"
    git --git-dir="$( [[ -d "$src/.git" ]] && echo "$src/.git" || echo "$src")" rev-parse HEAD > "$root/src/COMMIT"
  else
    git clone --depth 1 "$src" "$root/src"
    git -C "$root/src" rev-parse HEAD > "$root/src/COMMIT"
  fi
fi
if [[ ! -x "$root/venv/bin/python" ]]; then
  python3 -m venv "$root/venv"
fi
# torch first, pinned to reverie's version (the same kernels on both sides; no CUDA wheels pulled),
# then the few packages models.py / networks.py / tools.py import (the port pins old versions for its
# envs; the world model needs none of those)
"$root/venv/bin/pip" install -q torch==2.13.0
"$root/venv/bin/pip" install -q numpy ruamel.yaml tensorboard
"$root/venv/bin/python" -c "import sys; sys.path.insert(0, '$root/src'); import models, torch; print(torch.__version__)" >&2
echo "$root/venv/bin/python"
