"""Full-data evaluation: the mean loss (and accuracy) over all of a data set, in eval mode.

:func:`evaluate` goes batch by batch as the data comes; :func:`evaluate_largest` merges the samples
into as few batches as memory allows (the whole set first, halving on out-of-memory), because
evaluation needs no gradients and one big batch is far faster than many small ones. Both sit beside
:mod:`lossdoctor.data` so that analyses and training alike use them."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .data import (
    batch_loss,
    batch_size,
    forward,
    input_tensors,
    is_out_of_memory,
    iter_batches,
    map_inputs,
    merge_batches,
    place,
    take,
)
from .model_state import RNGStream

# Largest batch found to fit, per (device, model class, parameter count): the search runs once.
_FITS: dict[tuple[str, str, int], int] = {}


def as_tensors(data: Any, name: str = "data") -> tuple[Any, torch.Tensor]:
    """All of ``data``'s samples as one ``(inputs, targets)`` batch (CPU or wherever they are).

    Tensors concatenated, dict inputs key by key (sequences right-padded where an ``attention_mask``
    marks padding), tuples item by item (:func:`lossdoctor.data.merge_batches`); index it with
    :func:`lossdoctor.data.take`. Every value must be finite (a NaN sample would turn every merged
    loss into NaN). A shuffling loader is read on a fixed seed: the merged order, and every result
    drawn from it, is the same whatever the caller's RNG."""
    batches = []
    for inputs, targets in iter_batches(data, name, rng=RNGStream(seed=0)):
        if targets.dim() == 0:
            inputs, targets = map_inputs(lambda t: t.unsqueeze(0), inputs), targets.unsqueeze(0)
        batches.append((inputs, targets))
    if not batches:
        raise ValueError(f"{name} is empty: it yielded no samples.")
    x, y = merge_batches(batches, name)
    tensors = [*input_tensors(x), y]
    if any(t.device.type == "meta" for t in tensors):
        raise ValueError(
            f"{name} is on the meta device: it has shapes but no values. Pass real tensors."
        )
    for what, t in [*(("inputs", t) for t in input_tensors(x)), ("targets", y)]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            row = int((~torch.isfinite(t.reshape(len(t), -1))).any(1).nonzero()[0])
            raise ValueError(
                f"{name}: the {what} of sample {row} hold NaN or Inf: every loss over the data "
                "would be NaN. Clean the data (torch.nan_to_num, or drop those samples)."
            )
    return x, y


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: Callable, data: Any) -> tuple[float, float | None]:
    """Mean loss over all samples of ``data`` and, for class-index targets, accuracy.

    Runs in eval mode and restores the model's mode."""
    was_training = [m.training for m in model.modules()]
    model.eval()
    device = next(model.parameters()).device
    total, correct, count, classified = 0.0, 0, 0, True
    try:
        for i, (inputs, targets) in enumerate(iter_batches(data)):
            inputs, targets = place(inputs, targets, device)
            outputs, loss = forward(model, loss_fn, inputs, targets, i)
            n = batch_size(targets)
            total += float(loss) * n
            count += n
            if (
                classified
                and isinstance(outputs, torch.Tensor)
                and outputs.dim() == 2
                and targets.dtype in (torch.int64, torch.int32)
                and targets.dim() == 1
            ):
                correct += int((outputs.argmax(1) == targets).sum())
            else:
                classified = False
    finally:
        for m, t in zip(model.modules(), was_training):
            m.training = t
    if count == 0:
        raise ValueError("data is empty: it yielded no samples.")
    return total / count, (correct / count if classified else None)


@torch.no_grad()
def mean_loss(
    model: nn.Module,
    loss_fn: Callable | None,
    batches: Iterable[tuple[Any, torch.Tensor]],
    device: torch.device,
    *,
    summed: bool = False,
) -> float:
    """The sample-weighted mean loss over ``batches`` (``(inputs, targets)`` pairs, as :func:`lossdoctor.data.iter_batches` yields them) at the model's current parameters and modes: forward passes only, the caller sets the mode.

    ``summed``: each batch loss is already the sum over its samples. NaN when there are no samples."""
    total, count = 0.0, 0
    for i, (inputs, targets) in enumerate(batches):
        inputs, targets = place(inputs, targets, device)
        n = batch_size(targets)
        loss = float(batch_loss(model, loss_fn, inputs, targets, i))
        total += loss if summed else loss * n
        count += n
    return total / count if count else math.nan


def rebatch(x: Any, y: torch.Tensor, size: int) -> list[tuple[Any, torch.Tensor]]:
    """Cut ``(x, y)`` into consecutive batches of ``size`` samples (the last may be smaller)."""
    return [take(x, y, slice(i, i + size)) for i in range(0, len(y), size)]


@torch.no_grad()
def evaluate_largest(
    model: nn.Module, loss_fn: Callable, data: Any, *, max_batch: int | None = None
) -> tuple[float, float | None]:
    """Mean loss and accuracy (``None`` unless class-index targets) over all of ``data``, in eval mode, with the largest batch that fits in memory.

    The model's modes are restored."""
    x, y = (
        data
        if isinstance(data, tuple)
        and len(data) == 2
        and isinstance(data[1], torch.Tensor)
        and data[1].dim() > 0
        else as_tensors(data)
    )
    device = next(model.parameters()).device
    key = (str(device), type(model).__name__, sum(p.numel() for p in model.parameters()))
    size = min(max_batch or len(y), _FITS.get(key, len(y)), len(y))
    while True:
        try:
            return evaluate(model, loss_fn, rebatch(x, y, size))
        except RuntimeError as err:
            if not is_out_of_memory(err) or size == 1:
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            size = max(1, size // 2)
            _FITS[key] = size


def num_samples(data: Any, name: str = "data") -> int:
    """The number of samples in ``data``, over all its batches."""
    return sum(batch_size(t) for _, t in iter_batches(data, name))
