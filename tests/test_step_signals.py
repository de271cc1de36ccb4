"""The Monitor's per-step signals against a float64 hand computation, on the awkward cases: many
parameter tensors, a parameter without a gradient, a sparse gradient, mixed dtypes, and the
tensor-by-tensor path a model split over devices takes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lossdoctor.training.step_signals import StepSignals


def reference(
    grads: list[torch.Tensor], thetas: list[torch.Tensor], t: int
) -> tuple[float, float, float]:
    g = grads[t].double()
    gnorm = float(g.norm())
    if t == 0:
        return gnorm, math.nan, math.nan
    p = grads[t - 1].double()
    cos = float(g @ p / (g.norm() * p.norm())) if float(p.norm()) > 0 and gnorm > 0 else math.nan
    return gnorm, cos, float((thetas[t].double() - thetas[t - 1].double()).norm())


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().to_dense().double().reshape(-1) for t in tensors])


def run(model: nn.Module, make_loss, steps: int = 5, lr: float = 0.1, **kwargs):
    params = [p for p in model.parameters() if p.requires_grad]
    signals = StepSignals(params, **kwargs)
    opt = torch.optim.SGD(params, lr=lr)
    got, grads, thetas = [], [], []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        make_loss(step).backward()
        grads.append(flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in params]))
        opt.step()
        thetas.append(flat(params))
        got.append(signals.update())
    return got, [reference(grads, thetas, t) for t in range(steps)]


def assert_close(got, want):
    for (gn, cos, upd), (wgn, wcos, wupd) in zip(got, want):
        assert gn == pytest.approx(wgn, rel=1e-5)
        if math.isnan(wcos):
            assert math.isnan(cos)
        else:
            assert cos == pytest.approx(wcos, abs=1e-5)
        if math.isnan(wupd):
            assert math.isnan(upd)
        else:
            assert upd == pytest.approx(wupd, rel=1e-4)


def mlp_with_unused_head():
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {
            "body": nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)),
            "unused": nn.Linear(3, 2),
        }
    )
    x, y = torch.randn(16, 5), torch.randn(16, 3)

    def loss(step):
        return ((model["body"](x * (1 + 0.1 * step)) - y) ** 2).mean()

    return model, loss


@pytest.mark.parametrize("buffered", [None, False])
def test_signals_match_float64_hand_computation_with_a_parameter_without_gradient(buffered):
    model, loss = mlp_with_unused_head()
    got, want = run(model, loss, buffered=buffered)
    assert_close(got, want)
    assert all(u > 0 for _, _, u in got[1:])


def test_buffered_and_tensor_by_tensor_paths_agree():
    a_model, loss_a = mlp_with_unused_head()
    b_model, loss_b = mlp_with_unused_head()
    a, _ = run(a_model, loss_a, buffered=True)
    b, _ = run(b_model, loss_b, buffered=False)
    assert_close(a, b)


def test_sparse_embedding_gradient():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Embedding(20, 4, sparse=True), nn.Flatten(), nn.Linear(12, 1))
    tokens = torch.randint(0, 20, (8, 3))
    got, want = run(model, lambda step: model(tokens).pow(2).mean())
    assert_close(got, want)


def test_mixed_dtypes_and_float64():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 6).double(), nn.Tanh(), nn.Linear(6, 2).double())
    model[2].bias.data = model[2].bias.data.float()  # mixed on purpose: buffers become float64
    x = torch.randn(10, 4, dtype=torch.float64)

    def loss(step):
        h = model[1](model[0](x))
        return ((h @ model[2].weight.T + model[2].bias.double()) ** 2).mean()

    got, want = run(model, loss)
    assert_close(got, want)


def test_zero_gradient_gives_nan_cosine_not_an_error():
    w = nn.Parameter(torch.ones(3))
    signals = StepSignals([w])
    for _ in range(2):
        w.grad = torch.zeros(3)
        gnorm, cos, update = signals.update()
    assert gnorm == 0.0 and math.isnan(cos) and update == 0.0


def test_buffered_refuses_parameters_on_several_devices():
    a = nn.Parameter(torch.ones(2))
    b = nn.Parameter(torch.ones(2, device="meta"))
    with pytest.raises(ValueError, match="one device"):
        StepSignals([a, b], buffered=True)
