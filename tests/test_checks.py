"""The shared argument checks: what they accept, what they refuse, and what they say."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lossdoctor._checks import (
    check_bool,
    check_choice,
    check_device,
    check_dtype,
    check_float,
    check_floats,
    check_int,
    check_ints,
    check_module,
    check_optimizer,
    check_progress,
    check_seed,
    check_series,
    describe,
)


def test_int_accepts_whole_numbers_and_refuses_bools_floats_strings():
    assert check_int(3, "k") == 3 and type(check_int(np.int64(3), "k")) is int
    assert check_int(None, "k", optional=True) is None
    for bad, cls in [
        (True, TypeError),
        (2.0, TypeError),
        ("3", TypeError),
        (None, TypeError),
        (0, ValueError),
        (float("nan"), TypeError),
        ([3], TypeError),
    ]:
        with pytest.raises(cls, match=r"^k must be an integer >= 1, got "):
            check_int(bad, "k", minimum=1)
    with pytest.raises(TypeError, match="Pass the whole number 2, not a float"):
        check_int(2.0, "k")
    with pytest.raises(ValueError, match=r"steps must be an integer >= 2 and <= 5, got 6\."):
        check_int(6, "steps", minimum=2, maximum=5)


def test_float_bounds_and_finiteness():
    assert check_float(1, "lr", above=0) == 1.0 and check_float(torch.tensor(0.5), "lr") == 0.5
    assert check_float(np.float32(0.25), "lr") == 0.25
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"lr must be a finite number > 0, got"):
            check_float(bad, "lr", above=0)
    for bad in ("0.1", True, None, [0.1], 1j, torch.ones(2)):
        with pytest.raises(TypeError, match=r"lr must be a finite number"):
            check_float(bad, "lr", above=0)
    assert check_float(float("inf"), "x", finite=False) == math.inf
    with pytest.raises(ValueError, match=r"momentum must be a finite number >= 0 and < 1, got 1"):
        check_float(1.0, "momentum", minimum=0, below=1)


def test_sequences_are_never_split_strings():
    assert check_ints((16, 64), "batch_sizes", minimum=1) == [16, 64]
    assert check_ints(np.array([1, 2]), "b") == [1, 2] and check_ints(range(2), "b") == [0, 1]
    with pytest.raises(
        TypeError,
        match=r"batch_sizes must be a list of integers >= 1 such as \[16, 64\], "
        r"got '16' \(a string\)",
    ):
        check_ints("16", "batch_sizes", minimum=1)
    with pytest.raises(TypeError, match="got 16"):
        check_ints(16, "batch_sizes")
    with pytest.raises(ValueError, match=r"batch_sizes\[1\] must be an integer >= 1, got 0"):
        check_ints([16, 0], "batch_sizes", minimum=1)
    with pytest.raises(TypeError, match=r"batch_sizes\[0\] must be an integer"):
        check_ints([True, 2], "batch_sizes")
    with pytest.raises(ValueError, match=r"must not repeat values.*\[16\] more than once"):
        check_ints([16, 16], "batch_sizes", distinct=True)
    with pytest.raises(ValueError, match="non-empty"):
        check_ints([], "batch_sizes")
    with pytest.raises(TypeError, match="one-shot iterator"):
        check_ints(iter([1, 2]), "batch_sizes")
    assert check_floats([0, 0.5], "alphas", min_length=2) == [0.0, 0.5]
    with pytest.raises(ValueError, match=r"alphas\[1\] must be a finite number, got nan"):
        check_floats([0, float("nan")], "alphas")
    with pytest.raises(ValueError, match="at least 2"):
        check_floats([0.5], "alphas", min_length=2)


def test_flags_choices_seeds():
    assert check_bool(np.bool_(True), "apply") is True
    for bad in (1, "yes", "False", None):
        with pytest.raises(TypeError, match="apply must be True or False"):
            check_bool(bad, "apply")
    assert check_choice("eval", "mode", ("eval", "train")) == "eval"
    with pytest.raises(ValueError, match="mode must be one of 'eval', 'train', got 'bogus'"):
        check_choice("bogus", "mode", ("eval", "train"))
    with pytest.raises(TypeError, match="mode must be one of"):
        check_choice(["eval"], "mode", ("eval", "train"))
    assert check_seed(np.int64(7)) == 7
    for bad, cls in [(-1, ValueError), (2**63, ValueError), (1.5, TypeError), (True, TypeError)]:
        with pytest.raises(cls, match="seed must be an integer >= 0"):
            check_seed(bad)


def test_objects():
    model = torch.nn.Linear(2, 1)
    assert check_module(model) is model
    with pytest.raises(
        TypeError, match="model must be a torch.nn.Module, got .*a function.*Wrap a plain function"
    ):
        check_module(lambda x: x)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert check_optimizer(opt) is opt
    with pytest.raises(TypeError, match="Build one first"):
        check_optimizer(torch.optim.SGD)
    assert check_progress(None) is None
    with pytest.raises(
        TypeError, match=r"progress must be callable or None.*progress\(done, total\)"
    ):
        check_progress(3)
    assert check_dtype(torch.float64) is torch.float64 and check_dtype(None) is None
    with pytest.raises(ValueError, match="dtype must be a floating torch.dtype"):
        check_dtype(torch.int64)
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        check_dtype("float64")
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be a device name"):
        check_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no GPU"):
            check_device("cuda")


def test_series():
    assert check_series([1, 2.5, float("nan")], "losses").tolist()[:2] == [1.0, 2.5]
    assert check_series(torch.arange(3), "losses").dtype == np.float64
    for bad, cls in [
        ("1,2", TypeError),
        ([[1, 2]], TypeError),
        (np.zeros((3, 2)), ValueError),
        ([True, False], TypeError),
        (np.array([True]), TypeError),
        ({"a": 1}, TypeError),
    ]:
        with pytest.raises(cls, match="losses"):
            check_series(bad, "losses")
    with pytest.raises(ValueError, match="losses has 1 values; at least 4"):
        check_series([1.0], "losses", min_length=4)
    with pytest.raises(ValueError, match=r"losses\[1\] is nan"):
        check_series([1.0, float("nan")], "losses", finite=True)


def test_describe_is_short_and_typed():
    assert describe("x" * 200).endswith("... (a string)") and len(describe("x" * 200)) < 80
    assert describe(torch.zeros(2, 3)) == "a torch.float32 tensor of shape (2, 3)"
    assert describe(torch.nn.ReLU()) == "a ReLU module"
