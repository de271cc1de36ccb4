"""A plain training loop for built-in studies (users keep their own loops)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._results import ResultMixin
from ..data import batch_loss, iter_batches, place
from ..evaluation import evaluate
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


def training_step(
    model: nn.Module,
    loss_fn: Callable,
    optimizer: torch.optim.Optimizer,
    inputs: Any,
    targets: torch.Tensor,
    device: torch.device,
    index: int = 0,
) -> torch.Tensor:
    """One update on one batch; returns the batch loss (a tensor, not synced to the host)."""
    inputs, targets = place(inputs, targets, device)
    optimizer.zero_grad(set_to_none=True)
    loss = batch_loss(model, loss_fn, inputs, targets, index)
    loss.backward()
    optimizer.step()
    return loss


def train(
    model: nn.Module,
    loss_fn: Callable,
    data: Any,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int = 1,
    test_data: Any = None,
    scheduler: Any = None,
    progress: Progress | None = None,
) -> TrainHistory:
    """Train ``model`` in place for ``epochs`` passes over ``data``; returns its history."""
    device = next(model.parameters()).device
    step_loss: list[float] = []
    tl: list[float] = []
    ta: list[float | None] = []
    vl: list[float | None] = []
    va: list[float | None] = []
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
    return TrainHistory(
        step_loss=step_loss,
        epoch_train_loss=tl,
        epoch_train_accuracy=ta,
        epoch_test_loss=vl,
        epoch_test_accuracy=va,
        steps=len(step_loss),
        epochs=epochs,
    )
