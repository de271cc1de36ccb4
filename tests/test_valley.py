"""The elongated-valley study: the data draws behave as stated, the closed form matches the step
by step rule, the lecture's claims hold, and the doctor calls the lr 1e-2 run an oscillation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from lossdoctor.report import valley as report
from lossdoctor.studies import valley


@pytest.fixture(scope="module")
def study():
    return valley.run(quick=True)


def test_data_draws_sit_on_either_side_of_200(study):
    assert 199.8 <= study.lambda_max <= 199.98 < 200 < 201 <= study.contrast_lambda_max <= 205
    x = valley.draw(study.data_seed)
    # The Hessian of torch's mse_loss (no ½) is 2·mean(x xᵀ): check it against autograd.
    model = valley.TwoWeights((0.3, -0.2))
    xt = torch.from_numpy(x)
    H = torch.autograd.functional.hessian(
        lambda w: F.mse_loss(xt @ w, xt @ torch.tensor(valley.W_STAR, dtype=torch.float64)),
        model.w.detach(),
    )
    assert np.allclose(H.numpy(), study.hessian)
    assert (
        study.contrast_losses[-1] > 1e10 * study.contrast_losses[0]
    )  # lr 1e-2 diverges on the other draw


def test_closed_form_matches_step_by_step():
    S = valley.hessian_of(valley.draw(3)) / 2
    for lr in (1e-2, 1e-3):
        a, b = valley.descend("gd", lr, 500, S), valley.gd_closed_form(lr, 500, S)
        assert (
            np.allclose(a, b, atol=1e-8, rtol=1e-9, equal_nan=True) and np.isfinite(b[:100]).all()
        )


def test_the_lecture_claims(study):
    bounce, crawl = study.run("gd-1e-2"), study.run("gd-1e-7")
    # lr 1e-7: 100,000 updates and still about as far from the optimum as where it started.
    start = np.linalg.norm(np.asarray(study.w_start) - study.w_star)
    assert crawl.distance_at[100_000] > 0.99 * start
    # lr 1e-2: the steep coordinate still flips sign every update after 1,000 updates.
    steps = bounce.kept_steps
    w2 = bounce.trajectory[(steps >= 900) & (steps <= 1000), 1] - study.w_star[1]
    assert np.all(np.sign(w2[1:]) == -np.sign(w2[:-1]))
    # The lecture's Adagrad keeps jumping late; decay and warm-up + decay settle.
    assert study.run("adagrad").late_jump > 10 * max(
        study.run("adagrad-decay").late_jump, study.run("adagrad-warmup").late_jump
    )
    assert study.run("adagrad-warmup").distance_at[10_000] < 1e-3


def test_doctor_says_oscillation_with_the_bound(study):
    d = study.diagnosis
    assert d.cause == "oscillation"
    err = d.measurements.lambda_max_error
    # A Ritz value lies below the largest eigenvalue, up to the rounding of float64 sums (the
    # two-parameter Hessian is resolved exactly: the run stops a few ulps from it, either side).
    assert d.sharpness <= study.lambda_max * (1 + 1e-12)
    assert abs(study.lambda_max - d.sharpness) <= err + 1e-9
    assert d.max_stable_lr == pytest.approx(2 / d.sharpness, rel=1e-9) and d.max_stable_lr > 1e-2
    assert any(f"{d.max_stable_lr:.5g}" in e for e in d.evidence)  # the edge is evidence...
    assert d.prescriptions[0].action["lr"] <= 0.5 * d.max_stable_lr * (1 + 1e-9)  # ...not advice
    assert d.verified and d.prescriptions[0].trial.better


def test_render_and_json(study, tmp_path):
    section = report.render(study, tmp_path)
    assert (tmp_path / "valley-contours.png").stat().st_size > 10_000
    assert (tmp_path / "valley-curves.png").stat().st_size > 10_000
    assert "OSCILLATION" in section.body
    assert json.loads(json.dumps(study.to_dict()))["diagnosis"]["cause"] == "oscillation"
