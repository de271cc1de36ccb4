"""Extreme eigenpairs of a symmetric operator by thick-restart Lanczos (Wu & Simon, 2000).

One Krylov space serves both ends of the spectrum, so ``which="both"`` (what classifying a
critical point needs) costs little more than one end. Convergence is judged on each Ritz
value's error bound, min(r, r**2 / gap), with ``r`` the Lanczos residual norm and ``gap`` the
distance to the nearest other Ritz value, so no eigenvalue is reported as converged on a
residual test alone and none is reported silently when it is not.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import _interrupt
from .._checks import check_arguments
from .._results import ResultMixin, fmt
from ..progress import Progress, as_callback, with_progress
from ..types import OperatorLike, Which
from . import memory
from .lanczos import (
    CountedProducts,
    gaussian,
    operator_mode,
    orthogonalize,
    project_out,
    rotate_rows,
    rows_times,
)
from .memory import PROBE_BYTES, BasisPlan, fmt_bytes, notice, plan_basis, time_text

WHICH = ("largest", "smallest", "both", "largest_magnitude")
# Eigenvalues smaller than this fraction of ||H|| are judged on absolute accuracy
# tol * FLOOR * ||H||: relative accuracy of near-zero eigenvalues is not attainable in float32.
FLOOR = 1e-3
# Default of eigenpairs' miss_probability: the search for missed eigenvalues stops when the
# probability that it missed one (over its random start vectors; see miss_probability) is at most
# this.
MISS_PROBABILITY = 1e-3
# A value the search finds is taken as converged only after this many of its Lanczos steps: the
# first Ritz values of a run have small r^2/gap estimates whatever the spectrum.
MIN_CHECK_STEPS = 8
# A run stops once its bounds are below STOP_MARGIN * tol. Its gaps come from Ritz values of the
# same Krylov space, which approach the rest of the spectrum from inside and so overstate the gap;
# the final verdict also sees the search's estimates of the next eigenvalues (a 6.7k-parameter
# timm ViT: the run stopped at r**2/gap = 0.98 tol with gap 46, the search put the next eigenvalue
# 39 away, and the pair came back unconverged with most of the budget unspent). r**2 halves in
# about one product, so the margin costs about one product and leaves room for a gap half as large.
STOP_MARGIN = 0.5
# The search excludes unseen eigenvalues within r**2 / (EDGE_MARGIN * tol * scale) of each pair
# (_search_edges): the final bound, from the true residual (a little above the Lanczos estimate
# it was planned with), then still meets tol; short of STOP_MARGIN, so the edge stays clear of the
# next Ritz value a run stopped against.
EDGE_MARGIN = 0.8


@dataclass(frozen=True)
class EigenResult(ResultMixin):
    """Extreme eigenpairs of a symmetric operator, sorted by decreasing eigenvalue (:func:`eigenpairs`).

    Each eigenvalue is a Rayleigh quotient, so the largest is <= lambda_max and the smallest
    >= lambda_min whatever the convergence.

    Attributes:
        eigenvalues: the eigenvalues found (float64), largest first.
        eigenvectors: ``eigenvectors[:, i]`` (float64, unit norm) belongs to ``eigenvalues[i]``.
        residual_norms: ``||H v - lambda v||`` of each pair, from the operator's own products.
        error_bounds: for a converged pair, min(r, r**2 / gap) estimates |lambda_i - eigenvalues[i]|
            (the gap estimated from the other Ritz values); for an unconverged pair it is the
            residual norm r, which only bounds the distance to the *nearest* eigenvalue.
        converged: per pair, whether its error bound met ``tol`` and the search for missed
            copies finished.
        matvecs: operator products spent.
        which: the end(s) of the spectrum asked for.
        tol: the relative accuracy asked for.
        seed: the seed of the random start vectors.
        num_params: the operator's size.
        interrupted: Ctrl-C stopped the run: the pairs are the best found so far.
        mode: ``"eval"``/``"train"`` for a :class:`HessianOperator`, else ``None``.
        miss_probability: the failure probability asked of the search for missed eigenvalues
            (``None``: no search, as in a single Lanczos run).
        miss_bound: the failure probability the search reached: a bound on the probability, over
            the random start vectors, that an eigenvalue beyond the k-th value plus its error bound
            was missed (<= ``miss_probability`` when the search finished; 0 where the Krylov
            spaces covered the whole space); ``None`` where the search did not finish (then no
            pair is flagged converged).

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo.lecture import lecture_saddle
        >>> p = lecture_saddle()
        >>> r = ld.eigenpairs(ld.hessian(p.model, p.loss_fn, p.train_data), k=1, which="both")
        >>> round(r.largest, 6), round(r.smallest, 6), r.all_converged
        (2.0, -2.0, True)
        >>> r.eigenvectors[:, 1].abs().tolist()  # the escape direction (1, -1)/sqrt(2), up to sign
        [0.707..., 0.707...]
    """

    eigenvalues: np.ndarray
    eigenvectors: torch.Tensor
    residual_norms: np.ndarray
    error_bounds: np.ndarray
    converged: np.ndarray
    matvecs: int
    which: str
    tol: float
    seed: int
    num_params: int
    interrupted: bool = False
    mode: str | None = None  # "eval"/"train" for a HessianOperator: how the model was evaluated
    # The Lanczos basis used (see eigenpairs' basis_dtype/basis_device) and the memory the call's
    # own vectors were estimated to take (basis, kept products, pairs, one product's vectors).
    basis_dtype: str | None = None
    basis_device: str | None = None
    ncv: int | None = None
    memory_estimate_bytes: int | None = None
    miss_probability: float | None = None
    miss_bound: float | None = None

    _skip_in_dict = ("eigenvectors",)

    @property
    def all_converged(self) -> bool:
        """Whether every pair converged (see ``converged``)."""
        return bool(np.all(self.converged))

    @property
    def largest(self) -> float:
        """The largest eigenvalue found."""
        return float(self.eigenvalues[0])

    @property
    def smallest(self) -> float:
        """The smallest eigenvalue found."""
        return float(self.eigenvalues[-1])

    def __str__(self) -> str:
        mode = f", {self.mode} mode" if self.mode else ""
        lines = [
            f"Hessian eigenpairs ({self.which}, {self.num_params} parameters{mode}, "
            f"{self.matvecs} Hessian-vector products, tol {self.tol:g}, seed {self.seed})"
        ]
        if self.basis_dtype is not None:
            lines.append(
                f"Lanczos basis: {self.ncv} x {self.basis_dtype} on {self.basis_device}; estimated "
                f"memory {fmt_bytes(self.memory_estimate_bytes)}"
            )
        lines.append(
            f"{'#':>3}  {'eigenvalue':>14}  {'residual':>10}  {'error bound':>11}  converged"
        )
        for i, (lam, res, bound, ok) in enumerate(
            zip(self.eigenvalues, self.residual_norms, self.error_bounds, self.converged)
        ):
            lines.append(
                f"{i:>3}  {lam:>14.7g}  {res:>10.2e}  {bound:>11.2e}  {'yes' if ok else 'NO'}"
            )
        if self.miss_probability is not None:
            lines.append(
                "search for missed eigenvalues: "
                + (
                    "did not finish"
                    if self.miss_bound is None
                    else f"failure probability <= {self.miss_bound:.2g}"
                )
                + f" (asked <= {self.miss_probability:g})"
            )
        if self.interrupted:
            lines.append("interrupted: values are the best found so far")
        return "\n".join(lines)


def _wanted(theta: np.ndarray, which: str, k: int) -> np.ndarray:
    """Indices (into ascending ``theta``) of the Ritz values sought."""
    m = len(theta)
    if which == "largest":
        return np.arange(m - 1, max(m - 1 - k, -1), -1)
    if which == "smallest":
        return np.arange(0, min(k, m))
    if 2 * k >= m:
        return np.arange(m - 1, -1, -1)
    return np.concatenate([np.arange(m - 1, m - 1 - k, -1), np.arange(k - 1, -1, -1)])


def _ritz_gaps(theta: np.ndarray) -> np.ndarray:
    if len(theta) == 1:
        return np.full(1, np.inf)
    diffs = np.abs(theta[:, None] - theta[None, :])
    np.fill_diagonal(diffs, np.inf)
    return diffs.min(axis=1)


def _bounds(theta: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    if len(theta) == 1:
        return residuals.copy()
    # The gap to a neighbour is counted from the far side of its own residual interval (an
    # eigenvalue lies within r_j of theta_j): an unconverged neighbour gives no optimistic gap.
    diffs = np.abs(theta[:, None] - theta[None, :]) - residuals[None, :]
    np.fill_diagonal(diffs, np.inf)
    gaps = diffs.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        quad = np.where(gaps > 0, residuals**2 / gaps, np.inf)
    return np.minimum(residuals, quad)


def lanczos_extreme(
    matmul: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    *,
    k: int,
    which: str,
    tol: float,
    seed: int,
    max_matvecs: int,
    ncv: int | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    start: torch.Tensor | None = None,
    decided: Callable[..., bool] | None = None,
    deflate: torch.Tensor | None = None,
    min_steps: int = 1,
    keep_products: bool = False,
    plan: BasisPlan | None = None,
    stop_converged: Callable[[np.ndarray, np.ndarray], bool] | None = None,
    keep_krylov: bool = False,
    norm: float = 0.0,
) -> EigenResult:
    """Thick-restart Lanczos on ``matmul`` (float64 ``(n, 1)`` -> ``(n, 1)``), from ``start`` (default: a Gaussian vector drawn from ``seed``).

    ``decided(values, residuals, krylov)`` of the wanted Ritz values may end the run before
    they converge (the search for missed eigenvalues); ``krylov`` is ``(T, beta)``, the
    tridiagonal of the run and its last residual norm, while the basis is still the plain
    Krylov space of the start vector (no thick restart, no fresh direction), else ``None``.
    ``stop_converged(values, residuals)``: whether converged wanted values end the run (default:
    yes).
    ``keep_krylov``: also return the final basis ``Q`` (rows), every Ritz value of ``Q^T H Q`` and
    its residual norm (``result._krylov``), for the search for missed eigenvalues.
    ``norm``: a lower bound on ``||H||`` known beforehand (the scale of the accuracy floor).
    ``deflate``: orthonormal columns ``matmul`` projects out (any dtype and device: a float32 or
    host-held basis is used a slice at a time); the run stays orthogonal to them
    (fresh directions included) and its space has ``n - deflate.shape[1]`` dimensions.
    ``min_steps``: no convergence or decision is accepted before this many products.
    ``keep_products``: also keep ``matmul`` of every basis vector (rotated with the basis at each
    restart), so the returned pairs' products ``H Y`` cost nothing more (``result._products``):
    their true residuals without a product per pair. Doubles the basis memory.
    ``plan``: the basis's dtype, device and size, and whether products are kept
    (:func:`~lossdoctor.curvature.memory.plan_basis`; default: planned here from the memory
    available). A float32 basis, or one held on the host for a CUDA operator, is combined and
    orthogonalized in float64 a slice of rows at a time; the vectors returned are float64 on
    ``device``."""
    dim = n - (0 if deflate is None else int(deflate.shape[1]))
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}.")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}.")
    n_wanted = min(n, 2 * k if which == "both" else k)
    k = min(k, n)
    if plan is None:
        plan = plan_basis(
            n,
            ncv=default_ncv(n, n_wanted) if ncv is None else int(min(n, max(ncv, n_wanted + 2))),
            min_ncv=min(n, n_wanted + 2),
            op_device=device,
            ncv_given=ncv is not None,
            keep_products=keep_products,
        )
    ncv = int(min(n, max(plan.ncv, n_wanted + 2)))
    max_matvecs = max(int(max_matvecs), 1)
    work = torch.device(device)

    gen_seed = seed
    q = (
        gaussian(n, 1, gen_seed, device).squeeze(1)
        if start is None
        else start.to(torch.float64).reshape(-1)
    )
    # Rows 0..m-1 of ``store`` are the orthonormal Lanczos vectors. Allocated once for the
    # largest basis a restart allows: its pages are touched only as rows are written, and no
    # step copies the basis (growing it by concatenation held two copies at each step).
    store = torch.empty(ncv + 1, n, dtype=plan.dtype, device=plan.device)
    store[0] = q / q.norm()
    keep_products = plan.keep_products and keep_products
    hstore = (
        torch.empty(ncv + 1, n, dtype=plan.dtype, device=plan.device) if keep_products else None
    )
    m = 1
    T = np.zeros((0, 0))
    b = np.zeros(0)  # H Q^T = Q^T T + r b^T
    r = None
    beta = 0.0
    matvecs = 0
    interrupted = False
    theta = np.zeros(0)
    S = np.zeros((0, 0))
    hnorm = float(norm)
    plain = True  # the basis is the Krylov space of the start vector: T is its tridiagonal

    def ritz() -> tuple[np.ndarray, np.ndarray]:
        return np.linalg.eigh(T)

    try:
        while True:
            # Extend the basis by one Lanczos vector.
            j = T.shape[0]
            q = store[m - 1].to(device=work, dtype=torch.float64)  # exactly the stored vector
            w = matmul(q.unsqueeze(1)).squeeze(1)
            matvecs += 1
            if hstore is not None:
                hstore[m - 1] = w
            coupling = beta * b
            alpha = float(q @ w)
            w = w - alpha * q
            if j > 0:
                w = w - rows_times(
                    store[: m - 1], torch.as_tensor(coupling, dtype=torch.float64), work
                )
            w = project_out(w, store[:m])
            T_new = np.zeros((j + 1, j + 1))
            T_new[:j, :j] = T
            T_new[:j, j] = coupling
            T_new[j, :j] = coupling
            T_new[j, j] = alpha
            T = T_new
            b = np.zeros(j + 1)
            b[j] = 1.0
            r = w
            beta = float(r.norm())

            theta, S = ritz()
            hnorm = max(hnorm, float(np.abs(theta).max()))
            residuals = beta * np.abs(b @ S)
            idx = _wanted(theta, which, k)
            bounds = _bounds(theta, residuals)
            scale = np.maximum(np.abs(theta[idx]), FLOOR * hnorm)
            done = bool(np.all(bounds[idx] <= STOP_MARGIN * tol * scale)) and len(idx) >= n_wanted
            if done and stop_converged is not None:
                done = bool(stop_converged(theta[idx], residuals[idx]))
            if not done and decided is not None and len(idx) >= n_wanted:
                done = bool(decided(theta[idx], residuals[idx], (T, beta) if plain else None))
            done = done and matvecs >= min_steps
            if progress is not None:
                progress(matvecs, max_matvecs)
            if done or T.shape[0] >= dim or matvecs >= max_matvecs:
                break

            if beta <= 1e-12 * max(hnorm, 1e-300):
                # Invariant subspace: continue from a fresh direction orthogonal to the basis.
                gen_seed += 1
                fresh = gaussian(n, 1, gen_seed, device)
                if deflate is not None:
                    fresh = project_out(fresh.squeeze(1), deflate.T).unsqueeze(1)
                fresh = project_out(fresh.squeeze(1), store[:m])
                if float(fresh.norm()) <= 1e-10 * float(gaussian(n, 1, gen_seed, device).norm()):
                    dim = T.shape[0]  # the basis and the deflated columns span everything
                    break
                r = fresh / fresh.norm()
                beta = 0.0
                plain = False
                if m == store.shape[0]:  # invariant subspaces in a row at the restart size: rare
                    store = torch.cat([store, torch.empty_like(store[:1])])
                    if hstore is not None:
                        hstore = torch.cat([hstore, torch.empty_like(hstore[:1])])
                store[m] = r
                m += 1
                b = np.zeros(T.shape[0])
                continue

            with _interrupt.deferred():
                # A Ctrl-C between rewriting the basis and T would pair a basis with the wrong
                # projected matrix (issue 18: "mat1 and mat2 shapes cannot be multiplied"): the
                # restart completes, then the interrupt is raised.
                if T.shape[0] >= ncv:
                    # Thick restart: keep the wanted Ritz vectors and a few neighbours.
                    keep = min(T.shape[0] - 1, n_wanted + max(2, (ncv - n_wanted) // 2))
                    idx_keep = _wanted(theta, which, (keep + 1) // 2 if which == "both" else keep)
                    Sk = S[:, idx_keep]
                    rotate_rows(store, m, Sk)
                    if hstore is not None:
                        rotate_rows(hstore, m, Sk)
                    m = len(idx_keep)
                    plain = False
                    T = np.diag(theta[idx_keep])
                    b = Sk.T @ b
                store[m] = r / beta
                m += 1
    except KeyboardInterrupt:
        interrupted = True
        if T.shape[0] == 0:
            raise

    basis = store[: min(m, T.shape[0])]
    theta, S = ritz()
    residuals = beta * np.abs(b @ S)
    idx = _wanted(theta, which, k)
    bounds = _bounds(theta, residuals)
    hnorm = max(hnorm, float(np.abs(theta).max()))
    scale = np.maximum(np.abs(theta[idx]), FLOOR * hnorm)
    converged = bounds[idx] <= tol * scale
    exhaustive = T.shape[0] >= dim
    if exhaustive:  # the Krylov space is the whole space: exact up to rounding
        converged = np.ones(len(idx), dtype=bool)
    # The gap estimate needs converged neighbours; otherwise only the residual bound is rigorous.
    bounds[idx] = np.where(converged, bounds[idx], residuals[idx])
    order = np.argsort(-theta[idx], kind="stable")
    idx = idx[order]
    vectors = rows_times(basis, torch.as_tensor(S[:, idx], dtype=torch.float64), work)
    result = EigenResult(
        eigenvalues=theta[idx].copy(),
        eigenvectors=vectors.contiguous(),
        residual_norms=residuals[idx].copy(),
        error_bounds=bounds[idx].copy(),
        converged=converged[order].copy(),
        matvecs=matvecs,
        which=which,
        tol=tol,
        seed=seed,
        num_params=n,
        interrupted=interrupted,
    )
    object.__setattr__(result, "_exhaustive", exhaustive and not interrupted)  # private: no field
    object.__setattr__(result, "_gaps", _ritz_gaps(theta)[idx])  # to the nearest other Ritz value
    if keep_krylov and not interrupted and basis.shape[0] == T.shape[0]:
        object.__setattr__(result, "_krylov", (basis, theta.copy(), beta * np.abs(b @ S)))
    if hstore is not None and not interrupted:
        object.__setattr__(
            result,
            "_products",
            rows_times(
                hstore[: basis.shape[0]], torch.as_tensor(S[:, idx], dtype=torch.float64), work
            ),
        )
    if not result.all_converged:
        bad = int((~result.converged).sum())
        warnings.warn(
            f"{bad} of {len(idx)} eigenpairs did not reach tol={tol:g} after {matvecs} Hessian-vector "
            f"products (worst error bound {fmt(float(np.max(result.error_bounds)))}). Raise max_matvecs "
            f"(or ncv), or loosen tol; unconverged pairs are flagged in .converged.",
            RuntimeWarning,
            stacklevel=3,
        )
    return result


def default_ncv(n: int, n_wanted: int) -> int:
    """Room for the wanted pairs plus a margin that keeps restarts rare."""
    return int(min(n, max(2 * n_wanted + 10, 24)))


def _keys(values: np.ndarray, which: str) -> np.ndarray:
    """Larger key = more wanted."""
    if which == "largest":
        return values
    if which == "smallest":
        return -values
    return np.abs(values)  # largest_magnitude


def _select(values: np.ndarray, which: str, k: int) -> np.ndarray:
    """Indices of the ``k`` pairs wanted (per end for "both"), in no particular order."""
    if which == "both":
        order = np.argsort(-values, kind="stable")
        if 2 * k >= len(values):
            return order
        return np.concatenate([order[:k], order[-k:]])
    return np.argsort(-_keys(values, which), kind="stable")[:k]


def _sides(which: str) -> list[str]:
    return {"largest": ["largest"], "smallest": ["smallest"]}.get(which, ["largest", "smallest"])


@with_progress("eigenpairs")
def eigenpairs(
    op: OperatorLike,
    k: int = 5,
    which: Which = "largest",
    *,
    tol: float = 1e-6,
    seed: int = 0,
    max_matvecs: int | None = None,
    ncv: int | None = None,
    basis_dtype: str | None = "auto",
    basis_device: str | None = "auto",
    miss_probability: float = MISS_PROBABILITY,
    start: torch.Tensor | None = None,
    progress: Progress | bool | str | None = "auto",
) -> EigenResult:
    """The ``k`` extreme eigenpairs of a symmetric operator such as :func:`lossdoctor.hessian`.

    Repeated eigenvalues are found with their multiplicity. One Krylov sequence cannot see a
    second copy of an eigenvalue (its start vector has one component in the eigenspace), so after
    the thick-restart Lanczos run converges, Lanczos runs from fresh random vectors look for what
    was missed: a hidden copy, or any eigenvalue that belongs among the ``k``. The first searches
    the complement of the main run's whole Krylov basis (its top lies below that of the
    complement of the pairs, so it ends after a few products where the pairs stand clear of the
    rest: 3 on the benchmark CNN, 93,838 parameters); where that cannot decide, the next ones
    search the operator deflated by the pairs found, ``(I - V V^T) H (I - V V^T)``. What they
    find joins the pairs and the search repeats. It stops when the probability that an
    eigenvalue beyond the k-th value (plus its error bound) was missed is at most
    ``miss_probability`` (default 1e-3), over the random start vectors and whatever the operator: the
    bound is computed from each run's own tridiagonal (its Christoffel function at the edge, and
    a Gaussian start's component along any fixed direction; see :func:`miss_probability`). A
    pair is flagged converged only when its own error bound is below ``tol`` *and* that search
    finished (a cluster cannot be incomplete). A k-th value inside a dense part of the spectrum
    needs many products for that (the next eigenvalues must be resolved to exclude a copy);
    well-separated ends need few. ``residual_norms`` are the true ``||H v - lambda v||``, from
    the operator's own products (the run keeps ``H q`` of its basis vectors, so ``H v`` is a
    combination of them; a pair the search added costs one product; ``matvecs`` counts all).

    Args:
        op: anything with ``.shape`` and ``op @ matrix`` (a :class:`HessianOperator`, a dense
            symmetric tensor).
        k: eigenpairs per end of the spectrum (``which="both"`` returns ``2k``).
        which: ``"largest"`` or ``"smallest"`` (algebraic), ``"both"``, or
            ``"largest_magnitude"`` (the ``k`` of largest ``|lambda|``, either sign).
        tol: relative accuracy of each eigenvalue: the error bound must be below
            ``tol * max(|lambda|, 1e-3 * ||H||)``.
        seed: seed of the random start vectors.
        max_matvecs: budget of operator products (default ``max(300, 40 k)``), the search for
            missed copies included (at least 2 products); a pair the search adds costs one more.
        ncv: largest Krylov basis kept before a thick restart (memory: ``ncv`` vectors of
            ``n`` parameters). Default: ``max(2 k' + 10, 24)`` for ``k'`` wanted pairs, fewer
            where that many do not fit in the memory available (more restarts, same answer).
        basis_dtype: ``"auto"`` (default): float64 where the basis fits in 40% of the memory
            available, else float32 (a 124M-parameter model: 25 float64 vectors are 25 GB);
            or ``"float64"``/``"float32"``. A float32 basis is orthogonalized and combined in
            float64, and the pairs are re-orthonormalized and checked with fresh products in
            float64, so no pair is flagged converged that its true residual does not support.
        basis_device: ``"auto"`` (default): the operator's device, or the host for a CUDA
            operator whose GPU has no room; or a device (``"cpu"``).
        miss_probability: the failure probability allowed to the search for missed
            eigenvalues, in (0, 1) (default 1e-3). Smaller costs more products (about one per
            halving of the bound where the pairs stand clear of the rest). The bound reached is
            the result's ``miss_bound``: the smallest ``miss_probability`` at which the search
            would have stopped where it did, itself a valid bound (a p-value over the starts).
        start: the main run's start vector (``n`` finite numbers, not all zero; default a
            Gaussian vector drawn from ``seed``), like scipy's ``eigsh(v0=...)``. A start with a
            large component along the wanted eigenvectors finds them in fewer products (the
            gradient, for the top of a loss Hessian). The search for missed eigenvalues always
            starts from fresh random vectors, so ``miss_probability`` holds whatever ``start``.
        progress: called as ``progress(matvecs_done, max_matvecs)`` after each product;
            ``"auto"`` (default) shows a bar on a terminal for long runs, ``True`` always,
            ``False``/``None`` never. Where
            progress is shown and the call is long (at least 10 s estimated from the first
            product) or the basis had to be made smaller, a one-line notice on stderr states
            the basis, the memory and the time expected (also in the result's fields
            ``basis_dtype``, ``basis_device``, ``ncv``, ``memory_estimate_bytes``).

    Raises:
        MemoryError: where even the smallest basis (``k' + 2`` float32 vectors, or the
            ``ncv``/``basis_dtype``/``basis_device`` given) does not fit, with what would.

    Returns:
        The pairs with their error bounds and convergence flags. Ctrl-C returns the pairs
        found so far with ``interrupted=True``.

    Raises:
        ValueError: an unknown ``which``, or a bad ``k``, ``tol``, ``seed`` or budget.

    Examples:
        The lecture's saddle: one eigenvalue of each sign.

        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo.lecture import lecture_saddle
        >>> p = lecture_saddle()
        >>> H = ld.hessian(p.model, p.loss_fn, p.train_data)
        >>> ld.eigenpairs(H, k=1, which="both").eigenvalues.round(6).tolist()
        [2.0, -2.0]

        A repeated eigenvalue is found with its multiplicity:

        >>> import torch
        >>> A = torch.diag(torch.tensor([5.0, 5.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.25], dtype=torch.float64))
        >>> ld.eigenpairs(A, k=3).eigenvalues.round(6).tolist()
        [5.0, 5.0, 5.0]
    """
    check_arguments(
        op=op,
        k=k,
        tol=tol,
        seed=seed,
        max_matvecs=max_matvecs,
        ncv=ncv,
        miss_probability=miss_probability,
        progress=progress,
    )
    asked = float(miss_probability)
    if start is not None:
        if not isinstance(start, torch.Tensor) or start.numel() != int(op.shape[0]):
            raise ValueError(
                f"start must be a tensor of {int(op.shape[0])} numbers (one per parameter), got "
                + (
                    f"{start.numel()}"
                    if isinstance(start, torch.Tensor)
                    else f"a {type(start).__name__}"
                )
                + "."
            )
        if not bool(torch.isfinite(start).all()) or not bool((start != 0).any()):
            raise ValueError("start must be finite and not all zero.")
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}.")
    n = int(op.shape[0])
    device = getattr(op, "device", None) or (op.device if isinstance(op, torch.Tensor) else "cpu")
    if max_matvecs is None:
        max_matvecs = max(300, 40 * k)
    max_matvecs = max(int(max_matvecs), 1)
    inner = "both" if which == "largest_magnitude" else which
    n_wanted = min(n, 2 * k if inner == "both" else k)
    # Held beside the basis while the search for missed pairs runs: the pairs found (float64).
    held = n_wanted * n * 8
    plan = plan_basis(
        n,
        ncv=default_ncv(n, n_wanted) if ncv is None else int(min(n, max(ncv, n_wanted + 2))),
        min_ncv=min(n, n_wanted + 2),
        op_device=torch.device(device),
        ncv_given=ncv is not None,
        dtype=basis_dtype,
        device=basis_device,
        held=held,
    )
    estimate = plan.bytes + held + PROBE_BYTES * n

    def first_product(seconds: float) -> None:
        expected = seconds * max_matvecs
        if expected >= memory.NOTICE_SECONDS or plan.fallback:
            notice(
                as_callback(progress),
                f"eigenpairs: {n:,} parameters; Lanczos basis {plan.ncv} x {plan.dtype_name} on "
                f"{plan.device} ({fmt_bytes(estimate)} estimated with the pairs, "
                f"{fmt_bytes(plan.available)} available"
                + (f"; {plan.fallback}" if plan.fallback else "")
                + f"); {seconds:.2g} s per product, at most {max_matvecs} products "
                f"(<= {time_text(expected)}).",
            )

    count = CountedProducts(op, max_matvecs, as_callback(progress), first_product)
    # The main basis is kept for the search's whole-basis round where the memory planned holds it
    # beside that round's own basis: always where products were kept (the same memory), and for
    # a float32 or host-held basis where twice it fits (a float32 basis chosen because a float64
    # one did not fit leaves no such room).
    room = (
        math.inf
        if plan.available is None
        else memory.BASIS_SHARE * plan.available
        - (held if plan.device == torch.device(device) else 0)
    )
    keep_krylov = plan.keep_products or 2 * plan.bytes <= room
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # warned once below, on the final pairs
        first = lanczos_extreme(
            count,
            n,
            k=k,
            which=inner,
            tol=tol,
            seed=seed,
            max_matvecs=max_matvecs,
            ncv=plan.ncv,
            device=device,
            keep_products=True,
            plan=plan,
            start=start,
            keep_krylov=keep_krylov,
        )
    values = np.asarray(first.eigenvalues, dtype=np.float64)
    vectors = first.eigenvectors.to(torch.float64)
    bounds = np.asarray(first.error_bounds, dtype=np.float64)
    ritz_gaps = np.asarray(getattr(first, "_gaps", np.full(len(values), np.inf)), dtype=np.float64)
    products = getattr(first, "_products", None)  # H @ vectors from the run's own products
    converged = np.asarray(first.converged, dtype=bool)
    residuals = np.asarray(first.residual_norms, dtype=np.float64)  # Lanczos estimates
    interrupted = first.interrupted
    certified = (
        getattr(first, "_exhaustive", False) or len(values) >= n
    )  # the Krylov space was everything
    reached: float | None = 0.0 if certified else None  # the search's failure bound
    beyond: list[float] = []  # eigenvalue estimates outside the wanted set (for the gaps)
    if which == "largest_magnitude":
        keep = _select(values, which, k)
        beyond = [float(x) for i, x in enumerate(values) if i not in set(keep.tolist())]
        values, vectors, bounds, converged = (
            values[keep],
            vectors[:, keep],
            bounds[keep],
            converged[keep],
        )
        ritz_gaps, residuals = ritz_gaps[keep], residuals[keep]
        products = None if products is None else products[:, keep]
    edges: list[float] = []  # per end, the key beyond which the search missed nothing
    hnorm = float(np.abs(values).max()) if len(values) else 0.0
    if not interrupted and not certified and bool(np.all(converged)):
        try:
            m0 = len(values)
            pairs = (values, vectors, bounds, converged, ritz_gaps, residuals)
            found = _find_missed(
                count,
                n,
                k,
                which,
                tol,
                seed,
                plan,
                device,
                max_matvecs,
                *pairs,
                beyond,
                krylov=getattr(first, "_krylov", None),
                probability=asked,
            )
            values, vectors, bounds, converged, ritz_gaps, residuals, reached, edges = found
            certified = reached is not None
            if products is not None:  # pairs the search added have no product yet
                products = torch.cat(
                    [products, products.new_full((n, len(values) - m0), math.nan)], dim=1
                )
        except KeyboardInterrupt:
            interrupted = _interrupt.keep_partial()
            certified = False
            reached = None
    if hasattr(first, "_krylov"):
        object.__setattr__(first, "_krylov", None)  # the main basis is not needed any more
    hnorm = max([hnorm] + [abs(float(x)) for x in values] + [abs(x) for x in beyond])
    true_residuals = False
    if plan.dtype != torch.float64 and len(values):
        # Vectors combined from a float32 basis are orthonormal only to float32 rounding: make
        # them orthonormal in float64, so that the Rayleigh-Ritz values below are those of an
        # orthonormal set and the residuals are those of the vectors returned (from fresh products).
        vectors = torch.linalg.qr(vectors)[0]
        products = None
    if not interrupted and len(values):
        try:
            if products is None:
                HV = count(vectors)
            else:
                # The run's own products (float64 combinations of what the operator returned)
                # give H V without a product per pair; only pairs the search added need one.
                HV = products.to(vectors.dtype).clone()
                missing = [i for i in range(HV.shape[1]) if bool(torch.isnan(HV[:, i]).any())]
                if missing:
                    HV[:, missing] = count(vectors[:, missing])
            # Rayleigh-Ritz on the pairs' span (free: H V is needed for the residuals anyway):
            # pairs found by different runs couple through the residuals of the ones deflated
            # (a copy found to an eigenvalue accuracy of r^2/gap has residual r); rotating by the
            # eigenvectors of V^T H V removes that coupling, leaving each pair its own residual.
            G = vectors.T @ HV
            G = 0.5 * (G + G.T)
            rr_values, W = torch.linalg.eigh(G.cpu())
            W = W.to(device=HV.device, dtype=HV.dtype)
            vectors, HV = vectors @ W, HV @ W
            rr = rr_values.numpy()
            # eigh sorts ascending: carry each pair's bookkeeping to its rotated successor (the
            # rotation mixes only pairs of (nearly) equal value, which sort alike)
            perm = np.argsort(values, kind="stable")
            bounds, converged, ritz_gaps = bounds[perm], converged[perm], ritz_gaps[perm]
            values = rr
            vectors = vectors.contiguous()
            residuals = (
                torch.linalg.vector_norm(
                    HV - vectors * torch.as_tensor(values, dtype=HV.dtype, device=HV.device), dim=0
                )
                .cpu()
                .numpy()
            )
            true_residuals = True
        except KeyboardInterrupt:
            interrupted = _interrupt.keep_partial()
    if not true_residuals and len(residuals) != len(values):
        residuals = bounds.copy()
    # The search returns every pair it found: the wanted ones are chosen after the Rayleigh-Ritz
    # (a near-double eigenvalue's two halves, one from the main run and one from the search, are
    # resolved there); the others estimate the next eigenvalues.
    wanted = np.sort(_select(values, which, k)) if len(values) else np.zeros(0, dtype=int)
    rest = np.setdiff1d(np.arange(len(values)), wanted)
    rest_values, rest_res = values[rest], residuals[rest]
    values, vectors, bounds = values[wanted], vectors[:, wanted], bounds[wanted]
    converged, ritz_gaps, residuals = converged[wanted], ritz_gaps[wanted], residuals[wanted]
    # Bounds from the true residuals: min(r, r^2 / gap), the gap to the nearest *distinct* known
    # eigenvalue estimate. Copies of a repeated eigenvalue (within their residuals of each other)
    # form a cluster, and a Ritz value's distance to the cluster's eigenvalue is bounded by
    # r^2 over the distance to the rest of the spectrum.
    others = np.concatenate([values, rest_values, np.asarray(beyond, dtype=np.float64)])
    other_res = np.concatenate([residuals, rest_res, np.zeros(len(beyond))])
    # The Lanczos run that found a pair saw the Ritz values around it: its gap to them counts
    # too (the copies of a cluster are deflated out of the run that found the next copy).
    gaps = ritz_gaps.copy() if len(ritz_gaps) == len(values) else np.full(len(values), np.inf)
    for i, v in enumerate(values):
        d = np.abs(others - v)
        distinct = d > (other_res + residuals[i])
        distinct[i] = False
        if distinct.any():
            gaps[i] = min(gaps[i], float(d[distinct].min()))
        # An eigenvalue the search did not see lies short of its edge (_search_edges).
        for edge, side in zip(edges, _sides(which)):
            key = abs(v) if which == "largest_magnitude" else (v if side == "largest" else -v)
            if key > edge:
                gaps[i] = min(gaps[i], float(key - edge))
    with np.errstate(divide="ignore", invalid="ignore"):
        true_bounds = np.minimum(residuals, np.where(gaps > 0, residuals**2 / gaps, np.inf))
    if true_residuals:
        dtype = getattr(op, "dtype", torch.float64)
        eps = (
            torch.finfo(dtype).eps
            if isinstance(dtype, torch.dtype) and dtype.is_floating_point
            else 2.2e-16
        )
        scale = np.maximum(np.abs(values), FLOOR * hnorm)
        # A product in float32 carries ~eps ||H|| of rounding: no residual goes below that.
        attainable = np.maximum(tol * scale, 100 * eps * hnorm)
        converged = converged & (true_bounds <= attainable)
        if certified and not interrupted:
            before = converged.copy()
            try:
                _refine(
                    count,
                    max_matvecs,
                    plan,
                    values,
                    vectors,
                    residuals,
                    gaps,
                    attainable,
                    converged,
                    true_bounds,
                )
            except KeyboardInterrupt:
                interrupted = _interrupt.keep_partial()
            bounds = np.where(converged & ~before, true_bounds, bounds)
        # No bound below the rounding of the products themselves (a few eps of the operator's
        # precision) and of the float64 reductions over n entries.
        rounding = (4 * eps + math.sqrt(n) * torch.finfo(torch.float64).eps) * hnorm
        bounds = np.where(
            converged, np.maximum(np.maximum(bounds, true_bounds), rounding), residuals
        )
    converged = converged & certified
    order = np.argsort(-values, kind="stable")
    result = EigenResult(
        eigenvalues=values[order].copy(),
        eigenvectors=vectors[:, order].contiguous(),
        residual_norms=residuals[order].copy(),
        error_bounds=bounds[order].copy(),
        converged=converged[order].copy(),
        matvecs=count.done,
        which=which,
        tol=tol,
        seed=seed,
        num_params=n,
        interrupted=interrupted,
        mode=operator_mode(op),
        basis_dtype=plan.dtype_name,
        basis_device=str(plan.device),
        ncv=plan.ncv,
        memory_estimate_bytes=int(estimate),
        miss_probability=asked,
        miss_bound=reached if certified else None,
    )
    if not result.all_converged and not interrupted:  # an interrupted result is flagged as such
        bad = int((~result.converged).sum())
        why = (
            ""
            if certified
            else " (or the search for missed copies of repeated eigenvalues did not finish)"
        )
        warnings.warn(
            f"{bad} of {len(values)} eigenpairs did not reach tol={tol:g} after {count.done} Hessian-vector "
            f"products{why}, worst error bound {fmt(float(np.max(result.error_bounds)))}. Raise max_matvecs "
            f"(or ncv), or loosen tol; unconverged pairs are flagged in .converged.",
            RuntimeWarning,
            stacklevel=2,
        )
    return result


# Products one refinement of an unconverged pair may take (see _refine).
REFINE_STEPS = 8


def _refine(
    count: CountedProducts,
    max_matvecs: int,
    plan: BasisPlan,
    values: np.ndarray,
    vectors: torch.Tensor,
    residuals: np.ndarray,
    gaps: np.ndarray,
    attainable: np.ndarray,
    converged: np.ndarray,
    true_bounds: np.ndarray,
) -> None:
    """Spend budget left on pairs the search certified but whose own bound misses ``tol`` (in place).

    A near-double eigenvalue's two halves, one from the main run and one from the search, are
    resolved by the final Rayleigh-Ritz, but the main run's vector keeps its components along the
    rest of the spectrum (a residual 3x the distance between the two). A short Lanczos run
    started from the pair's vector (its Krylov space has the pair's eigenvector as its dominant
    component) converges to it in a few products; the Ritz value nearest the pair's is taken,
    its residual is exact (from the run's own products), and its bound uses the pair's gap less
    the distance it moved. Only pairs standing clear of the other pairs returned (no other within
    its gap) are refined, so copies of a repeated eigenvalue are left as they are; a pair
    refined is changed only where its bound then meets ``tol``. Needs room for ``2 REFINE_STEPS``
    float64 vectors: only where the main run kept its products (the same memory)."""
    if not plan.keep_products:
        return
    for i in np.flatnonzero(~converged):
        if max_matvecs - count.done < 2 or not math.isfinite(gaps[i]) or gaps[i] <= 0:
            continue
        others = np.delete(values, i)
        if others.size and float(np.min(np.abs(others - values[i]))) < gaps[i]:
            continue
        Q = [vectors[:, i] / vectors[:, i].norm()]
        HQ: list[torch.Tensor] = []
        best = None
        for _ in range(min(REFINE_STEPS, max_matvecs - count.done)):
            HQ.append(count(Q[-1].unsqueeze(1)).squeeze(1))
            B, HB = torch.stack(Q, 1), torch.stack(HQ, 1)
            G = B.T @ HB
            theta, S = torch.linalg.eigh(0.5 * (G + G.T))
            j = int(torch.argmin((theta - float(values[i])).abs()))
            y, hy = B @ S[:, j], HB @ S[:, j]
            r = float((hy - theta[j] * y).norm())
            gap = gaps[i] - abs(float(theta[j]) - float(values[i]))
            bound = min(r, r * r / gap) if gap > 0 else r
            best = (float(theta[j]), y, r, bound)
            if bound <= attainable[i]:
                break
            w = HQ[-1]
            for _ in range(2):
                w = w - B @ (B.T @ w)
            if float(w.norm()) <= 1e-12 * float(HQ[-1].norm()):
                break
            Q.append(w / w.norm())
        if best is not None and best[3] <= attainable[i]:
            values[i], residuals[i], true_bounds[i] = best[0], best[2], best[3]
            vectors[:, i] = best[1].to(vectors.dtype)
            converged[i] = True


def _side_keys(theta: np.ndarray, inner: str) -> list[float]:
    """The check run's Ritz values as "larger is more wanted" keys.

    [top] for "largest", [-bottom] for "smallest", [top, -bottom] for "both" (one value: taken as
    the top)."""
    if inner == "largest":
        return [float(theta[0])]
    if inner == "smallest":
        return [-float(theta[-1])]
    return [float(theta[0]), -float(theta[-1])][: len(theta)]


def _search_edges(
    values: np.ndarray,
    bounds: np.ndarray,
    residuals: np.ndarray,
    which: str,
    k: int,
    inner: str,
    tol: float,
    norm: float,
) -> list[float]:
    """Per end of the check run, the key beyond which the search must exclude a missed eigenvalue.

    Below the k-th key less its error bound (a missed eigenvalue there would belong among the
    wanted), and below each wanted pair's key less ``r**2 / (EDGE_MARGIN * tol * scale)``: a pair's bound
    ``r**2 / gap`` holds only while no other eigenvalue lies within ``gap`` of it, and an
    eigenvalue the runs did not see could lie just inside the pair's residual interval, on
    either side of the k-th value (a near-double top, 1e-3 relatively apart: the Ritz value sat
    between the two with a residual 3x their distance, and was flagged converged 300x off).
    Excluding that interval leaves each pair a gap large enough for its bound to meet ``tol``."""
    out = []
    for end in ["largest", "smallest"] if inner == "both" else [inner]:
        if which == "largest_magnitude":
            key = np.abs(values)
        else:
            key = values if end == "largest" else -values
        order = np.argsort(-key, kind="stable")[: min(k, len(key))]
        j = order[-1]
        edge = float(key[j] - bounds[j])
        for i in order:
            target = EDGE_MARGIN * tol * max(abs(float(values[i])), FLOOR * norm)
            if residuals[i] > target:
                edge = min(edge, float(key[i] - residuals[i] ** 2 / target))
        out.append(edge)
    return out


def _edge(threshold: float, side: str) -> float:
    """The eigenvalue a missed one must reach on ``side``, from its "larger is more wanted" key."""
    return threshold if side == "largest" else -threshold


def christoffel(T: np.ndarray, beta: float, x: float, closed: float = 0.0) -> float:
    """``sum_{i<=d} p_i(x)**2`` over the orthonormal Lanczos polynomials ``p_0 = 1, ..., p_d`` of a run.

    ``T`` is the run's ``d x d`` tridiagonal and ``beta`` its last residual norm: ``p_i(H) q_1`` is
    the run's ``(i+1)``-th basis vector, so every polynomial ``p`` of degree ``<= d`` with ``p(x) = 1``
    has ``||p(H) q_1||**2 >= 1 / christoffel(T, beta, x)`` (the Christoffel function of the start
    vector's spectral measure). Stops adding terms past 1e200 (a lower bound: the sum only grows)
    and returns ``inf`` where the Krylov space closed (``q_1`` lies in an invariant subspace: an
    off-diagonal at most ``closed``)."""
    alpha = np.diag(T)
    betas = np.append(np.diag(T, 1), beta)
    prev, cur, total = 0.0, 1.0, 1.0
    for i in range(len(alpha)):
        if not betas[i] > closed:
            return math.inf
        prev, cur = cur, ((x - alpha[i]) * cur - (betas[i - 1] * prev if i else 0.0)) / betas[i]
        total += cur * cur
        if total > 1e200:
            break
    return total


def miss_probability(
    T: np.ndarray, beta: float, edge: float, free: int, *, upper: bool, closed: float = 0.0
) -> float:
    """A bound on the probability that a Lanczos run from a random start missed an eigenvalue beyond ``edge``.

    The run is ``T`` (its ``d x d`` tridiagonal, no restart) and ``beta`` (its last residual norm),
    on an operator ``A`` from a Gaussian start in a space of ``free`` dimensions; "beyond" is above
    ``edge`` where ``upper``, else below. Every eigenvalue of ``T`` must be short of ``edge`` (else
    1 is returned: something is there).

    Why: let ``A u = lambda u`` with ``lambda`` at or beyond ``edge`` and ``c = u . q_1``. For any
    polynomial ``p`` of degree ``<= d``, ``|c p(lambda)| = |u . p(A) q_1| <= ||p(A) q_1||``, so
    ``c**2 <= 1 / K(lambda)`` with ``K`` the Christoffel sum (:func:`christoffel`). ``K`` is computed
    from the run alone, and it grows with the distance from the Ritz values (every zero of
    ``p_0 ... p_d`` lies between the smallest and largest eigenvalue of ``T``), so ``K(edge)``
    bounds ``K(lambda)`` from below for every ``lambda`` beyond ``edge``. A Gaussian start's
    ``c**2`` is Beta(1/2, (free-1)/2) distributed, and ``P(c**2 <= e) <= 2 sqrt(e) / B(1/2,
    (free-1)/2) <= sqrt(2 free e / pi)`` (Wendel's inequality), whatever the spectrum: a missed
    eigenvalue beyond ``edge`` needs ``c**2 <= 1 / K(edge)``, which has at most that probability.
    (Exact arithmetic; the run reorthogonalizes fully, so its Krylov relation holds to rounding.)
    """
    ritz = np.linalg.eigvalsh(T)
    if len(ritz) == 0 or not (edge > ritz[-1] if upper else edge < ritz[0]):
        return 1.0
    K = christoffel(T, beta, edge, closed)
    return float(min(1.0, math.sqrt(2.0 * free / (math.pi * K))))


def combined_miss_probability(bounds: list[float]) -> float:
    """Fisher's combination of the miss bounds of independent random starts on one operator.

    Where an eigenvalue beyond the edge exists, each start's bound ``b_i`` is at least
    ``W_i = sqrt(2 free c_i**2 / pi)``, and the ``W_i`` are independent with ``P(W_i <= w) <= w``
    (:func:`miss_probability`). So ``-sum log b_i`` is stochastically at most a Gamma(R, 1)
    variable, and ``P(prod W_i <= x) <= x sum_{j<R} log(1/x)**j / j!``: the probability that R
    starts all missed it, given what they showed."""
    x = float(np.prod(bounds)) if bounds else 1.0
    if x >= 1.0:
        return 1.0
    if x <= 0.0:
        return 0.0
    t = -math.log(x)
    return float(min(1.0, x * sum(t**j / math.factorial(j) for j in range(len(bounds)))))


def _krylov_edges(
    krylov: tuple[torch.Tensor, np.ndarray, np.ndarray],
    found: np.ndarray,
    edges: list[float],
    sides: list[str],
    norm: float = 0.0,
) -> list[float] | None:
    """Edges for searching the complement of the main run's whole basis instead of the pairs'.

    ``krylov`` is the main run's basis ``Q`` (rows), the Ritz values ``theta`` of ``Q^T H Q`` and
    their residual norms ``rho``. In the basis (Ritz vectors, complement of ``Q``), ``H`` is
    ``[[diag(theta), s r^T], [r s^T, D]]`` with ``D`` the compression of ``H`` to the complement
    and ``r`` the run's last residual (``|s_i| ||r|| = rho_i``). By the inertia of the Schur
    complement (Haynsworth), the number of eigenvalues of ``H`` above ``t`` is the number of Ritz
    values above ``t`` plus that of ``D - g(t) u u^T`` (``u = r/||r||``, ``g(t) = sum_i rho_i^2 /
    (theta_i - t)``). So where the only Ritz values beyond an edge are the pairs found, ``H`` has
    no other eigenvalue beyond it as soon as ``D`` has none beyond the edge moved inwards by the
    rank-one term (``max(0, -g)`` at the top, ``max(0, g)`` at the bottom): exactly, whatever the
    residuals. Returns those moved edges, or None where a Ritz value that is not a pair found lies
    beyond an edge.

    A float32 basis holds that decomposition only up to its rounding: the stored vectors are
    orthonormal and satisfy the Lanczos relation to about ``eps32 ||H||`` per vector, so ``H`` is
    within ``margin = 10 m eps ||H||`` (``m`` vectors, ``eps`` of the basis's dtype; Weyl) of an
    operator for which it is exact: the count is taken at the edge moved inwards by the margin,
    and the compression searched (itself within the margin of the exact one) must clear that
    less the margin again (``norm``: an estimate of ``||H||``)."""
    Q, theta, rho = krylov
    margin = 10 * Q.shape[0] * torch.finfo(Q.dtype).eps * norm
    out = []
    for edge, side in zip(edges, sides):
        upper = side == "largest"
        edge = edge - margin if upper else edge + margin
        beyond = theta > edge if upper else theta < edge
        if int(beyond.sum()) != int((found > edge if upper else found < edge).sum()):
            return None
        if np.any(theta == edge):
            return None
        g = float(np.sum(rho**2 / (theta - edge)))
        out.append(edge - max(0.0, -g) - margin if upper else edge + max(0.0, g) + margin)
    return out


def _find_missed(
    count: CountedProducts,
    n: int,
    k: int,
    which: str,
    tol: float,
    seed: int,
    plan: BasisPlan,
    device,
    max_matvecs: int,
    values: np.ndarray,
    vectors: torch.Tensor,
    bounds: np.ndarray,
    converged: np.ndarray,
    ritz_gaps: np.ndarray,
    residuals: np.ndarray,
    beyond: list[float],
    krylov: tuple[torch.Tensor, np.ndarray, np.ndarray] | None = None,
    probability: float = MISS_PROBABILITY,
):
    """Search the complement of the pairs found for eigenvalues that belong among the wanted ones (hidden copies of repeated eigenvalues, or values a restart lost), adding each and searching again.

    Returns every pair found (the first ``len(values)`` are those given; the wanted ones are
    selected after a Rayleigh-Ritz over all of them: a pair found by the search can be the
    other half of a near-double eigenvalue whose first half is pushed out), the failure
    probability the search reached (``None``: it did not finish; at most ``probability``
    otherwise), and per end the key beyond which nothing was missed (``_search_edges``). The
    values a search run saw short of the edges are appended to ``beyond``."""
    found_values, found_vectors = values.copy(), vectors
    found_bounds, found_conv, found_gaps = bounds.copy(), converged.copy(), ritz_gaps.copy()
    found_res = residuals.copy()
    certified_edges: list[float] = []

    def finish(reached: float | None):
        # Every pair found stays deflated during the search and is returned: the wanted ones are
        # chosen after the final Rayleigh-Ritz; the others estimate the next eigenvalues.
        return (
            found_values,
            found_vectors,
            found_bounds,
            found_conv,
            found_gaps,
            found_res,
            reached,
            certified_edges if reached is not None else [],
        )

    sides = _sides(which)
    inner = "both" if len(sides) == 2 else sides[0]
    # A search run is one Krylov space of its start (a thick restart would end what the bound
    # knows), so it may fill a basis as large as the memory the main run's basis and kept
    # products were planned in: twice the basis where products were kept (the whole-basis
    # round holds the main basis beside its own, so it keeps to the main run's size).
    longer = dataclasses.replace(
        plan, ncv=2 * plan.ncv + 1 if plan.keep_products else plan.ncv, keep_products=False
    )
    shorter = dataclasses.replace(plan, keep_products=False)
    # Per end: the bounds of the starts that filled their basis since the pairs last changed
    # (stage), combined by Fisher's method (combined_miss_probability); each test has its own
    # share w of ``probability``: 1/2 for the whole-basis round, 1/2**(stage + start + 3) for the
    # start-th test of a stage after it (the shares sum to at most 1, so the union of all tests
    # stays within ``probability``). The bound reported is the stopping test's combined bound
    # over its w: the smallest probability at which the search would have stopped there; since
    # P(test i certifies at x * w_i while something was missed) <= x * w_i, it is itself a bound.
    missed: list[list[float]] = [[] for _ in sides]
    stage = 0
    for round_ in range(n):
        left = max_matvecs - count.done
        if found_vectors.shape[1] >= n:
            return finish(0.0)
        if left < 2:
            return finish(None)
        norm = float(np.abs(np.concatenate([found_values, beyond])).max())
        # What is certified: no eigenvalue beyond these edges was missed (other than the pairs
        # found), so every value returned is within its bound of the true one, with its
        # multiplicity, and its gap to anything unseen is at least its distance to the edge.
        keys = _search_edges(found_values, found_bounds, found_res, which, k, inner, tol, norm)
        certified_edges[:] = keys
        edges = [_edge(th, side) for th, side in zip(keys, sides)]
        # The first round searches the complement of the main run's whole Krylov basis where
        # that certifies more (no eigenvalue beyond the k-th less its bound: see _krylov_edges):
        # its top is lower than that of the complement of the pairs, so a fresh start clears it
        # in fewer products.
        whole = (
            _krylov_edges(krylov, found_values, edges, sides, norm)
            if round_ == 0 and krylov is not None
            else None
        )
        Q = krylov[0] if whole is not None and krylov is not None else found_vectors.T
        if whole is not None:
            edges = whole

        def deflated(X: torch.Tensor, Q=Q) -> torch.Tensor:
            if Q.dtype == torch.float64 and Q.device == X.device:
                X = X - Q.T @ (Q @ X)
                Y = count(X)
                return Y - Q.T @ (Q @ Y)
            # a float32 or host-held main basis: projected a slice at a time, in float64
            X = project_out(X.squeeze(1), Q).unsqueeze(1)
            return project_out(count(X).squeeze(1), Q).unsqueeze(1)

        start = gaussian(n, 1, seed + 7919 * (round_ + 1), device)
        start = project_out(start.squeeze(1), Q)
        if float(start.norm()) <= 1e-8:
            return finish(0.0)
        free = n - Q.shape[0]  # the dimension the start is random in
        state: dict[str, Any] = {
            "bounds": [1.0] * len(sides),
            "clear": False,
            "crossed": False,
            "reached": None,
        }
        started = count.done

        def decided(
            theta: np.ndarray,
            residual: np.ndarray,
            krylov_run,
            edges=edges,
            state=state,
            whole=whole,
            free=free,
            norm=norm,
            stage=stage,
            missed=missed,
        ) -> bool:
            # Nothing missed, with probability: see miss_probability. Only while the run's
            # basis is the Krylov space of its random start (no thick restart).
            if krylov_run is None:
                return False
            T, beta = krylov_run
            state["bounds"] = [
                miss_probability(T, beta, e, free, upper=side == "largest", closed=1e-12 * norm)
                for e, side in zip(edges, sides)
            ]
            weight = 0.5 if whole is not None else 0.5 ** (stage + len(missed[0]) + 3)
            combined = [combined_miss_probability(m + [b]) for m, b in zip(missed, state["bounds"])]
            state["clear"] = all(c <= probability * weight for c in combined)
            if state["clear"]:
                state["reached"] = max(combined) / weight
            if whole is not None and not state["clear"]:
                # A Ritz value of the compression beyond its edge: inconclusive (it may be a
                # copy); the complement of the pairs is searched next.
                ritz = np.linalg.eigvalsh(T)
                state["crossed"] = any(
                    (ritz[-1] >= e) if side == "largest" else (ritz[0] <= e)
                    for e, side in zip(edges, sides)
                )
            return state["clear"] or state["crossed"]

        def stop_converged(
            theta: np.ndarray,
            residual: np.ndarray,
            thresholds=keys,
            started=started,
            free=free,
            norm=norm,
            found_values=found_values,
            found_bounds=found_bounds,
        ) -> bool:
            # A converged value short of the edge says nothing about a copy beyond it; one
            # beyond it is trusted after MIN_CHECK_STEPS, and once its bound also holds against
            # the pairs found (deflated, so the run's own Ritz gaps do not see them).
            keys = _side_keys(np.sort(theta)[::-1], inner)
            if count.done - started < min(MIN_CHECK_STEPS, free) or not any(
                t >= th for t, th in zip(keys, thresholds)
            ):
                return False
            for t, r in zip(theta, residual):
                d = np.abs(found_values - t)
                distinct = d > r + found_bounds
                gap = float(d[distinct].min()) if distinct.any() else math.inf
                if min(r, r * r / gap) > tol * max(abs(float(t)), FLOOR * norm):
                    return False
            return True

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            check = lanczos_extreme(
                deflated,
                n,
                k=1,
                which=inner,
                tol=tol,
                seed=seed,
                max_matvecs=min(left, (shorter if whole is not None else longer).ncv),
                ncv=(shorter if whole is not None else longer).ncv,
                device=device,
                start=start,
                decided=decided,
                deflate=Q.T,
                min_steps=2,
                stop_converged=stop_converged,
                norm=norm,
                plan=shorter if whole is not None else longer,
            )
        if check.interrupted:
            raise KeyboardInterrupt
        if whole is not None:
            if state["clear"]:
                return finish(state["reached"])
            continue  # inconclusive: search the complement of the pairs
        entered = []
        for j, rho in enumerate(check.eigenvalues):
            side = "largest" if inner == "largest" or (inner == "both" and j == 0) else "smallest"
            if inner == "both" and len(check.eigenvalues) == 1:
                side = "largest" if rho >= 0 else "smallest"
            if which == "largest_magnitude":
                kth = np.sort(np.abs(found_values))[::-1][min(k, len(found_values)) - 1]
                slack = float(check.error_bounds[j]) + float(
                    found_bounds[np.argmin(np.abs(found_values))]
                )
                belongs = abs(rho) + slack >= kth
            else:
                key = found_values if side == "largest" else -found_values
                kth = np.sort(key)[::-1][min(k, len(key)) - 1]
                slack = float(check.error_bounds[j]) + float(
                    found_bounds[np.argmin(np.abs(key - kth))]
                )
                belongs = (rho if side == "largest" else -rho) + slack >= kth
            # Beyond the edge, a value not among the wanted still joins the pairs: it is the
            # nearest other eigenvalue of one of them (its gap), and deflated from then on.
            edge_key = keys[sides.index(side)] if side in sides else keys[0]
            key_rho = (
                abs(rho) if which == "largest_magnitude" else (rho if side == "largest" else -rho)
            )
            if belongs or key_rho > edge_key:
                entered.append(j)
            else:
                beyond.append(float(rho))
        if not entered:
            if getattr(check, "_exhaustive", False):
                return finish(0.0)
            if state["clear"]:
                return finish(state["reached"])
            # This start's Krylov space filled up (or the budget ran out) before the bound was
            # met: what it excluded stands, and a fresh independent start continues.
            missed = [m + [b] for m, b in zip(missed, state["bounds"])]
            continue
        missed = [[] for _ in sides]
        stage += 1
        # What entered joins the pairs (orthogonal to them by construction); the pairs pushed out
        # of the wanted set are kept aside as estimates of the next eigenvalues.
        new_vectors = check.eigenvectors[:, entered].to(found_vectors.dtype)
        new_vectors = orthogonalize(new_vectors, found_vectors.T)
        new_vectors = new_vectors / torch.linalg.vector_norm(new_vectors, dim=0, keepdim=True)
        found_values = np.concatenate([found_values, np.asarray(check.eigenvalues)[entered]])
        found_vectors = torch.cat([found_vectors, new_vectors], dim=1)
        found_bounds = np.concatenate([found_bounds, np.asarray(check.error_bounds)[entered]])
        found_res = np.concatenate([found_res, np.asarray(check.residual_norms)[entered]])
        found_conv = np.concatenate([found_conv, np.asarray(check.converged)[entered]])
        check_gaps = np.asarray(getattr(check, "_gaps", np.full(len(check.eigenvalues), np.inf)))
        found_gaps = np.concatenate([found_gaps, check_gaps[entered]])
    return finish(None)
