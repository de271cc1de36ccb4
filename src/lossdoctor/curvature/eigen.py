"""Extreme eigenpairs of a symmetric operator by thick-restart Lanczos (Wu & Simon, 2000).

One Krylov space serves both ends of the spectrum, so ``which="both"`` (what classifying a
critical point needs) costs little more than one end. Convergence is judged on each Ritz
value's error bound, min(r, r**2 / gap), with ``r`` the Lanczos residual norm and ``gap`` the
distance to the nearest other Ritz value, so no eigenvalue is reported as converged on a
residual test alone and none is reported silently when it is not.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_arguments
from .._results import ResultMixin, fmt
from ..progress import with_progress
from .lanczos import apply64, gaussian, operator_mode, orthogonalize

Progress = Callable[[int, int], None]
WHICH = ("largest", "smallest", "both")
# Eigenvalues smaller than this fraction of ||H|| are judged on absolute accuracy
# tol * FLOOR * ||H||: relative accuracy of near-zero eigenvalues is not attainable in float32.
FLOOR = 1e-3


@dataclass(frozen=True)
class EigenResult(ResultMixin):
    """Extreme eigenpairs, sorted by decreasing eigenvalue.

    ``eigenvectors[:, i]`` (float64, unit norm) belongs to ``eigenvalues[i]``.
    ``error_bounds[i]``: for a converged pair, min(r, r**2 / gap) estimates |lambda_i - eigenvalues[i]|
    (the gap estimated from the other Ritz values); for an unconverged pair it is the residual
    norm r, which only bounds the distance to the *nearest* eigenvalue, not necessarily the i-th.
    Each eigenvalue is a Rayleigh quotient, so the largest is <= lambda_max and the smallest
    >= lambda_min whatever the convergence.
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

    _skip_in_dict = ("eigenvectors",)

    @property
    def all_converged(self) -> bool:
        return bool(np.all(self.converged))

    @property
    def largest(self) -> float:
        return float(self.eigenvalues[0])

    @property
    def smallest(self) -> float:
        return float(self.eigenvalues[-1])

    def __str__(self) -> str:
        mode = f", {self.mode} mode" if self.mode else ""
        lines = [f"Hessian eigenpairs ({self.which}, {self.num_params} parameters{mode}, "
                 f"{self.matvecs} Hessian-vector products, tol {self.tol:g}, seed {self.seed})"]
        lines.append(f"{'#':>3}  {'eigenvalue':>14}  {'residual':>10}  {'error bound':>11}  converged")
        for i, (lam, res, bound, ok) in enumerate(zip(self.eigenvalues, self.residual_norms,
                                                      self.error_bounds, self.converged)):
            lines.append(f"{i:>3}  {lam:>14.7g}  {res:>10.2e}  {bound:>11.2e}  {'yes' if ok else 'NO'}")
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


