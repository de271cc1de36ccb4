"""Sharpness of a minimum.

The top Hessian eigenvalue, the Hessian trace, and Keskar et al.'s (2017) epsilon-sharpness, the
largest loss increase within a box around the parameters.

Keskar's metric: with the box C = {z : |z_i| <= eps (|(A^+ theta)_i| + 1)},

    phi = 100 * (max_{y in C} L(theta + A y) - L(theta)) / (1 + L(theta)),

where A is the identity (full space) or a random n x p matrix (a p-dimensional subspace; here
with orthonormal columns, so A^+ = A^T). The inner maximum is found, as in the paper, with
L-BFGS-B on -L under the box bounds; it is a local maximum, so the value is a lower bound on
the true box maximum (exact for convex quadratics, whose maximum lies at a corner).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _interrupt
from .._checks import (
    check_arguments,
    check_bool,
    check_choice,
    check_float,
    check_floats,
    check_int,
    check_progress,
    check_seed,
    describe,
)
from .._results import ResultMixin, fmt
from ..curvature import eigenpairs, hessian, trace
from ..model_state import load_flat, preserved_model
from ..progress import Progress, as_callback, with_progress
from ..types import Mode, Reduction

METHODS = ("lambda_max", "trace", "epsilon")


@dataclass(frozen=True)
class EpsilonSharpness(ResultMixin):
    """One epsilon-sharpness value (Keskar et al.): ``value`` = 100 (max_loss - loss) / (1 + loss).

    Attributes:
        epsilon: the box size.
        space: ``"full"`` or ``"random-<p>"`` (a random p-dimensional subspace).
        value: the epsilon-sharpness.
        max_loss: the largest loss found in the box (a lower bound on the true maximum).
        loss: the loss at the centre.
        iterations: L-BFGS-B iterations run.
        evaluations: loss evaluations spent.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import noisy_regression
        >>> p = noisy_regression()
        >>> s = ld.sharpness(p.model, p.loss_fn, p.train_data, method="epsilon",
        ...                  subspace_dim=None)
        >>> [(e.epsilon, e.space, round(e.value, 3)) for e in s.epsilon]
        [(0.001, 'full', 0.15), (0.0005, 'full', 0.075)]
    """

    epsilon: float
    space: str  # "full" or "random-<p>"
    value: float
    max_loss: float
    loss: float
    iterations: int
    evaluations: int

    def __str__(self) -> str:
        return f"eps-sharpness({fmt(self.epsilon)}, {self.space}) = {fmt(self.value)}"


@dataclass(frozen=True)
class Sharpness(ResultMixin):
    """Sharpness of a model at its current parameters over the given data (:func:`sharpness`).

    Only the methods asked for are filled in; the others are ``None`` / empty.

    Attributes:
        loss: the mean loss over the data.
        num_params: trainable parameters.
        num_samples: samples in the data.
        mode: ``"eval"`` or ``"train"``.
        lambda_max: the top Hessian eigenvalue (``"lambda_max"``).
        lambda_max_error: the Lanczos error bound of the top eigenvalue.
        lambda_max_converged: whether it met ``tol``.
        trace: the Hessian trace (``"trace"``).
        trace_standard_error: its standard error.
        epsilon: the epsilon-sharpness values (``"epsilon"``), one per box size and space.
        interrupted: Ctrl-C: only the measurements finished are filled in.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import noisy_regression
        >>> p = noisy_regression()
        >>> s = ld.sharpness(p.model, p.loss_fn, p.train_data)
        >>> round(s.lambda_max, 2), s.trace is None
        (2.69, True)
    """

    loss: float
    num_params: int
    num_samples: int
    mode: str
    lambda_max: float | None = None
    lambda_max_error: float | None = None  # the Lanczos error bound of the top eigenvalue
    lambda_max_converged: bool | None = None
    trace: float | None = None
    trace_standard_error: float | None = None
    epsilon: list[EpsilonSharpness] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C: only the measurements finished are filled in

    def eps(self, epsilon: float, space: str = "full") -> float | None:
        """The epsilon-sharpness value for ``epsilon`` in ``space``.

        Args:
            epsilon: the box size.
            space: ``"full"`` or ``"random"`` (any random subspace).

        Returns:
            The value, or ``None`` when it was not measured.
        """
        for e in self.epsilon:
            if math.isclose(e.epsilon, epsilon) and e.space.startswith(space):
                return e.value
        return None

    def __str__(self) -> str:
        lines = [
            f"Sharpness at loss {fmt(self.loss)} ({self.num_params} parameters, "
            f"{self.num_samples} samples, {self.mode} mode)"
        ]
        if self.lambda_max is not None:
            lines.append(
                f"  lambda_max = {fmt(self.lambda_max)} (error bound {fmt(self.lambda_max_error)}"
                f"{'' if self.lambda_max_converged else ', NOT converged'})"
            )
        if self.trace is not None:
            lines.append(f"  trace      = {fmt(self.trace)} +- {fmt(self.trace_standard_error)}")
        lines += [f"  {e}" for e in self.epsilon]
        if self.interrupted:
            lines.append("  INTERRUPTED: the measurements not shown were not finished")
        return "\n".join(lines)


def _methods(method: str | Iterable[str]) -> list[str]:
    if isinstance(method, str):
        return [check_choice(method, "method", METHODS)]
    if not isinstance(method, (list, tuple)) or not method:
        raise TypeError(
            f"method must be one of {METHODS} or a non-empty list of them, got {describe(method)}."
        )
    return [check_choice(m, f"method[{i}]", METHODS) for i, m in enumerate(method)]


def _box_max(
    op, epsilon: float, basis: torch.Tensor | None, *, max_iter: int, seed: int
) -> tuple[float, int, int]:
    """Maximize the mean loss over the box around the current parameters with L-BFGS-B.

    Returns (max loss, iterations, loss evaluations). Parameters are moved; the caller restores."""
    from scipy.optimize import minimize

    theta = op.parameter_vector().to(torch.float64)
    centre = theta if basis is None else basis.T @ theta  # A^+ theta with orthonormal A
    radius = (epsilon * (centre.abs() + 1.0)).cpu().numpy()
    gen = np.random.default_rng(seed)
    # Start inside the box, off the centre: at a minimum the gradient vanishes, so L-BFGS-B
    # started exactly there would not move.
    y0 = radius * gen.uniform(-0.5, 0.5, size=radius.shape)
    count = [0]

    def f(y: np.ndarray) -> tuple[float, np.ndarray]:
        z = torch.from_numpy(y)
        step = z if basis is None else basis @ z.to(basis.device)
        point = (theta + step.to(theta.device)).to(op.dtype)
        load_flat(op.params, point)
        loss, grad = op.gradient()
        count[0] += 1
        g = grad.to(torch.float64)
        if basis is not None:
            g = basis.T @ g.to(basis.device)
        if not math.isfinite(loss):
            return 1e30, np.zeros_like(y)  # an overflow is as sharp as it gets: report it, move on
        return -loss, -g.cpu().numpy()

    res = minimize(
        f,
        y0,
        jac=True,
        method="L-BFGS-B",
        bounds=list(zip(-radius, radius)),
        options={"maxiter": max_iter, "maxfun": 4 * max_iter + 10},
    )
    best = -float(res.fun)
    return best, int(res.nit), count[0]


@with_progress("sharpness")
def sharpness(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    *,
    method: str | Iterable[str] = "lambda_max",
    epsilons: Iterable[float] = (1e-3, 5e-4),
    subspace_dim: int | None = 100,
    full_space: bool = True,
    max_iter: int = 10,
    tol: float = 1e-3,
    trace_matvecs: int = 60,
    mode: Mode | None = None,
    seed: int = 0,
    distributed: bool | None = None,
    progress: Progress | bool | str | None = "auto",
    reduction: Reduction | None = None,
    params: Any = None,
) -> Sharpness:
    """How sharp is the minimum the model sits in? Flat minima generalize better.

    The model is left exactly as it was.

    Args:
        model: any ``nn.Module``.
        loss_fn: the loss, as for :func:`lossdoctor.hessian`.
        data: a DataLoader, a list of batches or one batch, as for :func:`lossdoctor.hessian`.
        method: ``"lambda_max"`` (top Hessian eigenvalue, Lanczos), ``"trace"`` (Hutch++), or
            ``"epsilon"`` (Keskar's epsilon-sharpness), or a list of them.
        epsilons: box sizes for epsilon-sharpness (Keskar: 1e-3 and 5e-4).
        subspace_dim: also measure in a random subspace of this dimension (Keskar: 100; ``None``
            to skip).
        full_space: measure epsilon-sharpness in the full space (``False`` skips it).
        max_iter: L-BFGS-B iterations of the inner maximization (Keskar: 10).
        tol: relative accuracy of lambda_max.
        trace_matvecs: Hessian-vector products for the trace.
        mode: as for :func:`lossdoctor.hessian`.
        seed: seed of the Lanczos start, the trace probes and the random subspace.
        distributed: as for :func:`lossdoctor.hessian`.
        progress: called as ``progress(done, total)``; ``"auto"`` (default) shows a bar on a
            terminal for long runs.
        reduction: as for :func:`lossdoctor.hessian`.
        params: measure with respect to these parameters only (tensors, names or glob patterns,
            modules; see :func:`lossdoctor.hessian`): λ_max and the trace of that block of the
            Hessian, epsilon-sharpness in a box that moves only them. ``requires_grad`` is not
            touched.

    Returns:
        The measurements asked for. Ctrl-C returns those finished, flagged ``interrupted``.

    Raises:
        ValueError: an unknown method, or no space left to measure epsilon-sharpness in.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import noisy_regression
        >>> p = noisy_regression()
        >>> s = ld.sharpness(p.model, p.loss_fn, p.train_data, method=["lambda_max", "epsilon"])
        >>> round(s.lambda_max, 2), round(s.eps(1e-3), 3)
        (2.69, 0.15)
    """
    check_arguments(model=model, loss_fn=loss_fn)
    methods = _methods(method)
    epsilons = check_floats(
        epsilons, "epsilons", above=0.0, hint="Keskar et al. use 1e-3 and 5e-4."
    )
    subspace_dim = check_int(subspace_dim, "subspace_dim", minimum=1, optional=True)
    full_space = check_bool(full_space, "full_space")
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    tol = check_float(tol, "tol", above=0.0)
    trace_matvecs = check_int(trace_matvecs, "trace_matvecs", minimum=3)
    if mode is not None:  # None: eval, stated (see hessian)
        check_choice(mode, "mode", ("eval", "train"))
    seed = check_seed(seed)
    check_bool(distributed, "distributed", optional=True)
    check_progress(progress)
    callback = as_callback(progress)
    if "epsilon" in methods and not full_space and subspace_dim is None:
        raise ValueError("full_space=False and subspace_dim=None leave no space to measure in.")
    with preserved_model(model):
        op = hessian(
            model,
            loss_fn,
            data,
            mode=mode,
            distributed=distributed,
            reduction=reduction,
            params=params,
        )
        spaces: list[int | None] = ([None] if full_space else []) + (
            [subspace_dim] if subspace_dim else []
        )
        total = (
            ("lambda_max" in methods)
            + ("trace" in methods)
            + ("epsilon" in methods) * len(epsilons) * len(spaces)
        )
        done = 0
        values: dict[str, Any] = {}
        eps_results: list[EpsilonSharpness] = []
        interrupted = False
        theta = op.parameter_vector().clone()
        try:
            with _interrupt.propagating():
                if "lambda_max" in methods:
                    eig = eigenpairs(op, k=1, which="largest", tol=tol, seed=seed)
                    if _interrupt.was_interrupted(eig):
                        raise KeyboardInterrupt
                    values.update(
                        lambda_max=float(eig.eigenvalues[0]),
                        lambda_max_error=float(eig.error_bounds[0]),
                        lambda_max_converged=bool(eig.converged[0]),
                    )
                    done += 1
                    if callback:
                        callback(done, total)
                if "trace" in methods:
                    tr = trace(op, matvecs=trace_matvecs, seed=seed)
                    if _interrupt.was_interrupted(tr):
                        raise KeyboardInterrupt
                    values.update(trace=tr.estimate, trace_standard_error=tr.standard_error)
                    done += 1
                    if callback:
                        callback(done, total)
                if "epsilon" in methods:
                    for dim in spaces:
                        basis = None
                        if dim is not None:
                            # Seeded on the CPU: every rank draws the same subspace.
                            gen = torch.Generator().manual_seed(seed + 1)
                            basis = torch.linalg.qr(
                                torch.randn(
                                    op.num_params,
                                    min(dim, op.num_params),
                                    generator=gen,
                                    dtype=torch.float64,
                                )
                            )[0]
                            basis = basis.to(op.device)
                        for eps in epsilons:
                            try:
                                best, iters, evals = _box_max(
                                    op, eps, basis, max_iter=max_iter, seed=seed
                                )
                            finally:
                                load_flat(op.params, theta)
                            best = max(best, op.loss)  # the centre is in the box
                            eps_results.append(
                                EpsilonSharpness(
                                    epsilon=eps,
                                    space="full" if basis is None else f"random-{basis.shape[1]}",
                                    value=100.0 * (best - op.loss) / (1.0 + op.loss),
                                    max_loss=best,
                                    loss=op.loss,
                                    iterations=iters,
                                    evaluations=evals,
                                )
                            )
                            done += 1
                            if callback:
                                callback(done, total)
        except KeyboardInterrupt:
            interrupted = _interrupt.keep_partial()
        return Sharpness(
            loss=op.loss,
            num_params=op.num_params,
            num_samples=op.num_samples,
            mode=op.mode,
            epsilon=eps_results,
            interrupted=interrupted,
            **values,
        )
