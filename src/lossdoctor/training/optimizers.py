"""The optimizers the built-in studies and the command line build by name (one factory for all)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch

OptimizerName = Literal["sgd", "adam", "adamw", "rmsprop", "adagrad"]
OPTIMIZERS: tuple[OptimizerName, ...] = ("sgd", "adam", "adamw", "rmsprop", "adagrad")


def make_optimizer(
    name: OptimizerName | str,
    params: Iterable[Any],
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """The torch optimizer ``name`` over ``params`` (tensors or parameter groups).

    ``momentum`` goes to SGD and RMSprop (Adam-type and Adagrad have none); ``weight_decay`` to all.

    Example:
        >>> from torch import nn
        >>> make_optimizer("adamw", nn.Linear(2, 1).parameters(), lr=1e-3).__class__.__name__
        'AdamW'
    """
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    if name in ("adam", "adamw"):
        return (torch.optim.AdamW if name == "adamw" else torch.optim.Adam)(
            params, lr=lr, weight_decay=weight_decay
        )
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}.")
