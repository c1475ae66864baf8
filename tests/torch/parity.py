"""PyTorch side of tests/train/torch_parity_test.cpp (suite ParityTorch).

Usage: parity.py IN.safetensors OUT.safetensors

IN holds every case's inputs as "<case>.<input>" in PyTorch layouts (NCHW activations, OIHW
weights) and, in its metadata under "cases", a JSON list of {"name", "op", "params"}. OPS[op]
computes the case with torch from its inputs and params and returns named results, written to
OUT as "<case>.<result>" in f64. Float ops run in f64 (the C++ side's f32 is then the only
rounding); the fake-quantize ops run in f32, as torch's kernels only take f32 and because a
level decision must see the same f32 code x * (1 / s) as lowbit's. Where lowbit's definition
differs from torch's on purpose, the op transforms torch's result into lowbit's definition and
says why (the C++ case repeats it).
"""
import json
import math
import sys

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

try:  # torch >= 1.13 moved the QAT modules to torch.ao; Debian's 1.13 still has the old path
    from torch.nn.intrinsic.qat import ConvBn2d
except ImportError:  # pragma: no cover
    from torch.ao.nn.intrinsic.qat import ConvBn2d

OPS = {}


def op(name):
    def register(fn):
        OPS[name] = fn
        return fn
    return register


def leaf(t, dtype=torch.float64):
    return t.to(dtype).clone().requires_grad_()


# --- layers ---------------------------------------------------------------------------------

@op("conv2d")
def conv2d(t, p):
    x, w = leaf(t["x"]), leaf(t["w"])
    b = leaf(t["b"]) if "b" in t else None
    y = F.conv2d(x, w, b, stride=p["stride"], padding=p["padding"], dilation=p["dilation"],
                 groups=p["groups"])
    (y * t["g"].double()).sum().backward()
    out = {"y": y, "dx": x.grad, "dw": w.grad}
    if b is not None:
        out["db"] = b.grad
    return out


@op("batch_norm")
def batch_norm(t, p):
    x, gamma, beta = leaf(t["x"]), leaf(t["w"]), leaf(t["b"])
    rm, rv = t["running_mean"].double().clone(), t["running_var"].double().clone()
    # F.batch_norm is BatchNorm2d's forward: biased variance to normalise, unbiased into rv.
    y = F.batch_norm(x, rm, rv, gamma, beta, training=p["training"], momentum=p["momentum"],
                     eps=p["eps"])
    (y * t["g"].double()).sum().backward()
    return {"y": y, "dx": x.grad, "dw": gamma.grad, "db": beta.grad, "running_mean": rm,
            "running_var": rv}


@op("max_pool2d")
def max_pool2d(t, p):
    x = leaf(t["x"])
    y = F.max_pool2d(x, p["kernel"], p["stride"], p["padding"], ceil_mode=p["ceil_mode"])
    (y * t["g"].double()).sum().backward()
    return {"y": y, "dx": x.grad}


@op("avg_pool2d")
def avg_pool2d(t, p):
    x = leaf(t["x"])
    y = F.avg_pool2d(x, p["kernel"], p["stride"], p["padding"], ceil_mode=p["ceil_mode"],
                     count_include_pad=p["count_include_pad"])
    (y * t["g"].double()).sum().backward()
    return {"y": y, "dx": x.grad}


@op("global_avg_pool2d")
def global_avg_pool2d(t, p):
    x = leaf(t["x"])
    y = F.adaptive_avg_pool2d(x, 1).flatten(1)
    (y * t["g"].double()).sum().backward()
    return {"y": y, "dx": x.grad}


@op("linear")
def linear(t, p):
    x, w, b = leaf(t["x"]), leaf(t["w"]), leaf(t["b"])
    y = F.linear(x, w, b)
    (y * t["g"].double()).sum().backward()
    return {"y": y, "dx": x.grad, "dw": w.grad, "db": b.grad}


@op("relu6")
def relu6(t, p):
    x = leaf(t["x"])
    y = F.relu6(x)
    (y * t["g"].double()).sum().backward()
    return {"y": y, "dx": x.grad}


