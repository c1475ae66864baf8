#!/usr/bin/env python3
"""Checks the layering of docs/style.md (the README's folder table): a folder includes only folders above it in the table
(core, cuda, dist, layers, models, quant, prune, data, train, bench, tools). Exits 1 listing every
include that points down the table. Run by ctest (`layering`)."""
import pathlib
import re
import sys

ORDER = ["core", "cuda", "dist", "layers", "models", "quant", "prune", "data", "train", "bench", "tools"]
RANK = {f: i for i, f in enumerate(ORDER)}
root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent)
bad = []
for folder in ORDER:
    for path in sorted((root / folder).glob("*")):
        if path.suffix not in (".h", ".cpp", ".cu", ".cuh"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            m = re.match(r'\s*#\s*include\s+"(\w+)/', line)
            if m and m.group(1) in RANK and RANK[m.group(1)] > RANK[folder]:
                bad.append(f"{path.relative_to(root)}:{n}: {folder}/ includes {m.group(1)}/, which is below it")
for b in bad:
    print(b)
print(f"layering: {len(bad)} upward include(s)" if bad else "layering: ok")
sys.exit(1 if bad else 0)
