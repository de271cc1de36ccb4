"""The types of lossdoctor's contracts.

What the curvature routines accept, what data is, and the closed sets of words (causes, kinds,
``which``, ``mode``) the API takes and returns.

Example:
    >>> import torch
    >>> from lossdoctor.types import SymmetricOperator
    >>> isinstance(torch.eye(3), SymmetricOperator)  # a square matrix is an operator
    True
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class SymmetricOperator(Protocol):
    """A symmetric linear map on flat vectors, as :func:`lossdoctor.eigenpairs`, :func:`lossdoctor.trace` and :func:`lossdoctor.spectral_density` use it: a square ``shape`` ``(n, n)`` and ``op @ X`` for a vector ``(n,)`` or a block ``(n, k)``.

    A :class:`lossdoctor.HessianOperator` is one, and so is a square symmetric tensor."""

    @property
    def shape(self) -> tuple[int, ...]:
        """``(n, n)``."""
        ...

    def __matmul__(self, other: torch.Tensor) -> torch.Tensor: ...


# What the curvature routines take: an operator, or a square symmetric matrix (tensor or array).
OperatorLike: TypeAlias = SymmetricOperator | torch.Tensor | np.ndarray

# A data set, in any of the forms lossdoctor.data reads and checks at run time: a DataLoader, a
# Dataset, a list of (inputs, targets) batches, one (inputs, targets) batch, dict batches (HF), or
# lossdoctor.Batches. These forms share no static type, so the alias names the contract only.
Data: TypeAlias = Any

# A per-step loss history: a sequence of losses, a dict with "losses" (and "grad_norms",
# "grad_cosines"), a TrainHistory or a Monitor record.
History: TypeAlias = Any

Which = Literal["largest", "smallest", "both", "largest_magnitude"]
Mode = Literal["eval", "train"]
Reduction = Literal["mean", "sum"]
TraceMethod = Literal["hutch++", "hutchinson"]
Kind = Literal[
    "local_minimum", "local_maximum", "saddle_point", "degenerate", "not_critical", "undetermined"
]
Cause = Literal[
    "diverging",
    "oscillation",
    "progressing",
    "momentum_too_high",
    "dead_units",
    "weight_decay",
    "vanishing_gradients",
    "saddle_point",
    "degenerate",
    "converged",
    "gradient_noise",
    "flat_plateau",
    "lr_too_small",
    "ill_conditioned",
    "undetermined",
]
