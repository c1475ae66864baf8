#!/usr/bin/env bash
# `lowbit` under `mpirun -np 2` on real Fashion-MNIST (ctest dist_cli_mpi2, label mpi):
#   - training writes one run folder (rank 0) that records the world size;
#   - `lowbit eval` of 2 ranks prints exactly the top-1 of one process;
#   - a QAT stage (LSQ W4A4, activation steps initialised by EMA observers), a PfQ stage and a
#     mixed-precision search (alphas reduced over the ranks) keep the ranks identical
#     (the trainer checks the structure and the parameters across ranks and fails otherwise);
#   - a ptq stage (ZeroQ distilled calibration, percentile observers, W6 budget) on 2 ranks;
#   - a rank killed mid-epoch, a rank that throws and a rank that hangs end the job non-zero
#     within the timeout, naming the rank; `--resume` after the kill equals the uninterrupted run;
#   - a 2-rank checkpoint resumed by one process continues (and says so);
#   - bad launches: configs that differ between ranks, a world larger than the data, CUDA asked
#     for with fewer GPUs than ranks (none here).
# usage: mpi_cli_test.sh LOWBIT MPIRUN [MPIRUN ARGS...]
set -uo pipefail
lowbit=$1
shift
mpirun=("$@")
work=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
echo "work folder: $work"
export OMP_NUM_THREADS=1
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))$2)" "$1"; }

cat >"$work/small.yaml" <<'YAML'
name: small
seed: 0
device: cpu
log_interval: 8
data: {dataset: fashion_mnist, batch_size: 32, eval_batch_size: 100, num_workers: 1, max_train_samples: 1024, max_test_samples: 1000}
model: {name: resnet20}
stages:
  - name: train
    epochs: 2
    optimizer: {name: sgd, lr: 0.1, momentum: 0.9}
    schedule: {name: cosine}
YAML

echo "== train on 2 ranks"
"${mpirun[@]}" -np 2 "$lowbit" train "$work/small.yaml" --out "$work/a" --no-progress >"$work/a.log" 2>&1 ||
  { cat "$work/a.log"; fail "2-rank training"; }
[ "$(json "$work/a/summary.json" '["world_size"]')" = 2 ] || fail "summary.json world_size"
top1=$(json "$work/a/summary.json" '["test_top1"]')
python3 -c "import sys; sys.exit(0 if $top1 > 0.5 else 1)" || fail "2-rank top-1 $top1 <= 0.5"
[ "$(grep -c '"kind":"epoch"' "$work/a/log.jsonl")" = 2 ] || fail "log.jsonl: want 2 epoch records (rank 0 alone writes)"
grep -q "rank 1" "$work/a.log" && { cat "$work/a.log"; fail "rank 1 printed"; }

echo "== eval: 2 ranks print the one-process result"
one=$("$lowbit" eval "$work/small.yaml" --checkpoint "$work/a/model.safetensors" | grep top1) || fail "eval alone"
two=$("${mpirun[@]}" -np 2 "$lowbit" eval "$work/small.yaml" --checkpoint "$work/a/model.safetensors" | grep top1) ||
  fail "eval on 2 ranks"
echo "   alone: $one"
echo "   2 ranks: $two"
[ "$(echo "$one" | grep -o 'top1 [0-9.]*%')" = "$(echo "$two" | grep -o 'top1 [0-9.]*%')" ] || fail "top-1 differs"
echo "$two" | grep -q "(1000 images)" || fail "2-rank eval did not count 1000 images"

echo "== QAT (LSQ W4A4, EMA activation observers) and PfQ on 2 ranks"
cat >"$work/qat.yaml" <<YAML
name: qat
seed: 0
device: cpu
data: {dataset: fashion_mnist, batch_size: 32, eval_batch_size: 250, num_workers: 1, max_train_samples: 512, max_test_samples: 500}
model: {name: resnet20}
prune: {method: pfq}
quant:
  weight: {quantizer: lsq, bits: 4}
  activation: {quantizer: lsq, bits: 4, init: ema}
