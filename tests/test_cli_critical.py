"""`lossdoctor critical`: verdict, numbers, evidence; --escape writes a new checkpoint, never over one."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from lossdoctor.cli import main
from lossdoctor.problem import load_problem


def invoke(*args):
    return CliRunner().invoke(main, ["critical", *args])


def test_verdict_in_text_and_json():
    result = invoke("--problem", "lecture-saddle")
    assert result.exit_code == 0, result.output
    assert "verdict: saddle point" in result.output and "evidence:" in result.output
    result = invoke("--problem", "lecture-saddle", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["critical"]["kind"] == "saddle_point"
    assert data["critical"]["min_eigenvalue"] == pytest.approx(-2.0)
    assert data["escaped_checkpoint"] is None


def test_escape_writes_a_new_checkpoint_and_never_overwrites(tmp_path):
    target = tmp_path / "escaped.pt"
    result = invoke("--problem", "lecture-saddle", "--escape", "--out", str(target), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["escape"]["escaped"] and data["escaped_checkpoint"] == str(target)
    assert data["escape"]["loss_after"] < 1e-6
    escaped = load_problem("lecture-saddle", checkpoint=target)
    assert float((escaped.model.w1 * escaped.model.w2).detach()) == pytest.approx(1.0, abs=1e-3)
    before = target.read_bytes()
    again = invoke("--problem", "lecture-saddle", "--escape", "--out", str(target))
    assert again.exit_code != 0 and "already exists" in again.output
    assert target.read_bytes() == before


def test_checkpoint_input_and_default_output_name(tmp_path):
    start = load_problem("lecture-saddle", w1=0.0, w2=0.0)
    ckpt = tmp_path / "start.pt"
    torch.save(start.model.state_dict(), ckpt)
    same = invoke(
        "--problem", "lecture-saddle", "--checkpoint", str(ckpt), "--escape", "--out", str(ckpt)
    )
    assert same.exit_code != 0 and "input checkpoint" in same.output
    result = invoke("--problem", "lecture-saddle", "--checkpoint", str(ckpt), "--escape")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "start-escaped.pt").is_file()
    assert torch.load(ckpt, weights_only=True)["w1"] == 0.0  # the input is untouched


def test_not_critical_from_a_checkpoint(tmp_path):
    moved = load_problem("lecture-saddle", w1=0.5, w2=0.5)
    ckpt = tmp_path / "moved.pt"
    torch.save(moved.model.state_dict(), ckpt)
    result = invoke("--problem", "lecture-saddle", "--checkpoint", str(ckpt), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["critical"]["kind"] == "not_critical"


def test_bad_arguments():
    result = invoke("--problem", "lecture-saddle", "--out", "x.pt")
    assert result.exit_code != 0 and "--escape" in result.output
    result = invoke("--problem", "no-such-problem")
    assert result.exit_code != 0 and "unknown problem" in result.output
    result = invoke("--problem", "lecture-saddle", "--grad-tol", "-1")
    assert result.exit_code == 2 and "--grad-tol" in result.output and "got -1.0" in result.output
