"""What the user analyses: a model, a loss, training data and optional test data, loaded from
a built-in name or the user's own ``package.module:function``, optionally with a checkpoint."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import check_data


@dataclass
class Problem:
    """A model with its loss and data. ``loss_fn(model(inputs), targets)`` is the batch-mean loss."""

    model: nn.Module
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor]
    train_data: Any
    test_data: Any = None
    name: str = "problem"
    description: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"Problem.model must be a torch.nn.Module, got {type(self.model).__name__}.")
        if not callable(self.loss_fn):
            raise TypeError(f"Problem.loss_fn must be callable, got {type(self.loss_fn).__name__}.")
        check_data(self.train_data)
        if self.test_data is not None:
            check_data(self.test_data)


def _as_problem(obj: Any, name: str) -> Problem:
    if isinstance(obj, Problem):
        return obj
    if isinstance(obj, (tuple, list)) and len(obj) in (3, 4):
        return Problem(*obj, name=name)
    raise TypeError(f"{name} returned {type(obj).__name__}; it must return a lossdoctor.Problem or a "
                    "tuple (model, loss_fn, train_data[, test_data]).")


def _import_function(spec: str) -> Callable[..., Any]:
    module_name, _, func_name = spec.rpartition(":")
    if not module_name or not func_name:
        raise ValueError(f"problem {spec!r} is neither a built-in name nor 'package.module:function'.")
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise FileNotFoundError(f"problem file {path} does not exist.")
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(mod_spec)  # type: ignore[arg-type]
        sys.modules.setdefault(path.stem, module)
        mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))  # so `mymodule:fn` finds the user's own files
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            raise ValueError(f"cannot import module {module_name!r} for problem {spec!r}: {err}. "
                             "Run from the directory that contains it or install it.") from err
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ValueError(f"module {module_name!r} has no function {func_name!r}.")
    return func


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a ``state_dict`` saved with ``torch.save`` into ``model``.

    Reads with ``weights_only=True`` (no code runs from the file). Accepts a bare state dict or
    one stored under ``state_dict`` / ``model_state_dict`` / ``model``. Mismatched keys or
    shapes raise a ``ValueError`` naming them, before anything is copied into the model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist.")
    device = next(iter(model.parameters()), torch.empty(0)).device
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        raise ValueError(f"cannot read checkpoint {path} as a weights-only PyTorch file: {err}") from err
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {path} does not hold a state_dict of tensors.")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:10]}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:10]}")
        if wrong:
            parts.append("shape mismatch for " + ", ".join(
                f"{k} (model {tuple(expected[k].shape)}, file {tuple(state[k].shape)})" for k in wrong[:10]))
        raise ValueError(f"checkpoint {path} does not fit the model: {'; '.join(parts)}.")
    model.load_state_dict(state)


def load_problem(spec: str, *, checkpoint: str | Path | None = None, **kwargs: Any) -> Problem:
    """A built-in problem by name (see ``lossdoctor.zoo.BUILTIN``) or the user's own
    ``package.module:function`` (or ``path/to/file.py:function``), called with ``kwargs``."""
    from .zoo import BUILTIN, build

    if spec in BUILTIN:
        problem = build(spec, **kwargs)
    else:
        if ":" not in spec:
            raise ValueError(f"unknown problem {spec!r}: built-in problems are {sorted(BUILTIN)}; "
                             "your own is named 'package.module:function'.")
        problem = _as_problem(_import_function(spec)(**kwargs), spec)
    if checkpoint is not None:
        load_checkpoint(problem.model, checkpoint)
        problem.info["checkpoint"] = str(checkpoint)
    return problem
