"""Generated bad-input probes over every public function and CLI command.

Each public function is described once (:data:`SPECS`): the valid call it starts from (tiny
models, a few steps) and, per argument, the *kind* of value it takes. Each kind generates its
bad values (``0`` and ``-1`` for a count, ``nan`` and ``"0.1"`` for a step size, ``"16"`` for a
list of batch sizes, a shifted batch for data, ...) and the few odd-but-valid values a user may
pass (a ``TensorDataset``, a numpy integer). One probe = one call with one argument replaced.

A probe's outcome is one of

- ``clear``: a ``ValueError``/``TypeError`` raised by lossdoctor itself whose message names the
  argument (what the user must change);
- ``documented``: a valid-but-odd value accepted (and, where stated, giving the same answer);
- ``unclear``: any other exception, one raised from inside torch/numpy/the standard library, a
  message that does not name the argument, or a valid value refused;
- ``silent``: a bad value accepted without an error (a silently wrong result);
- ``changed``: the call left the model(s) or the global torch/numpy/Python RNG changed (this
  overrides the others).

CLI probes run ``lossdoctor ...`` in-process (click's runner) on a tiny user problem file:
``clear`` is exit status 2 with a message naming the option and no traceback; a traceback is
``unclear``; exit 0 is ``silent``.

``python tests/probes.py`` prints the table of outcomes per function (``--failures`` lists the
probes that are neither clear nor documented); ``tests/test_probes.py`` asserts each probe.
Only the public API and the CLI are used, so the same file measures any version of lossdoctor.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import sys
import tempfile
import textwrap
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import lossdoctor as ld

NAN, INF = float("nan"), float("inf")
PACKAGE_DIR = Path(ld.__file__).resolve().parent
DOCTOR = (
    "doctor"  # probes of the stall doctor (diagnose, Monitor, train_monitored, diagnose/train CLI)
)


# ---------------------------------------------------------------------------------------------
# the tiny problems every probe starts from


def _classifier(seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return model


class Env:
    """Fresh objects for one probe: a 3-4-3 tanh classifier on 12 + 6 samples, its batches,
    an SGD optimizer, a dense symmetric 6x6 matrix, and the lecture's saddle toy."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.X, self.Y = torch.randn(12, 3, generator=g), torch.randint(0, 3, (12,), generator=g)
        self.Xt, self.Yt = torch.randn(6, 3, generator=g), torch.randint(0, 3, (6,), generator=g)
        self.model = _classifier(0)
        self.other = _classifier(1)
        self.loss_fn = F.cross_entropy
        self.data = [(self.X[:6], self.Y[:6]), (self.X[6:], self.Y[6:])]
        self.test = (self.Xt, self.Yt)
        self.problem = ld.Problem(self.model, self.loss_fn, self.data, self.test, name="probe")
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        A = torch.randn(6, 6, generator=g, dtype=torch.float64)
        self.matrix = A + A.T
        self._saddle = None

    @property
    def saddle(self) -> ld.Problem:
        if self._saddle is None:
            self._saddle = ld.load_problem("lecture-saddle")
        return self._saddle

    def op(self) -> Any:
        return ld.hessian(self.model, self.loss_fn, self.data)


# ---------------------------------------------------------------------------------------------
# kinds of values: each yields (label, value-or-factory, expectation)


@dataclass(frozen=True)
class Bad:
    label: str
    value: Any  # the value, or a callable Env -> value when it needs the probe's objects
    expect: str = "error"  # "error" or "ok"
    names: tuple[str, ...] = ()  # words the message may name instead of the argument
    check: Callable[[Env, Any], bool] | None = None  # for "ok": is the result right?

    def make(self, env: Env) -> Any:
        return self.value(env) if isinstance(self.value, Factory) else self.value


class Factory:
    """Marks a value that is built from the probe's Env."""

    def __init__(self, fn: Callable[[Env], Any]) -> None:
        self.fn = fn

    def __call__(self, env: Env) -> Any:
        return self.fn(env)


def F_(fn: Callable[[Env], Any]) -> Factory:
    return Factory(fn)


def ints(
    minimum: int | None = None, maximum: int | None = None, optional: bool = False, ok: bool = True
) -> list[Bad]:
    lo = 0 if minimum is None else minimum
    out = [
        Bad("float", lo + 1.5),
        Bad("whole float", float(lo + 2)),
        Bad("string", str(lo + 2)),
        Bad("bool", True),
        Bad("nan", NAN),
        Bad("list", [lo + 2]),
    ]
    if ok:
        out.append(Bad("ok: numpy int", np.int64(lo + 2), "ok"))
    if minimum is not None:
        out += [Bad("below minimum", minimum - 1), Bad("negative", min(-1, minimum - 5))]
    if maximum is not None:
        out.append(Bad("above maximum", maximum + 1))
    if not optional:
        out.append(Bad("None", None))
    return out


def floats(
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
    optional: bool = False,
    inf_ok: bool = False,
) -> list[Bad]:
    low = above if above is not None else minimum
    good = (low if low is not None else 0.0) + 0.25
    out = [
        Bad("nan", NAN),
        Bad("string", str(good)),
        Bad("bool", True),
        Bad("list", [good]),
        Bad("complex", complex(good, 1.0)),
        Bad("ok: numpy float", np.float64(good), "ok"),
    ]
    if not inf_ok:
        out.append(Bad("inf", INF))
    if low is not None:
        out += [Bad("-inf", -INF), Bad("below range", low - 1.0)]
        if above is not None:
            out.append(Bad("at excluded bound", above))
    if maximum is not None or below is not None:
        out.append(Bad("above range", (maximum if maximum is not None else below) + 0.5))
        if below is not None:
            out.append(Bad("at excluded upper bound", below))
    if not optional:
        out.append(Bad("None", None))
    return out


def choice(*choices: str) -> list[Bad]:
    out = [
        Bad("unknown word", "bogus"),
        Bad("empty string", ""),
        Bad("int", 3),
        Bad("None", None),
        Bad("list", [choices[0]]),
        Bad("bool", True),
    ]
    if choices[0].upper() not in choices:
        out.append(Bad("upper case", choices[0].upper()))
    return out


def flag(optional: bool = False) -> list[Bad]:
    out = [
        Bad("string 'yes'", "yes"),
        Bad("string 'False'", "False"),
        Bad("int 1", 1),
        Bad("list", [True]),
        Bad("ok: numpy bool", np.bool_(False), "ok"),
    ]
    if not optional:
        out.append(Bad("None", None))
    return out


def seed() -> list[Bad]:
    return [
        Bad("negative", -1),
        Bad("float", 1.5),
        Bad("string", "0"),
        Bad("bool", True),
        Bad("None", None),
        Bad("huge", 2**64),
        Bad("ok: numpy int", np.int64(3), "ok"),
    ]


def progress_kind() -> list[Bad]:
    return [Bad("int", 3), Bad("string", "bar"), Bad("list", [print]), Bad("class", int)]


def int_list(minimum: int = 1, distinct: bool = False, optional: bool = False) -> list[Bad]:
    out = [
        Bad("string of digits", "16"),
        Bad("comma string", "2,4"),
        Bad("scalar", 4),
        Bad("zero inside", [2, 0]),
        Bad("negative inside", [2, -4]),
        Bad("float inside", [2, 2.5]),
        Bad("empty", []),
        Bad("bool inside", [True, 2]),
        Bad("dict", {"a": 2}),
        Bad("string inside", [2, "4"]),
        Bad("ok: tuple", (2, 4), "ok"),
        Bad("ok: numpy array", np.array([2, 4]), "ok"),
    ]
    if distinct:
        out.append(Bad("repeated", [2, 2]))
    if not optional:
        out.append(Bad("None", None))
    return out


