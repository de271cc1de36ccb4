"""The Monitor's per-step signals.

Gradient norm, cosine between successive gradients and the size of the last update, at a fixed small
number of tensor ops per step.

On a small model a training step is a few hundred microseconds and every tensor op the monitor
adds costs a dispatch of a few microseconds, so the count of ops, not the arithmetic, sets the
overhead. The gradients and parameters are copied with one ``_foreach_copy_`` each into
preallocated flat buffers (the gradient buffer has two rows used in turn, so last step's
gradient is kept without a copy), one subtraction gives the update, and one 3x3 Gram matrix of
(this gradient, last gradient, update) gives every dot product at once.

Even so, on a 15k-parameter MLP those five ops are ~50 µs of a ~370 µs step (memory-bound
copies of cold buffers). The Monitor can therefore take the signals on pairs of steps: at step
t-1 :meth:`record` only copies, at step t :meth:`update` computes; every other step costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class StepSignals:
    """Call :meth:`update` after an optimizer step.

    It returns ``(grad_norm, grad_cosine, update_norm)``, the last two against the step before, NaN
    when that step was neither updated nor :meth:`record`-ed (or on the first call).

    ``buffered``: keep the flat buffers (default when every parameter is on one device); False
    computes the same numbers tensor by tensor in float64 (what a model split over devices gets).
    """

    def __init__(self, params: Sequence[torch.Tensor], *, buffered: bool | None = None) -> None:
        self.params = list(params)
        devices = {p.device for p in params}
        if buffered and len(devices) > 1:
            raise ValueError(
                "buffered=True needs every parameter on one device; these are on "
                f"{sorted(str(d) for d in devices)}."
            )
        self._single_device = len(devices) == 1 if buffered is None else buffered
        if not self._single_device:
            # Model parallel: flat copies on each parameter's device, joined on the host.
            self._prev_grad: list[torch.Tensor] | None = None
            self._prev_theta: list[torch.Tensor] | None = None
            self._steps = 0
            self._prev_step = -2
            return
        dtype = torch.float32
        for p in params:
            dtype = torch.promote_types(dtype, p.dtype)
        n = sum(p.numel() for p in params)
        device = next(iter(devices))
        # rows 0 and 1: the gradients of alternate steps; row 2: the update θ_t - θ_{t-1}.
        self._rows = torch.zeros(3, n, dtype=dtype, device=device)
        self._thetas = torch.zeros(2, n, dtype=dtype, device=device)
        self._grad_views = [self._views(self._rows[r]) for r in range(2)]
        self._theta_views = [self._views(self._thetas[r]) for r in range(2)]
        self._gram = torch.empty(3, 3, dtype=dtype, device=device)
        self._steps = 0  # optimizer steps seen (update / record / skip calls)
        self._slot = 0  # the row the next copy goes to
        self._prev_step = -2  # the step whose copies sit in row 1 - _slot

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        views, offset = [], 0
        for p in self.params:
            views.append(flat[offset : offset + p.numel()].view(p.shape))
            offset += p.numel()
        return views

    def skip(self) -> None:
        """An optimizer step without signals."""
        self._steps += 1

    @torch.no_grad()
    def record(self) -> None:
        """Copy this step's gradient and parameters (the 'before' of an update at the next step)."""
        self._steps += 1
        if not self._single_device:
            self._prev_grad, self._prev_theta = self._flat_general()
        else:
            self._copy(self._slot)
            self._slot ^= 1
        self._prev_step = self._steps

    @torch.no_grad()
    def update(self) -> tuple[float, float, float]:
        """Take the signals after an optimizer step: ``(gradient norm, cosine with the last gradient, update norm)``."""
        self._steps += 1
        consecutive = self._prev_step == self._steps - 1
        if not self._single_device:
            return self._update_general(consecutive)
        cur = self._slot
        self._copy(cur)
        self._slot ^= 1
        self._prev_step = self._steps
        if not consecutive:
            g = self._rows[cur]
            return math.sqrt(max(float(g @ g), 0.0)), math.nan, math.nan
        torch.sub(self._thetas[cur], self._thetas[1 - cur], out=self._rows[2])
        torch.mm(self._rows, self._rows.T, out=self._gram)
        gram = self._gram.tolist()
        return self._combine(gram[cur][cur], gram[0][1], gram[1 - cur][1 - cur], gram[2][2])

    def _copy(self, row: int) -> None:
        grads = [p.grad for p in self.params]
        dense = [g for g in grads if g is not None and g.layout == torch.strided]
        if len(dense) == len(grads):
            # One dispatch for both copies: on sub-millisecond steps dispatch is the cost.
            torch._foreach_copy_(
                self._grad_views[row] + self._theta_views[row], dense + self.params
            )
            return
        for view, g in zip(self._grad_views[row], grads):
            if g is None:
                view.zero_()
            else:
                view.copy_(g.to_dense() if g.layout != torch.strided else g)
        torch._foreach_copy_(self._theta_views[row], self.params)

    @staticmethod
    def _combine(g2: float, g_prev: float, prev2: float, d2: float) -> tuple[float, float, float]:
        gnorm = math.sqrt(max(g2, 0.0))
        denom = gnorm * math.sqrt(max(prev2, 0.0))
        cos = g_prev / denom if denom > 0 else math.nan
        return gnorm, cos, math.sqrt(max(d2, 0.0))

    def _flat_general(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        grad = [
            (p.grad.to_dense() if p.grad.layout != torch.strided else p.grad).reshape(-1).double()
            if p.grad is not None
            else torch.zeros(p.numel(), dtype=torch.float64, device=p.device)
            for p in self.params
        ]
        theta = [p.detach().reshape(-1).double() for p in self.params]
        return grad, theta

    def _update_general(self, consecutive: bool) -> tuple[float, float, float]:
        grad, theta = self._flat_general()
        g2 = sum(float(g @ g) for g in grad)
        prev_grad, prev_theta = self._prev_grad, self._prev_theta
        self._prev_grad, self._prev_theta, self._prev_step = grad, theta, self._steps
        if not consecutive or prev_grad is None or prev_theta is None:
            return math.sqrt(g2), math.nan, math.nan
        g_prev = sum(float(g @ q) for g, q in zip(grad, prev_grad))
        prev2 = sum(float(q @ q) for q in prev_grad)
        d2 = sum(float((t - q) @ (t - q)) for t, q in zip(theta, prev_theta))
        return self._combine(g2, g_prev, prev2, d2)
