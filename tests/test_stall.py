"""The stall doctor on closed-form and constructed cases: each cause, the numbers in the
prescriptions, the model left untouched, every way to pass a history, and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lossdoctor.analysis.stall import (
    CAUSES,
    STALL_REL,
    Diagnosis,
    _trend,
    diagnose,
    newton_step_length,
    read_history,
    stall_test,
    stall_threshold,
)
from lossdoctor.curvature import hessian
from lossdoctor.studies.flat_surface import blobs, confidently_wrong, softmax_mse
from lossdoctor.zoo.lecture import lecture_saddle


def least_squares(seed: int = 0, dim: int = 3, noise: float = 0.0):
    """y = x·w*, x with spread-out scales: the Hessian of mse_loss is exactly 2·mean(x xᵀ)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(50, dim, generator=gen, dtype=torch.float64) * torch.logspace(-0.5, 0.5, dim,
                                                                                   dtype=torch.float64)
    y = x @ torch.randn(dim, 1, generator=gen, dtype=torch.float64) + noise * torch.randn(
        50, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(dim, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(3 * torch.randn(1, dim, generator=gen, dtype=torch.float64))
    lam = torch.linalg.eigvalsh(2 * x.T @ x / len(x))
    return model, (x, y), float(lam[-1]), float(lam[0])


def start_on_top_eigenvector(model, data):
    """Put the parameters one unit from the optimum along the sharpest direction: GD with lr·λ_max
    close to 2 then bounces between the valley walls and the bounce is (almost) the whole loss."""
    x, y = data
    vecs = torch.linalg.eigh(2 * x.T @ x / len(x)).eigenvectors
    with torch.no_grad():
        model.weight.copy_((torch.linalg.lstsq(x, y).solution.reshape(-1) + vecs[:, -1]).reshape(1, -1))


def gd(model, loss_fn, data, lr, steps, optimizer=None):
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(data[0]), data[1])
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses, opt


def test_oscillation_below_the_stability_limit_with_the_exact_bound():
    model, data, lam, _ = least_squares()
    start_on_top_eigenvector(model, data)
    losses, opt = gd(model, F.mse_loss, data, 1.998 / lam, 120)
    d = diagnose(model, F.mse_loss, data, history=losses, optimizer=opt)
    assert d.cause == "oscillation"
    assert d.sharpness == pytest.approx(lam, rel=1e-5)
    assert d.lr_sharpness == pytest.approx(1.998, rel=1e-5)
    assert d.max_stable_lr == pytest.approx(2 / lam, rel=1e-5)
    assert d.grad_cosine < -0.9 and d.efficiency < 0.1  # the gradient flips, the loss barely follows it
    assert any(f"2/λ_max = {2 / lam:.5g}" in p for p in d.prescriptions)
    assert str(d).startswith("diagnosis: oscillation")


def test_lr_above_two_over_lambda_diverges_and_the_bound_is_prescribed():
    model, data, lam, _ = least_squares(seed=1)
    losses, opt = gd(model, F.mse_loss, data, 2.3 / lam, 60)
    d = diagnose(model, F.mse_loss, data, history=losses, optimizer=opt)
    assert d.cause == "diverging" and d.loss_growth > 1.5
    assert d.lr_sharpness == pytest.approx(2.3, rel=1e-6)
    assert any(f"{2 / lam:.5g}" in p for p in d.prescriptions)
    assert any("clip_grad_norm_" in p for p in d.prescriptions)


def test_nan_loss_is_diverging_without_curvature():
    model, data, _, _ = least_squares()
    with torch.no_grad():
        model.weight.fill_(math.nan)
    d = diagnose(model, F.mse_loss, data, history=[1.0, 2.0, 10.0, math.nan], lr=0.1)
    assert d.cause == "diverging" and d.sharpness is None
    assert "NaN" in d.summary
    assert json.dumps(d.to_dict())  # JSON-safe even with NaN/None fields


def test_saddle_is_a_critical_point_with_the_escape_direction():
    prob = lecture_saddle(1e-9, -2e-9)
    losses, opt = gd(prob.model, prob.loss_fn, prob.train_data, 0.05, 30)
    d = diagnose(prob.model, prob.loss_fn, prob.train_data, history=losses, optimizer=opt)
    assert d.cause == "critical_point" and d.stalled
    assert d.critical.kind == "saddle_point"
    assert d.critical.min_eigenvalue == pytest.approx(-2.0, abs=1e-5)
    u = d.critical.escape_direction
    assert torch.allclose(u.abs(), torch.full((2,), 2 ** -0.5, dtype=u.dtype), atol=1e-5)
    assert any("escape" in p for p in d.prescriptions)


def test_converged_least_squares_is_a_local_minimum():
    model, (x, y), lam, lam_min = least_squares(seed=2, noise=0.3)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    losses, opt = gd(model, F.mse_loss, (x, y), 1 / lam, 40)
    d = diagnose(model, F.mse_loss, (x, y), history=losses, optimizer=opt)
    assert d.cause == "critical_point" and d.critical.kind == "local_minimum"
    assert d.critical.min_eigenvalue == pytest.approx(lam_min, rel=1e-4)
    assert d.newton_step < 1e-8


def test_softmax_mse_plateau_is_flat_and_cross_entropy_is_not():
    x, y, means = blobs(0)
    model = confidently_wrong(means)
    losses, opt = gd(model, softmax_mse, (x, y), 0.5, 150)
    d = diagnose(model, softmax_mse, (x, y), history=losses, optimizer=opt)
    assert d.cause == "flat_plateau" and d.stalled
    assert d.grad_norm < 0.1 and d.lr_sharpness < 0.5
    assert any("cross-entropy" in p for p in d.prescriptions)
    model = confidently_wrong(means)
    losses, opt = gd(model, F.cross_entropy, (x, y), 0.5, 30)
    assert diagnose(model, F.cross_entropy, (x, y), history=losses, optimizer=opt).cause == "progressing"


def test_too_small_lr_crawls_on_a_flat_floor_and_the_lr_may_rise():
    model, data, lam, _ = least_squares(seed=3, dim=2)
    losses, opt = gd(model, F.mse_loss, data, 1e-5 / lam, 80)
    d = diagnose(model, F.mse_loss, data, history=losses, optimizer=opt)
    assert d.cause == "flat_plateau"
    assert any("raised up to the stability limit" in p and f"{2 / lam:.5g}" in p for p in d.prescriptions)


def test_progressing():
    model, data, lam, _ = least_squares(seed=4)
    losses, opt = gd(model, F.mse_loss, data, 0.5 / lam, 20)
    d = diagnose(model, F.mse_loss, data, history=losses, optimizer=opt)
    assert d.cause == "progressing" and not d.stalled and d.relative_drop > 0.02


def test_momentum_and_adam_stability_limits():
    model, data, lam, _ = least_squares(seed=5)
    opt = torch.optim.SGD(model.parameters(), lr=1.0 / lam, momentum=0.9)
    losses, opt = gd(model, F.mse_loss, data, None, 10, optimizer=opt)
    d = diagnose(model, F.mse_loss, data, history=losses, optimizer=opt)
    assert d.stability_threshold == pytest.approx(3.8) and d.max_stable_lr == pytest.approx(3.8 / lam, rel=1e-6)
    assert d.momentum == pytest.approx(0.9)

    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses, opt = gd(model, F.mse_loss, data, None, 10, optimizer=opt)
    d = diagnose(model, F.mse_loss, data, history=losses, optimizer=opt)
    # The preconditioned sharpness by hand: top eigenvalue of D^½ H D^½, D = lr / (sqrt(v̂) + eps).
    state = opt.state[model.weight]
    v_hat = state["exp_avg_sq"].double().reshape(-1) / (1 - 0.999 ** float(state["step"]))
    D = 0.01 / (v_hat.sqrt() + 1e-8)
    H = 2 * data[0].T @ data[0] / len(data[0])
    expected = float(torch.linalg.eigvalsh(D.sqrt()[:, None] * H * D.sqrt()[None, :])[-1])
    assert d.lr_sharpness == pytest.approx(expected, rel=1e-4)
    assert d.stability_threshold == pytest.approx(38.0)
    assert d.max_stable_lr == pytest.approx(0.01 * 38 / expected, rel=1e-4)


def test_newton_step_is_exact_on_a_quadratic():
    model, data, lam, _ = least_squares(seed=6, noise=0.2)
    op = hessian(model, F.mse_loss, data)
    _, grad = op.gradient()
    x, y = data
    w_opt = torch.linalg.lstsq(x, y).solution.reshape(-1)
    distance = float(torch.linalg.vector_norm(model.weight.detach().reshape(-1) - w_opt))
    assert newton_step_length(op, grad, lam) == pytest.approx(distance, rel=1e-6)


def test_model_and_rng_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.2), nn.Tanh(), nn.Linear(6, 2))
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses, opt = gd(model, F.cross_entropy, (x, y), 0.1, 10, optimizer=opt)
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    for history in (losses, [losses[0]] * 10):  # progressing, and stalled (runs every test)
        diagnose(model, F.cross_entropy, (x, y), history=history, optimizer=opt)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert torch.equal(rng, torch.get_rng_state()) and model.training


