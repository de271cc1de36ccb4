"""The guarantees the README states, end to end: exit codes, Ctrl-C in the CLI, output paths checked
before computing, nothing overwritten or lost, the tour resumes, writes stay inside the report
folder, the global RNG never moves, the data layer's checks and messages, schedule in O(lines)."""

from __future__ import annotations

import json
import random
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import lossdoctor as ld
from lossdoctor import _files
from lossdoctor.cli import main

PROBLEM = textwrap.dedent("""
    import os
    import torch
    from torch import nn
    from torch.nn import functional as F

    CALLS = [0]

    def loss(out, y):
        # Ctrl-C after STOP loss calls (when LOSSDOCTOR_TEST_STOP is set): a user pressing it mid-run
        CALLS[0] += 1
        if CALLS[0] == int(os.environ.get("LOSSDOCTOR_TEST_STOP", "0")):
            raise KeyboardInterrupt
        return F.cross_entropy(out, y)

    def make():
        CALLS[0] = 0
        g = torch.Generator().manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
        x, y = torch.randn(12, 3, generator=g), torch.randint(0, 3, (12,), generator=g)
        return model, loss, [(x[:6], y[:6]), (x[6:], y[6:])], (x[:4], y[:4])
""")


@pytest.fixture
def problem(tmp_path, monkeypatch):
    path = tmp_path / "guarantee_problem.py"
    path.write_text(PROBLEM)
    monkeypatch.chdir(tmp_path)
    return f"{path}:make"


def run(args, **env):
    return CliRunner(env={k: str(v) for k, v in env.items()}).invoke(
        main, args, catch_exceptions=False
    )


pytestmark = pytest.mark.usefixtures("one_thread")


# -- exit codes and Ctrl-C in the CLI ----------------------------------------------------------
def test_exit_codes_are_documented_and_used(problem, tmp_path):
    text = " ".join(run(["--help"]).output.split())
    assert "130 interrupted" in text and "2 bad input" in text and "0 done" in text
    assert (
        run(
            [
                "batch",
                "noise",
                "--problem",
                problem,
                "--small-batch",
                "2",
                "--big-batch",
                "6",
                "--pairs",
                "3",
            ]
        ).exit_code
        == 0
    )
    assert run(["batch", "noise", "--problem", problem, "--pairs", "1"]).exit_code == 2
    stopped = run(
        [
            "batch",
            "landscape",
            "--problem",
            problem,
            "--steps",
            "9",
            "--plot",
            str(tmp_path / "l.png"),
        ],
        LOSSDOCTOR_TEST_STOP=10,
    )
    assert stopped.exit_code == 130, stopped.output
    # what finished is printed and saved, flagged
    assert "INTERRUPTED" in stopped.output and (tmp_path / "l.png").stat().st_size > 0


def test_ctrl_c_before_anything_finished_exits_130_without_traceback(problem):
    result = run(
        ["batch", "noise", "--problem", problem, "--small-batch", "2", "--big-batch", "6"],
        LOSSDOCTOR_TEST_STOP=1,
    )
    assert (
        result.exit_code == 130
        and "Traceback" not in result.output
        and "interrupted" in result.output
    )


def test_ctrl_c_in_a_sweep_prints_the_finished_runs_and_keeps_them(problem, tmp_path):
    store = tmp_path / "store"
    args = [
        "batch",
        "sweep",
        "--problem",
        problem,
        "--sizes",
        "2,4,6",
        "--seeds",
        "0",
        "--updates",
        "3",
        "--sharpness",
        "none",
        "--store",
        str(store),
        "--json",
    ]
    stopped = run(
        args, LOSSDOCTOR_TEST_STOP=12
    )  # the runs take 7, 7 and 9 loss calls: inside the second
    assert stopped.exit_code == 130
    payload = json.loads(stopped.stdout)
    assert payload["interrupted"] and [r["batch_size"] for r in payload["runs"]] == [2]
    assert [p.name for p in (store / "runs").glob("*.json")] == ["b2-s0.json"]
    resumed = json.loads(run(args).stdout)
    assert resumed["loaded"] == ["b2-s0"] and resumed["trained"] == ["b4-s0", "b6-s0"]
    assert not resumed["interrupted"] and len(resumed["runs"]) == 3


