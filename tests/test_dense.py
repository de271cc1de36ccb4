"""dense_hessian: exact, symmetric, and refuses models too large for it."""

from __future__ import annotations

import pytest
import torch

import lossdoctor as ld
from cases import BY_ID, case_reference

DENSE = [
    "mlp-tanh-mse-pair-eval",
    "mlp-tanh-mse-f64-batches-eval",
    "cnn1d-batches-eval",
    "mlp-relu-ce-module-loader-eval",
]


@pytest.mark.parametrize("case_id", DENSE)
def test_dense_hessian_matches_reference(case_id):
    case = BY_ID[case_id]
    model, loss_fn, data = case.make()
    H = ld.dense_hessian(model, loss_fn, data, mode=case.mode)
    ref = case_reference(case_id)
    assert H.shape == ref.shape
    assert H.dtype == next(model.parameters()).dtype
    assert torch.equal(H, H.T)
    rtol = 1e-12 if H.dtype == torch.float64 else 2e-5
    assert float((H.double() - ref).norm()) <= rtol * float(ref.norm())


def test_dtype_argument_and_size_limit():
    model, loss_fn, data = BY_ID["mlp-tanh-mse-pair-eval"].make()
    assert ld.dense_hessian(model, loss_fn, data, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(
        ValueError, match=r"44 trainable parameters.*matrix-free lossdoctor\.hessian"
    ):
        ld.dense_hessian(model, loss_fn, data, max_params=40)
