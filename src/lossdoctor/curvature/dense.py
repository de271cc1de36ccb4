"""The full Hessian as a dense matrix, for models small enough to hold it.

Ground truth for tests and exact answers (every eigenvalue, the exact fraction of positive ones)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._checks import check_arguments
from ..types import Data, Mode, Reduction
from .operator import LossFn, hessian

DEFAULT_MAX_PARAMS = 5000


def dense_hessian(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    *,
    mode: Mode | None = None,
    max_params: int = DEFAULT_MAX_PARAMS,
    dtype: torch.dtype | None = None,
    reduction: Reduction | None = None,
    params: Any = None,
) -> torch.Tensor:
    """The exact ``(n, n)`` Hessian of the mean loss over ``data`` (symmetrized).

    Built column block by column block from Hessian-vector products, so it costs ``n`` products.
    Ground truth for small models; use :func:`lossdoctor.hessian` with
    :func:`lossdoctor.eigenpairs` for large ones.

    Args:
        model: any ``nn.Module``; its trainable parameters span the matrix.
        loss_fn: the loss, as for :func:`lossdoctor.hessian`.
        data: a DataLoader, a list of batches or one batch, as for :func:`lossdoctor.hessian`.
        mode: ``"eval"`` (default) or ``"train"``.
        max_params: refuse models with more trainable parameters than this.
        dtype: the dtype of the returned matrix (default: the parameters').
        reduction: ``"mean"``/``"sum"`` for a loss function without a ``.reduction``
            attribute, as for :func:`lossdoctor.hessian`.
        params: a subset of the parameters (tensors, names or glob patterns, modules; see
            :func:`lossdoctor.hessian`): the principal submatrix on them, in the model's order.

    Returns:
        The Hessian as an ``(n, n)`` tensor, ``n`` the number of trainable parameters.

    Raises:
        ValueError: the model has more than ``max_params`` trainable parameters.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo.lecture import lecture_saddle
        >>> p = lecture_saddle()  # L = (1 - w1*w2)^2 at (0, 0)
        >>> ld.dense_hessian(p.model, p.loss_fn, p.train_data)
        tensor([[ 0., -2.],
                [-2.,  0.]])
    """
    check_arguments(model=model, loss_fn=loss_fn, mode=mode, max_params=max_params, dtype=dtype)
    op = hessian(model, loss_fn, data, mode=mode, max_block=64, reduction=reduction, params=params)
    n = op.num_params
    if n > max_params:
        raise ValueError(
            f"the model has {n} trainable parameters; a dense Hessian would need "
            f"{n * n * 8 / 2**30:.1f} GiB and {n} Hessian-vector products. Above "
            f"max_params={max_params} use the matrix-free lossdoctor.hessian(...) with "
            "lossdoctor.eigenpairs / trace / spectral_density, or raise max_params."
        )
    eye = torch.eye(n, dtype=op.dtype, device=op.device)
    H = op @ eye
    H = 0.5 * (H + H.T)
    return H if dtype is None else H.to(dtype)
