"""The doctor's words: a summary per cause, the evidence as sentences, and the text of each prescription.

Nothing here decides; every number comes from the measurements.

Examples:
    >>> describe_action({"lr": 0.003}, lr=0.03)
    'set the learning rate to 0.003 (10x lower than now)'
"""

from __future__ import annotations

import math
from typing import Any

from .._results import fmt
from ..analysis.layers import LayerCurvature
from .measure import Measurements
from .rules import ROUNDING_EVIDENCE, Decision
from .trend import LossTrend

CAUSE_TITLES = {
    "diverging": "the loss is diverging",
    "oscillation": "the steps are too large: the loss bounces instead of going down",
    "progressing": "the loss is still going down",
    "momentum_too_high": "momentum is too high",
    "dead_units": "units are dead",
    "weight_decay": "weight decay is too strong",
    "vanishing_gradients": "the gradients vanish on their way back through the layers",
    "saddle_point": "the parameters sit at a saddle point",
    "degenerate": "the parameters sit at a degenerate critical point",
    "converged": "training has converged to a minimum",
    "gradient_noise": "the loss hovers at SGD's noise floor",
    "flat_plateau": "the loss sits on a flat plateau",
    "lr_too_small": "the learning rate is too small",
    "ill_conditioned": "the loss crawls along an ill-conditioned valley",
    "undetermined": "the loss stalled, but no measured cause stands out",
}


def _lr(x: float | None) -> str:
    return "?" if x is None else f"{x:.3g}"


def _ratio(new: float, old: float | None) -> str:
    if not old or not new:
        return ""
    r = new / old
    return f" ({r:.3g}x the current lr)" if r >= 1 else f" ({1 / r:.3g}x lower than now)"


def describe_action(  # noqa: C901 - one independent clause per action key, in reading order
    action: dict[str, Any],
    *,
    lr: float | None = None,
    momentum: float | None = None,
    weight_decay: float | None = None,
) -> str:
    """The sentence for one action."""
    a = dict(action)
    if not a:
        return "no change: keep training as you are"
    if a.get("stop"):
        return "stop: training has converged (check the test loss for overfitting)"
    parts = []
    if "restore_checkpoint" in a:
        parts.append("restore the last checkpoint from before the loss went bad")
    if "reinitialize" in a:
        parts.append("restart from a fresh initialization (every layer's reset_parameters)")
    if "reinit_dead_units" in a:
        parts.append(
            f"re-initialize the {a['reinit_dead_units']['units']} dead units (fresh incoming weights, zero bias)"
        )
    if "escape_saddle" in a:
        e = a["escape_saddle"]
        parts.append(
            f"step {fmt(e['step'])} along the negative-curvature eigenvector (λ = {fmt(e['eigenvalue'], 4)})"
        )
    if "perturb" in a:
        parts.append(
            f"add Gaussian noise of {a['perturb']['scale']:g}x each parameter's scale to the weights"
        )
    if "optimizer" in a:
        parts.append(
            f"switch to {a['optimizer']} with lr {_lr(a['lr'])} (per-parameter step sizes)"
        )
    elif "lr" in a:
        parts.append(f"set the learning rate to {_lr(a['lr'])}{_ratio(a['lr'], lr)}")
    if "momentum" in a and "optimizer" not in a:
        parts.append(
            f"set momentum to {a['momentum']:g}"
            + (f" (now {momentum:g})" if momentum is not None else "")
        )
    if "weight_decay" in a:
        parts.append(
            f"set weight decay to {a['weight_decay']:.3g}"
            + (f" (now {weight_decay:.3g})" if weight_decay else "")
        )
    if "clip_grad_norm" in a:
        parts.append(f"clip the gradient norm at {a['clip_grad_norm']:g}")
    if "schedule" in a:
        parts.append(f"decay the learning rate to 0 over {a['steps']} steps (cosine schedule)")
    if "warmup" in a:
        parts.append(
            "restart with a learning-rate warm-up (lossdoctor.warmup) so the early, sharp region is "
            "crossed with small steps"
        )
    if "loss" in a:
        parts.append(
            "train with cross-entropy on the logits instead of a squared error on probabilities: it keeps a "
            "gradient where the outputs saturate (change your loss function)"
        )
    if "batch_size" in a:
        parts.append(
            f"use a larger batch, e.g. {a['batch_size']} (less gradient noise per step; change your DataLoader)"
        )
    if "normalization" in a:
        parts.append(
            "add normalization layers (BatchNorm/LayerNorm) or residual connections, and an initialization "
            "that keeps units out of saturation (change your model)"
        )
    if "activation" in a:
        parts.append(
            "use LeakyReLU/GELU instead of ReLU so units cannot die for good (change your model)"
        )
    if "capacity" in a:
        parts.append(
            "if the loss is not low enough: more capacity, another initialization, or regularization "
            "to reach a different minimum (change your model)"
        )
    if "preconditioning" in a:
        parts.append(
            "standardize the inputs (zero mean, unit variance per feature) so no direction is much "
            "steeper than the others (change your data pipeline)"
        )
    return "; ".join(parts) if parts else str(a)


