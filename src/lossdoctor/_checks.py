"""Argument checks shared by every public function and CLI option.

One place that says what a valid argument is and, for an invalid one, what was given and what to do.

Each ``check_*`` returns the value in its canonical type (``int``, ``float``, ``list[int]``, ...)
or raises: ``TypeError`` when the value has the wrong type (a string where a number goes, ``True``
where a count goes), ``ValueError`` when the type is right but the value is not (out of range,
not finite, an unknown choice). Every message names the argument, shows what was given, and
says what would be accepted::

    >>> check_int(0, "k", minimum=1)
    Traceback (most recent call last):
    ValueError: k must be an integer >= 1, got 0.
    >>> check_ints("16", "batch_sizes", minimum=1)
    Traceback (most recent call last):
    TypeError: batch_sizes must be a list of integers >= 1 such as [16, 64], got '16' (a string).

Rules that hold for every check:

- ``bool`` is not a number: ``True`` where an integer or a float goes is a ``TypeError`` (it is
  almost always a misplaced flag); a flag takes only ``True``/``False`` (numpy's too).
- A string is not a sequence of numbers: ``"16"`` for ``batch_sizes`` is refused, never split
  into digits.
- Floats must be finite unless the check says otherwise; integers must be whole (``2.0`` where a
  count goes is refused: it is usually a computed value that went wrong).
- numpy scalars are accepted like Python numbers; 0-d tensors where a float goes too.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypedDict, overload

import numpy as np
import torch

if TYPE_CHECKING:  # Unpack is in typing from Python 3.11; typing_extensions comes with torch
    from typing_extensions import Unpack


def describe(value: Any, limit: int = 60) -> str:
    """A short description of ``value`` for an error message.

    Its repr (cut to ``limit`` characters) and, where the repr hides it, its type."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    if isinstance(value, type):
        return f"the class {value.__name__}"
    if isinstance(value, torch.nn.Module):
        return f"a {type(value).__name__} module"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    kind = {bool: "a bool", str: "a string", bytes: "bytes"}.get(type(value))
    if (
        kind is None
        and callable(value)
        and not isinstance(value, (numbers.Number, torch.nn.Module))
    ):
        kind = "a function" if getattr(value, "__name__", None) else type(value).__name__
    if kind is None and not isinstance(value, (int, float, type(None), np.generic)):
        kind = f"a {type(value).__name__}"
    return f"{text} ({kind})" if kind else text


def _fail(
    cls: type[Exception], name: str, requirement: str, value: Any, hint: str | None
) -> Exception:
    message = f"{name} must be {requirement}, got {describe(value)}."
    if hint:
        message += " " + hint
    return cls(message)


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _bounds_text(
    minimum: float | None, maximum: float | None, above: float | None, below: float | None
) -> str:
    parts = []
    if above is not None:
        parts.append(f"> {_number(above)}")
    elif minimum is not None:
        parts.append(f">= {_number(minimum)}")
    if below is not None:
        parts.append(f"< {_number(below)}")
    elif maximum is not None:
        parts.append(f"<= {_number(maximum)}")
    return " and ".join(parts)


def _in_bounds(
    x: float, minimum: float | None, maximum: float | None, above: float | None, below: float | None
) -> bool:
    return (
        (minimum is None or x >= minimum)
        and (maximum is None or x <= maximum)
        and (above is None or x > above)
        and (below is None or x < below)
    )


def is_integer(value: Any) -> bool:
    """True for Python and numpy integers, never for ``bool``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value: Any) -> bool:
    """True for Python and numpy real numbers and 0-d real tensors, never for ``bool``."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not value.is_complex() and value.dtype != torch.bool
    return isinstance(value, numbers.Real)


# The overloads below say only what ``optional`` changes (``None`` may come back); the other
# keywords are the implementation's, listed once in these TypedDicts.
class _IntBounds(TypedDict, total=False):
    minimum: int | None
    maximum: int | None
    hint: str | None


class _Bounds(TypedDict, total=False):
    minimum: float | None
    maximum: float | None
    above: float | None
    below: float | None


class _FloatBounds(_Bounds, total=False):
    finite: bool
    hint: str | None


