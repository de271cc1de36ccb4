"""trace (Hutchinson, Hutch++) against the exact trace of dense Hessians and known matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lossdoctor as ld
from cases import BY_ID, case_reference
from test_eigen import known_spectrum


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_of_a_model_within_standard_errors(method):
    case_id = "cnn1d-batches-eval"
    model, loss_fn, data = BY_ID[case_id].make()
    exact = float(torch.trace(case_reference(case_id)))
    result = ld.trace(ld.hessian(model, loss_fn, data), matvecs=30, method=method, seed=0)
    assert result.matvecs == 30 and result.method == method
    assert 0 < result.standard_error < np.inf
    assert abs(result.estimate - exact) <= 4 * result.standard_error


def test_hutch_plus_plus_is_exact_with_enough_products():
    """With a sketch of at least n columns the dominant subspace is the whole space."""
    case_id = "mlp-tanh-mse-batches-eval"
    model, loss_fn, data = BY_ID[case_id].make()
    op = ld.hessian(model, loss_fn, data)
    exact = float(torch.trace(case_reference(case_id)))
    result = ld.trace(op, matvecs=3 * op.num_params, method="hutch++")
    assert result.estimate == pytest.approx(exact, rel=1e-5, abs=1e-6)
    assert result.standard_error <= 1e-5 * abs(exact) + 1e-6


def test_hutch_plus_plus_exact_on_low_rank_matrix():
    n, rank = 120, 5
    U = torch.linalg.qr(torch.randn(n, rank, dtype=torch.float64))[0]
    A = U @ torch.diag(torch.tensor([9.0, 5.0, 3.0, -2.0, 1.0], dtype=torch.float64)) @ U.T
    result = ld.trace(A, matvecs=18, method="hutch++")  # sketch of 6 >= rank
    assert result.estimate == pytest.approx(16.0, abs=1e-9)


def test_hutchinson_error_shrinks_and_matches_known_variance():
    A = known_spectrum([float(x) for x in np.linspace(-1.0, 3.0, 80)])
    exact = float(torch.trace(A))
    small = ld.trace(A, matvecs=20, method="hutchinson", seed=1)
    large = ld.trace(A, matvecs=320, method="hutchinson", seed=1)
    # Rademacher variance per probe: 2 * sum of squared off-diagonal entries
    sd = float(torch.sqrt(2 * ((A**2).sum() - (torch.diagonal(A) ** 2).sum())))
    assert large.standard_error == pytest.approx(sd / np.sqrt(320), rel=0.25)
    assert large.standard_error < small.standard_error
    assert abs(large.estimate - exact) <= 4 * large.standard_error


def test_seeds_reproducible():
    A = known_spectrum([float(x) for x in np.linspace(-1.0, 3.0, 60)])
    a = ld.trace(A, matvecs=12, seed=5)
    b = ld.trace(A, matvecs=12, seed=5)
    c = ld.trace(A, matvecs=12, seed=6)
    assert a.estimate == b.estimate and a.standard_error == b.standard_error
    assert c.estimate != a.estimate
    assert a.to_dict()["seed"] == 5 and "trace" in str(a)


def test_bad_arguments():
    A = torch.eye(5, dtype=torch.float64)
    with pytest.raises(ValueError, match="method"):
        ld.trace(A, method="exact")
    with pytest.raises(ValueError, match="at least 3 matvecs"):
        ld.trace(A, matvecs=2, method="hutch++")