def _still_falling(t: LossTrend) -> bool:
    """The window's loss fell beyond two standard errors of its noise."""
    drop, se = t.relative_drop, t.drop_se
    return math.isfinite(drop) and math.isfinite(se) and drop - 2 * se > 0


def summary(decision: Decision, m: Measurements) -> str:  # noqa: C901 - one sentence per cause, a flat table in reading order
    """One sentence: the cause and the numbers that decided it."""
    cause = decision.cause
    title = CAUSE_TITLES[cause]
    t = m.trend
    if cause == "progressing":
        return (
            f"{title}: it fell {t.relative_drop:.1%} over the last {t.window} steps; keep training"
        )
    if cause == "diverging":
        if m.nonfinite_params:
            return f"{title}: the parameters are NaN/Inf"
        if t.nonfinite or (m.loss is not None and not math.isfinite(m.loss)):
            return f"{title}: the loss is NaN/Inf"
        return f"{title}: it grew {t.growth:.2f}x over the last {t.window} steps"
    if cause == "oscillation":
        decided = " ".join(e.name for e in decision.evidence)
        if _still_falling(t):
            # A slow fall the stall test counts as a stall (a crawl below its rate): the loss does
            # go down, only far less than its steps promise.
            title = "the steps are too large: the loss still falls, but only slowly"
        if "gradient cosine after one step" in decided:
            return (
                f"{title}: each step crosses the valley floor along the sharpest direction (S = "
                f"{fmt(m.lr_sharpness, 4)}, limit {fmt(m.threshold, 3)}): the gradient flips (cosine "
                f"{fmt(m.probe_cosine, 3)}) and the loss follows {fmt(m.efficiency, 2)} of what it predicts"
            )
        if "S / stability limit" in decided:
            return (
                f"{title}: the lr-scaled sharpness S = {fmt(m.lr_sharpness, 4)} is past its stability limit "
                f"{fmt(m.threshold, 3)}"
                + (
                    f"; the sharpest direction lies {m.sharpest_block_share:.0%} in "
                    f"`{m.sharpest_block}`"
                    if m.sharpest_block
                    else ""
                )
            )
        if "realized / predicted decrease" in decided:
            return (
                f"{title}: one step of your optimizer from here realizes {fmt(m.trust_ratio, 2)} of the decrease "
                "its gradient promises: the step is longer than the region where the slope holds"
            )
        return (
            f"{title}: the gradient is {fmt(m.noise_ratio, 3)}x more noise than signal, and {m.optimizer}'s "
            "normalized steps keep their size, so the loss hovers at a level set by the lr"
        )
    if cause == "momentum_too_high":
        return (
            f"{title}: μ = {m.momentum:g} makes each step on slow directions {1 / (1 - m.momentum):.0f}x the lr, "
            "so the parameters ring around the valley instead of settling"
        )
    if cause == "dead_units":
        worst = m.worst_dead_layer
        share = m.dead_fraction or 0.0
        at = f"; layer `{worst.name}` has {worst.dead_units} of {worst.units} dead" if worst else ""
        return f"{title}: {share:.0%} of the hidden units never fire on the data (zero gradient on every sample){at}"
    if cause == "weight_decay":
        return (
            f"{title}: the decay part of each step is {m.decay_share:.2g}x the gradient part and points against it "
            f"(cosine {m.decay_alignment:+.2f}): decay undoes what the gradient gains"
        )
    if cause == "vanishing_gradients":
        return (
            f"{title}: a hidden layer's gradient, relative to its weights, is {m.depth_gradient_ratio:.2g}x the "
            "output layer's: the first layers barely learn"
        )
    if cause == "saddle_point":
        return (
            f"{title}: the gradient is ~0 (relative {fmt(m.relative_grad)}) and the Hessian has a negative "
            f"eigenvalue {fmt(m.lambda_min, 4)}: a direction that still goes down"
        )
    if cause == "degenerate":
        return (
            f"{title}: the gradient and the Hessian both vanish at loss {fmt(m.loss, 4)} (a higher-order "
            "critical point such as all-zero weights): gradient descent cannot move"
        )
    if cause == "converged" and any(e.name == ROUNDING_EVIDENCE for e in decision.evidence):
        return (
            f"{title}: the loss {fmt(m.loss, 3)} is at the float floor: rounding the parameters "
            "alone changes it by as much, so no step can lower it further (in this precision)"
        )
    if cause == "converged":
        return (
            f"{title}: the gradient is ~0 (relative {fmt(m.relative_grad)}) and no direction curves down "
            f"(λ_min = {fmt(m.lambda_min, 4)}); this is where gradient descent ends"
        )
    if cause == "gradient_noise":
        return (
            f"{title}: the minibatch gradient is {m.noise_ratio:.3g}x more noise than signal at batch "
            f"{m.batch_size}, and the loss follows {fmt(m.efficiency, 2)} of what the gradient predicts"
        )
    if cause == "flat_plateau":
        return (
            f"{title}: the gradient ({fmt(m.grad_norm)}) and the curvature (λ_max {fmt(m.lambda_max, 3)}) are tiny "
            f"for the loss {fmt(m.loss, 4)}: saturated units or outputs leave little slope to follow"
        )
    if cause == "lr_too_small":
        return (
            f"{title}: S = {fmt(m.lr_sharpness, 3)} is {fmt(m.stability, 2)} of its stability limit; the steps "
            "are stable and follow the gradient, but they are tiny"
        )
    if cause == "ill_conditioned":
        return (
            f"{title}: the sharpest direction holds the lr at S = {fmt(m.lr_sharpness, 3)} of the limit "
            f"{fmt(m.threshold, 3)}, while the loss sits along directions {fmt(m.condition, 3)}x flatter that "
            f"need ~{fmt(m.half_life, 3)} steps to halve"
        )
    if cause == "undetermined":
        return (
            f"{title}: every rule's numbers fall short of its thresholds, even relaxed 3x; the "
            "prescriptions below are the usual suspects, each tried"
        )
    return title  # pragma: no cover


