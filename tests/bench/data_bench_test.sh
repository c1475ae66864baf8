#!/bin/sh
# The short CI form of the input-pipeline benchmark: scripts/make_jpegs.py writes a few small
# JPEGs, `lowbit bench data` (scaled and whole-image decode, 0 and 2 workers) and
# bench/pytorch_reference.py data (when torchvision imports) time them and print the documented
# JSON fields. No timing assertion. Exits 77 (skipped) without numpy and PIL.
# Usage: data_bench_test.sh LOWBIT PYTHON REPO WORKDIR
set -eu
lowbit="$1" python="$2" repo="$3" work="$4"
if ! /usr/bin/python3 -c "import numpy, PIL" >/dev/null 2>&1; then
  echo "skipped: /usr/bin/python3 lacks numpy or PIL (scripts/setup.sh installs them)"
  exit 77
fi
rm -rf "$work"
/usr/bin/python3 "$repo/scripts/make_jpegs.py" "$work/jpegs" --images 24 --classes 3 \
  --width 80 --height 60
check() {  # check FRAMEWORK: stdin is one JSON object with every documented field
  /usr/bin/python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
want = ["bench", "framework", "folder", "size", "batch", "workers", "images", "seconds",
        "images_per_s", "images_per_s_per_core"]
missing = [k for k in want if k not in r]
assert not missing, "missing %s in %s" % (missing, r)
assert r["bench"] == "data" and r["framework"] == sys.argv[1], r
assert r["images"] >= 16 and r["images_per_s"] > 0, r
print("  %s: %.1f images/s, %s worker(s)" % (r["framework"], r["images_per_s"], r["workers"]))
' "$1"
}
for opts in "--workers 0" "--workers 2" "--workers 0 --exact-decode"; do
  # shellcheck disable=SC2086
  "$lowbit" bench data --folder "$work/jpegs" --size 32 --batch 8 --images 16 $opts --json | check lowbit
done
if "$lowbit" bench data --folder "$work/nosuch" --json >"$work/err.txt" 2>&1; then
  echo "bench data on a missing folder exited 0"; exit 1
fi
grep -q "nosuch" "$work/err.txt" || { echo "the error does not name the folder:"; cat "$work/err.txt"; exit 1; }
if [ -x "$python" ] && "$python" -c "import torchvision" >/dev/null 2>&1; then
  "$python" "$repo/bench/pytorch_reference.py" data --folder "$work/jpegs" --size 32 --batch 8 \
    --images 16 --json | check pytorch
else
  echo "  pytorch: skipped (no torchvision in $python; scripts/setup.sh installs python3-torchvision)"
fi
echo "bench data: lowbit and pytorch print the documented JSON"
