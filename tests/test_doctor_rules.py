"""The doctor's decision rules on constructed measurements: each cause from the numbers that
define it, the rules' order, hysteresis, and the evidence that decided. No model is built."""

from __future__ import annotations

import math

import pytest

from lossdoctor.doctor import rules
from lossdoctor.doctor.measure import LayerStat, Measurements
from lossdoctor.doctor.rules import CAUSES, decide
from lossdoctor.doctor.trend import LossTrend


def trend(**kw) -> LossTrend:
    base = dict(
        window=60,
        start=1.0,
        end=1.0,
        relative_drop=0.0,
        growth=1.0,
        drop_per_step=0.0,
        noise=0.001,
        drop_se=0.001,
        threshold=0.02,
        stalled=True,
        lag1=0.0,
        nonfinite=0,
        separated_growth=0.99,
    )
    base.update(kw)
    return LossTrend(**base)


def layers(ratios, dead=None) -> tuple[LayerStat, ...]:
    dead = dead or [0] * len(ratios)
    return tuple(
        LayerStat(str(i), "Linear", 100, 1.0, r, r, 10, d)
        for i, (r, d) in enumerate(zip(ratios, dead))
    )


def measurements(**kw) -> Measurements:
    """A stalled SGD run at a moderate point: no rule but the slowest (ill-conditioned) holds."""
    base = dict(
        trend=trend(),
        history_grad_norm=None,
        history_cosine=None,
        recent_loss=1.0,
        mode="train",
        mode_note=None,
        samples=512,
        batch_size=64,
        batches=8,
        nonfinite_params=False,
        loss=1.0,
        loss_agrees=True,
        grad_norm=0.5,
        param_norm=10.0,
        minibatch_grad_norm=0.6,
        noise_ratio=0.5,
        optimizer="sgd",
        lr=0.1,
        momentum=0.0,
        threshold=2.0,
        weight_decay=0.0,
        decoupled=False,
        lambda_max_error=0.0,
        lambda_min_error=None,
        adaptive=False,
        effective_lr=0.1,
        optimizer_note=None,
        lambda_max=5.0,
        lambda_max_converged=True,
        lr_sharpness=0.5,
        gradient_curvature=0.2,
        reducible=0.3,
        half_life=500.0,
        negative_mass=0.0,
        probe_loss_change=-0.02,
        probe_predicted=-0.025,
        probe_cosine=0.9,
        update_norm=0.05,
        decay_share=None,
        decay_alignment=None,
        efficiency=0.9,
        layers=layers([1.0, 1.0, 1.0]),
        sharpest_block="0",
        sharpest_block_share=0.5,
        lambda_min=None,
        lambda_min_converged=False,
        hvps=40,
        gradients=2,
        seconds=0.1,
    )
    base.update(kw)
    return Measurements(**base)


CASES = {
    "diverging": dict(
        trend=trend(growth=3.0, separated_growth=2.5, relative_drop=-2.0, stalled=True)
    ),
    "oscillation": dict(
        lr_sharpness=1.998,
        probe_cosine=-0.99,
        efficiency=0.001,
        trend=trend(relative_drop=0.1, stalled=False),
    ),
    "progressing": dict(trend=trend(relative_drop=0.2, stalled=False)),
    "momentum_too_high": dict(momentum=0.99, threshold=3.98),
    "dead_units": dict(layers=layers([1.0, 1.0, 1.0], dead=[8, 0, 0])),
    "weight_decay": dict(weight_decay=0.5, decay_share=0.9, decay_alignment=-0.8),
    "vanishing_gradients": dict(layers=layers([1e-5, 1e-3, 1.0])),
    "saddle_point": dict(grad_norm=1e-6, reducible=0.0, lambda_min=-2.0, lambda_max=2.0),
    "degenerate": dict(
        grad_norm=0.0,
        lambda_max=0.0,
        lambda_min=0.0,
        lr_sharpness=0.0,
        reducible=0.0,
        param_norm=0.0,
    ),
    "converged": dict(grad_norm=1e-7, reducible=1e-12, lambda_min=0.1),
    "gradient_noise": dict(noise_ratio=20.0, efficiency=0.01),
    "flat_plateau": dict(lambda_max=1e-5, lr_sharpness=1e-6, param_norm=2.0),
    "lr_too_small": dict(lr_sharpness=0.001, grad_norm=2.0),
    "ill_conditioned": dict(lr_sharpness=1.8, half_life=2000.0),
}