def evidence(decision: Decision, m: Measurements) -> tuple[str, ...]:  # noqa: C901 - one independent clause per measured quantity, in reading order
    """The numbers behind the verdict, as sentences: the deciding comparisons first."""
    lines = [f"decided by: {e}" for e in decision.evidence]
    if decision.kept_previous:
        lines.append(
            "the previous verdict still holds (thresholds relaxed 1.5x): kept until new evidence"
        )
    t = m.trend
    lines.append(
        f"over the last {t.window} steps the loss went {fmt(t.start, 5)} -> {fmt(t.end, 5)} (medians of the "
        f"first and last thirds): {t.relative_drop:+.2%} ± {t.drop_se:.2%}"
    )
    if m.mode_note:
        lines.append(m.mode_note)
    if m.loss is not None and math.isfinite(m.loss):
        agree = (
            ""
            if m.loss_agrees in (None, True)
            else (
                f" (the recent training losses are ~{fmt(m.recent_loss, 4)}: they disagree by more than their noise)"
            )
        )
        lines.append(
            f"measured in {m.mode} mode on {m.samples} samples: loss {fmt(m.loss, 5)}{agree}, gradient norm "
            f"{fmt(m.grad_norm)}, parameter norm {fmt(m.param_norm)}"
        )
    if m.noise_ratio is not None:
        lines.append(
            f"gradient noise at batch {m.batch_size}: tr(Σ)/B is {m.noise_ratio:.3g}x the squared full gradient "
            f"(minibatch gradient norm {fmt(m.minibatch_grad_norm)})"
        )
    if m.lambda_max is not None:
        lines.append(
            f"sharpness λ_max = {fmt(m.lambda_max, 5)}"
            + ("" if m.lambda_max_converged else " (not converged: a lower bound)")
        )
    if m.lr_sharpness is not None:
        what = (
            "lr·λ_max"
            if not m.adaptive
            else "preconditioned sharpness S (top eigenvalue of D^½HD^½)"
        )
        edge = (
            m.lr * m.threshold / m.lr_sharpness
            if m.lr and m.threshold is not None and m.lr_sharpness > 0
            else None
        )
        bound = (
            (
                f": the stability edge is lr = {edge:.5g} (never the value to use); half of it, {edge / 2:.3g}, "
                "is safe"
            )
            if edge
            else ""
        )
        lines.append(
            f"{what} = {fmt(m.lr_sharpness, 4)} against the stability limit {fmt(m.threshold, 3)} "
            f"({m.optimizer}, momentum {m.momentum:g}){bound}"
        )
    if m.sharpest_block:
        lines.append(
            f"the sharpest direction lies {m.sharpest_block_share:.0%} in `{m.sharpest_block}`"
        )
    if m.half_life is not None and m.reducible is not None:
        pace = (
            f"needs ~{fmt(m.half_life, 3)} steps at this step size to lose half of it"
            if math.isfinite(m.half_life)
            else "does not lose half of it at this step size (the step overshoots the directions that hold it)"
        )
        lines.append(
            f"the local quadratic model can still lose {fmt(m.reducible)} and {pace}; curvature along the "
            f"gradient step S_g = {fmt(m.gradient_curvature)}"
            + (
                f" (S/S_g = {fmt(m.condition, 3)})"
                if m.condition
                else " (negative curvature along the gradient)"
            )
        )
    if m.trust_ratio is not None:
        lines.append(
            f"one step of the optimizer from here (full-data gradient) changed the loss by "
            f"{fmt(m.probe_loss_change)} against {fmt(m.probe_predicted)} predicted (ratio {m.trust_ratio:.3g}); "
            f"the gradient turned to cosine {fmt(m.probe_cosine, 3)}"
        )
    if m.efficiency is not None:
        lines.append(
            f"realized loss drop per step over the window / first-order prediction: {m.efficiency:.3g}"
        )
    if m.decay_share is not None:
        lines.append(
            f"weight decay {m.weight_decay:g}: its part of the step is {m.decay_share:.2g}x the gradient's "
            f"(cosine {fmt(m.decay_alignment, 2)})"
        )
    if m.dead_fraction:
        lines.append(
            f"dead hidden units: {m.dead_fraction:.0%} ("
            + ", ".join(f"{s.name} {s.dead_units}/{s.units}" for s in m.hidden_layers if s.units)
            + ")"
        )
    if m.depth_gradient_ratio is not None:
        lines.append(
            f"gradient/weight ratio, smallest hidden layer over the output layer: {m.depth_gradient_ratio:.3g}"
        )
    if m.lambda_min is not None:
        lines.append(f"smallest Hessian eigenvalue λ_min = {fmt(m.lambda_min, 4)}")
    if m.optimizer_note:
        lines.append(m.optimizer_note)
    lines.append(
        f"cost: {m.hvps} Hessian-vector products, {m.gradients} full-data gradients on {m.samples} samples, "
        f"{m.seconds:.2f} s"
    )
    return tuple(lines)