def float_list(above: float | None = 0.0, min_length: int = 1) -> list[Bad]:
    return (
        [
            Bad("string", "0.1"),
            Bad("nan inside", [0.1, NAN]),
            Bad("inf inside", [0.1, INF]),
            Bad("empty", []),
            Bad("string inside", [0.1, "x"]),
            Bad("None", None),
            Bad("bool inside", [True, 0.1]),
        ]
        + ([Bad("non-positive inside", [0.1, -1.0])] if above is not None else [])
        + ([Bad("too short", [0.5])] if min_length > 1 else [])
    )


def _shifted(env: Env) -> Any:
    return [(env.X[:5], env.Y[:4]), (env.X[5:], env.Y[4:])]


def _frozen(env: Env) -> nn.Module:
    return env.other.requires_grad_(False)


def model_kind() -> list[Bad]:
    return [
        Bad("function", lambda x: x),
        Bad("None", None),
        Bad("string", "mlp"),
        Bad("int", 3),
        Bad("no parameters", nn.ReLU(), names=("parameter",)),
        Bad("frozen", F_(_frozen), names=("parameter", "requires_grad")),
        Bad("class", nn.Linear),
        Bad("tensor", torch.zeros(3)),
    ]


def _returns_float(out, y):
    return 1.0


def _non_scalar(out, y):
    return F.cross_entropy(out, y, reduction="none")


def _detached(out, y):
    return F.cross_entropy(out, y).detach()


def _via_item(out, y):
    return torch.tensor(F.cross_entropy(out, y).item())


def _raises_inside(out, y):
    return F.cross_entropy(out, y.float())


def loss_kind(evaluation_only: bool = False) -> list[Bad]:
    """Bad losses; where the function only evaluates (landscape, interpolate) a detached loss
    gives the right numbers, so it is documented as accepted there."""
    names = ("loss",)
    detached = "ok" if evaluation_only else "error"
    return [
        Bad("string", "cross_entropy", names=names),
        Bad("None", None, names=names),
        Bad("int", 3, names=names),
        Bad("reduction none", nn.CrossEntropyLoss(reduction="none"), names=names),
        Bad("returns float", _returns_float, names=names),
        Bad("non-scalar", _non_scalar, names=names),
        Bad("detached", _detached, detached, names=names),
        Bad("via .item()", _via_item, detached, names=names),
        Bad("class not instance", nn.CrossEntropyLoss, names=names),
        Bad("float targets inside", _raises_inside, names=names),
    ]


def _loader(env: Env, **kw: Any) -> DataLoader:
    return DataLoader(TensorDataset(env.X, env.Y), batch_size=6, **kw)


DATA_NAMES = ("data", "batch", "inputs", "targets", "sample", "dataset", "model", "loss")


def data_kind(optional: bool = False, pairs_only: bool = False) -> list[Bad]:
    n = DATA_NAMES
    out = [
        Bad("int", 3, names=n),
        Bad("string", "mnist", names=n),
        Bad("single tensor", F_(lambda e: e.X), names=n),
        Bad("generator", F_(lambda e: (b for b in e.data)), names=n),
        Bad("empty list", [], names=n),
        Bad("inputs and targets of different lengths", F_(_shifted), names=n),
        Bad("pair of different lengths", F_(lambda e: (e.X, e.Y[:-1])), names=n),
        Bad("a bare tensor among batches", F_(lambda e: [e.data[0], e.X]), names=n),
        Bad("targets a list", F_(lambda e: [(e.X, e.Y.tolist())]), names=n),
        Bad(
            "float targets for cross-entropy", F_(lambda e: (e.X, e.Y.float())), names=n + ("long",)
        ),
        Bad("class index out of range", F_(lambda e: (e.X, e.Y + 3)), names=n + ("class",)),
        Bad("multi-target", F_(lambda e: (e.X, torch.stack([e.Y, e.Y], 1))), names=n),
        Bad("NaN inputs", F_(lambda e: (torch.full_like(e.X, NAN), e.Y)), names=n + ("nan",)),
        Bad("wrong feature count", F_(lambda e: (torch.randn(12, 5), e.Y)), names=n),
        Bad(
            "float64 inputs for a float32 model",
            F_(lambda e: (e.X.double(), e.Y)),
            names=n + ("float64", "double"),
        ),
        Bad("meta device", F_(lambda e: (e.X.to("meta"), e.Y.to("meta"))), names=n),
        Bad(
            "empty DataLoader",
            F_(
                lambda e: DataLoader(
                    TensorDataset(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
                )
            ),
            names=n,
        ),
        Bad("ok: TensorDataset", F_(lambda e: TensorDataset(e.X, e.Y)), "ok"),
        Bad("ok: shuffling DataLoader", F_(lambda e: _loader(e, shuffle=True)), "ok"),
        Bad("ok: one pair", F_(lambda e: (e.X, e.Y)), "ok"),
    ]
    if not pairs_only:
        out.append(Bad("dict batches", F_(lambda e: [{"x": e.X, "y": e.Y}]), names=n))
    if not optional:
        out.append(Bad("None", None, names=n))
    return out


def op_kind() -> list[Bad]:
    names = ("op", "operator", "matrix", "symmetric", "square")
    return [
        Bad("nested list", [[1.0, 0.0], [0.0, 1.0]], names=names),
        Bad("string", "H", names=names),
        Bad("None", None, names=names),
        Bad("int", 3, names=names),
        Bad("non-square", torch.ones(3, 4, dtype=torch.float64), names=names),
        Bad(
            "non-symmetric",
            torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64),
            names=names,
        ),
        Bad("3-d tensor", torch.ones(2, 2, 2), names=names),
        Bad("integer matrix", torch.eye(3, dtype=torch.long), names=names),
        Bad(
            "NaN entries",
            torch.full((3, 3), NAN, dtype=torch.float64),
            names=names + ("nan", "finite"),
        ),
        Bad("a model", F_(lambda e: e.model), names=names),
    ]


def _frozen_parameter(model: nn.Module) -> torch.Tensor:
    p = next(iter(model.parameters()))
    p.requires_grad_(False)
    return p


def params_kind(
    model_of: Callable[[Env], nn.Module] = lambda e: e.model,
    ok_name: str = "2.weight",
    other: Callable[[Env], nn.Module] = lambda e: e.other,
) -> list[Bad]:
    """``params=``: a subset of the parameters (tensors, names or glob patterns, modules)."""
    names = ("params",)
    return [
        Bad("unknown name", "9.weight", names=names),
        Bad("glob matching nothing", "layer9.*", names=names),
        Bad("empty list", [], names=names),
        Bad("int", 3, names=names),
        Bad("list with an int", [ok_name, 3], names=names),
        Bad("tensor of no model", torch.zeros(3), names=names),
        Bad("another model's tensor", F_(lambda e: next(iter(other(e).parameters()))), names=names),
        Bad("another model's module", F_(other), names=names),
        Bad(
            "frozen tensor", F_(lambda e: _frozen_parameter(model_of(e))), names=names + ("frozen",)
        ),
        Bad("ok: a name", ok_name, "ok"),
        Bad("ok: a glob", "*", "ok"),
        Bad("ok: a tensor", F_(lambda e: next(iter(model_of(e).parameters()))), "ok"),
    ]


def optimizer_kind() -> list[Bad]:
    return [
        Bad("string", "adam"),
        Bad("None", None),
        Bad("class", torch.optim.SGD),
        Bad(
            "another model's",
            F_(lambda e: torch.optim.SGD(e.other.parameters(), lr=0.1)),
            names=("optimizer", "parameter"),
        ),
        Bad(
            "LBFGS",
            F_(lambda e: torch.optim.LBFGS(e.model.parameters())),
            names=("LBFGS", "optimizer"),
        ),
    ]


_ROOT: list[Path] = []


def use_folder(path: Path) -> None:
    """Put the probes' scratch files (problem files, checkpoints, plots) in ``path``."""
    _ROOT[:] = [Path(path)]


def _probe_dir() -> Path:
    root = _ROOT[0] if _ROOT else Path(tempfile.gettempdir()) / f"lossdoctor-probes-{os.getpid()}"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _existing_file() -> str:
    path = _probe_dir() / "a-file.txt"
    path.write_text("not a directory")
    return str(path)