@op("hardswish")
def hardswish(t, p):
    x = leaf(t["x"])
    y = F.hardswish(x)
    (y * t["g"].double()).sum().backward()
    return {"y": y, "dx": x.grad}


@op("dropout_stats")
def dropout_stats(t, p):
    # Masks come from different generators, so only statistics compare: the keep rate, the
    # value kept elements take (1 / (1 - p)) and the mean over many elements (1).
    torch.manual_seed(p["seed"])
    y = F.dropout(torch.ones(p["numel"], dtype=torch.float32), p["p"], training=True)
    kept = y[y != 0]
    return {"keep_rate": torch.tensor([kept.numel() / y.numel()]),
            "kept_min": kept.min().reshape(1), "kept_max": kept.max().reshape(1),
            "mean": y.double().mean().reshape(1)}


# --- loss and optimizers --------------------------------------------------------------------

@op("cross_entropy")
def cross_entropy(t, p):
    logits = leaf(t["logits"])
    loss = F.cross_entropy(logits, t["target"].long(), label_smoothing=p["label_smoothing"])
    loss.backward()
    return {"loss": loss.reshape(1), "dlogits": logits.grad}


@op("sgd")
def sgd(t, p):
    w = torch.nn.Parameter(t["p"].double().clone())
    opt = torch.optim.SGD([w], lr=p["lr"], momentum=p["momentum"], dampening=p["dampening"],
                          nesterov=p["nesterov"], weight_decay=p["weight_decay"])
    for i in range(p["steps"]):
        w.grad = t[f"g{i}"].double().clone()
        opt.step()
    out = {"p": w.detach()}
    if p["momentum"] != 0:
        out["momentum_buffer"] = opt.state[w]["momentum_buffer"]
    return out


@op("adamw")
def adamw(t, p):
    w = torch.nn.Parameter(t["p"].double().clone())
    opt = torch.optim.AdamW([w], lr=p["lr"], betas=(p["beta1"], p["beta2"]), eps=p["eps"],
                            weight_decay=p["weight_decay"])
    for i in range(p["steps"]):
        w.grad = t[f"g{i}"].double().clone()
        opt.step()
    st = opt.state[w]
    return {"p": w.detach(), "exp_avg": st["exp_avg"], "exp_avg_sq": st["exp_avg_sq"]}


def make_scheduler(opt, s):
    L = torch.optim.lr_scheduler
    kind = s["kind"]
    if kind == "constant":
        return L.ConstantLR(opt, factor=1.0, total_iters=0)
    if kind == "step":
        return L.StepLR(opt, step_size=s["step_size"], gamma=s["gamma"])
    if kind == "multistep":
        return L.MultiStepLR(opt, milestones=s["milestones"], gamma=s["gamma"])
    if kind == "cosine":
        return L.CosineAnnealingLR(opt, T_max=s["t_max"], eta_min=s["eta_min"])
    if kind == "onecycle":
        return L.OneCycleLR(opt, max_lr=s["max_lr"], total_steps=s["total_steps"],
                            pct_start=s["pct_start"], anneal_strategy="cos",
                            div_factor=s["div_factor"], final_div_factor=s["final_div_factor"],
                            cycle_momentum=False)
    if kind == "warmup":
        # lowbit's LinearWarmup multiplies its inner schedule, whose clock keeps running through
        # the warm-up: torch's LinearLR chained with it (ChainedScheduler), not SequentialLR
        # (which would restart the inner schedule after the warm-up).
        warm = L.LinearLR(opt, start_factor=s["start_factor"], end_factor=1.0,
                          total_iters=s["warmup_steps"])
        return L.ChainedScheduler([warm, make_scheduler(opt, s["inner"])])
    raise ValueError(f"unknown schedule kind {kind!r}")


