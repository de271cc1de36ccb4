"""The LR range test: the curve it records, the suggestion, early stopping on divergence, and the
user's model and optimizer left exactly as they were."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lossdoctor as ld
from lossdoctor.training.lr_finder import suggest, zero_phase_ema


def _classification(seed: int = 0, n: int = 64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


def _net():
    return nn.Sequential(
        nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2)
    )


def _snapshot(model, optimizer):
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "modes": [m.training for m in model.modules()],
        "flags": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "rng": torch.get_rng_state(),
        "groups": [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
        "group_ids": [id(g) for g in optimizer.param_groups],
        "opt_state": {
            id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for p, s in optimizer.state.items()
        },
    }


def _assert_same(before, model, optimizer):
    after = _snapshot(model, optimizer)
    assert before["state"].keys() == after["state"].keys()
    for k in before["state"]:
        assert torch.equal(before["state"][k], after["state"][k]), k
    assert before["modes"] == after["modes"]
    assert before["flags"] == after["flags"]
    for a, b in zip(before["grads"], after["grads"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    assert torch.equal(before["rng"], after["rng"])
    assert before["groups"] == after["groups"]
    assert before["group_ids"] == after["group_ids"]
    assert before["opt_state"].keys() == after["opt_state"].keys()
    for pid, s in before["opt_state"].items():
        for k, v in s.items():
            w = after["opt_state"][pid][k]
            assert torch.equal(v, w) if torch.is_tensor(v) else v == w


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.Adam(ps, lr=1e-3, weight_decay=1e-4),
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    ],
)
def test_leaves_model_and_optimizer_exactly_as_they_were(make_opt):
    torch.manual_seed(0)
    model, data = _net(), _classification()
    model.eval()  # a mode the test must switch away from and restore
    model[0].bias.requires_grad_(False)
    opt = make_opt([p for p in model.parameters() if p.requires_grad])
    for x, y in data[:2]:  # a used optimizer: momenta / Adam moments and step counts exist
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    F.cross_entropy(model(data[0][0]), data[0][1]).backward()  # leave some .grad around
    before = _snapshot(model, opt)
    result = ld.lr_range_test(
        model, F.cross_entropy, data, opt, start_lr=1e-4, end_lr=1.0, steps=20
    )
    assert result.steps_run > 3
    _assert_same(before, model, opt)
    # and the optimizer still trains normally afterwards
    opt.zero_grad()
    F.cross_entropy(model(data[0][0]), data[0][1]).backward()
    opt.step()


def test_fresh_optimizer_state_stays_empty_and_scheduler_still_works():
    model, data = nn.Linear(6, 2), _classification()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = ld.warmup(opt, warmup_steps=5)
    before = _snapshot(model, opt)
    ld.lr_range_test(model, F.cross_entropy, data, opt, start_lr=1e-5, end_lr=1e-1, steps=10)
    _assert_same(before, model, opt)
    assert len(opt.state) == 0 and opt.param_groups[0]["lr"] == pytest.approx(1e-2 / 5)
    assert "_opt_called" not in opt.__dict__
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 / 5 + (1e-2 - 1e-2 / 5) / 5)


def test_records_loss_before_each_update_at_the_planned_lr():
    # least squares with plain SGD: every step can be replayed by hand
    torch.manual_seed(0)
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=123.0)
    res = ld.lr_range_test(
        model, F.mse_loss, (x, y), opt, start_lr=1e-3, end_lr=1e-1, steps=8, smoothing=0.0
    )
    assert np.allclose(res.lrs, np.geomspace(1e-3, 1e-1, 8))
    replay = nn.Linear(3, 1)
    replay.load_state_dict(model.state_dict())
    for lr, recorded in zip(res.lrs, res.losses, strict=True):
        loss = F.mse_loss(replay(x), y)
        assert float(loss.detach()) == pytest.approx(recorded, rel=1e-5)
        replay.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in replay.parameters():
                p -= lr * p.grad
    assert res.smoothed_losses == pytest.approx(res.losses)  # smoothing 0


def test_stops_early_when_the_loss_diverges_and_suggests_a_number():
    torch.manual_seed(0)
    model, data = _net(), _classification()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = ld.lr_range_test(model, F.cross_entropy, data, opt, start_lr=1e-4, end_lr=1e4, steps=40)
    assert res.diverged and res.steps_run < 40
    assert len(res.lrs) == len(res.losses) == len(res.smoothed_losses) == res.steps_run
    assert isinstance(res.suggested_lr, float) and 1e-4 <= res.suggested_lr <= res.minimum_lr <= 1e4
    assert res.suggestion == "steepest" and res.suggested_lr == res.steepest_lr
    assert json.loads(json.dumps(res.to_dict()))["suggested_lr"] == res.suggested_lr
    assert "suggested lr" in str(res)
    with pytest.raises(Exception):  # noqa: B017 - frozen dataclass
        res.suggested_lr = 1.0
    minimum = ld.lr_range_test(
        model, F.cross_entropy, data, opt, start_lr=1e-4, end_lr=1e4, steps=40, suggestion="minimum"
    )
    assert minimum.suggested_lr == minimum.minimum_lr


def test_suggestion_on_a_known_curve():
    lrs = np.geomspace(1e-6, 1e1, 200)
    t = np.log10(lrs)
    # falls fastest at lr = 1e-3, bottoms out near 1e-1, then blows up
    loss = 2.0 - np.tanh(2.0 * (t + 3.0)) + np.exp(3.0 * (t + 1.0)) * 0.05
    steepest, minimum, min_loss = suggest(lrs, loss)
    assert steepest == pytest.approx(1e-3, rel=0.1)
    assert minimum == pytest.approx(lrs[np.argmin(loss)]) and min_loss == pytest.approx(loss.min())
    # zero-phase smoothing keeps the location of a feature (a causal EMA would shift it right)
    noisy = loss + np.random.default_rng(0).normal(0, 0.02, size=loss.shape)
    assert suggest(lrs, zero_phase_ema(noisy, 0.9))[0] == pytest.approx(1e-3, rel=0.5)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"start_lr": 0.0}, ValueError, "start_lr"),
        ({"start_lr": 1.0, "end_lr": 0.1}, ValueError, "end_lr"),
        ({"steps": 2}, ValueError, "steps"),
        ({"smoothing": 1.0}, ValueError, "smoothing"),
        ({"diverge_factor": 1.0}, ValueError, "diverge_factor"),
        ({"suggestion": "valley"}, ValueError, "suggestion"),
    ],
)
def test_bad_settings(kwargs, error, match):
    model, data = nn.Linear(6, 2), _classification()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _snapshot(model, opt)
    with pytest.raises(error, match=match):
        ld.lr_range_test(model, F.cross_entropy, data, opt, **{"steps": 10, **kwargs})
    _assert_same(before, model, opt)


def test_bad_inputs():
    model, data = nn.Linear(6, 2), _classification()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="Optimizer"):
        ld.lr_range_test(model, F.cross_entropy, data, "sgd", steps=10)
    other = torch.optim.SGD(nn.Linear(6, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="not the model's"):
        ld.lr_range_test(model, F.cross_entropy, data, other, steps=10)
    with pytest.raises(TypeError, match="loss_fn"):
        ld.lr_range_test(model, "ce", data, opt, steps=10)
    with pytest.raises(TypeError, match="one-shot iterator"):
        ld.lr_range_test(model, F.cross_entropy, (b for b in data), opt, steps=10)
    with pytest.raises(ValueError, match="inf on the first batch, before any update"):
        ld.lr_range_test(model, lambda out, y: out.sum() * math.inf, data, opt, steps=10)
    before = _snapshot(model, opt)
    with pytest.raises(ValueError, match=r"scalar.*per-sample losses \(reduction='none'\)"):
        ld.lr_range_test(
            model, lambda out, y: F.cross_entropy(out, y, reduction="none"), data, opt, steps=10
        )
    _assert_same(before, model, opt)
