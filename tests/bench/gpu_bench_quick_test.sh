#!/bin/sh
# scripts/gpu_bench.sh --quick on the CPU: every measurement of the GPU session's speed run
# must run and its summary must hold the three verdicts (fake-quant bandwidth, QAT overhead,
# and, with PyTorch, the side-by-side ratios). No timing is checked.
# usage: gpu_bench_quick_test.sh SCRIPT LOWBIT OUTDIR [--no-torch]
set -eu
script=$1 lowbit=$2 out=$3
shift 3
rm -rf "$out"
OMP_NUM_THREADS=2 bash "$script" --quick --device cpu --lowbit "$lowbit" --out "$out" "$@"
summary="$out/bench_summary.md"
fail() { echo "gpu_bench_quick_test: $*" >&2; cat "$summary" >&2 2>/dev/null || true; exit 1; }
[ -s "$out/bench.jsonl" ] || fail "no $out/bench.jsonl"
grep -q '^Device copy bandwidth: ' "$summary" || fail "no copy bandwidth line"
for k in fake_quant_per_tensor_forward fake_quant_per_tensor_backward \
         lsq_per_channel_forward lsq_per_channel_backward; do
  grep -q "^| $k | " "$summary" || fail "no row for $k"
done
grep -q '^QAT step overhead, resnet20 batch 8 16x16: ' "$summary" || fail "no QAT overhead line"
if [ "${1:-}" != "--no-torch" ]; then
  grep -q '^| resnet20 | 8 | 16x16 | qat | ' "$summary" || fail "no lowbit/PyTorch qat row"
fi
echo "gpu_bench_quick_test: OK"
