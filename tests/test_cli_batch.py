"""``lossdoctor batch time|sweep|sharpness|landscape|noise``: JSON output, plots, resumable sweeps,
clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from lossdoctor.cli import main
from test_problem import USER_FILE


def run(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def as_json(args: list[str]) -> dict:
    result = run(["batch", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def user(tmp_path):
    path = tmp_path / "cli_batch_problem.py"
    path.write_text(USER_FILE)
    return f"{path}:as_triple"


def test_time_with_plot(user, tmp_path):
    out = as_json(
        [
            "time",
            "--problem",
            user,
            "--sizes",
            "1,4,8",
            "--repeats",
            "2",
            "--epoch-size",
            "60000",
            "--plot",
            str(tmp_path / "t.png"),
        ]
    )
    assert out["batch_sizes"] == [1, 4, 8] and out["updates_per_epoch"] == [60000, 15000, 7500]
    assert (tmp_path / "t.png").stat().st_size > 0


def test_sweep_store_resume_and_human_output(user, tmp_path):
    store = tmp_path / "store"
    args = [
        "sweep",
        "--problem",
        user,
        "--sizes",
        "2,8",
        "--seeds",
        "0,1",
        "--epochs",
        "2",
        "--updates",
        "5",
        "--sharpness",
        "lambda_max",
        "--lr",
        "0.01",
        "--store",
        str(store),
    ]
    first = as_json(args)
    assert len(first["runs"]) == 4 and len(first["trained"]) == 4 and first["loaded"] == []
    assert len(list((store / "runs").glob("*.json"))) == 4
    again = run(["batch", *args])
    text = " ".join(again.stdout.split())  # the console wraps long lines
    assert again.exit_code == 0 and "4 from the store" in text and "lambda_max" in text
    bad = run(["batch", "sweep", "--problem", user, "--sizes", "2,x", "--epochs", "1"])
    assert bad.exit_code == 2 and "comma-separated integers" in bad.stderr
    other = run(["batch", *args[:-2], "--lr", "0.5", "--store", str(store)])
    assert other.exit_code == 2 and "other settings" in " ".join(other.stderr.split())


def test_sharpness_noise_landscape(user, tmp_path):
    import lossdoctor as ld

    out = as_json(
        [
            "sharpness",
            "--problem",
            user,
            "--method",
            "lambda_max",
            "--method",
            "epsilon",
            "--epsilon",
            "1e-3",
            "--subspace-dim",
            "3",
            "--max-iter",
            "3",
        ]
    )
    assert out["lambda_max"] > 0 and {e["space"] for e in out["epsilon"]} == {"full", "random-3"}
    noise = as_json(
        [
            "noise",
            "--problem",
            user,
            "--small-batch",
            "2",
            "--big-batch",
            "6",
            "--pairs",
            "5",
            "--level",
            "0.9",
        ]
    )
    assert noise["pairs"] == 5 and noise["suggested_batch_size"] >= 1 and noise["level"] == 0.9
    lo, hi = noise["interval"]  # hi is None (JSON's inf) when |G|^2 is not significantly > 0
    assert (
        lo >= 0 and (hi is None or lo <= hi) and (hi is None) == (noise["standard_error"] is None)
    )
    land = as_json(
        [
            "landscape",
            "--problem",
            user,
            "--dims",
            "2",
            "--steps",
            "3",
            "--plot",
            str(tmp_path / "l.png"),
        ]
    )
    assert (
        land["dims"] == 2
        and len(land["train_loss"]) == 3
        and (tmp_path / "l.png").stat().st_size > 0
    )
    p = ld.load_problem(user)
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(p.model.state_dict(), a)
    with torch.no_grad():
        for q in p.model.parameters():
            q.add_(0.5)
    torch.save(p.model.state_dict(), b)
    curve = as_json(
        [
            "landscape",
            "--problem",
            user,
            "--checkpoint",
            str(a),
            "--compare",
            str(b),
            "--plot",
            str(tmp_path / "c.png"),
        ]
    )
    assert len(curve["alphas"]) == 41 and curve["distance"] > 0


def test_errors_are_clear(user):
    result = run(["batch", "sharpness", "--problem", "no-such-problem"])
    assert result.exit_code == 2 and "unknown problem" in result.stderr
    result = run(["batch", "sweep", "--problem", user, "--sizes", "2"])
    assert result.exit_code == 2 and "give epochs=" in " ".join(result.stderr.split())
    result = run(["batch", "noise", "--problem", user, "--small-batch", "64", "--big-batch", "8"])
    assert result.exit_code == 2 and "small_batch < big_batch" in result.stderr