@op("lr_schedule")
def lr_schedule(t, p):
    s = p["schedule"]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))], lr=p["base_lr"])
    sched = make_scheduler(opt, s)
    lrs = []
    for step in range(p["steps"]):
        lrs.append(opt.param_groups[0]["lr"])
        if step + 1 < p["steps"]:
            opt.step()
            sched.step()
    if s["kind"] == "cosine":
        # lowbit's CosineLr holds eta_min after t_max (train/schedule.h); torch's recursive
        # form climbs back up a second half-cosine. lowbit's lr at t is torch's at min(t, t_max).
        lrs = [lrs[min(i, s["t_max"])] for i in range(len(lrs))]
    return {"lr": torch.tensor(lrs, dtype=torch.float64)}


# --- quantizers -----------------------------------------------------------------------------

def param_view(v, x, axis):
    shape = [1] * x.dim()
    shape[axis] = -1
    return v.reshape(shape)


@op("fake_quantize")
def fake_quantize(t, p):
    x, g = leaf(t["x"], torch.float32), t["g"].float()
    if p["per_channel"]:
        y = torch.fake_quantize_per_channel_affine(x, t["scale"].float(), t["zero_point"].int(),
                                                   p["axis"], p["qmin"], p["qmax"])
    else:
        y = torch.fake_quantize_per_tensor_affine(x, float(t["scale"].item()),
                                                  int(t["zero_point"].item()), p["qmin"], p["qmax"])
    (y * g).sum().backward()
    return {"y": y, "dx": x.grad}


@op("uniform_quantizer")
def uniform_quantizer(t, p):
    # torch.ao's FakeQuantize with a min-max observer: observe x, calculate_qparams, then the
    # fake_quantize op. Its observer uses torch's defaults (eps = f32 machine epsilon).
    Q = torch.quantization
    if p["per_channel"]:
        obs = Q.PerChannelMinMaxObserver.with_args(ch_axis=p["axis"])
        scheme = torch.per_channel_symmetric if p["symmetric"] else torch.per_channel_affine
    else:
        obs = Q.MinMaxObserver
        scheme = torch.per_tensor_symmetric if p["symmetric"] else torch.per_tensor_affine
    dtype = torch.qint8 if p["qmin"] < 0 else torch.quint8
    fq = Q.FakeQuantize(observer=obs, quant_min=p["qmin"], quant_max=p["qmax"], dtype=dtype,
                        qscheme=scheme)
    x = leaf(t["x"], torch.float32)
    y = fq(x)
    (y * t["g"].float()).sum().backward()
    return {"y": y, "dx": x.grad, "scale": fq.scale, "zero_point": fq.zero_point.double()}


def lsq_paper_band(u, qmin, qmax):
    """Where lowbit's LSQ/LSQ+ and torch's learnable fake quantize differ by definition.

    lowbit follows the LSQ paper (Esser et al. 2020, eq. 3; docs/methods.md, "LSQ" and "LSQ+"): x passes and
    dx_hat/ds = round(u) - u only where qmin < u < qmax on the unrounded u; elsewhere dx_hat/ds
    is the clip value (qmin or qmax) and, for LSQ+, dx_hat/dbeta = 1. torch decides on the
    rounded code, qmin <= round(u) <= qmax. They disagree on the half-step bands
    [qmin - 1/2, qmin] and [qmax, qmax + 1/2]: there torch passes dy and gives round(u) - u,
    lowbit passes nothing and gives the clip value, a difference of u * dy in ds (and dy in
    dbeta).
    """
    r = torch.round(u)  # half to even, as torch's nearbyint
    return ~((qmin < u) & (u < qmax)) & (r >= qmin) & (r <= qmax)