def store_kind() -> list[Bad]:
    return [
        Bad("existing file", F_(lambda e: _existing_file()), names=("store", "a-file")),
        Bad("int", 3),
        Bad("list", ["dir"]),
        Bad("unwritable place", "/proc/lossdoctor-store", names=("store", "/proc")),
    ]


# ---------------------------------------------------------------------------------------------
# the public functions


@dataclass
class Spec:
    name: str
    call: Callable[..., Any]  # call(**kwargs) -> result
    base: Callable[[Env], dict[str, Any]]  # the valid call's arguments
    kinds: dict[str, list[Bad]]
    after: Callable[[Any], Any] | None = None  # use the result (e.g. one product of an operator)
    owner: str = "lossdoctor"
    watch: Callable[[Env], list[nn.Module] | None] = field(
        default=lambda env: [env.model, env.other]
    )


def _model_args(env: Env) -> dict[str, Any]:
    return {"model": env.model, "loss_fn": env.loss_fn, "data": env.data}


def _saddle_args(env: Env) -> dict[str, Any]:
    p = env.saddle
    return {"model": p.model, "loss_fn": p.loss_fn, "data": p.train_data}


def _first_product(op: Any) -> Any:
    return op @ torch.ones(op.num_params)


def _cache_kind() -> list[Bad]:
    return [
        Bad("negative", -1),
        Bad("float", 1.5),
        Bad("word", "lots"),
        Bad("upper AUTO", "AUTO"),
        Bad("None", None),
        Bad("list", [True]),
        Bad("ok: False", False, "ok"),
        Bad("ok: bytes", 10_000, "ok"),
    ]


MODEL_LOSS_DATA = {"model": model_kind(), "loss_fn": loss_kind(), "data": data_kind()}


def _mode() -> list[Bad]:
    return choice("eval", "train")


def _defaulted_mode() -> list[Bad]:
    """``mode`` where None is the default (eval, with a notice on BatchNorm/dropout models)."""
    return [b if b.label != "None" else Bad("ok: None (the default)", None, "ok") for b in _mode()]


