"""What the user analyses.

a model, a loss, training data and optional test data, loaded from a built-in name or the user's own
``package.module:function``, optionally with a checkpoint."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ._checks import check_loss_fn, check_module, describe
from .data import check_data
from .model_state import preserved_rng


class MissingFileError(FileNotFoundError, ValueError):
    """A file named by the user (a problem file, a checkpoint) is not there.

    Both a ``FileNotFoundError`` and a ``ValueError``: a bad argument."""


class UserCodeError(ValueError):
    """The user's own problem code failed (a syntax error, an exception while importing the file or calling the function).

    The message shows the user's file, line and error; the original exception is chained
    (``__cause__``)."""


@dataclass
class Problem:
    """A model with its loss and data: what the CLI and the studies analyse.

    Attributes:
        model: the ``nn.Module``.
        loss_fn: ``loss_fn(model(inputs), targets)``, the batch-mean loss.
        train_data: any lossdoctor data (a DataLoader, a list of batches, one batch).
        test_data: optional held-out data, in the same forms.
        name: a short name (shown in reports).
        description: one line on what it is.
        info: anything else worth keeping (JSON-safe values).

    Raises:
        TypeError: a field of the wrong type (checked when built).

    Examples:
        >>> import torch, lossdoctor as ld
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
        >>> problem = ld.Problem(torch.nn.Linear(4, 2), torch.nn.functional.cross_entropy, (x, y), name="toy")
        >>> ld.hessian(problem.model, problem.loss_fn, problem.train_data).num_params
        10
    """

    model: nn.Module
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor]
    train_data: Any
    test_data: Any = None
    name: str = "problem"
    description: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_module(self.model, "Problem.model")
        check_loss_fn(self.loss_fn, "Problem.loss_fn")
        check_data(self.train_data, "train_data")
        if self.test_data is not None:
            check_data(self.test_data, "test_data")
        for name in ("name", "description"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(
                    f"Problem.{name} must be a string, got {describe(getattr(self, name))}."
                )
        if not isinstance(self.info, dict):
            raise TypeError(f"Problem.info must be a dict, got {describe(self.info)}.")


def _as_problem(obj: Any, name: str) -> Problem:
    if isinstance(obj, Problem):
        return obj
    if isinstance(obj, (tuple, list)) and len(obj) in (3, 4):
        return Problem(obj[0], obj[1], obj[2], obj[3] if len(obj) == 4 else None, name=name)
    raise TypeError(
        f"{name} returned {type(obj).__name__}; it must return a lossdoctor.Problem or a "
        "tuple (model, loss_fn, train_data[, test_data])."
    )


def _user_error(spec: str, what: str, err: BaseException) -> UserCodeError:
    """A UserCodeError pointing at the user's own frame.

    The innermost one in their file (or, for a syntax error, the offending line), not lossdoctor's."""
    if isinstance(err, SyntaxError):
        where = f"{err.filename}, line {err.lineno}"
        line = (err.text or "").rstrip()
        detail = f"SyntaxError: {err.msg}"
    else:
        frames = traceback.extract_tb(err.__traceback__)
        ours = str(Path(__file__).resolve().parent)
        user = [
            f
            for f in frames
            if not str(Path(f.filename).resolve()).startswith(ours)
            and not f.filename.startswith("<frozen")
        ]
        frame = user[-1] if user else (frames[-1] if frames else None)
        where = f"{frame.filename}, line {frame.lineno}, in {frame.name}" if frame else "?"
        line = (frame.line or "") if frame else ""
        detail = f"{type(err).__name__}: {err}"
    shown = f"\n    {line.strip()}" if line.strip() else ""
    return UserCodeError(f"problem {spec!r}: {what} failed at {where}:{shown}\n  {detail}")


def _import_function(spec: str) -> Callable[..., Any]:
    module_name, _, func_name = spec.rpartition(":")
    if not module_name or not func_name:
        raise ValueError(
            f"problem {spec!r} is neither a built-in name nor 'package.module:function'."
        )
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        module = _import_file(spec, Path(module_name))
    else:
        module = _import_module(spec, module_name)
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ValueError(f"module {module_name!r} has no function {func_name!r}.")
    return func


def _import_file(spec: str, path: Path) -> ModuleType:
    """The problem's module from a file path (``path/to/file.py:function``)."""
    if not path.is_file():
        raise MissingFileError(f"problem file {path} does not exist.")
    mod_spec = importlib.util.spec_from_file_location(path.stem, path)
    if mod_spec is None or mod_spec.loader is None:
        raise ValueError(f"problem file {path} cannot be imported as Python (name it *.py).")
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as err:
        raise _user_error(spec, f"importing {path}", err) from err
    sys.modules.setdefault(path.stem, module)
    return module


