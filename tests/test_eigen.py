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


# --- issue 18c: the search for missed eigenvalues, its stated failure probability ---------------

from lossdoctor.curvature import eigen as eigen_module  # noqa: E402
from lossdoctor.curvature.lanczos import block_lanczos_tridiagonals  # noqa: E402


class _Diagonal:
    """diag(d) as an operator: a Gaussian start is rotation invariant, so Lanczos behaves on it as
    on any matrix with this spectrum, at O(n) per product."""

    def __init__(self, d: np.ndarray) -> None:
        self.d = torch.as_tensor(d, dtype=torch.float64)
        self.shape = (len(d), len(d))

    def __matmul__(self, X: torch.Tensor) -> torch.Tensor:
        return X * self.d[:, None]


def _bulk(n: int) -> np.ndarray:
    # a Hessian-like bulk: most eigenvalues near 0, a few negative
    return np.random.default_rng(1).laplace(0.0, 0.05, n)


# Gap structures above a bulk (top five, then what follows): outliers decaying into the bulk
# (the benchmark CNN's top five), a wide gap, a power law without any gap, a k-th value close
# to the next.
GAP_STRUCTURES = {
    "outliers": [64.4, 52.7, 41.6, 38.66, 35.73, 33.0, 29.5, 26.0, 21.0, 17.0, 12.0, 9.0],
    "separated": [10.0, 8.0, 6.0, 5.0, 4.0, 1.0, 0.9, 0.8],
    "power-law": [64.0 / (i + 1) ** 0.7 for i in range(40)],
    "tight-kth": [20.0, 15.0, 12.0, 10.0, 9.0, 8.8, 8.5, 8.0, 6.0, 4.0],
}


@pytest.mark.parametrize("structure", sorted(GAP_STRUCTURES))
def test_hidden_copy_found_at_every_position(structure):
    """A copy of the j-th largest eigenvalue, j = 1..k (the k-th is nearest the rest), on each
    gap structure and three seeds: the k values come back with their multiplicity, each inside
    3 of its error bounds, all flagged converged; and with no copy, nothing is invented."""
    k, n = 5, 3000
    top = np.array(GAP_STRUCTURES[structure])
    for j in [None, 0, 1, 2, 3, 4]:
        extra = [] if j is None else [top[j]]
        d = np.concatenate([top, extra, _bulk(n - len(top) - len(extra))])
        exact = np.sort(d)[::-1][:k]
        for seed in range(3):
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no pair may end unconverged
                r = ld.eigenpairs(_Diagonal(d), k=k, tol=1e-8, seed=seed, progress=False)
            assert r.all_converged, (structure, j, seed)
            err = np.abs(r.eigenvalues - exact)
            assert np.all(err <= 3 * r.error_bounds + 1e-12), (structure, j, seed, err)


def test_search_without_copies_costs_few_products():
    """On the outliers-over-a-bulk structure with no copy, the search after the main run takes a
    handful of products (it took at least 8 before the stated-probability rule), and it is one
    run from one fresh start: the whole-basis round."""
    n, k = 3000, 5
    top = np.array(GAP_STRUCTURES["outliers"])
    d = np.concatenate([top, _bulk(n - len(top))])
    runs = []
    original = eigen_module.lanczos_extreme

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        runs.append(result.matvecs)
        return result

    eigen_module.lanczos_extreme = spy
    try:
        r = ld.eigenpairs(_Diagonal(d), k=k, tol=1e-6, seed=0, progress=False)
    finally:
        eigen_module.lanczos_extreme = original
    assert r.all_converged and len(runs) == 2
    assert runs[1] <= 5 and r.matvecs == sum(runs)


def _krylov_polynomial_minimum(A: torch.Tensor, q: torch.Tensor, d: int, x: float) -> float:
    """min ||p(A) q||^2 over polynomials of degree <= d with p(x) = 1, by least squares on the
    Krylov matrix written in Chebyshev-like scaled powers (independent of the Lanczos code)."""
    scale = float(torch.linalg.matrix_norm(A, ord=2))
    B = A / scale
    cols = [q]
    for _ in range(d):
        cols.append(B @ cols[-1])
    K = torch.stack(cols, dim=1)
    powers = torch.tensor([(x / scale) ** i for i in range(d + 1)], dtype=torch.float64)
    # p = powers . c = 1: c = c0 + N z; minimize ||K (c0 + N z)||
    c0 = powers / (powers @ powers)
    N = torch.linalg.svd(powers[None, :])[2][1:].T  # orthonormal null space of powers^T
    z = torch.linalg.lstsq(K @ N, -(K @ c0)[:, None]).solution[:, 0]
    return float(((K @ (c0 + N @ z)) ** 2).sum())


