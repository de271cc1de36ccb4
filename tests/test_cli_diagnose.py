"""`lossdoctor diagnose` (history from JSON or CSV) and `lossdoctor train` (Monitor attached)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from lossdoctor.cli import main
from lossdoctor.cli.doctor import read_history_file

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
    result = CliRunner().invoke(
        main,
        [
            "diagnose",
            "--problem",
            "lecture-saddle",
            "--history",
            str(history),
            "--lr",
            "0.05",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    d = data["diagnosis"]
    assert d["cause"] == "saddle_point"
    assert d["measurements"]["lambda_min"] == pytest.approx(-2.0, abs=1e-3)  # the lecture's saddle
    assert d["measurements"]["lambda_max"] == pytest.approx(2.0, abs=1e-3)
    top = d["prescriptions"][0]
    assert "escape_saddle" in top["action"] and top["trial"]["better"]
    text = CliRunner().invoke(
        main, ["diagnose", "--problem", "lecture-saddle", "--history", str(history), "--lr", "0.05"]
    )
    assert (
        text.exit_code == 0
        and "diagnosis: saddle point" in text.output
        and "prescriptions" in text.output
    )


def test_diagnose_csv_history_with_columns_and_plain(tmp_path, quadratic):
    cols = tmp_path / "h.csv"
    cols.write_text(
        "step,loss,grad_norm\n" + "".join(f"{i},{1 - 0.01 * i},{1.0}\n" for i in range(10))
    )
    assert read_history_file(str(cols))["grad_norms"] == [1.0] * 10
    plain = tmp_path / "p.csv"
    plain.write_text("".join(f"{2.0**-i}\n" for i in range(10)))
    assert read_history_file(str(plain))["losses"][3] == 0.125
    result = CliRunner().invoke(
        main,
        ["diagnose", "--problem", quadratic, "--history", str(plain), "--lr", "1e-3", "--json"],
    )
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)["diagnosis"]
    assert d["cause"] == "progressing" and d["prescriptions"][0]["action"] == {}


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "empty"),
        ("a\nb\nc\nd\n", "not a number"),
        ("[1, 2]", "at least 4"),
        ('{"x": 1}', "no losses"),
        (b"\x80\x81\xfe", "not a text file"),
    ],
)
def test_diagnose_bad_history_files(tmp_path, content, message):
    bad = tmp_path / "bad.csv"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        bad.write_text(content)
    result = CliRunner().invoke(
        main, ["diagnose", "--problem", "lecture-saddle", "--history", str(bad)]
    )
    assert result.exit_code != 0 and message in result.output


def test_train_diagnoses_the_bounce_and_writes_a_new_checkpoint(tmp_path, quadratic):
    out = tmp_path / "trained.pt"
    args = [
        "train",
        "--problem",
        quadratic,
        "--optimizer",
        "sgd",
        "--lr",
        str(1.998 / 25),
        "--steps",
        "60",
        "--window",
        "30",
        "--doctor-share",
        "1",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["steps"] == 60 and len(data["losses"]) == 60
    assert data["diagnoses"][0]["cause"] == "oscillation"
    assert data["diagnoses"][0]["measurements"]["lambda_max"] == pytest.approx(25.0, rel=1e-2)
    assert set(torch.load(out, weights_only=True)) == {"weight"}
    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0 and "already exists" in again.output
    text = CliRunner().invoke(main, args[:-2])
    assert text.exit_code == 0 and text.output.count("diagnosis (step 30): oscillation") == 1


def test_train_with_the_wall_clock_budget(quadratic):
    args = ["train", "--problem", quadratic, "--optimizer", "sgd", "--lr", str(1.998 / 25)]
    args += ["--steps", "60", "--window", "30", "--doctor-share", "1", "--budget-clock", "wall"]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["budget_clock"] == "wall" and data["steps"] == 60
    # 60 steps of a 1-parameter quadratic take about a millisecond: even a share of 1 cannot pay
    # a diagnosis's fixed cost in measured seconds (the step clock diagnoses it, test above).
    assert data["diagnoses"] == [] and data["doctor_seconds"] == 0.0
    text = CliRunner().invoke(main, args)
    assert text.exit_code == 0 and "did not yet" in text.output
    bad = CliRunner().invoke(main, [*args[:-1], "cpu"])
    assert bad.exit_code != 0 and "--budget-clock" in bad.output


def test_train_bad_lr(quadratic):
    result = CliRunner().invoke(
        main, ["train", "--problem", quadratic, "--lr", "nan", "--steps", "5"]
    )
    assert result.exit_code != 0 and "--lr" in result.output


def test_diagnose_with_the_optimizer_and_its_state(tmp_path, quadratic):
    import importlib.util

    spec = importlib.util.spec_from_file_location("quad", quadratic.split(":")[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model, loss_fn, data = mod.make_problem()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(80):
        opt.zero_grad()
        loss = loss_fn(model(data[0]), data[1])
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    ckpt, state, history = tmp_path / "m.pt", tmp_path / "opt.pt", tmp_path / "h.json"
    torch.save(model.state_dict(), ckpt)
    torch.save(opt.state_dict(), state)
    history.write_text(json.dumps(losses))
    result = CliRunner().invoke(
        main,
        [
            "diagnose",
            "--problem",
            quadratic,
            "--checkpoint",
            str(ckpt),
            "--history",
            str(history),
            "--optimizer",
            "adam",
            "--lr",
            "1e-4",
            "--optimizer-state",
            str(state),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)["diagnosis"]
    assert d["measurements"]["optimizer"] == "adam" and d["measurements"]["adaptive"]
    assert d["cause"] == "lr_too_small" and d["prescriptions"][0]["action"]["lr"] > 1e-4
    bad = CliRunner().invoke(
        main, ["diagnose", "--problem", quadratic, "--history", str(history), "--optimizer", "adam"]
    )
    assert bad.exit_code == 2 and "--lr" in bad.output


def test_spectrum_per_layer(tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "spectrum",
            "--problem",
            "mnist1d-mlp",
            "--k",
            "1",
            "--which",
            "largest",
            "--tol",
            "1e-3",
            "--trace-matvecs",
            "0",
            "--no-density",
            "--per-layer",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["per_layer"]["rows"]
    assert [r["name"] for r in rows] == ["0", "2", "4"]
    assert all(r["lambda_max"] > 0 for r in rows)
