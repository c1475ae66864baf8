#!/usr/bin/env bash
# Installs, with apt-get, every system package lowbit needs that is missing, and the venv of the
# PyTorch reference tests (PyPI's safetensors, tensorboard, onnx and onnxruntime). Idempotent: a machine that already has
# everything runs no apt or pip command at all. Nothing is fetched from anywhere but Debian's
# archive and PyPI. `--no-torch` (what quickstart uses) skips the test-only parts (PyTorch,
# clang-format, Slurm, clang-16).
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config ccache
  libgtest-dev libgmock-dev
  libyaml-cpp-dev
  libdnnl-dev
  libopenblas-dev
  libjpeg62-turbo-dev
  zlib1g-dev
  libopenmpi-dev openmpi-bin
  nlohmann-json3-dev
  libxgboost-dev  # Quantune's cost model (lowbit ptq --search quantune)
  libonnx-dev libprotobuf-dev protobuf-compiler  # lowbit export --format onnx
  dataset-fashion-mnist
)
# Only the tests and CI need these; quickstart (--no-torch) skips them.
torch_packages=(
  python3-torch python3-numpy python3-venv  # the PyTorch reference and parity tests
  python3-pil python3-torchvision           # scripts/make_jpegs.py, pytorch_reference.py data
  clang-format                              # scripts/check_format.sh
  python3-matplotlib                        # lowbit plot (scripts/plot_runs.py) and its test
  # A throw-away one-node Slurm cluster for tests/dist/slurm_test.sh (slurmctld, slurmd, srun,
  # sbatch, sinfo, munged, mungekey); no service is enabled or started.
  slurmctld slurmd slurm-client munge
  # scripts/fuzz.sh and scripts/sanitize.sh: libFuzzer and the ASan/UBSan runtimes of clang 16,
  # its OpenMP runtime, and llvm-symbolizer-16 for readable sanitizer stacks.
  clang-16 libclang-rt-16-dev libomp-16-dev llvm-16
)
with_torch=1
if [ "${1:-}" = "--no-torch" ]; then with_torch=0; fi
if [ $with_torch -eq 1 ]; then packages+=("${torch_packages[@]}"); fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} system packages present"
else
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The PyTorch reference tests (ctest label `torch`) run Debian's python3-torch through a
# project venv that sees the system packages and adds from PyPI what Debian 12 lacks:
# `safetensors` (checkpoint interop), `tensorboard` (its event reader checks lowbit's
# TensorBoard files), `onnx` and `onnxruntime` (they check lowbit's ONNX export). The venv lives in .venv (ignored); tests find it through CMake
# (LOWBIT_PYTHON). An existing venv only gets what it is missing.
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
if [ $with_torch -eq 1 ]; then
  if ! "$venv/bin/python" -c 'import torch, numpy' >/dev/null 2>&1; then
    echo "setup: creating $venv (system site packages)"
    rm -rf "$venv"
    /usr/bin/python3 -m venv --system-site-packages "$venv"
  fi
  pip_missing=()
  "$venv/bin/python" -c 'import safetensors' >/dev/null 2>&1 || pip_missing+=('safetensors==0.4.5')
  "$venv/bin/python" -c 'import tensorboard' >/dev/null 2>&1 || pip_missing+=('tensorboard==2.21.0')
  # The ONNX export tests (scripts/onnx_check.py): onnx's checker and onnxruntime; numpy pinned
  # below 2 so that Debian's python3-torch (built against numpy 1.x) keeps working in this venv.
  "$venv/bin/python" -c 'import onnx, onnxruntime' >/dev/null 2>&1 ||
    pip_missing+=('onnx==1.23.2' 'onnxruntime==1.32.0' 'numpy==1.26.4')
  if [ ${#pip_missing[@]} -gt 0 ]; then
    echo "setup: pip install ${pip_missing[*]} into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pip_missing[@]}" ||
      echo "setup: warning: pip could not install ${pip_missing[*]}; the tests that need them fail or skip"
  fi
fi
echo "setup: done"