@overload
def check_int(
    value: Any, name: str, *, optional: Literal[False] = ..., **bounds: Unpack[_IntBounds]
) -> int: ...
@overload
def check_int(
    value: Any, name: str, *, optional: bool, **bounds: Unpack[_IntBounds]
) -> int | None: ...
def check_int(
    value: Any,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    optional: bool = False,
    hint: str | None = None,
) -> int | None:
    """A whole number (``int`` or numpy integer, not ``bool``, not ``2.0``) within the bounds.

    ``None`` too when ``optional``."""
    if value is None and optional:
        return None
    requirement = "an integer" + (
        (" " + _bounds_text(minimum, maximum, None, None))
        if minimum is not None or maximum is not None
        else ""
    )
    if optional:
        requirement += " or None"
    if not is_integer(value):
        if isinstance(value, float) and value.is_integer() and not hint:
            hint = f"Pass the whole number {int(value)}, not a float."
        raise _fail(TypeError, name, requirement, value, hint)
    if not _in_bounds(int(value), minimum, maximum, None, None):
        raise _fail(ValueError, name, requirement, value, hint)
    return int(value)


@overload
def check_float(
    value: Any, name: str, *, optional: Literal[False] = ..., **bounds: Unpack[_FloatBounds]
) -> float: ...
@overload
def check_float(
    value: Any, name: str, *, optional: bool, **bounds: Unpack[_FloatBounds]
) -> float | None: ...
def check_float(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    optional: bool = False,
    finite: bool = True,
    hint: str | None = None,
) -> float | None:
    """A real number within the bounds (``minimum``/``maximum`` inclusive, ``above``/``below`` exclusive), finite unless ``finite=False``; ``None`` too when ``optional``."""
    if value is None and optional:
        return None
    bounds = _bounds_text(minimum, maximum, above, below)
    requirement = ("a finite number" if finite else "a number") + (f" {bounds}" if bounds else "")
    if optional:
        requirement += " or None"
    if not is_real(value):
        raise _fail(TypeError, name, requirement, value, hint)
    x = float(value)
    if (
        math.isnan(x)
        or (finite and math.isinf(x))
        or not _in_bounds(x, minimum, maximum, above, below)
    ):
        raise _fail(ValueError, name, requirement, value, hint)
    return x


