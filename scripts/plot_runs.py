#!/usr/bin/env python3
"""`lowbit plot RUN... [--out FILE.png]`: the curves of one or more runs on shared axes, drawn
with matplotlib from their log.jsonl and summary.json only (docs/training.md, "Watching runs").

Panels: training loss against the optimizer step (stages placed one after the other), test top-1
against the epoch, the learning rate against the step, and, where a run has them, the weight bits
of each layer (a quantized run's summary) and the channels kept per layer (prune_report_*.json).
Exits 2 naming the run when a folder has no log.jsonl or a line of it is not a JSON record, except
a last line without its newline (a record cut short while written), which is skipped with a
warning; exits 2 when matplotlib cannot be imported.
"""
import argparse
import json
import pathlib
import sys


def fail(msg):
    print(f"lowbit plot: error: {msg}", file=sys.stderr)
    sys.exit(2)


def read_json(path):
    try:
        j = json.loads(path.read_text())
    except ValueError as e:
        fail(f"{path}: not JSON ({e})")
    if not isinstance(j, dict):
        fail(f"{path}: not a JSON object")
    return j


def read_run(folder):
    p = pathlib.Path(folder)
    log = p / "log.jsonl"
    if not log.is_file():
        fail(f"{p}: no log.jsonl (is it a lowbit run folder?)")
    steps, epochs, search = [], [], []
    offset, last_stage, last_step = 0, None, -1
    text = log.read_text()
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            if not isinstance(r, dict):
                raise ValueError("not an object")
        except ValueError:
            if n == len(lines) and not text.endswith("\n"):
                # A record cut short: the run is writing it now, or was killed while writing it.
                print(f"lowbit plot: warning: {log}:{n}: ignoring the last line, an incomplete "
                      "record (a run still writing, or killed mid-write)", file=sys.stderr)
                break
            fail(f"{log}:{n}: not a JSON record")
        if r.get("kind") == "step":
            if last_stage is not None and r.get("stage") != last_stage:
                offset += last_step + 1  # the next stage's steps start at 0 again
            last_stage, last_step = r.get("stage"), r.get("step", 0)
            steps.append((offset + r.get("step", 0), r.get("train_loss"), r.get("lr")))
        elif r.get("kind") == "epoch":
            epochs.append((r.get("epoch"), r.get("test_top1")))
            if isinstance(r.get("search"), dict):  # a mixed-precision search's epoch
                search.append((r.get("epoch"), r["search"].get("probabilities", {})))
    summary = read_json(p / "summary.json") if (p / "summary.json").is_file() else {}
    prune = []
    for rep in sorted(p.glob("prune_report*.json")):
        prune += read_json(rep).get("layers", [])
    return {"name": str(p), "steps": steps, "epochs": epochs, "summary": summary, "prune": prune,
            "search": search}


def main():
    ap = argparse.ArgumentParser(prog="lowbit plot", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders (holding log.jsonl)")
    ap.add_argument("--out", default="plot.png", help="the PNG to write (default plot.png)")
    a = ap.parse_args()
    runs = [read_run(r) for r in a.runs]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("matplotlib is missing: apt-get install python3-matplotlib (scripts/setup.sh)")

    def weighted(r):  # the layers with weights (convolutions, linear), in forward order
        return [l for l in r["summary"].get("account", {}).get("layers", []) if l.get("weight_bits", 0) > 0]

    quantized = [r for r in runs if any(l["weight_bits"] < 32 for l in weighted(r))]
    pruned = [r for r in runs if r["prune"]]
    searched = [r for r in runs if r["search"]]
    panels = 3 + (1 if quantized else 0) + (1 if pruned else 0) + (1 if searched else 0)
    fig, axes = plt.subplots(panels, 1, figsize=(9, 3.2 * panels))
    ax_loss, ax_top1, ax_lr = axes[0], axes[1], axes[2]
    for r in runs:
        if r["steps"]:
            x = [s[0] for s in r["steps"]]
            ax_loss.plot(x, [s[1] for s in r["steps"]], label=r["name"])
            ax_lr.plot(x, [s[2] for s in r["steps"]], label=r["name"])
        if r["epochs"]:
            ax_top1.plot([e[0] for e in r["epochs"]], [100 * e[1] for e in r["epochs"]], marker="o", label=r["name"])
    ax_loss.set(xlabel="optimizer step", ylabel="train loss", title="training loss")
    ax_top1.set(xlabel="epoch", ylabel="test top-1 %", title="test accuracy")
    ax_lr.set(xlabel="optimizer step", ylabel="learning rate", title="learning rate")
    k = 3
    if quantized:
        ax = axes[k]
        k += 1
        for r in quantized:
            ls = weighted(r)
            ax.plot(range(len(ls)), [l["weight_bits"] for l in ls], marker=".", label=r["name"])
        ax.set(xlabel="layer (forward order)", ylabel="weight bits", title="bits per layer")
    if pruned:
        ax = axes[k]
        for r in pruned:
            ls = r["prune"]
            ax.plot(range(len(ls)), [l.get("channels_after", 0) for l in ls], marker=".", label=r["name"] + " kept")
            ax.plot(range(len(ls)), [l.get("channels_before", 0) for l in ls], linestyle=":", label=r["name"] + " before")
        ax.set(xlabel="pruned layer", ylabel="channels", title="channels kept per layer")
        k += 1
    if searched:
        # The probability of each layer's last candidate (the widest in the recipes) per epoch.
        ax = axes[k]
        for r in searched:
            layers = list(r["search"][-1][1].keys())
            for name in layers:
                pts = [(e, p[name][-1]) for e, p in r["search"] if name in p and p[name]]
                ax.plot([e for e, _ in pts], [v for _, v in pts], marker=".",
                        label=(r["name"] + " " if len(searched) > 1 else "") + name)
        ax.set(xlabel="epoch", ylabel="p(last candidate)",
               title="mixed-precision search: probability of the last candidate per layer")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(a.out, dpi=90)
    print(f"lowbit plot: {len(runs)} run(s) -> {a.out}")


if __name__ == "__main__":
    main()
