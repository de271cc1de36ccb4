"""The Monitor: it never changes training without treat=True (bit for bit, every RNG included, a
shuffling DataLoader too), its checks count steps (identical runs, identical verdicts), it
records the right cheap signals, keeps the doctor inside its budget, and with treat=True applies
a verified prescription (and undoes one that hurt)."""

from __future__ import annotations

import logging
import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import lossdoctor.doctor.monitor as monitor_module
from lossdoctor import Monitor, MonitorRecord, train_monitored
from lossdoctor.doctor.prescriptions import Prescription, Trial
from lossdoctor.studies import stall_cases as sc


def problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 6, generator=gen)
    y = torch.randint(0, 3, (96,), generator=gen)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 96, 32)]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.3), nn.Tanh(), nn.Linear(16, 3))
    return model, batches


def train(with_monitor: bool, steps: int = 90, **monitor_kwargs):
    model, batches = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    monitor = Monitor(model, F.cross_entropy, batches, **monitor_kwargs) if with_monitor else None
    torch.manual_seed(123)  # dropout draws from the global RNG: the monitor must not
    for step in range(steps):
        x, y = batches[step % len(batches)]
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if monitor is not None:
            monitor.step(loss, opt)
    return model, opt, monitor, torch.get_rng_state()


def test_training_is_bit_for_bit_the_same_with_the_monitor(monkeypatch):
    # Every check forced to find a stall, no budget cap: the doctor runs (measurements, probe step)
    # in the middle of training, and sharpness every 5 steps.
    monkeypatch.setattr(
        Monitor, "_stall_check", lambda self: monitor_module.StallCheck(self.window)
    )
    plain_model, plain_opt, _, plain_rng = train(False)
    model, opt, monitor, rng = train(
        True, sharpness_every=5, window=8, check_every=4, doctor_share=None
    )
    assert len(monitor.record.sharpness) == 18
    assert monitor.diagnoses or monitor._next_doctor > 8  # the doctor ran
    for a, b in zip(plain_model.parameters(), model.parameters()):
        assert torch.equal(a, b)
        assert torch.equal(plain_opt.state[a]["momentum_buffer"], opt.state[b]["momentum_buffer"])
    assert torch.equal(plain_rng, rng)
    assert model.training


def test_a_shuffling_dataloader_is_not_disturbed():
    def run(with_monitor):
        random.seed(7)
        np.random.seed(7)
        gen = torch.Generator().manual_seed(0)
        data = TensorDataset(
            torch.randn(64, 4, generator=gen), torch.randint(0, 2, (64,), generator=gen)
        )
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        loader = DataLoader(data, batch_size=16, shuffle=True)
        monitor = Monitor(model, F.cross_entropy, loader, window=8) if with_monitor else None
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        torch.manual_seed(5)
        seen = []
        for _ in range(3):
            for x, y in loader:
                seen.append(y.clone())
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                if monitor is not None:
                    monitor.step(loss, opt)
        return (
            seen,
            [p.detach().clone() for p in model.parameters()],
            np.random.get_state()[1].copy(),
            random.random(),
        )

    a, b = run(False), run(True)
    assert all(torch.equal(x, y) for x, y in zip(a[0], b[0]))
    assert all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
    assert np.array_equal(a[2], b[2]) and a[3] == b[3]


def test_identical_runs_get_identical_checks_and_verdicts():
    def run():
        fam = next(f for f in sc.FAMILIES if f.key == "lr-too-small/mlp")
        stall = fam.build(0)
        monitor = Monitor(stall.model, stall.loss_fn, stall.data, doctor_share=None)
        train_monitored(
            stall.model, stall.loss_fn, stall.data, stall.optimizer, steps=400, monitor=monitor
        )
        return [
            (d.step, d.cause, tuple(p.text for p in d.prescriptions)) for d in monitor.diagnoses
        ]

    first, second = run(), run()
    assert first and first == second
    assert first[0][1] == "lr_too_small"