@overload
def check_bool(
    value: Any, name: str, *, optional: Literal[False] = ..., hint: str | None = ...
) -> bool: ...
@overload
def check_bool(value: Any, name: str, *, optional: bool, hint: str | None = ...) -> bool | None: ...
def check_bool(
    value: Any, name: str, *, optional: bool = False, hint: str | None = None
) -> bool | None:
    """``True`` or ``False`` (numpy's too); not ``1``, not ``"yes"``; ``None`` too when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise _fail(TypeError, name, "True or False" + (" or None" if optional else ""), value, hint)


def check_choice(value: Any, name: str, choices: Sequence[str], *, hint: str | None = None) -> str:
    """One of the strings in ``choices`` (exactly, case included)."""
    options = ", ".join(repr(c) for c in choices)
    if not isinstance(value, str):
        raise _fail(TypeError, name, f"one of {options}", value, hint)
    if value not in choices:
        raise _fail(ValueError, name, f"one of {options}", value, hint)
    return value


def check_seed(value: Any, name: str = "seed") -> int:
    """A seed for ``torch.Generator.manual_seed`` and ``numpy.random.default_rng``.

    An integer in [0, 2**63)."""
    if not is_integer(value):
        raise _fail(TypeError, name, "an integer >= 0", value, None)
    if not 0 <= int(value) < 2**63:
        raise _fail(ValueError, name, "an integer >= 0 and below 2**63", value, None)
    return int(value)


def _as_items(value: Any, name: str, example: str, hint: str | None) -> list[Any]:
    requirement = f"a list of {example}"
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise _fail(TypeError, name, requirement, value, hint)
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if value.ndim != 1:
            raise _fail(ValueError, name, requirement + " (one-dimensional)", value, hint)
        return value.tolist()
    if isinstance(value, Iterable) and iter(value) is value:
        raise _fail(TypeError, name, requirement + " (not a one-shot iterator)", value, hint)
    return list(value)


def check_ints(
    value: Any,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    distinct: bool = False,
    nonempty: bool = True,
    hint: str | None = None,
) -> list[int]:
    """A list (tuple, range, 1-d array) of integers within the bounds, in the given order."""
    bounds = _bounds_text(minimum, maximum, None, None)
    example = "integers" + (f" {bounds}" if bounds else "") + " such as [16, 64]"
    items = _as_items(value, name, example, hint)
    if nonempty and not items:
        raise _fail(ValueError, name, f"a non-empty list of {example}", value, hint)
    out = []
    for i, item in enumerate(items):
        if not is_integer(item):
            raise _fail(
                TypeError,
                f"{name}[{i}]",
                "an integer" + (f" {bounds}" if bounds else ""),
                item,
                hint,
            )
        if not _in_bounds(int(item), minimum, maximum, None, None):
            raise _fail(ValueError, f"{name}[{i}]", "an integer " + bounds, item, hint)
        out.append(int(item))
    if distinct and len(set(out)) != len(out):
        repeated = sorted({v for v in out if out.count(v) > 1})
        raise ValueError(
            f"{name} must not repeat values, got {describe(value)} ({repeated} more than once)."
        )
    return out


def check_floats(
    value: Any,
    name: str,
    *,
    nonempty: bool = True,
    min_length: int = 0,
    hint: str | None = None,
    **bounds: Unpack[_Bounds],
) -> list[float]:
    """A list (tuple, 1-d array or tensor) of finite real numbers within the bounds (``minimum``, ``maximum``, ``above``, ``below``, as for :func:`check_float`)."""
    text = _bounds_text(
        bounds.get("minimum"), bounds.get("maximum"), bounds.get("above"), bounds.get("below")
    )
    example = "finite numbers" + (f" {text}" if text else "")
    items = _as_items(value, name, example, hint)
    if (nonempty and not items) or len(items) < min_length:
        at_least = max(min_length, 1 if nonempty else 0)
        raise _fail(ValueError, name, f"a list of at least {at_least} {example}", value, hint)
    return [check_float(item, f"{name}[{i}]", hint=hint, **bounds) for i, item in enumerate(items)]


def check_callable(
    value: Any, name: str, *, optional: bool = False, hint: str | None = None
) -> Any:
    """Anything callable (a function, a module, a bound method); ``None`` too when ``optional``."""
    if value is None and optional:
        return None
    if not callable(value) or isinstance(value, type):
        raise _fail(TypeError, name, "callable" + (" or None" if optional else ""), value, hint)
    return value


def check_progress(value: Any, name: str = "progress") -> Callable[[int, int], None] | None:
    """A progress callback ``progress(done, total)`` or ``None``."""
    return check_callable(
        value, name, optional=True, hint="Pass a function called as progress(done, total), or None."
    )


def check_module(value: Any, name: str = "model") -> torch.nn.Module:
    """A ``torch.nn.Module``."""
    if not isinstance(value, torch.nn.Module):
        if isinstance(value, type) and issubclass(value, torch.nn.Module):
            hint = f"Pass a model, not its class: {value.__name__}(...)."
        elif callable(value) and not isinstance(value, type):
            hint = "Wrap a plain function in an nn.Module (its parameters must be nn.Parameters the module owns)."
        else:
            hint = None
        raise _fail(TypeError, name, "a torch.nn.Module", value, hint)
    return value


def check_loss_fn(value: Any, name: str = "loss_fn") -> Any:
    """A loss: ``loss_fn(outputs, targets)`` returning the batch-mean loss (a module such as ``nn.CrossEntropyLoss()`` or a function such as ``F.cross_entropy``), or ``None``: the loss the model computes itself (``outputs.loss``, e.g. a Hugging Face model given labels)."""
    return check_callable(
        value,
        name,
        optional=True,
        hint="Pass a loss module such as nn.CrossEntropyLoss(), a function such as "
        "torch.nn.functional.cross_entropy, or None for the model's own outputs.loss.",
    )


def check_optimizer(value: Any, name: str = "optimizer") -> torch.optim.Optimizer:
    """A ``torch.optim.Optimizer`` instance (not the class, not its name)."""
    if not isinstance(value, torch.optim.Optimizer):
        hint = (
            "Build one first, e.g. torch.optim.SGD(model.parameters(), lr=0.1)."
            if isinstance(value, (str, type))
            else None
        )
        raise _fail(TypeError, name, "a torch.optim.Optimizer", value, hint)
    return value


def check_dtype(
    value: Any, name: str = "dtype", *, floating: bool = True, optional: bool = True
) -> torch.dtype | None:
    """A ``torch.dtype`` (a floating one when ``floating``); ``None`` too when ``optional``."""
    if value is None and optional:
        return None
    requirement = "a floating torch.dtype such as torch.float64" if floating else "a torch.dtype"
    if not isinstance(value, torch.dtype):
        raise _fail(TypeError, name, requirement, value, None)
    if floating and not value.is_floating_point:
        raise _fail(ValueError, name, requirement, value, None)
    return value


def check_device(value: Any, name: str = "device", *, optional: bool = True) -> torch.device | None:
    """A ``torch.device`` or its name (``"cpu"``, ``"cuda:1"``) that this PyTorch can use."""
    if value is None and optional:
        return None
    if not isinstance(value, (str, torch.device)):
        raise _fail(TypeError, name, "a device name such as 'cpu' or 'cuda:0'", value, None)
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise _fail(
            ValueError, name, "a device name such as 'cpu' or 'cuda:0'", value, None
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"{name}={str(value)!r} asks for CUDA, but this PyTorch sees no GPU: use 'cpu'."
        )
    if (
        device.type == "cuda"
        and device.index is not None
        and device.index >= torch.cuda.device_count()
    ):
        raise ValueError(f"{name}={str(value)!r}: there are only {torch.cuda.device_count()} GPUs.")
    return device


def check_series(value: Any, name: str, *, min_length: int = 0, finite: bool = False) -> np.ndarray:
    """A one-dimensional series of real numbers (a list, a 1-d array or tensor) as float64.

    Booleans, strings, nested lists and 2-d arrays are refused. NaN/Inf are allowed unless
    ``finite``."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(
        value, (Iterable, np.ndarray, torch.Tensor)
    ):
        raise _fail(TypeError, name, "a one-dimensional list of numbers", value, None)
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise _fail(
                ValueError,
                name,
                "a one-dimensional list of numbers",
                value,
                "Pass one number per step (flatten it if it is a column).",
            )
        if value.dtype == np.bool_ or not (
            np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)
        ):
            raise _fail(TypeError, name, "a one-dimensional list of numbers", value, None)
        array = value.astype(np.float64)
    else:
        items = list(value)
        for i, item in enumerate(items):
            if not is_real(item):
                raise _fail(
                    TypeError,
                    f"{name}[{i}]",
                    "a number",
                    item,
                    "Pass one number per step." if isinstance(item, Iterable) else None,
                )
        array = np.asarray([float(v) for v in items], dtype=np.float64)
    if len(array) < min_length:
        raise ValueError(f"{name} has {len(array)} values; at least {min_length} are needed.")
    if finite and not np.all(np.isfinite(array)):
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise ValueError(f"{name}[{bad}] is {array[bad]}: every value must be finite.")
    return array


