"""`lossdoctor diagnose` (history from JSON or CSV) and `lossdoctor train` (Monitor attached)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from lossdoctor.cli import main
from lossdoctor.cli_doctor import read_history_file

QUADRATIC = '''
import math, torch
from torch import nn
from torch.nn import functional as F

def make_problem():
    """Least squares with Hessian 2·mean(x xᵀ) = diag(25, 1), started on the sharp eigenvector."""
    x = torch.diag(torch.tensor([5.0, 1.0], dtype=torch.float64))
    y = torch.zeros(2, 1, dtype=torch.float64)
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    return model, F.mse_loss, (x, y)
'''


@pytest.fixture
def quadratic(tmp_path):
    path = tmp_path / "quad.py"
    path.write_text(QUADRATIC)
    return f"{path}:make_problem"


def test_diagnose_saddle_from_json_history(tmp_path):
    history = tmp_path / "h.json"
    history.write_text(json.dumps({"losses": [1.0] * 20}))
    result = CliRunner().invoke(main, ["diagnose", "--problem", "lecture-saddle", "--history", str(history),
                                       "--lr", "0.05", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    d = data["diagnosis"]
    assert d["cause"] == "critical_point" and d["critical"]["kind"] == "saddle_point"
    assert d["max_stable_lr"] == pytest.approx(1.0, rel=1e-5)  # λ_max = 2 at the saddle
    text = CliRunner().invoke(main, ["diagnose", "--problem", "lecture-saddle", "--history", str(history)])
    assert text.exit_code == 0 and "diagnosis: critical point" in text.output and "prescriptions:" in text.output


def test_diagnose_csv_history_with_columns_and_plain(tmp_path, quadratic):
    cols = tmp_path / "h.csv"
    cols.write_text("step,loss,grad_norm\n" + "".join(f"{i},{1 - 0.01 * i},{1.0}\n" for i in range(10)))
    assert read_history_file(str(cols))["grad_norms"] == [1.0] * 10
    plain = tmp_path / "p.csv"
    plain.write_text("".join(f"{2.0 ** -i}\n" for i in range(10)))
    assert read_history_file(str(plain))["losses"][3] == 0.125
    result = CliRunner().invoke(main, ["diagnose", "--problem", quadratic, "--history", str(plain), "--lr", "1e-3",
                                       "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["diagnosis"]["cause"] == "progressing"


@pytest.mark.parametrize("content, message", [("", "empty"), ("a\nb\nc\nd\n", "not a number"),
                                              ("[1, 2]", "at least 4"), ('{"x": 1}', "no losses")])
def test_diagnose_bad_history_files(tmp_path, content, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    result = CliRunner().invoke(main, ["diagnose", "--problem", "lecture-saddle", "--history", str(bad)])
    assert result.exit_code != 0 and message in result.output


def test_train_diagnoses_the_bounce_and_writes_a_new_checkpoint(tmp_path, quadratic):
    out = tmp_path / "trained.pt"
    args = ["train", "--problem", quadratic, "--optimizer", "sgd", "--lr", str(1.998 / 25), "--steps", "60",
            "--window", "30", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["steps"] == 60 and len(data["losses"]) == 60
    assert data["diagnoses"][0]["cause"] == "oscillation"
    assert data["diagnoses"][0]["max_stable_lr"] == pytest.approx(0.08, rel=1e-5)
    assert set(torch.load(out, weights_only=True)) == {"weight"}
    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0 and "already exists" in again.output
    text = CliRunner().invoke(main, args[:-2])
    assert text.exit_code == 0 and "diagnosis (step 30): oscillation" in text.output


def test_train_bad_lr(quadratic):
    result = CliRunner().invoke(main, ["train", "--problem", quadratic, "--lr", "nan", "--steps", "5"])
    assert result.exit_code != 0 and "--lr" in result.output
