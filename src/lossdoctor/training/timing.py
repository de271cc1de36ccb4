"""Time per update against batch size.

The lecture's "one big batch costs about as much as one sample until the hardware saturates",
measured on this machine.

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

from .. import _interrupt
from .._checks import (
    check_device,
    check_float,
    check_int,
    check_ints,
    check_loss_fn,
    check_module,
    check_progress,
)
from .._results import ResultMixin, fmt
from ..data import batch_loss, compute_loss, take
from ..evaluation import as_tensors
from ..model_state import preserved_rng, trainable_parameters
from ..progress import Progress, with_progress

SATURATION = 0.8  # saturated once throughput is within this fraction of the best measured


@dataclass(frozen=True)
class BatchTiming(ResultMixin):
    """Time per update at each batch size, and what it makes of an epoch (:func:`time_batch_sizes`).

    Attributes:
        batch_sizes: the batch sizes timed, smallest first.
        seconds_per_update: the median seconds per update at each.
        seconds_per_update_min: the fastest repeat.
        seconds_per_update_max: the slowest repeat.
        updates_per_epoch: updates per epoch of ``dataset_size`` samples.
        seconds_per_epoch: seconds per epoch.
        samples_per_second: throughput.
        dataset_size: samples per epoch.
        saturation_batch_size: the smallest batch within 80% of the best throughput (where the
            hardware saturates); ``None`` when interrupted.
        device: where it was timed.
        repeats: timed updates per batch size.
        warmup: untimed updates per batch size.
        interrupted: Ctrl-C: the rows are the batch sizes finished (smallest first).
        batch_sizes_requested: the batch sizes asked for.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import tiny_classification
        >>> p = tiny_classification()
        >>> timing = ld.time_batch_sizes(p.model, p.loss_fn, p.train_data, [1, 8, 64], repeats=2, warmup=1)
        >>> timing.batch_sizes, timing.updates_per_epoch  # the lecture's point: far fewer updates
        ([1, 8, 64], [64, 8, 1])
    """

    batch_sizes: list[int]
    seconds_per_update: list[float]
    seconds_per_update_min: list[float]
    seconds_per_update_max: list[float]
    updates_per_epoch: list[int]
    seconds_per_epoch: list[float]
    samples_per_second: list[float]
    dataset_size: int
    saturation_batch_size: int | None  # None when interrupted: no verdict from a partial sweep
    device: str
    repeats: int
    warmup: int
    interrupted: bool = False  # Ctrl-C: the rows are the batch sizes finished (smallest first)
    batch_sizes_requested: list[int] | None = None

    def __str__(self) -> str:
        lines = [
            f"Time per update on {self.device} ({self.repeats} repeats after {self.warmup} warm-up; "
            f"epoch = {self.dataset_size} samples)",
            f"  {'batch':>7} {'s/update':>10} {'updates/epoch':>14} {'s/epoch':>10} {'samples/s':>11}",
        ]
        for i, b in enumerate(self.batch_sizes):
            lines.append(
                f"  {b:>7d} {fmt(self.seconds_per_update[i]):>10} {self.updates_per_epoch[i]:>14d} "
                f"{fmt(self.seconds_per_epoch[i]):>10} {fmt(self.samples_per_second[i]):>11}"
            )
        if self.interrupted:
            lines.append(
                f"  INTERRUPTED after {len(self.batch_sizes)} of {len(self.batch_sizes_requested or [])} "
                "batch sizes: no saturation point named"
            )
        else:
            lines.append(
                f"  the hardware saturates near batch {self.saturation_batch_size}: beyond it time per "
                "update grows about in proportion to the batch"
            )
        return "\n".join(lines)


def default_batch_sizes(n: int) -> list[int]:
    """Powers of two from 1 up to the dataset size, and the dataset size itself.

    Args:
        n: the dataset size.

    Returns:
        The batch sizes, increasing.

    Examples:
        >>> from lossdoctor.training.timing import default_batch_sizes
        >>> default_batch_sizes(100)
        [1, 2, 4, 8, 16, 32, 64, 100]
    """
    sizes = [2**k for k in range(int(math.log2(max(n, 1))) + 1)]
    return sorted(set(sizes + [n]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _trains_on_one(model: nn.Module, loss_fn: Any, x: Any, y: torch.Tensor) -> bool:
    """Whether a one-sample batch goes through the model in train mode.

    BatchNorm refuses a batch whose channels have one value each (e.g. after global pooling)."""
    try:
        compute_loss(model, loss_fn, x, y)
    except ValueError as err:
        if "more than 1 value per channel" in str(err):
            return False
        raise
    return True


@with_progress("batch timing")
def time_batch_sizes(
    model: nn.Module,
    loss_fn: Any,
    dataset: Any,
    batch_sizes: Sequence[int] | None = None,
    *,
    device: str | torch.device | None = None,
    repeats: int = 5,
    warmup: int = 2,
    lr: float = 1e-3,
    epoch_size: int | None = None,
    progress: Progress | bool | str | None = "auto",
) -> BatchTiming:
    """Seconds per update for each batch size: the lecture's "a large batch costs about as much as one".

    One optimizer step (forward, backward, SGD update) is timed per batch size, on a copy of
    the model; the model itself is not touched.

    Args:
        model: any ``nn.Module``.
        loss_fn: ``loss_fn(model(inputs), targets)``, the batch-mean loss.
        batch_sizes: the batch sizes to time (default: powers of two from 1 to the dataset size).
        lr: the SGD learning rate of the timed updates.
        progress: called as ``progress(done, total)``; ``"auto"`` (default) shows a bar on a
            terminal for long runs.
        dataset: any lossdoctor data; its samples are merged and batches cut from them (batch
            sizes above the dataset size repeat samples).
        device: where to time (default: the model's device). A copy of the model is moved there;
            the model itself is not touched.
        repeats: timed updates per batch size (the median is reported).
        warmup: untimed updates before them.
        epoch_size: samples per epoch for updates/epoch (default: the dataset size; e.g. 60000
            for the lecture's MNIST example).

    Returns:
        Per batch size, the time per update and per epoch and the throughput, with the batch
        size where the hardware saturates. Ctrl-C returns the batch sizes finished.

    Raises:
        ValueError: bad batch sizes or options, or a model with nothing to train.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import tiny_classification
        >>> p = tiny_classification()
        >>> timing = ld.time_batch_sizes(p.model, p.loss_fn, p.train_data, [1, 8, 64], repeats=2, warmup=1)
        >>> timing.updates_per_epoch
        [64, 8, 1]
        >>> len(timing.seconds_per_update), timing.dataset_size
        (3, 64)
    """
    check_module(model)
    check_loss_fn(loss_fn)
    if batch_sizes is not None:
        batch_sizes = check_ints(batch_sizes, "batch_sizes", minimum=1, distinct=True)
    dev = check_device(device)
    repeats = check_int(repeats, "repeats", minimum=1)
    warmup = check_int(warmup, "warmup", minimum=0)
    lr = check_float(lr, "lr", above=0.0)
    epoch_size = check_int(epoch_size, "epoch_size", minimum=1, optional=True)
    check_progress(progress)
    trainable_parameters(model)  # a clear error for a model with nothing to train
    x, y = as_tensors(dataset, "dataset")
    n = len(y)
    sizes = sorted(default_batch_sizes(n) if batch_sizes is None else batch_sizes)
    dev = dev if dev is not None else next(model.parameters()).device
    epoch = epoch_size or n
    med: list[float] = []
    lo: list[float] = []
    hi: list[float] = []
    interrupted = False
    with preserved_rng():
        work = copy.deepcopy(model).to(dev)
        work.train()
        opt = torch.optim.SGD([p for p in work.parameters() if p.requires_grad], lr=lr)
        gen = torch.Generator().manual_seed(0)
        # one checked update first: a model or loss that fails does so with a clear error
        # (two samples at least: a per-sample loss of a 1-sample batch looks like a scalar)
        first = torch.randperm(n, generator=torch.Generator().manual_seed(0))[
            : min(n, max(2, sizes[0]))
        ]
        batch_loss(work, loss_fn, *take(x, y, first, dev), 0).backward()
        opt.zero_grad(set_to_none=True)
        if sizes[0] == 1 and not _trains_on_one(work, loss_fn, *take(x, y, first[:1], dev)):
            if batch_sizes is not None:
                raise ValueError(
                    "batch size 1 cannot train this model: a BatchNorm layer in train mode needs more "
                    "than one value per channel (torch refuses the forward). Time batch sizes of 2 or "
                    "more."
                )
            sizes = [b for b in sizes if b > 1] or [2]  # the default sizes start at 2 for it
        try:
            for i, b in enumerate(sizes):
                idx = (
                    torch.randint(0, n, (b,), generator=gen)
                    if b > n
                    else torch.randperm(n, generator=gen)[:b]
                )
                xb, yb = take(x, y, idx, dev)
                times = []
                for r in range(warmup + repeats):
                    _sync(dev)
                    start = time.perf_counter()
                    opt.zero_grad(set_to_none=True)
                    compute_loss(work, loss_fn, xb, yb)[1].backward()
                    opt.step()
                    _sync(dev)
                    if r >= warmup:
                        times.append(time.perf_counter() - start)
                med.append(float(np.median(times)))
                lo.append(float(np.min(times)))
                hi.append(float(np.max(times)))
                if callable(progress):
                    progress(i + 1, len(sizes))
        except KeyboardInterrupt:
            interrupted = _interrupt.keep_partial(finished=bool(med))
    done = sizes[: len(med)]
    upe = [math.ceil(epoch / b) for b in done]
    throughput = [b / t for b, t in zip(done, med)]
    best = max(throughput)
    saturation = (
        None if interrupted else next(b for b, t in zip(done, throughput) if t >= SATURATION * best)
    )
    return BatchTiming(
        batch_sizes=done,
        seconds_per_update=med,
        seconds_per_update_min=lo,
        seconds_per_update_max=hi,
        updates_per_epoch=upe,
        seconds_per_epoch=[u * t for u, t in zip(upe, med)],
        samples_per_second=throughput,
        dataset_size=epoch,
        saturation_batch_size=saturation,
        device=str(dev),
        repeats=repeats,
        warmup=warmup,
        interrupted=interrupted,
        batch_sizes_requested=sizes,
    )