HETEROGENEOUS = (
    0.3  # block heterogeneity above this, or a λ_max spread above SPREAD: one lr cannot fit all
)
SPREAD = 100.0


def one_lr_cannot_fit(layers: LayerCurvature | None) -> bool:
    """Whether the blocks' curvatures differ so much that one learning rate cannot suit them all (block heterogeneity above ``HETEROGENEOUS`` or a λ_max spread above ``SPREAD``)."""
    return layers is not None and (layers.heterogeneity > HETEROGENEOUS or layers.spread > SPREAD)


def layer_evidence(layers: LayerCurvature | None) -> tuple[str, ...]:
    """The per-block lines: the block that breaks stability, and whether one lr fits every block."""
    if layers is None or not layers.rows:
        return ()
    lines = []
    sharpest = layers.sharpest()
    if layers.threshold is not None and sharpest.lr_sharpness is not None:
        state = "above" if sharpest.lr_sharpness > layers.threshold else "within"
        lines.append(
            f"layer `{sharpest.name}` ({sharpest.module_type}) is the sharpest block: S_b = "
            f"{fmt(sharpest.lr_sharpness, 3)} {state} the limit {fmt(layers.threshold, 3)} (its λ_max "
            f"{fmt(sharpest.lambda_max, 4)}, {layers.lanczos_steps}-step Lanczos lower bound)"
        )
    if len(layers.rows) < 2:
        return tuple(lines)
    fit = (
        "one lr cannot fit every block: an adaptive method (Adam) gives each its own step"
        if one_lr_cannot_fit(layers)
        else "the blocks' spectra are alike: one lr can fit them"
    )
    lines.append(
        f"block heterogeneity {layers.heterogeneity:.3f} (mean Jensen-Shannon distance of {len(layers.rows)} "
        f"blockwise spectra), λ_max spread over blocks {fmt(layers.spread, 3)}x: {fit}"
    )
    return tuple(lines)
