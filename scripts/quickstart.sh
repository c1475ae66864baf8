#!/usr/bin/env bash
# The README's main command. Until the trainer lands (issue "The main job end to end") it sets
# the machine up, builds lowbit and prints what this build can do (`lowbit info`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLOWBIT_CUDA="${LOWBIT_CUDA:-AUTO}" >/dev/null
cmake --build build -j "$(nproc 2>/dev/null || echo 2)" --target lowbit
./build/tools/lowbit info
echo
echo "quickstart: lowbit built at build/tools/lowbit. Training (lowbit train configs/quickstart.yaml)"
echo "arrives with the trainer; run scripts/test.sh for the test suites."