@pytest.mark.parametrize("cause", sorted(CASES))
def test_each_cause_from_its_own_numbers(cause):
    d = decide(measurements(**CASES[cause]))
    assert d.cause == cause, str(d)
    assert d.stalled == (cause != "progressing")
    assert d.evidence and all(isinstance(e, rules.Evidence) for e in d.evidence)


def test_every_cause_is_reachable_and_named():
    reachable = {cause for cause, _ in rules.RULES}
    assert reachable == set(CAUSES) == set(CASES)


def test_nan_parameters_are_diverging_before_anything_else():
    m = measurements(
        nonfinite_params=True,
        loss=None,
        lambda_max=None,
        lr_sharpness=None,
        trend=trend(relative_drop=0.5, stalled=False),
    )
    assert decide(m).cause == "diverging"


def test_growth_inside_heavy_tailed_noise_is_not_divergence():
    # The medians grew 3x but the quartiles overlap: noise, not divergence.
    m = measurements(
        trend=trend(growth=3.0, separated_growth=0.7, relative_drop=-2.0),
        noise_ratio=20.0,
        efficiency=0.01,
    )
    assert decide(m).cause == "gradient_noise"


def test_bounce_is_called_while_the_loss_still_falls_but_a_fast_fall_is_progress():
    bounce = CASES["oscillation"]
    assert decide(measurements(**bounce)).cause == "oscillation"
    assert (
        decide(measurements(**{**bounce, "trend": trend(relative_drop=0.5, stalled=False)})).cause
        == "progressing"
    )


def test_uphill_probe_step_is_oscillation_even_within_the_stability_limit():
    m = measurements(lr_sharpness=0.5, probe_loss_change=0.01, probe_predicted=-0.02)
    d = decide(m)
    assert d.cause == "oscillation" and "realized / predicted" in str(d)
    # a change below ~100 rounding units of the loss is not evidence
    m = measurements(probe_loss_change=1e-9, probe_predicted=-1e-8)
    assert decide(m).cause != "oscillation"


def test_adaptive_optimizers_hovering_on_noise_have_an_lr_too_high():
    m = measurements(
        optimizer="adam",
        adaptive=True,
        threshold=38.0,
        lr_sharpness=5.0,
        noise_ratio=10.0,
        efficiency=0.0,
    )
    assert decide(m).cause == "oscillation"
    assert decide(measurements(noise_ratio=10.0, efficiency=0.0)).cause == "gradient_noise"


def test_vanishing_gradients_are_not_called_for_adaptive_optimizers():
    m = measurements(
        layers=layers([1e-5, 1e-3, 1.0]),
        optimizer="adam",
        adaptive=True,
        threshold=38.0,
        lr_sharpness=10.0,
    )
    assert decide(m).cause != "vanishing_gradients"


def test_a_small_gradient_with_loss_left_along_the_floor_is_not_a_critical_point():
    valley = measurements(
        grad_norm=0.01,
        lambda_max=200.0,
        loss=0.4,
        reducible=0.3,
        lr_sharpness=1.99,
        half_life=1700.0,
    )
    assert valley.relative_grad < rules.CRITICAL_GRADIENT
    assert decide(valley).cause == "ill_conditioned"


