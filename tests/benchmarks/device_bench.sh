#!/usr/bin/env bash
# On the target device: build the laptop-gpu bundle of a TinyLlama-1.1B-shaped model and measure it with the
# bundle's own launcher (`./run --bench --json`, which saves bench/<hostname>-<date>.json in the bundle), then
# print `slimedge report` (memory estimate beside the measured peak RSS / GPU memory and speed).
#
#   tests/benchmarks/device_bench.sh [SRC] [WORK_DIR]
#
# SRC: an HF folder or float GGUF (default: a random bf16 TinyLlama-shaped model written by _models.make_model,
# 2.2 GB; LAYERS=2 HIDDEN=256 make a small one for a smoke run). WORK_DIR default: $TMPDIR/slimedge-device-bench.
# REPEATS=N overrides the profile's bench repeats. GPU numbers need llama-cpp-python built with the GPU backend
# (e.g. CMAKE_ARGS="-DGGML_CUDA=on" pip install llama-cpp-python==0.3.36 --no-binary :all:); a CPU-only build
# still runs and its record says "backends": "CPU".
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${2:-${TMPDIR:-/tmp}/slimedge-device-bench}
mkdir -p "$WORK"
SRC=${1:-$WORK/tinyllama-shaped-${LAYERS:-22}x${HIDDEN:-2048}}
if [ -z "${1:-}" ] && [ ! -f "$SRC/config.json" ]; then
  python - "$HERE" "$SRC" <<'PY'
import os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from _models import make_model
hidden = int(os.environ["HIDDEN"]) if os.environ.get("HIDDEN") else None
make_model(Path(sys.argv[2]), layers=int(os.environ.get("LAYERS", "22")), hidden=hidden)
PY
fi
python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, '| GPU offload:', bool(llama_cpp.llama_supports_gpu_offload()))"
python -m slimedge build "$SRC" --target laptop-gpu -o "$WORK/bundle" --overwrite -q
python "$WORK/bundle/run" --bench --json ${REPEATS:+--repeats "$REPEATS"}
python -m slimedge report "$WORK/bundle"
