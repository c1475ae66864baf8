"""PyTorch side of tests/train/torch_reference_test.cpp.

Reads the inputs lowbit wrote (safetensors, PyTorch layouts: NCHW activations, OIHW weights),
computes the same conv, batch norm, cross-entropy and SGD steps with torch, and writes the
results for the C++ test to compare. Usage: reference.py IN.safetensors OUT.safetensors
"""
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file


def main(src, dst):
    t = {k: v.double() if v.is_floating_point() else v for k, v in load_file(src).items()}
    out = {}

    # Conv2d: stride 2, padding 1, groups 2, with bias; upstream gradient g.
    x = t["conv.x"].clone().requires_grad_()
    w = t["conv.w"].clone().requires_grad_()
    b = t["conv.b"].clone().requires_grad_()
    y = F.conv2d(x, w, b, stride=2, padding=1, groups=2)
    (y * t["conv.g"]).sum().backward()
    out.update({"conv.y": y, "conv.dx": x.grad, "conv.dw": w.grad, "conv.db": b.grad})

    # BatchNorm2d in training mode, momentum 0.1, eps 1e-5.
    x = t["bn.x"].clone().requires_grad_()
    gamma = t["bn.w"].clone().requires_grad_()
    beta = t["bn.b"].clone().requires_grad_()
    rm = torch.zeros(x.shape[1], dtype=torch.float64)
    rv = torch.ones(x.shape[1], dtype=torch.float64)
    y = F.batch_norm(x, rm, rv, gamma, beta, training=True, momentum=0.1, eps=1e-5)
    (y * t["bn.g"]).sum().backward()
    out.update({"bn.y": y, "bn.dx": x.grad, "bn.dw": gamma.grad, "bn.db": beta.grad,
                "bn.running_mean": rm, "bn.running_var": rv})

    # Cross-entropy with label smoothing 0.1, mean reduction.
    logits = t["ce.logits"].clone().requires_grad_()
    loss = F.cross_entropy(logits, t["ce.target"].long(), label_smoothing=0.1)
    loss.backward()
    out.update({"ce.loss": loss.reshape(1), "ce.dlogits": logits.grad})

    # Two SGD steps (momentum 0.9, Nesterov, weight decay 1e-2, lr 0.1) with fixed gradients.
    p = torch.nn.Parameter(t["sgd.p"].clone())
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)
    for g in (t["sgd.g1"], t["sgd.g2"]):
        p.grad = g.clone()
        opt.step()
    out["sgd.p"] = p.detach()

    save_file({k: v.detach().double().contiguous() for k, v in out.items()}, dst)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
