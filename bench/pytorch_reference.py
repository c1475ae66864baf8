#!/usr/bin/env python3
"""PyTorch side of `lowbit bench`: the same work, flags and JSON fields, measured with PyTorch.

    pytorch_reference.py train --model resnet20 --batch 128 --hw 28 --cin 1 --threads 2 --json
    pytorch_reference.py kernel conv --size 128,32,32,16,16,3 --json

train: full training steps (forward, cross-entropy, backward, SGD with lr 0.01, momentum 0.9,
weight decay 5e-4) of the model on one synthetic batch kept on the device, eager mode. The
models are defined here with lowbit's architectures (models/resnet.cpp, models/mobilenet.cpp,
models/vgg.cpp): CIFAR ResNets with a 3x3 stem and option A shortcuts, torchvision's
resnet18/34/50 and mobilenet_v2, MobileNetV1, VGG-16-BN with lowbit's small-input head, and
the DS net, so torchvision is not needed. --mode bf16 runs under torch.autocast(bfloat16) on the
device (f32 weights and optimizer, bf16 convolutions and matmuls). On the CPU the model and the
batch are channels_last (NHWC, lowbit's layout) unless --channels-last off.

kernel: the kernels `lowbit bench kernel` times, with the same sizes and byte/FLOP counts;
median of --iters calls after --warmup, CUDA with events, CPU with perf_counter.

data: `lowbit bench data`'s input pipeline with torchvision (needs Debian's python3-torchvision):
ImageFolder (PIL decode), RandomResizedCrop(size), RandomHorizontalFlip, ToTensor, Normalize
(ImageNet statistics), a DataLoader of --workers processes (0: the main process), --images
images timed after 2 workers + 1 untimed batches (start-up and prefetch, as lowbit's).

Threads: --threads, else OMP_NUM_THREADS, else every core (lowbit's OpenMP default; Debian's
torch would otherwise start with one thread).
"""
import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# --- models (lowbit's architectures) ------------------------------------------------------------


def conv_bn(cin, cout, k, stride=1, groups=1, act=None):
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif act == "relu6":
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class ShortcutA(nn.Module):
    """Option A: subsample by the stride and pad channels with zeros (no parameters)."""

    def __init__(self, stride, pad):
        super().__init__()
        self.stride, self.pad = stride, pad

    def forward(self, x):
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, cin, planes, stride, shortcut):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = shortcut

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)), inplace=True)
        h = self.bn2(self.conv2(h))
        return F.relu(h + (self.shortcut(x) if self.shortcut is not None else x), inplace=True)


class Bottleneck(nn.Module):
    def __init__(self, cin, planes, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)), inplace=True)
        h = F.relu(self.bn2(self.conv2(h)), inplace=True)
        h = self.bn3(self.conv3(h))
        return F.relu(h + (self.downsample(x) if self.downsample is not None else x), inplace=True)


class CifarResNet(nn.Module):
    def __init__(self, depth, cin, classes):
        super().__init__()
        assert (depth - 2) % 6 == 0, depth
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(cin, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        inp = 16
        stages = []
        for s, planes in enumerate((16, 32, 64)):
            blocks = []
            for b in range(n):
                stride = 2 if s > 0 and b == 0 else 1
                sc = ShortcutA(stride, (planes - inp) // 2) if stride != 1 or inp != planes else None
                blocks.append(BasicBlock(inp, planes, stride, sc))
                inp = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, classes)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)), inplace=True)
        h = self.layer3(self.layer2(self.layer1(h)))
        return self.linear(h.mean((2, 3)))


