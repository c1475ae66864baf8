#!/usr/bin/env bash
# The speed measurements of issue 8 in one go, for the lent GPU machine (where device time is
# short: scripts/gpu_check.sh --bench runs this right after its tests, in the same call), and
# in a short form on any machine (--quick --device cpu: CI runs that, so the script cannot rot).
#
#   1. `lowbit bench kernel all --json`: the device copy bandwidth and every kernel, among them
#      fake-quant forward/backward (uniform and LSQ, per tensor and per channel) with the
#      fraction of the copy bandwidth they reach (target: at least 0.9 on the GPU);
#   2. the QAT overhead: `lowbit bench train` of the same model in fp32 and in qat (W4A4
#      per-channel LSQ, BN folded) (target: a QAT step at most 10% slower than the float one;
#      taken from step 3's lowbit runs when PyTorch is there);
#   3. lowbit against PyTorch (bench/compare.sh): ResNet-50 and MobileNetV2 at 224x224 in
#      bf16, fp32 and qat (target: lowbit at least 1.2x PyTorch's images/s).
# Every raw JSON result goes to OUT/bench.jsonl, the verdicts against the targets to
# OUT/bench_summary.md (also printed). Exit status: 0 when every measurement ran (a missed
# target is a result, not an error), 1 when one failed, 2 on bad arguments.
#
#   scripts/gpu_bench.sh [--lowbit PATH] [--python PATH] [--device cuda|cpu] [--out DIR]
#                        [--quick] [--no-torch]
#
#   --lowbit   the binary (default $LOWBIT or build/tools/lowbit)
#   --python   the Python with torch for the reference (default .venv/bin/python, else python3)
#   --device   cuda (default) or cpu
#   --out      where the results go (default $OUT when set, else bench-results/)
#   --quick    small sizes and few steps: checks that every measurement runs, in seconds
#   --no-torch skip the PyTorch side (step 3)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

lowbit="${LOWBIT:-$root/build/tools/lowbit}"
python=""
device=cuda
out="${OUT:-$root/bench-results}"
quick=0
torch=1

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --lowbit) lowbit="${2:?--lowbit needs a path}"; shift 2 ;;
    --python) python="${2:?--python needs a path}"; shift 2 ;;
    --device) device="${2:?--device needs cuda or cpu}"; shift 2 ;;
    --out) out="${2:?--out needs a folder}"; shift 2 ;;
    --quick) quick=1; shift ;;
    --no-torch) torch=0; shift ;;
    *) echo "gpu_bench.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$device" in
  cuda|cpu) ;;
  *) echo "gpu_bench.sh: --device must be cuda or cpu, got '$device'" >&2; exit 2 ;;
