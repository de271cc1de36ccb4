"""Ctrl-C at random moments of every long call outside the curvature engine: the call returns a
partial result flagged ``interrupted`` whose finished part equals an uninterrupted run's, draws no
verdict from it, and leaves the model and the global RNG as they were. A call interrupted before
it finished anything may raise ``KeyboardInterrupt`` instead (there is nothing to return).

The moments are the loss function's calls (a Ctrl-C lands in the user's code, where these calls
spend their time), drawn at random from every call an uninterrupted run makes; a second test sends
real SIGINTs at random times, which also land in lossdoctor's own bookkeeping.
"""

from __future__ import annotations

import math
import os
import random
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lossdoctor as ld
from cases import ModelSnapshot

TRIALS = 6  # random moments per call


pytestmark = pytest.mark.usefixtures("one_thread")


class CountingLoss:
    """``loss_fn`` that counts its calls and raises KeyboardInterrupt on call number ``stop``."""

    def __init__(self, loss_fn: Callable, stop: int | None = None) -> None:
        self.loss_fn, self.stop, self.calls = loss_fn, stop, 0

    def __call__(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.stop:
            raise KeyboardInterrupt
        return self.loss_fn(outputs, targets)


def _classifier(seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # building the layers must not move the RNG under test
        model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return model


def _data() -> tuple[list, tuple]:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(16, 3, generator=g), torch.randint(0, 3, (16,), generator=g)
    xt, yt = torch.randn(8, 3, generator=g), torch.randint(0, 3, (8,), generator=g)
    return [(x[:8], y[:8]), (x[8:], y[8:])], (xt, yt)


def _rng() -> tuple:
    return torch.get_rng_state(), np.random.get_state()[1].copy(), __import__("random").getstate()


def _same_rng(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def _close(a: Any, b: Any) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-6, atol=1e-9, equal_nan=True))


@dataclass
class Case:
    """``run(objects, loss_fn, progress)`` on ``make()``'s fresh objects (model, other model,
    data, test data); ``check(partial, reference)`` asserts what a partial result must hold;
    the objects' models must come back unchanged. ``units``: progress steps before a partial
    result exists (a noise scale needs two pairs)."""

    name: str
    run: Callable[[tuple, Callable, Callable | None], Any]
    check: Callable[[Any, Any], None]
    make: Callable[[], tuple]
    units: int = 1


def _objects() -> tuple:
    data, test = _data()
    return _classifier(0), _classifier(1), data, test


def _saddle_objects() -> tuple:
    problem = ld.load_problem("lecture-saddle")
    return problem.model, None, problem.train_data, None


def _landscape(dims: int) -> Case:
    def run(o, loss, progress):
        return ld.landscape(o[0], loss, o[2], dims=dims, steps=4, test_data=o[3], progress=progress)

    def check(part, ref):
        done = part.points_done
        flat = np.asarray(part.train_loss, dtype=float).reshape(-1)
        want = np.asarray(ref.train_loss, dtype=float).reshape(-1)
        assert (
            0 < done < len(want)
            and _close(flat[:done], want[:done])
            and np.isnan(flat[done:]).all()
        )
        assert part.center_loss == ref.center_loss and "INTERRUPTED" in str(part)

    return Case(f"landscape-{dims}d", run, check, _objects)


def _interpolate() -> Case:
    def run(o, loss, progress):
        return ld.interpolate(
            o[0], o[1], loss, o[2], np.linspace(-0.5, 1.5, 9), test_data=o[3], progress=progress
        )

    def check(part, ref):
        done = part.points_done
        assert 0 < done < 9 and _close(part.train_loss[:done], ref.train_loss[:done])
        assert (
            _close(part.test_loss[:done], ref.test_loss[:done])
            and np.isnan(part.train_loss[done:]).all()
        )

    return Case("interpolate", run, check, _objects)


def _noise() -> Case:
    def run(o, loss, progress):
        return ld.gradient_noise_scale(
            o[0], loss, o[2], small_batch=2, big_batch=8, pairs=6, bootstrap=50, progress=progress
        )

    def check(part, ref):
        assert (
            2 <= part.pairs < 6
            and part.suggested_batch_size is None
            and "no batch size suggested" in str(part)
        )
        o = _objects()
        same = ld.gradient_noise_scale(
            o[0], F.cross_entropy, o[2], small_batch=2, big_batch=8, pairs=part.pairs, bootstrap=50
        )  # the first k pairs are the same draws
        assert part.b_simple == pytest.approx(same.b_simple, rel=1e-9)

    return Case("gradient_noise_scale", run, check, _objects, units=2)


def _timing() -> Case:
    def run(o, loss, progress):
        return ld.time_batch_sizes(
            o[0], loss, o[2], [1, 2, 4, 8], repeats=1, warmup=0, progress=progress
        )

    def check(part, ref):
        assert (
            0 < len(part.batch_sizes) < 4
            and part.batch_sizes == ref.batch_sizes[: len(part.batch_sizes)]
        )
        assert part.saturation_batch_size is None and "no saturation point" in str(part)

    return Case("time_batch_sizes", run, check, _objects)


def _lr_range() -> Case:
    def run(o, loss, progress):
        opt = torch.optim.SGD(o[0].parameters(), lr=0.1, momentum=0.9)
        result = ld.lr_range_test(
            o[0], loss, o[2], opt, start_lr=1e-3, end_lr=1.0, steps=10, progress=progress
        )
        assert not opt.state and opt.param_groups[0]["lr"] == 0.1  # the optimizer is as it was
        return result

    def check(part, ref):
        k = part.steps_run
        assert (
            0 < k < ref.steps_run
            and _close(part.losses, ref.losses[:k])
            and _close(part.lrs, ref.lrs[:k])
        )
        assert part.suggested_lr is None and "no lr suggested" in str(part)

    return Case("lr_range_test", run, check, _objects)


def _sweep() -> Case:
    def run(o, loss, progress):
        problem = ld.Problem(o[0], loss, o[2], o[3], name="tiny")
        return ld.batch_size_sweep(
            problem, [4, 8], seeds=[0, 1], updates=3, sharpness=(), progress=progress
        )

    def key(r):
        return (
            r.batch_size,
            r.seed,
            r.steps,
            r.curve["train_loss"],
            [m.train_loss for m in r.milestones],
        )

    def check(part, ref):
        assert 0 < len(part.runs) < 4 and "INTERRUPTED" in str(part)
        assert [key(r) for r in part.runs] == [key(r) for r in ref.runs[: len(part.runs)]]

    return Case("batch_size_sweep", run, check, _objects)


def _sharpness() -> Case:
    def run(o, loss, progress):
        return ld.sharpness(
            o[0],
            loss,
            o[2],
            method=["lambda_max", "epsilon"],
            epsilons=(1e-3, 5e-4),
            subspace_dim=None,
            max_iter=3,
            tol=1e-4,
            progress=progress,
        )

    def check(part, ref):
        assert part.interrupted and "INTERRUPTED" in str(part)
        if part.lambda_max is not None:
            assert part.lambda_max == pytest.approx(ref.lambda_max, rel=1e-6)
        assert [e.value for e in part.epsilon] == pytest.approx(
            [e.value for e in ref.epsilon[: len(part.epsilon)]]
        )
        assert len(part.epsilon) < len(ref.epsilon)

    return Case("sharpness", run, check, _objects)


def _escape() -> Case:
    def run(o, loss, progress):
        return ld.escape_saddle(o[0], loss, o[2], apply=True, progress=progress)

    def check(part, ref):
        assert (
            part.interrupted
            and not part.escaped
            and not part.applied
            and "no step taken" in part.message
        )

    return Case("escape_saddle", run, check, _saddle_objects)


def _compare() -> Case:
    def run(o, loss, progress):
        return ld.compare_saddle_escapes(o[0], loss, o[2], steps=6, progress=progress)

    def check(part, ref):
        assert part.interrupted and len(part.methods) <= len(ref.methods)
        for i, (got, want) in enumerate(zip(part.methods, ref.methods)):
            assert got.name == want.name
            if got.interrupted:  # only the method in progress, the last one, may be cut short
                assert i == len(part.methods) - 1 and _close(
                    got.losses, want.losses[: len(got.losses)]
                )
            else:
                assert _close(got.losses, want.losses)

    return Case("compare_saddle_escapes", run, check, _saddle_objects)


def _off_saddle_objects() -> tuple:
    problem = ld.load_problem("lecture-saddle", w1=0.3)
    return problem.model, None, problem.train_data, None


def _gd_path() -> Case:
    def run(o, loss, progress):
        return ld.gradient_descent_path(o[0], loss, o[2], steps=8, lr=0.1)

    def check(part, ref):
        assert part.interrupted and 0 < len(part.losses) < len(ref.losses)
        assert _close(part.losses, ref.losses[: len(part.losses)])

    return Case("gradient_descent_path", run, check, _off_saddle_objects)


CASES = [
    _landscape(1),
    _landscape(2),
    _interpolate(),
    _noise(),
    _timing(),
    _lr_range(),
    _sweep(),
    _sharpness(),
    _escape(),
    _compare(),
    _gd_path(),
]


def _base_loss(case: Case) -> Callable:
    if case.make in (_saddle_objects, _off_saddle_objects):
        return ld.load_problem("lecture-saddle").loss_fn
    return F.cross_entropy


def _models(objects: tuple) -> list[nn.Module]:
    return [m for m in objects[:2] if m is not None]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_ctrl_c_at_random_moments_returns_what_finished(case):
    base = _base_loss(case)
    counter = CountingLoss(base)
    steps: list[int] = []
    reference = case.run(case.make(), counter, lambda done, total: steps.append(counter.calls))
    total = counter.calls
    assert not getattr(reference, "interrupted", False)
    # when the first partial result existed (a point, a run; two pairs of a noise scale): a later
    # Ctrl-C may not lose it
    finished_after = steps[case.units - 1] if len(steps) >= case.units else total
    rng = random.Random(case.name)
    for stop in sorted(rng.sample(range(1, total + 1), min(TRIALS, total))):
        objects = case.make()
        snapshots = [ModelSnapshot.take(m) for m in _models(objects)]
        state = _rng()
        try:
            partial = case.run(objects, CountingLoss(base, stop=stop), None)
        except KeyboardInterrupt:
            assert stop <= finished_after, f"Ctrl-C at call {stop} of {total} lost finished work"
        else:
            case.check(partial, reference)
        for model, snap in zip(_models(objects), snapshots):
            snap.assert_same(model, f"{case.name}, Ctrl-C at call {stop}")
        assert _same_rng(state, _rng()), f"the global RNG moved (Ctrl-C at call {stop})"


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c.name in ("landscape-2d", "batch_size_sweep", "interpolate")],
    ids=lambda c: c.name,
)
def test_real_sigint_at_random_times(case):
    """SIGINT from a timer lands anywhere, lossdoctor's own code included; whatever happens, the
    global RNG is intact and a returned result is either complete or flagged."""
    base = _base_loss(case)
    import time

    start = time.perf_counter()
    reference = case.run(case.make(), CountingLoss(base), None)
    duration = time.perf_counter() - start
    rng = random.Random(1)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous_alarm = signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        for _ in range(4):
            state = _rng()
            result = None
            try:
                try:
                    signal.setitimer(signal.ITIMER_REAL, max(1e-4, rng.uniform(0.0, duration)))
                    result = case.run(case.make(), CountingLoss(base), None)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except KeyboardInterrupt:
                result = None
            if result is not None and getattr(result, "interrupted", False):
                case.check(result, reference)
            assert _same_rng(state, _rng())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_alarm)
        signal.signal(signal.SIGINT, previous_int)


