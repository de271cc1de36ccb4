"""Time per update against batch size: the lecture's "one big batch costs about as much as one
sample until the hardware saturates", measured on this machine.

An update is forward + backward + optimizer step on a copy of the model (SGD, so the step's
cost is the parameters', not the optimizer state's). Each batch size is warmed up first (lazy
initialization, allocator, autotuning) and CUDA is synchronized around every timed update.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._results import ResultMixin, fmt
from ..data import call_model
from ..model_state import preserved_rng, trainable_parameters
from ..progress import Progress
from .evaluation import as_tensors

SATURATION = 0.8  # saturated once throughput is within this fraction of the best measured


@dataclass(frozen=True)
class BatchTiming(ResultMixin):
    """Per batch size: median seconds per update (with the spread over repeats), updates per
    epoch of ``dataset_size`` samples, seconds per epoch, and samples per second."""

    batch_sizes: list[int]
    seconds_per_update: list[float]
    seconds_per_update_min: list[float]
    seconds_per_update_max: list[float]
    updates_per_epoch: list[int]
    seconds_per_epoch: list[float]
    samples_per_second: list[float]
    dataset_size: int
    saturation_batch_size: int
    device: str
    repeats: int
    warmup: int

    def __str__(self) -> str:
        lines = [f"Time per update on {self.device} ({self.repeats} repeats after {self.warmup} warm-up; "
                 f"epoch = {self.dataset_size} samples)",
                 f"  {'batch':>7} {'s/update':>10} {'updates/epoch':>14} {'s/epoch':>10} {'samples/s':>11}"]
        for i, b in enumerate(self.batch_sizes):
            lines.append(f"  {b:>7d} {fmt(self.seconds_per_update[i]):>10} {self.updates_per_epoch[i]:>14d} "
                         f"{fmt(self.seconds_per_epoch[i]):>10} {fmt(self.samples_per_second[i]):>11}")
        lines.append(f"  the hardware saturates near batch {self.saturation_batch_size}: beyond it time per "
                     "update grows about in proportion to the batch")
        return "\n".join(lines)


def default_batch_sizes(n: int) -> list[int]:
    """Powers of two from 1 up to the dataset size, and the dataset size itself."""
    sizes = [2 ** k for k in range(int(math.log2(max(n, 1))) + 1)]
    return sorted(set(sizes + [n]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batch_sizes(model: nn.Module, loss_fn: Any, dataset: Any, batch_sizes: Sequence[int] | None = None,
                     *, device: str | torch.device | None = None, repeats: int = 5, warmup: int = 2,
                     lr: float = 1e-3, epoch_size: int | None = None,
                     progress: Progress | None = None) -> BatchTiming:
    """Seconds per update for each batch size (default: powers of two from 1 to the dataset size).

    Args:
        dataset: any lossdoctor data; its samples are merged and batches cut from them (batch
            sizes above the dataset size repeat samples).
        device: where to time (default: the model's device). A copy of the model is moved there;
            the model itself is not touched.
        repeats: timed updates per batch size (the median is reported); warmup: untimed ones.
        epoch_size: samples per epoch for updates/epoch (default: the dataset size; e.g. 60000
            for the lecture's MNIST example).
    """
    x, y = as_tensors(dataset)
    n = len(y)
    sizes = default_batch_sizes(n) if batch_sizes is None else [int(b) for b in batch_sizes]
    if not sizes or any(b < 1 for b in sizes):
        raise ValueError(f"batch_sizes must be positive integers, got {batch_sizes!r}.")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}.")
    trainable_parameters(model)  # a clear error for a model with nothing to train
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    epoch = int(epoch_size or n)
    with preserved_rng():
        work = copy.deepcopy(model).to(dev)
        work.train()
        opt = torch.optim.SGD([p for p in work.parameters() if p.requires_grad], lr=lr)
        gen = torch.Generator().manual_seed(0)
        med, lo, hi = [], [], []
        for i, b in enumerate(sorted(sizes)):
            idx = torch.randint(0, n, (b,), generator=gen) if b > n else torch.randperm(n, generator=gen)[:b]
            xb, yb = x[idx].to(dev), y[idx].to(dev)
            times = []
            for r in range(warmup + repeats):
                _sync(dev)
                start = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                loss_fn(call_model(work, xb), yb).backward()
                opt.step()
                _sync(dev)
                if r >= warmup:
                    times.append(time.perf_counter() - start)
            med.append(float(np.median(times)))
            lo.append(float(np.min(times)))
            hi.append(float(np.max(times)))
            if progress:
                progress(i + 1, len(sizes))
    sizes = sorted(sizes)
    upe = [math.ceil(epoch / b) for b in sizes]
    throughput = [b / t for b, t in zip(sizes, med)]
    best = max(throughput)
    saturation = next(b for b, t in zip(sizes, throughput) if t >= SATURATION * best)
    return BatchTiming(batch_sizes=sizes, seconds_per_update=med, seconds_per_update_min=lo,
                       seconds_per_update_max=hi, updates_per_epoch=upe,
                       seconds_per_epoch=[u * t for u, t in zip(upe, med)], samples_per_second=throughput,
                       dataset_size=epoch, saturation_batch_size=saturation, device=str(dev),
                       repeats=repeats, warmup=warmup)
