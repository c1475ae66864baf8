#!/usr/bin/env python3
"""Reads a lowbit run's TensorBoard event file with the `tensorboard` package and checks it
against the run's own files (tests/train/tensorboard_test.cpp): every number of every log.jsonl
record is a scalar <stage>/<kind>/<field> at the record's step (or epoch), equal to it in float32;
every parameter has a histogram per epoch (a quantizer's from its stage on) whose counts add up to its size, and the last epoch's
histograms have the min, max and sum of model.safetensors; the config text is config.yaml. The
raw record count guards against a record the reader dropped (it stops quietly at a bad CRC).
Usage: tensorboard_check.py RUN_DIR. Exit 1 with the first mismatches."""
import json
import pathlib
import sys

import numpy as np
from safetensors.numpy import load_file
from tensorboard.backend.event_processing import event_accumulator, event_file_loader

POSITION = {"epoch", "step", "world_size"}
errors = []


def check(cond, msg):
    if not cond:
        errors.append(msg)


run = pathlib.Path(sys.argv[1])
files = sorted(run.glob("events.out.tfevents.*"))
if len(files) != 1:
    sys.exit(f"{run}: wants one event file, found {[f.name for f in files]}")

records = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines() if l.strip()]
weights = load_file(str(run / "model.safetensors"))
config = (run / "config.yaml").read_text()

ea = event_accumulator.EventAccumulator(
    str(run),
    size_guidance={event_accumulator.SCALARS: 0, event_accumulator.HISTOGRAMS: 0,
                   event_accumulator.TENSORS: 0},
)
ea.Reload()
tags = ea.Tags()

# Scalars: one per numeric field of each record, at the record's step or epoch.
expected = {}
for r in records:
    at = r["step"] if "step" in r else r["epoch"]
    prefix = (r["stage"] + "/" if r.get("stage") else "") + r["kind"] + "/"
    for k, v in r.items():
        if k in POSITION or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        expected.setdefault(prefix + k, []).append((at, float(np.float32(v))))
check(set(tags["scalars"]) == set(expected),
      f"scalar tags {sorted(tags['scalars'])} != log fields {sorted(expected)}")
n_scalars = 0
for tag, want in expected.items():
    got = [(e.step, e.value) for e in ea.Scalars(tag)] if tag in tags["scalars"] else []
    n_scalars += len(want)
    check(got == want, f"{tag}: event file {got[:4]}... != log.jsonl {want[:4]}...")

# Histograms: every parameter once per epoch.
epochs = [r["epoch"] for r in records if r["kind"] == "epoch"]
last = epochs[-1]
quant_kinds = set()
n_hist = 0
hist_tags = tags["histograms"]
check(len(hist_tags) > 0, "no histograms")
for tag in hist_tags:
    group, name = tag.split("/", 1)
    check(group in ("params", "quantizers"), f"{tag}: unexpected group")
    if group == "quantizers":
        quant_kinds.add(name.rsplit(".", 1)[-1])
    if name not in weights:
        check(False, f"{tag}: no tensor {name} in model.safetensors")
        continue
    w = weights[name].astype(np.float64).ravel()
    events = ea.Histograms(tag)
    n_hist += len(events)
    # Parameters from the first epoch on; quantizers' from the epoch of the stage that converts
    # the model to the last.
    got = [e.step for e in events]
    want = epochs if group == "params" else epochs[len(epochs) - len(got):]
    check(len(got) > 0 and got == want, f"{tag}: steps {got} != {want}")
    for e in events:
        h = e.histogram_value
        check(h.num == w.size, f"{tag} epoch {e.step}: num {h.num} != {w.size} values")
        check(sum(h.bucket) == h.num, f"{tag} epoch {e.step}: buckets add up to {sum(h.bucket)}")
        check(len(h.bucket) == len(h.bucket_limit) and 1 <= len(h.bucket) <= 30,
              f"{tag}: {len(h.bucket)} buckets, {len(h.bucket_limit)} limits")
        check(list(h.bucket_limit) == sorted(h.bucket_limit), f"{tag}: limits not increasing")
        if e.step == last:
            check(h.min == w.min() and h.max == w.max(),
                  f"{tag}: min/max {h.min}/{h.max} != model.safetensors {w.min()}/{w.max()}")
            check(abs(h.sum - w.sum()) <= 1e-5 * (1 + np.abs(w).sum()),
                  f"{tag}: sum {h.sum} != model.safetensors {w.sum()}")
            check(abs(h.sum_squares - (w * w).sum()) <= 1e-5 * (1 + (w * w).sum()),
                  f"{tag}: sum of squares {h.sum_squares} != {(w * w).sum()}")
            # Every value in its bucket: recount from the limits (right edges, the first
            # bucket starting at min).
            edges = [h.min] + list(h.bucket_limit)
            if len(h.bucket) > 1:
                counts, _ = np.histogram(w, bins=np.array(edges))
                check(np.abs(counts - np.array(h.bucket)).sum() <= 2,  # values on an edge
                      f"{tag}: buckets {list(h.bucket)} != recount {list(counts)}")
# Parameters that are not in the event file: every float tensor of the model that is not a
# buffer (running statistics, quantizer state) has a histogram.
names = {t.split("/", 1)[1] for t in hist_tags}
for k in weights:
    if k.endswith((".weight", ".bias", ".scale", ".alpha")) and k not in names:
        check(False, f"{k}: in model.safetensors but no histogram")

# The config as text.
check(tags["tensors"] == ["config"], f"tensor tags {tags['tensors']}")
if "config" in tags["tensors"]:
    text = ea.Tensors("config")[0].tensor_proto.string_val[0].decode()
    check(text == "```yaml\n" + config.rstrip("\n") + "\n```", f"config text {text!r}")
    check(ea.SummaryMetadata("config").plugin_data.plugin_name == "text", "config: not text plugin")

# The raw records: file_version, config, scalars, histograms; nothing dropped, nothing extra.
raw = list(event_file_loader.LegacyEventFileLoader(str(files[0])).Load())
check(len(raw) == 2 + n_scalars + n_hist,
      f"{len(raw)} records != 2 + {n_scalars} scalars + {n_hist} histograms")
check(raw[0].file_version == "brain.Event:2", f"first record {raw[0]}")

steps = sum(1 for r in records if r["kind"] == "step")
print(f"step records {steps}, epoch records {len(epochs)}, scalars {n_scalars}, "
      f"histograms {n_hist} ({len(hist_tags)} tags)")
print("quantizer kinds: " + " ".join(sorted(quant_kinds)))
if errors:
    print("\n".join(errors[:20]), file=sys.stderr)
    sys.exit(1)
print("ok")