def test_saturated_outputs_are_a_flat_plateau_not_a_saddle_or_a_degenerate_point():
    # Softmax/sigmoid saturated to rounding: gradient and curvature ~0 at weights far from zero,
    # with a tiny negative Ritz value. An all-zero point with the same numbers is degenerate.
    saturated = measurements(
        grad_norm=1e-9,
        lambda_max=3e-9,
        lambda_min=-7e-9,
        reducible=1e-12,
        loss=0.18,
        lr_sharpness=1.5e-9,
        param_norm=20.0,
    )
    assert decide(saturated).cause == "flat_plateau"
    zero = measurements(
        grad_norm=0.0,
        lambda_max=0.0,
        lambda_min=0.0,
        reducible=0.0,
        lr_sharpness=0.0,
        param_norm=0.0,
    )
    assert decide(zero).cause == "degenerate"


def test_a_jump_at_the_end_of_the_history_is_divergence():
    jumped = measurements(
        loss=4.5,
        recent_loss=1.2,
        loss_agrees=False,
        lr_sharpness=2.56,
        trend=trend(relative_drop=0.07, stalled=False, tail_ratio=6.0),
    )
    assert decide(jumped).cause == "diverging"
    # A full-data loss far from a history whose end shows no rise: not enough to call it.
    unrelated = measurements(
        loss=4.5,
        recent_loss=1.2,
        loss_agrees=False,
        trend=trend(relative_drop=0.07, stalled=False, tail_ratio=1.0),
    )
    assert decide(unrelated).cause == "progressing"


def test_adaptive_growth_is_a_bounce_and_sgd_growth_divergence():
    grown = dict(trend=trend(growth=2.5, separated_growth=1.6, relative_drop=-1.5))
    assert decide(measurements(**grown)).cause == "diverging"
    assert (
        decide(measurements(**grown, optimizer="adam", adaptive=True, threshold=38.0)).cause
        == "oscillation"
    )


def test_the_valley_is_called_while_the_loss_still_crawls_down():
    m = measurements(
        lr_sharpness=1.99,
        gradient_curvature=0.05,
        half_life=700.0,
        trend=trend(relative_drop=0.05, stalled=False),
    )
    assert decide(m).cause == "ill_conditioned"
    fast = measurements(
        lr_sharpness=1.99,
        gradient_curvature=0.05,
        half_life=700.0,
        trend=trend(relative_drop=0.3, stalled=False),
    )
    assert decide(fast).cause == "progressing"


def test_negligible_negative_curvature_is_converged_not_a_saddle():
    m = measurements(grad_norm=1e-7, reducible=1e-12, lambda_min=-1e-6, lambda_max=5.0)
    assert decide(m).cause == "converged"


def test_flat_plateau_needs_a_small_gradient_for_the_loss_and_lr_headroom():
    flat = measurements(
        lr_sharpness=0.1, grad_norm=0.05, lambda_max=1.0, loss=1.0
    )  # ||g|| / sqrt(2Lλ) = 0.035
    assert decide(flat).cause == "flat_plateau"
    steep = measurements(lr_sharpness=0.1, grad_norm=1.0, lambda_max=1.0, loss=1.0)
    assert decide(steep).cause == "lr_too_small"


def test_previous_verdict_is_kept_while_its_rule_holds_with_slack():
    # lr_too_small at S/limit 0.2, just inside its 0.25 threshold; a wobble to 0.3 keeps the verdict
    # (0.3 < 0.25 x 1.5) instead of flipping to ill_conditioned.
    wobble = measurements(lr_sharpness=0.6, half_life=500.0)
    assert decide(wobble).cause == "ill_conditioned"
    kept = decide(wobble, previous="lr_too_small")
    assert kept.cause == "lr_too_small" and kept.kept_previous
    # New evidence beyond the slack changes it.
    assert (
        decide(measurements(lr_sharpness=1.8), previous="lr_too_small").cause == "ill_conditioned"
    )
    # Progress and divergence always win.
    assert (
        decide(measurements(**CASES["progressing"]), previous="lr_too_small").cause == "progressing"
    )