class Record:  # any object with losses / grad_norms attributes
    def __init__(self, losses):
        self.losses = losses
        self.grad_norms = [1.0] * len(losses)


def test_history_formats_agree():
    losses = [1.0, 0.9, 0.8, 0.7, 0.6]
    forms = [losses, np.asarray(losses), torch.tensor(losses), {"losses": losses},
             {"loss": losses, "grad_norms": [1.0] * 5}, Record(losses), type("TH", (), {"step_loss": losses})()]
    for form in forms:
        assert np.allclose(read_history(form).losses, losses)
    model, data, _, _ = least_squares()
    causes = {diagnose(model, F.mse_loss, data, history=f, lr=1e-3).cause for f in forms}
    assert causes == {"progressing"}


@pytest.mark.parametrize("history, kwargs, error, match", [
    ([], {}, ValueError, "at least"),
    ([1.0, 1.0, 1.0], {}, ValueError, "at least 4"),
    (None, {}, ValueError, "history is None"),
    ("1,2,3,4", {}, TypeError, "losses"),
    ({"grad_norms": [1.0] * 5}, {}, TypeError, "no losses"),
    (["a", "b", "c", "d"], {}, TypeError, "numbers"),
    ({"losses": [1.0] * 5, "grad_norms": [1.0] * 3}, {}, ValueError, "gradient norms"),
    ([1.0] * 5, {"lr": math.nan}, ValueError, "lr must be"),
    ([1.0] * 5, {"lr": -0.1}, ValueError, "lr must be"),
    ([1.0] * 5, {"optimizer": "sgd"}, TypeError, "torch.optim.Optimizer"),
    ([1.0] * 5, {"window": 2}, ValueError, "window"),
])
def test_bad_input(history, kwargs, error, match):
    model, data, _, _ = least_squares()
    with pytest.raises(error, match=match):
        diagnose(model, F.mse_loss, data, history=history, **kwargs)


