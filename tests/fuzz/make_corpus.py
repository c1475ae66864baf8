#!/usr/bin/env python3
"""Writes the seed corpora of the libFuzzer targets into tests/fuzz/corpus/<target>/.

Small valid inputs (and a few near-valid ones) in each target's input format, so a fuzz run
starts from the paths a real file takes. Deterministic: rerunning it rewrites the same bytes.
Files whose names start with "regress-" are inputs that once found a bug; this script leaves
them alone. The JPEG seeds are encoded by a throw-away C program linked with libjpeg-turbo
(Debian's libjpeg62-turbo-dev), which must be installed; everything else is pure Python.
Run: python3 tests/fuzz/make_corpus.py
"""
import gzip
import json
import os
import shutil
import struct
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def clean(target):
    d = os.path.join(CORPUS, target)
    if os.path.isdir(d):
        for n in os.listdir(d):
            if not n.startswith("regress-"):
                os.remove(os.path.join(d, n))


def pixels(n, seed=1):
    # A small LCG: deterministic bytes without numpy.
    out = bytearray()
    x = seed
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out.append((x >> 16) & 0xFF)
    return bytes(out)


# ------------------------------------------------------------------------------------- IDX
def idx_pair(n, rows, cols, labels, gz_images=False, gz_labels=False):
    images = struct.pack(">IIII", 0x803, n, rows, cols) + pixels(n * rows * cols)
    lab = struct.pack(">II", 0x801, n) + bytes(labels)
    if gz_images:
        images = gzip.compress(images, mtime=0)
    if gz_labels:
        lab = gzip.compress(lab, mtime=0)
    return struct.pack("<I", len(images)) + images + lab


def make_idx():
    t = "fuzz_idx"
    clean(t)
    put(t, "tiny_2x4x4", idx_pair(2, 4, 4, [0, 1]))
    put(t, "tiny_3x2x5_gzip", idx_pair(3, 2, 5, [2, 0, 9], gz_images=True, gz_labels=True))
    put(t, "tiny_1x1x1_labels_gzip", idx_pair(1, 1, 1, [7], gz_labels=True))
    # The first 4 images of Debian's Fashion-MNIST test set, when installed.
    src = "/usr/share/datasets/fashion-mnist"
    try:
        with gzip.open(os.path.join(src, "t10k-images-idx3-ubyte.gz")) as f:
            img = f.read(16 + 4 * 784)
        with gzip.open(os.path.join(src, "t10k-labels-idx1-ubyte.gz")) as f:
            lab = f.read(8 + 4)
        img = struct.pack(">IIII", 0x803, 4, 28, 28) + img[16:]
        lab = struct.pack(">II", 0x801, 4) + lab[8:]
        put(t, "fashion_mnist_4", struct.pack("<I", len(img)) + img + lab)
    except OSError:
        pass
    # Near misses: swapped files, a truncated image file.
    good = idx_pair(2, 4, 4, [0, 1])
    n = struct.unpack("<I", good[:4])[0]
    put(t, "swapped", struct.pack("<I", len(good) - 4 - n) + good[4 + n:] + good[4:4 + n])
    put(t, "truncated", struct.pack("<I", n - 3) + good[4:4 + n - 3] + good[4 + n:])


# ------------------------------------------------------------------------------------ CIFAR
def make_cifar():
    t = "fuzz_cifar"
    clean(t)
    planes = pixels(3072, seed=3)
    put(t, "cifar10_one_record", bytes([0]) + bytes([3]) + planes)
    put(t, "cifar10_two_records_subdir", bytes([2]) + bytes([9]) + planes + bytes([0]) + planes[::-1])
    put(t, "cifar100_one_record", bytes([1]) + bytes([19, 99]) + planes)
    put(t, "cifar100_subdir", bytes([3]) + bytes([0, 5]) + planes)
    put(t, "cifar10_bad_label", bytes([0]) + bytes([10]) + planes)