@pytest.mark.parametrize("x", [2.5, 4.0, -1.7])
def test_christoffel_is_the_polynomial_minimum(x):
    """1 / christoffel(T, beta, x) is the least ||p(A) q||^2 over degree-<=d polynomials with
    p(x) = 1 (the bound on a hidden eigenvalue's component at x), against least squares."""
    g = torch.Generator().manual_seed(3)
    n, d = 40, 5
    lam = torch.linspace(-1.0, 2.0, n, dtype=torch.float64)
    A = torch.diag(lam)
    q = torch.randn(n, generator=g, dtype=torch.float64)
    q /= q.norm()
    (alpha, beta, last) = block_lanczos_tridiagonals(
        lambda X: A @ X, q[:, None], d, last_beta=True
    )[0]
    T = torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)
    K = eigen_module.christoffel(T.numpy(), float(last), x)
    expected = _krylov_polynomial_minimum(A, q, d, x)
    assert pytest.approx(expected, rel=1e-6) == 1.0 / K


def test_miss_probability_holds_over_random_starts():
    """The stated bound is a probability: over 4,000 random starts on an operator with an
    eigenvalue just beyond the edge, the fraction of starts whose short run both stays short of
    the edge and claims a miss probability <= p is at most p (plus 3 standard errors), for
    several p. The edge is close enough that the claim is often made: the test can fail."""
    n, steps, edge = 300, 4, 2.0
    lam = np.concatenate([[2.05], np.linspace(-1.0, 1.0, n - 1)])
    A = torch.diag(torch.as_tensor(lam))
    gen = torch.Generator().manual_seed(0)
    starts = torch.randn(n, 4000, generator=gen, dtype=torch.float64)
    runs = block_lanczos_tridiagonals(lambda X: A @ X, starts, steps, last_beta=True)
    claims = []
    for alpha, beta, last in runs:
        T = (torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)).numpy()
        claims.append(eigen_module.miss_probability(T, float(last), edge, n, upper=True))
    claims = np.array(claims)
    for p in [0.02, 0.05, 0.1, 0.3]:
        frac = float(np.mean(claims <= p))
        assert frac <= p + 3 * math.sqrt(p * (1 - p) / len(claims)), (p, frac)
    assert np.mean(claims <= 0.3) > 0.05  # the claim is made often enough to be tested
    # With the eigenvalue beyond the edge removed, the same runs clear it with tiny bounds.
    B = torch.diag(torch.as_tensor(np.concatenate([[0.95], lam[1:]])))
    alpha, beta, last = block_lanczos_tridiagonals(
        lambda X: B @ X, starts[:, :1], 12, last_beta=True
    )[0]
    T = (torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)).numpy()
    assert eigen_module.miss_probability(T, float(last), edge, n, upper=True) < 1e-3


def test_fisher_combination_is_a_valid_probability():
    """combined_miss_probability of R independent uniform bounds is <= alpha with probability
    alpha (exactly uniform is the worst case the bounds allow)."""
    rng = np.random.default_rng(0)
    for R in (1, 2, 3):
        W = rng.uniform(size=(20000, R))
        combined = np.array([eigen_module.combined_miss_probability(list(w)) for w in W])
        for alpha in (0.01, 0.05, 0.2):
            frac = float(np.mean(combined <= alpha))
            assert frac <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / len(W)), (R, alpha, frac)
            assert frac >= alpha - 3 * math.sqrt(alpha * (1 - alpha) / len(W))  # not loose


def test_whole_basis_edges_never_certify_a_wrong_count():
    """_krylov_edges (Haynsworth inertia over the main run's whole basis): wherever it returns an
    edge and the compression of H to the basis' complement has no eigenvalue beyond it (dense
    check), H has exactly the found Ritz values' count of eigenvalues beyond the threshold.
    Random symmetric matrices with repeated eigenvalues, runs of several lengths, many
    thresholds; the certificate must apply in a fair share of them (else it is untested)."""
    applied = 0
    for seed in range(6):
        # a repeated top on even seeds (a copy the run cannot see: never certified)
        top = [6.0, 6.0, 5.0, 4.2, 4.0] if seed % 2 == 0 else [6.0, 5.0, 4.2, 4.0]
        lam = np.concatenate([top, np.linspace(-2.0, 1.0, 80 - len(top))])
        A = known_spectrum(list(lam), seed=seed)
        n = A.shape[0]
        for steps in (6, 10, 16):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = eigen_module.lanczos_extreme(
                    lambda X, A=A: A @ X,
                    n,
                    k=3,
                    which="largest",
                    tol=1e-14,
                    seed=seed,
                    max_matvecs=steps,
                    ncv=40,
                    keep_krylov=True,
                )
            Q, theta, rho = r._krylov
            P = torch.eye(n, dtype=torch.float64) - Q.T @ Q
            D = torch.linalg.eigvalsh(P @ A @ P).numpy()
            # the compression's eigenvalues on the complement (Q's directions give zeros)
            keep = np.argsort(np.abs(D))[Q.shape[0] :]
            top_D = float(D[keep].max())
            exact = np.linalg.eigvalsh(A.numpy())
            for tau in np.linspace(1.5, 5.9, 30):
                found = theta[theta > tau]
                edges = eigen_module._krylov_edges((Q, theta, rho), found, [tau], ["largest"])
                if edges is None or not top_D < edges[0]:
                    continue
                applied += 1
                assert int((exact > tau).sum()) == len(found), (seed, steps, tau)
    assert applied >= 20


