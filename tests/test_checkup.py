"""The checkup: the same verdict and prescriptions as diagnose(verify=True), the model left as it
was, every section's cost and status, the budget, the page and its JSON, notebook display, CLI."""

from __future__ import annotations

import dataclasses
import importlib
import json
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import lossdoctor as ld
from browser import open_page
from lossdoctor.cli import main
from lossdoctor.report.checkup import write
from lossdoctor.studies import stall_cases as sc

FAMILIES = {f.key: f for f in sc.FAMILIES}


def stall(key="lr-too-small/mlp", seed=0):
    return FAMILIES[key].build(seed)


def test_verdict_and_prescriptions_match_diagnose_and_the_model_is_untouched(tmp_path):
    s = stall("saddle/deep-linear")
    before = [p.detach().clone() for p in s.model.parameters()]
    state = (
        {k: v.clone() for k, v in s.optimizer.state_dict()["state"].items()}
        if s.optimizer.state
        else {}
    )
    rng = torch.get_rng_state()
    c = ld.checkup(s.model, s.loss_fn, s.data, history=s.losses, optimizer=s.optimizer, budget=120)
    d = ld.diagnose(
        s.model, s.loss_fn, s.data, history=s.losses, optimizer=s.optimizer, verify=True
    )
    assert c.diagnosis.cause == d.cause == "saddle_point"
    assert [p.text for p in c.diagnosis.prescriptions] == [p.text for p in d.prescriptions]
    assert [p.action for p in c.diagnosis.prescriptions] == [p.action for p in d.prescriptions]
    assert all(torch.equal(a, p) for a, p in zip(before, s.model.parameters()))
    assert torch.equal(rng, torch.get_rng_state()) and (not state or s.optimizer.state)
    keys = [sec.key for sec in c.sections]
    assert keys[0] == "doctor" and {
        "spectrum",
        "density",
        "critical",
        "escape",
        "landscape-top",
    } <= set(keys)
    assert all(sec.status.startswith(("done", "skipped", "failed")) for sec in c.sections)
    # At the saddle the critical-point test agrees and the escape profile goes down on one side.
    assert c.critical.kind == "saddle_point"
    assert min(c.escape_profile.train_loss) < c.escape_profile.center_loss
    page = write(c, tmp_path)
    html = page.read_text()
    assert (
        html.index("Verdict and tested prescriptions")
        < html.index("Curvature")
        < html.index("Critical point")
    )
    assert (
        'name="viewport"' in html
        and "@media print" in html
        and "http" not in html.split("<body>")[1][:200]
    )
    for img in (
        "checkup-trials.png",
        "checkup-history.png",
        "checkup-density.png",
        "checkup-landscape.png",
    ):
        assert (tmp_path / img).stat().st_size > 5_000
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["diagnosis"]["cause"] == "saddle_point"


@pytest.mark.parametrize("key", ["saddle/deep-linear", "lr-too-small/mlp"])
def test_a_loss_function_that_sums_its_batch_gets_every_section(key):
    # The critical-point test refused such a loss ("pass reduction='sum'", a section the user
    # cannot reach), and the noise scale, taking the sum for a mean, came out meaningless.
    s = stall(key)

    def summed(output, target):
        return s.loss_fn(output, target) * len(target)

    c = ld.checkup(s.model, summed, s.data, history=s.losses, optimizer=s.optimizer, budget=120)
    status = {sec.key: sec.status for sec in c.sections}
    assert status["critical"] == "done" and status["noise"] == "done", status
    mean = ld.checkup(
        s.model, s.loss_fn, s.data, history=s.losses, optimizer=s.optimizer, budget=120
    )
    assert c.critical.kind == mean.critical.kind
    for name in ("loss", "grad_norm", "min_eigenvalue", "max_eigenvalue"):
        value, expected = getattr(c.critical, name), getattr(mean.critical, name)
        assert value == pytest.approx(expected, rel=1e-3, nan_ok=True), name
    for name in ("b_simple", "trace_sigma", "grad_norm_sq", "loss"):
        value, expected = getattr(c.noise, name), getattr(mean.noise, name)
        assert value == pytest.approx(expected, rel=1e-4, abs=1e-12, nan_ok=True), name


@pytest.mark.parametrize("error", [KeyboardInterrupt, ValueError])
def test_reading_the_losss_reduction_fails_only_its_sections(monkeypatch, error):
    module = importlib.import_module("lossdoctor.checkup")  # ld.checkup is the function

    def refuse(*args, **kwargs):
        raise error("stop here")

    monkeypatch.setattr(module, "observed_reduction", refuse)
    s = stall("saddle/deep-linear")
    c = ld.checkup(s.model, s.loss_fn, s.data, history=s.losses, optimizer=s.optimizer, budget=120)
    status = {sec.key: sec.status for sec in c.sections}
    assert status["doctor"] == "done" and c.diagnosis.cause == "saddle_point"
    if error is KeyboardInterrupt:  # the rest is skipped, and the checkup says it was cut short
        assert status["critical"] == "interrupted" and c.interrupted and c.critical is None
    else:
        assert status["critical"] == "failed: stop here" and not c.interrupted
        assert status["escape"] == "done"


def test_pairs_not_certified_within_the_budget_are_said_on_the_page_not_warned(tmp_path):
    """The tour's checkup: at the zero-initialised tanh MLP's symmetric saddle the search for
    copies of the repeated extreme eigenvalues outlasts the critical-point budget. The result
    flags it, the page says what it means, and nothing is printed as a warning."""
    s = stall("saddle/zero-tanh-mlp")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        c = ld.checkup(
            s.model, s.loss_fn, s.data, history=s.losses, optimizer=s.optimizer, budget=60
        )
    assert c.critical.kind == "saddle_point" and not c.critical.converged.all()
    assert c.critical.min_eigenvalue < 0  # a negative Ritz value: certified whatever the flags
    note = "Not every extreme eigenpair was certified"
    assert note in write(c, tmp_path).read_text()
    certified = dataclasses.replace(
        c, critical=dataclasses.replace(c.critical, converged=np.ones(2, dtype=bool))
    )
    assert note not in write(certified, tmp_path / "certified").read_text()