def specs() -> list[Spec]:
    s: list[Spec] = []
    s.append(
        Spec(
            "hessian",
            ld.hessian,
            lambda e: _model_args(e),
            {
                **MODEL_LOSS_DATA,
                "mode": _defaulted_mode(),
                "max_block": ints(1),
                "micro_batch_size": ints(1, optional=True),
                "distributed": flag(optional=True),
                "cache": _cache_kind(),
                "params": params_kind()
                + [
                    Bad(
                        "ok: a module",
                        F_(lambda e: e.model[2]),
                        "ok",
                        check=lambda e, r: r.num_params == 15,
                    )
                ],
            },
            after=_first_product,
        )
    )
    s.append(
        Spec(
            "dense_hessian",
            ld.dense_hessian,
            lambda e: _model_args(e),
            {
                **MODEL_LOSS_DATA,
                "mode": _defaulted_mode(),
                "max_params": ints(1, ok=False) + [Bad("ok: numpy int", np.int64(100), "ok")],
                "dtype": [
                    Bad("int64", torch.int64),
                    Bad("string", "float64"),
                    Bad("numpy dtype", np.float64),
                    Bad("bool", torch.bool),
                    Bad("ok: float64", torch.float64, "ok"),
                ],
                "params": params_kind(),
            },
        )
    )
    s.append(
        Spec(
            "eigenpairs",
            ld.eigenpairs,
            lambda e: {"op": e.matrix, "k": 1, "tol": 1e-4},
            {
                "op": op_kind(),
                "k": ints(1)
                + [
                    Bad(
                        "ok: more than the dimension (the whole spectrum)",
                        7,
                        "ok",
                        check=lambda e, r: len(r.eigenvalues) == 6,
                    )
                ],
                "which": choice("largest", "smallest", "both"),
                "tol": floats(above=0.0),
                "seed": seed(),
                "max_matvecs": ints(1, optional=True),
                "ncv": ints(1, optional=True),
                "progress": progress_kind(),
            },
        )
    )
    s.append(
        Spec(
            "trace",
            ld.trace,
            lambda e: {"op": e.matrix, "matvecs": 6},
            {
                "op": op_kind(),
                "matvecs": ints(3),
                "method": choice("hutch++", "hutchinson"),
                "seed": seed(),
                "block": ints(1, optional=True),
                "progress": progress_kind(),
            },
        )
    )
    s.append(
        Spec(
            "spectral_density",
            ld.spectral_density,
            lambda e: {"op": e.matrix, "num_probes": 2, "lanczos_steps": 4, "grid_points": 16},
            {
                "op": op_kind(),
                "num_probes": ints(1),
                "lanczos_steps": ints(1),
                "grid_points": ints(2),
                "sigma": floats(above=0.0, optional=True),
                "zero_tol": floats(minimum=0.0, optional=True),
                "seed": seed(),
                "progress": progress_kind(),
            },
        )
    )
    s.append(
        Spec(
            "classify_critical_point",
            ld.classify_critical_point,
            lambda e: {
                **_model_args(e),
                "k": 1,
                "max_matvecs": 60,
                "num_probes": 2,
                "lanczos_steps": 8,
            },
            {
                **MODEL_LOSS_DATA,
                "grad_tol": floats(minimum=0.0, optional=True),
                "eig_tol": floats(minimum=0.0, optional=True),
                "k": ints(1),
                "dense": flag(optional=True),
                "dense_max_params": ints(0),
                "mode": _defaulted_mode(),
                "tol": floats(above=0.0),
                "seed": seed(),
                "num_probes": ints(1),
                "lanczos_steps": ints(1),
                "max_matvecs": ints(1, optional=True),
                "progress": progress_kind(),
                "params": params_kind(),
            },
        )
    )
    s.append(
        Spec(
            "escape_saddle",
            ld.escape_saddle,
            lambda e: _saddle_args(e),
            {
                "apply": flag(),
                "critical": [
                    Bad("string", "saddle"),
                    Bad("dict", {"kind": "saddle"}),
                    Bad("int", 1),
                ],
                "mode": _mode(),
                "progress": progress_kind(),
                "k": ints(1),
                "seed": seed(),
                "reduction": [b for b in choice("mean", "sum") if b.label != "None"]
                + [Bad("ok: sum (one sample: a sum is its mean)", "sum", "ok")],
                "params": params_kind(lambda e: e.saddle.model, "w1", lambda e: e.model),
            },
            watch=lambda e: [e.saddle.model],
        )
    )
    s.append(
        Spec(
            "compare_saddle_escapes",
            ld.compare_saddle_escapes,
            lambda e: {**_saddle_args(e), "steps": 3},
            {
                "steps": ints(1),
                "lr": floats(above=0.0, optional=True),
                "momentum": floats(minimum=0.0, below=1.0),
                "kick_radius": floats(above=0.0, optional=True),
                "kick_threshold": floats(above=0.0, optional=True),
                "kick_interval": ints(1),
                "escape_drop": floats(above=0.0, optional=True),
                "seed": seed(),
                "record_paths": flag(),
                "mode": _mode(),
                "progress": progress_kind(),
            },
            watch=lambda e: [e.saddle.model],
        )
    )
    s.append(
        Spec(
            "gradient_descent_path",
            ld.gradient_descent_path,
            lambda e: {**_saddle_args(e), "steps": 3, "lr": 0.1},
            {
                "steps": ints(1),
                "lr": floats(above=0.0),
                "momentum": floats(minimum=0.0, below=1.0),
                "mode": _mode(),
            },
            watch=lambda e: [e.saddle.model],
        )
    )
    s.append(
        Spec(
            "sharpness",
            ld.sharpness,
            lambda e: {**_model_args(e), "method": "lambda_max", "tol": 1e-2},
            {
                **MODEL_LOSS_DATA,
                "method": [b for b in choice("lambda_max", "trace", "epsilon") if b.label != "list"]
                + [
                    Bad("list with unknown", ["lambda_max", "x"]),
                    Bad("empty list", []),
                    Bad("ok: a list", ["lambda_max"], "ok"),
                ],
                "epsilons": float_list(),
                "subspace_dim": ints(1, optional=True),
                "full_space": flag(),
                "max_iter": ints(1),
                "tol": floats(above=0.0),
                "trace_matvecs": ints(3),
                "mode": _defaulted_mode(),
                "seed": seed(),
                "distributed": flag(optional=True),
                "progress": progress_kind(),
                "params": params_kind(),
            },
        )
    )
    s.append(
        Spec(
            "landscape",
            ld.landscape,
            lambda e: {**_model_args(e), "steps": 3},
            {
                **MODEL_LOSS_DATA,
                "loss_fn": loss_kind(evaluation_only=True),
                "dims": [
                    Bad("three", 3),
                    Bad("zero", 0),
                    Bad("string", "1"),
                    Bad("float", 1.0),
                    Bad("bool", True),
                    Bad("None", None),
                ],
                "normalization": choice("filter", "layer", "none"),
                "steps": ints(2),
                "span": floats(above=0.0),
                "test_data": data_kind(optional=True),
                "ignore_bias_bn": flag(),
                "seed": seed(),
                "directions": [
                    Bad("empty", []),
                    Bad("string", "random"),
                    Bad("wrong shapes", [[torch.zeros(2)]]),
                    Bad("int", 3),
                ],
                "progress": progress_kind(),
                "params": params_kind(),
            },
        )
    )
    s.append(
        Spec(
            "interpolate",
            ld.interpolate,
            lambda e: {
                "model_a": e.model,
                "model_b": e.other,
                "loss_fn": e.loss_fn,
                "data": e.data,
                "alphas": [0.0, 1.0],
            },
            {
                "model_a": model_kind()[:4] + model_kind()[6:],
                "model_b": model_kind()[:4]
                + model_kind()[6:]
                + [
                    Bad(
                        "other architecture",
                        nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)),
                        names=("model_b", "architecture"),
                    )
                ],
                "loss_fn": loss_kind(evaluation_only=True),
                "data": data_kind(),
                "alphas": [b for b in float_list(above=None, min_length=2) if b.label != "None"]
                + [Bad("ok: None (the default grid)", None, "ok")],
                "test_data": data_kind(optional=True),
                "progress": progress_kind(),
                "params": params_kind(),
            },
        )
    )
    s.append(
        Spec(
            "gradient_noise_scale",
            ld.gradient_noise_scale,
            lambda e: {
                "model": e.model,
                "loss_fn": e.loss_fn,
                "dataset": e.data,
                "small_batch": 2,
                "big_batch": 6,
                "pairs": 3,
                "bootstrap": 20,
            },
            {
                "model": model_kind(),
                "loss_fn": loss_kind(),
                "dataset": data_kind(),
                "small_batch": ints(1),
                "big_batch": ints(2, optional=True)
                + [Bad("not above small_batch", 2, names=("big_batch", "small_batch"))],
                "pairs": ints(2),
                "mode": _mode(),
                "seed": seed(),
                "bootstrap": ints(0),  # 0: Student's t alone
                "level": floats(above=0.0, below=1.0),
                "max_batch": ints(1, optional=True),
                "progress": progress_kind(),
                # the fixture's loss is a batch mean: "sum" contradicts it
                "reduction": [b for b in choice("mean", "sum") if b.label != "None"]
                + [Bad("sum given for a mean loss", "sum")],
            },
        )
    )
    s.append(Spec("observed_reduction", ld.observed_reduction, _model_args, MODEL_LOSS_DATA))
    s.append(
        Spec(
            "time_batch_sizes",
            ld.time_batch_sizes,
            lambda e: {
                "model": e.model,
                "loss_fn": e.loss_fn,
                "dataset": e.data,
                "batch_sizes": [1, 2],
                "repeats": 1,
                "warmup": 0,
            },
            {
                "model": model_kind(),
                "loss_fn": loss_kind(),
                "dataset": data_kind(),
                "batch_sizes": int_list(optional=True),
                "device": [Bad("word", "gpu"), Bad("int", 3), Bad("cuda:7", "cuda:7")],
                "repeats": ints(1),
                "warmup": ints(0),
                "lr": floats(above=0.0),
                "epoch_size": ints(1, optional=True),
                "progress": progress_kind(),
            },
        )
    )
    s.append(
        Spec(
            "batch_size_sweep",
            ld.batch_size_sweep,
            lambda e: {
                "problem": e.problem,
                "batch_sizes": [4],
                "seeds": [0],
                "updates": 2,
                "sharpness": (),
            },
            {
                "problem": [
                    Bad("string", "mnist1d-mlp"),
                    Bad("None", None),
                    Bad("tuple", F_(lambda e: (e.model, e.loss_fn, e.data))),
                    Bad("model", F_(lambda e: e.model)),
                ],
                "batch_sizes": int_list(distinct=True),
                "epochs": floats(above=0.0, optional=True),
                "updates": ints(1, optional=True),
                "stop_at_loss": [
                    Bad("zero", 0.0),
                    Bad("negative", -1.0),
                    Bad("nan", NAN),
                    Bad("string", "0.1"),
                    Bad("list with nan", [0.1, NAN]),
                    Bad("bool", True),
                    Bad("ok: one number", 5.0, "ok"),
                ],
                "max_epochs": ints(1),
                "lr": floats(above=0.0),
                "lr_rule": choice("constant", "linear"),
                "base_batch": ints(1),
                "optimizer": choice("adam", "sgd"),
                "momentum": floats(minimum=0.0, below=1.0),
                "seeds": [
                    Bad("string", "0"),
                    Bad("negative inside", [0, -1]),
                    Bad("float inside", [0.5]),
                    Bad("repeated", [0, 0]),
                    Bad("empty", []),
                    Bad("scalar", 0),
                    Bad("None", None),
                ],
                "store": store_kind(),
                "sharpness": [
                    Bad("unknown", ["sharp"]),
                    Bad("int", 3),
                    Bad("None", None),
                    Bad("word", "bogus"),
                    Bad("ok: one name", "lambda_max", "ok"),
                ],
                "epsilons": float_list(),
                "epsilon_iters": ints(1),
                "tol": floats(above=0.0),
                "check_every": ints(1),
                "sharpness_batch": ints(1),
                "keep_states": flag(),
                "progress": progress_kind(),
            },
            watch=lambda e: [e.model, e.other],
        )
    )
    s.append(
        Spec(
            "lr_range_test",
            ld.lr_range_test,
            lambda e: {**_model_args(e), "optimizer": e.optimizer, "steps": 5},
            {
                **MODEL_LOSS_DATA,
                "optimizer": optimizer_kind(),
                "start_lr": floats(above=0.0),
                "end_lr": floats(above=0.0)
                + [Bad("below start_lr", 1e-9, names=("end_lr", "start_lr"))],
                "steps": ints(5),
                "smoothing": floats(minimum=0.0, below=1.0),
                "diverge_factor": floats(above=1.0),
                "suggestion": choice("steepest", "minimum"),
                "progress": progress_kind(),
            },
        )
    )
    s.append(
        Spec(
            "l2_penalty",
            ld.l2_penalty,
            lambda e: {"model": e.model, "gamma": 1e-3},
            {
                "model": model_kind()[:4] + [model_kind()[6], model_kind()[7]],
                "gamma": floats(minimum=0.0),
                "exclude": [
                    Bad("int", 3),
                    Bad("list of ints", [3]),
                    Bad("unknown name", ["nonexistent"]),
                    Bad("None", None),
                    Bad("ok: one keyword", "bias", "ok"),
                ],
            },
        )
    )
    s.append(
        Spec(
            "weight_decay_groups",
            ld.weight_decay_groups,
            lambda e: {"model": e.model, "weight_decay": 0.1},
            {
                "model": model_kind()[:4] + [model_kind()[6], model_kind()[7]],
                "weight_decay": floats(minimum=0.0),
                "exclude": [
                    Bad("int", 3),
                    Bad("list of ints", [3]),
                    Bad("unknown name", ["nonexistent"]),
                    Bad("None", None),
                ],
                "trainable_only": flag(),
            },
        )
    )
    s.append(
        Spec(
            "warmup",
            ld.warmup,
            lambda e: {"optimizer": e.optimizer, "warmup_steps": 3},
            {
                "optimizer": optimizer_kind()[:3],
                "warmup_steps": ints(0),
                "total_steps": ints(1, optional=True),
                "start_factor": floats(minimum=0.0, optional=True),
                "after": choice("constant", "cosine", "linear", "step", "inverse_sqrt"),
                "min_factor": floats(minimum=0.0, maximum=1.0),
                "step_size": ints(1, optional=True),
                "gamma": floats(above=0.0),
                "d_model": ints(1, optional=True, ok=False),
                "scale": floats(above=0.0),
                "last_epoch": ints(-1, ok=False),
            },
        )
    )
    s.append(
        Spec(
            "gradual_warmup",
            ld.gradual_warmup,
            lambda e: {"optimizer": e.optimizer, "batch_size": 512, "warmup_steps": 3},
            {
                "optimizer": optimizer_kind()[:3],
                "batch_size": ints(1),
                "warmup_steps": ints(0),
                "reference_batch_size": ints(1),
                "after": choice("constant", "cosine", "linear", "step", "inverse_sqrt"),
            },
        )
    )
    s.append(
        Spec(
            "linear_scaling_factor",
            ld.linear_scaling_factor,
            lambda e: {"batch_size": 512},
            {"batch_size": ints(1), "reference_batch_size": ints(1)},
        )
    )
    s.append(
        Spec(
            "load_problem",
            ld.load_problem,
            lambda e: {"spec": "lecture-saddle"},
            {"spec": problem_specs(), "checkpoint": checkpoint_kind()},
            watch=lambda e: [],
        )
    )
    s.append(
        Spec(
            "loss_on_batch",
            ld.loss_on_batch,
            lambda e: {"fn": lambda out, batch: out.sum()},
            {
                "fn": [
                    Bad("None", None, names=("loss",)),
                    Bad("string", "cross_entropy", names=("loss",)),
                    Bad("int", 3, names=("loss",)),
                ]
            },
            watch=lambda e: [],
        )
    )
    s.append(
        Spec(
            "Problem",
            ld.Problem,
            lambda e: {"model": e.model, "loss_fn": e.loss_fn, "train_data": e.data},
            {
                # None is a valid loss (the model's own outputs.loss); a Problem runs nothing when built
                "model": model_kind()[:4] + model_kind()[6:],
                "loss_fn": [loss_kind()[0], loss_kind()[2], loss_kind()[8]],
                "train_data": [b for b in data_kind() if b.label in STRUCTURAL],
                "test_data": [b for b in data_kind(optional=True) if b.label in STRUCTURAL],
                "name": [Bad("int", 3), Bad("list", ["x"])],
                "info": [Bad("list", [1]), Bad("string", "x")],
            },
        )
    )
    # the stall doctor (the lead's rewrite): probes kept here so the rewrite can close them
    s.append(
        Spec(
            "diagnose",
            ld.diagnose,
            lambda e: {**_model_args(e), "history": list(np.linspace(2, 1, 40))},
            {
                "history": [
                    Bad("2-d", np.ones((40, 2))),
                    Bad("booleans", [True, False] * 20),
                    Bad("string", "1,2,3"),
                    Bad("None", None),
                    Bad("too short", [1.0]),
                    Bad("nested", [[1.0, 2.0]] * 20),
                ],
                "lr": floats(above=0.0, optional=True),
                "window": ints(4),
                "mode": _mode(),
                "seed": seed(),
            },
            owner=DOCTOR,
        )
    )
    s.append(
        Spec(
            "Monitor",
            ld.Monitor,
            lambda e: _model_args(e),
            {
                **MODEL_LOSS_DATA,
                "diagnose_samples": ints(1, optional=True),
                "window": ints(4),
                "sharpness_every": ints(0, optional=True),
                "lr": floats(above=0.0, optional=True),
                "check_every": ints(1, optional=True),
                "signals_every": ints(1, optional=True),
                "callback": progress_kind(),
            },
            owner=DOCTOR,
        )
    )
    s.append(
        Spec(
            "Monitor.step",
            _monitor_step,
            lambda e: {"model": e.model, "loss_fn": e.loss_fn, "data": e.data, "loss": 1.0},
            {
                "loss": [
                    Bad("nan first", NAN, "ok"),
                    Bad("string", "1.0"),
                    Bad("None", None),
                    Bad("list", [1.0]),
                ]
            },
            owner=DOCTOR,
        )
    )
    s.append(
        Spec(
            "layer_curvature",
            ld.layer_curvature,
            lambda e: _model_args(e),
            {
                **MODEL_LOSS_DATA,
                "optimizer": [b for b in optimizer_kind() if b.label != "None"],
                "lr": floats(above=0.0, optional=True),
                "mode": _defaulted_mode(),
                "probes": ints(1),
                "lanczos_steps": ints(1),
                "seed": seed(),
                "params": params_kind(),
            },
            owner=DOCTOR,
        )
    )
    s.append(
        Spec(
            "attached_scheduler",
            ld.attached_scheduler,
            lambda e: {"optimizer": e.optimizer},
            {"optimizer": [b for b in optimizer_kind() if b.label in ("string", "None", "class")]},
            owner=DOCTOR,
            watch=lambda e: [],
        )
    )
    s.append(
        Spec(
            "train_monitored",
            ld.train_monitored,
            lambda e: {**_model_args(e), "optimizer": e.optimizer, "steps": 2},
            {"steps": ints(1), "optimizer": optimizer_kind()[:3], "data": data_kind()},
            owner=DOCTOR,
            watch=lambda e: None,
        )
    )  # train_monitored trains the model in place: only the RNG is watched
    s.append(
        Spec(
            "checkup",
            ld.checkup,
            lambda e: {**_model_args(e), "lr": 0.05, "budget": 2.0},
            {
                **MODEL_LOSS_DATA,
                "lr": floats(above=0.0),
                "budget": floats(above=0.0, inf_ok=True),
                "window": ints(4),
                "seed": seed(),
                "progress": progress_kind(),
                "history": [
                    Bad("2-d", np.ones((40, 2))),
                    Bad("string", "1,2,3"),
                    Bad("too short", [1.0]),
                ],
            },
            owner=DOCTOR,
        )
    )
    return s


