"""spectral_density (stochastic Lanczos quadrature) against exact spectra."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lossdoctor as ld
from cases import BY_ID, case_reference
from test_eigen import known_spectrum


def test_quadrature_of_a_model():
    case_id = "mlp-relu-ce-functional-batches-eval"
    model, loss_fn, data = BY_ID[case_id].make()
    lam = torch.linalg.eigvalsh(case_reference(case_id)).numpy()
    d = ld.spectral_density(
        ld.hessian(model, loss_fn, data), num_probes=6, lanczos_steps=25, seed=0
    )
    assert d.num_probes == 6 and len(d.nodes) == len(d.weights) == 6
    assert d.matvecs == 6 * 25
    width = lam[-1] - lam[0]
    for nodes, weights in zip(d.nodes, d.weights, strict=True):
        assert abs(weights.sum() - 1.0) < 1e-8 and np.all(weights >= 0)
        # Ritz values lie inside the spectrum (up to float32 products)
        assert nodes.min() >= lam[0] - 1e-4 * width and nodes.max() <= lam[-1] + 1e-4 * width
    # extreme Ritz values converge to the extreme eigenvalues
    lo, hi = d.eigenvalue_range
    assert abs(hi - lam[-1]) < 2e-2 * width and abs(lo - lam[0]) < 2e-2 * width
    exact_negative = float((lam < -d.zero_tol).mean())
    assert abs(d.negative_fraction - exact_negative) <= 3 * d.negative_fraction_error + 0.05
    integral = (
        np.trapezoid(d.density, d.grid) if hasattr(np, "trapezoid") else np.trapz(d.density, d.grid)
    )
    assert abs(integral - 1.0) < 1e-3


def test_negative_fraction_of_known_spectrum():
    lam = list(np.linspace(-2.0, -0.5, 30)) + list(np.linspace(0.5, 4.0, 90))  # 25% negative
    A = known_spectrum(lam)
    d = ld.spectral_density(A, num_probes=16, lanczos_steps=30, seed=1)
    assert abs(d.negative_fraction - 0.25) <= 3 * d.negative_fraction_error + 0.02
    assert d.negative_fraction_error < 0.1


def test_exhausted_krylov_space_gives_exact_eigenvalues():
    A = known_spectrum([-1.0, 0.5, 2.0, 3.0])
    d = ld.spectral_density(A, num_probes=2, lanczos_steps=50)
    assert d.lanczos_steps == 4
    for nodes, weights in zip(d.nodes, d.weights, strict=True):
        np.testing.assert_allclose(np.sort(nodes), [-1.0, 0.5, 2.0, 3.0], atol=1e-10)
        assert abs(weights.sum() - 1.0) < 1e-12
    assert d.negative_fraction > 0 and "negative fraction" in str(d)
    assert set(d.to_dict()) >= {"grid", "density", "negative_fraction", "seed"}


# --- issue 18: the quadrature's bias in the error bar --------------------------------------------


def test_negative_fraction_error_covers_the_quadrature_bias():
    """A continuum through zero plus a zero cluster (rank deficiency): with few Lanczos steps the
    probes agree with each other (small spread) on a biased count; the bracket of each probe's
    quadrature puts the truth back inside +/- 3 errors, with no slack added by the test."""
    lam = list(np.linspace(-1.0, 3.0, 400)) + [0.0] * 150
    A = known_spectrum(lam)
    truth_cache = {}
    for seed in range(4):
        d = ld.spectral_density(A, num_probes=8, lanczos_steps=30, seed=seed)
        if d.zero_tol not in truth_cache:
            truth_cache[d.zero_tol] = float((np.array(lam) < -d.zero_tol).mean())
        truth = truth_cache[d.zero_tol]
        assert abs(d.negative_fraction - truth) <= 3 * d.negative_fraction_error, (seed, d, truth)
        assert d.negative_fraction_bias > 0 and d.residuals is not None
        assert "bias" in str(d)


def test_fraction_bracket_is_exact_when_the_nodes_are_eigenvalues():
    from lossdoctor.curvature.density import fraction_below

    nodes = [np.array([-1.0, 0.5, 2.0])] * 3
    weights = [np.array([0.2, 0.3, 0.5])] * 3
    exact = [np.zeros(3)] * 3
    est, err, bias = fraction_below(nodes, weights, exact, -0.1)
    assert est == pytest.approx(0.2) and bias == 0.0 and err == pytest.approx(0.0, abs=1e-15)
    loose = [np.array([1.0, 1.0, 1.0])] * 3  # residuals reach across the threshold
    est, err, bias = fraction_below(nodes, weights, loose, -0.1)
    assert (
        est == pytest.approx(0.25)
        and bias == pytest.approx(0.25)
        and err == pytest.approx(0.25 / 3)
    )