def test_inside_propagating_a_ctrl_c_is_raised_not_returned():
    from lossdoctor import _interrupt

    model, _, data, _ = _objects()
    with _interrupt.propagating(), pytest.raises(KeyboardInterrupt):
        ld.landscape(model, CountingLoss(F.cross_entropy, stop=4), data, steps=4)
    assert math.isfinite(ld.landscape(model, F.cross_entropy, data, steps=3).center_loss)


def test_a_ctrl_c_that_leaves_autograd_off_is_undone_at_the_public_boundary():
    # A SIGINT landing inside torch.no_grad()'s own __enter__ (after it turned autograd off, before
    # the with-block's cleanup is armed) skips the restore; one random-time SIGINT in
    # batch_size_sweep left autograd off for 205 later tests. The public call puts it back.
    from lossdoctor.progress import with_progress

    @with_progress("leaky")
    def leaky(progress=None, interrupt=True):
        torch.set_grad_enabled(False)  # what a cut-short no_grad().__enter__ leaves behind
        if interrupt:
            raise KeyboardInterrupt
        return 1

    assert torch.is_grad_enabled()
    with pytest.raises(KeyboardInterrupt):
        leaky()
    assert torch.is_grad_enabled()
    assert leaky(interrupt=False) == 1 and torch.is_grad_enabled()
    with torch.no_grad():  # the caller's own mode is kept, not forced on
        leaky(interrupt=False)
        assert not torch.is_grad_enabled()


def test_a_ctrl_c_that_skips_a_thread_count_restore_is_undone_at_the_public_boundary():
    from lossdoctor.progress import with_progress

    @with_progress("leaky threads")
    def leaky(progress=None):
        torch.set_num_threads(1)  # what a one-thread block cut short before its restore leaves
        raise KeyboardInterrupt

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(KeyboardInterrupt):
            leaky()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
