"""Driving a small model to a critical point.

Full-batch L-BFGS (scipy's) on the loss or on the squared gradient norm ||∇L||² (the homework's
trick), and Levenberg-Marquardt on the gradient with the dense Hessian. Minimising the gradient norm
stops at *any* critical point (minimum, saddle or maximum), not only where the loss is low.

Full batch and deterministic; every evaluation passes over all of ``data`` (twice-differentiated
for the gradient-norm objective), so it is meant for small problems such as the studies'.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from .._results import ResultMixin, fmt
from ..data import batch_loss, batch_size, iter_batches, place
from ..model_state import load_flat, trainable_parameters
from ..progress import Progress

OBJECTIVES = ("loss", "grad_norm")


@dataclass(frozen=True)
class StationaryHistory(ResultMixin):
    """Loss and full-data gradient norm at the start and after every L-BFGS iteration."""

    objective: str
    losses: list[float]
    grad_norms: list[float]
    iterations: int
    target: float | None
    reached: bool

    def __str__(self) -> str:
        goal = (
            f" (target {fmt(self.target)}, {'reached' if self.reached else 'NOT reached'})"
            if self.target
            else ""
        )
        return (
            f"{self.iterations} L-BFGS iterations on the {self.objective.replace('_', ' ')}: gradient norm "
            f"{fmt(self.grad_norms[0])} -> {fmt(self.grad_norms[-1])}{goal}, loss {fmt(self.losses[0], 6)} -> "
            f"{fmt(self.losses[-1], 6)}"
        )


def loss_and_gradient(
    model: nn.Module, loss_fn: Callable, data: Any, *, create_graph: bool = False
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The mean loss over all samples of ``data`` and its gradient (one tensor per trainable parameter).

    With ``create_graph`` the gradient can itself be differentiated."""
    params = [p for _, p in trainable_parameters(model)]
    device = params[0].device
    total, count = None, 0
    for i, (inputs, targets) in enumerate(iter_batches(data)):
        inputs, targets = place(inputs, targets, device)
        n = batch_size(targets)
        term = batch_loss(model, loss_fn, inputs, targets, i) * n
        total = term if total is None else total + term
        count += n
    if total is None:
        raise ValueError("data is empty: it yielded no samples.")
    loss = total / count
    grads = torch.autograd.grad(
        loss, params, create_graph=create_graph, allow_unused=True, materialize_grads=True
    )
    return loss, list(grads)


def _set_flat(params: Sequence[torch.Tensor], x: np.ndarray) -> None:
    load_flat(params, torch.from_numpy(x))


def _flat(tensors: Sequence[torch.Tensor]) -> np.ndarray:
    return torch.cat([t.detach().reshape(-1) for t in tensors]).to("cpu", torch.float64).numpy()


