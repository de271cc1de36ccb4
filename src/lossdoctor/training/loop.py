"""A plain training loop for built-in studies (users keep their own loops)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._results import ResultMixin
from ..data import batch_loss, batch_size, forward, iter_batches, place
from ..progress import Progress


@dataclass(frozen=True)
class TrainHistory(ResultMixin):
    """Per-step training loss and per-epoch full-data metrics of one run."""

    step_loss: list[float]
    epoch_train_loss: list[float]
    epoch_train_accuracy: list[float | None] = field(default_factory=list)
    epoch_test_loss: list[float | None] = field(default_factory=list)
    epoch_test_accuracy: list[float | None] = field(default_factory=list)
    steps: int = 0
    epochs: int = 0

    def __str__(self) -> str:
        last = self.epoch_train_loss[-1] if self.epoch_train_loss else float("nan")
        return f"trained {self.epochs} epochs / {self.steps} steps, final train loss {last:.4g}"


def training_step(model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer, inputs: Any,
                  targets: torch.Tensor, device: torch.device, index: int = 0) -> torch.Tensor:
    """One update on one batch; returns the batch loss (a tensor, not synced to the host)."""
    inputs, targets = place(inputs, targets, device)
    optimizer.zero_grad(set_to_none=True)
    loss = batch_loss(model, loss_fn, inputs, targets, index)
    loss.backward()
    optimizer.step()
    return loss


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
            if classified and isinstance(outputs, torch.Tensor) and outputs.dim() == 2 \
                    and targets.dtype in (torch.int64, torch.int32) and targets.dim() == 1:
                correct += int((outputs.argmax(1) == targets).sum())
            else:
                classified = False
    finally:
        for m, t in zip(model.modules(), was_training):
            m.training = t
    if count == 0:
        raise ValueError("data is empty: it yielded no samples.")
    return total / count, (correct / count if classified else None)


def train(model: nn.Module, loss_fn: Callable, data: Any, optimizer: torch.optim.Optimizer, *,
          epochs: int = 1, test_data: Any = None, scheduler: Any = None,
          progress: Progress | None = None) -> TrainHistory:
    """Train ``model`` in place for ``epochs`` passes over ``data``; returns its history."""
    device = next(model.parameters()).device
    step_loss: list[float] = []
    tl, ta, vl, va = [], [], [], []
    num_batches = sum(1 for _ in iter_batches(data))
    total = epochs * num_batches
    for _ in range(epochs):
        model.train()
        for i, (inputs, targets) in enumerate(iter_batches(data)):
            loss = training_step(model, loss_fn, optimizer, inputs, targets, device, i)
            if scheduler is not None:
                scheduler.step()
            step_loss.append(float(loss.detach()))
            if progress is not None:
                progress(len(step_loss), total)
        loss_value, acc = evaluate(model, loss_fn, data)
        tl.append(loss_value)
        ta.append(acc)
        if test_data is not None:
            loss_value, acc = evaluate(model, loss_fn, test_data)
            vl.append(loss_value)
            va.append(acc)
    return TrainHistory(step_loss=step_loss, epoch_train_loss=tl, epoch_train_accuracy=ta,
                        epoch_test_loss=vl, epoch_test_accuracy=va, steps=len(step_loss), epochs=epochs)