STRUCTURAL = {
    "int",
    "string",
    "single tensor",
    "generator",
    "None",
    "ok: TensorDataset",
    "ok: one pair",
    "a bare tensor among batches",
    "inputs and targets of different lengths",
    "pair of different lengths",
}


def _monitor_step(model: nn.Module, loss_fn: Any, data: Any, loss: Any) -> Any:
    monitor = ld.Monitor(model, loss_fn, data)
    return [monitor.step(loss) for _ in range(3)]


USER_FILE = textwrap.dedent("""
    import torch
    from torch import nn
    from torch.nn import functional as F

    def make():
        g = torch.Generator().manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
        x, y = torch.randn(12, 3, generator=g), torch.randint(0, 3, (12,), generator=g)
        xt, yt = torch.randn(6, 3, generator=g), torch.randint(0, 3, (6,), generator=g)
        return model, F.cross_entropy, [(x[:6], y[:6]), (x[6:], y[6:])], (xt, yt)

    def wrong():
        return 42

    def broken():
        return undefined_name + 1

    def needs_argument(width):
        return make()
""")


def user_files() -> dict[str, Path]:
    root = _probe_dir()
    files = {
        "good": root / "probe_problem.py",
        "syntax": root / "probe_syntax.py",
        "import": root / "probe_import.py",
        "nameerror_at_import": root / "probe_nameerror.py",
    }
    files["good"].write_text(USER_FILE)
    files["syntax"].write_text("def make(:\n    return 1\n")
    files["import"].write_text(
        "import no_such_module_for_lossdoctor\n\ndef make():\n    return 1\n"
    )
    files["nameerror_at_import"].write_text(
        "x = undefined_at_import\n\ndef make():\n    return 1\n"
    )
    return files


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch " + str(_probe_dir() / "PWNED"),))