# ------------------------------------------------------------------------------------- JPEG
JPEG_WRITER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>
/* usage: w h components(1|3|4) quality progressive restart sample(420|444) arith out */
int main(int argc, char** argv) {
  if (argc != 10) return 2;
  int w = atoi(argv[1]), h = atoi(argv[2]), c = atoi(argv[3]), q = atoi(argv[4]);
  int prog = atoi(argv[5]), restart = atoi(argv[6]), s420 = atoi(argv[7]) == 420;
  int arith = atoi(argv[8]);
  FILE* out = fopen(argv[9], "wb");
  if (!out) return 1;
  struct jpeg_compress_struct ci;
  struct jpeg_error_mgr jerr;
  ci.err = jpeg_std_error(&jerr);
  jpeg_create_compress(&ci);
  jpeg_stdio_dest(&ci, out);
  ci.image_width = w;
  ci.image_height = h;
  ci.input_components = c;
  ci.in_color_space = c == 1 ? JCS_GRAYSCALE : c == 3 ? JCS_RGB : JCS_CMYK;
  jpeg_set_defaults(&ci);
  jpeg_set_quality(&ci, q, TRUE);
  if (prog) jpeg_simple_progression(&ci);
  ci.restart_interval = restart;
  ci.arith_code = arith;
  if (c == 3 && !s420) {
    ci.comp_info[0].h_samp_factor = 1;
    ci.comp_info[0].v_samp_factor = 1;
  }
  jpeg_start_compress(&ci, TRUE);
  unsigned char* row = malloc((size_t)w * c);
  unsigned int x = 7;
  while (ci.next_scanline < ci.image_height) {
    for (int i = 0; i < w * c; ++i) {
      x = x * 1103515245u + 12345u;
      row[i] = (unsigned char)((i * 9 + ci.next_scanline * 5) ^ ((x >> 24) & 15));
    }
    jpeg_write_scanlines(&ci, &row, 1);
  }
  jpeg_finish_compress(&ci);
  jpeg_destroy_compress(&ci);
  fclose(out);
  free(row);
  return 0;
}
"""


def make_jpeg():
    t = "fuzz_jpeg"
    clean(t)
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "w.c")
        exe = os.path.join(tmp, "w")
        with open(src, "w") as f:
            f.write(JPEG_WRITER)
        subprocess.run(["cc", "-O1", "-o", exe, src, "-ljpeg"], check=True)
        cases = [
            ("gray_8x8", 8, 8, 1, 75, 0, 0, 444, 0),
            ("rgb_16x16_420", 16, 16, 3, 90, 0, 0, 420, 0),
            ("rgb_17x9_444", 17, 9, 3, 50, 0, 0, 444, 0),
            ("rgb_24x16_progressive", 24, 16, 3, 80, 1, 0, 420, 0),
            ("rgb_16x16_restart", 16, 16, 3, 70, 0, 1, 420, 0),
            ("rgb_16x8_arith", 16, 8, 3, 70, 0, 0, 420, 1),
            ("cmyk_8x8", 8, 8, 4, 80, 0, 0, 444, 0),
            ("gray_32x4_progressive", 32, 4, 1, 60, 1, 0, 444, 0),
        ]
        for name, w, h, c, q, prog, restart, samp, arith in cases:
            out = os.path.join(tmp, name + ".jpg")
            subprocess.run([exe] + [str(v) for v in (w, h, c, q, prog, restart, samp, arith)] + [out],
                           check=True)
            with open(out, "rb") as f:
                data = f.read()
            put(t, name, data)
        # A truncated file (refused as "Premature end of JPEG file").
        with open(os.path.join(tmp, "rgb_16x16_420.jpg"), "rb") as f:
            data = f.read()
        put(t, "truncated", data[: len(data) * 2 // 3])
    finally:
        shutil.rmtree(tmp)


# ------------------------------------------------------------------------------ safetensors
DTYPE = {"F32": ("<f", 4), "F64": ("<d", 8), "I64": ("<q", 8), "I32": ("<i", 4),
         "BF16": (None, 2), "F16": ("<e", 2), "I8": ("<b", 1), "U8": ("<B", 1)}
ORDER = ["I64", "F64", "F32", "I32", "BF16", "F16", "I8", "U8"]  # the reference's write order


def safetensors(tensors, metadata=None):
    """tensors: {name: (dtype, shape)}; contents are deterministic bytes."""
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    items = sorted(tensors.items(), key=lambda kv: (ORDER.index(kv[1][0]), kv[0]))
    data = b""
    for name, (dt, shape) in items:
        n = 1
        for s in shape:
            n *= s
        nbytes = n * DTYPE[dt][1]
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [len(data), len(data) + nbytes]}
        data += pixels(nbytes, seed=len(data) + 11)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def make_safetensors():
    t = "fuzz_safetensors"
    clean(t)
    put(t, "one_f32", safetensors({"weight": ("F32", [2, 3])}))
    put(t, "every_dtype", safetensors({k.lower(): (k, [2]) for k in DTYPE}))
    put(t, "scalar_and_empty", safetensors({"s": ("F64", []), "e": ("F32", [0, 4]), "z": ("U8", [0])}))
    put(t, "metadata_only", safetensors({}, {"format": "pt"}))
    put(t, "checkpoint_like", safetensors(
        {"model.conv1.weight": ("F32", [4, 1, 3, 3]), "model.bn1.running_mean": ("F32", [4]),
         "model.bn1.num_batches_tracked": ("I64", []), "optim.step": ("I64", [])},
        {"format": "lowbit-checkpoint-1", "stage": "0", "epoch": "1", "global_epoch": "1",
         "rng_cpu": "0,4096", "world_size": "1"}))
    put(t, "header_only_8", struct.pack("<Q", 2) + b"{}")
    put(t, "empty", b"")


# ----------------------------------------------------------------------------------- config
def trimmed(path):
    """A config from configs/ without its comment lines (comments add nothing to parse)."""
    with open(os.path.join(ROOT, path)) as f:
        return "".join(l for l in f if not l.lstrip().startswith("#"))


def make_config():
    t = "fuzz_config"
    clean(t)
    put(t, "quickstart", trimmed("configs/quickstart.yaml"))
    put(t, "quickstart_sets", trimmed("configs/quickstart.yaml") +
        "#--set stages.0.epochs=3\n#--set data.batch_size=64\n#--set stages.0.optimizer.lr=0.1\n")
    put(t, "qat_lsq", trimmed("configs/qat/fmnist_resnet20_lsq_w4a4.yaml"))
    put(t, "pfq", trimmed("configs/pfq/fmnist_resnet20_pfq_w4a4.yaml"))
    put(t, "cifar_multistep", trimmed("configs/cifar10_resnet20.yaml") + "#--set stages.0.schedule={name: multistep, milestones: [1, 2]}\n")
    put(t, "imagenet", trimmed("configs/imagenet_resnet18.yaml"))
    put(t, "synthetic_rules", """name: s
