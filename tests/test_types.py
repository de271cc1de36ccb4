"""The typed contracts match what the code accepts and returns at run time."""

from typing import get_args

import numpy as np
import torch
from torch import nn

import lossdoctor as ld
from lossdoctor.analysis.critical import KINDS
from lossdoctor.curvature.eigen import WHICH
from lossdoctor.curvature.operator import MODES, REDUCTIONS
from lossdoctor.curvature.trace import METHODS
from lossdoctor.types import Cause, Kind, Mode, Reduction, SymmetricOperator, TraceMethod, Which


def test_literals_list_exactly_the_words_the_checks_accept():
    assert set(get_args(Which)) == set(WHICH)
    assert set(get_args(Mode)) == set(MODES)
    assert set(get_args(Reduction)) == set(REDUCTIONS)
    assert set(get_args(TraceMethod)) == set(METHODS)
    assert set(get_args(Kind)) == set(KINDS)
    assert set(get_args(Cause)) == set(ld.CAUSES)


def test_operators_satisfy_the_protocol_and_other_things_do_not():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    op = ld.hessian(model, nn.MSELoss(), [(x, y)])
    assert isinstance(op, SymmetricOperator) and isinstance(torch.eye(4), SymmetricOperator)
    assert not isinstance([1.0, 2.0], SymmetricOperator) and not isinstance(
        model, SymmetricOperator
    )
    # what the protocol promises is what eigenpairs uses: the dense Hessian's eigenvalues come back
    dense = ld.dense_hessian(model, nn.MSELoss(), [(x, y)]).double()
    got = ld.eigenpairs(op, k=1, which="largest", progress=None).eigenvalues
    assert np.allclose(got, torch.linalg.eigvalsh(dense)[-1:].numpy(), rtol=1e-5)