def checkpoints() -> dict[str, Path]:
    root = _probe_dir()
    files = {
        name: root / f"ckpt-{name}.pt"
        for name in ("garbage", "wrong_keys", "wrong_shapes", "pickle", "text", "good")
    }
    files["garbage"].write_bytes(b"\x00\x01not a checkpoint" * 10)
    torch.save({"nope": torch.zeros(2)}, files["wrong_keys"])
    torch.save({"w1": torch.zeros(3), "w2": torch.zeros(())}, files["wrong_shapes"])
    with open(files["pickle"], "wb") as handle:
        pickle.dump(_Payload(), handle)
    files["text"].write_text("w1,w2\n0,0\n")
    torch.save(ld.load_problem("lecture-saddle").model.state_dict(), files["good"])
    return files


def problem_specs() -> list[Bad]:
    names = ("problem", "spec", "module", "probe_", "function", "import")
    f = F_(lambda e: user_files())
    return [
        Bad("empty", "", names=names),
        Bad("unknown name", "mnist2d", names=names),
        Bad("int", 3, names=names),
        Bad("None", None, names=names),
        Bad("missing module", "no_such_module_xyz:make", names=names),
        Bad("missing function", F_(lambda e: f"{user_files()['good']}:nothing"), names=names),
        Bad("missing file", "/nonexistent/problem.py:make", names=names),
        Bad(
            "syntax error",
            F_(lambda e: f"{user_files()['syntax']}:make"),
            names=names + ("syntax",),
        ),
        Bad("import error inside", F_(lambda e: f"{user_files()['import']}:make"), names=names),
        Bad(
            "name error at import",
            F_(lambda e: f"{user_files()['nameerror_at_import']}:make"),
            names=names,
        ),
        Bad("returns an int", F_(lambda e: f"{user_files()['good']}:wrong"), names=names),
        Bad(
            "raises inside",
            F_(lambda e: f"{user_files()['good']}:broken"),
            names=names + ("undefined_name",),
        ),
        Bad(
            "needs an argument",
            F_(lambda e: f"{user_files()['good']}:needs_argument"),
            names=names + ("width",),
        ),
        Bad("ok: user file", F_(lambda e: f"{f(e)['good']}:make"), "ok"),
    ]


def checkpoint_kind() -> list[Bad]:
    names = ("checkpoint", "ckpt-", "state_dict")
    c = F_(lambda e: checkpoints())
    return [
        Bad(name, F_(lambda e, name=name: str(c(e)[name])), names=names)
        for name in ("garbage", "wrong_keys", "wrong_shapes", "pickle", "text")
    ] + [
        Bad("missing file", "/nonexistent/model.pt", names=names),
        Bad("a directory", "/tmp", names=names),
        Bad("int", 3, names=names),
        Bad("ok: good", F_(lambda e: str(c(e)["good"])), "ok"),
    ]


# ---------------------------------------------------------------------------------------------
# running one probe


@dataclass(frozen=True)
class Probe:
    target: str
    arg: str
    bad: Bad
    kind: str  # "api" or "cli"
    owner: str
    spec: Spec | None = None
    argv: Callable[[], list[str]] | None = None

    @property
    def id(self) -> str:
        return f"{self.target}-{self.arg}-{self.bad.label}".replace(" ", "_")


def _snapshot(model: nn.Module) -> list[Any]:
    state = [(k, v.detach().clone()) for k, v in model.state_dict(keep_vars=True).items()]
    flags = [
        (p.requires_grad, None if p.grad is None else p.grad.detach().clone())
        for p in model.parameters()
    ]
    return [state, flags, [m.training for m in model.modules()]]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and (
                a.device.type == "meta"
                or torch.equal(a.cpu(), b.cpu())
                or (
                    a.is_floating_point()
                    and bool(torch.equal(a.isnan(), b.isnan()))
                    and torch.equal(a.nan_to_num(), b.nan_to_num())
                )
            )
        )
    if isinstance(a, (list, tuple)):
        return (
            isinstance(b, (list, tuple))
            and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b))
        )
    return a == b


def _rng_state() -> list[Any]:
    np_state = np.random.get_state()
    return [
        torch.get_rng_state(),
        (np_state[0], np_state[1].copy(), *np_state[2:]),
        random.getstate(),
    ]


def _rng_same(a: list[Any], b: list[Any]) -> bool:
    return (
        torch.equal(a[0], b[0])
        and a[1][0] == b[1][0]
        and np.array_equal(a[1][1], b[1][1])
        and a[1][2:] == b[1][2:]
        and a[2] == b[2]
    )


def _raised_by_us(err: BaseException) -> bool:
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(PACKAGE_DIR)


def _names_it(message: str, names: tuple[str, ...]) -> bool:
    text = message.lower()
    return any(n.lower() in text for n in names)


@dataclass(frozen=True)
class Outcome:
    category: str  # clear, documented, unclear, silent, changed
    detail: str


def run_api_probe(probe: Probe) -> Outcome:
    spec, bad = probe.spec, probe.bad
    assert spec is not None
    env = Env()
    kwargs = dict(spec.base(env))
    value = bad.make(env)
    kwargs[probe.arg] = value
    chosen = spec.watch(env)  # None: the call changes the model by design
    watched = (
        []
        if chosen is None
        else list(chosen) + [v for v in kwargs.values() if isinstance(v, nn.Module)]
    )
    snapshots = [_snapshot(m) for m in watched]
    rng = _rng_state()
    names = (probe.arg, *bad.names)
    outcome: Outcome
    try:
        result = spec.call(**kwargs)
        if spec.after is not None:
            spec.after(result)
    except (ValueError, TypeError) as err:
        message = f"{type(err).__name__}: {err}"
        if bad.expect == "ok":
            outcome = Outcome("unclear", f"a valid value was refused: {message}")
        elif not _raised_by_us(err):
            where = traceback.extract_tb(err.__traceback__)[-1]
            outcome = Outcome(
                "unclear", f"raised inside {Path(where.filename).name}:{where.lineno}: {message}"
            )
        elif not _names_it(str(err), names):
            outcome = Outcome("unclear", f"does not name {probe.arg!r}: {message}")
        else:
            outcome = Outcome("clear", message)
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001 - every other exception is an unclear answer
        outcome = Outcome("unclear", f"{type(err).__name__}: {err}"[:300])
    else:
        if bad.expect == "error":
            outcome = Outcome("silent", f"accepted, returned {type(result).__name__}")
        elif bad.check is not None and not bad.check(env, result):
            outcome = Outcome("silent", "accepted but the result is wrong")
        else:
            outcome = Outcome("documented", "accepted")
    changed = [i for i, (m, s) in enumerate(zip(watched, snapshots)) if not _same(s, _snapshot(m))]
    if changed:
        return Outcome("changed", f"model {changed} changed; {outcome.category}: {outcome.detail}")
    if not _rng_same(rng, _rng_state()):
        return Outcome("changed", f"the global RNG moved; {outcome.category}: {outcome.detail}")
    return outcome


# ---------------------------------------------------------------------------------------------
# the command line


def _plot_kinds(option: str) -> list[Bad]:
    names = (option, "plot", "out")

    def existing() -> str:
        path = _probe_dir() / "exists.png"
        path.write_bytes(b"")
        return str(path)

    return [
        Bad("unknown format", str(_probe_dir() / "x.xyz"), names=names + ("format", "xyz")),
        Bad("missing folder", "/nonexistent-dir/x.png", names=names + ("nonexistent",)),
        Bad("existing file", F_(lambda e: existing()), names=names + ("exists",)),
        Bad("unwritable folder", "/proc/x.png", names=names + ("/proc",)),
        Bad("a directory", str(tempfile.gettempdir()), names=names),
    ]


