"""The validation study's machinery: the confusion matrix, and the doctor on a few of its runs
(the full study runs in the tour)."""

from __future__ import annotations

import pytest

from lossdoctor.analysis.stall import CAUSES
from lossdoctor.studies import doctor_validation as dv


def test_confusion_matrix_counts():
    def run(truth, predicted):
        return dv.ValidationRun("s", "a", 0, truth, predicted, truth == predicted, 0.0, None, None, 0.0, None,
                                None, None, "")

    m = dv.confusion_matrix([run("oscillation", "oscillation"), run("oscillation", "progressing"),
                             run("diverging", "diverging")])
    i = {c: k for k, c in enumerate(CAUSES)}
    assert m[i["oscillation"]][i["oscillation"]] == 1 and m[i["oscillation"]][i["progressing"]] == 1
    assert sum(map(sum, m)) == 3


def test_seed_sets_are_disjoint_and_enough_runs():
    assert not set(dv.TUNE_SEEDS) & set(dv.VALIDATION_SEEDS)
    assert len(dv.SCENARIOS) * len(dv.VALIDATION_SEEDS) >= 30
    assert {truth for _, _, truth, _ in dv.SCENARIOS} == set(CAUSES)


@pytest.mark.parametrize("index", [0, 3, 5, 6, 12, 13])
def test_cheap_runs_on_a_validation_seed(index):
    scenario, arch, truth, factory = dv.SCENARIOS[index]
    result = dv.run_one(scenario, arch, truth, factory, dv.VALIDATION_SEEDS[0])
    assert result.predicted == truth, result.summary
