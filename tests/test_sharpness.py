"""lossdoctor.sharpness on a quadratic, where lambda_max, the trace and Keskar's epsilon-sharpness
are known exactly; the model is left unchanged; bad input is refused clearly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lossdoctor as ld
from cases import ModelSnapshot
from test_model_unchanged import model_in_a_mixed_state

A = torch.tensor([4.0, 1.0, 0.25, 2.0], dtype=torch.float64)
THETA = torch.tensor([0.5, -2.0, 0.0, 1.0], dtype=torch.float64)


class Quadratic(nn.Module):
    """L(theta) = 1/2 theta^T diag(A) theta; the input is ignored."""

    def __init__(self, theta: torch.Tensor = THETA):
        super().__init__()
        self.theta = nn.Parameter(theta.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta


def quadratic_loss(theta: torch.Tensor, _targets: torch.Tensor) -> torch.Tensor:
    return 0.5 * (A * theta * theta).sum()


DATA = (torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))


def box_max(eps: float) -> float:
    """Separable convex: each coordinate's maximum is at the corner away from zero."""
    radius = eps * (THETA.abs() + 1)
    return float(0.5 * (A * (THETA.abs() + radius) ** 2).sum())


def test_quadratic_lambda_max_trace_and_epsilon_exact():
    model = Quadratic()
    s = ld.sharpness(
        model,
        quadratic_loss,
        DATA,
        method=["lambda_max", "trace", "epsilon"],
        epsilons=(1e-3, 5e-4),
        subspace_dim=2,
        tol=1e-8,
        trace_matvecs=12,
    )
    loss = float(quadratic_loss(THETA, None))
    assert s.loss == pytest.approx(loss)
    assert s.lambda_max == pytest.approx(4.0, rel=1e-8) and s.lambda_max_converged
    assert s.trace == pytest.approx(
        float(A.sum()), rel=1e-8
    )  # Hutch++ is exact once 1/3 of probes span R^4
    for eps in (1e-3, 5e-4):
        expected = 100 * (box_max(eps) - loss) / (1 + loss)
        assert s.eps(eps, "full") == pytest.approx(expected, rel=1e-6)
        sub = s.eps(eps, "random")
        assert 0 <= sub <= expected * (1 + 1e-9)  # a subspace of the box reaches no higher
    assert {e.space for e in s.epsilon} == {"full", "random-2"}
    assert "lambda_max" in str(s) and s.to_dict()["epsilon"][0]["epsilon"] == 1e-3


def test_epsilon_sharpness_scales_with_curvature():
    """At the minimum (L = 0) Keskar's metric is 100 * 1/2 sum a_i eps^2: 10x the curvature, 10x."""
    zero = torch.zeros(4, dtype=torch.float64)
    flat = ld.sharpness(Quadratic(zero), quadratic_loss, DATA, method="epsilon", subspace_dim=None)
    sharp = ld.sharpness(
        Quadratic(zero),
        lambda t, y: 10 * quadratic_loss(t, y),
        DATA,
        method="epsilon",
        subspace_dim=None,
    )
    assert flat.eps(1e-3) == pytest.approx(100 * 0.5 * float(A.sum()) * 1e-6, rel=1e-6)
    assert sharp.eps(1e-3) == pytest.approx(10 * flat.eps(1e-3), rel=1e-6)
    assert flat.lambda_max is None and flat.trace is None


def test_sharpness_leaves_model_unchanged():
    model, loss_fn, data = model_in_a_mixed_state(dropout=0.0)
    before = ModelSnapshot.take(model)
    s = ld.sharpness(
        model, loss_fn, data, method=["lambda_max", "epsilon"], subspace_dim=5, max_iter=3
    )
    before.assert_same(model, "sharpness")
    assert s.lambda_max > 0 and all(e.value >= 0 for e in s.epsilon)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "hessian"}, "method must be one of"),
        ({"method": "epsilon", "epsilons": (0.0,)}, r"epsilons\[0\] must be a finite number > 0"),
        ({"method": "epsilon", "subspace_dim": 0}, "subspace_dim"),
        ({"method": "epsilon", "subspace_dim": None, "full_space": False}, "no space"),
        ({"max_iter": 0}, "max_iter"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ld.sharpness(Quadratic(), quadratic_loss, DATA, **kwargs)