def cli_specs() -> list[tuple[str, list[str], dict[str, list[tuple[str, str]] | list[Bad]], str]]:
    """(command, valid argv, {option: [(label, text) or Bad]}, owner)."""
    num = [("zero", "0"), ("negative", "-1"), ("word", "abc")]
    pos_float = [("zero", "0"), ("negative", "-1"), ("nan", "nan"), ("inf", "inf"), ("word", "abc")]
    unit = [("above one", "1.5"), ("negative", "-0.1"), ("nan", "nan")]
    mode = [("unknown", "bogus")]
    seed_ = [("negative", "-1"), ("word", "x"), ("float", "1.5")]
    prob = {"--problem": problem_cli(), "--checkpoint": checkpoint_cli()}
    dev = {
        "--device": [
            ("word", "gpu"),
            ("cuda without a GPU", "cuda")
            if not torch.cuda.is_available()
            else ("missing GPU", "cuda:99"),
        ]
    }
    return [
        (
            "spectrum",
            ["--k", "1", "--tol", "1e-3", "--trace-matvecs", "6", "--no-density"],
            {
                "--k": num + [("float", "1.5")],
                "--tol": pos_float,
                "--trace-matvecs": [("one", "1"), ("negative", "-1")],
                "--which": [("unknown", "top")],
                "--mode": mode,
                "--micro-batch-size": [("zero", "0")],
                "--cache": [("negative", "-1"), ("word", "lots")],
                "--seed": seed_,
                "--params": [("unknown name", "9.weight"), ("glob matching nothing", "layer9.*")],
                **dev,
                **prob,
            },
            "lossdoctor",
        ),
        (
            "spectrum-density",
            ["--k", "1", "--tol", "1e-3", "--trace-matvecs", "0"],
            {"--plot": _plot_kinds("--plot")},
            "lossdoctor",
        ),
        (
            "critical",
            ["--k", "1", "--dense"],
            {
                "--k": num,
                "--grad-tol": [("negative", "-1"), ("nan", "nan")],
                "--eig-tol": [("negative", "-1"), ("nan", "nan")],
                "--mode": mode,
                "--seed": seed_,
                "--params": [("unknown name", "9.weight"), ("empty", "")],
                **dev,
                **prob,
            },
            "lossdoctor",
        ),
        (
            "critical-escape",
            ["--k", "1", "--dense", "--escape"],
            {"--out": _plot_kinds("--out")[1:]},
            "lossdoctor",
        ),
        (
            "lr-find",
            ["--steps", "5"],
            {
                "--momentum": unit,
                "--weight-decay": [("negative", "-1"), ("nan", "nan")],
                "--start-lr": pos_float,
                "--end-lr": pos_float + [("below start", "1e-9")],
                "--steps": [("zero", "0"), ("four", "4"), ("word", "x")],
                "--optimizer": [("unknown", "lbfgs")],
                "--suggestion": [("unknown", "best")],
                "--plot": _plot_kinds("--plot"),
                **dev,
                **prob,
            },
            "lossdoctor",
        ),
        (
            "schedule",
            ["--warmup", "3", "--steps", "10"],
            {
                "--warmup": [("negative", "-1"), ("word", "abc"), ("float", "1.5")],
                "--steps": [("zero", "0"), ("negative", "-1")],
                "--lr": pos_float,
                "--start-factor": [("negative", "-1"), ("nan", "nan")],
                "--min-factor": unit,
                "--step-size": [("zero", "0")],
                "--gamma": [("zero", "0"), ("negative", "-1"), ("nan", "nan")],
                "--d-model": [("zero", "0")],
                "--after": [("unknown", "exp")],
                "--plot": _plot_kinds("--plot"),
            },
            "lossdoctor",
        ),
        (
            "tour",
            ["--only", "critical-toy"],
            {
                "--out": [
                    Bad("existing file", F_(lambda e: _existing_file()), names=("--out", "a-file")),
                    Bad("unwritable place", "/proc/lossdoctor-report", names=("--out", "/proc")),
                ],
                "--only": [("unknown", "bogus")],
            },
            "lossdoctor",
        ),
        (
            "batch time",
            ["--sizes", "1,2", "--repeats", "1", "--warmup", "0"],
            {
                "--sizes": [
                    ("letters", "a,b"),
                    ("zero", "0"),
                    ("negative", "-1"),
                    ("empty", ","),
                    ("float", "1.5"),
                ],
                "--repeats": [("zero", "0")],
                "--warmup": [("negative", "-1")],
                "--device": [("word", "gpu")],
                "--epoch-size": [("zero", "0"), ("negative", "-10")],
                "--plot": _plot_kinds("--plot"),
                "--problem": problem_cli(),
            },
            "lossdoctor",
        ),
        (
            "batch sweep",
            ["--sizes", "4", "--seeds", "0", "--updates", "2", "--sharpness", "none"],
            {
                "--sizes": [("letters", "a"), ("zero", "0"), ("repeated", "4,4")],
                "--seeds": [("negative", "-1"), ("letters", "a")],
                "--epochs": [("zero", "0"), ("nan", "nan")],
                "--updates": [("zero", "0")],
                "--stop-at-loss": [("zero", "0"), ("nan", "nan")],
                "--max-epochs": [("zero", "0")],
                "--lr": pos_float,
                "--lr-rule": [("unknown", "sqrt")],
                "--base-batch": [("zero", "0")],
                "--optimizer": [("unknown", "rmsprop")],
                "--sharpness": [("unknown", "bogus")],
                "--store": [
                    Bad(
                        "existing file", F_(lambda e: _existing_file()), names=("--store", "a-file")
                    )
                ],
                "--problem": problem_cli(),
            },
            "lossdoctor",
        ),
        (
            "batch sharpness",
            ["--method", "lambda_max"],
            {
                "--method": [("unknown", "bogus")],
                "--epsilon": [("zero", "0"), ("negative", "-1"), ("nan", "nan")],
                "--subspace-dim": [("negative", "-1")],
                "--max-iter": [("zero", "0")],
                "--mode": mode,
                "--seed": seed_,
                **prob,
            },
            "lossdoctor",
        ),
        (
            "batch landscape",
            ["--steps", "3"],
            {
                "--compare": [
                    Bad("missing", "/nonexistent/b.pt", names=("--compare", "b.pt", "checkpoint"))
                ],
                "--dims": [("three", "3")],
                "--steps": [("one", "1"), ("zero", "0")],
                "--span": [("zero", "0"), ("negative", "-1"), ("nan", "nan")],
                "--normalization": [("unknown", "bogus")],
                "--seed": seed_,
                "--plot": _plot_kinds("--plot"),
                **prob,
            },
            "lossdoctor",
        ),
        (
            "batch noise",
            ["--small-batch", "2", "--big-batch", "6", "--pairs", "3"],
            {
                "--small-batch": [("zero", "0"), ("float", "2.7")],
                "--big-batch": [("one", "1"), ("negative", "-1")],
                "--pairs": [("one", "1"), ("zero", "0")],
                "--mode": mode,
                "--seed": seed_,
                **prob,
            },
            "lossdoctor",
        ),
        (
            "diagnose",
            ["--lr", "0.1"],
            {
                "--history": [
                    Bad("binary", F_(lambda e: _history("bin")), names=("--history", "history")),
                    Bad("2-d json", F_(lambda e: _history("2d")), names=("--history", "history")),
                    Bad("booleans", F_(lambda e: _history("bool")), names=("--history", "history")),
                    Bad("empty", F_(lambda e: _history("empty")), names=("--history", "history")),
                ],
                "--lr": pos_float,
                "--window": [("zero", "0")],
            },
            DOCTOR,
        ),
        (
            "train",
            ["--lr", "0.1", "--steps", "2"],
            {
                "--lr": pos_float,
                "--steps": [("zero", "0")],
                "--momentum": unit,
                "--out": _plot_kinds("--out")[1:],
            },
            DOCTOR,
        ),
    ]


