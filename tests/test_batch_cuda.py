"""The batch-size lab with the model on a GPU: the same numbers as on the CPU, the model left
alone, timing on CUDA. Skipped where PyTorch sees no GPU (CI)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lossdoctor as ld
from cases import ModelSnapshot
from test_sweep import sweep, tiny_problem

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def pair():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(200, 6, generator=gen), torch.randint(0, 3, (200,), generator=gen)
    return model, copy.deepcopy(model).cuda(), [(x[:120], y[:120]), (x[120:], y[120:])]


def test_sharpness_landscape_noise_match_cpu():
    cpu, gpu, data = pair()
    before = ModelSnapshot.take(gpu)
    kw = {
        "method": ["lambda_max", "trace", "epsilon"],
        "subspace_dim": 10,
        "tol": 1e-6,
        "trace_matvecs": 30,
    }
    a, b = (
        ld.sharpness(cpu, F.cross_entropy, data, **kw),
        ld.sharpness(gpu, F.cross_entropy, data, **kw),
    )
    assert b.lambda_max == pytest.approx(a.lambda_max, rel=1e-4)
    assert b.trace == pytest.approx(a.trace, rel=1e-3)
    for ea, eb in zip(a.epsilon, b.epsilon):
        assert eb.value == pytest.approx(ea.value, rel=1e-2, abs=1e-4)
    la = ld.landscape(cpu, F.cross_entropy, data, dims=2, steps=5, test_data=data[1])
    lb = ld.landscape(gpu, F.cross_entropy, data, dims=2, steps=5, test_data=data[1])
    torch.testing.assert_close(
        torch.tensor(lb.train_loss), torch.tensor(la.train_loss), rtol=1e-4, atol=1e-5
    )
    other = copy.deepcopy(gpu)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.3)
    curve = ld.interpolate(gpu, other, F.cross_entropy, data, [0.0, 0.5, 1.0])
    assert curve.train_loss[0] == pytest.approx(lb.center_loss, rel=1e-5)
    na = ld.gradient_noise_scale(cpu, F.cross_entropy, data, small_batch=8, big_batch=100, pairs=30)
    nb = ld.gradient_noise_scale(gpu, F.cross_entropy, data, small_batch=8, big_batch=100, pairs=30)
    assert nb.b_simple == pytest.approx(na.b_simple, rel=1e-3)
    before.assert_same(gpu, "batch lab on CUDA")


def test_time_on_cuda_leaves_cpu_model_alone():
    cpu, _, data = pair()
    before = ModelSnapshot.take(cpu)
    t = ld.time_batch_sizes(cpu, F.cross_entropy, data, [1, 16, 200], device="cuda", repeats=3)
    before.assert_same(cpu, "time_batch_sizes on cuda")
    assert t.device.startswith("cuda") and all(s > 0 for s in t.seconds_per_update)
    assert next(cpu.parameters()).device.type == "cpu"


def test_sweep_on_cuda_matches_cpu():
    on_cpu = sweep(tiny_problem(), seeds=[0])
    problem = tiny_problem()
    problem.model.cuda()
    on_gpu = sweep(problem, seeds=[0])
    for a, b in zip(on_cpu.runs, on_gpu.runs):
        assert b.curve["train_loss"] == pytest.approx(a.curve["train_loss"], rel=1e-3, abs=1e-5)
        assert b.milestones[0].lambda_max == pytest.approx(a.milestones[0].lambda_max, rel=1e-2)