stages:
  - {name: float, epochs: 1, optimizer: {lr: 0.1}}
  - {name: pfq, kind: prune, epochs: 0}
  - {name: qat, kind: qat, epochs: 1, optimizer: {lr: 0.01}}
YAML
"${mpirun[@]}" -np 2 "$lowbit" train "$work/qat.yaml" --out "$work/q" --no-progress >"$work/q.log" 2>&1 ||
  { cat "$work/q.log"; fail "2-rank PfQ + QAT"; }
[ -f "$work/q/prune_report_pfq.json" ] || fail "no prune report"

echo "== post-training quantization (kind: ptq, percentile activations, ZeroQ W4 budget) on 2 ranks"
cat >"$work/ptq.yaml" <<YAML
name: ptq
seed: 0
device: cpu
data: {dataset: fashion_mnist, batch_size: 32, eval_batch_size: 250, num_workers: 1, max_train_samples: 512, max_test_samples: 500}
model: {name: resnet20}
ptq: {calibration: zeroq, activation_observer: percentile, budget: 6bit, zeroq: {iterations: 20, batch_size: 8}}
stages:
  - {name: ptq, kind: ptq, epochs: 0, init: $work/a/model.safetensors}
YAML
"${mpirun[@]}" -np 2 "$lowbit" train "$work/ptq.yaml" --out "$work/p" --no-progress >"$work/p.log" 2>&1 ||
  { cat "$work/p.log"; fail "2-rank ptq stage"; }
[ -f "$work/p/ptq_ptq.json" ] && [ -f "$work/p/pareto.csv" ] || fail "ptq stage: no ptq_ptq.json or pareto.csv"
grep -q '"kind":"ptq"' "$work/p/log.jsonl" || fail "ptq stage: no ptq record in log.jsonl"
[ "$(json "$work/p/summary.json" '["stages"]["ptq"]["calibration_images"]')" -gt 0 ] ||
  fail "ptq stage: summary.json has no stages.ptq.calibration_images"
"$lowbit" train "$work/ptq.yaml" --out "$work/p1" --no-progress >"$work/p1.log" 2>&1 ||
  { cat "$work/p1.log"; fail "1-process ptq stage"; }
p2=$(json "$work/p/summary.json" '["test_top1"]')
p1=$(json "$work/p1/summary.json" '["test_top1"]')
echo "   ptq stage top-1: 2 ranks $p2, 1 process $p1"
python3 -c "import sys; sys.exit(0 if $p2 > 0.5 else 1)" || fail "2-rank ptq top-1 $p2 <= 0.5"

echo "== a mixed-precision search and its QAT stage on 2 ranks (alphas identical on both)"
cat >"$work/search.yaml" <<YAML
name: search
seed: 0
device: cpu
data: {dataset: fashion_mnist, batch_size: 32, eval_batch_size: 250, num_workers: 1, max_train_samples: 512, max_test_samples: 500}
model: {name: dsnet}
search: {theta: 1.2x, theta_batches: 2, stable_epochs: 5}
quant: {weight: {quantizer: uniform, bits: 8}, first_last_bits: 0, fold_bn: false}
stages:
  - {name: float, epochs: 1, optimizer: {lr: 0.1}}
  - {name: mp, kind: search, epochs: 2, optimizer: {lr: 0.025}}
  - {name: tune, kind: qat, quantize: weights, epochs: 1, optimizer: {lr: 0.01}}
YAML
"${mpirun[@]}" -np 2 "$lowbit" train "$work/search.yaml" --out "$work/s" --no-progress >"$work/s.log" 2>&1 ||
  { cat "$work/s.log"; fail "2-rank search"; }
[ -f "$work/s/search_mp.yaml" ] || fail "no search_mp.yaml"
[ "$(json "$work/s/summary.json" '["stages"]["mp"]["kind"]')" = search ] || fail "summary.json: no search result"
[ "$(grep -c '"search":' "$work/s/log.jsonl")" = 2 ] || fail "log.jsonl: want 2 search records"