def test_rules_read_missing_measurements_as_not_holding():
    m = measurements(
        lambda_max=None,
        lr_sharpness=None,
        threshold=None,
        reducible=None,
        half_life=None,
        probe_loss_change=None,
        probe_predicted=None,
        noise_ratio=None,
        efficiency=None,
        optimizer=None,
    )
    d = decide(m)
    # With nothing measured but a flat loss, no rule can name a cause: said so, not guessed.
    assert d.cause == "undetermined" and d.stalled
    assert "no rule holds" in d.evidence[0].name


def test_far_past_the_limit_is_oscillation_even_while_the_loss_falls():
    falling = trend(relative_drop=0.05, stalled=False)
    assert decide(measurements(lr_sharpness=10.0, trend=falling)).cause == "oscillation"
    # Within twice the limit a falling loss is progress.
    assert decide(measurements(lr_sharpness=1.5, trend=falling)).cause == "progressing"


def test_a_settled_minimum_is_not_confused_with_a_point_without_curvature():
    settled = dict(grad_norm=1e-4, reducible=1e-6, lambda_min=0.01, lambda_max=5.0)
    assert decide(measurements(**settled)).cause == "converged"
    flat_zero = dict(
        grad_norm=0.0,
        reducible=0.0,
        lambda_min=0.0,
        lambda_max=0.0,
        lr_sharpness=0.0,
        param_norm=0.0,
    )
    assert decide(measurements(**flat_zero)).cause == "degenerate"


def test_a_negative_eigenvalue_beside_a_small_gradient_is_a_saddle_only_near_small_weights():
    # relative gradient 0.05 (above the strict critical threshold), λ_min = -0.5 λ_max
    near = dict(
        grad_norm=0.05 * math.sqrt(2 * 5.0),
        lambda_min=-2.5,
        lambda_max=5.0,
        reducible=0.05,
        lr_sharpness=0.01,
    )
    assert decide(measurements(**near, param_norm=0.2)).cause == "saddle_point"
    # the same numbers on large weights (a transformer at a small lr) are no saddle
    assert decide(measurements(**near, param_norm=15.0)).cause != "saddle_point"


def test_a_gradient_at_the_critical_scale_is_not_blamed_on_the_step_size():
    # S at 0.2 of its limit would read "lr too small", but the gradient is 1e-4 of its scale
    m = measurements(
        lr_sharpness=0.4, grad_norm=1e-4 * math.sqrt(2 * 5.0), reducible=5e-3, lambda_min=1e-6
    )
    assert decide(m).cause == "converged"


def test_a_negative_top_ritz_value_is_not_read_as_a_flat_surface():
    m = measurements(
        lambda_max=-0.01, lr_sharpness=0.5, optimizer="adam", adaptive=True, threshold=38.0
    )
    assert decide(m).cause != "flat_plateau"


def test_a_flat_critical_point_of_small_weights_is_degenerate_not_a_minimum():
    # The tiny-initialization saddle: a stalled critical point, weights of norm 0.01, a direction
    # with no curvature at all. A minimum of small weights curves up everywhere (converged).
    tiny = dict(grad_norm=1e-8, reducible=1e-12, lambda_max=0.5, lambda_min=2e-9, param_norm=0.0135)
    d = decide(measurements(**tiny))
    assert d.cause == "degenerate" and d.stalled
    assert "|λ_min| / λ_max" in str(d)
    assert decide(measurements(**{**tiny, "lambda_min": 0.01})).cause == "converged"
    assert decide(measurements(**{**tiny, "param_norm": 5.0})).cause == "converged"


