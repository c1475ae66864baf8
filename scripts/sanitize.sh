#!/usr/bin/env bash
# Builds lowbit and its GoogleTest suites with AddressSanitizer + UndefinedBehaviorSanitizer
# (CPU only, RelWithDebInfo: -O2 keeps the suites fast enough, -g gives the reports line numbers)
# and runs ctest. A report of either sanitizer fails the test that triggered it: UBSan is fatal
# (-fno-sanitize-recover=all, and halt_on_error=1 below), ASan always is; leaks are reported too.
#
# By default the build is the one scripts/fuzz.sh uses (clang-16, LOWBIT_FUZZ=ON: the same
# ASan+UBSan flags plus libFuzzer's coverage instrumentation) in build-fuzz/, so CI compiles lowbit
# once for both; the script builds everything, the fuzz targets included (scripts/fuzz.sh then
# only runs them), and ctest replays each fuzz target's corpus (tests <target>_corpus, label
# fuzz). --separate builds a plain LOWBIT_SANITIZE=ON tree with the default compiler in
# build-asan/ instead.
#
# Left out, and why:
#   labels gpu, torch, mpi, slurm   need a GPU, PyTorch, or several processes under mpirun/srun
#                                   (MPI is off in this build); the normal CI run covers them
#   QatAccuracy.*                   trains a model to an accuracy target: 146 s in Release, far
#                                   longer under ASan, and it adds no code path the others miss
#   bench_*, gpu_bench_quick        timing benchmarks (`lowbit bench`, scripts/gpu_bench.sh)
# Warnings are not errors here by default (LOWBIT_WERROR=ON to make them so): CI's gcc build keeps
# lowbit free of warnings; clang 16 adds a few of its own.
# Options (environment): LOWBIT_SANITIZE_BUILD_DIR, LOWBIT_SANITIZE_JOBS (nproc).
set -euo pipefail
cd "$(dirname "$0")/.."

separate=0
if [ "${1:-}" = "--separate" ]; then separate=1; fi
jobs=${LOWBIT_SANITIZE_JOBS:-$(nproc 2>/dev/null || echo 2)}
common=(-G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLOWBIT_CUDA=OFF -DLOWBIT_MPI=OFF
        -DLOWBIT_WERROR="${LOWBIT_WERROR:-OFF}")
if [ $separate -eq 1 ]; then
  build_dir=${LOWBIT_SANITIZE_BUILD_DIR:-build-asan}
  cmake -S . -B "$build_dir" "${common[@]}" -DLOWBIT_SANITIZE=ON >/dev/null
else
  build_dir=${LOWBIT_SANITIZE_BUILD_DIR:-build-fuzz}
  command -v clang++-16 >/dev/null || {
    echo "sanitize: clang++-16 not found (scripts/setup.sh installs clang-16)" >&2
    exit 2
  }
  cmake -S . -B "$build_dir" "${common[@]}" -DCMAKE_C_COMPILER=clang-16 \
    -DCMAKE_CXX_COMPILER=clang++-16 -DLOWBIT_FUZZ=ON >/dev/null
fi

t0=$(date +%s)
cmake --build "$build_dir" -j "$jobs"
t1=$(date +%s)
echo "sanitize: built $build_dir in $((t1 - t0)) s"

symbolizer=$(command -v llvm-symbolizer-16 || command -v llvm-symbolizer || true)
if [ -n "$symbolizer" ]; then export ASAN_SYMBOLIZER_PATH=$symbolizer; fi
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
cd "$build_dir"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-$jobs} ctest --output-on-failure -j "$jobs" --timeout 1200 \
  -LE 'gpu|torch|mpi|slurm' -E '^(QatAccuracy\.|bench_|gpu_bench_quick)'
echo "sanitize: ctest done in $(($(date +%s) - t1)) s"