class ImageNetResNet(nn.Module):
    def __init__(self, bottleneck, blocks, cin, classes):
        super().__init__()
        exp = 4 if bottleneck else 1
        self.conv1 = nn.Conv2d(cin, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inp = 64
        stages = []
        for s, nb in enumerate(blocks):
            planes = 64 << s
            layer = []
            for b in range(nb):
                stride = 2 if s > 0 and b == 0 else 1
                ds = None
                if stride != 1 or inp != planes * exp:
                    ds = conv_bn(inp, planes * exp, 1, stride)
                layer.append(Bottleneck(inp, planes, stride, ds) if bottleneck
                             else BasicBlock(inp, planes, stride, ds))
                inp = planes * exp
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(inp, classes)

    def forward(self, x):
        h = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return self.fc(h.mean((2, 3)))


def make_divisible(v, divisor=8):
    nv = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return nv + divisor if nv < 0.9 * v else nv


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1, act="relu6"))
        layers += [conv_bn(hidden, hidden, 3, stride, hidden, act="relu6"),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, cin, classes, width=1.0, dropout=0.2):
        super().__init__()
        stages = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                  (6, 160, 3, 2), (6, 320, 1, 1)]
        inp = make_divisible(32 * width)
        last = make_divisible(1280 * max(1.0, width))
        feats = [conv_bn(cin, inp, 3, 2, act="relu6")]
        for t, c, n, s in stages:
            out = make_divisible(c * width)
            for i in range(n):
                feats.append(InvertedResidual(inp, out, s if i == 0 else 1, t))
                inp = out
        feats.append(conv_bn(inp, last, 1, act="relu6"))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, classes))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class MobileNetV1(nn.Module):
    def __init__(self, cin, classes):
        super().__init__()
        cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
               (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]
        inp = 32
        feats = [conv_bn(cin, inp, 3, 2, act="relu")]
        for c, s in cfg:
            feats.append(nn.Sequential(conv_bn(inp, inp, 3, s, inp, act="relu"),
                                       conv_bn(inp, c, 1, act="relu")))
            inp = c
        self.features = nn.Sequential(*feats)
        self.fc = nn.Linear(inp, classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class Vgg16Bn(nn.Module):
    """lowbit's vgg16_bn for inputs below 224: ceil-mode pools, global pool, Linear(512, K)."""

    def __init__(self, cin, classes, hw):
        super().__init__()
        assert hw < 224, "the ImageNet head of vgg16_bn is not mirrored here; use hw < 224"
        cfg = [64, 64, -1, 128, 128, -1, 256, 256, 256, -1, 512, 512, 512, -1, 512, 512, 512, -1]
        feats, inp = [], cin
        for c in cfg:
            if c < 0:
                feats.append(nn.MaxPool2d(2, ceil_mode=True))
                continue
            feats += [nn.Conv2d(inp, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            inp = c
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Linear(512, classes))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class DsNet(nn.Module):
    def __init__(self, cin, classes):
        super().__init__()
        self.features = nn.Sequential(conv_bn(cin, 32, 3, act="relu"),
                                      conv_bn(32, 32, 3, groups=32, act="relu"),
                                      conv_bn(32, 64, 1, act="relu"))
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


MODELS = {
    **{f"resnet{d}": (lambda d: lambda cin, k, hw: CifarResNet(d, cin, k))(d)
       for d in (20, 32, 44, 56, 110)},
    "resnet18": lambda cin, k, hw: ImageNetResNet(False, [2, 2, 2, 2], cin, k),
    "resnet34": lambda cin, k, hw: ImageNetResNet(False, [3, 4, 6, 3], cin, k),
    "resnet50": lambda cin, k, hw: ImageNetResNet(True, [3, 4, 6, 3], cin, k),
    "mobilenet_v1": lambda cin, k, hw: MobileNetV1(cin, k),
    "mobilenet_v2": lambda cin, k, hw: MobileNetV2(cin, k),
    "vgg16_bn": lambda cin, k, hw: Vgg16Bn(cin, k, hw),
    "dsnet": lambda cin, k, hw: DsNet(cin, k),
}

# --- helpers -------------------------------------------------------------------------------------


class InputError(Exception):
    """Bad arguments: exit code 2, as lowbit's CLI."""


def resolve_device(spec):
    n = torch.cuda.device_count()
    if spec in ("", "auto"):
        return torch.device("cuda:0" if n > 0 else "cpu")
    d = torch.device(spec)
    if d.type == "cuda":
        idx = d.index or 0
        if idx >= n:
            raise InputError(f"device '{spec}' was asked for but {n} CUDA device(s) are visible")
        return torch.device(f"cuda:{idx}")
    if d.type != "cpu":
        raise InputError(f"device must be auto, cpu, cuda or cuda:N, got '{spec}'")
    return d


def set_threads(n):
    if n is None:
        n = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or os.cpu_count()
    if n < 1:
        raise InputError(f"--threads must be at least 1, got {n}")
    torch.set_num_threads(n)
    return torch.get_num_threads()


def synchronize(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_calls(dev, warmup, iters, fn):
    """Median and minimum milliseconds of `iters` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    ms = []
    if dev.type == "cuda":
        events = []
        for _ in range(iters):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            events.append((s, e))
        torch.cuda.synchronize(dev)
        ms = [s.elapsed_time(e) for s, e in events]
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            ms.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ms), min(ms)


def use_channels_last(args, dev):
    return args.channels_last == "on" or (args.channels_last == "auto" and dev.type == "cpu")


# --- train ---------------------------------------------------------------------------------------


def conv_bn_pairs(model):
    """[conv, bn] name pairs where a BatchNorm2d directly follows a Conv2d among a module's
    children (lowbit folds the BN of exactly these convs in QAT)."""
    pairs = []
    for pname, parent in model.named_modules():
        kids = list(parent.named_children())
        for (a, ma), (b, mb) in zip(kids, kids[1:]):
            if isinstance(ma, nn.Conv2d) and isinstance(mb, nn.BatchNorm2d):
                pre = pname + "." if pname else ""
                pairs.append([pre + a, pre + b])
    return pairs


def qat_qconfig(quantizer, bits):
    """torch.ao.quantization QAT config like `lowbit bench train --mode qat`: per-channel
    symmetric weights and per-tensor unsigned activations at `bits`; uniform: FakeQuantize with
    moving-average min-max observers (PyTorch's default QAT); lsq: _LearnableFakeQuantize
    (learned scale, LSQ's gradient)."""
    import torch.ao.quantization as tq
    wq = dict(quant_min=-(1 << (bits - 1)), quant_max=(1 << (bits - 1)) - 1, dtype=torch.qint8,
              qscheme=torch.per_channel_symmetric, ch_axis=0)
    aq = dict(quant_min=0, quant_max=(1 << bits) - 1, dtype=torch.quint8,
              qscheme=torch.per_tensor_affine)
    if quantizer == "uniform":
        w = tq.FakeQuantize.with_args(observer=tq.MovingAveragePerChannelMinMaxObserver, **wq)
        a = tq.FakeQuantize.with_args(observer=tq.MovingAverageMinMaxObserver, **aq)
    elif quantizer == "lsq":
        from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize as L
        w = L.with_args(observer=tq.MovingAveragePerChannelMinMaxObserver, channel_len=1,
                        use_grad_scaling=True, **wq)
        a = L.with_args(observer=tq.MovingAverageMinMaxObserver, use_grad_scaling=True, **aq)
    else:
        raise InputError(f"bench train: --quantizer must be uniform or lsq for PyTorch, got "
                         f"'{quantizer}'")
    return tq.QConfig(activation=a, weight=w)


def prepare_qat_model(model, args):
    """Conv+BN fused for QAT (BN folded, as lowbit does), fake-quant on weights and module
    outputs; the first conv and the last linear at 8 bits, as lowbit's first_last_bits."""
    import torch.ao.quantization as tq
    if not 2 <= args.bits <= 8:
        raise InputError(f"bench train: --bits must be 2..8 for PyTorch's QAT, got {args.bits}")
    model.train()
    tq.fuse_modules_qat(model, conv_bn_pairs(model), inplace=True)  # ConvBn2d: BN folded in QAT
    model.qconfig = qat_qconfig(args.quantizer, args.bits)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in (layers[0], layers[-1]):
        m.qconfig = qat_qconfig(args.quantizer, 8)
    model = tq.prepare_qat(model, inplace=True)
    if args.quantizer == "lsq":  # _LearnableFakeQuantize sizes per-channel scales at construction
        for m in model.modules():
            fq = getattr(m, "weight_fake_quant", None)
            if fq is not None and fq.ch_axis >= 0:
                n = m.weight.shape[fq.ch_axis]
                fq.scale = nn.Parameter(torch.ones(n))
                fq.zero_point = nn.Parameter(torch.zeros(n))
                fq.channel_len = n
    if args.amp == "bf16":
        # Under autocast the activations reaching a fake-quant module are bf16, which PyTorch's
        # CPU fake-quant kernels (1.13) do not take: quantize in f32 and hand back bf16.
        from torch.ao.quantization import FakeQuantizeBase
        for m in model.modules():
            if isinstance(m, FakeQuantizeBase):
                f32_forward = m.forward
                m.forward = (lambda fwd: lambda x: fwd(x.float()).to(x.dtype))(f32_forward)
    return model


def run_train(args):
    if args.model not in MODELS:
        raise InputError(f"bench train: unknown model '{args.model}'; known: {', '.join(MODELS)}")
    dev = resolve_device(args.device)
    if args.batch < 1 or args.hw < 1 or args.cin < 1 or args.classes < 2 or args.steps < 1 \
            or args.warmup < 0:
        raise InputError("bench train: sizes must be positive, --classes > 1, --steps >= 1")
    threads = set_threads(args.threads)
    torch.manual_seed(args.seed)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    model = MODELS[args.model](args.cin, args.classes, args.hw).to(dev).train()
    if args.mode == "qat":
        model = prepare_qat_model(model, args).to(dev)
    cl = use_channels_last(args, dev)
    images = torch.randn(args.batch, args.cin, args.hw, args.hw, device=dev)
    labels = torch.randint(0, args.classes, (args.batch,), device=dev)
    if cl:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    amp = args.mode == "bf16" or args.amp == "bf16"

    def step():
        # Autocast only when asked: constructing it queries CUDA even when disabled.
        with torch.autocast(dev.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext():
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for _ in range(args.warmup):
        step()
    synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    synchronize(dev)
    seconds = time.perf_counter() - t0
    if dev.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(dev), "cuda caching allocator peak"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak RSS"
    r = {"bench": "train", "framework": "pytorch", "model": args.model, "batch": args.batch,
         "hw": args.hw, "cin": args.cin, "classes": args.classes, "mode": args.mode,
         "amp": "bf16" if amp else "off",
         "device": str(dev), "threads": threads, "cpu_conv": "direct", "steps": args.steps, "warmup": args.warmup,
         "params": sum(p.numel() for p in model.parameters()),
         "images_per_s": args.batch * args.steps / seconds,
         "ms_per_step": 1e3 * seconds / args.steps, "peak_mem_bytes": int(peak),
         "peak_mem_kind": kind, "final_loss": float(loss.item()),
         "channels_last": cl, "torch_version": torch.__version__}
    if args.mode == "qat":
        r["quantizer"], r["bits"] = args.quantizer, args.bits
    if args.json:
        print(json.dumps(r, sort_keys=True))
    else:
        print(f"pytorch bench train: {args.model} batch {args.batch} {args.hw}x{args.hw}x{args.cin},"
              f" {args.classes} classes, {args.mode}{' amp bf16' if amp and args.mode != 'bf16' else ''} on {dev} ({threads} CPU thread(s)),"
              f" {r['params']} parameters, channels_last {cl}\n"
              f"  {r['images_per_s']:.1f} images/s, {r['ms_per_step']:.2f} ms/step over"
              f" {args.steps} steps after {args.warmup} warm-up\n"
              f"  peak memory {peak / 2**20:.1f} MiB ({kind}), last loss {r['final_loss']:.4f}")
    return 0


# --- kernels -------------------------------------------------------------------------------------


def sizes_or(args, name, default, lo, hi):
    if not args.size:
        return default
    try:
        v = [int(s) for s in args.size.split(",")]
    except ValueError:
        raise InputError(f"bench kernel {name}: --size wants comma-separated integers, "
                         f"got '{args.size}'")
    if not lo <= len(v) <= hi or any(x <= 0 for x in v):
        raise InputError(f"bench kernel {name}: --size wants {lo} to {hi} positive values, "
                         f"got {v}")
    return v


def rnd(shape, ctx, scale=1.0):
    return (torch.randn(*shape, device=ctx["dev"]) * scale).to(ctx["dtype"])


def k_copy(args, ctx):
    (n,) = sizes_or(args, "copy", [32 << 20], 1, 1)
    src = rnd([n], ctx)
    dst = torch.empty_like(src)
    t = time_calls(ctx["dev"], args.warmup, args.iters, lambda: dst.copy_(src))
    nb = src.numel() * src.element_size()
    return [("copy", [n], f"{n} elements ({nb >> 20} MiB), dst.copy_(src)", t, 2.0 * nb, 0.0)]


def k_conv(args, ctx):
    dev, cl = ctx["dev"], ctx["channels_last"]
    v = sizes_or(args, "conv", [128, 32, 32, 16, 16, 3], 6, 8)
    n, h, w, c, k, r = v[:6]
    stride = v[6] if len(v) > 6 else 1
    groups = v[7] if len(v) > 7 else 1
    x = rnd([n, c, h, w], ctx)
    wt = rnd([k, c // groups, r, r], ctx, 0.1)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
        wt = wt.contiguous(memory_format=torch.channels_last)
    y = F.conv2d(x, wt, None, stride, r // 2, 1, groups)
    p, q = y.shape[2], y.shape[3]
    dy = rnd(list(y.shape), ctx)
    if cl:
        dy = dy.contiguous(memory_format=torch.channels_last)
    shape = (f"N={n} H={h} W={w} C={c} K={k} R=S={r} stride={stride} groups={groups} "
             f"-> P={p} Q={q}")
    flops = 2.0 * n * p * q * k * r * r * (c // groups)
    with torch.no_grad():
        tf = time_calls(dev, args.warmup, args.iters,
                        lambda: F.conv2d(x, wt, None, stride, r // 2, 1, groups))

    def backward():
        torch.ops.aten.convolution_backward(dy, x, wt, None, [stride, stride],
                                            [r // 2, r // 2], [1, 1], False, [0, 0], groups,
                                            [True, True, False])

    tb = time_calls(dev, args.warmup, args.iters, backward)
    return [("conv_forward", v, shape, tf, 0.0, flops),
            ("conv_backward", v, shape, tb, 0.0, 2.0 * flops)]


def k_bn(args, ctx):
    dev = ctx["dev"]
    v = sizes_or(args, "bn", [128, 32, 32, 16], 4, 4)
    n, h, w, c = v
    x = rnd([n, c, h, w], ctx)
    if ctx["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.ones(c, device=dev, requires_grad=True)
    bias = torch.zeros(c, device=dev, requires_grad=True)
    rm, rv = torch.zeros(c, device=dev), torch.ones(c, device=dev)
    shape = f"N={n} H={h} W={w} C={c} (training: batch statistics, running-stat update)"
    nbytes = x.numel() * x.element_size()
    with torch.no_grad():
        tf = time_calls(dev, args.warmup, args.iters,
                        lambda: F.batch_norm(x, rm, rv, weight, bias, True, 0.1, 1e-5))
    xg = x.detach().requires_grad_()
    y = F.batch_norm(xg, rm, rv, weight, bias, True, 0.1, 1e-5)
    dy = torch.randn_like(y)
    tb = time_calls(dev, args.warmup, args.iters,
                    lambda: torch.autograd.grad(y, [xg, weight, bias], dy, retain_graph=True))
    return [("bn_forward", v, shape, tf, 2.0 * nbytes, 0.0),
            ("bn_backward", v, shape, tb, 3.0 * nbytes, 0.0)]


def default_elements(ctx):
    return (64 << 20) if ctx["dev"].type == "cuda" else (6 << 20)


def k_add(args, ctx):
    (n,) = sizes_or(args, "add", [default_elements(ctx)], 1, 1)
    a, b = rnd([n], ctx), rnd([n], ctx)
    t = time_calls(ctx["dev"], args.warmup, args.iters, lambda: torch.add(a, b))
    return [("add", [n], f"{n} elements, out = a + b (allocated)", t,
             3.0 * a.numel() * a.element_size(), 0.0)]


def k_relu(args, ctx):
    (n,) = sizes_or(args, "relu", [default_elements(ctx)], 1, 1)
    a = rnd([n], ctx)
    t = time_calls(ctx["dev"], args.warmup, args.iters, lambda: torch.relu(a))
    return [("relu", [n], f"{n} elements, out = relu(x) (allocated)", t,
             2.0 * a.numel() * a.element_size(), 0.0)]


def k_optimizer(args, ctx, name, kernel, moved, make):
    v = sizes_or(args, name, [11000000, 62], 1, 2)
    total, count = v[0], (v[1] if len(v) > 1 else 1)
    if count > total:
        raise InputError(f"bench kernel: TENSORS {count} exceeds TOTAL {total}")
    params = []
    for i in range(count):
        n = total // count + (total % count if i == count - 1 else 0)
        p = nn.Parameter(rnd([n], ctx, 0.01))
        p.grad = rnd([n], ctx, 0.001)
        params.append(p)
    opt = make(params)
    t = time_calls(ctx["dev"], max(args.warmup, 1), args.iters, opt.step)
    return [(kernel, v, f"{total} parameters in {count} tensors", t,
             moved * total * params[0].element_size(), 0.0)]


def k_sgd(args, ctx):
    return k_optimizer(args, ctx, "sgd", "sgd_step", 5.0, lambda p: torch.optim.SGD(
        p, lr=0.01, momentum=0.9, weight_decay=5e-4))


def k_adamw(args, ctx):
    return k_optimizer(args, ctx, "adamw", "adamw_step", 7.0, lambda p: torch.optim.AdamW(
        p, lr=0.01, weight_decay=5e-4))


def k_cross_entropy(args, ctx):
    dev = ctx["dev"]
    n, c = sizes_or(args, "cross_entropy", [256, 1000], 2, 2)
    logits = rnd([n, c], ctx)
    target = torch.randint(0, c, (n,), device=dev)
    lb = logits.numel() * logits.element_size()
    tb_ = target.numel() * target.element_size()
    shape = f"N={n} classes={c} (mean, no smoothing)"
    with torch.no_grad():
        tf = time_calls(dev, args.warmup, args.iters, lambda: F.cross_entropy(logits, target))
    lg = logits.detach().requires_grad_()
    loss = F.cross_entropy(lg, target)
    tbw = time_calls(dev, args.warmup, args.iters,
                     lambda: torch.autograd.grad(loss, [lg], retain_graph=True))
    return [("cross_entropy_forward", [n, c], shape, tf, lb + tb_, 0.0),
            ("cross_entropy_backward", [n, c], shape, tbw, 2.0 * lb + tb_, 0.0)]


def k_fake_quant(args, ctx):
    """lowbit's fake_quant kernels: 4-bit uniform (torch.fake_quantize_per_{tensor,channel}_affine)
    and LSQ (torch._fake_quantize_learnable_per_{tensor,channel}_affine, which also returns a
    zero-point gradient: PyTorch's LSQ op is LSQ+-shaped) on an (ELEMENTS/C, C) tensor,
    per-channel along C."""
    dev = ctx["dev"]
    v = sizes_or(args, "fake_quant", [default_elements(ctx), 64], 1, 2)
    if len(v) == 1:
        v.append(64)
    n, c = v
    if n % c:
        raise InputError(f"bench kernel fake_quant: ELEMENTS = {n} must be a multiple of C = {c}")
    x = rnd([n // c, c], ctx)
    dy = torch.randn_like(x)
    nbytes = x.numel() * x.element_size()
    out = []
    for per_channel in (False, True):
        k = c if per_channel else 1
        gran = "per_channel" if per_channel else "per_tensor"
        shape = f"{n // c}x{c} 4-bit {gran}" + (" (axis 1)" if per_channel else "")
        scale = torch.full((k,), 0.25, device=dev)
        zp = torch.full((k,), 8, device=dev, dtype=torch.int32)
        s_lsq = torch.full((k,), 0.3, device=dev, requires_grad=True)
        z_lsq = torch.zeros(k, device=dev, requires_grad=True)
        g = 1.0 / ((n // k) * 7) ** 0.5
        if per_channel:
            uni = lambda t: torch.fake_quantize_per_channel_affine(t, scale, zp, 1, 0, 15)
            lsq = lambda t: torch._fake_quantize_learnable_per_channel_affine(
                t, s_lsq, z_lsq, 1, -8, 7, g)
        else:
            uni = lambda t: torch.fake_quantize_per_tensor_affine(t, 0.25, 8, 0, 15)
            lsq = lambda t: torch._fake_quantize_learnable_per_tensor_affine(
                t, s_lsq, z_lsq, -8, 7, g)
        for name, fn, params in (("fake_quant", uni, []), ("lsq", lsq, [s_lsq, z_lsq])):
            with torch.no_grad():
                tf = time_calls(dev, args.warmup, args.iters, lambda: fn(x))
            xg = x.detach().requires_grad_()
            y = fn(xg)
            tb = time_calls(dev, args.warmup, args.iters,
                            lambda: torch.autograd.grad(y, [xg] + params, dy, retain_graph=True))
            out += [(f"{name}_{gran}_forward", v, shape, tf, 2.0 * nbytes, 0.0),
                    (f"{name}_{gran}_backward", v, shape, tb, 3.0 * nbytes, 0.0)]
    return out


KERNELS = {"copy": k_copy, "conv": k_conv, "bn": k_bn, "add": k_add, "relu": k_relu,
           "sgd": k_sgd, "adamw": k_adamw, "cross_entropy": k_cross_entropy,
           "fake_quant": k_fake_quant}


def run_kernel(args):
    if args.name != "all" and args.name not in KERNELS:
        raise InputError(f"bench kernel: unknown kernel '{args.name}'; known: "
                         f"{', '.join(KERNELS)}, all")
    if args.name == "all" and args.size:
        raise InputError("bench kernel all: --size has a different meaning for each kernel")
    if args.iters < 1 or args.warmup < 0:
        raise InputError("bench kernel: --iters must be >= 1 and --warmup >= 0")
    if args.dtype not in ("f32", "bf16"):
        raise InputError(f"bench kernel: --dtype must be f32 or bf16, got '{args.dtype}'")
    dev = resolve_device(args.device)
    threads = set_threads(args.threads)
    ctx = {"dev": dev, "dtype": torch.float32 if args.dtype == "f32" else torch.bfloat16,
           "channels_last": use_channels_last(args, dev)}
    size = args.size
    if args.name != "copy":
        args.size = None  # the copy runs at its default size
    results = k_copy(args, ctx)
    args.size = size
    names = [k for k in KERNELS if k != "copy"] if args.name == "all" else \
        ([] if args.name == "copy" else [args.name])
    for k in names:
        results += KERNELS[k](args, ctx)
    copy_gbs = results[0][4] / (results[0][3][0] * 1e-3) / 1e9
    if not args.json:
        print(f"pytorch bench kernel {args.name} on {dev}, {args.dtype}, {threads} CPU thread(s), "
              f"median of {args.iters} calls after {args.warmup} warm-up")
    for kernel, v, shape, (med, mn), nbytes, flops in results:
        j = {"bench": "kernel", "framework": "pytorch", "kernel": kernel, "device": str(dev),
             "dtype": args.dtype, "threads": threads, "size": v, "shape": shape,
             "iters": args.iters, "warmup": args.warmup, "ms": med, "ms_min": mn,
             "copy_gb_per_s": copy_gbs, "channels_last": ctx["channels_last"],
             "torch_version": torch.__version__}
        line = f"{kernel:<24}{med:>11.{4 if med < 1 else 3}f} ms"
        if nbytes > 0:
            gbs = nbytes / (med * 1e-3) / 1e9
            j.update(bytes=nbytes, gb_per_s=gbs, bw_fraction=gbs / copy_gbs)
            line += f"{gbs:>10.1f} GB/s"
            if kernel != "copy":
                line += f" ({100 * gbs / copy_gbs:.0f}% of copy)"
        if flops > 0:
            j.update(flops=flops, gflop_per_s=flops / (med * 1e-3) / 1e9)
            line += f"{j['gflop_per_s']:>10.1f} GFLOP/s"
        print(json.dumps(j, sort_keys=True) if args.json else f"{line}   {shape}", flush=True)
    return 0


# --- input pipeline (torchvision) ----------------------------------------------------------------


def run_data(args):
    try:
        import torchvision.datasets as tvd
        import torchvision.transforms as T
    except ImportError as e:
        raise InputError(f"data needs torchvision (Debian: python3-torchvision): {e}")
    if args.size < 1 or args.batch < 1 or args.images < 1 or args.workers < 0:
        raise InputError("--size, --batch and --images must be positive, --workers >= 0")
    if not os.path.isdir(args.folder):
        raise InputError(f"--folder {args.folder}: no such directory")
    torch.set_num_threads(1)  # as a loader worker gets; the pipeline is per-sample Python work
    tf = T.Compose([T.RandomResizedCrop(args.size), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    ds = tvd.ImageFolder(args.folder, transform=tf)
    torch.manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True,
                                         num_workers=args.workers,
                                         persistent_workers=args.workers > 0)

    def batches():
        while True:
            yield from loader

    it = batches()
    for _ in range(2 * args.workers + 1):  # untimed: start-up and the prefetched batches
        next(it)
    t0 = time.perf_counter()
    seen = 0
    while seen < args.images:
        seen += len(next(it)[1])
    seconds = time.perf_counter() - t0
    r = {"bench": "data", "framework": "pytorch", "folder": args.folder, "size": args.size,
         "batch": args.batch, "workers": args.workers, "images": seen, "seconds": seconds,
         "images_per_s": seen / seconds,
         "images_per_s_per_core": seen / seconds / max(1, args.workers)}
    if args.json:
        print(json.dumps(r))
    else:
        print(f"pytorch data: {args.folder}, RandomResizedCrop({args.size}) + flip + normalise, "
              f"batch {args.batch}, {args.workers} worker(s)\n"
              f"  {r['images_per_s']:.1f} images/s ({r['images_per_s_per_core']:.1f} per core) "
              f"over {seen} images in {seconds:.2f} s")
    return 0


# --- command line --------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise InputError(message)


def main(argv):
    p = Parser(prog="pytorch_reference.py", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)
    common = Parser(add_help=False)
    common.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    common.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: OMP_NUM_THREADS, else every core)")
    common.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                        help="NHWC memory format (auto: on for the CPU)")
    common.add_argument("--json", action="store_true", help="print JSON objects, one a line")
    t = sub.add_parser("train", parents=[common], help="full training steps on synthetic data")
    t.add_argument("--model", default="resnet20", help=", ".join(MODELS))
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--hw", type=int, default=32)
    t.add_argument("--cin", type=int, default=3)
    t.add_argument("--classes", type=int, default=10)
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--mode", default="fp32", choices=("fp32", "bf16", "qat"))
    t.add_argument("--amp", default="off", choices=("off", "bf16"),
                   help="any mode under torch.autocast(bfloat16) (--mode qat --amp bf16)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quantizer", default="lsq", help="qat: uniform or lsq (default lsq)")
    t.add_argument("--bits", type=int, default=4, help="qat: weight and activation bits")
    k = sub.add_parser("kernel", parents=[common], help="one kernel (or all)")
    k.add_argument("name", help=", ".join(KERNELS) + ", all")
    k.add_argument("--size", default=None, help="the kernel's geometry, as lowbit bench kernel")
    k.add_argument("--dtype", default="f32")
    k.add_argument("--iters", type=int, default=20)
    k.add_argument("--warmup", type=int, default=3)
    d = sub.add_parser("data", help="the ImageNet input pipeline over a JPEG folder")
    d.add_argument("--folder", required=True, help="DIR/<class>/*.jpg (scripts/make_jpegs.py)")
    d.add_argument("--size", type=int, default=224)
    d.add_argument("--batch", type=int, default=64)
    d.add_argument("--workers", type=int, default=0)
    d.add_argument("--images", type=int, default=2000)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.cmd == "data":
        return run_data(args)
    return run_train(args) if args.cmd == "train" else run_kernel(args)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except InputError as e:
        print(f"pytorch_reference.py: error: {e}", file=sys.stderr)
        sys.exit(2)
