#!/usr/bin/env bash
# Data-parallel lowbit under Slurm, end to end, on a throw-away one-node cluster on localhost
# (tests/dist/slurm_cluster.sh):
#   a) srun -n 2 --mpi=pmix lowbit train: exits 0, summary.json has world_size 2 and top-1 > 0.3
#   b) scripts/slurm/train.sbatch, scaled down to 1 node x 2 tasks without GPUs: the job's
#      summary.json the same, and its output file holds lowbit's "finished" line
#   c) srun -n 2 --mpi=pmix lowbit info: "rank 0 of 2", "rank 1 of 2", "launcher srun"
#
# usage: tests/dist/slurm_test.sh LOWBIT_BINARY [CONFIG_DIR...]
# The CONFIG_DIR arguments are accepted and ignored: the test writes its own small config
# (Fashion-MNIST, ResNet-20, 1024 training images, 1 epoch, CPU).
# Exit codes: 0 passed, 1 failed, 77 skipped (ctest's skip code) when Slurm or munge is not
# installed (scripts/setup.sh installs them). Needs root (the test cluster runs slurmd as root).
# Takes about 20-40 s on 2 cores.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

if [ $# -lt 1 ]; then
  echo "usage: $0 LOWBIT_BINARY [CONFIG_DIR...]" >&2
  exit 2
fi
LOWBIT=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")

fail() {
  echo "slurm_test: FAILED: $*" >&2
  exit 1
}

export PATH="$PATH:/usr/sbin:/sbin"
missing=()
for b in munged mungekey slurmctld slurmd srun sbatch sinfo squeue; do
  command -v "$b" >/dev/null 2>&1 || missing+=("$b")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "slurm_test: SKIPPED: not installed: ${missing[*]} (scripts/setup.sh installs slurmctld, slurmd, slurm-client and munge)"
  exit 77
fi
[ -x "$LOWBIT" ] || fail "$LOWBIT is not an executable"
[ "$(id -u)" -eq 0 ] || fail "the test cluster runs slurmd as root (SlurmdUser=root); run this test as root"
[ -f "$root/scripts/slurm/train.sbatch" ] || fail "$root/scripts/slurm/train.sbatch is missing"

# Open MPI refuses root without these (it is what CI runs as).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Keep the output folders' and configs' paths free of the caller's working directory.
export TMPDIR=${TMPDIR:-/tmp}

DIR=$(mktemp -d "$TMPDIR/lowbit-slurm-test.XXXXXX")
keep=${LOWBIT_TEST_KEEP:-0}
cleanup() {
  local rc=$?
  slurm_stop "$DIR/cluster"
  if [ "$rc" -ne 0 ] || [ "$keep" = 1 ]; then
    echo "slurm_test: files kept in $DIR" >&2
  else
    rm -rf "$DIR"
  fi
}

# shellcheck source=tests/dist/slurm_cluster.sh
source "$here/slurm_cluster.sh"
t_start=$SECONDS
slurm_start "$DIR/cluster" || fail "could not start the test cluster (logs above)"
trap cleanup EXIT  # replaces slurm_start's trap: stops the daemons, then removes DIR

# A config that trains in seconds on 2 CPU ranks and still learns: 16 steps of 2 x 32 images.
# (AdamW at 4e-3 with a cosine schedule reaches about 40% test top-1 here; SGD at this size is
# left at chance by its BatchNorm statistics.) threads: 1 since 2 ranks share 2 cores.
CFG=$DIR/small.yaml
cat >"$CFG" <<'EOF'
name: slurm_smoke
seed: 0
device: cpu
threads: 1
data:
  dataset: fashion_mnist
  batch_size: 32
  eval_batch_size: 500
  num_workers: 1
  max_train_samples: 1024
  max_test_samples: 500
model:
  name: resnet20
stages:
  - name: train
    epochs: 1
    optimizer: {name: adamw, lr: 0.004, weight_decay: 5.0e-4}
    schedule: {name: cosine}
EOF

# check_summary RUN_DIR WHAT: summary.json exists, world_size 2, test_top1 > 0.3.
check_summary() {
  local run=$1 what=$2
  [ -f "$run/summary.json" ] || fail "$what: $run/summary.json was not written"
  python3 - "$run/summary.json" "$what" <<'EOF' || fail "$what: summary.json check failed (above)"
import json, sys
path, what = sys.argv[1], sys.argv[2]
s = json.load(open(path))
ws, top1 = s.get("world_size"), s.get("test_top1")
print(f"slurm_test: {what}: world_size {ws}, test_top1 {top1}")
if ws != 2:
    sys.exit(f"slurm_test: {what}: world_size is {ws!r}, expected 2")
if not isinstance(top1, (int, float)) or top1 <= 0.3:
    sys.exit(f"slurm_test: {what}: test_top1 is {top1!r}, expected > 0.3")
EOF
}

# a) srun -n 2 --mpi=pmix lowbit train
echo "slurm_test: a) srun -n 2 --mpi=pmix lowbit train"
t=$SECONDS
if ! timeout 120 srun -n 2 --mpi=pmix --kill-on-bad-exit=1 "$LOWBIT" train "$CFG" --out "$DIR/srun" --no-progress \
    >"$DIR/srun.log" 2>&1; then
  cat "$DIR/srun.log" >&2
  fail "a) srun -n 2 --mpi=pmix $LOWBIT train exited non-zero"
fi
cat "$DIR/srun.log"
grep -q "finished" "$DIR/srun.log" || fail "a) no 'finished' line in srun's output"
check_summary "$DIR/srun" "a) srun"
echo "slurm_test: a) passed in $((SECONDS - t)) s"

# b) sbatch scripts/slurm/train.sbatch, 1 node x 2 tasks, no GPUs (the command line overrides the
# file's #SBATCH defaults of 2 nodes x 8 GPUs; --gpus-per-node=0 works on a node without GRES).
echo "slurm_test: b) sbatch scripts/slurm/train.sbatch (1 node x 2 tasks)"
t=$SECONDS
out_file=$DIR/sbatch.out
jobid=$(cd "$DIR" && LOWBIT="$LOWBIT" CONFIG="$CFG" OUT="$DIR/sbatch" \
  sbatch --parsable -N 1 -n 2 --ntasks-per-node=2 --gpus-per-node=0 --cpus-per-task=1 \
  --time=00:10:00 -o "$out_file" "$root/scripts/slurm/train.sbatch") || fail "b) sbatch refused the job"
jobid=${jobid%%;*}
echo "slurm_test: b) job $jobid submitted"
# Poll squeue until the job leaves the queue (squeue lists pending, running and completing jobs).
while [ -n "$(squeue -j "$jobid" -h -o %T 2>/dev/null)" ]; do
  if [ $((SECONDS - t)) -ge 300 ]; then
    squeue -j "$jobid" >&2 || true
    scancel "$jobid" 2>/dev/null || true
    [ -f "$out_file" ] && cat "$out_file" >&2
    fail "b) job $jobid still in the queue after 300 s"
  fi
  sleep 1
done
# The job's exit: slurmctld keeps a finished job's record for MinJobAge (slurm_cluster.sh: 300 s).
record=$(scontrol show job "$jobid" 2>/dev/null | grep -o "JobState=[^ ]*\|ExitCode=[^ ]*" | tr '\n' ' ' || true)
[ -f "$out_file" ] || { slurm_print_logs "$DIR/cluster"; fail "b) job $jobid wrote no output file $out_file"; }
cat "$out_file"
echo "slurm_test: b) job $jobid ended: ${record:-(no record left)}"
[ -n "$record" ] || fail "b) slurmctld has no record of job $jobid, so its exit is unknown"
case "$record" in
  *"JobState=COMPLETED "*"ExitCode=0:0 "*) ;;
  *) fail "b) job $jobid did not complete with exit code 0: $record (output above)" ;;