def test_miss_probability_is_an_argument_and_the_bound_reached_is_reported():
    """The search's failure probability is eigenpairs' argument: the bound reported is at most
    the one asked for where the search stops on it, a smaller probability costs more products
    (the bound falls by a factor per product), and the values stay those of the dense spectrum."""
    n, k = 3000, 5
    d = np.concatenate([np.array(GAP_STRUCTURES["outliers"]), _bulk(n - 12)])
    exact = np.sort(d)[::-1][:k]
    products = []
    for p in [0.3, 1e-3, 1e-8, 1e-14]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            r = ld.eigenpairs(_Diagonal(d), k=k, tol=1e-8, miss_probability=p, progress=False)
        assert r.all_converged and r.miss_probability == p
        assert r.miss_bound is not None and 0.0 <= r.miss_bound <= p, (p, r.miss_bound)
        np.testing.assert_allclose(r.eigenvalues, exact, rtol=0, atol=1e-8 * exact[0])
        assert r.to_dict()["miss_bound"] == r.miss_bound
        assert f"asked <= {p:g}" in str(r)
        products.append(r.matvecs)
    assert products == sorted(products) and products[-1] > products[0], products
    # The whole space searched: nothing can be missed.
    r = ld.eigenpairs(known_spectrum([3.0, 2.0, 1.0, 0.5]), k=2, progress=False)
    assert r.all_converged and r.miss_bound == 0.0


def test_miss_bound_is_none_when_the_search_did_not_finish():
    """20 products finish the search at 1e-3 but not at 1e-14: then no bound is claimed and no
    pair is flagged converged."""
    d = np.concatenate([np.array(GAP_STRUCTURES["tight-kth"]), _bulk(2990)])
    r = ld.eigenpairs(_Diagonal(d), k=5, max_matvecs=20, progress=False)
    assert r.all_converged and r.miss_bound is not None and r.miss_bound <= 1e-3
    with pytest.warns(RuntimeWarning, match="search for missed copies"):
        r = ld.eigenpairs(_Diagonal(d), k=5, max_matvecs=20, miss_probability=1e-14, progress=False)
    assert not np.any(r.converged) and r.miss_bound is None
    assert "did not finish (asked <= 1e-14)" in str(r)


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (0, ValueError),
        (1, ValueError),
        (-1e-3, ValueError),
        (float("nan"), ValueError),
        (2.0, ValueError),
        ("1e-3", TypeError),
        (None, TypeError),
    ],
)
def test_bad_miss_probability_is_refused(bad, error):
    with pytest.raises(error, match="miss_probability must be a finite number > 0 and < 1"):
        ld.eigenpairs(known_spectrum([3.0, 2.0, 1.0]), k=1, miss_probability=bad)


@pytest.mark.parametrize("bulk_top", [0.25, 0.3])
def test_near_double_top_eigenvalue_converges_both(bulk_top):
    """Two top eigenvalues 1e-3 relatively apart over a bulk (MobileNetV3-small in eval mode:
    0.33447 and 0.33436): the main run's Ritz value can sit between the two with a residual
    larger than their distance, where its bound r**2 / gap (gap to the bulk) was 300x too small
    and the pair was flagged converged. Now the search excludes unseen eigenvalues within the
    residual interval: both are found and converged, each inside its bound, against eigh."""
    n = 1500
    rng = np.random.default_rng(0)
    bulk = np.concatenate([np.linspace(bulk_top, 0.1, 20), rng.laplace(0.0, 0.01, n - 22)])
    H = known_spectrum([0.33447, 0.33436, *bulk])
    exact = torch.linalg.eigvalsh(H).numpy()[::-1]
    for k in [1, 2, 5]:
        for seed in range(3):
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # converged, with budget left
                r = ld.eigenpairs(H, k=k, seed=seed, progress=False)
            assert r.all_converged and r.matvecs < 300, (k, seed, r.matvecs)
            err = np.abs(r.eigenvalues - exact[:k])
            assert np.all(err <= 1e-6 * exact[:k]), (k, seed, err)
            assert np.all(err <= 3 * r.error_bounds + 1e-12), (k, seed, err, r.error_bounds)


