#!/usr/bin/env bash
# The README's main command: sets the machine up (scripts/setup.sh), builds the lowbit CLI and
# trains configs/quickstart.yaml (ResNet-20 on Fashion-MNIST from Debian's
# dataset-fashion-mnist). With a GPU it builds the CUDA backend and trains there; without one it
# builds CPU-only (compiling CUDA for a GPU that is not there would only cost build time).
# Extra arguments go to `lowbit train` (e.g. --set stages.0.epochs=1).
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
bash scripts/setup.sh --no-torch

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  cuda=${LOWBIT_CUDA:-AUTO}
  build_dir=build-quickstart-cuda
else
  cuda=${LOWBIT_CUDA:-OFF}
  build_dir=build-quickstart
fi
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLOWBIT_CUDA="$cuda" \
  -DLOWBIT_BUILD_TESTS=OFF >/dev/null
cmake --build "$build_dir" -j "$(nproc 2>/dev/null || echo 2)" --target lowbit
built=$(date +%s)
echo "quickstart: built in $((built - start)) s"

"./$build_dir/tools/lowbit" info
out=runs/quickstart
"./$build_dir/tools/lowbit" train configs/quickstart.yaml --out "$out" "$@"
end=$(date +%s)
echo
echo "quickstart: done in $((end - start)) s (build $((built - start)) s, training $((end - built)) s)"
echo "quickstart: results in $out/: summary.json (test accuracy, size, speed), log.jsonl"
echo "            (per-step and per-epoch records), model.safetensors (weights, PyTorch names)"