def _bounds(theta: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    if len(theta) == 1:
        return residuals.copy()
    diffs = np.abs(theta[:, None] - theta[None, :])
    np.fill_diagonal(diffs, np.inf)
    gaps = diffs.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        quad = np.where(gaps > 0, residuals**2 / gaps, np.inf)
    return np.minimum(residuals, quad)


def lanczos_extreme(matmul: Callable[[torch.Tensor], torch.Tensor], n: int, *, k: int, which: str,
                    tol: float, seed: int, max_matvecs: int, ncv: int | None = None,
                    device: torch.device | str = "cpu",
                    progress: Progress | None = None) -> EigenResult:
    """Thick-restart Lanczos on ``matmul`` (float64 ``(n, 1)`` -> ``(n, 1)``)."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}.")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}.")
    n_wanted = min(n, 2 * k if which == "both" else k)
    k = min(k, n)
    if ncv is None:
        # Room for the wanted pairs plus a margin that keeps restarts rare; capped so the
        # float64 basis stays under ~1 GiB.
        cap = max(n_wanted + 3, int(2**30 // (8 * n)))
        ncv = min(n, max(2 * n_wanted + 10, 24), cap)
    ncv = int(min(n, max(ncv, n_wanted + 2)))
    max_matvecs = max(int(max_matvecs), 1)

    gen_seed = seed
    q = gaussian(n, 1, gen_seed, device).squeeze(1)
    # Rows 0..m-1 of ``store`` are the orthonormal Lanczos vectors. Allocated once for the
    # largest basis a restart allows: its pages are touched only as rows are written, and no
    # step copies the basis (growing it by concatenation held two copies at each step).
    store = torch.empty(ncv + 1, n, dtype=q.dtype, device=q.device)
    store[0] = q / q.norm()
    m = 1
    T = np.zeros((0, 0))
    b = np.zeros(0)  # H Q^T = Q^T T + r b^T
    r = None
    beta = 0.0
    matvecs = 0
    interrupted = False
    theta = np.zeros(0)
    S = np.zeros((0, 0))
    hnorm = 0.0

    def ritz() -> tuple[np.ndarray, np.ndarray]:
        return np.linalg.eigh(T)

    try:
        while True:
            # Extend the basis by one Lanczos vector.
            j = T.shape[0]
            q = store[m - 1]
            w = matmul(q.unsqueeze(1)).squeeze(1)
            matvecs += 1
            coupling = beta * b
            alpha = float(q @ w)
            w = w - alpha * q
            if j > 0:
                w = w - store[:m - 1].T @ torch.as_tensor(coupling, dtype=w.dtype, device=w.device)
            w = orthogonalize(w.unsqueeze(1), store[:m]).squeeze(1)
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
            done = bool(np.all(bounds[idx] <= tol * scale)) and len(idx) >= n_wanted
            if progress is not None:
                progress(matvecs, max_matvecs)
            if done or T.shape[0] >= n or matvecs >= max_matvecs:
                break

            if beta <= 1e-12 * max(hnorm, 1e-300):
                # Invariant subspace: continue from a fresh direction orthogonal to the basis.
                gen_seed += 1
                fresh = orthogonalize(gaussian(n, 1, gen_seed, device), store[:m]).squeeze(1)
                r = fresh / fresh.norm()
                beta = 0.0
                if m == store.shape[0]:  # invariant subspaces in a row at the restart size: rare
                    store = torch.cat([store, torch.empty_like(store[:1])])
                store[m] = r
                m += 1
                b = np.zeros(T.shape[0])
                continue

            if T.shape[0] >= ncv:
                # Thick restart: keep the wanted Ritz vectors and a few neighbours.
                keep = min(T.shape[0] - 1, n_wanted + max(2, (ncv - n_wanted) // 2))
                idx_keep = _wanted(theta, which, (keep + 1) // 2 if which == "both" else keep)
                Sk = S[:, idx_keep]
                store[:len(idx_keep)] = torch.as_tensor(Sk.T, dtype=store.dtype, device=store.device) @ store[:m]
                m = len(idx_keep)
                T = np.diag(theta[idx_keep])
                b = Sk.T @ b
            store[m] = r / beta
            m += 1
    except KeyboardInterrupt:
        interrupted = True
        if T.shape[0] == 0:
            raise

    basis = store[:min(m, T.shape[0])]
    theta, S = ritz()
    residuals = beta * np.abs(b @ S)
    idx = _wanted(theta, which, k)
    bounds = _bounds(theta, residuals)
    hnorm = max(hnorm, float(np.abs(theta).max()))
    scale = np.maximum(np.abs(theta[idx]), FLOOR * hnorm)
    converged = bounds[idx] <= tol * scale
    if T.shape[0] >= n:  # the Krylov space is the whole space: exact up to rounding
        converged = np.ones(len(idx), dtype=bool)
    # The gap estimate needs converged neighbours; otherwise only the residual bound is rigorous.
    bounds[idx] = np.where(converged, bounds[idx], residuals[idx])
    order = np.argsort(-theta[idx], kind="stable")
    idx = idx[order]
    vectors = (torch.as_tensor(S[:, idx], dtype=basis.dtype, device=basis.device).T @ basis).T
    result = EigenResult(
        eigenvalues=theta[idx].copy(), eigenvectors=vectors.contiguous(),
        residual_norms=residuals[idx].copy(), error_bounds=bounds[idx].copy(),
        converged=converged[order].copy(), matvecs=matvecs, which=which, tol=tol, seed=seed,
        num_params=n, interrupted=interrupted)
    if not result.all_converged:
        bad = int((~result.converged).sum())
        warnings.warn(
            f"{bad} of {len(idx)} eigenpairs did not reach tol={tol:g} after {matvecs} Hessian-vector "
            f"products (worst error bound {fmt(float(np.max(result.error_bounds)))}). Raise max_matvecs "
            f"(or ncv), or loosen tol; unconverged pairs are flagged in .converged.",
            RuntimeWarning, stacklevel=3)
    return result


@with_progress("eigenpairs")
def eigenpairs(op, k: int = 5, which: str = "largest", *, tol: float = 1e-6, seed: int = 0,
               max_matvecs: int | None = None, ncv: int | None = None,
               progress: Progress | bool | str | None = "auto") -> EigenResult:
    """The ``k`` extreme eigenpairs of a symmetric operator such as :func:`lossdoctor.hessian`.

    Args:
        op: anything with ``.shape`` and ``op @ matrix`` (a :class:`HessianOperator`, a dense
            symmetric tensor).
        k: eigenpairs per end of the spectrum (``which="both"`` returns ``2k``).
        which: ``"largest"`` or ``"smallest"`` (algebraic) or ``"both"``.
        tol: relative accuracy of each eigenvalue: the error bound must be below
            ``tol * max(|lambda|, 1e-3 * ||H||)``.
        seed: seed of the random start vector.
        max_matvecs: budget of operator products (default ``max(300, 40 k)``).
        ncv: largest Krylov basis kept before a thick restart (memory: ``ncv`` float64 vectors).
        progress: called as ``progress(matvecs_done, max_matvecs)`` after each product.
    """
    check_arguments(op=op, k=k, tol=tol, seed=seed, max_matvecs=max_matvecs, ncv=ncv, progress=progress)
    n = int(op.shape[0])
    device = getattr(op, "device", None) or (op.device if isinstance(op, torch.Tensor) else "cpu")
    if max_matvecs is None:
        max_matvecs = max(300, 40 * k)

    def matmul(x: torch.Tensor) -> torch.Tensor:
        return apply64(op, x)

    result = lanczos_extreme(matmul, n, k=k, which=which, tol=tol, seed=seed, max_matvecs=max_matvecs,
                             ncv=ncv, device=device, progress=progress)
    return dataclasses.replace(result, mode=operator_mode(op))
