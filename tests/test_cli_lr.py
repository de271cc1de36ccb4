"""CLI: ``lossdoctor lr-find`` and ``lossdoctor schedule``."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from lossdoctor.cli import main


@pytest.fixture()
def user_problem(tmp_path, monkeypatch):
    """A user's own problem file and a checkpoint for it."""
    code = (
        "import torch\nfrom torch import nn\nfrom torch.nn import functional as F\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    x = torch.randn(64, 5)\n"
        "    y = (x[:, 0] > 0).long()\n"
        "    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))\n"
        "    return model, F.cross_entropy, [(x[:32], y[:32]), (x[32:], y[32:])]\n"
    )
    (tmp_path / "userprob.py").write_text(code)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_lr_find_json_and_plot(user_problem):
    res = CliRunner().invoke(
        main,
        [
            "lr-find",
            "--problem",
            "userprob:make",
            "--checkpoint",
            "ckpt.pt",
            "--steps",
            "30",
            "--start-lr",
            "1e-5",
            "--end-lr",
            "10",
            "--plot",
            "rt.png",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output)
    assert 1e-5 <= payload["suggested_lr"] <= 10
    assert len(payload["lrs"]) == payload["steps_run"] <= 30
    assert (user_problem / "rt.png").stat().st_size > 1000


def test_lr_find_text_prints_the_suggestion(user_problem):
    res = CliRunner().invoke(
        main,
        [
            "lr-find",
            "--problem",
            "userprob:make",
            "--steps",
            "20",
            "--optimizer",
            "sgd",
            "--weight-decay",
            "1e-4",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "suggested lr:" in res.output


def test_lr_find_bad_input(user_problem):
    res = CliRunner().invoke(
        main, ["lr-find", "--problem", "userprob:make", "--start-lr", "1", "--end-lr", "0.1"]
    )
    assert res.exit_code == 2 and "--end-lr (0.1) must be larger than --start-lr (1)" in res.output
    res = CliRunner().invoke(main, ["lr-find", "--problem", "nosuch"])
    assert res.exit_code == 2 and "unknown problem" in res.output


def test_schedule_json_matches_the_library(tmp_path):
    res = CliRunner().invoke(
        main,
        [
            "schedule",
            "--warmup",
            "10",
            "--after",
            "cosine",
            "--steps",
            "50",
            "--lr",
            "0.5",
            "--plot",
            str(tmp_path / "s.png"),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output)
    assert len(payload["lrs"]) == 50
    assert payload["peak_lr"] == pytest.approx(0.5) and payload["peak_step"] == 10
    assert payload["lrs"][0] == pytest.approx(0.05)
    assert payload["lrs"][30] == pytest.approx(
        0.5 * 0.5 * (1 + __import__("math").cos(__import__("math").pi * 20 / 40))
    )
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_schedule_text_and_errors():
    res = CliRunner().invoke(
        main,
        [
            "schedule",
            "--warmup",
            "4",
            "--after",
            "step",
            "--step-size",
            "3",
            "--steps",
            "12",
            "--lr",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "peak lr 1 at step 4" in res.output
    res = CliRunner().invoke(
        main, ["schedule", "--warmup", "4", "--after", "step", "--steps", "12"]
    )
    assert res.exit_code == 2 and "step_size" in res.output
    res = CliRunner().invoke(main, ["schedule", "--warmup", "4", "--steps", "0"])
    assert res.exit_code == 2 and "steps" in res.output
