"""Side-by-side benchmark of lossdoctor's curvature engine against PyHessian 0.1,
hessian-eigenthings 1.0.0a5 and curvlinops 3.0.1 (PyPI: curvlinops-for-pytorch).

Every library runs in its own subprocess (this script re-invoked with ``--library NAME``) on the
same trained model (weights saved once and loaded by every process) and the same data, and is
measured on:

* top-1 and top-5 eigenvalues: time and Hessian-vector products (matvecs), once at the
  library's typical settings and once at the cheapest of its settings that reaches a relative
  error <= 1e-6 against a float64 reference (the competitors' settings are found with the
  reference in hand, an advantage lossdoctor does not get: it runs at its default tol=1e-6);
* a 99-matvec trace estimate, its standard error and its distance from a reference trace;
* one HVP's time over one full-data gradient's time (medians of interleaved repeats);
* peak memory (peak RSS of the subprocess) and the RSS right after model and data were loaded.

The references (computed once and cached next to the weights): the top eigenvalues from
lossdoctor's Lanczos on a float64 copy of the model at tol=1e-12 (their residuals
||Hv - lambda v|| are recomputed independently and reported), and the trace from float64
Hutch++ with many more matvecs (with its standard error).

    python benchmarks/curvature.py                       # everything, ~20 min on 2 cores
    python benchmarks/curvature.py --quick --libraries lossdoctor,curvlinops
    python benchmarks/curvature.py --json results.json   # also save every number

``make bench`` creates ``.bench-venv`` with the competitors and runs this script there.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.metadata
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

LIBRARIES = (
    "lossdoctor",
    "lossdoctor-nocache",
    "lossdoctor-lowmem",
    "pyhessian",
    "pyhessian-1batch",
    "hessian-eigenthings",
    "curvlinops",
)
TARGET = 1e-6  # relative eigenvalue accuracy the floors are stated at
TRACE_MATVECS = 99
PACKAGES = {
    "lossdoctor": "lossdoctor",
    "lossdoctor-nocache": "lossdoctor",
    "lossdoctor-lowmem": "lossdoctor",
    "pyhessian": "PyHessian",
    "pyhessian-1batch": "PyHessian",
    "hessian-eigenthings": "hessian-eigenthings",
    "curvlinops": "curvlinops-for-pytorch",
}


# ---------------------------------------------------------------------------------------------
# The case: model, data, training
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """What is benchmarked. ``model`` is ``"cnn1d"`` (lossdoctor.zoo.mnist1d.CNN1d, ~94k
    parameters, ReLU) or ``"mlp"`` (a tiny MLP used by the smoke test)."""

    model: str = "cnn1d"
    hidden: int = 140
    num_train: int = 4000
    batch_size: int = 1000
    epochs: int = 5
    train_batch: int = 100
    lr: float = 2e-3
    seed: int = 0
    data_seed: int = 42

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


TINY = Case(model="mlp", hidden=6, num_train=120, batch_size=50, epochs=3, train_batch=20, lr=1e-2)


def build_model(case: Case) -> nn.Module:
    from lossdoctor.zoo.mnist1d import MLP, CNN1d

    if case.model == "cnn1d":
        return CNN1d(hidden=case.hidden)
    if case.model == "mlp":
        return MLP(hidden=case.hidden, depth=1)
    raise ValueError(f"unknown model {case.model!r}: use 'cnn1d' or 'mlp'.")


def load_data(
    case: Case, dtype: torch.dtype = torch.float32
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The training set as a list of ``(inputs, targets)`` batches of ``case.batch_size``."""
    from lossdoctor.zoo.mnist1d import mnist1d_arrays

    x, y, _, _ = mnist1d_arrays(case.num_train, 1000, case.data_seed)
    xt, yt = torch.from_numpy(x).to(dtype), torch.from_numpy(y)
    return [
        (xt[i : i + case.batch_size], yt[i : i + case.batch_size])
        for i in range(0, len(xt), case.batch_size)
    ]


def train(case: Case, path: Path) -> dict[str, float]:
    """Train with Adam for ``case.epochs`` epochs and save the state_dict to ``path``."""
    torch.manual_seed(case.seed)
    model = build_model(case)
    data = load_data(case)
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    opt = torch.optim.Adam(model.parameters(), lr=case.lr)
    gen = torch.Generator().manual_seed(case.seed)
    for _ in range(case.epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), case.train_batch):
            idx = perm[i : i + case.train_batch]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        out = model(x)
        stats = {
            "train_loss": float(F.cross_entropy(out, y)),
            "train_accuracy": float((out.argmax(1) == y).float().mean()),
        }
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(stats))
    return stats


