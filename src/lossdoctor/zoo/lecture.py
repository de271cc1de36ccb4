"""The lecture's toy problems, in closed form."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..problem import Problem


class ProductNet(nn.Module):
    """y = w1 * w2 * x: the lecture's two-parameter network."""

    def __init__(self, w1: float = 0.0, w2: float = 0.0):
        super().__init__()
        self.w1 = nn.Parameter(torch.tensor(float(w1)))
        self.w2 = nn.Parameter(torch.tensor(float(w2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w1 * self.w2 * x


def lecture_saddle(w1: float = 0.0, w2: float = 0.0) -> Problem:
    """L(w1, w2) = (1 - w1*w2)^2 from one sample x = 1, target 1, MSE. At (0, 0): gradient 0,
    Hessian [[0, -2], [-2, 0]], eigenvalues +2 and -2: a saddle point."""
    x = torch.ones(1, 1)
    y = torch.ones(1, 1)
    return Problem(model=ProductNet(w1, w2), loss_fn=F.mse_loss, train_data=(x, y), name="lecture-saddle",
                   description="y = w1*w2*x, x = 1, target 1, MSE: L = (1 - w1*w2)^2")