# -- one meaning per argument name ---------------------------------------------------------------
def check_operator(value: Any, name: str = "op") -> Any:
    """A symmetric linear operator.

    a :class:`lossdoctor.HessianOperator` (or anything with a square ``.shape`` and ``@``), or a
    square, finite, symmetric floating matrix (tensor or numpy array)."""
    requirement = "a symmetric operator (lossdoctor.hessian(...) or a square symmetric matrix)"
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if isinstance(value, torch.Tensor):
        if value.dim() != 2 or value.shape[0] != value.shape[1]:
            raise _fail(ValueError, name, requirement, value, "The matrix must be square (n, n).")
        if not value.is_floating_point():
            raise _fail(
                TypeError, name, requirement, value, "Convert the matrix to floats (A.double())."
            )
        if value.device.type != "meta":
            if not bool(torch.isfinite(value).all()):
                raise ValueError(
                    f"{name} holds NaN or Inf entries: eigenvalues of a non-finite matrix mean nothing."
                )
            scale = float(value.abs().max()) if value.numel() else 0.0
            tol = (
                1e-5 if value.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-10
            ) * max(scale, 1e-30)
            asym = float((value - value.T).abs().max()) if value.numel() else 0.0
            if asym > tol:
                raise ValueError(
                    f"{name} is not symmetric (max |A - A.T| = {asym:.3g}): the symmetric eigensolvers "
                    "would return meaningless pairs. Pass (A + A.T) / 2 if the asymmetry is rounding."
                )
        return value
    if isinstance(value, torch.nn.Module):
        raise _fail(
            TypeError,
            name,
            requirement,
            value,
            "Build the operator first: lossdoctor.hessian(model, loss_fn, data).",
        )
    shape = getattr(value, "shape", None)
    if not (
        hasattr(value, "__matmul__")
        and isinstance(shape, tuple)
        and len(shape) == 2
        and all(is_integer(s) for s in shape)
        and shape[0] == shape[1]
    ):
        raise _fail(TypeError, name, requirement, value, None)
    return value


