#!/bin/sh
# Runs check_bench_json.cmake on bench/pytorch_reference.py with the repo's venv python, or
# exits 77 (ctest's SKIP_RETURN_CODE) when that python or its torch is missing.
# Usage: pytorch_reference_test.sh PYTHON SCRIPT CMAKE CHECKER
set -eu
python="$1" script="$2" cmake="$3" checker="$4"
if [ ! -x "$python" ]; then
  echo "skipped: no $python (scripts/setup.sh creates the venv)"
  exit 77
fi
if ! "$python" -c "import torch" >/dev/null 2>&1; then
  echo "skipped: $python cannot import torch"
  exit 77
fi
exec "$cmake" "-DRUNNER=$python|$script" -DNAME=pytorch -P "$checker"