echo "== a rank killed mid-epoch, then --resume"
start=$(date +%s)
LOWBIT_FAULT=kill:1:2:5 timeout 120 "${mpirun[@]}" -np 2 -x LOWBIT_FAULT "$lowbit" train "$work/small.yaml" \
  --out "$work/b" --no-progress >"$work/b.log" 2>&1 && fail "killed rank: exit 0"
[ $(($(date +%s) - start)) -lt 100 ] || fail "killed rank: the job took too long"
grep -q "rank 1" "$work/b.log" || { cat "$work/b.log"; fail "killed rank: rank 1 not named"; }
"${mpirun[@]}" -np 2 "$lowbit" train "$work/small.yaml" --out "$work/b" --resume --no-progress >"$work/b2.log" 2>&1 ||
  { cat "$work/b2.log"; fail "resume"; }
cmp "$work/a/model.safetensors" "$work/b/model.safetensors" || fail "resumed 2-rank run differs from the uninterrupted one"

echo "== --resume with another world size: continues and says so"
LOWBIT_FAULT=kill:1:2:5 timeout 120 "${mpirun[@]}" -np 2 -x LOWBIT_FAULT "$lowbit" train "$work/small.yaml" \
  --out "$work/g" --no-progress >"$work/g.log" 2>&1 && fail "killed rank (g): exit 0"
"$lowbit" train "$work/small.yaml" --out "$work/g" --resume --no-progress >"$work/g2.log" 2>&1 ||
  { cat "$work/g2.log"; fail "resume of a 2-rank run on 1 process"; }
grep -q "written by a run of 2 rank(s), this run has 1" "$work/g2.log" || { cat "$work/g2.log"; fail "resume: no message"; }
[ "$(json "$work/g/summary.json" '["epochs"]')" = 2 ] || fail "resume on 1 process: epochs"

echo "== a rank that throws"
LOWBIT_FAULT=throw:1:1:3 timeout 120 "${mpirun[@]}" -np 2 -x LOWBIT_FAULT "$lowbit" train "$work/small.yaml" \
  --out "$work/c" --no-progress >"$work/c.log" 2>&1 && fail "throwing rank: exit 0"
grep -q "rank 1: error: LOWBIT_FAULT" "$work/c.log" || { cat "$work/c.log"; fail "throwing rank: message"; }

echo "== a rank that hangs (dist.timeout_s = 3)"
start=$(date +%s)
LOWBIT_FAULT=hang:1:1:3 timeout 120 "${mpirun[@]}" -np 2 -x LOWBIT_FAULT "$lowbit" train "$work/small.yaml" \
  --out "$work/d" --no-progress --set dist.timeout_s=3 >"$work/d.log" 2>&1 && fail "hanging rank: exit 0"
[ $(($(date +%s) - start)) -lt 60 ] || fail "hanging rank: not ended by the watchdog"
grep -q "rank 0: error: collective .* has waited" "$work/d.log" || { cat "$work/d.log"; fail "hanging rank: message"; }

echo "== bad launches"
"${mpirun[@]}" -np 1 "$lowbit" train "$work/small.yaml" --out "$work/e" --set seed=1 : \
  -np 1 "$lowbit" train "$work/small.yaml" --out "$work/e" --set seed=2 >"$work/e.log" 2>&1 && fail "mismatched configs: exit 0"
grep -q "differs between rank 0 and rank(s) 1" "$work/e.log" || { cat "$work/e.log"; fail "mismatched configs: message"; }
"${mpirun[@]}" -np 2 "$lowbit" train "$work/small.yaml" --out "$work/f" --set data.max_train_samples=1 >"$work/f.log" 2>&1 &&
  fail "world larger than the data: exit 0"
grep -q "fewer than the 2 ranks" "$work/f.log" || { cat "$work/f.log"; fail "world larger than the data: message"; }
"${mpirun[@]}" -np 2 "$lowbit" train "$work/small.yaml" --out "$work/h" --device cuda >"$work/h.log" 2>&1 &&
  fail "cuda with fewer GPUs than ranks: exit 0"
grep -q "CUDA device(s) are visible" "$work/h.log" || { cat "$work/h.log"; fail "cuda with fewer GPUs than ranks: message"; }
echo "PASS"
