"""The ``lossdoctor spectrum`` command: JSON output, user problems, checkpoints, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from lossdoctor.cli import main
from test_problem import USER_FILE


def run(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def spectrum_json(args: list[str], tmp_path) -> dict:
    result = run(["spectrum", *args, "--json", "--plot", str(tmp_path / "density.png")])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_lecture_saddle_json(tmp_path):
    out = spectrum_json(["--problem", "lecture-saddle", "--k", "1"], tmp_path)
    assert out["problem"] == "lecture-saddle" and out["num_params"] == 2 and out["mode"] == "eval"
    assert out["eigenpairs"]["eigenvalues"] == pytest.approx([2.0, -2.0], abs=1e-6)
    assert all(out["eigenpairs"]["converged"])
    assert out["trace"]["estimate"] == pytest.approx(0.0, abs=1e-6)
    assert (tmp_path / "density.png").stat().st_size > 0


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "cli_user_problem.py"
    path.write_text(USER_FILE)
    return path


def test_user_problem_with_checkpoint(user_file, tmp_path):
    import lossdoctor as ld

    spec = f"{user_file}:as_triple"
    p = ld.load_problem(spec)
    with torch.no_grad():
        p.model[2].weight.mul_(3.0)
    ckpt = tmp_path / "model.pt"
    torch.save(p.model.state_dict(), ckpt)
    expected = torch.linalg.eigvalsh(ld.dense_hessian(p.model, p.loss_fn, p.train_data).double())
    out = spectrum_json(
        [
            "--problem",
            spec,
            "--checkpoint",
            str(ckpt),
            "--k",
            "2",
            "--which",
            "both",
            "--tol",
            "1e-5",
            "--no-density",
            "--trace-matvecs",
            "0",
        ],
        tmp_path,
    )
    got = out["eigenpairs"]["eigenvalues"]
    assert got == pytest.approx(
        [float(expected[-1]), float(expected[-2]), float(expected[1]), float(expected[0])],
        abs=1e-4 * float(expected.abs().max()),
    )
    assert "trace" not in out and "density" not in out


def test_micro_batches_and_no_cache(user_file, tmp_path):
    import lossdoctor as ld

    spec = f"{user_file}:as_triple"
    p = ld.load_problem(spec)
    expected = torch.linalg.eigvalsh(ld.dense_hessian(p.model, p.loss_fn, p.train_data).double())
    out = spectrum_json(
        [
            "--problem",
            spec,
            "--k",
            "1",
            "--which",
            "both",
            "--micro-batch-size",
            "5",
            "--cache",
            "off",
            "--no-density",
            "--trace-matvecs",
            "0",
        ],
        tmp_path,
    )
    assert out["micro_batch_size"] == 5 and out["cache"] is False and out["num_samples"] == 12
    assert out["cached_batches"] == 0
    assert out["eigenpairs"]["eigenvalues"] == pytest.approx(
        [float(expected[-1]), float(expected[0])], abs=1e-5 * float(expected.abs().max())
    )
    result = run(["spectrum", "--problem", spec, "--micro-batch-size", "0", "--json"])
    assert result.exit_code == 2 and "micro-batch-size" in result.stderr


def test_cache_sizes(user_file, tmp_path):
    spec = f"{user_file}:as_triple"
    common = [
        "--problem",
        spec,
        "--k",
        "1",
        "--which",
        "largest",
        "--no-density",
        "--trace-matvecs",
        "0",
        "--micro-batch-size",
        "4",
    ]
    everything = spectrum_json([*common, "--cache", "on"], tmp_path)
    assert everything["cache"] is True and everything["cached_batches"] == 3
    nothing = spectrum_json([*common, "--cache", "0.001KB"], tmp_path)
    assert nothing["cache"] == 1 and nothing["cached_batches"] == 0
    assert nothing["eigenpairs"]["eigenvalues"] == pytest.approx(
        everything["eigenpairs"]["eigenvalues"], rel=1e-5
    )
    assert spectrum_json([*common, "--cache", "2GB"], tmp_path)["cache"] == 2 * 2**30
    result = run(["spectrum", "--problem", spec, "--cache", "lots", "--json"])
    assert result.exit_code == 2 and "'lots' is not auto, on, off or a size" in result.stderr


def test_human_output(tmp_path):
    result = run(
        ["spectrum", "--problem", "lecture-saddle", "--k", "1", "--plot", str(tmp_path / "d.png")]
    )
    assert result.exit_code == 0
    assert "Hessian eigenpairs" in result.stdout and "trace" in result.stdout
    assert "gradient graphs of 1 batch kept between products" in " ".join(result.stdout.split())


def test_unknown_problem_and_bad_checkpoint(tmp_path, user_file):
    result = run(["spectrum", "--problem", "no-such-problem", "--json"])
    assert result.exit_code == 2
    stderr = " ".join(result.stderr.split())  # the console wraps long lines
    assert "unknown problem 'no-such-problem'" in stderr and "lecture-saddle" in stderr
    bad = tmp_path / "bad.pt"
    torch.save({"nothing": torch.zeros(1)}, bad)
    result = run(
        ["spectrum", "--problem", f"{user_file}:as_triple", "--checkpoint", str(bad), "--json"]
    )
    assert result.exit_code == 2
    stderr = " ".join(result.stderr.split())
    assert "missing keys" in stderr and "unexpected keys ['nothing']" in stderr
    assert result.stdout == ""


def test_device_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for args in (
        ["spectrum", "--problem", "lecture-saddle"],
        ["critical", "--problem", "lecture-saddle"],
        ["batch", "noise", "--problem", "lecture-saddle"],
    ):
        result = CliRunner().invoke(main, [*args, "--device", "cuda"])
        assert result.exit_code == 2 and "sees no GPU" in result.output, result.output
    result = CliRunner().invoke(
        main, ["spectrum", "--problem", "lecture-saddle", "--device", "gpu0"]
    )
    assert result.exit_code == 2 and "not a device name" in result.output


def test_spectrum_miss_probability(tmp_path):
    out = spectrum_json(
        ["--problem", "lecture-saddle", "--k", "1", "--miss-probability", "0.01"], tmp_path
    )
    assert out["eigenpairs"]["miss_probability"] == 0.01
    assert 0.0 <= out["eigenpairs"]["miss_bound"] <= 0.01
    result = run(["spectrum", "--problem", "lecture-saddle", "--miss-probability", "1", "--json"])
    assert result.exit_code == 2 and "miss-probability" in result.stderr
