"""The full Hessian as a dense matrix, for models small enough to hold it: ground truth for
tests and exact answers (every eigenvalue, the exact fraction of positive ones)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._checks import check_arguments
from ..types import Data, Mode, Reduction
from .operator import LossFn, hessian

DEFAULT_MAX_PARAMS = 5000


def dense_hessian(model: nn.Module, loss_fn: LossFn, data: Data, *, mode: Mode = "eval",
                  max_params: int = DEFAULT_MAX_PARAMS, dtype: torch.dtype | None = None,
                  reduction: Reduction | None = None, params: Any = None) -> torch.Tensor:
    """The exact ``(n, n)`` Hessian of the mean loss over ``data`` (symmetrized).

    Built column block by column block from Hessian-vector products, so it costs ``n`` products.
    Refuses models with more than ``max_params`` trainable parameters: use
    :func:`lossdoctor.hessian` with :func:`lossdoctor.eigenpairs` there instead.
    ``reduction``: ``"mean"``/``"sum"`` for a loss function without a ``.reduction``
    attribute, as for :func:`lossdoctor.hessian`. ``params``: a subset of the parameters
    (tensors, names or glob patterns, modules; see :func:`lossdoctor.hessian`): the principal
    submatrix on them, in the model's parameter order.
    """
    check_arguments(model=model, loss_fn=loss_fn, mode=mode, max_params=max_params, dtype=dtype)
    op = hessian(model, loss_fn, data, mode=mode, max_block=64, reduction=reduction, params=params)
    n = op.num_params
    if n > max_params:
        raise ValueError(f"the model has {n} trainable parameters; a dense Hessian would need "
                         f"{n * n * 8 / 2**30:.1f} GiB and {n} Hessian-vector products. Above "
                         f"max_params={max_params} use the matrix-free lossdoctor.hessian(...) with "
                         "lossdoctor.eigenpairs / trace / spectral_density, or raise max_params.")
    eye = torch.eye(n, dtype=op.dtype, device=op.device)
    H = op @ eye
    H = 0.5 * (H + H.T)
    return H if dtype is None else H.to(dtype)