def test_record_signals_match_a_hand_computation():
    model, batches = problem(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, F.cross_entropy, batches, sharpness_every=0, signals_every=1)
    model.eval()  # no dropout: the hand computation below repeats the same gradients
    grads, thetas, losses = [], [], []
    for x, y in batches * 2:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        monitor.step(loss, opt)
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())
        thetas.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone())
        losses.append(float(loss.detach()))
    rec = monitor.record
    assert isinstance(rec, MonitorRecord) and rec.steps == list(range(1, 7))
    assert rec.losses == pytest.approx(losses)
    assert rec.grad_norms == pytest.approx([float(g.norm()) for g in grads], rel=1e-5)
    assert math.isnan(rec.grad_cosines[0]) and math.isnan(rec.update_norms[0])
    for t in range(1, 6):
        cos = float(grads[t] @ grads[t - 1] / (grads[t].norm() * grads[t - 1].norm()))
        assert rec.grad_cosines[t] == pytest.approx(cos, abs=1e-5)
        assert rec.update_norms[t] == pytest.approx(
            float((thetas[t] - thetas[t - 1]).norm()), rel=1e-4
        )
    assert rec.lrs == [0.1] * 6 and rec.sharpness == []


def test_signals_on_pairs_of_steps_are_exact_where_taken():
    model, batches = problem(1)
    model.eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, F.cross_entropy, batches, sharpness_every=0, signals_every=4)
    grads = []
    for x, y in batches * 8:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        monitor.step(0.5, opt)
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())
    rec = monitor.record
    taken = [i for i, g in enumerate(rec.grad_norms) if math.isfinite(g)]
    assert taken == [3, 7, 11, 15, 19, 23]  # steps 4, 8, ... (1-based)
    for i in taken:
        cos = float(grads[i] @ grads[i - 1] / (grads[i].norm() * grads[i - 1].norm()))
        assert rec.grad_cosines[i] == pytest.approx(cos, abs=1e-5)


def quadratic(top: float = 50.0):
    """Least squares with Hessian diag(top, 1)."""
    x = torch.diag(
        torch.tensor([math.sqrt(top / 2), math.sqrt(0.5)], dtype=torch.float64)
    ) * math.sqrt(2)
    y = torch.zeros(2, 1, dtype=torch.float64)
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(
            torch.tensor([[1.0, 0.0]], dtype=torch.float64)
        )  # on the sharp eigenvector
    return model, (x, y)


