"""eigenpairs against torch.linalg.eigh of dense Hessians, closed-form toys and matrices with
a known spectrum."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import lossdoctor as ld
from cases import BY_ID, case_reference

# models not tuned for, each end of the spectrum somewhere (every combination would be slow)
MODEL_ENDS = [
    ("mlp-tanh-mse-batches-eval", "largest"),
    ("mlp-tanh-mse-batches-eval", "smallest"),
    ("mlp-tanh-mse-batches-eval", "both"),
    ("mlp-relu-ce-functional-batches-eval", "both"),
    ("cnn2d-loader-eval", "largest"),
    ("batchnorm-cnn-batches-eval", "both"),
    ("gru-batches-eval", "smallest"),
    ("transformer-tied-batches-eval", "both"),
]


def expected_ends(H: torch.Tensor, which: str, k: int) -> np.ndarray:
    lam = torch.linalg.eigvalsh(H).numpy()[::-1]  # descending
    if which == "largest":
        return lam[:k]
    if which == "smallest":
        return lam[-k:]
    return np.concatenate([lam[:k], lam[-k:]])


def check_pairs(result: ld.EigenResult, H: torch.Tensor, expected: np.ndarray, rtol: float) -> None:
    scale = float(torch.linalg.matrix_norm(H, ord=2))
    assert result.eigenvalues.shape == expected.shape
    assert np.all(np.diff(result.eigenvalues) <= 0)  # sorted, decreasing
    np.testing.assert_allclose(result.eigenvalues, expected, rtol=0, atol=rtol * scale)
    V = result.eigenvectors
    assert V.dtype == torch.float64 and V.shape == (H.shape[0], len(expected))
    np.testing.assert_allclose(V.norm(dim=0).numpy(), 1.0, atol=1e-8)
    residual = (H @ V - V * torch.as_tensor(result.eigenvalues)).norm(dim=0).numpy()
    assert np.all(residual <= 10 * math.sqrt(rtol) * scale), residual


@pytest.mark.parametrize(("case_id", "which"), MODEL_ENDS)
def test_eigenvalues_of_small_models(case_id, which):
    case = BY_ID[case_id]
    model, loss_fn, data = case.make()
    op = ld.hessian(model, loss_fn, data, mode=case.mode)
    H = case_reference(case_id)
    k = 2 if which == "both" else 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converged: no warning
        result = ld.eigenpairs(op, k=k, which=which, tol=1e-6)
    assert result.all_converged and result.converged.dtype == bool
    assert result.which == which and result.num_params == op.num_params
    assert 0 < result.matvecs <= op.num_params + 5
    # float32 products limit the attainable accuracy to ~1e-6 of ||H||
    check_pairs(result, H, expected_ends(H, which, k), 2e-5)
    assert np.all(result.error_bounds >= 0)


def test_eigenvectors_match_up_to_sign():
    case_id = "mlp-tanh-mse-f64-batches-eval"
    model, loss_fn, data = BY_ID[case_id].make()
    H = case_reference(case_id)
    lam, U = torch.linalg.eigh(H)
    result = ld.eigenpairs(ld.hessian(model, loss_fn, data), k=1, which="both", tol=1e-10)
    assert result.all_converged
    np.testing.assert_allclose(result.eigenvalues, [lam[-1], lam[0]], rtol=1e-9)
    for got, want in zip(result.eigenvectors.T, [U[:, -1], U[:, 0]], strict=True):
        assert abs(float(got @ want)) == pytest.approx(1.0, abs=1e-8)


def test_lecture_saddle():
    problem = ld.load_problem("lecture-saddle")
    op = ld.hessian(problem.model, problem.loss_fn, problem.train_data)
    assert torch.allclose(
        ld.dense_hessian(problem.model, problem.loss_fn, problem.train_data),
        torch.tensor([[0.0, -2.0], [-2.0, 0.0]]),
    )
    result = ld.eigenpairs(op, k=1, which="both")
    assert result.all_converged
    np.testing.assert_allclose(result.eigenvalues, [2.0, -2.0], atol=1e-6)
    escape = result.eigenvectors[:, 1]
    assert abs(float(escape @ torch.tensor([1.0, 1.0], dtype=torch.float64))) / math.sqrt(
        2
    ) == pytest.approx(1.0, abs=1e-6)


def known_spectrum(eigenvalues: list[float], dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    n = len(eigenvalues)
    Q, _ = torch.linalg.qr(
        torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    A = Q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ Q.T
    return (0.5 * (A + A.T)).to(dtype)


SPECTRUM = [6.0, 6.0, 6.0, 2.5] + [0.0] * 10 + list(np.linspace(-1.0, 2.0, 140)) + [-3.0, -3.0]


@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
def test_dense_matrix_with_repeated_and_zero_eigenvalues(which):
    A = known_spectrum(SPECTRUM)
    k = 4
    result = ld.eigenpairs(A, k=k, which=which, tol=1e-8)
    assert result.all_converged
    check_pairs(result, A, expected_ends(A, which, k), 1e-7)


def test_float32_dense_matrix():
    A = known_spectrum(SPECTRUM, dtype=torch.float32)
    result = ld.eigenpairs(A, k=2, which="both", tol=1e-5)
    np.testing.assert_allclose(result.eigenvalues, [6.0, 6.0, -3.0, -3.0], atol=1e-4)


def test_zero_matrix_and_rank_one():
    n = 20
    zero = ld.eigenpairs(torch.zeros(n, n, dtype=torch.float64), k=2, which="both")
    np.testing.assert_allclose(zero.eigenvalues, 0.0, atol=1e-12)
    u = torch.randn(n, dtype=torch.float64)
    u /= u.norm()
    one = ld.eigenpairs(3.0 * torch.outer(u, u), k=2, which="largest")
    np.testing.assert_allclose(one.eigenvalues, [3.0, 0.0], atol=1e-10)
    assert abs(float(one.eigenvectors[:, 0] @ u)) == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("which", ["largest", "both"])
def test_small_basis_restarts_many_times_to_the_same_answer(which):
    # ncv barely above the wanted pairs: many thick restarts, each rewriting the kept basis.
    # (Distinct extreme eigenvalues: one start vector cannot see a repeated one's multiplicity
    # once its basis is this small, a limit single-vector Lanczos shares with ARPACK.)
    A = known_spectrum(
        [6.0, 5.5, 5.0, 2.5] + [0.0] * 10 + list(np.linspace(-1.0, 2.0, 140)) + [-3.0, -2.9]
    )
    result = ld.eigenpairs(A, k=2, which=which, tol=1e-8, ncv=8, max_matvecs=3000)
    assert result.all_converged and result.matvecs > 8  # more products than the basis holds
    check_pairs(result, A, expected_ends(A, which, 2), 1e-7)


def test_invariant_subspaces_at_the_restart_size():
    # Rank 2: the Krylov space is invariant after two products, again and again; with the
    # smallest ncv the fresh directions arrive when the basis is full.
    n = 30
    U, _ = torch.linalg.qr(
        torch.randn(n, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    )
    A = U @ torch.diag(torch.tensor([4.0, -1.5], dtype=torch.float64)) @ U.T
    result = ld.eigenpairs(A, k=3, which="largest", tol=1e-10, ncv=5)
    assert result.all_converged and result.eigenvalues[0] == pytest.approx(4.0, abs=1e-9)
    # Every pair is an exact eigenpair (the multiplicity of 0 is invisible to one start vector).
    V, lam = result.eigenvectors, torch.as_tensor(result.eigenvalues)
    assert float((A @ V - V * lam).norm()) < 1e-9
    assert all(min(abs(x - e) for e in (4.0, 0.0, -1.5)) < 1e-9 for x in result.eigenvalues)


def test_unconverged_pairs_are_flagged_and_warned():
    # clustered eigenvalues at the top of a large spectrum: 6 products cannot resolve them
    lam = list(np.linspace(0.0, 1.0, 300))
    A = known_spectrum(lam)
    with pytest.warns(RuntimeWarning, match="max_matvecs"):
        result = ld.eigenpairs(A, k=3, which="largest", tol=1e-10, max_matvecs=6)
    assert not result.all_converged and not result.converged.any()
    assert result.matvecs == 6  # the true residuals come from the run's own products
    assert "NO" in str(result)
    # residual norms are true residuals, and each Ritz value is within its residual of some
    # eigenvalue (Krylov-Weinstein), converged or not
    Y = result.eigenvectors
    true_residuals = (A @ Y - Y * torch.as_tensor(result.eigenvalues)).norm(dim=0).numpy()
    np.testing.assert_allclose(result.residual_norms, true_residuals, rtol=1e-6, atol=1e-12)
    nearest = np.abs(np.array(lam)[None, :] - result.eigenvalues[:, None]).min(axis=1)
    assert np.all(nearest <= result.residual_norms + 1e-12)


def test_seed_reproducible_and_result_serializable():
    A = known_spectrum(SPECTRUM)
    a = ld.eigenpairs(A, k=2, which="both", seed=3)
    b = ld.eigenpairs(A, k=2, which="both", seed=3)
    assert np.array_equal(a.eigenvalues, b.eigenvalues) and a.matvecs == b.matvecs
    d = a.to_dict()
    assert "eigenvectors" not in d and d["which"] == "both" and len(d["eigenvalues"]) == 4
    assert "eigenvalue" in str(a)


# --- issue 18: repeated eigenvalues, true residuals, Ctrl-C in a restart -----------------------

REPEATED = [5.0, 5.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.25]


@pytest.mark.parametrize("n_bulk", [0, 200])
def test_repeated_eigenvalue_found_with_its_multiplicity(n_bulk):
    """eigenpairs(k=3) on {5, 5, 5, 3, 2, ...} was [5, 3, 2], all flagged converged."""
    spectrum = REPEATED + list(np.linspace(-1.0, 0.2, n_bulk))
    A = known_spectrum(spectrum)
    exact = np.sort(np.array(spectrum))[::-1]
    for which, expected in [
        ("largest", exact[:3]),
        ("largest_magnitude", exact[:3]),
        ("both", np.concatenate([exact[:3], exact[-3:]])),
    ]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = ld.eigenpairs(A, k=3, which=which, tol=1e-8)
        assert result.all_converged
        np.testing.assert_allclose(result.eigenvalues, expected, atol=1e-7)
        assert np.all(np.abs(result.eigenvalues - expected) <= 3 * result.error_bounds + 1e-15)
        V = result.eigenvectors
        assert torch.allclose(V.T @ V, torch.eye(V.shape[1], dtype=torch.float64), atol=1e-8)


def test_repeated_smallest_and_magnitude_ends():
    spectrum = [4.0, 1.0] + list(np.linspace(-0.5, 0.5, 100)) + [-6.0, -6.0]
    A = known_spectrum(spectrum)
    r = ld.eigenpairs(A, k=2, which="smallest", tol=1e-8)
    np.testing.assert_allclose(r.eigenvalues, [-6.0, -6.0], atol=1e-7)
    r = ld.eigenpairs(A, k=3, which="largest_magnitude", tol=1e-8)
    np.testing.assert_allclose(r.eigenvalues, [4.0, -6.0, -6.0], atol=1e-7)  # sorted by value
    assert r.which == "largest_magnitude" and r.all_converged


def test_last_layer_only_model_has_exactly_repeated_eigenvalues():
    """hessian-eigenthings-style: only the last layer of an MLP trainable under MSE; the Hessian
    is I_3 (x) (A^T A / n): every eigenvalue three times. Was [2.285, 1.183, 0.561] converged."""
    from peer_cases import last_layer

    model, loss_fn, data = last_layer()
    lam = torch.linalg.eigvalsh(ld.dense_hessian(model, loss_fn, data).double()).numpy()[::-1]
    assert lam[0] - lam[2] < 1e-12 * lam[0] and lam[2] - lam[3] > 0.1 * lam[0]  # the test can tell
    op = ld.hessian(model, loss_fn, data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = ld.eigenpairs(op, k=4, tol=1e-8)
    assert result.all_converged
    err = np.abs(result.eigenvalues - lam[:4])
    assert np.all(err <= 3 * result.error_bounds), (err, result.error_bounds)


def test_pairs_are_not_flagged_converged_while_the_search_for_copies_is_unfinished():
    A = known_spectrum(REPEATED + list(np.linspace(-1.0, 0.2, 200)))
    full = ld.eigenpairs(A, k=3, tol=1e-8)
    assert full.all_converged
    cut_at = None
    for budget in range(8, full.matvecs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = ld.eigenpairs(A, k=3, tol=1e-8, max_matvecs=budget)
        if not np.allclose(r.eigenvalues, [5.0, 5.0, 5.0], atol=1e-6):
            assert not r.converged.all(), (budget, r.eigenvalues, r.converged)
            cut_at = budget
    assert cut_at is not None  # some budgets stop the search before all copies are in


def test_residuals_are_true_residuals_in_float32():
    """Converged pairs of a float32 model: the Lanczos estimate of the residual is ~0, the true
    ||Hv - lambda v|| is the float32 rounding (it was printed as 0.0e+00)."""
    from cases import BY_ID, case_reference

    case_id = "mlp-tanh-mse-batches-eval"
    model, loss_fn, data = BY_ID[case_id].make()
    op = ld.hessian(model, loss_fn, data)
    result = ld.eigenpairs(op, k=3, tol=1e-6)
    H = case_reference(case_id)
    V = result.eigenvectors
    true = (H @ V - V * torch.as_tensor(result.eigenvalues)).norm(dim=0).numpy()
    assert np.all(result.residual_norms > 0)
    np.testing.assert_allclose(result.residual_norms, true, rtol=0.5, atol=1e-6 * float(H.norm()))
    lam = torch.linalg.eigvalsh(H).numpy()[::-1][:3]
    assert np.all(np.abs(result.eigenvalues - lam) <= 3 * result.error_bounds)


class _InterruptAt:
    """A dense operator raising KeyboardInterrupt at product ``stop`` (column count)."""

    def __init__(self, A: torch.Tensor, stop: int) -> None:
        self.A, self.shape, self.stop, self.done = A, A.shape, stop, 0

    def __matmul__(self, X: torch.Tensor) -> torch.Tensor:
        self.done += X.shape[1]
        if self.done >= self.stop:
            raise KeyboardInterrupt
        return self.A @ X


def test_ctrl_c_anywhere_returns_a_consistent_flagged_result():
    """Small ncv: many thick restarts, then the search for copies. A Ctrl-C at any product gives
    a flagged partial result, never a crash, and never a pair flagged converged whose cluster
    was not checked."""
    A = known_spectrum(REPEATED + list(np.linspace(-1.0, 0.2, 60)))
    full = ld.eigenpairs(A, k=3, tol=1e-10, ncv=8)
    for stop in range(2, full.matvecs + 1, 3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = ld.eigenpairs(_InterruptAt(A, stop), k=3, tol=1e-10, ncv=8)
        assert r.interrupted
        assert r.eigenvectors.shape == (A.shape[0], len(r.eigenvalues))
        # flagged converged only once the search for copies finished (a Ctrl-C during the
        # residual products comes after it)
        assert not r.converged.any() or np.allclose(r.eigenvalues, [5.0, 5.0, 5.0], atol=1e-8)
        assert np.all(r.eigenvalues <= 5.0 + 1e-9)  # Rayleigh quotients
