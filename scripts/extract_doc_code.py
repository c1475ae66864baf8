#!/usr/bin/env python3
"""Writes the code blocks of a markdown file that name a file, so the doc's code is built.

usage: extract_doc_code.py DOC OUT_DIR

A fenced block whose info string names a file, as in

    ```cpp file=quant/log2.h
    ...
    ```

is written to OUT_DIR/quant/log2.h; blocks naming the same file are joined in order, so a doc
may show one file in parts with prose between them. A file is rewritten only when its text
changes (no needless rebuilds). Prints the written paths, one per line, for CMake
(tests/quant/CMakeLists.txt builds docs/quantizers.md's worked example this way).
"""
import os
import re
import sys

FENCE = re.compile(r"^```\S*\s+file=(\S+)\s*$")


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    doc, out_dir = sys.argv[1], sys.argv[2]
    files = {}
    order = []
    current = None
    with open(doc, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if current is None:
                m = FENCE.match(line)
                if m:
                    current = m.group(1)
                    if os.path.isabs(current) or ".." in current.split("/"):
                        print(f"{doc}:{n}: file={current} must be a relative path inside "
                              "the plugin", file=sys.stderr)
                        return 1
                    if current not in files:
                        files[current] = []
                        order.append(current)
            elif line.rstrip("\n") == "```":
                current = None
            else:
                files[current].append(line)
    if current is not None:
        print(f"{doc}: the block of file={current} is not closed", file=sys.stderr)
        return 1
    for name in order:
        path = os.path.join(out_dir, name)
        text = "".join(files[name])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        old = None
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                old = f.read()
        if old != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
