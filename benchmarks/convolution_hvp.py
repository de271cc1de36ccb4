"""Hessian-vector products through convolutions: torch's own second backward of a convolution
against lossdoctor's (``lossdoctor.curvature._convolution``), on the layer shapes of common
networks. Each row times one product through a kept gradient graph (what ``hessian(cache=...)``
does after the first product), minima of interleaved repeats, and checks that both give the same
numbers.

    .venv/bin/python benchmarks/convolution_hvp.py                # 1 torch thread
    .venv/bin/python benchmarks/convolution_hvp.py --threads 2 --repeats 9
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn
from torch.nn import functional as F

from lossdoctor.curvature._convolution import fast_convolution_double_backward
from lossdoctor.curvature.memory import reuse_freed_pages


def cnn1d() -> tuple[nn.Module, torch.Tensor]:
    """benchmarks/curvature.py's MNIST-1D CNN, on one batch of 1,000."""
    model = nn.Sequential(
        nn.Unflatten(1, (1, 40)),
        nn.Conv1d(1, 16, 5, padding=2),
        nn.ReLU(),
        nn.Conv1d(16, 32, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(640, 140),
        nn.ReLU(),
        nn.Linear(140, 10),
    )
    return model, torch.randn(1000, 40)


def resnet_block() -> tuple[nn.Module, torch.Tensor]:
    """Two 3x3 convolutions of 64 channels at 16x16 with BatchNorm (eval), 64 images."""
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    ).eval()
    return model, torch.randn(64, 3, 16, 16)


def depthwise() -> tuple[nn.Module, torch.Tensor]:
    """A MobileNet-style depthwise-separable block (groups = channels), 64 images of 32x32."""
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=2, padding=1),
        nn.ReLU6(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),
        nn.ReLU6(),
        nn.Conv2d(32, 64, 1),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    return model, torch.randn(64, 3, 32, 32)


def lenet() -> tuple[nn.Module, torch.Tensor]:
    """LeNet-5 (curvlinops' test case shape), 256 images of 28x28."""
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120),
        nn.Tanh(),
        nn.Linear(120, 84),
        nn.Tanh(),
        nn.Linear(84, 10),
    )
    return model, torch.randn(256, 1, 28, 28)


CASES = {"cnn1d": cnn1d, "resnet-block": resnet_block, "depthwise": depthwise, "lenet": lenet}


def kept_product(model: nn.Module, x: torch.Tensor, fast: bool):
    """One product through a kept gradient graph, as a function, and its result."""
    params = [p for p in model.parameters() if p.requires_grad]
    y = torch.arange(x.shape[0]) % 10
    context = fast_convolution_double_backward() if fast else torch.enable_grad()
    with context:
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
    gen = torch.Generator().manual_seed(1)
    vector = [torch.randn(p.shape, generator=gen) for p in params]

    def product():
        return torch.autograd.grad(grads, params, vector, retain_graph=True)

    return product


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    reuse_freed_pages()  # as the engine does before its products: no page-fault noise in either row
    print(
        f"one kept-graph Hessian-vector product, minimum of {args.repeats} interleaved repeats, "
        f"{torch.get_num_threads()} torch thread(s), load {os.getloadavg()[0]:.1f} before"
    )
    print(
        f"{'case':14s} {'params':>8s} {'torch ms':>9s} {'ours ms':>8s} {'ratio':>6s} {'max rel diff':>13s}"
    )
    for name, build in CASES.items():
        torch.manual_seed(0)
        model, x = build()
        products = {fast: kept_product(model, x, fast) for fast in (False, True)}
        results = {fast: f() for fast, f in products.items()}
        diff = max(
            float((a - b).norm() / a.norm().clamp_min(1e-30))
            for a, b in zip(results[False], results[True])
        )
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for fast, f in products.items():
                start = time.perf_counter()
                f()
                times[fast].append(time.perf_counter() - start)
        slow, quick = min(times[False]) * 1e3, min(times[True]) * 1e3
        n = sum(q.numel() for q in model.parameters())
        print(f"{name:14s} {n:8,d} {slow:9.2f} {quick:8.2f} {quick / slow:6.2f} {diff:13.1e}")
    print(f"load {os.getloadavg()[0]:.1f} after")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
