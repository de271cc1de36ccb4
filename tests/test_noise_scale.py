"""The gradient noise scale on linear regression, where the per-sample gradients and hence
tr(Sigma) and |G|^2 are known in closed form."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lossdoctor as ld
from cases import ModelSnapshot
from lossdoctor._results import fmt
from test_model_unchanged import model_in_a_mixed_state


def regression(n: int = 200, d: int = 5):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = x @ torch.ones(d, 1, dtype=torch.float64) + 0.5 * torch.randn(
        n, 1, generator=gen, dtype=torch.float64
    )
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linspace(0.0, 1.5, d, dtype=torch.float64))
    return model, x, y


def exact_noise_scale(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float, float]:
    residual = x @ model.weight.detach().T - y  # (n, 1)
    per_sample = 2 * residual * x  # gradient of (x^T w - y)^2 per sample
    g = per_sample.mean(0)
    trace_sigma = float(((per_sample - g) ** 2).sum(1).mean())
    g2 = float(g @ g)
    return trace_sigma / g2, trace_sigma, g2


def test_linear_regression_matches_closed_form():
    model, x, y = regression()
    b_exact, s_exact, g2_exact = exact_noise_scale(model, x, y)
    before = ModelSnapshot.take(model)
    ns = ld.gradient_noise_scale(
        model,
        F.mse_loss,
        [(x[:100], y[:100]), (x[100:], y[100:])],
        small_batch=4,
        big_batch=100,
        pairs=3000,
        seed=1,
    )
    before.assert_same(model, "gradient_noise_scale")
    assert ns.trace_sigma == pytest.approx(s_exact, rel=0.1)
    assert ns.grad_norm_sq == pytest.approx(g2_exact, rel=0.1)
    assert abs(ns.b_simple - b_exact) < 4 * ns.standard_error + 0.05 * b_exact
    assert ns.interval[0] < ns.b_simple < ns.interval[1]
    assert ns.suggested_batch_size == round(ns.b_simple) and ns.num_samples == 200
    assert "B_simple" in str(ns) and ns.to_dict()["pairs"] == 3000


def test_chunked_big_batch_equals_whole_and_model_unchanged():
    model, x, y = regression()
    whole = ld.gradient_noise_scale(
        model, F.mse_loss, (x, y), small_batch=8, big_batch=64, pairs=20
    )
    chunked = ld.gradient_noise_scale(
        model, F.mse_loss, (x, y), small_batch=8, big_batch=64, pairs=20, max_batch=16
    )
    assert chunked.b_simple == pytest.approx(whole.b_simple, rel=1e-9)
    bn, loss_fn, data = model_in_a_mixed_state(dropout=0.0)
    before = ModelSnapshot.take(bn)
    ld.gradient_noise_scale(bn, loss_fn, data, small_batch=2, big_batch=8, pairs=3, mode="train")
    before.assert_same(bn, "gradient_noise_scale in train mode")


def test_bad_input():
    model, x, y = regression()
    with pytest.raises(ValueError, match="small_batch < big_batch"):
        ld.gradient_noise_scale(model, F.mse_loss, (x, y), small_batch=64, big_batch=64)
    with pytest.raises(ValueError, match="pairs"):
        ld.gradient_noise_scale(model, F.mse_loss, (x, y), pairs=1)
    with pytest.raises(TypeError, match="one-shot iterator"):
        ld.gradient_noise_scale(model, F.mse_loss, ((x, y) for _ in range(2)))
    with pytest.raises(ValueError, match="reduction='none'; a scalar loss"):
        ld.gradient_noise_scale(model, nn.MSELoss(reduction="none"), (x, y), small_batch=8)


def test_report_section_shows_bounded_and_unbounded_intervals(tmp_path):
    pytest.importorskip("matplotlib")
    from lossdoctor.report import noise_scale as report
    from lossdoctor.studies.noise_scale import NoiseScaleStudy

    model, x, y = regression()
    far = ld.gradient_noise_scale(model, F.mse_loss, (x, y), small_batch=4, big_batch=64, pairs=20)
    with torch.no_grad():  # at the least-squares solution: |G|^2 = 0, B_simple infinite
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    near = ld.gradient_noise_scale(model, F.mse_loss, (x, y), small_batch=4, big_batch=64, pairs=20)
    assert far.bounded and not near.bounded and near.interval[1] == float("inf")
    assert near.standard_error == float("inf") and "no upper bound" in str(near)
    # |G|^2's estimate is below 0 here: nothing bounds B_simple from below either
    assert near.interval[0] == 0 and "not determined" in str(near) and near.grad_norm_sq < 0
    assert "from the point estimate only" in str(near) and "point estimate only" not in str(far)
    assert near.to_dict()["interval"][1] is None  # JSON has no inf
    study = NoiseScaleStudy(
        target_loss=0.5,
        points=[("initialization", far.loss, far), ("batch 4, loss<=0.5", near.loss, near)],
        recommended_batch=near.suggested_batch_size,
        batch_sizes=[4, 64],
        seconds_to_target=[1.0, None],
        seconds_to_target_std=[0.1, None],
        updates_to_target=[10.0, None],
        samples_to_target=[40.0, None],
        reached=[1, 0],
        seeds=1,
        time_stops_improving_at=None,
        samples_double_at=None,
    )
    section = report.render(study, tmp_path)
    assert (tmp_path / "noise-scale.png").stat().st_size > 0
    lo, hi = far.interval
    assert f"{fmt(lo)}..{fmt(hi)}" in section.body
    assert f"{fmt(near.interval[0])}..inf (no upper bound)" in section.body
    assert "B_simple (68% interval)" in section.body  # the table's column
    assert "no upper end (batch 4, loss&lt;=0.5 here)" in section.body  # the text names it


def sum_of_squares(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(output, target, reduction="sum")


@pytest.mark.parametrize("max_batch", [None, 16])
def test_summing_loss_gives_the_mean_losses_estimate(max_batch):
    # A summing loss weighs a batch's gradient by its size: taken for a mean, the big batch's
    # gradient counts big/small times more than the small one's (B_simple came out negative).
    model, x, y = regression()
    options = dict(small_batch=8, big_batch=64, pairs=30, bootstrap=50, max_batch=max_batch)
    mean = ld.gradient_noise_scale(model, F.mse_loss, (x, y), **options)
    for loss_fn, reduction in (
        (sum_of_squares, "sum"),
        (nn.MSELoss(reduction="sum"), None),
    ):
        summed = ld.gradient_noise_scale(model, loss_fn, (x, y), reduction=reduction, **options)
        assert summed.b_simple == pytest.approx(mean.b_simple, rel=1e-9)
        assert summed.grad_norm_sq == pytest.approx(mean.grad_norm_sq, rel=1e-9)
        assert summed.loss == pytest.approx(mean.loss, rel=1e-9)
        assert summed.suggested_batch_size == mean.suggested_batch_size


def test_summing_loss_function_without_reduction_is_refused():
    model, x, y = regression()
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match=r"sum of its samples' losses.*reduction='sum'"):
        ld.gradient_noise_scale(model, sum_of_squares, (x, y), small_batch=8, big_batch=64)
    with pytest.raises(ValueError, match="returns the mean"):
        ld.gradient_noise_scale(model, F.mse_loss, (x, y), small_batch=8, reduction="sum")
    assert torch.equal(torch.get_rng_state(), rng)


def test_observed_reduction():
    model, x, y = regression()
    assert ld.observed_reduction(model, sum_of_squares, (x, y)) == "sum"
    assert ld.observed_reduction(model, nn.MSELoss(reduction="sum"), (x, y)) == "sum"
    assert ld.observed_reduction(model, F.mse_loss, [(x[:1], y[:1]), (x, y)]) == "mean"
    assert ld.observed_reduction(model, F.mse_loss, (x[:1], y[:1])) is None  # cannot tell
    # The square of the batch's summed residual: neither a mean nor a sum of per-sample losses.
    assert ld.observed_reduction(model, lambda o, t: (o - t).sum() ** 2, (x, y)) is None
