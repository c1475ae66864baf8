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
                    help="fail when the largest absolute logit difference (unoptimized) is above this")
    ap.add_argument("--min-agreement", type=float, default=None,
                    help="fail when the share of images with the same top-1 class is below this")
    ap.add_argument("--json", default=None, help="also write the result to this file")
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

    tol = 1e-4 * float(np.abs(want).max())

    def run(optimize):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        if not optimize:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(files["model.onnx"], so, providers=["CPUExecutionProvider"])
        got = np.concatenate([sess.run(["logits"], {"input": x[i:i + 500]})[0]
                              for i in range(0, len(x), 500)])
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        pred = got.argmax(1)
        return {
            "max_abs_logit_diff": float(diff.max()),
            "mean_abs_logit_diff": float(diff.mean()),
            # Images whose logits all agree within float rounding (1e-4 of the largest |logit|):
            # no code on their path moved.
            "images_within_float_tolerance": float((diff.max(1) <= tol).mean()),
            "top1_agreement": float((pred == want.argmax(1)).mean()),
            "onnxruntime_top1": float((pred == labels).mean()),
            "top1_diff_points": 100 * float((pred == labels).mean() - (want.argmax(1) == labels).mean()),
        }

    n = len(labels)
    if n == 0 or want.shape != (n, want.shape[1]) or len(x) != n:
        print(f"onnx_check: {args.dir}: the sample is empty or its files disagree", file=sys.stderr)
        return 2
    r = {
        "dir": args.dir,
        "images": n,
        "onnx_checker": "ok",
        "onnx_opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "onnxruntime": ort.__version__,
        "max_abs_logit": float(np.abs(want).max()),
        "float_tolerance": tol,
        "lowbit_top1": float((want.argmax(1) == labels).mean()),
        # The graph as written: QuantizeLinear / DequantizeLinear and float ops (ORT_DISABLE_ALL).
        "unoptimized": run(False),
        # onnxruntime's default: QDQ groups fused into its integer kernels (QLinearConv, ...),
        # which requantize their outputs themselves.
        "optimized": run(True),
    }
    print(json.dumps(r, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    ok = True
    u = r["unoptimized"]
    if args.max_diff is not None and u["max_abs_logit_diff"] > args.max_diff:
        print(f"onnx_check: largest logit difference (unoptimized) {u['max_abs_logit_diff']:.3g} "
              f"is above {args.max_diff:.3g}", file=sys.stderr)
        ok = False
    for mode in ("unoptimized", "optimized"):
        a = r[mode]["top1_agreement"]
        if args.min_agreement is not None and a < args.min_agreement:
            print(f"onnx_check: top-1 agreement ({mode}) {a:.4f} is below "
                  f"{args.min_agreement:.4f}", file=sys.stderr)
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
