"""``--reduction`` on ``lossdoctor spectrum``, ``critical`` and ``batch noise``: a problem whose
loss function sums over the batch is refused with the fix named, and measured right with ``--reduction sum``."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import lossdoctor as ld
from lossdoctor.cli import main

PROBLEM = """
import torch
from torch import nn
from torch.nn import functional as F


def summing():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64)
    return model, (lambda o, t: F.mse_loss(o, t, reduction="sum")), [(x[:6], y[:6]), (x[6:], y[6:])]
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "summing_problem.py"
    path.write_text(PROBLEM)
    return f"{path}:summing"


def test_spectrum_refuses_a_summing_loss_and_measures_it_with_reduction_sum(spec, tmp_path):
    runner = CliRunner()
    args = [
        "spectrum",
        "--problem",
        spec,
        "--k",
        "1",
        "--which",
        "both",
        "--no-density",
        "--trace-matvecs",
        "0",
        "--json",
        "--plot",
        str(tmp_path / "d.png"),
    ]
    refused = runner.invoke(main, args)
    assert refused.exit_code != 0 and "reduction" in refused.output
    result = runner.invoke(main, [*args, "--reduction", "sum"])
    assert result.exit_code == 0, result.output
    p = ld.load_problem(spec)
    H = ld.dense_hessian(p.model, torch.nn.MSELoss(reduction="sum"), p.train_data)
    lam = torch.linalg.eigvalsh(H)
    got = json.loads(result.stdout)["eigenpairs"]["eigenvalues"]
    assert got == pytest.approx([float(lam[-1]), float(lam[0])], abs=1e-6 * float(lam.abs().max()))


def test_critical_takes_reduction(spec):
    result = CliRunner().invoke(
        main, ["critical", "--problem", spec, "--reduction", "sum", "--json"]
    )
    assert result.exit_code == 0, result.output
    p = ld.load_problem(spec)
    H = ld.dense_hessian(p.model, torch.nn.MSELoss(reduction="sum"), p.train_data)
    data = json.loads(result.stdout)["critical"]
    assert data["max_eigenvalue"] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-9)


def test_batch_noise_refuses_a_summing_loss_and_estimates_it_with_reduction_sum(spec):
    runner = CliRunner()
    args = ["batch", "noise", "--problem", spec, "--small-batch", "2", "--big-batch", "6"]
    args += ["--pairs", "10", "--json"]
    refused = runner.invoke(main, args)
    assert refused.exit_code != 0 and "reduction='sum'" in refused.output
    result = runner.invoke(main, [*args, "--reduction", "sum"])
    assert result.exit_code == 0, result.output
    p = ld.load_problem(spec)
    mean = ld.gradient_noise_scale(
        p.model, torch.nn.MSELoss(), p.train_data, small_batch=2, big_batch=6, pairs=10
    )
    assert json.loads(result.stdout)["b_simple"] == pytest.approx(mean.b_simple, rel=1e-9)