def test_without_a_history_a_probe_run_makes_one_and_is_undone():
    s = stall()
    before = [p.detach().clone() for p in s.model.parameters()]
    c = ld.checkup(s.model, s.loss_fn, s.data, optimizer=s.optimizer, budget=30)
    assert "probe run" in c.history_source and len(c.history) == 2 * 60
    assert c.diagnosis.cause == "lr_too_small"
    assert all(torch.equal(a, p) for a, p in zip(before, s.model.parameters()))


def test_a_tight_budget_skips_sections_and_says_so():
    s = stall()
    c = ld.checkup(s.model, s.loss_fn, s.data, history=s.losses, optimizer=s.optimizer, budget=1e-3)
    assert c.sections[0].key == "doctor" and c.sections[0].done  # the verdict always comes
    skipped = [sec for sec in c.sections[1:] if sec.status.startswith("skipped")]
    assert skipped and all("budget" in sec.status for sec in skipped)
    assert c.spectrum is None and c.lr_range is None
    json.dumps(c.to_dict())


def test_notebook_display():
    s = stall()
    d = ld.diagnose(s.model, s.loss_fn, s.data, history=s.losses, optimizer=s.optimizer)
    html = d._repr_html_()
    assert (
        "lr too small" in html and "data:image/png;base64," in html and "apply(model, opt)" in html
    )
    eig = ld.eigenpairs(ld.hessian(s.model, s.loss_fn, s.data[:2]), k=1, tol=1e-2)
    assert "EigenResult" in eig._repr_html_() and "<table>" in eig._repr_html_()


def test_bad_input():
    s = stall()
    with pytest.raises(ValueError, match="optimizer"):
        ld.checkup(s.model, s.loss_fn, s.data, history=s.losses)
    with pytest.raises(ValueError, match="budget"):
        ld.checkup(s.model, s.loss_fn, s.data, history=s.losses, optimizer=s.optimizer, budget=0)
    with pytest.raises(TypeError, match="model"):
        ld.checkup("model", s.loss_fn, s.data, history=s.losses, optimizer=s.optimizer)


@pytest.fixture(scope="module")
def cli_page(tmp_path_factory):
    out = tmp_path_factory.mktemp("checkup")
    result = CliRunner().invoke(
        main,
        [
            "checkup",
            "--problem",
            "lecture-saddle",
            "--lr",
            "0.05",
            "--budget",
            "30s",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    return out, json.loads(result.output)


def test_cli_writes_the_page(cli_page, tmp_path):
    out, data = cli_page
    assert data["checkup"]["diagnosis"]["cause"] == "saddle_point"
    assert (out / "index.html").exists() and (out / "results.json").exists()
    bad = CliRunner().invoke(
        main,
        [
            "checkup",
            "--problem",
            "lecture-saddle",
            "--lr",
            "0.05",
            "--budget",
            "soon",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert bad.exit_code == 2 and "--budget" in bad.output


@pytest.mark.browser
def test_the_page_opens_in_chromium_verdict_first(cli_page, tmp_path):
    out, data = cli_page
    page = open_page(out / "index.html", tmp_path / "profile")
    assert page.title.startswith("lossdoctor checkup")
    assert page.images and not page.broken_images, page.broken_images
    assert not page.errors, page.errors
    # What a reader meets first: the verdict, before any curvature.
    verdict = page.text.index("Verdict and tested prescriptions")
    assert verdict < page.text.index("Curvature")
    assert "saddle" in page.text[verdict : verdict + 600].lower()


def test_a_monitor_writes_the_page_at_the_first_stall(tmp_path):
    from lossdoctor.report.checkup import attach_checkup

    s = stall("lr-too-small/mlp")
    seen = []
    monitor = ld.Monitor(
        s.model, s.loss_fn, s.data, window=30, doctor_share=None, callback=seen.append
    )
    attach_checkup(monitor, s.optimizer, tmp_path / "report", budget=20)
    ld.train_monitored(s.model, s.loss_fn, s.data, s.optimizer, steps=90, monitor=monitor)
    stalled = [d for d in seen if d.stalled]
    assert stalled, "the user's own callback still runs"
    assert monitor.checkup_pages == [tmp_path / "report" / "index.html"]
    data = json.loads((tmp_path / "report" / "results.json").read_text())
    assert data["diagnosis"]["stalled"] and data["diagnosis"]["cause"] == stalled[0].cause
    with pytest.raises(TypeError, match="monitor"):
        attach_checkup("monitor", s.optimizer, tmp_path)


def test_cli_train_writes_the_page(tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--problem",
            "lecture-saddle",
            "--lr",
            "0.05",
            "--steps",
            "40",
            "--report",
            str(tmp_path / "r"),
            "--report-budget",
            "20s",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    page = json.loads(result.output)["checkup_page"]
    assert page == str(tmp_path / "r" / "index.html") and (tmp_path / "r" / "results.json").exists()
    bad = CliRunner().invoke(
        main,
        [
            "train",
            "--problem",
            "lecture-saddle",
            "--lr",
            "0.05",
            "--steps",
            "4",
            "--report",
            str(tmp_path / "q"),
            "--report-budget",
            "soon",
        ],
    )
    assert bad.exit_code == 2 and "--report-budget" in bad.output
