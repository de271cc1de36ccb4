"""The lecture's toy problems, in closed form."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..problem import Problem


class ProductNet(nn.Module):
    """y = w1 * w2 * x: the lecture's two-parameter network.

    Args:
        w1: the first weight's starting value.
        w2: the second weight's.

    Examples:
        >>> import torch
        >>> from lossdoctor.zoo.lecture import ProductNet
        >>> ProductNet(2.0, 3.0)(torch.ones(1))
        tensor([6.], grad_fn=<MulBackward0>)
    """

    def __init__(self, w1: float = 0.0, w2: float = 0.0):
        super().__init__()
        self.w1 = nn.Parameter(torch.tensor(float(w1)))
        self.w2 = nn.Parameter(torch.tensor(float(w2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``w1 * w2 * x``."""
        return self.w1 * self.w2 * x


def lecture_saddle(w1: float = 0.0, w2: float = 0.0) -> Problem:
    """The lecture's toy problem L(w1, w2) = (1 - w1*w2)^2: one sample x = 1, target 1, MSE.

    At (0, 0): gradient 0, Hessian [[0, -2], [-2, 0]], eigenvalues +2 and -2: a saddle point.
    Every point of the hyperbola w1*w2 = 1 is a (degenerate) minimum.

    Args:
        w1: the first weight's value.
        w2: the second weight's.

    Returns:
        The problem (a :class:`ProductNet`, ``F.mse_loss`` and the one sample).

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo.lecture import lecture_saddle
        >>> p = lecture_saddle(0.5, 0.5)
        >>> ld.hessian(p.model, p.loss_fn, p.train_data).gradient()[0]  # (1 - 0.25)^2
        0.5625
    """
    x = torch.ones(1, 1)
    y = torch.ones(1, 1)
    return Problem(
        model=ProductNet(w1, w2),
        loss_fn=F.mse_loss,
        train_data=(x, y),
        name="lecture-saddle",
        description="y = w1*w2*x, x = 1, target 1, MSE: L = (1 - w1*w2)^2",
    )