def test_slow_progress_names_a_hypothesis_only_when_slow_and_a_rule_holds():
    slow = measurements(
        trend=trend(relative_drop=0.04, stalled=False), lr_sharpness=0.001, grad_norm=2.0
    )
    d = decide(slow)
    assert d.cause == "progressing"
    hypothesis = rules.slow_progress(slow, d)
    assert hypothesis is not None and hypothesis.cause == "lr_too_small" and hypothesis.stalled
    assert "still falling, slowly" in str(hypothesis)
    fast = measurements(
        trend=trend(relative_drop=0.3, stalled=False), lr_sharpness=0.001, grad_norm=2.0
    )
    assert rules.slow_progress(fast, decide(fast)) is None
    stalled = measurements(lr_sharpness=0.001, grad_norm=2.0)
    assert (
        rules.slow_progress(stalled, decide(stalled)) is None
    )  # only 'progressing' is second-guessed
    # Evidence without a threshold reads as a value, never '>= None'.
    assert "None" not in str(rules.Evidence("λ_min", 0.5, ">=", None))


def test_a_long_reach_is_flat_only_when_the_gradient_is_not_a_bowls():
    # Reach sqrt(2 L / λ_max) / max(||θ||, 1) = 3.8 either way; what tells a flat surface from
    # the far side of a bowl is the gradient against the bowl's sqrt(2 L λ_max) = 9.1.
    def case(grad_norm):
        return measurements(
            loss=17.2, lambda_max=2.43, grad_norm=grad_norm, param_norm=0.67, lr_sharpness=2.4e-4
        )

    bowl = case(8.8)
    assert bowl.relative_grad == pytest.approx(0.97, abs=0.01)
    assert rules._reach(bowl) == pytest.approx(3.76, abs=0.01)
    assert decide(bowl).cause == "lr_too_small"
    flat = case(0.4)  # 0.044 of a bowl's gradient: saturated, like the suite's plateaus
    assert decide(flat).cause == "flat_plateau"


def test_the_float_floor_is_converged_but_a_frozen_tiny_lr_or_dead_net_is_not():
    # All three take steps too small to move float32 parameters; only at the floor is the loss
    # itself no larger than what rounding θ changes it by (eps·Σ|g_i θ_i|).
    floor = measurements(
        loss=6.8e-16,
        grad_norm=1.9e-8,
        param_norm=0.37,
        lr_sharpness=0.73,
        rounding_sensitivity=6.2e-9,
    )
    decision = decide(floor)
    assert decision.cause == "converged"
    assert decision.evidence[0].name == rules.ROUNDING_EVIDENCE
    assert decision.evidence[0].value == pytest.approx(0.92, abs=0.01)
    frozen = measurements(
        loss=1.0, grad_norm=1.0, param_norm=1.0, lr_sharpness=1e-12, rounding_sensitivity=0.5
    )
    assert decide(frozen).cause == "lr_too_small"
    # Weights of 3.7e9 in dead units: ||g||·||θ||·eps = 19 > L, but those units have no gradient.
    dead = measurements(
        loss=2.31,
        grad_norm=0.043,
        param_norm=3.7e9,
        lr_sharpness=1e-3,
        rounding_sensitivity=1.2e-2,
    )
    assert decide(dead).cause != "converged"


def test_an_oscillation_verdict_on_a_falling_loss_does_not_say_it_bounces():
    """The Monitor's stall test counts a slow fall as a stall (13% over 480 steps on a healthy
    AdamW LM); the oscillation verdict there must not claim the loss does not go down."""
    from lossdoctor.doctor.explain import summary

    uphill = dict(lr_sharpness=0.5, probe_loss_change=0.01, probe_predicted=-0.02)
    crawl = trend(window=480, relative_drop=0.13, drop_se=0.005, threshold=0.149, stalled=True)
    flat = trend(relative_drop=0.001, drop_se=0.002)
    for history, bounces in ((crawl, False), (flat, True)):
        m = measurements(**uphill, trend=history)
        d = decide(m)
        assert d.cause == "oscillation"
        text = summary(d, m)
        assert ("bounces instead of going down" in text) == bounces
        assert ("still falls" in text) == (not bounces)
