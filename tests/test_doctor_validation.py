"""The validation study's machinery: seeds kept apart, every cause covered on the architectures
the issue names, the confusion matrix, and the fix judged by continuing training."""

from __future__ import annotations

import json

import pytest

from lossdoctor import CAUSES
from lossdoctor.studies import doctor_validation as dv
from lossdoctor.studies import stall_cases as sc


def test_seed_sets_are_disjoint_and_the_suite_is_big_enough():
    assert not set(dv.TUNE_SEEDS) & set(dv.HELD_OUT_SEEDS)
    assert not set(dv.FRESH_SEEDS) & (set(dv.TUNE_SEEDS) | set(dv.HELD_OUT_SEEDS))
    assert len(sc.FAMILIES) >= 20 and len(dv.HELD_OUT_SEEDS) >= 3
    assert {f.cause for f in sc.FAMILIES} == set(CAUSES) - {"undetermined"}
    archs = " ".join(f.architecture for f in sc.FAMILIES)
    for needed in ("MLP", "BatchNorm", "transformer", "least squares", "logistic"):
        assert needed in archs
    assert len({f.key for f in sc.FAMILIES}) == len(sc.FAMILIES)


def test_confusion_matrix_counts():
    def run(truth, predicted):
        return dv.ValidationRun(
            "f",
            "a",
            0,
            truth,
            predicted,
            truth == predicted,
            0.0,
            0,
            0,
            "",
            {},
            True,
            True,
            None,
            100,
            None,
            None,
            None,
            None,
            None,
            "",
        )

    m = dv.confusion_matrix(
        [
            run("oscillation", "oscillation"),
            run("oscillation", "progressing"),
            run("diverging", "diverging"),
        ]
    )
    i = {c: k for k, c in enumerate(CAUSES)}
    assert m[i["oscillation"]][i["oscillation"]] == 1 and m[i["oscillation"]][i["progressing"]] == 1
    assert sum(map(sum, m)) == 3


@pytest.mark.parametrize(
    "key", ["ill-conditioned/least-squares", "saddle/deep-linear", "healthy/least-squares"]
)
def test_cases_on_a_tuning_seed_are_judged_by_continuing_training(key):
    family = next(f for f in sc.FAMILIES if f.key == key)
    run = dv.run_case(family, dv.TUNE_SEEDS[0])
    assert run.correct, run.summary
    if family.cause == "progressing":
        assert run.fixed is None and run.top_action == {}
    else:
        assert run.remedy < run.unchanged  # the ground truth's remedy really helps
        assert run.fixed and not run.harmful
    study = dv.summarize([run], (dv.TUNE_SEEDS[0],), 0.0)
    assert not study.held_out
    json.dumps(study.to_dict())


def test_continue_training_restores_the_stalled_state():
    family = next(f for f in sc.FAMILIES if f.key == "momentum/mlp")
    stall = family.build(0)
    before = [p.detach().clone() for p in stall.model.parameters()]
    a = dv.continue_training(stall)
    b = dv.continue_training(stall)
    assert a == b
    assert all((p == q).all() for p, q in zip(before, stall.model.parameters()))