def test_start_vector_blind_to_the_top_is_caught_by_the_search():
    """A main-run start orthogonal to the top eigenvector (its Krylov space never sees it): the
    search, from its own random starts, finds the top and every value matches eigh; a start along
    the top pair converges in fewer products than a random one. Bad starts are refused."""
    spectrum = [9.0, 7.0, 6.5, *np.linspace(-1.0, 3.0, 300)]
    H = known_spectrum(spectrum, seed=3)
    lam, U = torch.linalg.eigh(H)
    blind = torch.randn(
        len(spectrum), generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    blind -= U[:, -1] * (U[:, -1] @ blind)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = ld.eigenpairs(H, k=2, start=blind, progress=False)
    assert r.all_converged
    np.testing.assert_allclose(r.eigenvalues, [9.0, 7.0], rtol=1e-6)
    near = U[:, -1] + U[:, -2] + 0.01 * blind
    fast = ld.eigenpairs(H, k=2, start=near, progress=False)
    slow = ld.eigenpairs(H, k=2, progress=False)
    assert fast.all_converged and fast.matvecs < slow.matvecs
    np.testing.assert_allclose(fast.eigenvalues, [9.0, 7.0], rtol=1e-6)
    for bad in [torch.zeros(len(spectrum)), torch.ones(3), torch.full((len(spectrum),), math.nan)]:
        with pytest.raises(ValueError, match="start must"):
            ld.eigenpairs(H, k=1, start=bad)


@pytest.mark.parametrize("structure", ["outliers", "separated"])
def test_float32_basis_uses_the_whole_basis_round(structure):
    """A float32 main basis is kept for the search's first round (its decomposition holds to
    float32 rounding, covered by a margin): with no copy the search is one run of a few products;
    with a copy of the top or of the k-th value, every value matches the spectrum with its
    multiplicity, inside 3 of its bounds."""
    n, k = 3000, 5
    top = np.array(GAP_STRUCTURES[structure])
    original = eigen_module.lanczos_extreme
    for j in [None, 0, 4]:
        extra = [] if j is None else [top[j]]
        d = np.concatenate([top, extra, _bulk(n - len(top) - len(extra))])
        exact = np.sort(d)[::-1][:k]
        runs = []

        def spy(*args, runs=runs, **kwargs):
            result = original(*args, **kwargs)
            runs.append((result.matvecs, getattr(result, "_krylov", None) is not None))
            return result

        eigen_module.lanczos_extreme = spy
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                r = ld.eigenpairs(
                    _Diagonal(d), k=k, tol=1e-6, basis_dtype="float32", progress=False
                )
        finally:
            eigen_module.lanczos_extreme = original
        assert r.all_converged and r.basis_dtype == "float32"
        assert runs[0][1], "the main basis is kept for the search"
        err = np.abs(r.eigenvalues - exact)
        assert np.all(err <= 3 * r.error_bounds + 1e-12), (j, err, r.error_bounds)
        if j is None:
            assert len(runs) == 2 and runs[1][0] <= 5, runs


def test_near_double_bottom_pair_is_refined_with_the_budget_left():
    """The mirror case at the smallest end (1,200 parameters): after the search finds the second
    half, the main run's vector still carries components along the bulk (its bound misses tol
    with most of the budget left); a short run from it converges the pair, checked against eigh."""
    n = 1200
    rng = np.random.default_rng(0)
    bulk = np.concatenate([np.linspace(0.25, 0.1, 20), rng.laplace(0.0, 0.01, n - 22)])
    H = known_spectrum([-0.33447, -0.33436, *(-bulk)])
    exact = float(torch.linalg.eigvalsh(H)[0])
    for seed in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            r = ld.eigenpairs(H, k=1, which="smallest", seed=seed, progress=False)
        assert r.all_converged and r.matvecs < 100
        err = abs(r.eigenvalues[0] - exact)
        assert err <= 1e-6 * abs(exact) and err <= 3 * r.error_bounds[0] + 1e-12, (seed, err)
        v = r.eigenvectors[:, 0]
        assert float((H @ v - r.eigenvalues[0] * v).norm()) <= 1.01 * r.residual_norms[0] + 1e-12
