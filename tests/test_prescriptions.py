"""Every action's apply() on constructed cases, and the trials: the exact snapshot and restore,
the control branch, the ranking, the cost cap."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lossdoctor as ld
from cases import full_batch_losses
from lossdoctor.doctor.candidates import Candidate, safe_lr
from lossdoctor.doctor.prescriptions import (
    Prescription,
    apply_action,
    attached_scheduler,
    detach_hooks,
)
from lossdoctor.doctor.trials import run_trials


def model_and_data(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(64, 4, generator=gen), torch.randint(0, 3, (64,), generator=gen)
    return model, [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]


def two_group_sgd(model, lr=0.1):
    return torch.optim.SGD(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": lr / 10}],
        lr=lr,
        momentum=0.5,
        weight_decay=1e-3,
    )


def test_lr_keeps_the_groups_ratios_and_rescales_the_users_scheduler():
    model, _ = model_and_data()
    opt = two_group_sgd(model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    same = Prescription("lr", {"lr": 0.03}).apply(model, opt, scheduler=sched)
    assert same is opt
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.03, 0.003])
    assert sched.base_lrs == pytest.approx([0.03, 0.003])
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.03)  # the scheduler does not undo it


def test_momentum_weight_decay_and_adams_beta1():
    model, _ = model_and_data()
    opt = two_group_sgd(model)
    apply_action({"momentum": 0.9, "weight_decay": 0.0}, model, opt)
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 0.0 for g in opt.param_groups)
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    apply_action({"momentum": 0.8}, model, adam)
    assert adam.param_groups[0]["betas"] == (0.8, 0.999)


def test_optimizer_switch_keeps_groups_lr_ratios_and_decay():
    model, _ = model_and_data()
    opt = two_group_sgd(model)
    new = Prescription("adam", {"optimizer": "Adam", "lr": 1e-3}).apply(model, opt)
    assert isinstance(new, torch.optim.Adam) and new is not opt
    assert [g["lr"] for g in new.param_groups] == pytest.approx([1e-3, 1e-4])
    assert [g["weight_decay"] for g in new.param_groups] == [1e-3, 1e-3]
    assert [p for g in new.param_groups for p in g["params"]] == list(model.parameters())


def test_cosine_schedule_is_a_real_scheduler_stepped_by_the_optimizer():
    model, batches = model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    apply_action({"schedule": "cosine", "steps": 10}, model, opt)
    sched = attached_scheduler(opt)
    assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR)
    lrs = []
    for k in range(10):
        x, y = batches[k % 4]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
    expected = [0.1 * (1 + math.cos(math.pi * (k + 1) / 10)) / 2 for k in range(10)]
    assert lrs == pytest.approx(expected, abs=1e-12)
    detach_hooks(opt)
    assert attached_scheduler(opt) is None


def test_clipping_is_applied_before_every_step():
    model, batches = model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    apply_action({"clip_grad_norm": 1e-3}, model, opt)
    x, y = batches[0]
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    moved = math.sqrt(
        sum(float((p.detach() - b).pow(2).sum()) for p, b in zip(model.parameters(), before))
    )
    assert moved == pytest.approx(1e-3, rel=1e-4)  # lr 1 x a gradient clipped to norm 1e-3


def test_restore_reinitialize_and_perturb_leave_the_global_rng_alone():
    model, _ = model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.state[next(model.parameters())]["momentum_buffer"] = torch.ones(8, 4)
    saved = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(math.nan)
    rng = torch.get_rng_state()
    Prescription("restore", {"restore_checkpoint": True, "lr": 0.01}, payload=saved).apply(
        model, opt
    )
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), saved.values()))
    assert not opt.state and opt.param_groups[0]["lr"] == 0.01
    apply_action({"reinitialize": {"seed": 3}}, model, opt)
    first = [p.detach().clone() for p in model.parameters()]
    apply_action({"reinitialize": {"seed": 3}}, model, opt)
    assert all(torch.equal(a, p) for a, p in zip(first, model.parameters()))  # seeded: reproducible
    apply_action({"perturb": {"scale": 0.1, "seed": 1}}, model, opt)
    assert not all(torch.equal(a, p) for a, p in zip(first, model.parameters()))
    assert torch.equal(rng, torch.get_rng_state())


def test_dead_units_get_fresh_incoming_weights_and_zero_bias():
    model, batches = model_and_data()
    with torch.no_grad():
        model[0].bias[:3] = -100.0  # three ReLUs that never fire
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    apply_action(
        {"reinit_dead_units": {"units": 3, "seed": 0}}, model, opt, payload={"0.weight": [0, 1, 2]}
    )
    assert torch.all(model[0].bias[:3] == 0)
    x = torch.cat([b[0] for b in batches])
    assert (torch.relu(model[0](x))[:, :3].amax(0) > 0).all()


def test_escape_saddle_moves_along_the_direction():
    from lossdoctor.zoo.lecture import ProductNet

    model = ProductNet(0.0, 0.0)
    u = {"w1": torch.tensor(2**-0.5), "w2": torch.tensor(2**-0.5)}
    apply_action(
        {"escape_saddle": {"eigenvalue": -2.0, "step": 2**0.5}}, model, None, payload=(u, 2**0.5)
    )
    assert float(model.w1.detach()) == pytest.approx(1.0) and float(
        model.w2.detach()
    ) == pytest.approx(1.0)


def test_no_change_and_stop_change_nothing_and_code_changes_say_so():
    model, _ = model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = copy.deepcopy(opt.state_dict())
    assert Prescription("none", {}).apply(model, opt) is opt
    assert Prescription("stop", {"stop": True}).apply(model, opt) is opt
    assert opt.state_dict() == state
    with pytest.raises(ld.NeedsCodeChange, match="cross-entropy"):
        Prescription("use cross-entropy", {"loss": "cross_entropy"}, applicable=False).apply(
            model, opt
        )
    with pytest.raises(ValueError, match="pass the optimizer"):
        apply_action({"lr": 0.1}, model, None)
    with pytest.raises(ValueError, match="no checkpoint"):
        apply_action({"restore_checkpoint": True}, model, opt)


def test_safe_lr_is_half_the_stability_edge():
    assert safe_lr(0.1, 4.0, 2.0) == pytest.approx(0.025)  # S = lr·λ = 4 -> λ = 40, 1/λ = 0.025
    assert safe_lr(0.1, 0.0, 2.0) is None


# -- trials ---------------------------------------------------------------------------------------
def rng_state():
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def test_trials_restore_everything_bit_for_bit_and_the_control_is_the_unchanged_run():
    model, batches = model_and_data()
    model.add_module("drop", nn.Dropout(0.2))  # uses the RNG while training
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for k in range(5):
        x, y = batches[k % 4]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    params = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    rng = rng_state()
    cands = [
        Candidate({"lr": 0.01}, "t"),
        Candidate({"schedule": "cosine", "steps": 20}, "t"),
        Candidate({"optimizer": "Adam", "lr": 1e-3}, "t"),
    ]
    trials, report = run_trials(
        model, F.cross_entropy, batches, opt, cands, steps=12, eval_batches=batches, mode="train"
    )
    assert all(torch.equal(a, p) for a, p in zip(params, model.parameters()))
    assert opt.state_dict()["state"].keys() == state["state"].keys()
    assert all(
        torch.equal(opt.state_dict()["state"][k]["momentum_buffer"], v["momentum_buffer"])
        for k, v in state["state"].items()
    )
    assert opt.param_groups[0]["lr"] == 0.05 and attached_scheduler(opt) is None
    now = rng_state()
    assert torch.equal(rng[0], now[0]) and np.array_equal(rng[1], now[1]) and rng[2] == now[2]
    assert all(t is not None and len(t.curve) == 12 for t in trials)
    # The control branch is exactly what continuing unchanged gives (same batches, same RNG).
    torch.set_rng_state(rng[0])
    control = []
    for k in range(12):
        x, y = batches[k % 4]
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        control.append(float(loss.detach()))
    assert control == pytest.approx(list(report.control_curve), rel=0, abs=0)


def test_trials_rank_a_better_lr_first_and_drop_a_worse_one():
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    model = nn.Linear(3, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    losses = full_batch_losses(model, F.mse_loss, x, y, opt, 80)
    d = ld.diagnose(model, F.mse_loss, (x, y), history=losses, optimizer=opt)
    assert d.verified
    tried = [p for p in d.prescriptions if p.trial is not None]
    assert tried and all(p.trial.gain >= 0 for p in tried)  # worse than unchanged: dropped
    assert tried == sorted(tried, key=lambda p: p.trial.loss)
    assert d.prescriptions[0].trial.better


def test_successive_halving_keeps_the_cost_within_the_budget():
    model, batches = model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    cands = [Candidate({"lr": lr}, "t") for lr in (0.1, 0.2, 0.4, 0.8, 0.01, 0.02, 0.03)]
    trials, report = run_trials(
        model,
        F.cross_entropy,
        batches,
        opt,
        cands,
        steps=30,
        eval_batches=batches,
        mode="train",
        budget=5.0,
    )
    assert report.trained <= 5 * 30
    finished = [t for t in trials if t is not None]
    assert 1 <= len(finished) < len(cands)


def test_ranking_drops_cut_and_worse_candidates():
    from lossdoctor.doctor.diagnosis import _rank
    from lossdoctor.doctor.prescriptions import Trial

    def rx(text, trial=None, applicable=True):
        return Candidate(
            {"lr": 0.1} if applicable else {"loss": "ce"}, "t", applicable=applicable
        ), Prescription(
            text, {"lr": 0.1} if applicable else {"loss": "ce"}, trial=trial, applicable=applicable
        )

    flat = Trial(10, 1.0, 1.0, 1.0, 0.0, 0.0, False, True)
    worse = Trial(10, 1.0, 1.2, 1.0, -0.2, -0.2, False, True)
    good = Trial(10, 1.0, 0.5, 1.0, 0.5, 0.5, True, True)
    items = [rx("cut"), rx("flat", flat), rx("code", applicable=False), rx("worse", worse)]
    nothing = Prescription("no change", {})
    # A candidate cut in the trials' first round lost its trial: it is no advice (issue 17: an lr
    # 1000x up, untried at full length, must not be printed as a prescription).
    assert [p.text for p in _rank(items, True, nothing)] == ["code", "no change", "flat"]
    assert [p.text for p in _rank(items + [rx("good", good)], True, nothing)] == [
        "good",
        "code",
        "flat",
    ]
    assert [p.text for p in _rank(items, False, None)] == ["cut", "flat", "code", "worse"]