def test_sharpness_estimate_matches_the_known_top_eigenvalue():
    model, data = quadratic(top=50.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    monitor = Monitor(
        model, F.mse_loss, data, sharpness_every=1, sharpness_iters=20, doctor_share=None
    )
    for _ in range(3):
        opt.zero_grad()
        loss = F.mse_loss(model(data[0]), data[1])
        loss.backward()
        opt.step()
        monitor.step(loss, opt)
    assert [s for s, _ in monitor.record.sharpness] == [1, 2, 3]
    assert monitor.record.sharpness[-1][1] == pytest.approx(50.0, rel=1e-6)


def test_sharpness_is_the_top_eigenvalue_not_the_largest_in_magnitude():
    # Hessian diag(-10, 1): power iterations find -10; λ_max is 1.
    model = nn.Linear(2, 1, bias=False).double()
    x = torch.eye(2, dtype=torch.float64)
    curvature = torch.tensor([[-10.0], [1.0]], dtype=torch.float64)

    def loss_fn(out, c):
        return (c * out**2).mean()

    monitor = Monitor(
        model, loss_fn, (x, curvature), sharpness_every=1, sharpness_iters=4, doctor_share=None
    )
    for _ in range(2):
        monitor.step(1.0)
    assert [value for _, value in monitor.record.sharpness] == pytest.approx([1.0, 1.0])


def test_bouncing_run_is_diagnosed_logged_and_called_back(caplog):
    model, data = quadratic(top=50.0)
    opt = torch.optim.SGD(model.parameters(), lr=1.999 / 50.0)
    seen = []
    monitor = Monitor(model, F.mse_loss, data, window=30, callback=seen.append, doctor_share=None)
    with caplog.at_level(logging.WARNING, logger="lossdoctor.monitor"):
        run = train_monitored(model, F.mse_loss, data, opt, steps=60, monitor=monitor)
    assert run.steps == 60 and len(run.record.losses) == 60
    assert monitor.diagnoses and monitor.diagnoses[0].cause == "oscillation"
    assert seen == monitor.diagnoses and monitor.diagnoses[0].step == 30
    assert monitor.diagnoses[0].max_stable_lr == pytest.approx(2 / 50.0, rel=1e-3)
    assert "oscillation" in caplog.text
    with pytest.raises(ValueError, match="steps"):
        train_monitored(
            model, F.mse_loss, data, torch.optim.SGD(model.parameters(), lr=0.1), steps=0
        )


def test_nan_is_diagnosed_at_once_and_training_stops():
    model, data = quadratic(top=50.0)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    run = train_monitored(
        model,
        F.mse_loss,
        data,
        opt,
        steps=500,
        monitor=Monitor(model, F.mse_loss, data, window=100),
    )
    assert run.steps < 500 and not math.isfinite(run.final_loss)
    assert run.diagnoses and run.diagnoses[-1].cause == "diverging"


def test_the_doctor_waits_for_its_budget():
    model, data = quadratic(top=50.0)
    monitor = Monitor(
        model, F.mse_loss, data, window=20, lr=1e-3, sharpness_every=0, doctor_share=0.05
    )
    for _ in range(40):
        monitor.step(1.0)  # a flat loss: a stall at every check
    # 40 steps x 5% = 2 step-equivalents: not even the cheapest diagnosis; it waited.
    assert monitor.diagnoses == [] and monitor.deferred >= 1
    for _ in range(2000):
        monitor.step(1.0)
    assert monitor.diagnoses
    assert monitor.doctor_cost <= 0.05 * monitor.steps + 1e-9


class _FakeClock:
    """time.perf_counter for the monitor: advanced by the test, not by the machine."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_the_wall_clock_budget_pays_a_diagnosis_its_measured_seconds(monkeypatch):
    # Steps of 1 ms; a diagnosis takes 40 ms, far beyond its counted passes (fixed cost). The
    # wall clock must hold the doctor's measured seconds within 5% of the training seconds.
    clock = _FakeClock()
    monkeypatch.setattr(monitor_module, "time", clock)
    real_diagnose = monitor_module.diagnose

    def slow_diagnose(*args, **kwargs):
        clock.now += 0.040
        return real_diagnose(*args, **kwargs)

    monkeypatch.setattr(monitor_module, "diagnose", slow_diagnose)
    model, data = quadratic(top=50.0)
    monitor = Monitor(
        model,
        F.mse_loss,
        data,
        window=20,
        lr=1e-3,
        sharpness_every=0,
        doctor_share=0.05,
        budget_clock="wall",
    )
    after_each = []
    for _ in range(6000):
        clock.now += 0.001  # the training step
        if monitor.step(1.0) is not None:
            after_each.append((monitor.doctor_seconds, monitor.train_seconds))
    assert len(after_each) >= 2 and monitor.deferred >= 1
    # The first waited for the prior fixed cost (30 ms) on top of its counted passes:
    # 5% of the training seconds covered it before it ran.
    first_doctor, first_train = after_each[0]
    assert first_train * 0.05 >= 0.030
    # Every diagnosis, once one was timed, fits the share it was run under.
    for doctor_seconds, train_seconds in after_each[1:]:
        assert doctor_seconds <= 0.05 * train_seconds + 1e-9
    assert monitor.doctor_seconds == pytest.approx(0.040 * len(monitor.diagnoses), rel=1e-9)
    assert monitor.train_seconds == pytest.approx(0.001 * (monitor.steps - 1), rel=1e-9)
    # The step clock (counted passes) would have run far more of them in the same steps.
    counted = Monitor(
        model, F.mse_loss, data, window=20, lr=1e-3, sharpness_every=0, doctor_share=0.05
    )
    for _ in range(6000):
        clock.now += 0.001
        counted.step(1.0)
    assert len(counted.diagnoses) > len(monitor.diagnoses)
    assert counted.doctor_seconds > 0.05 * 0.001 * counted.steps


def test_treat_applies_a_verified_prescription_and_the_run_ends_lower():
    fam = next(f for f in sc.FAMILIES if f.key == "lr-too-small/mlp")

    def final_loss(treat):
        stall = fam.build(0)
        monitor = Monitor(stall.model, stall.loss_fn, stall.data, treat=treat) if treat else None
        train_monitored(
            stall.model, stall.loss_fn, stall.data, stall.optimizer, steps=300, monitor=monitor
        )
        return sc.full_loss(stall.model, stall.loss_fn, stall.full_data), monitor

    plain, _ = final_loss(False)
    treated, monitor = final_loss(True)
    assert monitor.actions and monitor.actions[0].kind == "applied"
    assert "lr" in monitor.actions[0].prescription.action
    assert treated < plain


def test_treatment_that_hurt_is_undone(monkeypatch):
    monkeypatch.setattr(
        Monitor, "_stall_check", lambda self: monitor_module.StallCheck(self.window)
    )
    model, data = quadratic(top=50.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    monitor = Monitor(model, F.mse_loss, data, window=10, treat=True, sharpness_every=0)
    bad = Prescription(
        "lr 30", {"lr": 30.0 / 50.0}, trial=Trial(10, 1.0, 0.5, 1.0, 0.5, 0.5, True, True)
    )
    monkeypatch.setattr(monitor_module, "diagnose", lambda *a, **k: _fake_diagnosis(bad))
    train_monitored(model, F.mse_loss, data, opt, steps=40, monitor=monitor)
    kinds = [a.kind for a in monitor.actions]
    assert kinds[:2] == ["applied", "undone"]
    assert opt.param_groups[0]["lr"] == 1e-3


def _fake_diagnosis(rx):
    from lossdoctor.doctor.diagnosis import Diagnosis

    return Diagnosis(
        cause="lr_too_small",
        summary="",
        stalled=True,
        evidence=(),
        prescriptions=(rx,),
        decision=None,
        measurements=None,
        verified=True,
        trials=None,
        cost={"hvps": 0, "gradients": 0, "trial_steps": 0},
    )


def test_bad_input():
    model, data = quadratic()
    with pytest.raises(ValueError, match="window"):
        Monitor(model, F.mse_loss, data, window=2)
    with pytest.raises(ValueError, match="signals_every"):
        Monitor(model, F.mse_loss, data, signals_every=0)
    with pytest.raises(ValueError, match="sharpness_every"):
        Monitor(model, F.mse_loss, data, sharpness_every=-1)
    with pytest.raises(ValueError, match="doctor_share"):
        Monitor(model, F.mse_loss, data, doctor_share=0)
    with pytest.raises(ValueError, match="diagnose_samples"):
        Monitor(model, F.mse_loss, data, diagnose_samples=0)
    with pytest.raises(TypeError, match="callback"):
        Monitor(model, F.mse_loss, data, callback=3)
    with pytest.raises(TypeError, match="treat"):
        Monitor(model, F.mse_loss, data, treat="yes")
    with pytest.raises(ValueError, match="budget_clock"):
        Monitor(model, F.mse_loss, data, budget_clock="cpu")
    monitor = Monitor(model, F.mse_loss, data)
    with pytest.raises(TypeError, match="loss"):
        monitor.step("0.1")
    with pytest.raises(ValueError, match="scalar"):
        monitor.step(torch.ones(3))
    with pytest.raises(TypeError, match="optimizer"):
        monitor.step(0.1, optimizer="sgd")
    for value in (math.nan, 1.0, 2.0):  # NaN in the first steps: diagnosed, no crash
        monitor.step(float(value))


def test_sharpness_estimates_are_paid_from_the_doctors_budget():
    """A λ_max estimate the budget cannot pay for waits (deterministically) until it can, and its
    cost counts against the same cap as the diagnoses."""
    model, data = quadratic(top=50.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    monitor = Monitor(
        model, F.mse_loss, data, sharpness_every=10, sharpness_iters=4, doctor_share=0.5
    )
    cost = monitor._sharpness_cost()
    for _ in range(60):
        opt.zero_grad()
        loss = F.mse_loss(model(data[0]), data[1])
        loss.backward()
        opt.step()
        monitor.step(loss, opt)
        assert monitor.doctor_cost <= 0.5 * monitor.steps + 1e-9
    steps = [s for s, _ in monitor.record.sharpness]
    # Due at 10, 20, ...; each paid once the bank (0.5 per step) holds its cost.
    assert steps and steps[0] == max(10, math.ceil(cost / 0.5))
    assert all(b - a >= 10 for a, b in zip(steps, steps[1:]))
    assert monitor.doctor_cost == pytest.approx(cost * len(steps))


def _spiky_losses(steps: int, spikes: tuple[int, ...]) -> np.ndarray:
    """A falling loss with spikes that decay back within a few steps."""
    t = np.arange(steps)
    bump = sum(np.where(t >= s, 30 * np.exp(-np.clip(t - s, 0, None) / 5.0), 0.0) for s in spikes)
    return 2 * np.exp(-0.01 * t) * (1 + bump)


def _monitored_checks(losses: np.ndarray) -> list[int]:
    model, data = quadratic(top=50.0)
    monitor = Monitor(
        model, F.mse_loss, data, window=30, lr=1e-3, sharpness_every=0, doctor_share=None
    )
    for value in losses:
        monitor.step(float(value))
    return [d.step for d in monitor.diagnoses]


def test_a_spike_the_loss_recovers_from_is_left_alone_but_a_divergence_is_not():
    from lossdoctor.doctor.trend import growth, recovering, separated_growth

    spiky = _spiky_losses(120, (44,))
    window = spiky[30:60]  # the check at step 60 sees the loss grown beyond its noise...
    assert growth(window) > 1.5 and separated_growth(window) > 1
    assert recovering(window)  # ...but already coming back down
    assert _monitored_checks(spiky) == []
    # Growth that keeps its peak at the end is acted on at the first check that sees it.
    t = np.arange(90)
    diverging = 2 * np.exp(-0.01 * t + 0.08 * np.clip(t - 40, 0, None))
    assert not recovering(diverging[30:60])
    assert _monitored_checks(diverging)[0] == 60
    # A spike that leaves the loss stuck higher is diagnosed once the stall shows (not waved on).
    t = np.arange(120)
    stuck = np.where(
        t < 44, 2 * np.exp(-0.01 * t), 4.0 + 30 * np.exp(-np.clip(t - 44, 0, None) / 5.0)
    )
    checks = _monitored_checks(stuck)
    assert checks and checks[0] > 60


def test_a_loss_that_sums_over_the_batch_does_not_stop_training():
    """A training loop whose loss sums its samples (a function, no ``.reduction`` to read) got a
    ValueError out of ``monitor.step`` at the first diagnosis (step 1229 of a stalled run): the
    Hessian check refuses such a loss unless told. The Monitor measures the loss as the optimizer
    steps on it, so it watches, estimates λ_max and diagnoses."""
    model, batches = problem()
    model[1].p = 0.0
    opt = torch.optim.SGD(model.parameters(), lr=1e-7)  # a stall: far too small for this loss
    sum_loss = lambda o, t: F.cross_entropy(o, t, reduction="sum")  # noqa: E731
    monitor = Monitor(
        model, sum_loss, batches, sharpness_every=20, window=16, check_every=8, doctor_share=None
    )
    for step in range(120):
        x, y = batches[step % len(batches)]
        opt.zero_grad()
        loss = sum_loss(model(x), y)
        loss.backward()
        opt.step()
        monitor.step(loss, opt)
    sharpness = monitor.record.sharpness
    assert sharpness and all(math.isfinite(v) for _, v in sharpness)
    assert monitor.diagnoses and monitor.diagnoses[-1].cause == "lr_too_small"