esac
# A failed step also prints srun's, slurmstepd's or lowbit's "error:" lines; a successful run ends
# with rank 0's "finished" line.
if grep -qE "error:" "$out_file"; then
  fail "b) job $jobid reported errors (output above)"
fi
grep -q "lowbit: slurm_smoke finished" "$out_file" || fail "b) job $jobid: no 'finished' line in $out_file"
check_summary "$DIR/sbatch" "b) sbatch"
echo "slurm_test: b) passed in $((SECONDS - t)) s"

# c) srun -n 2 --mpi=pmix lowbit info: both ranks, and they know srun started them.
echo "slurm_test: c) srun -n 2 --mpi=pmix lowbit info"
t=$SECONDS
timeout 60 srun -n 2 --mpi=pmix "$LOWBIT" info >"$DIR/info.log" 2>&1 || {
  cat "$DIR/info.log" >&2
  fail "c) srun -n 2 --mpi=pmix $LOWBIT info exited non-zero"
}
grep -E "rank [0-9]+ of|launcher" "$DIR/info.log" || true
for want in "rank 0 of 2" "rank 1 of 2" "launcher srun"; do
  grep -q "$want" "$DIR/info.log" || { cat "$DIR/info.log" >&2; fail "c) '$want' missing in lowbit info's output"; }
done
echo "slurm_test: c) passed in $((SECONDS - t)) s"

echo "slurm_test: PASSED in $((SECONDS - t_start)) s"
