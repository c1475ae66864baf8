#!/usr/bin/env python3
"""Checks a `lowbit export --format onnx` folder with the onnx and onnxruntime packages alone.

    python3 scripts/onnx_check.py DIR [--max-diff X] [--min-agreement F] [--json FILE]

DIR holds model.onnx and the sample lowbit wrote next to it: sample_input.npy (the normalised test
images, float32 NCHW), sample_labels.npy and sample_logits.npy (lowbit's logits on the same
images). The script runs onnx.checker.check_model (full check, with shape inference) and the
model in onnxruntime on the CPU (default graph optimisations, one thread), then prints one JSON
object: the largest absolute logit difference, the share of images where both predict the same
class, both top-1 accuracies. Exit code 1 when the difference is above --max-diff or the
agreement below --min-agreement, 2 when DIR lacks a file (docs/export.md).
"""
import argparse
import json
import os
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--max-diff", type=float, default=None,
                    help="fail when the largest absolute logit difference is above this")
    ap.add_argument("--min-agreement", type=float, default=None,
                    help="fail when the share of images with the same top-1 class is below this")
    ap.add_argument("--json", default=None, help="also write the result to this file")
    ap.add_argument("--no-optimize", action="store_true",
                    help="run onnxruntime without graph optimisations (no QDQ fusion)")
    args = ap.parse_args()

    import numpy as np
    import onnx
    import onnxruntime as ort

    files = {k: os.path.join(args.dir, k) for k in
             ("model.onnx", "sample_input.npy", "sample_labels.npy", "sample_logits.npy")}
    for f in files.values():
        if not os.path.exists(f):
            print(f"onnx_check: {f}: missing (export with lowbit export --format onnx)",
                  file=sys.stderr)
            return 2

    model = onnx.load(files["model.onnx"])
    onnx.checker.check_model(model, full_check=True)

    x = np.load(files["sample_input.npy"])
    labels = np.load(files["sample_labels.npy"])
    want = np.load(files["sample_logits.npy"])

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    if args.no_optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(files["model.onnx"], so, providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(["logits"], {"input": x[i:i + 500]})[0]
                          for i in range(0, len(x), 500)])

    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    scale = float(np.abs(want).max()) if want.size else 0.0
    pred_ort, pred_lowbit = got.argmax(1), want.argmax(1)
    n = len(labels)
    r = {
        "dir": args.dir,
        "images": n,
        "onnx_checker": "ok",
        "onnx_opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "onnxruntime": ort.__version__,
        "optimized": not args.no_optimize,
        "max_abs_logit_diff": float(diff.max()) if n else 0.0,
        "mean_abs_logit_diff": float(diff.mean()) if n else 0.0,
        "max_abs_logit": scale,
        "images_with_diff_above_1e-3": int((diff.max(1) > 1e-3).sum()) if n else 0,
        "top1_agreement": float((pred_ort == pred_lowbit).mean()) if n else 1.0,
        "onnxruntime_top1": float((pred_ort == labels).mean()) if n else 0.0,
        "lowbit_top1": float((pred_lowbit == labels).mean()) if n else 0.0,
    }
    r["top1_diff_points"] = 100 * (r["onnxruntime_top1"] - r["lowbit_top1"])
    print(json.dumps(r, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    ok = True
    if args.max_diff is not None and r["max_abs_logit_diff"] > args.max_diff:
        print(f"onnx_check: largest logit difference {r['max_abs_logit_diff']:.3g} is above "
              f"{args.max_diff:.3g}", file=sys.stderr)
        ok = False
    if args.min_agreement is not None and r["top1_agreement"] < args.min_agreement:
        print(f"onnx_check: top-1 agreement {r['top1_agreement']:.4f} is below "
              f"{args.min_agreement:.4f}", file=sys.stderr)
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
