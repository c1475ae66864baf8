#!/usr/bin/python3
"""Writes a folder of photo-like test JPEGs for `lowbit bench data` and
`bench/pytorch_reference.py data`: DIR/class_K/img_N.jpg.

    scripts/make_jpegs.py DIR [--images 2000] [--classes 10] [--width 500] [--height 375]
                              [--quality 90] [--seed 0]

Each image is smooth colour fields (summed random sinusoids) with sharp-edged shapes and
pixel noise, so it compresses like a photograph (about 100 KB at 500x375, quality 90, near the average ImageNet photo);
the decode time of a JPEG depends on its size and entropy, not on what it shows. Needs numpy
and PIL (Debian's python3-numpy, python3-pil)."""
import argparse
import os
import sys

import numpy as np
from PIL import Image


def image(rng, h, w):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        for _ in range(4):
            fx, fy = rng.uniform(0.005, 0.05, 2)
            out[..., c] += 40 * np.sin(fx * x + fy * y + rng.uniform(0, 6.3))
    for _ in range(6):  # sharp-edged ellipses
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(10, h / 3), rng.uniform(10, w / 3)
        mask = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
        out[mask] += rng.uniform(-60, 60, 3)
    out += rng.normal(0, 20, (h, w, 3))
    return np.clip(out + 128, 0, 255).astype(np.uint8)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.images < 1 or a.classes < 1 or a.width < 1 or a.height < 1 or not 1 <= a.quality <= 100:
        p.error("--images, --classes, --width, --height must be positive, --quality in 1..100")
    rng = np.random.default_rng(a.seed)
    total = 0
    for i in range(a.images):
        d = os.path.join(a.dir, "class_%d" % (i % a.classes))
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "img_%05d.jpg" % i)
        Image.fromarray(image(rng, a.height, a.width)).save(path, quality=a.quality)
        total += os.path.getsize(path)
    print("make_jpegs: %d JPEGs of %dx%d (quality %d) in %s, %.1f KB each on average" %
          (a.images, a.width, a.height, a.quality, a.dir, total / a.images / 1024))


if __name__ == "__main__":
    main(sys.argv[1:])
