#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/) with clang-16 in build-fuzz/ (CPU only; every lowbit
# library with -fsanitize=fuzzer-no-link,address,undefined) and runs each for SECONDS (default
# 30) from its seed corpus, tests/fuzz/corpus/<target>/ (with tests/fuzz/<target>.dict when there
# is one). New inputs go to a scratch copy of the
# corpus, never into the source tree. Exits non-zero on any finding (crash, sanitizer report,
# uncaught exception, timeout, out-of-memory) and prints the input that caused it, which
# libFuzzer writes as build-fuzz/findings/<target>/crash-*|timeout-*|oom-*. To reproduce one:
#   build-fuzz/tests/fuzz/<target> <file>
# Warnings are not errors here by default (LOWBIT_WERROR=ON to make them so): CI's gcc build keeps
# lowbit free of warnings; clang 16 adds a few of its own (an unused private field of the CUDA
# device guard in CPU-only builds, for one).
# Options (environment): LOWBIT_FUZZ_BUILD_DIR (build-fuzz), LOWBIT_FUZZ_TARGETS (all, e.g.
# "fuzz_idx fuzz_config"), LOWBIT_FUZZ_JOBS (nproc), CC/CXX (clang-16/clang++-16).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

seconds=${1:-30}
build_dir=${LOWBIT_FUZZ_BUILD_DIR:-build-fuzz}
jobs=${LOWBIT_FUZZ_JOBS:-$(nproc 2>/dev/null || echo 2)}
all_targets=(fuzz_idx fuzz_cifar fuzz_jpeg fuzz_safetensors fuzz_config fuzz_checkpoint_meta)
read -r -a targets <<< "${LOWBIT_FUZZ_TARGETS:-${all_targets[*]}}"

command -v "${CXX:-clang++-16}" >/dev/null || {
  echo "fuzz: ${CXX:-clang++-16} not found (scripts/setup.sh installs clang-16)" >&2
  exit 2
}

t0=$(date +%s)
cmake -S . -B "$build_dir" -G Ninja \
  -DCMAKE_C_COMPILER="${CC:-clang-16}" -DCMAKE_CXX_COMPILER="${CXX:-clang++-16}" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DLOWBIT_FUZZ=ON -DLOWBIT_CUDA=OFF -DLOWBIT_MPI=OFF \
  -DLOWBIT_WERROR="${LOWBIT_WERROR:-OFF}" >/dev/null
cmake --build "$build_dir" -j "$jobs" --target "${targets[@]}"
t1=$(date +%s)
echo "fuzz: built ${#targets[@]} target(s) in $((t1 - t0)) s"

# Symbolized stacks in the reports (llvm-16's symbolizer, else any llvm-symbolizer).
symbolizer=$(command -v llvm-symbolizer-16 || command -v llvm-symbolizer || true)
if [ -n "$symbolizer" ]; then export ASAN_SYMBOLIZER_PATH=$symbolizer; fi
# Fatal UBSan with stacks; ASan leak checking stays on (libFuzzer reports leaks per input).
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1}
# The readers use OpenMP and worker threads nowhere on these paths; keep runs single-threaded.
export OMP_NUM_THREADS=1

failed=()
for t in "${targets[@]}"; do
  corpus="$root/tests/fuzz/corpus/$t"
  work="$root/$build_dir/fuzz-work/$t"
  findings="$root/$build_dir/findings/$t"
  rm -rf "$work" "$findings"
  mkdir -p "$work" "$findings"
  [ -d "$corpus" ] && cp -r "$corpus/." "$work/"
  echo "fuzz: $t for ${seconds} s (corpus $(ls "$work" | wc -l) inputs)"
  log="$root/$build_dir/findings/$t.log"
  dict=()
  [ -f "$root/tests/fuzz/$t.dict" ] && dict=(-dict="$root/tests/fuzz/$t.dict")
  set +e
  "$root/$build_dir/tests/fuzz/$t" "$work" "${dict[@]}" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$findings/" >"$log" 2>&1
  rc=$?
  set -e
  stats=$(grep -E '^stat::(number_of_executed_units|new_units_added)' "$log" | awk '{print $2}' | paste -sd' ')
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
  echo "fuzz: $t: exit $rc, executions/new units: ${stats:-?}, ${cov:-no coverage line}"
  artifacts=$(find "$findings" -type f | sort)
  if [ $rc -ne 0 ] || [ -n "$artifacts" ]; then
    failed+=("$t")
    echo "fuzz: $t FOUND A PROBLEM; the end of its log ($log):" >&2
    tail -n 60 "$log" >&2
    for a in $artifacts; do
      echo "fuzz: input: $a ($(stat -c %s "$a") bytes); reproduce: $build_dir/tests/fuzz/$t $a" >&2
    done
  fi
done
echo "fuzz: done in $(($(date +%s) - t0)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: findings in: ${failed[*]}" >&2
  exit 1
fi