def _check_micro_batch_size(value: Any, name: str) -> Any:
    # a ValueError for every bad value, as the operator has always raised
    if value is None or (is_integer(value) and value >= 1):
        return value
    raise _fail(ValueError, name, "a positive integer or None", value, None)


def _check_cache(value: Any, name: str) -> Any:
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, str) and value == "auto"):
        return value
    if is_integer(value) and value >= 0:
        return value
    # a ValueError for every bad value, as the operator has always raised
    raise _fail(
        ValueError, name, "True, False, 'auto' or a number of bytes (an integer >= 0)", value, None
    )


# What each shared argument name means, everywhere it appears.
_RULES: dict[str, Callable[[Any, str], Any]] = {
    "model": lambda v, n: check_module(v, n),
    "loss_fn": lambda v, n: check_loss_fn(v, n),
    "op": lambda v, n: check_operator(v, n),
    "mode": lambda v, n: (
        None if v is None else check_choice(v, n, ("eval", "train"))
    ),  # None: the default
    "seed": lambda v, n: check_seed(v, n),
    "progress": lambda v, n: check_progress(v, n),
    "k": lambda v, n: check_int(v, n, minimum=1),
    "tol": lambda v, n: check_float(v, n, above=0.0),
    "max_block": lambda v, n: check_int(v, n, minimum=1),
    "micro_batch_size": _check_micro_batch_size,
    "distributed": lambda v, n: check_bool(v, n, optional=True),
    "cache": _check_cache,
    "max_params": lambda v, n: check_int(v, n, minimum=1),
    "dense_max_params": lambda v, n: check_int(v, n, minimum=0),
    "dtype": lambda v, n: check_dtype(v, n),
    "max_matvecs": lambda v, n: check_int(v, n, minimum=1, optional=True),
    "ncv": lambda v, n: check_int(v, n, minimum=1, optional=True),
    "matvecs": lambda v, n: check_int(v, n, minimum=1),
    "block": lambda v, n: check_int(v, n, minimum=1, optional=True),
    "num_probes": lambda v, n: check_int(v, n, minimum=1),
    "lanczos_steps": lambda v, n: check_int(v, n, minimum=1),
    "grid_points": lambda v, n: check_int(v, n, minimum=2),
    "sigma": lambda v, n: check_float(v, n, above=0.0, optional=True),
    "zero_tol": lambda v, n: check_float(v, n, minimum=0.0, optional=True),
    "grad_tol": lambda v, n: check_float(v, n, minimum=0.0, optional=True),
    "eig_tol": lambda v, n: check_float(v, n, minimum=0.0, optional=True),
    "dense": lambda v, n: check_bool(v, n, optional=True),
    "miss_probability": lambda v, n: check_float(
        v,
        n,
        above=0.0,
        below=1.0,
        hint="It is the failure probability allowed to the search for missed eigenvalues (default 1e-3).",
    ),
}


def check_arguments(**named: Any) -> None:
    """Check arguments by their name, with the one meaning each shared name has across lossdoctor (``k``: eigenpairs per end, an integer >= 1; ``tol``: a positive finite number; ``seed``; ``progress``; ``mode``; ``op``; ...).

    One line at the top of an entry point::

        check_arguments(op=op, k=k, tol=tol, seed=seed, progress=progress)
    """
    for name, value in named.items():
        _RULES[name](value, name)
