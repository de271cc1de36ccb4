"""Two gloo processes on CPU, each holding an unequal shard, give the same curvature as one
process over all the data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn import functional as F

import lossdoctor as ld


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(23, 4, generator=gen), torch.randint(0, 3, (23,), generator=gen)


# Unequal shards: rank 0 gets 7 samples in batches of 4 and 3, rank 1 the other 16.
SHARDS = [slice(0, 7), slice(7, 23)]


def _results(op) -> dict[str, object]:
    eig = ld.eigenpairs(op, k=3, which="both", tol=1e-8, seed=3)
    tr = ld.trace(op, matvecs=30, seed=5)
    _, grad = op.gradient()
    return {
        "eigenvalues": torch.tensor(eig.eigenvalues),
        "trace": tr.estimate,
        "loss": op.loss,
        "num_samples": op.num_samples,
        "grad": grad,
    }


def _classification(model: torch.nn.Module, data) -> dict[str, object]:
    """The critical-point verdict, from the dense Hessian and from Lanczos."""
    out = {}
    for dense in (True, False):
        # grad_tol this loose keeps the gradient from deciding alone (it stops early otherwise): the
        # curvature half of the verdict is what must agree across processes.
        point = ld.classify_critical_point(
            model, F.cross_entropy, data, dense=dense, k=2, seed=3, grad_tol=1e6
        )
        out[dense] = {
            "kind": point.kind,
            "grad_norm": point.grad_norm,
            "min": point.min_eigenvalue,
            "max": point.max_eigenvalue,
            "ratio": point.minimum_ratio,
        }
    return out


@pytest.mark.skipif(
    not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed"
)
def test_two_gloo_processes_match_one_process_on_all_data(tmp_path):
    worker = Path(__file__).with_name("_distributed_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(worker),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {r: torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)}
    x, y = _data()
    single = _results(ld.hessian(_model(), F.cross_entropy, (x, y)))
    single_verdict = _classification(_model(), (x, y))
    for rank in (0, 1):
        r = got[rank]
        torch.testing.assert_close(r["ddp"]["eigenvalues"], r["eigenvalues"], rtol=0, atol=0)
        assert r["num_samples"] == 23
        assert r["loss"] == pytest.approx(single["loss"], rel=1e-6)
        torch.testing.assert_close(r["eigenvalues"], single["eigenvalues"], rtol=1e-5, atol=1e-6)
        assert r["trace"] == pytest.approx(single["trace"], rel=1e-5)
        torch.testing.assert_close(r["grad"], single["grad"], rtol=1e-5, atol=1e-7)
        for dense in (True, False):
            got_verdict, want = r["critical"][dense], single_verdict[dense]
            assert got_verdict["kind"] == want["kind"]
            for key in ("grad_norm", "min", "max"):
                assert got_verdict[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), (
                    dense,
                    key,
                )
            # dense: the exact fraction; Lanczos: an SLQ estimate whose probes are the same on every rank
            assert got_verdict["ratio"] == pytest.approx(want["ratio"], abs=1e-6 if dense else 1e-4)
    # Every rank computes the very same numbers, not merely close ones.
    assert torch.equal(got[0]["eigenvalues"], got[1]["eigenvalues"])
    assert got[0]["trace"] == got[1]["trace"]
    assert got[0]["critical"] == got[1]["critical"]


def test_distributed_true_without_process_group_is_a_clear_error():
    x, y = _data()
    with pytest.raises(ValueError, match="init_process_group"):
        ld.hessian(_model(), F.cross_entropy, (x, y), distributed=True)