esac
[[ -x "$lowbit" ]] || { echo "gpu_bench.sh: no lowbit binary at $lowbit (--lowbit)" >&2; exit 2; }
if [[ -z "$python" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
# gpu_check.sh exports LD_LIBRARY_PATH with the bundled Debian libraries for lowbit; PyTorch's
# wheel brings its own and must not see those, so its side runs through a wrapper without it.
if [[ -n "${LD_LIBRARY_PATH:-}" ]]; then
  wrapper="$(mktemp)"
  trap 'rm -f "$wrapper"' EXIT
  printf '#!/bin/sh\nexec env -u LD_LIBRARY_PATH %q "$@"\n' "$(command -v "$python")" >"$wrapper"
  chmod +x "$wrapper"
  python="$wrapper"
fi
if [[ $torch -eq 1 ]] && ! "$python" -c "import torch" 2>/dev/null; then
  echo "gpu_bench.sh: $python cannot import torch; the PyTorch side is skipped" >&2
  torch=0
fi

mkdir -p "$out"
jsonl="$out/bench.jsonl"
summary="$out/bench_summary.md"
: >"$jsonl"
status=0
say() { echo "gpu_bench: $*" >&2; }
# Runs a command whose stdout is JSON lines; appends them, and records a failure without
# stopping the other measurements.
record() {
  local what="$1"; shift
  say "$what"
  if ! "$@" >>"$jsonl"; then
    say "FAILED: $what"
    status=1
  fi
}

# The sizes: the issue's (224x224, batches a GPU trains at), or small ones that run in seconds.
if [[ $quick -eq 1 ]]; then
  kernel_args=(--iters 3 --warmup 1)
  kernels=(fake_quant)  # every run measures the copy bandwidth first
  kernel_size=(--size 262144,64)
  big=(resnet20 8 16 3)
  steps=(--steps 2 --warmup 1)
  repeat=1
else
  kernel_args=(--iters 20 --warmup 3)
  kernels=(all)
  kernel_size=()
  big=(resnet50 64 224 3)
  steps=(--steps 20 --warmup 5)
  repeat=2
fi
threads=()
if [[ "$device" == cpu ]]; then threads=(--threads "${OMP_NUM_THREADS:-2}"); fi

# --- 1. kernels ------------------------------------------------------------------------------
for k in "${kernels[@]}"; do
  record "kernel $k" "$lowbit" bench kernel "$k" "${kernel_size[@]}" --device "$device" \
    "${kernel_args[@]}" "${threads[@]}" --json
done

# --- 2. the QAT overhead on lowbit alone (step 3 measures it too, beside PyTorch) -------------
[[ $torch -eq 1 ]] || for mode in fp32 qat; do
  record "train ${big[0]} $mode" "$lowbit" bench train --model "${big[0]}" --batch "${big[1]}" \
    --hw "${big[2]}" --cin "${big[3]}" --device "$device" --mode "$mode" "${steps[@]}" \
    "${threads[@]}" --json
done

# --- 3. against PyTorch ----------------------------------------------------------------------
if [[ $torch -eq 1 ]]; then
  if [[ $quick -eq 1 ]]; then
    models=("resnet20,8,16,3")
  else
    models=("resnet50,64,224,3" "mobilenet_v2,64,224,3")
  fi
  configs=()
  for m in "${models[@]}"; do
    for mode in bf16 fp32 qat; do
      [[ "$device" == cpu && "$mode" == bf16 && $quick -eq 1 ]] && continue  # needs AVX-512 bf16
      configs+=("$m,$mode,$device")
    done
  done
  n=${steps[1]}
  w=${steps[3]}
  : >"$out/compare.txt"
  # One compare.sh per configuration: a configuration that fails (say torch.ao's QAT on the
  # machine's PyTorch) costs only its own row.
  for cfg in "${configs[@]}"; do
    say "compare.sh $cfg"
    if ! LOWBIT="$lowbit" bash "$root/bench/compare.sh" --python "$python" --repeat "$repeat" \
        --steps "$n" --warmup "$w" ${threads:+--threads "${threads[1]}"} --jsonl "$jsonl" \
        "$cfg" >>"$out/compare.txt"; then
      say "FAILED: compare.sh $cfg"
      status=1
    fi
  done
  cat "$out/compare.txt" >&2
fi

# --- verdicts --------------------------------------------------------------------------------
"$python" - "$jsonl" "$summary" "$device" <<'EOF'
import json, statistics, sys
path, summary, device = sys.argv[1:4]
rows = [json.loads(l) for l in open(path) if l.strip()]
out = [f"# lowbit speed against the issue 8 targets ({device})", ""]
kern = [r for r in rows if r.get("bench") == "kernel"]
copy = next((r for r in kern if r["kernel"] == "copy"), None)
if copy:
    out.append(f"Device copy bandwidth: {copy['copy_gb_per_s']:.1f} GB/s.")
    out.append("")
fq = [r for r in kern if "per_tensor" in r["kernel"] or "per_channel" in r["kernel"]]
if fq:
    out += ["| fake-quant kernel | shape | ms | GB/s | of copy | target 0.9 |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for r in fq:
        ok = "met" if r["bw_fraction"] >= 0.9 else "not met"
        out.append(f"| {r['kernel']} | {r['shape']} | {r['ms']:.3f} | {r['gb_per_s']:.1f} | "
                   f"{r['bw_fraction']:.2f} | {ok} |")
    out.append("")
lb = {}
for r in rows:
    if r.get("bench") == "train" or "images_per_s" in r:
        key = (r["framework"], r["model"], r["batch"], r["hw"], r["mode"])
        lb.setdefault(key, []).append(r)
med = lambda key, f: statistics.median(x[f] for x in lb[key])
for (fw, model, batch, hw, mode) in sorted(lb):
    if fw != "lowbit" or mode != "qat":
        continue
    f32 = ("lowbit", model, batch, hw, "fp32")
    if f32 in lb:
        over = med((fw, model, batch, hw, mode), "ms_per_step") / med(f32, "ms_per_step") - 1
        ok = "met" if over <= 0.10 else "not met"
        out.append(f"QAT step overhead, {model} batch {batch} {hw}x{hw}: "
                   f"{med((fw, model, batch, hw, mode), 'ms_per_step'):.1f} ms vs "
                   f"{med(f32, 'ms_per_step'):.1f} ms fp32 = {over * 100:+.1f}% "
                   f"(target at most +10%: {ok}).")
out.append("")
pairs = [k for k in sorted(lb) if k[0] == "lowbit" and ("pytorch",) + k[1:] in lb]
if pairs:
    out += ["| model | batch | input | mode | lowbit img/s | PyTorch img/s | ratio | target 1.2 |",
            "| --- | ---: | --- | --- | ---: | ---: | ---: | --- |"]
    for k in pairs:
        a, b = med(k, "images_per_s"), med(("pytorch",) + k[1:], "images_per_s")
        ok = "met" if a / b >= 1.2 else "not met"
        out.append(f"| {k[1]} | {k[2]} | {k[3]}x{k[3]} | {k[4]} | {a:.1f} | {b:.1f} | {a / b:.2f} | {ok} |")
text = "\n".join(out) + "\n"
open(summary, "w").write(text)
print(text)
EOF
say "results: $jsonl, $summary"
exit $status