seed: 3
checkpoint_every: 15 min
amp: bf16
data: {dataset: synthetic, synthetic_size: 64, synthetic_hw: 8, mean: [0.5], std: [0.25]}
model: {name: resnet20, num_classes: 10, dropout: 0.1}
dist: {bucket_mb: 1, sync_bn: true}
quant:
  weight: {quantizer: uniform, bits: 4}
  activation: {quantizer: pact, bits: 4}
  rules:
    - {match: conv1, skip: true}
    - {type: Linear, weight: {bits: 8}}
stages:
  - {kind: qat, epochs: 1, accumulate_steps: 2, optimizer: {name: adamw, lr: 0.001}, schedule: {name: step, step_epochs: 1}}
#--set checkpoint_every=500 steps
#--set stages.0.epochs=2
""")
    put(t, "duplicate_key", "name: a\nname: b\nstages: [{epochs: 1}]\n")


# ------------------------------------------------------------------------ checkpoint meta
def make_checkpoint_meta():
    t = "fuzz_checkpoint_meta"
    clean(t)
    put(t, "epoch_end", "format=lowbit-checkpoint-1\nstage=0\nepoch=1\nglobal_epoch=1\n"
        "world_size=1\nrng_cpu=0,123456\n")
    put(t, "mid_epoch", "format=lowbit-checkpoint-1\nstage=1\nepoch=0\nglobal_epoch=3\nbatch=17\n"
        "last_step=1234\nepoch_sums=" + json.dumps(
            {"loss_sum": 123.5, "correct": 1800.0, "seen": 2176.0, "elapsed_s": 12.25},
            separators=(",", ":")) + "\nworld_size=2\nrng_cpu=42,9876543210\nrng_device=42,77\n")
    put(t, "mid_epoch_no_elapsed", "stage=0\nepoch=0\nglobal_epoch=0\nbatch=1\nlast_step=0\n"
        'epoch_sums={"loss_sum":2.3,"correct":1,"seen":128}\nrng_cpu=18446744073709551615,0\n')
    put(t, "pruned_quantized", "stage=2\nepoch=1\nglobal_epoch=17\nrng_cpu=0,1\npruned=1\n"
        "quant_plan=x\nconfig=name: a\n")


if __name__ == "__main__":
    make_idx()
    make_cifar()
    make_jpeg()
    make_safetensors()
    make_config()
    make_checkpoint_meta()
    total = 0
    for dirpath, _, files in os.walk(CORPUS):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    print(f"make_corpus: {CORPUS}: {total} bytes")
