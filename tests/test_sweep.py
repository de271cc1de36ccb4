"""batch_size_sweep: milestones, the resumable store (interrupt, resume, no run lost or repeated),
settings mismatch, bad input, and rank sharding under torch.distributed (2 gloo processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

import lossdoctor as ld
from cases import ModelSnapshot
from lossdoctor.training.sweep import UNITS

SIZES, SEEDS = [8, 32], [0, 1]


def tiny_problem() -> ld.Problem:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 5, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    xt = torch.randn(32, 5, generator=gen)
    yt = (xt[:, 0] + xt[:, 1] > 0).long() + (xt[:, 2] > 1).long()
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    return ld.Problem(
        model,
        F.cross_entropy,
        [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)],
        (xt, yt),
        name="tiny",
    )


def sweep(problem: ld.Problem, store=None, progress=None, **overrides) -> ld.SweepResult:
    kwargs = {
        "epochs": 3,
        "updates": 10,
        "stop_at_loss": 0.8,
        "max_epochs": 20,
        "lr": 0.01,
        "seeds": SEEDS,
        "sharpness": ("lambda_max", "epsilon"),
        "tol": 1e-2,
        "epsilon_iters": 3,
        **overrides,
    }
    return ld.batch_size_sweep(problem, SIZES, store=store, progress=progress, **kwargs)


def numbers(run: ld.SweepRun) -> dict:
    """Everything but wall-clock times, which differ between two trainings of the same run."""
    d = run.to_dict()
    d["curve"] = {k: v for k, v in d["curve"].items() if k != "seconds"}
    d.pop("train_seconds")
    for m in d["milestones"]:
        m.pop("train_seconds")
    return d


def test_milestones_and_model_unchanged():
    problem = tiny_problem()
    before = ModelSnapshot.take(problem.model)
    result = sweep(problem, keep_states=True)
    before.assert_same(problem.model, "batch_size_sweep")
    assert [r.key for r in result.runs] == ["b8-s0", "b8-s1", "b32-s0", "b32-s1"]
    assert result.labels == ["epochs=3", "updates=10", "loss<=0.8"]
    for run in result.runs:
        assert run.updates_per_epoch == 64 // run.batch_size
        by = {m.label: m for m in run.milestones}
        assert by["epochs=3"].step == 3 * run.updates_per_epoch and by["updates=10"].step == 10
        loss = by["loss<=0.8"]
        if loss.reached:
            assert loss.train_loss <= 0.8 and run.time_to_loss(0.8)[1] == loss.step
        assert by["epochs=3"].lambda_max > 0 and by["epochs=3"].epsilon_sharpness >= 0
        assert set(run.states) == {m.label for m in run.milestones if m.reached}
    # Same seed, same initialization at every batch size; different seeds differ.
    first = [r.curve["train_loss"][0] for r in result.runs]
    assert first[0] == first[2] and first[1] == first[3] and first[0] != first[1]
    rows = result.table("epochs=3")
    assert [r["batch_size"] for r in rows] == SIZES and rows[0]["runs"] == 2
    assert "Batch-size sweep on tiny" in str(result)
    json.dumps(result.to_dict())


def test_interrupted_sweep_resumes_without_losing_or_repeating_runs(tmp_path):
    reference = sweep(tiny_problem(), store=tmp_path / "reference")
    store = tmp_path / "store"
    seen: list[int] = []

    def interrupt_mid_second_run(done: int, total: int) -> None:
        seen.append(done)
        if UNITS < done < 2 * UNITS:
            raise KeyboardInterrupt

    # Ctrl-C returns the finished runs, flagged; the run in progress is the only work lost
    partial = sweep(tiny_problem(), store=store, progress=interrupt_mid_second_run)
    assert (
        partial.interrupted
        and [r.key for r in partial.runs] == ["b8-s0"]
        and "INTERRUPTED" in str(partial)
    )
    assert numbers(partial.runs[0]) == numbers(reference.runs[0])
    assert sorted(p.name for p in (store / "runs").iterdir()) == [
        "b8-s0.json"
    ]  # only the finished run
    resumed = sweep(tiny_problem(), store=store)
    assert resumed.loaded == ["b8-s0"] and resumed.trained == ["b8-s1", "b32-s0", "b32-s1"]
    for got, want in zip(resumed.runs, reference.runs):
        assert numbers(got) == numbers(want)
    again = sweep(tiny_problem(), store=store)
    assert again.trained == [] and len(again.loaded) == 4
    assert [r.to_dict() for r in again.runs] == [r.to_dict() for r in resumed.runs]
    assert not [
        p for p in (store / "runs").iterdir() if p.name.startswith(".")
    ]  # no temporary files left
    # A store holds one sweep's settings: other settings are refused, nothing is overwritten.
    with pytest.raises(ValueError, match=r"other settings \(differs in \['lr'\]\)"):
        sweep(tiny_problem(), store=store, lr=0.02)
    # More seeds on the same settings extend the sweep, reusing every finished run.
    more = sweep(tiny_problem(), store=store, seeds=[0, 1, 2], sharpness=("lambda_max", "epsilon"))
    assert len(more.loaded) == 4 and more.trained == ["b8-s2", "b32-s2"]


def test_linear_lr_rule_and_sgd():
    result = sweep(
        tiny_problem(),
        lr_rule="linear",
        base_batch=8,
        optimizer="sgd",
        lr=0.1,
        seeds=[0],
        sharpness=(),
        stop_at_loss=(),
    )
    assert [r.lr for r in result.runs] == [pytest.approx(0.1), pytest.approx(0.4)]
    assert result.runs[0].milestones[0].lambda_max is None


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"epochs": None, "updates": None, "stop_at_loss": ()}, "give epochs="),
        ({"lr_rule": "sqrt"}, "lr_rule"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"seeds": [0, 0]}, "seeds"),
        ({"stop_at_loss": -1.0}, "stop_at_loss"),
        ({"sharpness": ("flatness",)}, r"sharpness\[0\] must be one of 'lambda_max'"),
        ({"epochs": 0}, "epochs must be a finite number > 0"),
    ],
)
def test_bad_input(overrides, match):
    with pytest.raises(ValueError, match=match):
        sweep(tiny_problem(), **overrides)
    with pytest.raises(
        ValueError, match=r"batch_sizes must not repeat values.*\[8\] more than once"
    ):
        ld.batch_size_sweep(tiny_problem(), [8, 8], epochs=1)
    with pytest.raises(TypeError, match="Problem"):
        ld.batch_size_sweep(nn.Linear(2, 2), [8], epochs=1)


@pytest.mark.parametrize(
    "summed",
    [lambda o, t: F.cross_entropy(o, t, reduction="sum"), nn.CrossEntropyLoss(reduction="sum")],
    ids=["function", "module"],
)
def test_a_loss_that_sums_its_batch_is_refused_before_any_training(summed, tmp_path):
    # The lr rules are stated for a batch mean; a sum grows every step with the batch size. The
    # function was trained on and then refused at the first sharpness measurement; the module ran
    # to the end, comparing batch sizes whose steps were B times apart.
    problem = tiny_problem()
    problem = ld.Problem(problem.model, summed, problem.train_data, problem.test_data, name="sum")
    before = ModelSnapshot.take(problem.model)
    with pytest.raises(ValueError, match="returns the sum of its samples' losses.*batch mean"):
        sweep(problem, store=tmp_path / "store")
    before.assert_same(problem.model, "batch_size_sweep refusing a summing loss")
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


@pytest.mark.skipif(
    not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed"
)
def test_two_ranks_share_the_runs(tmp_path):
    worker = Path(__file__).with_name("_sweep_worker.py")
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
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    keys = ["b8-s0", "b8-s1", "b32-s0", "b32-s1"]
    assert (
        got[0]["trained"] == keys[0::2] and got[1]["trained"] == keys[1::2]
    )  # run i on rank i % 2
    single = sweep(tiny_problem(), store=tmp_path / "single")
    for rank in (0, 1):
        assert [r["batch_size"] for r in got[rank]["runs"]] == [8, 8, 32, 32]
        for run, want in zip(got[rank]["runs"], single.runs):
            assert run["curve"]["train_loss"] == pytest.approx(want.curve["train_loss"], rel=1e-5)
    assert got[0]["runs"] == got[1]["runs"]  # both ranks assemble the same result from the store


def test_evaluation_halves_the_batch_on_out_of_memory(monkeypatch):
    from lossdoctor import evaluation

    real = evaluation.evaluate
    sizes: list[int] = []

    def small_memory(model, loss_fn, batches):
        sizes.append(max(len(y) for _, y in batches))
        if sizes[-1] > 16:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, loss_fn, batches)

    problem = tiny_problem()
    monkeypatch.setattr(evaluation, "evaluate", small_memory)
    monkeypatch.setattr(evaluation, "_FITS", {})
    got = evaluation.evaluate_largest(problem.model, problem.loss_fn, problem.train_data)
    assert sizes == [64, 32, 16]  # the whole set first, then halved until it fits
    assert got == pytest.approx(real(problem.model, problem.loss_fn, problem.train_data))
    sizes.clear()
    evaluation.evaluate_largest(problem.model, problem.loss_fn, problem.train_data)
    assert sizes == [16]  # remembered: no second search
    monkeypatch.setattr(
        evaluation, "evaluate", lambda *a: (_ for _ in ()).throw(RuntimeError("shape mismatch"))
    )
    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors are not swallowed
        evaluation.evaluate_largest(problem.model, problem.loss_fn, problem.train_data)
