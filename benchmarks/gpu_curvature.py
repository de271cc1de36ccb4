"""lossdoctor's curvature engine on one GPU: the CPU benchmark's case (CNN1d, ~94k parameters,
4,000 MNIST-1D samples in batches of 1,000, trained 5 epochs with Adam) with the model on CUDA.

Prints gradient and HVP times (CUDA-synchronized medians), and time + matvecs for top-1 and
top-5 eigenvalues at tol=1e-6 and a 99-matvec Hutch++ trace, with and without ``cache=True``.

    python benchmarks/gpu_curvature.py [--device cuda] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).parent))
import lossdoctor as ld  # noqa: E402
from curvature import TINY, Case, build_model, load_data  # noqa: E402


def synced(device: torch.device):
    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    return clock


def trained_model(case: Case, data: list, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(case.seed)
    model = build_model(case).to(device)
    x = torch.cat([b[0] for b in data]).to(device)
    y = torch.cat([b[1] for b in data]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=case.lr)
    gen = torch.Generator().manual_seed(case.seed)
    for _ in range(case.epochs):
        perm = torch.randperm(len(x), generator=gen).to(device)
        for i in range(0, len(x), case.train_batch):
            idx = perm[i : i + case.train_batch]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument(
        "--tiny", action="store_true", help="a 1-hidden-layer MLP on 120 samples (smoke test)"
    )
    args = p.parse_args()
    device = torch.device(args.device)
    clock = synced(device)
    case = TINY if args.tiny else Case()
    cpu_data = load_data(case)
    model = trained_model(case, cpu_data, device)
    data = [
        (x.to(device), y.to(device)) for x, y in cpu_data
    ]  # resident, as a GPU user would hold it
    loss_fn = F.cross_entropy
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {name}, torch {torch.__version__}, {case.model}, {case.num_train} samples in batches of "
        f"{case.batch_size}"
    )

    rows = []
    for cache in (False, True):
        op = ld.hessian(model, loss_fn, data, cache=cache)
        v = torch.randn(op.num_params, device=device)
        op.gradient(), op @ v  # warm-up (kernels, cache)
        grad_t, hvp_t = [], []
        for _ in range(args.repeats):
            t = clock()
            op.gradient()
            grad_t.append(clock() - t)
            t = clock()
            op @ v
            hvp_t.append(clock() - t)
        g, h = statistics.median(grad_t), statistics.median(hvp_t)
        timings = {}
        for label, fn, kwargs in (
            ("top-1", ld.eigenpairs, {"k": 1, "tol": 1e-6}),
            ("top-5", ld.eigenpairs, {"k": 5, "tol": 1e-6}),
            ("trace-99", ld.trace, {"matvecs": 99}),
        ):
            t = clock()
            result = fn(op, **kwargs)
            timings[label] = (clock() - t, result.matvecs, result)
        top5 = timings["top-5"][2]
        rows.append((f"cache={cache}", g, h, timings, top5))
    print(
        f"{'engine':<12} {'grad ms':>8} {'HVP ms':>8} {'HVP/grad':>8} {'top-1 s':>8} {'mv':>4} "
        f"{'top-5 s':>8} {'mv':>4} {'trace s':>8}  lambda_1..5"
    )
    for label, g, h, t, top5 in rows:
        print(
            f"{label:<12} {1e3 * g:>8.2f} {1e3 * h:>8.2f} {h / g:>8.2f} {t['top-1'][0]:>8.3f} "
            f"{t['top-1'][1]:>4} {t['top-5'][0]:>8.3f} {t['top-5'][1]:>4} {t['trace-99'][0]:>8.3f}  "
            + " ".join(f"{float(x):.6g}" for x in top5.eigenvalues)
        )
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