def test_errors_in_the_users_own_code_show_the_users_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text(
        "import torch\n\ndef make():\n    model = build_it()\n    return model\n"
    )
    result = run(["spectrum", "--problem", f"{tmp_path / 'mine.py'}:make"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "mine.py, line 4, in make" in result.output and "model = build_it()" in result.output
    assert "NameError: name 'build_it' is not defined" in result.output
    (tmp_path / "broken.py").write_text("def make(:\n    pass\n")
    result = run(["spectrum", "--problem", f"{tmp_path / 'broken.py'}:make"])
    assert (
        result.exit_code == 2
        and "broken.py, line 1" in result.output
        and "SyntaxError" in result.output
    )


def test_errors_in_the_users_model_point_at_the_users_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(
        textwrap.dedent("""
        import torch
        from torch import nn
        from torch.nn import functional as F

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(3, 2)

            def forward(self, x):
                return self.fc(x.view(-1, 4))

        def make():
            g = torch.Generator().manual_seed(0)
            return Net(), F.cross_entropy, (torch.randn(6, 3, generator=g), torch.randint(0, 2, (6,), generator=g))
    """)
    )
    result = run(["spectrum", "--problem", "net:make"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert (
        "the model failed on batch 0" in result.output and "net.py:12 in forward" in result.output
    )


# -- output files ------------------------------------------------------------------------------
def test_output_paths_are_checked_before_computing(problem, tmp_path, monkeypatch):
    import lossdoctor.analysis.landscape as landscape_module

    def must_not_run(*args, **kwargs):
        raise AssertionError("computed before the output path was checked")

    monkeypatch.setattr(landscape_module, "landscape", must_not_run)
    existing = tmp_path / "taken.png"
    existing.write_bytes(b"mine")
    for plot, words in [
        (tmp_path / "x.xyz", "format"),
        (tmp_path / "no" / "x.png", "does not exist"),
        (existing, "already exists"),
        (tmp_path, "is a folder"),
        ("/proc/x.png", "cannot write"),
    ]:
        result = run(["batch", "landscape", "--problem", problem, "--plot", str(plot)])
        assert result.exit_code == 2 and words in result.output and "--plot" in result.output, (
            result.output
        )
    assert existing.read_bytes() == b"mine"


def test_a_taken_default_name_moves_on_and_an_explicit_one_is_refused(problem, tmp_path):
    (tmp_path / "landscape.png").write_bytes(b"earlier")
    first = run(["batch", "landscape", "--problem", problem, "--steps", "3"])
    assert first.exit_code == 0 and (tmp_path / "landscape-2.png").stat().st_size > 0
    assert (tmp_path / "landscape.png").read_bytes() == b"earlier"


def test_a_failed_write_is_saved_beside_it(tmp_path, monkeypatch):
    target = tmp_path / "out.pt"
    target.write_bytes(b"appeared meanwhile")
    written, why = _files.save_new(target, lambda handle: handle.write(b"result"))
    assert (
        written == tmp_path / "out-1.pt" and written.read_bytes() == b"result" and "appeared" in why
    )
    gone = tmp_path / "gone" / "out.pt"  # the folder went away while computing
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    written, why = _files.save_new(gone, lambda handle: handle.write(b"result"))
    assert written == tmp_path / "cwd" / "out.pt" and written.read_bytes() == b"result"
    assert "No such file or directory" in why and f"saved to {written}" in why


def test_escape_checkpoint_goes_beside_when_the_file_appears_meanwhile(tmp_path, monkeypatch):
    import lossdoctor.cli.commands as cli

    target = tmp_path / "escaped.pt"
    original = cli.save_file

    def appear_then_save(path, write, what):
        Path(path).write_bytes(b"someone else's")
        return original(path, write, what)

    monkeypatch.setattr(cli, "save_file", appear_then_save)
    result = run(["critical", "--problem", "lecture-saddle", "--escape", "--out", str(target)])
    assert result.exit_code == 0 and "saved to" in result.output
    assert (
        target.read_bytes() == b"someone else's" and (tmp_path / "escaped-1.pt").stat().st_size > 0
    )


# -- the tour: resume, force, atomic writes inside the folder ---------------------------------------
SECTION = "critical-toy"


def test_tour_resumes_keeps_sections_and_force_redoes_them(tmp_path, monkeypatch):
    from lossdoctor import tour

    out = tmp_path / "report"
    assert run(["tour", "--out", str(out), "--only", SECTION]).exit_code == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results) == [SECTION]
    calls = []
    section = next(s for s in tour.SECTIONS if s.key == SECTION)

    def counted(original):
        def run_section(**kwargs):
            calls.append(original.key)
            return original.run(**kwargs)

        return tour.TourSection(original.key, original.title, run_section, original.render)

    monkeypatch.setattr(tour, "SECTIONS", [counted(s) for s in tour.SECTIONS])
    again = run(["tour", "--out", str(out), "--only", SECTION])
    assert again.exit_code == 0 and calls == [] and "kept 1 finished section" in again.output
    assert json.loads((out / "results.json").read_text()) == results
    forced = run(["tour", "--out", str(out), "--only", SECTION, "--force"])
    assert forced.exit_code == 0 and calls == [SECTION]
    assert f'id="{section.key}"' in (out / "index.html").read_text()


def test_interrupted_tour_keeps_every_finished_section(tmp_path, monkeypatch):
    from lossdoctor import tour

    out = tmp_path / "report"
    assert run(["tour", "--out", str(out), "--only", SECTION]).exit_code == 0

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(
        tour,
        "SECTIONS",
        [
            tour.TourSection(
                s.key, s.title, interrupted if s.key == "spectrum" else s.run, s.render
            )
            for s in tour.SECTIONS
        ],
    )
    result = run(["tour", "--out", str(out), "--only", SECTION, "--only", "spectrum", "--force"])
    assert result.exit_code == 130 and "finished sections are kept" in result.output
    assert list(json.loads((out / "results.json").read_text())) == [SECTION]
    assert f'id="{SECTION}"' in (out / "index.html").read_text()


def test_a_swallowed_ctrl_c_does_not_save_a_section(tmp_path, monkeypatch):
    """An inner call that turned Ctrl-C into a partial result: the section is not saved."""
    from lossdoctor import _interrupt, tour

    original = next(s for s in tour.SECTIONS if s.key == SECTION).run

    def partial(**kwargs):
        _interrupt.note()
        return original(**kwargs)

    monkeypatch.setattr(
        tour,
        "SECTIONS",
        [
            tour.TourSection(s.key, s.title, partial, s.render)
            for s in tour.SECTIONS
            if s.key == SECTION
        ]
        or tour.SECTIONS,
    )
    with pytest.raises(KeyboardInterrupt):
        tour.run_tour(tmp_path / "r", only=[SECTION])
    assert json.loads((tmp_path / "r" / "results.json").read_text()) == {}


def test_tour_never_writes_through_a_symlink(tmp_path):
    out, outside = tmp_path / "report", tmp_path / "outside.txt"
    out.mkdir()
    outside.write_text("precious")
    for name in ("index.html", "results.json", "critical-toy-surface.png", ".tour-sections.json"):
        (out / name).symlink_to(outside)
    result = run(["tour", "--out", str(out), "--only", SECTION])
    assert result.exit_code == 0, result.output
    assert outside.read_text() == "precious"
    assert not (out / "index.html").is_symlink() and json.loads((out / "results.json").read_text())
    assert not list(out.glob(".*.tmp")) and not list(out.glob("*.tmp"))


def test_atomic_write_refuses_names_that_leave_the_folder(tmp_path):
    for name in ("../x", "sub/x", "..", ""):
        with pytest.raises(ValueError, match="plain file name"):
            _files.atomic_write_text(tmp_path, name, "x")


# -- the global RNG ----------------------------------------------------------------------------
def _global_rng():
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def test_no_call_moves_the_global_rng_and_a_dropout_sweep_depends_on_its_seed_only():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 3, generator=g), torch.randint(0, 3, (24,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    with torch.random.fork_rng(devices=[]):
        model = nn.Sequential(nn.Linear(3, 6), nn.Dropout(0.5), nn.ReLU(), nn.Linear(6, 3))
    problem = ld.Problem(model, F.cross_entropy, loader, name="dropout")
    results = []
    for seed in (0, 123):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        before = _global_rng()
        sweep = ld.batch_size_sweep(problem, [4, 8], seeds=[0], updates=3, sharpness=())
        ld.landscape(model, F.cross_entropy, loader, steps=3)
        ld.interpolate(model, model, F.cross_entropy, loader, [0.0, 1.0])
        ld.gradient_noise_scale(
            model, F.cross_entropy, loader, small_batch=2, big_batch=8, pairs=3, mode="train"
        )
        ld.time_batch_sizes(model, F.cross_entropy, loader, [2, 4], repeats=1, warmup=0)
        ld.lr_range_test(
            model, F.cross_entropy, loader, torch.optim.SGD(model.parameters(), lr=0.1), steps=5
        )
        ld.hessian(model, F.cross_entropy, loader)
        after = _global_rng()
        assert (
            torch.equal(before[0], after[0])
            and np.array_equal(before[1], after[1])
            and before[2] == after[2]
        )
        results.append([r.curve["train_loss"] for r in sweep.runs])
    assert results[0] == results[1]  # the caller's seed does not reach the runs


def test_a_loader_reshuffles_on_each_pass_of_one_stream_but_not_the_global_rng():
    from lossdoctor.data import iter_batches
    from lossdoctor.model_state import RNGStream

    loader = DataLoader(
        TensorDataset(torch.arange(20.0).unsqueeze(1), torch.arange(20)),
        batch_size=20,
        shuffle=True,
    )
    state = torch.get_rng_state()
    stream = RNGStream()
    first = [t.tolist() for _, t in iter_batches(loader, rng=stream)]
    second = [t.tolist() for _, t in iter_batches(loader, rng=stream)]
    assert first != second and torch.equal(state, torch.get_rng_state())
    # a fresh stream per pass sees what the caller's own loop would see first
    assert [t.tolist() for _, t in iter_batches(loader)] == [t.tolist() for _, t in loader]


# -- the data layer --------------------------------------------------------------------------
def _mlp():
    with torch.random.fork_rng(devices=[]):
        return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))


def test_datasets_are_read_in_batches_of_the_stated_size():
    from lossdoctor.data import DATASET_BATCH_SIZE, iter_batches

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(600, 3, generator=g), torch.randint(0, 3, (600,), generator=g)
    assert [len(t) for _, t in iter_batches(TensorDataset(x, y))] == [
        DATASET_BATCH_SIZE,
        DATASET_BATCH_SIZE,
        88,
    ]
    model = _mlp()
    from_dataset = ld.hessian(model, F.cross_entropy, TensorDataset(x, y))
    from_pair = ld.hessian(model, F.cross_entropy, (x, y))
    v = torch.randn(from_pair.num_params, generator=g)
    assert from_dataset.loss == pytest.approx(from_pair.loss) and torch.allclose(
        from_dataset @ v, from_pair @ v, atol=1e-6
    )
    assert (
        ld.time_batch_sizes(
            model, F.cross_entropy, TensorDataset(x, y), [4], repeats=1
        ).dataset_size
        == 600
    )


def test_inputs_and_targets_must_pair_up():
    x, y = torch.randn(10, 3), torch.randint(0, 3, (10,))
    model = _mlp()
    for data in ([(x[:5], y[:4]), (x[5:], y[4:])], (x, y[:-1])):
        with pytest.raises(
            ValueError,
            match=r"input rows against \d+ targets.*reads the first dimension as the batch",
        ):
            ld.landscape(model, F.cross_entropy, data, steps=3)
    mask = torch.ones(7, 7)  # a tuple input may carry a tensor shared by the batch
    ok = [((x, mask), y)]
    assert ld.Problem(nn.Identity(), F.cross_entropy, ok).train_data is ok


@pytest.mark.parametrize(
    "targets, loss, words",
    [
        (lambda y: y.float(), F.cross_entropy, "class indices of dtype torch.long"),
        (
            lambda y: y + 3,
            F.cross_entropy,
            r"classes \d\.\.5 but the model outputs 3 classes.*Give the model 6 outputs",
        ),
        (lambda y: torch.stack([y, y], 1), F.cross_entropy, "one class index per sample"),
        (lambda y: y, lambda o, t: F.cross_entropy(o, t).detach(), "detached"),
        (lambda y: y, nn.CrossEntropyLoss(reduction="none"), "reduction='none'"),
    ],
)
def test_errors_of_the_users_loss_name_the_batch_the_shapes_and_the_fix(targets, loss, words):
    x, y = torch.randn(10, 3), torch.randint(0, 3, (10,))
    model = _mlp()
    for call in (
        lambda d: ld.hessian(model, loss, d) @ torch.ones(31),
        lambda d: ld.gradient_noise_scale(model, loss, d, small_batch=2, big_batch=6, pairs=2),
        lambda d: ld.lr_range_test(
            model, loss, d, torch.optim.SGD(model.parameters(), lr=0.1), steps=5
        ),
    ):
        with pytest.raises(ValueError, match=words):
            call((x, targets(y)))


def test_a_float64_batch_for_a_float32_model_says_how_to_convert():
    with pytest.raises(
        ValueError, match=r"model failed on batch 0.*float64 but the model's parameters float32"
    ):
        ld.hessian(
            _mlp(),
            F.cross_entropy,
            (torch.randn(4, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.long)),
        )


# -- schedule in O(printed lines) -------------------------------------------------------------
def test_schedule_of_millions_of_steps_is_instant_and_matches_the_scheduler(tmp_path):
    start = time.perf_counter()
    result = run(
        [
            "schedule",
            "--warmup",
            "1000",
            "--after",
            "cosine",
            "--steps",
            "3000000",
            "--lr",
            "0.1",
            "--json",
            "--plot",
            str(tmp_path / "s.png"),
        ]
    )
    assert result.exit_code == 0 and time.perf_counter() - start < 20
    payload = json.loads(result.stdout)
    assert (
        payload["lrs"] is None
        and payload["peak_step"] == 1000
        and payload["peak_lr"] == pytest.approx(0.1)
    )
    from lossdoctor.training.schedules import schedule_lrs

    short = run(
        [
            "schedule",
            "--warmup",
            "7",
            "--after",
            "step",
            "--step-size",
            "5",
            "--gamma",
            "2.0",
            "--steps",
            "40",
            "--json",
        ]
    )
    data = json.loads(short.stdout)
    lrs = schedule_lrs(1e-3, 40, warmup_steps=7, after="step", step_size=5, gamma=2.0)
    assert data["lrs"] == pytest.approx(lrs) and data["peak_lr"] == pytest.approx(max(lrs))
    assert data["peak_step"] == lrs.index(max(lrs)) and data["final_lr"] == pytest.approx(lrs[-1])
