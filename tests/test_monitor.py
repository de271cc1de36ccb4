"""The Monitor: it never changes training (bit for bit, RNG included), records the right cheap
signals, estimates sharpness, notices stalls, diagnoses them, logs them and calls back."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lossdoctor.training.monitor import Monitor, MonitorRecord, train_monitored


def problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 6, generator=gen)
    y = torch.randint(0, 3, (96,), generator=gen)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.3), nn.Tanh(), nn.Linear(16, 3))
    return model, batches


def train(with_monitor: bool, steps: int = 60, **monitor_kwargs):
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
    # Sharpness every 5 steps, and every stall check (every 4 steps) forced to find a stall so the
    # doctor runs (Hessian, probe step, critical-point test) in the middle of training.
    monkeypatch.setattr(Monitor, "_stall_window", lambda self: self.window)
    plain_model, plain_opt, _, plain_rng = train(False)
    model, opt, monitor, rng = train(True, sharpness_every=5, window=8, check_every=4)
    assert len(monitor.record.sharpness) == 12
    assert monitor._count == 60 and monitor._next_check > 8  # checks ran (diagnoses only if not progressing)
    for a, b in zip(plain_model.parameters(), model.parameters()):
        assert torch.equal(a, b)
        assert torch.equal(plain_opt.state[a]["momentum_buffer"], opt.state[b]["momentum_buffer"])
    assert torch.equal(plain_rng, rng)
    assert model.training


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
        assert rec.update_norms[t] == pytest.approx(float((thetas[t] - thetas[t - 1]).norm()), rel=1e-4)
    assert rec.lrs == [0.1] * 6 and rec.sharpness == []


def quadratic(top: float = 50.0):
    """Least squares with Hessian diag(top, 1) (mse_loss of x·w with x = diag(sqrt(top/2), sqrt(1/2)))."""
    x = torch.diag(torch.tensor([math.sqrt(top / 2), math.sqrt(0.5)], dtype=torch.float64)) * math.sqrt(2)
    y = torch.zeros(2, 1, dtype=torch.float64)
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0]], dtype=torch.float64))  # on the sharp eigenvector
    return model, (x, y)


def test_sharpness_estimate_matches_the_known_top_eigenvalue():
    model, data = quadratic(top=50.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    monitor = Monitor(model, F.mse_loss, data, sharpness_every=1, sharpness_iters=20)
    for _ in range(3):
        opt.zero_grad()
        loss = F.mse_loss(model(data[0]), data[1])
        loss.backward()
        opt.step()
        monitor.step(loss, opt)
    assert [s for s, _ in monitor.record.sharpness] == [1, 2, 3]
    assert monitor.record.sharpness[-1][1] == pytest.approx(50.0, rel=1e-6)


def test_bouncing_run_is_diagnosed_logged_and_called_back(caplog):
    model, data = quadratic(top=50.0)
    opt = torch.optim.SGD(model.parameters(), lr=1.998 / 50.0)
    seen = []
    monitor = Monitor(model, F.mse_loss, data, window=30, callback=seen.append)
    with caplog.at_level(logging.WARNING, logger="lossdoctor.monitor"):
        run = train_monitored(model, F.mse_loss, data, opt, steps=60, monitor=monitor)
    assert run.steps == 60 and len(run.record.losses) == 60
    assert monitor.diagnoses and monitor.diagnoses[0].cause == "oscillation"
    assert seen == monitor.diagnoses and monitor.diagnoses[0].step == 30
    assert monitor.diagnoses[0].max_stable_lr == pytest.approx(2 / 50.0, rel=1e-5)
    assert "oscillation" in caplog.text
    assert min(run.record.grad_cosines[1:]) < -0.99


def test_nan_is_diagnosed_at_once_and_training_stops():
    model, data = quadratic(top=50.0)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # lr·λ = 50: diverges fast
    run = train_monitored(model, F.mse_loss, data, opt, steps=500,
                          monitor=Monitor(model, F.mse_loss, data, window=100))
    assert run.steps < 500 and not math.isfinite(run.final_loss)
    assert run.diagnoses[-1].cause == "diverging"


def test_bad_input():
    model, data = quadratic()
    with pytest.raises(ValueError, match="window"):
        Monitor(model, F.mse_loss, data, window=2)
    with pytest.raises(ValueError, match="signals_every"):
        Monitor(model, F.mse_loss, data, signals_every=0)
    with pytest.raises(ValueError, match="sharpness_every"):
        Monitor(model, F.mse_loss, data, sharpness_every=-1)
    with pytest.raises(TypeError, match="callback"):
        Monitor(model, F.mse_loss, data, callback=3)
    monitor = Monitor(model, F.mse_loss, data)
    with pytest.raises(TypeError, match="loss"):
        monitor.step("0.1")
    with pytest.raises(ValueError, match="scalar"):
        monitor.step(torch.ones(3))
    with pytest.raises(TypeError, match="Optimizer"):
        monitor.step(0.1, optimizer="sgd")
    with pytest.raises(ValueError, match="steps"):
        train_monitored(model, F.mse_loss, data, torch.optim.SGD(model.parameters(), lr=0.1), steps=0)


def feed(monitor: Monitor, losses) -> None:
    for value in losses:
        monitor.step(float(value))


def test_noisy_falling_run_is_not_sent_to_the_doctor_and_a_noisy_stall_is(monkeypatch):
    # Minibatch losses with 20% noise: falling 5% per 60 steps, a point estimate on 60 steps
    # would call a stall at random; the monitor widens the window instead and stays quiet. A flat
    # run under the same noise is caught, on a widened window that is passed to the doctor.
    import numpy as np

    import lossdoctor.training.monitor as monitor_module

    windows = []

    def spy(*args, window, **kwargs):
        windows.append(window)
        return real(*args, window=window, **kwargs)

    real = monitor_module.diagnose
    monkeypatch.setattr(monitor_module, "diagnose", spy)
    model, data = quadratic(top=50.0)
    rng = np.random.default_rng(0)
    t = np.arange(960)
    falling = Monitor(model, F.mse_loss, data, sharpness_every=0, lr=1e-3, check_every=30)
    feed(falling, 0.95 ** (t / 60) * (1 + 0.2 * rng.standard_normal(t.size)))
    assert windows == []
    flat = Monitor(model, F.mse_loss, data, sharpness_every=0, lr=1e-3, check_every=30)
    feed(flat, 1 + 0.2 * rng.standard_normal(t.size))
    assert windows and max(windows) > flat.window


def test_signals_are_spaced_to_fit_the_budget_and_exact_where_taken(monkeypatch):
    # A tiny model trains in microseconds: the signals are taken on pairs of steps (NaN between)
    # and are exact on those pairs. A slow training step (here made slow by sleeping) gets them
    # every step.
    import time

    import lossdoctor.training.monitor as monitor_module

    def run(pause: float):
        model, batches = problem(1)
        model.eval()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        monitor = Monitor(model, F.cross_entropy, batches, sharpness_every=0)
        grads, thetas = [], []
        for x, y in batches * 40:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            time.sleep(pause)
            monitor.step(0.5, opt)
            grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())
            thetas.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone())
        return monitor.record, grads, thetas

    monkeypatch.setattr(monitor_module, "SIGNAL_BUDGET", 0.01)
    rec, grads, thetas = run(0.0)
    taken = [i for i, g in enumerate(rec.grad_norms) if math.isfinite(g)]
    assert 2 < len(taken) < 60 and taken[:2] == [0, 1]
    for i in taken:
        assert rec.grad_norms[i] == pytest.approx(float(grads[i].norm()), rel=1e-5)
        if i > 0:
            cos = float(grads[i] @ grads[i - 1] / (grads[i].norm() * grads[i - 1].norm()))
            assert rec.grad_cosines[i] == pytest.approx(cos, abs=1e-5)
            assert rec.update_norms[i] == pytest.approx(float((thetas[i] - thetas[i - 1]).norm()), rel=1e-4)
    assert sum(math.isfinite(c) for c in rec.grad_cosines) == len(taken) - 1
    monkeypatch.setattr(monitor_module, "SIGNAL_BUDGET", 0.5)
    rec, _, _ = run(0.005)
    assert all(math.isfinite(g) for g in rec.grad_norms)
