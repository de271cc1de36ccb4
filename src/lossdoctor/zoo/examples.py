"""The small problems the docstring examples share: one owner for their setup."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from ..problem import Problem


class CrawlingRun(NamedTuple):
    """A model, its loss, data and optimizer, and the losses of the steps already taken.

    Attributes:
        model: a ``torch.nn.Linear(3, 1)``.
        loss_fn: ``F.mse_loss``.
        data: ``(x, y)``: 64 samples, one full batch.
        optimizer: plain SGD.
        losses: the training loss of each step taken so far (before its update).
    """

    model: nn.Linear
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    data: tuple[torch.Tensor, torch.Tensor]
    optimizer: torch.optim.SGD
    losses: list[float]


def crawling_regression(*, steps: int = 0, lr: float = 1e-4, seed: int = 0) -> CrawlingRun:
    """A linear regression whose loss crawls: the learning rate is far too small.

    The targets are exact, ``y = x @ [0.1, 0.2, 0.3]``, so the loss can reach zero and the
    doctor's verdict is ``"lr_too_small"`` (the stability edge is at lr 0.7). The data and the
    model's initial weights are drawn from ``seed`` in a forked RNG: torch's global RNG is left as
    it was.

    Args:
        steps: full-batch SGD steps to take before returning (their losses are ``.losses``).
        lr: the optimizer's learning rate.
        seed: the seed of the data and the initial weights.

    Returns:
        A :class:`CrawlingRun` ``(model, loss_fn, data, optimizer, losses)``.

    Raises:
        ValueError: a negative ``steps``.

    Examples:
        >>> from lossdoctor.zoo import crawling_regression
        >>> model, loss_fn, (x, y), opt, losses = crawling_regression(steps=80)
        >>> x.shape, y.shape, opt.param_groups[0]["lr"]
        (torch.Size([64, 3]), torch.Size([64, 1]), 0.0001)
        >>> len(losses), losses[-1] < losses[0]
        (80, True)
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x = torch.randn(64, 3)
        y = x @ torch.tensor([[0.1], [0.2], [0.3]])
        model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return CrawlingRun(model, F.mse_loss, (x, y), optimizer, losses)


def tiny_classification(*, seed: int = 0) -> Problem:
    """A two-class problem small enough for any example: 64 samples of 4 features, a linear model.

    The class is the sign of the first feature. The data and the model's initial weights are
    drawn from ``seed`` in a forked RNG: torch's global RNG is left as it was.

    Args:
        seed: the seed of the data and the initial weights.

    Returns:
        The problem: ``torch.nn.Linear(4, 2)``, ``F.cross_entropy`` and ``(x, y)`` as its
        training data, named ``"tiny-classification"``.

    Examples:
        >>> from lossdoctor.zoo import tiny_classification
        >>> p = tiny_classification()
        >>> p.model, p.train_data[0].shape, p.train_data[1][:6].tolist()
        (Linear(in_features=4, out_features=2, bias=True), torch.Size([64, 4]), [0, 1, 1, 1, 0, 1])
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x = torch.randn(64, 4)
        y = (x[:, 0] > 0).long()
        model = nn.Linear(4, 2)
    return Problem(model, F.cross_entropy, (x, y), name="tiny-classification")


def noisy_regression(*, seed: int = 0) -> Problem:
    """A linear regression with label noise: 256 samples of 4 features, a linear model, MSE.

    ``y = x @ [1, -2, 0.5, 0] + 0.5 * noise``: the gradient noise and the curvature are known in
    closed form (the Hessian is ``2 x^T x / n``). Drawn from ``seed`` in a forked RNG: torch's
    global RNG is left as it was.

    Args:
        seed: the seed of the data and the initial weights.

    Returns:
        The problem: ``torch.nn.Linear(4, 1)``, ``F.mse_loss`` and ``(x, y)``, named
        ``"noisy-regression"``.

    Examples:
        >>> from lossdoctor.zoo import noisy_regression
        >>> p = noisy_regression()
        >>> p.model, p.train_data[0].shape, p.train_data[1].shape
        (Linear(in_features=4, out_features=1, bias=True), torch.Size([256, 4]), torch.Size([256, 1]))
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x = torch.randn(256, 4)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) + 0.5 * torch.randn(256, 1)
        model = nn.Linear(4, 1)
    return Problem(model, F.mse_loss, (x, y), name="noisy-regression")


def tanh_classifier(*, seed: int = 0) -> Problem:
    """A two-layer tanh network on 32 samples of 4 features, 3 random classes, cross-entropy.

    Two weight blocks of different curvature, for the per-layer examples. Drawn from ``seed`` in a
    forked RNG: torch's global RNG is left as it was.

    Args:
        seed: the seed of the initial weights and the data.

    Returns:
        The problem: ``Sequential(Linear(4, 8), Tanh(), Linear(8, 3))``, ``F.cross_entropy`` and
        ``(x, y)``, named ``"tanh-classifier"``.

    Examples:
        >>> from lossdoctor.zoo import tanh_classifier
        >>> p = tanh_classifier()
        >>> [name for name, _ in p.model.named_children()], p.train_data[1].unique().tolist()
        (['0', '1', '2'], [0, 1, 2])
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
    return Problem(model, F.cross_entropy, data, name="tanh-classifier")
