#!/usr/bin/env bash
# Runs `lowbit bench train` and bench/pytorch_reference.py side by side on a list of
# configurations and prints a table of images/s with the ratio lowbit / PyTorch (> 1: lowbit is
# faster). Each side runs --repeat times, alternating, and the median images/s is reported, so a
# burst of background load hits both sides alike. docs/benchmarks.md shows a measured table.
#
#   bench/compare.sh                                   # resnet20 28x28x1 batch 128, fp32, CPU
#   bench/compare.sh --threads 2 resnet20,128,28,1 resnet56,128,32,3
#   bench/compare.sh resnet18,64,224,3,bf16,cuda       # on a GPU machine
#
# CONFIG is MODEL,BATCH,HW,CIN[,MODE[,DEVICE]] (MODE fp32, bf16, qat or qat_bf16 -- QAT under
# amp: bf16 -- default fp32; DEVICE default cpu). Options: --lowbit PATH (default
# build/tools/lowbit, or $LOWBIT), --python PATH (default .venv/bin/python, else python3),
# --threads T (default 2; both sides get it as --threads and
# OMP_NUM_THREADS/OPENBLAS_NUM_THREADS), --steps N (default 20), --warmup W (default 3),
# --repeat R (default 3), --classes K (default 10), --jsonl FILE (also append every raw JSON
# result to FILE).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

lowbit="${LOWBIT:-$root/build/tools/lowbit}"
python=""
threads=2
steps=20
warmup=3
repeat=3
classes=10
jsonl=""
configs=()

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --lowbit) lowbit="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --repeat) repeat="$2"; shift 2 ;;
    --classes) classes="$2"; shift 2 ;;
    --jsonl) jsonl="$2"; shift 2 ;;
    -*) echo "compare.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) configs+=("$1"); shift ;;
  esac
done
[[ ${#configs[@]} -gt 0 ]] || configs=("resnet20,128,28,1,fp32,cpu")
if [[ -z "$python" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
if [[ ! -x "$lowbit" ]]; then
  echo "compare.sh: no lowbit binary at $lowbit; build it (cmake --build build) or pass --lowbit" >&2
  exit 2
fi
"$python" -c "import torch" 2>/dev/null || {
  echo "compare.sh: $python cannot import torch (scripts/setup.sh installs python3-torch)" >&2
  exit 2
}

export OMP_NUM_THREADS="$threads" OPENBLAS_NUM_THREADS="$threads"
results="$(mktemp)"
trap 'rm -f "$results"' EXIT

for cfg in "${configs[@]}"; do
  IFS=, read -r model batch hw cin mode device <<<"$cfg"
  if [[ -z "${model:-}" || -z "${batch:-}" || -z "${hw:-}" || -z "${cin:-}" ]]; then
    echo "compare.sh: bad CONFIG '$cfg'; want MODEL,BATCH,HW,CIN[,MODE[,DEVICE]]" >&2
    exit 2
  fi
  mode="${mode:-fp32}"
  device="${device:-cpu}"
  amp=off
  if [[ "$mode" == qat_bf16 ]]; then mode=qat amp=bf16; fi  # QAT under amp: bf16
  args=(--model "$model" --batch "$batch" --hw "$hw" --cin "$cin" --classes "$classes"
        --steps "$steps" --warmup "$warmup" --device "$device" --mode "$mode" --amp "$amp"
        --threads "$threads" --json)
  echo "compare.sh: $cfg ($repeat x each, $threads threads, load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  for ((r = 0; r < repeat; ++r)); do
    "$lowbit" bench train "${args[@]}" | tee -a "$results" ${jsonl:+"$jsonl"} >/dev/null
    "$python" "$root/bench/pytorch_reference.py" train "${args[@]}" |
      tee -a "$results" ${jsonl:+"$jsonl"} >/dev/null
  done
done

"$python" - "$results" <<'EOF'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    mode = r["mode"] + ("_bf16" if r.get("amp") == "bf16" and r["mode"] != "bf16" else "")
    key = (r["model"], r["batch"], r["hw"], r["cin"], mode, r["device"], r["threads"])
    rows.setdefault(key, {}).setdefault(r["framework"], []).append(r)
hdr = ("model", "batch", "input", "mode", "device", "thr", "lowbit img/s", "torch img/s",
       "ratio", "lowbit ms", "torch ms", "lowbit MiB", "torch MiB")
fmt = "{:<13}{:>6}  {:<10}{:<9}{:<8}{:>4}{:>14}{:>13}{:>7}{:>11}{:>10}{:>12}{:>11}"
print(fmt.format(*hdr))
for (model, batch, hw, cin, mode, device, thr), fw in rows.items():
    def med(name, field):
        return statistics.median(x[field] for x in fw[name])
    lb, pt = med("lowbit", "images_per_s"), med("pytorch", "images_per_s")
    print(fmt.format(model, batch, f"{hw}x{hw}x{cin}", mode, device, thr, f"{lb:.1f}", f"{pt:.1f}",
                     f"{lb / pt:.2f}", f"{med('lowbit', 'ms_per_step'):.1f}",
                     f"{med('pytorch', 'ms_per_step'):.1f}",
                     f"{max(x['peak_mem_bytes'] for x in fw['lowbit']) / 2**20:.0f}",
                     f"{max(x['peak_mem_bytes'] for x in fw['pytorch']) / 2**20:.0f}"))
print("ratio = lowbit images/s / PyTorch images/s (median of the repeats); MiB = peak memory "
      "(CPU: peak RSS of the process, CUDA: caching-allocator peak)")
EOF
