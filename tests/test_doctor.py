"""diagnose() end to end on real stalled runs whose cause is known by construction (the tuning
seeds of studies/stall_cases.py), the numbers it reports against closed forms, what it leaves
untouched, and what it refuses."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lossdoctor as ld
from cases import full_batch_losses
from lossdoctor.doctor import measure as measure_module
from lossdoctor.studies import stall_cases as sc

FAMILIES = {f.key: f for f in sc.FAMILIES}


def run(key: str, seed: int = 0, **kwargs):
    stall = FAMILIES[key].build(seed)
    d = ld.diagnose(
        stall.model,
        stall.loss_fn,
        stall.data,
        history=stall.losses[-240:],
        optimizer=stall.optimizer,
        checkpoint=stall.checkpoint,
        **kwargs,
    )
    return stall, d


@pytest.mark.parametrize(
    "key",
    [
        "healthy/least-squares",
        "diverging/least-squares",
        "diverging/mlp-nan",
        "oscillation/least-squares",
        "ill-conditioned/least-squares",
        "lr-too-small/mlp",
        "noise/least-squares",
        "plateau/sigmoid-mse",
        "dead/relu-bias",
        "vanishing/tanh-small-init",
        "weight-decay/mlp-sgd",
        "momentum/mlp",
        "saddle/lecture",
        "saddle/deep-linear",
        "degenerate/deep-linear",
        "converged/least-squares",
    ],
)
def test_known_cause_and_a_verified_first_prescription(key):
    stall, d = run(key)
    assert d.cause == FAMILIES[key].cause, str(d)
    top = d.prescriptions[0]
    if d.cause == "progressing":
        assert top.action == {} and not d.verified
    elif d.cause == "converged":
        assert top.action == {"stop": True}
    else:
        assert d.verified and top.trial is not None and top.trial.better, str(d)
        assert top.trial.loss < top.trial.control_loss
    json.dumps(d.to_dict())
    assert str(d).startswith("diagnosis: ")


def test_oscillation_numbers_match_the_closed_form():
    stall, d = run("oscillation/least-squares")
    x, _ = stall.full_data
    lam = float(torch.linalg.eigvalsh(sc.ls_hessian(x))[-1])
    lr = stall.optimizer.param_groups[0]["lr"]
    # λ_max is a Rayleigh quotient (a lower bound) inside its own Lanczos error bound.
    err = d.measurements.lambda_max_error
    assert d.sharpness <= lam * (1 + 1e-12) and abs(d.sharpness - lam) <= err + 1e-9
    assert err <= 0.1 * lam
    assert d.lr_sharpness == pytest.approx(lr * d.sharpness, rel=1e-9)
    assert d.max_stable_lr == pytest.approx(2 / d.sharpness, rel=1e-9)
    # The prescribed lr sits inside the bound with a margin; the edge itself is only evidence.
    assert d.prescriptions[0].action["lr"] <= 0.51 * d.max_stable_lr
    assert any("2" in e and "stability limit" in e for e in d.evidence)


def test_saddle_escape_direction_and_step_on_the_lecture_toy():
    stall, d = run("saddle/lecture")
    m = d.measurements
    assert m.lambda_min == pytest.approx(-2.0, abs=1e-4)
    u = m.escape_direction
    assert torch.allclose(u.abs(), torch.full((2,), 2**-0.5, dtype=u.dtype), atol=1e-4)
    top = d.prescriptions[0]
    assert "escape_saddle" in top.action
    model = stall.model
    top.apply(model, stall.optimizer)
    assert (
        float(sc.full_loss(model, stall.loss_fn, stall.full_data)) < 1e-6
    )  # w1·w2 = 1 reached in one step


def test_converged_least_squares_reads_the_exact_spectrum():
    stall, d = run("converged/least-squares")
    x, _ = stall.full_data
    lo = float(torch.linalg.eigvalsh(sc.ls_hessian(x))[0])
    m = d.measurements
    assert m.lambda_min >= lo - 1e-12 and abs(m.lambda_min - lo) <= m.lambda_min_error + 1e-9
    assert d.measurements.relative_grad < 1e-6


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_a_long_way_down_a_bowl_is_a_small_lr_not_a_plateau(scale):
    # Linear regression from zero towards large targets at lr 1e-4: the minimum lies far beyond
    # the parameters' norm (sqrt(2 L / λ_max) / ||θ|| = 3.8 and 35), which alone read "flat"; but
    # the gradient is the one a bowl of curvature λ_max holding this loss has (ratio ~0.97).
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=gen)
    y = scale * (x @ torch.tensor([1.0, 2.0, 3.0])).unsqueeze(1)
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    losses = full_batch_losses(model, F.mse_loss, x, y, opt, 80)
    d = ld.diagnose(model, F.mse_loss, (x, y), history=losses, optimizer=opt, verify=False)
    m = d.measurements
    hessian = 2 * torch.cat([x, torch.ones(256, 1)], 1).T @ torch.cat([x, torch.ones(256, 1)], 1)
    top = float(torch.linalg.eigvalsh(hessian.double() / 256)[-1])
    assert m.lambda_max <= top + 1e-9 and top - m.lambda_max <= m.lambda_max_error + 1e-9
    assert math.sqrt(2 * m.loss / m.lambda_max) / max(m.param_norm, 1.0) > 3
    assert m.relative_grad > 0.9
    assert d.cause == "lr_too_small"


def test_a_loss_at_the_float_floor_is_converged():
    # A noiseless least-squares fit in float32 trained to 7e-16: steps, probes and the trend are
    # rounding noise there (it was called lr_too_small, and oscillation under the Monitor).
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=gen)
    y = 0.1 * (x @ torch.tensor([1.0, 2.0, 3.0])).unsqueeze(1)
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    losses = full_batch_losses(model, F.mse_loss, x, y, opt, 300)
    assert losses[-1] < 1e-13 and len(set(losses[-20:])) <= 2  # stuck at rounding
    d = ld.diagnose(model, F.mse_loss, (x, y), history=losses[-120:], optimizer=opt, verify=False)
    assert d.cause == "converged" and "float floor" in d.summary
    # Rounding θ alone (to float32, each coordinate by up to eps·|θ_i|) moves the loss by as much.
    with torch.no_grad():
        exact = F.mse_loss(model.double()(x.double()), y.double()).item()
        model.float()
    assert abs(exact - losses[-1]) > 0.1 * losses[-1]


def test_dead_units_are_counted_exactly():
    stall, d = run("dead/relu-bias")
    x, _ = stall.full_data
    with torch.no_grad():
        h1 = torch.relu(stall.model[0](x[:512]))
    dead_first = int((h1.amax(0) <= 0).sum())
    stats = {s.name: s for s in d.measurements.layers}
    assert stats["0"].dead_units == dead_first and stats["0"].units == 64


def test_restore_needs_the_checkpoint_and_says_so_without_it():
    stall = FAMILIES["diverging/mlp-nan"].build(0)
    d = ld.diagnose(
        stall.model,
        stall.loss_fn,
        stall.data,
        history=stall.losses[-240:],
        optimizer=stall.optimizer,
    )
    assert d.cause == "diverging" and d.summary.endswith("NaN/Inf")
    top = d.prescriptions[0]
    assert not top.applicable and "restore" in top.text
    with pytest.raises(ld.NeedsCodeChange):
        top.apply(stall.model, stall.optimizer)


def snapshot(model, opt):
    return (
        [p.detach().clone() for p in model.parameters()],
        [b.clone() for b in model.buffers()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        {
            k: v.clone() if isinstance(v, torch.Tensor) else v
            for s in opt.state.values()
            for k, v in s.items()
        },
        [dict(g, params=None) for g in opt.param_groups],
        [m.training for m in model.modules()],
        torch.get_rng_state(),
        np.random.get_state()[1].copy(),
        random.getstate(),
    )


def same(a, b):
    for x, y in zip(a, b):
        if isinstance(x, list) and x and isinstance(x[0], torch.Tensor):
            assert all(torch.equal(p, q) for p, q in zip(x, y))
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y)
        elif isinstance(x, np.ndarray):
            assert np.array_equal(x, y)
        elif isinstance(x, dict):
            assert x.keys() == y.keys() and all(
                torch.equal(x[k], y[k]) if isinstance(x[k], torch.Tensor) else x[k] == y[k]
                for k in x
            )
        else:
            assert x == y


@pytest.mark.parametrize("key", ["lr-too-small/cnn-bn", "dead/relu-bias", "weight-decay/mlp-adamw"])
def test_model_optimizer_and_every_rng_are_left_exactly_as_they_were(key):
    stall = FAMILIES[key].build(1)
    loss = stall.loss_fn(stall.model(stall.data[0][0]), stall.data[0][1])
    loss.backward()  # a gradient left in .grad, as after a training step
    stall.model.train()
    before = snapshot(stall.model, stall.optimizer)
    d = ld.diagnose(
        stall.model,
        stall.loss_fn,
        stall.data,
        history=stall.losses[-240:],
        optimizer=stall.optimizer,
    )
    assert d.verified and d.cost["trial_steps"] > 0
    same(before, snapshot(stall.model, stall.optimizer))


def test_batchnorm_measured_in_the_mode_it_trains_in():
    torch.manual_seed(0)
    x = 5 * torch.randn(256, 6) + 3  # far from the running statistics' N(0, 1)
    y = torch.randint(0, 3, (256,))
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 256, 32)]
    losses = sc.train_steps(model, F.cross_entropy, opt, batches, 0, 80)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.reset_running_stats()  # eval mode now normalizes with statistics the run never had
    model.eval()  # as after an evaluation: auto mode checks the history against both modes
    d = ld.diagnose(model, F.cross_entropy, batches, history=losses, optimizer=opt, verify=False)
    m = d.measurements
    assert m.mode == "train" and "batch statistics" in m.mode_note and m.loss_agrees
    assert not model.training  # left as it was
    d = ld.diagnose(
        model.train(), F.cross_entropy, batches, history=losses, optimizer=opt, verify=False
    )
    assert d.measurements.mode == "train" and d.measurements.mode_note is None
    d = ld.diagnose(
        model, F.cross_entropy, batches, history=losses, optimizer=opt, verify=False, mode="eval"
    )
    assert d.measurements.mode == "eval" and d.measurements.loss_agrees is False
    assert any("disagree" in e for e in d.evidence)


def test_cost_is_bounded_reported_and_progress_finishes():
    seen = []
    stall, d = run(
        "weight-decay/mlp-adamw", progress=lambda done, total: seen.append((done, total))
    )
    assert d.cost["hvps"] <= measure_module.BUDGET
    assert (
        d.cost["trial_steps"] <= 5 * 2 * d.trials.steps
    )  # one doubling of the trial length at most
    assert seen and seen[-1][0] == seen[-1][1]
    assert d.measurements.samples <= measure_module.SAMPLES


def test_interrupted_measurement_gives_no_verdict(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("lossdoctor.doctor.diagnosis.measure", interrupted)
    stall = FAMILIES["oscillation/least-squares"].build(0)
    d = ld.diagnose(
        stall.model, stall.loss_fn, stall.data, history=stall.losses, optimizer=stall.optimizer
    )
    assert d.cause == "undetermined" and d.interrupted and not d.stalled
    assert "interrupted" in d.summary


def test_interrupted_trials_keep_the_verdict_unverified(monkeypatch):
    import lossdoctor.doctor.trials as trials

    real = trials._run_branch
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trials, "_run_branch", flaky)
    stall, d = run("oscillation/least-squares")
    assert d.cause == "oscillation" and d.interrupted and not d.verified
    assert all(p.trial is None or p.trial.steps == d.trials.steps for p in d.prescriptions)


def test_lr_only_history_gets_trials_with_plain_sgd():
    stall = FAMILIES["lr-too-small/mlp"].build(0)
    lr = stall.optimizer.param_groups[0]["lr"]
    d = ld.diagnose(stall.model, stall.loss_fn, stall.data, history=stall.losses, lr=lr)
    assert d.cause == "lr_too_small" and d.verified and d.prescriptions[0].action["lr"] > lr


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(window=2), ValueError, "window"),
        (dict(mode="bogus"), ValueError, "mode"),
        (dict(verify="yes"), ValueError, "verify"),
        (dict(trial_steps=1), ValueError, "trial_steps"),
        (dict(train_step=3), TypeError, "train_step"),
        (dict(lr=-1.0), ValueError, "lr must be"),
        (dict(optimizer="sgd"), TypeError, "optimizer must be"),
    ],
)
def test_bad_input(kwargs, error, match):
    model = nn.Linear(3, 1)
    data = (torch.randn(8, 3), torch.randn(8, 1))
    with pytest.raises(error, match=match):
        ld.diagnose(model, F.mse_loss, data, history=[1.0, 0.9, 0.8, 0.7, 0.6], **kwargs)


def test_a_function_is_not_a_model():
    with pytest.raises(TypeError, match="model must be"):
        ld.diagnose(
            lambda x: x, F.mse_loss, (torch.ones(2, 1), torch.ones(2, 1)), history=[1.0] * 5
        )


def test_causes_are_documented():
    from lossdoctor.doctor.explain import CAUSE_TITLES

    assert set(CAUSE_TITLES) == set(ld.CAUSES)
    assert not math.isnan(len(ld.CAUSES))


def sgd_run(lr_of_the_mean: float, summing: bool | str, batch: int = 50, steps: int = 240):
    """SGD on a tanh MLP with the loss summed over each batch at lr/batch, or averaged at lr: the
    same trajectory (up to rounding), the losses batch times larger."""
    torch.manual_seed(0)
    x = torch.randn(400, 10)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    data = [(x[i : i + batch], y[i : i + batch]) for i in range(0, 400, batch)]
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 2))
    if summing:
        loss_fn = (
            nn.CrossEntropyLoss(reduction="sum")
            if summing == "module"
            else lambda o, t: F.cross_entropy(o, t, reduction="sum")
        )
        opt = torch.optim.SGD(model.parameters(), lr=lr_of_the_mean / batch)
    else:
        loss_fn, opt = F.cross_entropy, torch.optim.SGD(model.parameters(), lr=lr_of_the_mean)
    losses = []
    for step in range(steps):
        xb, yb = data[step % len(data)]
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, loss_fn, data, losses, opt


@pytest.mark.parametrize("kind", ["function", "module"])
@pytest.mark.parametrize(("lr", "cause"), [(1e-5, "lr_too_small"), (30.0, "oscillation")])
def test_a_loss_that_sums_over_the_batch_is_diagnosed_like_its_mean(lr, cause, kind):
    """The doctor measures the objective the optimizer steps on, so SGD at lr/B on the batch sum
    gets the verdict of SGD at lr on the mean, and lr prescriptions 1/B of theirs (B = 50; each
    is tried on its own run). A summing function (no ``.reduction``) was refused with a
    ValueError naming a ``reduction=`` that diagnose does not take; a summing module was measured
    per sample, B times too flat (the oscillation called "progressing")."""
    verdicts = {}
    for summing in (False, kind):
        model, loss_fn, data, losses, opt = sgd_run(lr, summing)
        d = ld.diagnose(model, loss_fn, data, history=losses, optimizer=opt)
        top = d.prescriptions[0].action
        verdicts[summing] = (d.cause, top.get("lr"))
    (mean_cause, mean_lr), (sum_cause, sum_lr) = verdicts[False], verdicts[kind]
    assert mean_cause == sum_cause == cause
    assert mean_lr is not None and sum_lr is not None
    assert 0.5 < 50 * sum_lr / mean_lr < 2
