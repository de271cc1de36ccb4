"""Stochastic trace estimation: Hutchinson and Hutch++ (Meyer, Musco, Musco & Woodruff, 2021)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import check_arguments
from .._results import ResultMixin, fmt
from ..progress import Progress, as_callback, with_progress
from ..types import OperatorLike, TraceMethod
from . import memory
from .lanczos import CountedProducts, RademacherStream, operator_mode
from .memory import BASIS_SHARE, PROBE_BYTES, fmt_bytes, notice, plan_block, time_text

METHODS = ("hutch++", "hutchinson")


@dataclass(frozen=True)
class TraceResult(ResultMixin):
    """An estimate of tr(H) with its standard error (:func:`trace`).

    Attributes:
        estimate: the estimated trace.
        standard_error: the standard error of the stochastic part (0 when computed exactly).
        matvecs: operator products spent.
        method: ``"hutch++"``, ``"hutchinson"``, ``"exact"`` (``matvecs >= n``), or
            ``"hutch++ (sketch rank r)"`` when the sketch found a rank below its size.
        seed: the seed of the Rademacher probes.
        num_params: the operator's size.
        interrupted: Ctrl-C stopped the run: the estimate is from the probes finished.
        mode: ``"eval"``/``"train"`` for a :class:`HessianOperator`, else ``None``.

    Examples:
        >>> import torch, lossdoctor as ld
        >>> r = ld.trace(torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64)), matvecs=6)
        >>> r.estimate, r.standard_error, r.method
        (21.0, 0.0, 'exact')
    """

    estimate: float
    standard_error: float
    matvecs: int
    method: str
    seed: int
    num_params: int
    interrupted: bool = False
    mode: str | None = None  # "eval"/"train" for a HessianOperator
    block: int | None = None  # probes multiplied at once (chosen from the memory available)
    memory_estimate_bytes: int | None = None  # the call's own vectors: one block, the sketch basis

    def __str__(self) -> str:
        memory = (
            f"; {self.block} probes per block, {fmt_bytes(self.memory_estimate_bytes)} estimated"
            if self.block is not None
            else ""
        )
        return (
            f"Hessian trace ~ {fmt(self.estimate)} +/- {fmt(self.standard_error)} "
            f"({self.method}, {self.matvecs} Hessian-vector products, seed {self.seed}"
            + (f", {self.mode} mode" if self.mode else "")
            + memory
            + ")"
        )


def _blocks(total: int, block: int):
    start = 0
    while start < total:
        yield start, min(total, start + block)
        start += block


def _hutchinson_terms(
    op,
    probes: RademacherStream,
    count: int,
    block: int,
    counter: CountedProducts,
    terms: list[float],
    project: torch.Tensor | None = None,
) -> None:
    """Append ``g^T H g`` for ``count`` probes to ``terms``, drawing and multiplying ``block`` probes at a time (with ``project``: probes projected off its orthonormal columns)."""
    for a, c in _blocks(count, block):
        G = probes.take(c - a)
        if project is not None:
            G -= (project @ (project.T @ G.to(project.dtype))).to(G.dtype)
        terms.extend(torch.linalg.vecdot(G, counter(G), dim=0).tolist())


def _basis_dtype(op) -> torch.dtype:
    """float32 for operators that compute in float32 or less, float64 otherwise."""
    dtype = getattr(op, "dtype", torch.float64)
    return (
        torch.float32 if dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float64
    )


def _mean_and_error(terms: list[float]) -> tuple[float, float]:
    """The mean of ``terms`` and its standard error, widened by the Student-t factor of ``len(terms) - 1`` degrees of freedom so that +/- 3 standard errors is a 99.7% interval also for a handful of probes (3 probes: x3.2; 10: x1.4; 100: x1.02).

    Otherwise a sample standard deviation from few probes understates the error often enough to
    matter."""
    m = len(terms)
    mean = sum(terms) / m
    if m < 2:
        return mean, math.inf
    var = sum((t - mean) ** 2 for t in terms) / (m - 1)
    from scipy.stats import t as student_t

    widen = float(student_t.ppf(0.99865, m - 1)) / 3.0
    return mean, math.sqrt(var / m) * widen


def _extend_basis(Q: torch.Tensor, rank: int, B: torch.Tensor, reference: float) -> int:
    """Append to ``Q[:, :rank]`` an orthonormal basis of the part of ``B``'s range orthogonal to it.

    Return the new rank.

    Rank-aware: a sketch of a rank-deficient operator has columns that are (numerically) inside
    the basis already. Orthonormalizing what is left of them would normalize rounding noise into
    vectors that are *not* orthogonal to the basis (the bias of issue 18), so directions whose
    singular value is below the rounding level of ``reference`` (the largest sketch column norm)
    are dropped: a dropped direction is still covered, without bias, by the projected
    Hutchinson probes. Two projections ("twice is enough"), then an SVD with a rank cut, then
    a final check that every kept vector is orthogonal to the basis.
    """
    eps = torch.finfo(Q.dtype).eps
    B = B.to(Q.dtype)
    for _ in range(2):
        if rank:
            B = B - Q[:, :rank] @ (Q[:, :rank].T @ B)
    if B.shape[1] == 0 or not torch.isfinite(B).all():
        return rank
    U, sing, _ = torch.linalg.svd(B, full_matrices=False)
    cut = max(1e3 * eps * math.sqrt(Q.shape[0]) * reference, torch.finfo(Q.dtype).tiny)
    U = U[:, sing > cut]
    if U.shape[1] == 0:
        return rank
    for _ in range(2):  # the SVD's vectors are orthonormal among themselves; re-project once more
        if rank:
            U = U - Q[:, :rank] @ (Q[:, :rank].T @ U)
        U, R = torch.linalg.qr(U)
        keep = (
            torch.diagonal(R).abs() > 0.5
        )  # a vector that lost half its norm was inside the basis
        U = U[:, keep]
        if U.shape[1] == 0:
            return rank
    room = min(U.shape[1], Q.shape[1] - rank)
    Q[:, rank : rank + room] = U[:, :room]
    return rank + room


def _exact_trace(op, n: int, block: int, counter: CountedProducts, device) -> float:
    """tr(H) from ``n`` products with the columns of the identity: exact up to rounding."""
    total = 0.0
    for a, c in _blocks(n, block):
        E = torch.zeros(n, c - a, dtype=torch.float64, device=device)
        E[torch.arange(a, c), torch.arange(c - a)] = 1.0
        total += float(torch.diagonal(counter(E)[a:c]).sum())
    return total


@with_progress("trace")
def trace(
    op: OperatorLike,
    matvecs: int = 100,
    method: TraceMethod = "hutch++",
    *,
    seed: int = 0,
    block: int | None = None,
    progress: Progress | bool | str | None = "auto",
) -> TraceResult:
    """Estimate tr(H) from ``matvecs`` products with Rademacher probes.

    Hutch++ spends a third of the products finding the dominant subspace, whose trace it takes
    exactly, and estimates the rest stochastically: far smaller error when a few eigenvalues
    dominate, as they do for trained networks. The standard error is that of the stochastic part.
    The sketch basis is orthonormal in every case: where the Hessian's rank is below the sketch
    size (over-parameterized networks on few samples) the dependent sketch columns are dropped
    and the products they would have cost go to more stochastic probes (``method`` then reads
    ``"hutch++ (sketch rank r)"``). With ``matvecs >= n`` (either method) the trace is computed
    exactly from the ``n`` columns of the identity, with standard error 0 and ``method="exact"``.
    Probes are drawn and multiplied ``block`` at a time. By default as many as the operator's
    ``max_block`` allows within an eighth of the memory available and at most 1 GiB (one probe
    costs about 36 bytes per parameter: an 11M-parameter ResNet-18 gets 2, a 100k-parameter
    model 16); the block is in the result. Once the gradient graphs are cached a bigger block is
    no faster. Hutchinson holds one block whatever ``matvecs`` is; Hutch++ also holds its sketch
    basis, an ``n`` by ``matvecs // 3`` matrix in the operator's precision (float32 for a float32
    model, and for a float64 one whose float64 sketch would not fit in 40% of the memory
    available); a sketch that does not fit even in float32 is refused with a ``MemoryError``
    that names what would (fewer ``matvecs``, or ``method="hutchinson"``). Where progress is
    shown and the call is expected to take 10 s or more, a one-line notice on stderr states the
    block, the memory and the time expected. Ctrl-C returns the estimate from the probes finished.

    Args:
        op: anything with ``.shape`` and ``op @ matrix`` (a :class:`HessianOperator`, a dense
            symmetric tensor).
        matvecs: the budget of operator products (at least 3 for Hutch++, 1 for Hutchinson).
        method: ``"hutch++"`` (default) or ``"hutchinson"``.
        seed: seed of the Rademacher probes.
        block: probes multiplied at once (default: the operator's ``max_block``).
        progress: called as ``progress(matvecs_done, matvecs)``; ``"auto"`` (default) shows a
            bar on a terminal for long runs, ``True`` always, ``False``/``None`` never.

    Returns:
        The estimate with its standard error and the products spent.

    Raises:
        ValueError: an unknown ``method``, or too few ``matvecs`` for it.

    Examples:
        >>> import torch, lossdoctor as ld
        >>> A = torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64))
        >>> ld.trace(A, matvecs=6).estimate  # matvecs >= n: exact
        21.0
        >>> r = ld.trace(torch.diag(torch.arange(1.0, 101.0)), matvecs=30, seed=0)
        >>> abs(r.estimate - 5050) < 3 * r.standard_error + 1e-6 * 5050
        True
    """
    check_arguments(op=op, matvecs=matvecs, seed=seed, block=block, progress=progress)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    n = int(op.shape[0])
    if matvecs < (3 if method == "hutch++" else 1):
        raise ValueError(
            f"{method} needs at least {3 if method == 'hutch++' else 1} matvecs, got {matvecs}."
        )
    device = getattr(op, "device", "cpu")
    block = plan_block(
        n, block=block, max_block=int(getattr(op, "max_block", None) or 16), device=device
    )
    sketch_dtype = _basis_dtype(op)
    sketch_bytes = 0
    if method == "hutch++" and matvecs < n:
        free = memory.available_bytes(device)
        sketch_bytes = n * (matvecs // 3) * torch.finfo(sketch_dtype).bits // 8
        if free is not None and sketch_bytes > BASIS_SHARE * free and sketch_dtype == torch.float64:
            sketch_dtype, sketch_bytes = torch.float32, sketch_bytes // 2
        if free is not None and sketch_bytes > BASIS_SHARE * free:
            raise MemoryError(
                f"The Hutch++ sketch basis does not fit: {matvecs // 3} vectors of {n:,} parameters in float32 need "
                f"{fmt_bytes(sketch_bytes)}, and {fmt_bytes(free)} is available on {device} (the basis may use "
                f"{BASIS_SHARE:.0%} of it). Use "
                + (
                    f"fewer matvecs (at most {most}), or "
                    if (most := 3 * int(BASIS_SHARE * free // (4 * n))) >= 3
                    else ""
                )
                + "method='hutchinson' (one block of probes whatever matvecs is)."
            )
    estimate = sketch_bytes + PROBE_BYTES * n * block
    budget = min(matvecs, n)

    def first_block(seconds: float) -> None:
        if seconds * budget >= memory.NOTICE_SECONDS:
            notice(
                as_callback(progress),
                f"trace: {n:,} parameters; {block} probes per block"
                + (
                    f", sketch {matvecs // 3} x {str(sketch_dtype).replace('torch.', '')}"
                    if sketch_bytes
                    else ""
                )
                + f" ({fmt_bytes(estimate)} estimated, {fmt_bytes(memory.available_bytes(device))} available); "
                f"{seconds:.2g} s per product, {budget} products (~{time_text(seconds * budget)}).",
            )

    if matvecs >= n:
        # n products give the exact trace: no estimator can beat that, and a sketch wider than
        # the space would be rank deficient by construction.
        counter = CountedProducts(op, n, as_callback(progress), first_block)
        value = _exact_trace(op, n, block, counter, device)
        return TraceResult(
            estimate=value,
            standard_error=0.0,
            matvecs=counter.done,
            method="exact",
            seed=seed,
            num_params=n,
            mode=operator_mode(op),
            block=block,
            memory_estimate_bytes=int(estimate),
        )
    counter = CountedProducts(op, matvecs, as_callback(progress), first_block)
    interrupted = False
    exact = 0.0
    sizes = 0.0  # sum of ||H q|| over the basis: the scale of the exact part's rounding error
    terms: list[float] = []
    label: str = method
    try:
        if method == "hutchinson":
            _hutchinson_terms(op, RademacherStream(n, seed, device), matvecs, block, counter, terms)
        else:
            # Memory: Q, an orthonormal basis of the sketch H S, is the one n-by-(matvecs/3)
            # matrix alive; it is built a block at a time, so H S itself never exists whole, and
            # probes and products exist a block at a time. Q is kept in the precision the
            # operator computes in (float32 for a float32 model): the products it feeds are no
            # more exact than that, and it halves the largest allocation. Everything else
            # stays float64.
            sketch = matvecs // 3
            probes = RademacherStream(n, seed, device)
            Q = torch.empty(n, sketch, dtype=sketch_dtype, device=device)
            rank, reference = 0, 0.0
            for a, c in _blocks(sketch, block):
                B = counter(probes.take(c - a))
                reference = max(reference, float(torch.linalg.vector_norm(B, dim=0).max()))
                rank = _extend_basis(Q, rank, B, reference)
                del B
            Q = Q[:, :rank]
            for a, c in _blocks(rank, block):
                Qb = Q[:, a:c].to(torch.float64)
                HQ = counter(Qb)
                exact += float(torch.linalg.vecdot(Qb, HQ, dim=0).sum())
                sizes += float(torch.linalg.vector_norm(HQ, dim=0).sum())
            if rank < sketch:
                label = f"hutch++ (sketch rank {rank})"
            _hutchinson_terms(
                op,
                RademacherStream(n, seed + 1, device),
                matvecs - sketch - rank,
                block,
                counter,
                terms,
                project=Q if rank else None,
            )
    except KeyboardInterrupt:
        interrupted = True
        if not terms:
            raise
    mean, err = _mean_and_error(terms)
    # The exact part is exact up to rounding: each q^T (H q) carries an error of about
    # sqrt(n) eps ||H q|| in the operator's precision. Where the stochastic part vanishes (the
    # sketch spans the whole range of a low-rank Hessian) that is the whole error.
    rounding = math.sqrt(n) * torch.finfo(sketch_dtype).eps * sizes
    err = math.sqrt(err**2 + rounding**2) if math.isfinite(err) else err
    return TraceResult(
        estimate=exact + mean,
        standard_error=err,
        matvecs=counter.done,
        method=label,
        seed=seed,
        num_params=n,
        interrupted=interrupted,
        mode=operator_mode(op),
        block=block,
        memory_estimate_bytes=int(estimate),
    )
