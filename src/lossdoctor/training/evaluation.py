"""Evaluation at the largest batch that fits: the data's samples are merged into as few batches
as memory allows (the whole set first, halving on out-of-memory), because evaluation needs no
gradients and one big batch is far faster than many small ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..data import batch_size, iter_batches

# Largest batch found to fit, per (device, model class, parameter count): the search runs once.
_FITS: dict[tuple[str, str, int], int] = {}


def as_tensors(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """All of ``data``'s samples as one ``(inputs, targets)`` pair of tensors (CPU or wherever
    they are). Inputs must be plain tensors (not tuples or dicts) to be merged."""
    xs, ys = [], []
    for i, (inputs, targets) in enumerate(iter_batches(data)):
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"batch {i}: inputs are a {type(inputs).__name__}; merging batches (for the "
                            "batch-size lab) needs inputs that are one tensor.")
        if targets.dim() == 0:
            inputs, targets = inputs.unsqueeze(0), targets.unsqueeze(0)
        xs.append(inputs)
        ys.append(targets)
    if not xs:
        raise ValueError("data is empty: it yielded no samples.")
    return torch.cat(xs), torch.cat(ys)


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def rebatch(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


@torch.no_grad()
def evaluate_largest(model: nn.Module, loss_fn: Callable, data: Any, *,
                     max_batch: int | None = None) -> tuple[float, float | None]:
    """Mean loss and accuracy (``None`` unless class-index targets) over all of ``data``, in eval
    mode, with the largest batch that fits in memory. The model's modes are restored."""
    from .loop import evaluate

    x, y = data if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor) \
        and data[1].dim() > 0 else as_tensors(data)
    device = next(model.parameters()).device
    key = (str(device), type(model).__name__, sum(p.numel() for p in model.parameters()))
    size = min(max_batch or len(y), _FITS.get(key, len(y)), len(y))
    while True:
        try:
            return evaluate(model, loss_fn, rebatch(x, y, size))
        except RuntimeError as err:
            if not _is_oom(err) or size == 1:
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            size = max(1, size // 2)
            _FITS[key] = size


def num_samples(data: Any) -> int:
    return sum(batch_size(t) for _, t in iter_batches(data))