def test_result_is_json_and_names_a_known_cause():
    model, data, lam, _ = least_squares()
    start_on_top_eigenvector(model, data)
    losses, opt = gd(model, F.mse_loss, data, 1.998 / lam, 80)
    d = diagnose(model, F.mse_loss, data, history=losses, optimizer=opt)
    assert isinstance(d, Diagnosis) and d.cause == "oscillation" and d.cause in CAUSES
    payload = json.loads(json.dumps(d.to_dict()))
    assert payload["cause"] == d.cause and payload["max_stable_lr"] == pytest.approx(2 / lam, rel=1e-6)


def noisy_losses(rng, steps: int, rate: float, sigma: float) -> np.ndarray:
    """Losses falling by ``rate`` per 60 steps, each multiplied by 1 + sigma·N(0, 1) (minibatch noise)."""
    t = np.arange(steps)
    return (1 - rate) ** (t / 60) * (1 + sigma * rng.standard_normal(steps))


def test_stall_test_is_calibrated_against_minibatch_noise():
    rng = np.random.default_rng(0)
    draws = 400
    # Exact losses: the verdict is certain either way.
    assert stall_test(np.ones(60)) is True
    assert stall_test(noisy_losses(rng, 60, 0.05, 0.0)) is False
    # A run still falling 5% per 60 steps under 20% noise: the point estimate calls a stall at
    # random (about 40% of windows), the test almost never, and a long window says "falling".
    falling = [noisy_losses(rng, 60, 0.05, 0.2) for _ in range(draws)]
    point = np.mean([_trend(w, 60)[0] < STALL_REL for w in falling])
    tested = [stall_test(w) for w in falling]
    assert point > 0.25
    assert np.mean([t is True for t in tested]) < 0.02
    assert np.mean([t is None for t in tested]) > 0.9
    assert np.mean([stall_test(noisy_losses(rng, 480, 0.05, 0.2)) is False for _ in range(draws)]) > 0.9
    # A flat run under the same noise: open on 60 steps, caught on 480.
    assert np.mean([stall_test(noisy_losses(rng, 480, 0.0, 0.2)) is True for _ in range(draws)]) > 0.95
    # The threshold is a rate: 2% per 60 steps, compounding.
    assert stall_threshold(30) == stall_threshold(60) == STALL_REL
    assert stall_threshold(240) == pytest.approx(1 - (1 - STALL_REL) ** 4)


def test_sgd_noise_floor_is_oscillation_on_noise_not_a_plateau():
    # Near the optimum, stable steps (lr·λ_max = 0.2), the loss flat under noise and the
    # minibatch gradients 4x the full-data one: SGD bounces on its own noise. The cure is a
    # smaller (decaying) lr or a larger batch, not the larger lr a flat surface would want.
    model, data, lam, _ = least_squares(seed=5)
    x, y = data
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.reshape(1, -1) + 0.3)
    loss = F.mse_loss(model(x), y)
    g = float(torch.linalg.vector_norm(torch.autograd.grad(loss, model.weight)[0]))
    rng = np.random.default_rng(0)
    history = {"losses": loss.item() * (1 + 0.2 * rng.standard_normal(60)),
               "grad_norms": 4 * g * (1 + 0.1 * rng.standard_normal(60)),
               "grad_cosines": 0.2 + 0.05 * rng.standard_normal(60)}
    opt = torch.optim.SGD(model.parameters(), lr=0.2 / lam, momentum=0.9)
    d = diagnose(model, F.mse_loss, data, history=history, optimizer=opt)
    assert d.cause == "oscillation" and d.stalled
    assert any("noise makes up" in e for e in d.evidence)
    assert any("decay the learning rate" in p for p in d.prescriptions)
    assert not any("raised" in p for p in d.prescriptions)
    # The same flat loss with minibatch gradients as long as the full one: no noise to blame.
    history["grad_norms"] = g * (1 + 0.1 * rng.standard_normal(60))
    assert diagnose(model, F.mse_loss, data, history=history, optimizer=opt).cause == "flat_plateau"