def load_model(case: Case, weights: Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    model = build_model(case)
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.to(dtype).eval()


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Measurement helpers
# ---------------------------------------------------------------------------------------------


def _proc_status_mb(field: str) -> float | None:
    """A ``kB`` field of /proc/self/status in MB (Linux), None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Current resident set size (Linux /proc; falls back to the peak elsewhere)."""
    current = _proc_status_mb("VmRSS")
    return peak_rss_mb() if current is None else current


def peak_rss_mb() -> float:
    """This process's peak resident set size. On Linux, VmHWM: getrusage's ru_maxrss also counts
    the parent's RSS at the fork (it survives exec), which would charge a child for its parent."""
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def rel_errors(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-eigenvalue relative error, both sorted by decreasing value."""
    values = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    ref = np.sort(np.asarray(reference, dtype=np.float64))[::-1][: len(values)]
    if len(values) < len(ref):
        return np.full(len(ref), np.inf)
    return np.abs(values[: len(ref)] - ref) / np.abs(ref)


def full_gradient(model: nn.Module, data: list, params: list[torch.Tensor]) -> torch.Tensor:
    """The plain-PyTorch gradient of the mean loss over all batches: the common yardstick that
    every library's HVP time is divided by."""
    total = [torch.zeros_like(p) for p in params]
    count = 0
    for x, y in data:
        loss = F.cross_entropy(model(x), y) * len(y)
        for t, g in zip(total, torch.autograd.grad(loss, params), strict=True):
            t.add_(g)
        count += len(y)
    return torch.cat([t.reshape(-1) for t in total]) / count


class Counter:
    """Counts operator products (columns) through a wrapped function."""

    def __init__(self) -> None:
        self.count = 0

    def wrap(
        self, fn: Callable[..., Any], columns: Callable[..., int] = lambda *a, **k: 1
    ) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += columns(*args, **kwargs)
            return fn(*args, **kwargs)

        return counted


def split_like(vector: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [
        piece.reshape(p.shape)
        for piece, p in zip(torch.split(vector, [p.numel() for p in params]), params, strict=True)
    ]


def flat(tensors: Any) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


# ---------------------------------------------------------------------------------------------
# One adapter per library: the same questions, asked the way each library is meant to be used
# ---------------------------------------------------------------------------------------------


class Runner:
    """``setup`` builds the operator; ``hvp`` is one full-data product; ``top_k`` returns the k
    largest eigenvalues (descending) and the matvecs used; ``trace99`` returns
    ``(estimate, standard error or None, matvecs, method)``."""

    name = ""
    block_support = False

    def __init__(self, model: nn.Module, data: list, budget: int) -> None:
        self.model, self.data, self.budget = model, data, budget
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.n = sum(p.numel() for p in self.params)
        self.counter = Counter()

    def setup(self) -> None:
        raise NotImplementedError

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def block_hvp(self, V: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def typical(self, k: int) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def accurate_settings(
        self, k: int, reference: np.ndarray
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Settings to try, loosest first, until one reaches TARGET."""
        raise NotImplementedError

    def top_k(self, k: int, **settings: Any) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def trace99(self) -> tuple[float, float | None, int, str]:
        raise NotImplementedError

    def counted(self, fn: Callable[[], Any]) -> tuple[Any, int]:
        before = self.counter.count
        out = fn()
        return out, self.counter.count - before


class LossDoctor(Runner):
    name = "lossdoctor"
    block_support = True

    def setup(self) -> None:
        import lossdoctor as ld

        self.ld = ld
        self.H = ld.hessian(self.model, F.cross_entropy, self.data)

    def hvp(self, v):
        return self.H @ v

    def block_hvp(self, V):
        return self.H @ V

    def typical(self, k):
        return "eigenpairs default (tol=1e-6)", {}

    def accurate_settings(self, k, reference):
        # The default already asks for 1e-6; tighter tols are only tried if it falls short.
        yield "tol=1e-7", {"tol": 1e-7}
        yield "tol=1e-8", {"tol": 1e-8}

    def top_k(self, k, **settings):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            r = self.ld.eigenpairs(
                self.H,
                k=k,
                which="largest",
                seed=0,
                max_matvecs=max(self.budget, 40 * k),
                **settings,
            )
        return np.sort(r.eigenvalues)[::-1], int(r.matvecs)

    def trace99(self):
        r = self.ld.trace(self.H, matvecs=TRACE_MATVECS, method="hutch++", seed=0)
        return r.estimate, r.standard_error, int(r.matvecs), "hutch++"


class LossDoctorNoCache(LossDoctor):
    """lossdoctor with ``cache=False``: every product recomputes each batch's forward pass and
    gradient graph (the default, ``cache="auto"``, keeps them when they fit in memory, as they do
    here, so each product after the first is one second backward)."""

    name = "lossdoctor-nocache"

    def setup(self) -> None:
        import lossdoctor as ld

        self.ld = ld
        self.H = ld.hessian(self.model, F.cross_entropy, self.data, cache=False)


class LossDoctorLowMemory(LossDoctor):
    """lossdoctor set for memory: ``cache=False``, ``micro_batch_size=250`` and ``max_block=4``, so one product
    holds the double-backward graph of 250 samples, not of a 1,000-sample batch, and nothing is
    kept between products."""

    name = "lossdoctor-lowmem"

    def setup(self) -> None:
        import lossdoctor as ld

        self.ld = ld
        self.H = ld.hessian(
            self.model, F.cross_entropy, self.data, cache=False, micro_batch_size=250, max_block=4
        )


class PyHessian(Runner):
    """PyHessian 0.1 with a dataloader (a list of batches): each HVP recomputes the forward pass
    and the gradient graph batch by batch."""

    name = "pyhessian"

    def setup(self):
        from pyhessian import hessian

        self.h = hessian(self.model, nn.CrossEntropyLoss(), dataloader=self.data, cuda=False)
        self.h.dataloader_hv_product = self.counter.wrap(self.h.dataloader_hv_product)

    def hvp(self, v):
        return flat(self.h.dataloader_hv_product(split_like(v, self.h.params))[1])

    def typical(self, k):
        return "power iteration maxIter=100 tol=1e-3", {"maxIter": 100, "tol": 1e-3}

    def accurate_settings(self, k, reference):
        cap = max(20, self.budget // k)
        for tol in (1e-6, 1e-7, 1e-8):
            yield f"power iteration maxIter={cap} tol={tol:g}", {"maxIter": cap, "tol": tol}

    def top_k(self, k, **settings):
        torch.manual_seed(0)  # PyHessian draws its start vectors from the global RNG
        values, matvecs = self.counted(lambda: self.h.eigenvalues(top_n=k, **settings)[0])
        return np.sort(np.asarray(values))[::-1], matvecs

    def trace99(self):
        torch.manual_seed(0)
        # tol=0 disables PyHessian's early stop, so exactly TRACE_MATVECS probes are used.
        samples, matvecs = self.counted(lambda: self.h.trace(maxIter=TRACE_MATVECS, tol=0.0))
        s = np.asarray(samples, dtype=np.float64)
        return float(s.mean()), float(s.std(ddof=1) / math.sqrt(len(s))), matvecs, "hutchinson"


class PyHessianOneBatch(PyHessian):
    """PyHessian 0.1 given all samples as one batch: it keeps the gradient's graph from the
    constructor and each HVP is a single second backward pass (more memory, fewer passes)."""

    name = "pyhessian-1batch"

    def setup(self):
        import importlib

        # the package re-exports the class under the submodule's name: fetch the module itself
        ph = importlib.import_module("pyhessian.hessian")

        x = torch.cat([b[0] for b in self.data])
        y = torch.cat([b[1] for b in self.data])
        if not getattr(ph, "_bench_counted", False):
            ph.hessian_vector_product = self.counter.wrap(ph.hessian_vector_product)
            ph._bench_counted = True
        self.ph = ph
        self.h = ph.hessian(self.model, nn.CrossEntropyLoss(), data=(x, y), cuda=False)

    def hvp(self, v):
        return flat(
            self.ph.hessian_vector_product(
                self.h.gradsH, self.h.params, split_like(v, self.h.params)
            )
        )


class HessianEigenthings(Runner):
    """hessian-eigenthings 1.0.0a5: HessianOperator (reverse-over-reverse, averaged over
    batches) with its in-house Lanczos (one run of ``max_iter`` steps, no restarts)."""

    name = "hessian-eigenthings"

    def setup(self):
        import hessian_eigenthings as het

        self.het = het
        self.op = het.HessianOperator(self.model, self.data, het.supervised_loss(F.cross_entropy))
        self.op.matvec = self.counter.wrap(self.op.matvec)
        self.search_matvecs = 0

    def hvp(self, v):
        return self.op.matvec(v)

    def typical(self, k):
        return f"lanczos default (max_iter=2k={2 * k}, tol=1e-4)", {}

    def accurate_settings(self, k, reference):
        # Its accuracy knob is the number of Lanczos steps (tol only sets the converged flag).
        # Find the fewest steps that reach TARGET from the tridiagonal of one long run with the
        # same start vector (not timed; its matvecs are reported as search_matvecs), then time
        # a single public lanczos() call with that max_iter.
        longest = min(self.n - 1, max(self.budget, 2 * k))
        gen = torch.Generator(device="cpu").manual_seed(0)
        v0 = torch.randn(self.op.size, dtype=self.op.dtype, generator=gen)
        td, used = self.counted(
            lambda: self.het.lanczos_tridiagonal(self.op, v0, longest, reorthogonalize=True)
        )
        self.search_matvecs += used
        a = td.alphas.double().numpy()
        b = td.betas.double().numpy()
        steps = len(a)
        for m in range(max(k, 2), len(a) + 1):
            T = np.diag(a[:m]) + np.diag(b[: m - 1], 1) + np.diag(b[: m - 1], -1)
            top = np.linalg.eigvalsh(T)[::-1][:k]
            if np.max(rel_errors(top, reference)) <= TARGET:
                steps = m
                break
        yield (
            f"lanczos max_iter={steps} reorthogonalize=True",
            {"max_iter": steps, "reorthogonalize": True},
        )

    def top_k(self, k, **settings):
        r, matvecs = self.counted(
            lambda: self.het.lanczos(self.op, k=k, which="LA", seed=0, **settings)
        )
        return np.sort(r.eigenvalues.double().numpy())[::-1], matvecs

    def trace99(self):
        r, matvecs = self.counted(
            lambda: self.het.trace(self.op, num_matvecs=TRACE_MATVECS, method="hutch++", seed=0)
        )
        return r.estimate, r.stderr, matvecs, "hutch++"


class Curvlinops(Runner):
    """curvlinops 3.0.1: HessianLinearOperator (forward-over-reverse HVPs with torch.func,
    vmapped over the columns of a matrix) with scipy's ARPACK ``eigsh``."""

    name = "curvlinops"
    block_support = True

    def setup(self):
        from curvlinops import HessianLinearOperator

        self.H = HessianLinearOperator(self.model, nn.CrossEntropyLoss(), self.params, self.data)
        self.H._matmat = self.counter.wrap(self.H._matmat, lambda M: int(M[0].shape[-1]))
        self.scipy_op = self.H.to_scipy()

    def hvp(self, v):
        return self.H @ v

    def block_hvp(self, V):
        return self.H @ V

    def typical(self, k):
        return "eigsh default (tol=0: machine precision)", {"tol": 0}

    def accurate_settings(self, k, reference):
        for tol in (1e-3, 1e-4, 1e-5, 1e-6):
            yield f"eigsh tol={tol:g}", {"tol": tol}

    def top_k(self, k, **settings):
        from scipy.sparse.linalg import eigsh

        v0 = np.random.default_rng(0).standard_normal(self.n)
        vals, matvecs = self.counted(
            lambda: eigsh(
                self.scipy_op, k=k, which="LA", v0=v0, return_eigenvectors=False, **settings
            )
        )
        return np.sort(vals)[::-1], matvecs

    def trace99(self):
        from curvlinops import hutchpp_trace

        torch.manual_seed(0)  # curvlinops draws its probes from the global RNG
        est, matvecs = self.counted(lambda: hutchpp_trace(self.H, TRACE_MATVECS))
        return float(est), None, matvecs, "hutch++"


RUNNERS: dict[str, type[Runner]] = {
    r.name: r
    for r in (
        LossDoctor,
        LossDoctorNoCache,
        LossDoctorLowMemory,
        PyHessian,
        PyHessianOneBatch,
        HessianEigenthings,
        Curvlinops,
    )
}


# ---------------------------------------------------------------------------------------------
# The child: every measurement for one library
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    repeats: int = 7  # HVP / gradient pairs (medians are reported)
    block: int = 16  # vectors per block product, where a library has one
    budget: int = 600  # matvecs one accurate eigen attempt may use
    ladder_budget: int = 1500  # matvecs all accurate attempts for one k may use together
    eigen_repeats: int = 3  # timed runs of the setting that reached 1e-6 (the fastest is reported)
    batch_repeats: int = (
        30  # one-batch gradient / HVP pairs (the ratio of their minima is reported)
    )


QUICK = Options(
    repeats=3, block=8, budget=200, ladder_budget=400, eigen_repeats=2, batch_repeats=15
)


def measure_hvp_ratio(runner: Runner, opts: Options) -> dict[str, Any]:
    """Interleaved repeats of a plain full-data gradient and one library HVP (so a stall of the
    machine hits both alike), after one untimed warm-up of each."""
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(runner.n, generator=gen)
    full_gradient(runner.model, runner.data, runner.params)
    runner.hvp(v)
    grads, hvps = [], []
    for _ in range(opts.repeats):
        grads.append(timed(full_gradient, runner.model, runner.data, runner.params)[0])
        hvps.append(timed(runner.hvp, v)[0])
    out = {
        "gradient_s": grads,
        "hvp_s": hvps,
        "gradient_median_s": statistics.median(grads),
        "hvp_median_s": statistics.median(hvps),
        "hvp_over_gradient": statistics.median(hvps) / statistics.median(grads),
        "hvp_over_gradient_min": min(hvps) / min(grads),
    }
    if runner.block_support:
        V = torch.randn(runner.n, opts.block, generator=gen)
        runner.block_hvp(V)
        blocks = [
            timed(runner.block_hvp, V)[0] / opts.block for _ in range(max(2, opts.repeats // 2))
        ]
        out["block_size"] = opts.block
        out["block_hvp_per_vector_s"] = blocks
        out["block_hvp_over_gradient"] = statistics.median(blocks) / out["gradient_median_s"]
    return out


def measure_batch_hvp_ratio(
    name: str, model: nn.Module, data: list, opts: Options
) -> dict[str, Any]:
    """HVP / gradient on one batch, from the fastest of many interleaved repeats.

    A full-data product takes tenths of a second, long enough that most runs on a shared VM
    catch a stall (a busy loop here loses about half its wall time to them), so full-data
    medians swing 0.5x-20x. One batch takes tens of milliseconds: among many repeats some run
    undisturbed, and the ratio of the two minima is the cost ratio itself. The library's
    operator is built on that one batch the way it is built on the whole data.
    """
    batch = data[:1]
    runner = RUNNERS[name](model, batch, opts.budget)
    runner.setup()
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(runner.n, generator=gen)
    full_gradient(model, batch, runner.params)
    runner.hvp(v)
    grads, hvps = [], []
    for _ in range(opts.batch_repeats):
        grads.append(timed(full_gradient, model, batch, runner.params)[0])
        hvps.append(timed(runner.hvp, v)[0])
    return {
        "batch_size": len(batch[0][1]),
        "gradient_s": grads,
        "hvp_s": hvps,
        "gradient_min_s": min(grads),
        "hvp_min_s": min(hvps),
        "hvp_over_gradient": min(hvps) / min(grads),
    }


def eigen_attempt(
    runner: Runner, k: int, label: str, settings: dict[str, Any], reference: np.ndarray
) -> dict[str, Any]:
    seconds, (values, matvecs) = timed(runner.top_k, k, **settings)
    errs = rel_errors(values, reference)
    return {
        "setting": label,
        "settings": dict(settings),
        "seconds": seconds,
        "matvecs": matvecs,
        "eigenvalues": [float(x) for x in values],
        "rel_errors": [float(e) for e in errs],
        "max_rel_error": float(np.max(errs)),
        "reached_target": bool(np.max(errs) <= TARGET),
    }


def eigen_block(runner: Runner, k: int, reference: np.ndarray, opts: Options) -> dict[str, Any]:
    label, settings = runner.typical(k)
    typical = eigen_attempt(runner, k, label, settings, reference)
    attempts = [typical]
    if not typical["reached_target"] or runner.name != "lossdoctor":
        spent = 0
        for label, settings in runner.accurate_settings(k, reference):
            attempt = eigen_attempt(runner, k, label, settings, reference)
            attempts.append(attempt)
            spent += attempt["matvecs"]
            if attempt["reached_target"] or spent >= opts.ladder_budget:
                break
    reached = [a for a in attempts if a["reached_target"]]
    best = min(reached, key=lambda a: a["seconds"]) if reached else None
    if best is not None:
        # A shared VM stalls for whole tenths of a second at random: time the winning setting
        # again and keep the fastest run (the least disturbed one); every run is kept.
        runs = [best["seconds"]]
        for _ in range(opts.eigen_repeats - 1):
            runs.append(
                eigen_attempt(runner, k, best["setting"], best["settings"], reference)["seconds"]
            )
        best = dict(
            best, seconds=min(runs), seconds_runs=runs, seconds_median=statistics.median(runs)
        )
    return {"typical": typical, "attempts": attempts, "at_target": best}


def run_library(
    name: str,
    case: Case,
    weights: Path,
    reference: dict[str, Any],
    opts: Options,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """All measurements for one library, in this process."""
    result: dict[str, Any] = {"library": name, "peak_rss_after_mb": {}}
    try:
        result["version"] = importlib.metadata.version(PACKAGES[name])
    except importlib.metadata.PackageNotFoundError:
        result["version"] = None
    result["torch_threads"] = torch.get_num_threads()
    result["rss_before_load_mb"] = rss_mb()
    model = load_model(case, weights)
    data = load_data(case)
    result["rss_after_load_mb"] = rss_mb()
    result["peak_rss_after_mb"]["load"] = peak_rss_mb()
    runner = RUNNERS[name](model, data, opts.budget)
    ref_values = np.asarray(reference["eigenvalues"], dtype=np.float64)

    def step(label: str, fn: Callable[[], Any]) -> Any:
        log(f"[{name}] {label} ...")
        out = fn()
        result["peak_rss_after_mb"][label] = peak_rss_mb()
        return out

    result["setup_s"] = step("setup", lambda: timed(runner.setup)[0])
    result["hvp"] = step("hvp_ratio", lambda: measure_hvp_ratio(runner, opts))
    result["hvp_batch"] = step(
        "hvp_batch_ratio", lambda: measure_batch_hvp_ratio(name, model, data, opts)
    )
    for k in (1, 5):
        result[f"top{k}"] = step(
            f"top{k}", lambda k=k: eigen_block(runner, k, ref_values[:k], opts)
        )
    if hasattr(runner, "search_matvecs"):
        result["search_matvecs"] = runner.search_matvecs

    def trace() -> dict[str, Any]:
        seconds, (est, se, matvecs, method) = timed(runner.trace99)
        ref = reference["trace"]
        dist = abs(est - ref["estimate"])
        z = dist / math.hypot(se, ref["standard_error"]) if se is not None else None
        return {
            "seconds": seconds,
            "estimate": est,
            "standard_error": se,
            "matvecs": matvecs,
            "method": method,
            "distance": dist,
            "rel_distance": dist / abs(ref["estimate"]),
            "z": z,
        }

    result["trace"] = step("trace", trace)
    result["peak_rss_mb"] = peak_rss_mb()
    result["rss_increase_mb"] = result["peak_rss_mb"] - result["rss_after_load_mb"]
    return result


# ---------------------------------------------------------------------------------------------
# The parent: case, reference, one subprocess per library, tables
# ---------------------------------------------------------------------------------------------


def default_workdir() -> Path:
    from lossdoctor.zoo.mnist1d import cache_dir

    return cache_dir() / "bench-curvature"


def prepare_weights(case: Case, workdir: Path, log: Callable[[str], None]) -> Path:
    path = workdir / f"weights-{case.key()}.pt"
    if not path.is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        log(f"training {case.model} for {case.epochs} epochs ...")
        stats = train(case, path)
        log(f"trained: loss {stats['train_loss']:.4f}, accuracy {stats['train_accuracy']:.3f}")
    return path


def compute_reference(
    case: Case, weights: Path, k: int, trace_matvecs: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """float64 references with lossdoctor's engine: top-k eigenvalues at tol=1e-12 (residuals
    recomputed from scratch) and a Hutch++ trace with ``trace_matvecs`` products."""
    import lossdoctor as ld

    model = load_model(case, weights, torch.float64)
    data = load_data(case, torch.float64)
    H = ld.hessian(model, F.cross_entropy, data)
    log(f"reference: top-{k} eigenpairs in float64 at tol=1e-12 ...")
    t0 = time.perf_counter()
    eig = ld.eigenpairs(H, k=k, which="largest", tol=1e-12, seed=12345, max_matvecs=3000)
    vecs = eig.eigenvectors.to(torch.float64)
    residuals = (H @ vecs - vecs * torch.as_tensor(eig.eigenvalues)).norm(dim=0).numpy()
    # |lambda - theta| <= min(r, r^2 / gap) for a symmetric matrix (Kato-Temple); relative here.
    values = np.asarray(eig.eigenvalues, dtype=np.float64)
    gaps = np.array([np.min(np.abs(np.delete(values, i) - values[i])) for i in range(len(values))])
    bounds = np.minimum(residuals, residuals**2 / gaps) / np.abs(values)
    t1 = time.perf_counter()
    log(f"reference: Hutch++ trace with {trace_matvecs} float64 matvecs ...")
    tr = ld.trace(H, matvecs=trace_matvecs, method="hutch++", seed=777)
    t2 = time.perf_counter()
    return {
        "eigenvalues": [float(x) for x in eig.eigenvalues],
        "eigen_converged": [bool(c) for c in eig.converged],
        "eigen_error_bounds": [float(x) for x in eig.error_bounds],
        "eigen_residual_norms_recomputed": [float(x) for x in residuals],
        "eigen_rel_error_bounds_recomputed": [float(x) for x in bounds],
        "eigen_matvecs": int(eig.matvecs),
        "eigen_seconds": t1 - t0,
        "trace": {
            "estimate": tr.estimate,
            "standard_error": tr.standard_error,
            "matvecs": int(tr.matvecs),
            "method": "hutch++ (float64)",
            "seconds": t2 - t1,
        },
        "how": "lossdoctor engine on a float64 copy of the model and data: eigenpairs "
        "tol=1e-12 (seed 12345), trace Hutch++ (seed 777)",
    }


def load_reference(
    case: Case, weights: Path, workdir: Path, trace_matvecs: int, log: Callable[[str], None]
) -> dict[str, Any]:
    key = f"{file_digest(weights)}-{trace_matvecs}"
    path = workdir / f"reference-{case.key()}-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    # One more than the 5 benchmarked, so the 5th eigenvalue's gap (for its error bound) is known.
    ref = compute_reference(case, weights, 6, trace_matvecs, log)
    path.write_text(json.dumps(ref, indent=1))
    return ref


def saved_result_path(name: str, case: Case, args: argparse.Namespace, workdir: Path) -> Path:
    return workdir / f"result-{case.key()}-{name}-{'quick' if args.quick else 'full'}.json"


def run_child(
    name: str,
    python: str,
    args: argparse.Namespace,
    workdir: Path,
    log: Callable[[str], None],
    case: Case,
) -> dict[str, Any]:
    """One library in its own process. Its numbers are saved in ``workdir`` as soon as it ends,
    so an interrupted benchmark keeps them and ``--reuse`` picks them up."""
    saved = saved_result_path(name, case, args, workdir)
    if args.reuse and saved.is_file():
        log(f"--- {name}: reusing {saved}")
        return json.loads(saved.read_text())
    result = _run_child(name, python, args, workdir, log)
    if "error" not in result:
        tmp = saved.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, default=float))
        os.replace(tmp, saved)
    return result


def _run_child(
    name: str, python: str, args: argparse.Namespace, workdir: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.json"
        cmd = [
            python,
            os.path.abspath(__file__),
            "--library",
            name,
            "--json",
            str(out),
            "--workdir",
            str(workdir),
            "--case",
            args.case,
            "--reference-trace-matvecs",
            str(args.reference_trace_matvecs),
        ]
        if args.quick:
            cmd.append("--quick")
        log(f"--- {name}: {' '.join(cmd[1:3])} {name}")
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, timeout=args.timeout, stdout=subprocess.PIPE, stderr=None, text=True
            )
        except subprocess.TimeoutExpired:
            return {"library": name, "error": f"timed out after {args.timeout} s"}
        wall = time.perf_counter() - start
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stdout or "").strip().splitlines()[-3:]
            return {"library": name, "error": f"exit code {proc.returncode}: {' | '.join(tail)}"}
        result = json.loads(out.read_text())
        result["process_wall_s"] = wall
        return result


def fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def fmt_e(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(
        h.rjust(w) if i else h.ljust(w)
        for i, (h, w) in enumerate(zip(headers, widths, strict=True))
    )
    out = [line, "-" * len(line)]
    for r in rows:
        out.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(out)


def stall_share(seconds: float = 3.0) -> float:
    """Share of wall time a busy Python loop on this machine loses to stalls of over 5 ms (a
    shared VM's host preempting it): the noise every timing in the table carries."""
    start = last = time.perf_counter()
    lost = 0.0
    while last - start < seconds:
        now = time.perf_counter()
        if now - last > 0.005:
            lost += now - last
        last = now
    return lost / (last - start)


def at_target(res: dict[str, Any], k: int) -> dict[str, Any] | None:
    return res.get(f"top{k}", {}).get("at_target")


def hvp_ratio(result: dict[str, Any]) -> float:
    """HVP / gradient: the one-batch ratio of minima where measured (stall-proof), else the
    full-data median (results saved before the one-batch measurement existed)."""
    if "hvp_batch" in result:
        return result["hvp_batch"]["hvp_over_gradient"]
    return result["hvp"]["hvp_over_gradient"]


def summary_ratios(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The ratios issue 2 states its floors in."""
    ok = {r["library"]: r for r in results if "error" not in r}
    ours = ok.get("lossdoctor")
    ratios: dict[str, Any] = {}
    if ours is None:
        return ratios
    theirs = {n: r for n, r in ok.items() if not n.startswith("lossdoctor")}
    ours5 = at_target(ours, 5)
    times = {n: at_target(r, 5)["seconds"] for n, r in theirs.items() if at_target(r, 5)}
    if ours5 and times:
        fastest = min(times, key=times.get)
        ratios["top5_time_vs_fastest"] = {
            "ours_s": ours5["seconds"],
            "fastest": fastest,
            "fastest_s": times[fastest],
            "ratio": ours5["seconds"] / times[fastest],
            "floor": 0.5,
        }
        with_setup = {
            n: at_target(r, 5)["seconds"] + r["setup_s"]
            for n, r in theirs.items()
            if at_target(r, 5)
        }
        fastest_ws = min(with_setup, key=with_setup.get)
        ratios["top5_time_with_setup_vs_fastest"] = {
            "ours_s": ours5["seconds"] + ours["setup_s"],
            "fastest": fastest_ws,
            "fastest_s": with_setup[fastest_ws],
            "ratio": (ours5["seconds"] + ours["setup_s"]) / with_setup[fastest_ws],
            "floor": 0.5,
        }
    ratios["hvp_over_gradient"] = {
        "ours": hvp_ratio(ours),
        "ours_full_data_median": ours["hvp"]["hvp_over_gradient"],
        "theirs": {n: hvp_ratio(r) for n, r in theirs.items()},
        "floor": 2.5,
    }
    if "lossdoctor-nocache" in ok:
        ratios["hvp_over_gradient_nocache"] = {
            "ours": hvp_ratio(ok["lossdoctor-nocache"]),
            "floor": 2.5,
        }
    if theirs:
        ratios["peak_rss_vs_theirs"] = {
            "ours_mb": ours["peak_rss_mb"],
            "ours_increase_mb": ours["rss_increase_mb"],
            "theirs_mb": {n: r["peak_rss_mb"] for n, r in theirs.items()},
            "theirs_increase_mb": {n: r["rss_increase_mb"] for n, r in theirs.items()},
            "lowest_competitor_increase_mb": min(r["rss_increase_mb"] for r in theirs.values()),
        }
        lean = ok.get("lossdoctor-lowmem")
        if lean is not None:
            lean5 = at_target(lean, 5)
            plain, setup = (
                ratios.get("top5_time_vs_fastest"),
                ratios.get("top5_time_with_setup_vs_fastest"),
            )
            ratios["lowmem"] = {
                "increase_mb": lean["rss_increase_mb"],
                "hvp_over_gradient": hvp_ratio(lean),
                "top5_s": lean5["seconds"] if lean5 else None,
                "top5_ratio": lean5["seconds"] / plain["fastest_s"] if (lean5 and plain) else None,
                "top5_with_setup_ratio": (lean5["seconds"] + lean["setup_s"]) / setup["fastest_s"]
                if (lean5 and setup)
                else None,
            }
    return ratios


def report(results: list[dict[str, Any]], reference: dict[str, Any], meta: dict[str, Any]) -> str:
    ok = [r for r in results if "error" not in r]
    bound = max(reference["eigen_rel_error_bounds_recomputed"][:5])
    parts = [
        f"Case: {meta['case_text']}",
        f"Reference: {reference['how']}",
        "  top-5 eigenvalues: "
        + ", ".join(f"{x:.8g}" for x in reference["eigenvalues"][:5])
        + f"  (relative error <= {bound:.1e} from recomputed residuals and gaps)",
        f"  trace: {reference['trace']['estimate']:.6g} +/- {reference['trace']['standard_error']:.2g} "
        f"(Hutch++, {reference['trace']['matvecs']} float64 matvecs)",
        "",
    ]

    rows = []
    for r in ok:
        t5 = at_target(r, 5)
        rows.append(
            [
                r["library"],
                fmt_s(r["setup_s"]),
                fmt_s(r["top1"]["typical"]["seconds"]),
                fmt_s(r["top5"]["typical"]["seconds"]),
                fmt_e(r["top5"]["typical"]["max_rel_error"]),
                fmt_s(t5["seconds"]) if t5 else "not reached",
                str(t5["matvecs"]) if t5 else "-",
                fmt_e(t5["max_rel_error"]) if t5 else "-",
                fmt_s(r["trace"]["seconds"]),
                f"{hvp_ratio(r):.2f}" + ("" if "hvp_batch" in r else "*"),
                f"{r['peak_rss_mb']:.0f}",
                f"{r['rss_increase_mb']:.0f}",
            ]
        )
    parts.append(
        "Summary (times in seconds, memory in MB; 'typ' = the library's typical settings, "
        "'@1e-6' = cheapest setting reaching relative error <= 1e-6, fastest of its "
        f"{meta['options']['eigen_repeats']} timed runs; HVP/grad on one batch, "
        "fastest of many interleaved repeats)"
    )
    parts.append(
        table(
            [
                "library",
                "setup",
                "top1 typ",
                "top5 typ",
                "err typ",
                "top5 @1e-6",
                "matvecs",
                "err",
                "trace99",
                "HVP/grad",
                "peak RSS",
                "+RSS",
            ],
            rows,
        )
    )
    if any("hvp_batch" not in r for r in ok):
        parts.append(
            "* full-data median (a result saved by an older version of this script, reused)"
        )
    for r in results:
        if "error" in r:
            parts.append(f"{r['library']}: FAILED ({r['error']})")

    rows = []
    for r in ok:
        for k in (1, 5):
            best = at_target(r, k)
            for a in r[f"top{k}"]["attempts"]:
                mark = "typical" if a is r[f"top{k}"]["attempts"][0] else ""
                if (
                    best is not None
                    and a["setting"] == best["setting"]
                    and a["seconds"] == best["seconds"]
                ):
                    mark = (mark + " @1e-6").strip()
                rows.append(
                    [
                        r["library"],
                        f"top-{k}",
                        a["setting"],
                        fmt_s(a["seconds"]),
                        str(a["matvecs"]),
                        fmt_e(a["max_rel_error"]),
                        mark,
                    ]
                )
    parts += [
        "",
        "Eigenvalue runs (every setting tried)",
        table(["library", "k", "setting", "s", "matvecs", "max rel err", ""], rows),
    ]

    rows = []
    for r in ok:
        h, t, b = r["hvp"], r["trace"], r.get("hvp_batch")
        rows.append(
            [
                r["library"],
                f"{1e3 * b['gradient_min_s']:.1f}" if b else "-",
                f"{1e3 * b['hvp_min_s']:.1f}" if b else "-",
                f"{b['hvp_over_gradient']:.2f}" if b else "-",
                f"{1e3 * h['gradient_median_s']:.0f}",
                f"{1e3 * h['hvp_median_s']:.0f}",
                f"{h['hvp_over_gradient']:.2f}",
                f"{h['block_hvp_over_gradient']:.2f}" if "block_hvp_over_gradient" in h else "-",
                t["method"],
                fmt_s(t["seconds"]),
                str(t["matvecs"]),
                f"{t['estimate']:.5g}"
                + (f" +/- {t['standard_error']:.2g}" if t["standard_error"] else ""),
                f"{100 * t['rel_distance']:.2f}%",
                f"{t['z']:.1f}" if t["z"] is not None else "-",
                f"{r['rss_after_load_mb']:.0f}",
            ]
        )
    parts += [
        "",
        "HVP cost, trace and memory (grad = plain PyTorch gradient; 1-batch: minima of many "
        "interleaved repeats on one batch; full: medians over all the data, stall-prone)",
        table(
            [
                "library",
                "1-batch grad ms",
                "HVP ms",
                "HVP/grad",
                "full grad ms",
                "HVP ms",
                "HVP/grad",
                "block/grad",
                "trace",
                "s",
                "matvecs",
                "estimate",
                "|est-ref|",
                "z",
                "RSS loaded",
            ],
            rows,
        ),
    ]

    phases = ["setup", "hvp_ratio", "top1", "top5", "trace"]
    rows = [
        [r["library"]]
        + [
            f"+{r['peak_rss_after_mb'][ph] - r['rss_after_load_mb']:.0f}"
            if ph in r["peak_rss_after_mb"]
            else "-"
            for ph in phases
        ]
        for r in ok
    ]
    parts += [
        "",
        "Peak RSS increase over the loaded model and data, MB, after each phase (the phases run "
        "in this order in one process, so each column includes the ones before it)",
        table(["library", "setup", "HVP", "top-1", "top-5", "trace99"], rows),
    ]

    ratios = meta.get("ratios", {})
    parts += ["", "Issue 2 floors"]
    if "top5_time_vs_fastest" in ratios:
        t = ratios["top5_time_vs_fastest"]
        parts.append(
            f"  top-5 @1e-6 time, ours / fastest competitor ({t['fastest']}): "
            f"{t['ours_s']:.2f} / {t['fastest_s']:.2f} = {t['ratio']:.2f}  (floor <= 0.5: "
            f"{'met' if t['ratio'] <= 0.5 else 'NOT met'})"
        )
        t = ratios["top5_time_with_setup_vs_fastest"]
        parts.append(
            f"  same, setup included ({t['fastest']}): {t['ours_s']:.2f} / {t['fastest_s']:.2f} "
            f"= {t['ratio']:.2f}"
        )
    else:
        parts.append("  top-5 time ratio: not available (a library missing or no run reached 1e-6)")
    if "hvp_over_gradient" in ratios:
        hr = ratios["hvp_over_gradient"]
        h = hr["ours"]
        theirs = ", ".join(f"{n} {v:.2f}" for n, v in hr["theirs"].items())
        parts.append(
            f"  HVP / gradient, ours: {h:.2f} (full-data median {hr['ours_full_data_median']:.2f}); "
            f"theirs: {theirs}  (floor <= 2.5: {'met' if h <= 2.5 else 'NOT met'})"
        )
    if "hvp_over_gradient_nocache" in ratios:
        h = ratios["hvp_over_gradient_nocache"]["ours"]
        parts.append(
            f"  HVP / gradient, ours with cache=False: {h:.2f}  "
            f"(floor <= 2.5: {'met' if h <= 2.5 else 'NOT met'})"
        )
    if "peak_rss_vs_theirs" in ratios:
        m = ratios["peak_rss_vs_theirs"]
        theirs = ", ".join(
            f"{n} {v:.0f} (+{m['theirs_increase_mb'][n]:.0f})" for n, v in m["theirs_mb"].items()
        )
        lowest = m["lowest_competitor_increase_mb"]
        verdict = (
            "met"
            if m["ours_increase_mb"] <= lowest
            else f"NOT met: {m['ours_increase_mb'] - lowest:.0f} MB above the lowest"
        )
        parts.append(
            f"  peak RSS MB (+ increase over loaded), ours {m['ours_mb']:.0f} "
            f"(+{m['ours_increase_mb']:.0f}) vs {theirs}  (floor: no higher than theirs: {verdict})"
        )
    if "lowmem" in ratios:
        m, lean = ratios["peak_rss_vs_theirs"], ratios["lowmem"]
        lowest = m["lowest_competitor_increase_mb"]
        t5 = (
            "-"
            if lean["top5_ratio"] is None
            else f"{lean['top5_ratio']:.2f} ({lean['top5_with_setup_ratio']:.2f} setup included)"
        )
        parts.append(
            f"  lossdoctor-lowmem (cache=False, micro_batch_size=250, max_block=4): peak +{lean['increase_mb']:.0f} MB "
            f"vs lowest competitor +{lowest:.0f} ({'met' if lean['increase_mb'] <= lowest else 'NOT met'}); "
            f"top-5 time ratio {t5}; HVP/grad {lean['hvp_over_gradient']:.2f}"
        )
    parts.append(f"\n{meta['machine']}")
    return "\n".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--libraries",
        default=",".join(LIBRARIES),
        help=f"comma-separated subset of {', '.join(LIBRARIES)}",
    )
    p.add_argument(
        "--quick", action="store_true", help="fewer repeats and smaller budgets (smoke test)"
    )
    p.add_argument("--json", metavar="FILE", help="write every number to FILE")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where weights and references are cached (default: ~/.cache/lossdoctor/bench-curvature)",
    )
    p.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter for the library subprocesses (needs the competitors installed)",
    )
    p.add_argument(
        "--case",
        choices=("cnn1d", "tiny"),
        default="cnn1d",
        help="cnn1d: the issue's case; tiny: a 10-second MLP for smoke tests",
    )
    p.add_argument(
        "--reference-trace-matvecs",
        type=int,
        default=600,
        help="float64 Hutch++ matvecs of the reference trace (default 600)",
    )
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed per library")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="reuse each library's saved numbers from an earlier run with the same case",
    )
    p.add_argument("--library", choices=LIBRARIES, help=argparse.SUPPRESS)  # child mode
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    case = TINY if args.case == "tiny" else Case()
    opts = QUICK if args.quick else Options()
    workdir = args.workdir or default_workdir()
    workdir.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.library:  # child: one library, numbers to --json
        weights = workdir / f"weights-{case.key()}.pt"
        reference = load_reference(case, weights, workdir, args.reference_trace_matvecs, log)
        try:
            result = run_library(args.library, case, weights, reference, opts, log)
        except ImportError as err:
            result = {
                "library": args.library,
                "error": f"not installed ({err}); run `make bench` or pip install '.[bench]'",
            }
        except Exception as err:  # reported as a failed row, the other libraries still run
            traceback.print_exc()
            result = {"library": args.library, "error": f"{type(err).__name__}: {err}"}
        Path(args.json).write_text(json.dumps(result))
        return 0

    names = [n.strip() for n in args.libraries.split(",") if n.strip()]
    unknown = sorted(set(names) - set(LIBRARIES))
    if unknown:
        raise SystemExit(f"unknown libraries {unknown}; choose from {', '.join(LIBRARIES)}")
    start = time.perf_counter()
    stalled_before = stall_share()
    weights = prepare_weights(case, workdir, log)
    reference = load_reference(case, weights, workdir, args.reference_trace_matvecs, log)
    results = [run_child(name, args.python, args, workdir, log, case) for name in names]
    n = num_params(load_model(case, weights))
    stats_path = weights.with_suffix(".json")
    trained = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    meta = {
        "case": asdict(case),
        "num_params": n,
        "trained": trained,
        "options": asdict(opts),
        "case_text": f"{case.model} ({n:,} parameters) on {case.num_train} MNIST-1D samples in "
        f"batches of {case.batch_size}, Adam {case.epochs} epochs "
        f"(train loss {trained.get('train_loss', float('nan')):.3f})",
        "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads, python {sys.version.split()[0]}, "
        f"total wall {time.perf_counter() - start:.0f} s; a busy loop lost "
        f"{100 * stalled_before:.0f}% (before) and {100 * stall_share():.0f}% (after) of its "
        "wall time to stalls > 5 ms (host contention: times carry that noise)",
        "weights": str(weights),
    }
    meta["ratios"] = summary_ratios(results)
    print(report(results, reference, meta))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"meta": meta, "reference": reference, "results": results}, indent=1, default=float
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
