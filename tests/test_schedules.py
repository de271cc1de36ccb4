"""Warm-up schedulers: the lr at chosen steps against the closed forms, resuming from a
state_dict mid-warm-up, several parameter groups, and bad input."""

from __future__ import annotations

import io
import math

import pytest
import torch

import lossdoctor as ld
from lossdoctor.training.schedules import WarmupScheduler, schedule_lrs


def _optimizer(*lrs: float) -> torch.optim.Optimizer:
    groups = [{"params": [torch.zeros(2, requires_grad=True)], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def _run(scheduler, optimizer, steps: int) -> list[list[float]]:
    """lrs used by each of ``steps`` updates, per group."""
    seen = []
    for _ in range(steps):
        seen.append([float(g["lr"]) for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return seen


def test_is_a_real_torch_scheduler():
    opt = _optimizer(0.1)
    sched = ld.warmup(opt, warmup_steps=5)
    assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
    assert isinstance(sched, WarmupScheduler)


@pytest.mark.parametrize(
    "after,kwargs,closed_form",
    [
        ("constant", {}, lambda u, W, T: 1.0),
        (
            "linear",
            {"total_steps": 30, "min_factor": 0.1},
            lambda u, W, T: 1 - 0.9 * min(u / (T - W), 1),
        ),
        (
            "cosine",
            {"total_steps": 30},
            lambda u, W, T: 0.5 * (1 + math.cos(math.pi * min(u / (T - W), 1))),
        ),
        ("step", {"step_size": 4, "gamma": 0.5}, lambda u, W, T: 0.5 ** (u // 4)),
        ("inverse_sqrt", {}, lambda u, W, T: math.sqrt(W / (u + W))),
    ],
)
def test_lr_at_chosen_steps_matches_closed_form(after, kwargs, closed_form):
    W, T, base, sf = 8, 30, 0.3, 0.1
    opt = _optimizer(base)
    sched = ld.warmup(opt, warmup_steps=W, start_factor=sf, after=after, **kwargs)
    seen = _run(sched, opt, 40)
    for t in (0, 1, 3, 7, 8, 9, 15, 29, 30, 39):
        expected = base * (sf + (1 - sf) * t / W) if t < W else base * closed_form(t - W, W, T)
        assert seen[t][0] == pytest.approx(expected, rel=1e-12, abs=1e-15), (after, t)


def test_default_start_factor_wastes_no_step():
    lrs = schedule_lrs(1.0, 6, warmup_steps=4)
    assert lrs == pytest.approx([0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0])


def test_transformer_schedule_closed_form():
    d, W = 512, 4000
    opt = _optimizer(1.0)
    sched = ld.warmup(opt, warmup_steps=W, after="inverse_sqrt", d_model=d)
    lrs = [lr[0] for lr in _run(sched, opt, 2 * W)]
    for step in (1, 10, 3999, 4000, 4001, 8000):  # 1-based update number, as in the paper
        expected = d**-0.5 * min(step**-0.5, step * W**-1.5)
        assert lrs[step - 1] == pytest.approx(expected, rel=1e-12)
        assert sched.factor(step - 1) == pytest.approx(expected, rel=1e-12)
    peak = d**-0.5 * W**-0.5
    assert max(lrs) == pytest.approx(peak, rel=1e-12)
    assert lrs.index(max(lrs)) == W - 1


def test_goyal_gradual_warmup_linear_scaling_rule():
    # reference lr 0.1 for batch 256; batch 8192 -> k = 32, target 3.2, start at 0.1 (paper: 5 epochs)
    opt = _optimizer(0.1)
    sched = ld.gradual_warmup(
        opt, batch_size=8192, warmup_steps=10, after="step", step_size=30, gamma=0.1
    )
    seen = [lr[0] for lr in _run(sched, opt, 45)]
    assert seen[0] == pytest.approx(0.1)
    assert seen[5] == pytest.approx(0.1 + (3.2 - 0.1) * 5 / 10)
    assert seen[10] == pytest.approx(3.2)
    assert seen[39] == pytest.approx(3.2)
    assert seen[40] == pytest.approx(0.32)
    increments = [b - a for a, b in zip(seen[:10], seen[1:11], strict=True)]
    assert max(increments) == pytest.approx(min(increments))  # a constant amount each iteration
    assert ld.linear_scaling_factor(512) == 2.0
    # small batches: no ramp, lr scaled down
    opt = _optimizer(0.1)
    sched = ld.gradual_warmup(opt, batch_size=128, warmup_steps=5)
    assert [lr[0] for lr in _run(sched, opt, 3)] == pytest.approx([0.05] * 3)


def test_several_param_groups_keep_their_base_lrs():
    opt = _optimizer(0.1, 0.01, 1.0)
    sched = ld.warmup(opt, warmup_steps=4, start_factor=0.0, after="cosine", total_steps=12)
    seen = _run(sched, opt, 14)
    for t in range(14):
        f = sched.factor(t)
        assert seen[t] == pytest.approx([0.1 * f, 0.01 * f, 1.0 * f], abs=1e-15)
    assert seen[2] == pytest.approx([0.05, 0.005, 0.5])


def test_state_dict_round_trip_mid_warmup():
    W = 10
    opt = _optimizer(0.2, 0.02)
    sched = ld.warmup(opt, warmup_steps=W, after="cosine", total_steps=40, min_factor=0.05)
    reference = _run(sched, opt, 40)

    opt = _optimizer(0.2, 0.02)
    sched = ld.warmup(opt, warmup_steps=W, after="cosine", total_steps=40, min_factor=0.05)
    first = _run(sched, opt, 6)  # stop in the middle of the warm-up
    buffer = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # plain numbers only

    opt2 = _optimizer(0.2, 0.02)
    sched2 = ld.warmup(opt2, warmup_steps=W, after="cosine", total_steps=40, min_factor=0.05)
    opt2.load_state_dict(saved["optimizer"])
    sched2.load_state_dict(saved["scheduler"])
    assert sched2.last_epoch == 6
    rest = _run(sched2, opt2, 34)
    flat = [lr for lrs in first + rest for lr in lrs]
    assert flat == pytest.approx([lr for lrs in reference for lr in lrs], rel=1e-12)
    assert rest[0][0] == pytest.approx(0.2 * (0.1 + 0.9 * 6 / W))


def test_state_dict_restores_the_schedule_settings():
    opt = _optimizer(1.0)
    sched = ld.warmup(opt, warmup_steps=3, after="step", step_size=2, gamma=0.5)
    _run(sched, opt, 5)
    other = ld.warmup(_optimizer(1.0), warmup_steps=7)
    other.load_state_dict(sched.state_dict())
    assert (other.warmup_steps, other.after, other.step_size, other.gamma) == (3, "step", 2, 0.5)
    assert other.get_last_lr() == sched.get_last_lr()


def test_works_in_a_training_loop_without_warnings():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = ld.warmup(opt, warmup_steps=3, after="linear", total_steps=6)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(6):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"warmup_steps": 2.5}, "warmup_steps must be an integer >= 0, got 2.5"),  # a TypeError
        ({"warmup_steps": 5, "after": "exp"}, "after must be one of"),
        ({"warmup_steps": 5, "after": "cosine"}, "total_steps"),
        ({"warmup_steps": 5, "after": "linear", "total_steps": 5}, "must exceed"),
        ({"warmup_steps": 5, "after": "step"}, "step_size"),
        ({"warmup_steps": 0, "after": "inverse_sqrt"}, "warmup_steps must be >= 1"),
        ({"warmup_steps": 5, "d_model": 512}, "inverse_sqrt"),
        ({"warmup_steps": 5, "start_factor": -0.1}, "start_factor"),
        ({"warmup_steps": 5, "after": "cosine", "total_steps": 9, "min_factor": 2.0}, "min_factor"),
    ],
)
def test_bad_settings_raise_clear_errors(kwargs, match):
    opt = _optimizer(0.1)
    with pytest.raises(TypeError if kwargs["warmup_steps"] == 2.5 else ValueError, match=match):
        ld.warmup(opt, **kwargs)
    assert opt.param_groups[0]["lr"] == 0.1 and "initial_lr" not in opt.param_groups[0]


def test_not_an_optimizer_is_a_type_error():
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        ld.warmup([torch.zeros(1)], warmup_steps=3)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        ld.gradual_warmup(_optimizer(0.1), batch_size=0, warmup_steps=3)
