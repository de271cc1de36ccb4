"""Every generated bad-input probe (tests/probes.py) gets a clear ValueError/TypeError naming the
argument, or its documented result; none leaves the model or the global RNG changed. The CLI
probes exit 2 with a message naming the option, never a traceback. Probes of the stall doctor
(under rewrite) are expected failures for now, not hidden ones."""

from __future__ import annotations

import warnings

import pytest

import probes

PROBES = probes.all_probes()


@pytest.fixture(scope="module", autouse=True)
def scratch(tmp_path_factory):
    probes.use_folder(tmp_path_factory.mktemp("probes"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _param(probe: probes.Probe):
    marks = [pytest.mark.xfail(strict=False, reason="doctor rewrite: lead")] if probe.owner == probes.DOCTOR else []
    return pytest.param(probe, id=probe.id, marks=marks)


@pytest.mark.parametrize("probe", [_param(p) for p in PROBES])
def test_probe(probe):
    outcome = probes.run_probe(probe)
    assert outcome.category in ("clear", "documented"), f"{outcome.category}: {outcome.detail}"


def test_the_suite_is_big_and_covers_every_public_name():
    import lossdoctor as ld

    assert len(PROBES) >= 1000
    targets = {p.target for p in PROBES}
    functions = {name for name in ld.__all__ if callable(getattr(ld, name)) and not name[0].isupper()
                 or name in ("Problem", "Monitor")}
    # helpers that take no user input beyond what the probed functions already check
    assert functions - targets <= {"hessian_vector_product"}, sorted(functions - targets)
    assert {"spectrum", "critical", "lr-find", "schedule", "tour", "batch time", "batch sweep", "batch sharpness",
            "batch landscape", "batch noise", "diagnose", "train"} <= targets


def test_no_pickle_payload_ever_runs():
    for probe in PROBES:
        if "pickle" in probe.bad.label:
            probes.run_probe(probe)
    assert not (probes._probe_dir() / "PWNED").exists()