def minimize_full_batch(
    model: nn.Module,
    loss_fn: Callable,
    data: Any,
    *,
    objective: str = "loss",
    target: float | None = None,
    max_iters: int = 500,
    progress: Progress | None = None,
) -> StationaryHistory:
    """Full-batch L-BFGS on the mean loss (``objective="loss"``) or on its squared gradient norm (``"grad_norm"``), in place, until the gradient norm is at most ``target`` (if given) or ``max_iters`` iterations are spent.

    Returns the loss and gradient norm after each iteration."""
    from scipy.optimize import minimize

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    if target is not None and not target > 0:
        raise ValueError(f"target must be a positive gradient norm, got {target!r}.")
    params = [p for _, p in trainable_parameters(model)]

    last: dict[str, Any] = {
        "x": None
    }  # the last evaluated point: scipy's callback usually asks for it again

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        _set_flat(params, x)
        if objective == "loss":
            loss, grads = loss_and_gradient(model, loss_fn, data)
            value, flat = float(loss.detach()), _flat(grads)
            last.update(x=np.array(x, copy=True), loss=value, norm=float(np.linalg.norm(flat)))
            return value, flat
        loss, grads = loss_and_gradient(model, loss_fn, data, create_graph=True)
        grad_sq = cast(torch.Tensor, sum((g * g).sum() for g in grads))
        outer = torch.autograd.grad(grad_sq, params, allow_unused=True, materialize_grads=True)
        last.update(
            x=np.array(x, copy=True),
            loss=float(loss.detach()),
            norm=math.sqrt(float(grad_sq.detach())),
        )
        return float(grad_sq.detach()), _flat(list(outer))

    losses: list[float] = []
    norms: list[float] = []
    best = {"x": _flat(params)}

    def record(x: np.ndarray) -> None:
        if last["x"] is not None and np.array_equal(last["x"], x):
            losses.append(last["loss"])
            norms.append(last["norm"])
        else:
            _set_flat(params, x)
            loss, grads = loss_and_gradient(model, loss_fn, data)
            losses.append(float(loss.detach()))
            norms.append(math.sqrt(sum(float((g * g).sum()) for g in grads)))
        best["x"] = np.array(x, copy=True)

    def callback(xk: np.ndarray) -> None:
        record(xk)
        if progress is not None:
            progress(len(norms) - 1, max_iters)
        if target is not None and norms[-1] <= target:
            raise StopIteration

    record(best["x"])
    stalls = 0
    # L-BFGS's line search can fail on the kinks of ReLU networks: restart it (fresh curvature
    # memory) from the last accepted point until the budget is spent or two restarts in a row stall.
    while (target is None or norms[-1] > target) and len(norms) - 1 < max_iters and stalls < 2:
        before = len(norms)
        with contextlib.suppress(
            StopIteration
        ):  # scipy < 1.11 lets the callback's StopIteration through
            minimize(
                fun,
                best["x"],
                jac=True,
                method="L-BFGS-B",
                callback=callback,
                options={
                    "maxiter": max_iters - (len(norms) - 1),
                    "maxcor": 30,
                    "ftol": 0.0,
                    "gtol": 0.0,
                    "maxls": 40,
                },
            )
        stalls = stalls + 1 if len(norms) - before < 2 else 0
    _set_flat(params, best["x"])
    return StationaryHistory(
        objective=objective,
        losses=losses,
        grad_norms=norms,
        iterations=len(norms) - 1,
        target=target,
        reached=target is None or norms[-1] <= target,
    )


def minimize_gradient_norm(
    model: nn.Module,
    loss_fn: Callable,
    data: Any,
    *,
    target: float = 1e-6,
    max_iters: int = 50,
    max_params: int = 2000,
    progress: Progress | None = None,
) -> StationaryHistory:
    """Drive ``model`` (in place) to the nearest critical point of any kind by Levenberg-Marquardt on the gradient: each step solves (H² + μI) δ = -H g with the dense Hessian H, i.e. damped Newton on g(θ) = 0, which (unlike descent on the loss) is attracted to saddles as much as to minima.

    Flat directions (λ ≈ 0) get no step. For models of at most ``max_params`` parameters."""
    from ..curvature import dense_hessian

    if not target > 0:
        raise ValueError(f"target must be a positive gradient norm, got {target!r}.")
    params = [p for _, p in trainable_parameters(model)]

    def evaluate() -> tuple[float, torch.Tensor]:
        loss, grads = loss_and_gradient(model, loss_fn, data)
        return float(loss.detach()), torch.cat([g.detach().reshape(-1) for g in grads]).to(
            "cpu", torch.float64
        )

    theta = torch.from_numpy(_flat(params))
    loss, grad = evaluate()
    losses, norms = [loss], [float(grad.norm())]
    mu = None
    while norms[-1] > target and len(norms) - 1 < max_iters:
        H = dense_hessian(model, loss_fn, data, max_params=max_params).to("cpu", torch.float64)
        lam, Q = torch.linalg.eigh(H)
        if mu is None:
            mu = (1e-3 * float(lam.abs().max())) ** 2
        gq = Q.T @ grad
        accepted = False
        while not accepted and mu < 1e30:
            step = -Q @ (lam * gq / (lam**2 + mu))
            _set_flat(params, (theta + step).numpy())
            new_loss, new_grad = evaluate()
            if math.isfinite(new_loss) and float(new_grad.norm()) < norms[-1]:
                theta, loss, grad, accepted = theta + step, new_loss, new_grad, True
                mu /= 3.0
            else:
                mu *= 4.0
        _set_flat(params, theta.numpy())
        if not accepted:
            break
        losses.append(loss)
        norms.append(float(grad.norm()))
        if progress is not None:
            progress(len(norms) - 1, max_iters)
        if len(norms) > 3 and norms[-1] > 0.99 * norms[-4]:
            break  # stalled: what is left of the gradient lies where the Hessian is ~0 (e.g. a ReLU kink)
    return StationaryHistory(
        objective="grad_norm (Levenberg-Marquardt)",
        losses=losses,
        grad_norms=norms,
        iterations=len(norms) - 1,
        target=target,
        reached=norms[-1] <= target,
    )