def _history(kind: str) -> str:
    path = _probe_dir() / f"history-{kind}"
    if kind == "bin":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "2d":
        path.write_text("[[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]]")
    elif kind == "bool":
        path.write_text("[true, false, true, false, true, false]")
    else:
        path.write_text("")
    return str(path)


def problem_cli() -> list[Bad]:
    return [
        Bad(b.label, b.value, names=("--problem", "problem", *b.names))
        for b in problem_specs()
        if b.expect == "error" and not isinstance(b.value, (int, type(None))) and b.value != ""
    ]


def checkpoint_cli() -> list[Bad]:
    return [
        Bad(b.label, b.value, names=("--checkpoint", *b.names))
        for b in checkpoint_kind()
        if b.expect == "error" and not isinstance(b.value, int)
    ]


def _cli_command(command: str) -> list[str]:
    return {"spectrum-density": ["spectrum"], "critical-escape": ["critical"]}.get(
        command, command.split()
    )


# what each command takes besides the option under test
CLI_TAKES = {
    "spectrum": {"problem", "device"},
    "spectrum-density": {"problem", "device", "plot"},
    "critical": {"problem", "device"},
    "critical-escape": {"problem", "device", "out"},
    "lr-find": {"problem", "device"},
    "schedule": set(),
    "tour": {"tour-out"},
    "batch time": {"problem"},
    "batch sweep": {"problem"},
    "batch sharpness": {"problem", "device"},
    "batch landscape": {"problem", "device", "plot"},
    "batch noise": {"problem", "device"},
    "diagnose": {"problem", "device", "history"},
    "train": {"problem", "device"},
}


def _cli_argv(command: str, base: list[str], option: str, text: str) -> list[str]:
    argv = _cli_command(command)
    takes = CLI_TAKES[command]
    if "problem" in takes and option != "--problem":
        argv += [
            "--problem",
            "lecture-saddle" if option == "--checkpoint" else f"{user_files()['good']}:make",
        ]
    if "device" in takes and option != "--device":
        argv += ["--device", "cpu"]
    if "plot" in takes and option != "--plot":
        argv += ["--plot", str(_fresh_path("png"))]
    if "out" in takes and option != "--out":
        argv += ["--out", str(_fresh_path("pt"))]
    if "tour-out" in takes and option != "--out":
        argv += ["--out", str(_fresh_path("dir"))]
    if "history" in takes and option != "--history":
        argv += ["--history", _history_good()]
    cut = list(base)
    if option in cut:
        i = cut.index(option)
        del cut[i : i + 2]
    return argv + cut + [option, text]


_COUNTER = [0]


def _fresh_path(suffix: str) -> Path:
    _COUNTER[0] += 1
    return (
        _probe_dir() / f"fresh-{_COUNTER[0]}.{suffix}"
        if suffix != "dir"
        else _probe_dir() / f"fresh-{_COUNTER[0]}"
    )


def _history_good() -> str:
    path = _probe_dir() / "history-good.json"
    path.write_text(json.dumps([float(v) for v in np.linspace(2.0, 1.0, 40)]))
    return str(path)


def run_cli_probe(probe: Probe) -> Outcome:
    from click.testing import CliRunner

    from lossdoctor.cli import main

    env = Env()
    bad = probe.bad
    text = bad.make(env)
    assert probe.argv is not None
    base = probe.argv()
    argv = _cli_argv(probe.target, base, probe.arg, str(text))
    cwd = os.getcwd()
    os.chdir(_probe_dir())  # default outputs (plots) land in the scratch folder
    try:
        result = CliRunner().invoke(main, argv, catch_exceptions=True)
    finally:
        os.chdir(cwd)
    output = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        tb = "".join(traceback.format_exception(result.exception)).strip().splitlines()
        return Outcome("unclear", f"traceback: {tb[-1][:200]}")
    if "Traceback (most recent call last)" in output:
        return Outcome("unclear", "printed a traceback")
    if result.exit_code == 0:
        return Outcome("silent", "exit 0: accepted")
    if result.exit_code != 2:
        return Outcome("unclear", f"exit {result.exit_code}: {output.strip()[-200:]}")
    if not _names_it(output, (probe.arg, *bad.names)):
        return Outcome("unclear", f"exit 2 but does not name {probe.arg}: {output.strip()[-200:]}")
    return Outcome("clear", output.strip().splitlines()[-1][:200] if output.strip() else "")


# ---------------------------------------------------------------------------------------------
# all probes


def all_probes() -> list[Probe]:
    probes = []
    for spec in specs():
        for arg, bads in spec.kinds.items():
            for bad in bads:
                probes.append(Probe(spec.name, arg, bad, "api", spec.owner, spec=spec))
    for command, base, options, owner in cli_specs():
        for option, values in options.items():
            for item in values:
                bad = item if isinstance(item, Bad) else Bad(item[0], item[1])
                probes.append(
                    Probe(f"{command}", option, bad, "cli", owner, argv=lambda base=base: base)
                )
    seen: dict[str, int] = {}
    unique = []
    for p in probes:  # ids must be unique for pytest
        n = seen.get(p.id, 0)
        seen[p.id] = n + 1
        unique.append(
            p
            if n == 0
            else Probe(
                p.target,
                p.arg,
                Bad(f"{p.bad.label} {n + 1}", p.bad.value, p.bad.expect, p.bad.names, p.bad.check),
                p.kind,
                p.owner,
                p.spec,
                p.argv,
            )
        )
    return unique


def run_probe(probe: Probe) -> Outcome:
    return run_api_probe(probe) if probe.kind == "api" else run_cli_probe(probe)


def main(argv: list[str]) -> None:
    import time
    import warnings
    from collections import Counter, defaultdict

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    probes = all_probes()
    if "--only" in argv:
        word = argv[argv.index("--only") + 1]
        probes = [p for p in probes if word in p.id]
    table: dict[str, Counter] = defaultdict(Counter)
    failures = []
    start = time.perf_counter()
    for p in probes:
        outcome = run_probe(p)
        key = (
            ("cli: " if p.kind == "cli" else "")
            + p.target
            + (" (doctor)" if p.owner == DOCTOR else "")
        )
        table[key][outcome.category] += 1
        if outcome.category not in ("clear", "documented"):
            failures.append((p, outcome))
    columns = ["clear", "documented", "unclear", "silent", "changed"]
    print(f"{'target':<34}" + "".join(f"{c:>11}" for c in columns) + f"{'total':>8}")
    totals: Counter = Counter()
    for key in sorted(table):
        row = table[key]
        totals.update(row)
        print(f"{key:<34}" + "".join(f"{row[c]:>11}" for c in columns) + f"{sum(row.values()):>8}")
    print(
        f"{'ALL':<34}" + "".join(f"{totals[c]:>11}" for c in columns) + f"{sum(totals.values()):>8}"
    )
    for owner in ("lossdoctor", "doctor"):
        part: Counter = Counter()
        for key, row in table.items():
            if (key.endswith("(doctor)")) == (owner == "doctor"):
                part.update(row)
        print(
            f"{'  of which ' + owner:<34}"
            + "".join(f"{part[c]:>11}" for c in columns)
            + f"{sum(part.values()):>8}"
        )
    mine = Counter()
    for p, _ in failures:
        mine["doctor" if p.owner == DOCTOR else "lossdoctor"] += 1
    print(
        f"{len(probes)} probes in {time.perf_counter() - start:.1f} s; not clear/documented: "
        f"{dict(mine)}"
    )
    if "--failures" in argv:
        for p, o in failures:
            print(f"  [{o.category}] {p.id}: {o.detail[:240]}")


if __name__ == "__main__":
    main(sys.argv[1:])
