#!/usr/bin/env bash
# The README's test command: installs what is missing (scripts/setup.sh), configures (CUDA is
# compiled when the toolkit is present, for one architecture on a machine without a GPU), builds
# on every core and runs every CTest suite. Exits non-zero on any failure. GPU-labelled tests
# skip themselves where no GPU is visible. The formatting check (scripts/check_format.sh) runs
# first; the sanitizer build and the fuzzers (scripts/sanitize.sh, scripts/fuzz.sh) are separate
# scripts that CI runs after this one (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
bash scripts/check_format.sh   # docs/style.md's formatting, before spending minutes on a build

build_dir=${LOWBIT_BUILD_DIR:-build}
jobs=$(nproc 2>/dev/null || echo 2)

cmake -S . -B "$build_dir" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release \
  -DLOWBIT_CUDA="${LOWBIT_CUDA:-AUTO}" \
  -DLOWBIT_WERROR="${LOWBIT_WERROR:-ON}"
cmake --build "$build_dir" -j "$jobs"
cd "$build_dir"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-$jobs} ctest --output-on-failure -j "$jobs" --timeout 900