def _import_module(spec: str, module_name: str) -> ModuleType:
    """The problem's module by its dotted name, the working directory on the path."""
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # so `mymodule:fn` finds the user's own files
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if (
            err.name
            and module_name.split(".")[0] != err.name.split(".")[0]
            and err.name not in module_name
        ):
            raise _user_error(spec, f"importing {module_name}", err) from err
        raise ValueError(
            f"cannot import module {module_name!r} for problem {spec!r}: {err}. "
            "Run from the directory that contains it or install it."
        ) from err
    except Exception as err:
        raise _user_error(spec, f"importing {module_name}", err) from err


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a ``state_dict`` saved with ``torch.save`` into ``model``.

    Reads with ``weights_only=True`` (no code runs from the file). Accepts a bare state dict or
    one stored under ``state_dict`` / ``model_state_dict`` / ``model``. Mismatched keys or
    shapes raise a ``ValueError`` naming them, before anything is copied into the model.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"checkpoint must be a path (a string or pathlib.Path), got {describe(path)}."
        )
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"checkpoint {path} is a folder: name the state_dict file saved with torch.save."
        )
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} does not exist.")
    device = next(iter(model.parameters()), torch.empty(0)).device
    state = _read_state_dict(path, device)
    _check_fits(model, state, path)
    model.load_state_dict(state)


def _read_state_dict(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (``weights_only``), unwrapped from a training checkpoint."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on the way to refusing
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        text = str(err)
        found = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.S)
        reason = (
            found.group(1).strip()
            if found
            else (text.strip().splitlines() or [type(err).__name__])[0]
        )
        raise ValueError(
            f"cannot read checkpoint {path} as a state_dict of tensors ({reason}). It is either not a "
            "file written by torch.save, or it holds Python objects besides tensors, which lossdoctor "
            "does not load because unpickling them could run code: save "
            "torch.save(model.state_dict(), path)."
        ) from err
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {path} does not hold a state_dict of tensors.")
    return state


def _check_fits(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Raise a ValueError naming the missing, unexpected and mis-shaped keys, if any."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:10]}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:10]}")
        if wrong:
            parts.append(
                "shape mismatch for "
                + ", ".join(
                    f"{k} (model {tuple(expected[k].shape)}, file {tuple(state[k].shape)})"
                    for k in wrong[:10]
                )
            )
        raise ValueError(f"checkpoint {path} does not fit the model: {'; '.join(parts)}.")


def load_problem(spec: str, *, checkpoint: str | Path | None = None, **kwargs: Any) -> Problem:
    """Load a built-in problem by name, or the user's own ``package.module:function``.

    The user's function (or ``path/to/file.py:function``) is called with ``kwargs`` and returns
    a :class:`Problem` or a tuple ``(model, loss_fn, train_data[, test_data])``. Building a
    problem leaves the caller's RNG where it was.

    Args:
        spec: a built-in name (see ``lossdoctor.zoo.BUILTIN``: ``"mnist1d-mlp"``,
            ``"mnist1d-cnn"``, ``"lecture-saddle"``) or ``"package.module:function"``.
        checkpoint: a ``state_dict`` file to load into the model.
        **kwargs: passed to the problem's function.

    Returns:
        The problem.

    Raises:
        ValueError: an unknown name, bad options for it, or a checkpoint that does not fit.
        MissingFileError: the file named is not there.
        UserCodeError: the user's code failed; the message shows their file and line.

    Examples:
        >>> import lossdoctor as ld
        >>> p = ld.load_problem("lecture-saddle", w1=0.5, w2=0.5)
        >>> p.name, p.description
        ('lecture-saddle', 'y = w1*w2*x, x = 1, target 1, MSE: L = (1 - w1*w2)^2')
    """
    from .zoo import BUILTIN, build

    if not isinstance(spec, str):
        raise TypeError(
            f"problem must be a built-in name ({', '.join(sorted(BUILTIN))}) or "
            f"'package.module:function', got {describe(spec)}."
        )
    # Building a problem seeds and draws (initial weights, generated data): on a copy of the RNG,
    # so loading a problem leaves the caller's RNG where it was.
    with preserved_rng():
        if spec in BUILTIN:
            problem = build(spec, **kwargs)
        else:
            if ":" not in spec:
                raise ValueError(
                    f"unknown problem {spec!r}: built-in problems are {sorted(BUILTIN)}; "
                    "your own is named 'package.module:function' or 'path/to/file.py:function'."
                )
            func = _import_function(spec)
            try:
                made = func(**kwargs)
            except TypeError as err:
                if err.__traceback__ is not None and err.__traceback__.tb_next is None:
                    # raised by the call itself: the function's signature does not fit
                    raise ValueError(
                        f"problem {spec!r} cannot be called with {kwargs or 'no arguments'}: {err}."
                    ) from err
                raise _user_error(spec, "calling the function", err) from err
            except Exception as err:
                raise _user_error(spec, "calling the function", err) from err
            problem = _as_problem(made, spec)
    if checkpoint is not None:
        load_checkpoint(problem.model, checkpoint)
        problem.info["checkpoint"] = str(checkpoint)
    return problem