@op("lsq")
def lsq(t, p):
    """torch._fake_quantize_learnable_*_affine, turned into lowbit's LSQ or LSQ+.

    LSQ is zero point 0. LSQ+ learns a real offset beta where torch learns a zero point z,
    x_hat = (clamp(round(x / s) + z) - z) * s: with beta = -z * s (z integral) the forwards are
    the same, and the chain rule gives lowbit's gradients from torch's:
    dL/dbeta = -(dL/dz) / s and dL/ds|beta = dL/ds|z + z * dL/dbeta.
    """
    qmin, qmax, axis = p["qmin"], p["qmax"], p["axis"]
    x, g = leaf(t["x"], torch.float32), t["g"].float()
    s = leaf(t["scale"], torch.float32)
    z = leaf(t["zero_point"], torch.float32)
    # lowbit's LSQ gradient scale, g = 1 / sqrt(N * Qp) (docs/methods.md, "LSQ"), as torch's grad_factor.
    gf = 1.0 / math.sqrt(p["count"] * max(qmax, 1))
    if p["per_channel"]:
        y = torch._fake_quantize_learnable_per_channel_affine(x, s, z, axis, qmin, qmax, gf)
    else:
        y = torch._fake_quantize_learnable_per_tensor_affine(x, s, z, qmin, qmax, gf)
    (y * g).sum().backward()
    ds, dz = s.grad.double(), z.grad.double()
    sd, zd = s.detach().double(), z.detach().double()
    dbeta = -dz / sd
    ds = ds + zd * dbeta
    # The documented band (lsq_paper_band), per channel.
    u = x.detach() * (1.0 / param_view(s.detach(), x, axis)) + param_view(z.detach(), x, axis)
    band = lsq_paper_band(u, qmin, qmax)
    dims = [d for d in range(x.dim()) if d != axis] if p["per_channel"] else list(range(x.dim()))
    bd, gd = band.double(), g.double()
    ds = ds + gf * (bd * gd * u.double()).sum(dims).reshape(ds.shape)
    dbeta = dbeta + gf * (bd * gd).sum(dims).reshape(dbeta.shape)
    dx = torch.where(band, torch.zeros_like(x.grad), x.grad)
    out = {"y": y, "dx": dx, "dscale": ds}
    if p["offset"]:
        out["doffset"] = dbeta
    return out


@op("conv_bn_qat")
def conv_bn_qat(t, p):
    # torch's ConvBn2d._forward_approximate (docs/methods.md, "BN folding for QAT") in f32 with a per-channel symmetric
    # min-max weight fake quantizer, the BatchNorm in training mode.
    Q = torch.quantization
    wfq = Q.FakeQuantize.with_args(
        observer=Q.PerChannelMinMaxObserver.with_args(ch_axis=0), quant_min=p["qmin"],
        quant_max=p["qmax"], dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    qconfig = Q.QConfig(activation=Q.FakeQuantize.with_args(observer=Q.MinMaxObserver),
                        weight=wfq)
    w = t["w"].float()
    m = ConvBn2d(w.shape[1] * p["groups"], w.shape[0], w.shape[2], stride=p["stride"],
                 padding=p["padding"], groups=p["groups"], bias=False, eps=p["eps"],
                 momentum=p["momentum"], freeze_bn=False, qconfig=qconfig)
    with torch.no_grad():
        m.weight.copy_(w)
        m.bn.weight.copy_(t["gamma"].float())
        m.bn.bias.copy_(t["beta"].float())
        m.bn.running_mean.copy_(t["running_mean"].float())
        m.bn.running_var.copy_(t["running_var"].float())
    m.train()
    x = leaf(t["x"], torch.float32)
    y = m(x)
    (y * t["g"].float()).sum().backward()
    return {"y": y, "dx": x.grad, "dw": m.weight.grad, "dgamma": m.bn.weight.grad,
            "dbeta": m.bn.bias.grad, "running_mean": m.bn.running_mean,
            "running_var": m.bn.running_var}


def main(src, dst):
    with safe_open(src, framework="pt") as f:
        cases = json.loads(f.metadata()["cases"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    out = {}
    for case in cases:
        name = case["name"]
        prefix = name + "."
        inputs = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            results = OPS[case["op"]](inputs, case["params"])
        except Exception as e:
            raise RuntimeError(f"case {name} (op {case['op']}): {e}") from e
        for k, v in results.items():
            out[f"{name}.{k}"] = v.detach().double().contiguous()
    save_file(out, dst)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
