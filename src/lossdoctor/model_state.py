"""Leave the user's model exactly as it was.

Snapshots and restores of parameters, buffers, train/eval modes, ``requires_grad``, ``.grad`` and
the global RNG state (torch's CPU and CUDA generators, numpy's and Python's)."""

from __future__ import annotations

import contextlib
import fnmatch
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ._interrupt import deferred, uninterrupted


@dataclass
class RNGState:
    """Every global random state a computation could draw from.

    Torch's CPU generator, every initialized CUDA generator, numpy's legacy global state and
    Python's ``random``."""

    cpu: torch.Tensor
    cuda: list[torch.Tensor] | None
    numpy: Any = None
    python: Any = None

    @classmethod
    def capture(cls) -> RNGState:
        """The state of every RNG torch, numpy and Python keep (CUDA's too, once initialized)."""
        cuda = (
            torch.cuda.get_rng_state_all()
            if torch.cuda.is_available() and torch.cuda.is_initialized()
            else None
        )
        return cls(torch.get_rng_state(), cuda, np.random.get_state(), random.getstate())

    def restore(self) -> None:
        """Put every RNG back to this state (not interruptible by Ctrl-C halfway).

        A Ctrl-C landing before the signal is held (the first bytecodes of this call) restarts
        the restore, and is raised once it is done."""
        uninterrupted(self._restore)

    def _restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        if self.numpy is not None:
            np.random.set_state(self.numpy)
        if self.python is not None:
            random.setstate(self.python)


class RNGStream:
    """A private copy of the global RNG for code we run but do not own (a DataLoader drawing its shuffle order and worker seeds, a dataset's random augmentation): inside :meth:`active` the global generators hold this stream's state, and on leaving they are back to the caller's, untouched, while the stream keeps where it got to.

    A stream made once and used for several passes gives each pass the next draws (a new shuffle per
    epoch); a stream per pass gives every pass the same draws. It starts from the global state at
    creation, so the first pass sees what the caller's own loop would have seen."""

    def __init__(self, seed: int | None = None) -> None:
        """``seed=None``: start from the global state now; a seed: start from that seed (a pass whose order must not depend on the caller's RNG at all)."""
        self.state = RNGState.capture()
        if seed is not None:
            with deferred():
                torch.default_generator.manual_seed(seed)
                np.random.seed(seed % 2**32)
                random.seed(seed)
                self.state, caller = RNGState.capture(), self.state
                caller.restore()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """A context manager running its body on this stream of random numbers, the caller's put back after."""
        caller = RNGState.capture()
        self.state.restore()
        try:
            yield
        finally:
            with deferred():
                self.state = RNGState.capture()
                caller.restore()


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run with the global RNG seeded from ``seed`` (dropout, random augmentation inside a training run), then put the caller's state back: the result depends on ``seed`` only, and the caller's RNG does not move."""
    if device is not None and device.type == "cuda":
        torch.cuda.init()  # so its generator is captured and restored too
    state = RNGState.capture()
    try:
        torch.default_generator.manual_seed(seed)
        if device is not None and device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        yield
    finally:
        state.restore()


def capture_modes(model: nn.Module) -> list[bool]:
    """Every module's ``training`` flag, in ``model.modules()`` order."""
    return [m.training for m in model.modules()]


def restore_modes(model: nn.Module, modes: list[bool]) -> None:
    """Set every module's ``training`` flag back from :func:`capture_modes`."""
    for m, training in zip(model.modules(), modes):
        m.training = training


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """A context manager that puts every RNG (torch, CUDA, numpy, Python) back as it was on exit.

    Yields:
        Nothing: the body may draw random numbers freely.

    Examples:
        >>> import torch
        >>> from lossdoctor.model_state import preserved_rng
        >>> _ = torch.manual_seed(0)
        >>> with preserved_rng():
        ...     _ = torch.rand(3)
        >>> torch.rand(1)  # the same number as right after manual_seed(0)
        tensor([0.4963])
    """
    state = RNGState.capture()
    try:
        yield
    finally:
        state.restore()


@torch.no_grad()
def load_flat(params: Sequence[torch.Tensor], vector: torch.Tensor) -> None:
    """Write the flat ``vector`` into ``params`` in order, each piece cast to its parameter's device and dtype (the inverse of concatenating the flattened parameters)."""
    sizes = [p.numel() for p in params]
    if vector.numel() != sum(sizes):
        raise ValueError(
            f"the vector has {vector.numel()} entries; the parameters hold {sum(sizes)}."
        )
    for p, piece in zip(params, torch.split(vector.reshape(-1), sizes), strict=True):
        p.copy_(piece.view_as(p))


class ModeNotice(UserWarning):
    """The mode a curvature analysis used was the default, and the model has layers that behave differently in the other (BatchNorm, dropout).

    Silence it by passing ``mode=`` explicitly."""


def mode_dependent_layers(model: nn.Module) -> tuple[list[str], list[str]]:
    """Type names of the layers whose output depends on train/eval mode.

    Returns (normalizations that track running statistics, dropouts with p > 0)."""
    norms = sorted(
        {
            type(m).__name__
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
        }
    )
    drops = sorted(
        {
            type(m).__name__
            for m in model.modules()
            if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0
        }
    )
    return norms, drops


def default_mode_notice(model: nn.Module, mode: str = "eval") -> str | None:
    """One line saying which mode a defaulted analysis used on a model with BatchNorm or dropout, and how to choose the other; None for a model the mode does not change."""
    norms, drops = mode_dependent_layers(model)
    if not norms and not drops:
        return None
    trained = "in train mode" if model.training else "in eval mode now"
    if norms:
        other = "pass mode='train' for the network as it is trained (batch statistics" + (
            f"; {', '.join(drops)} must then have p=0, a random loss has no Hessian)"
            if drops
            else ")"
        )
        return (
            f"lossdoctor analysed the eval-mode network (mode='eval', the default: {', '.join(norms)} on "
            f"running statistics{', dropout off' if drops else ''}); the model is {trained}. {other}, "
            "or mode='eval' to keep this and silence the notice."
        )
    return (
        f"lossdoctor analysed the model with {', '.join(drops)} off (mode='eval', the default: the "
        "deterministic loss; mode='train' is refused while dropout is active). Pass mode='eval' to "
        "silence this notice."
    )


@contextlib.contextmanager
def evaluation_mode(model: nn.Module, mode: str = "eval") -> Iterator[None]:
    """Put ``model`` in eval (or train) mode and restore every module's flag afterwards.

    In train mode, buffers such as BatchNorm running statistics would be updated by each
    forward pass; they are restored too, and so is the RNG.

    Args:
        model: any ``nn.Module``.
        mode: ``"eval"`` or ``"train"``.

    Yields:
        Nothing: the body runs with the model in ``mode``.

    Examples:
        >>> import torch
        >>> from lossdoctor.model_state import evaluation_mode
        >>> model = torch.nn.Linear(2, 1).train()
        >>> with evaluation_mode(model):
        ...     print(model.training)
        False
        >>> model.training
        True
    """
    modes = capture_modes(model)
    buffers = None
    rng = RNGState.capture()
    try:
        if mode == "train":
            buffers = [(b, b.detach().clone()) for b in model.buffers()]
            model.train()
        else:
            model.eval()
        yield
    finally:
        with deferred():
            restore_modes(model, modes)
            if buffers is not None:
                with torch.no_grad():
                    for b, saved in buffers:
                        b.copy_(saved)
            rng.restore()


@contextlib.contextmanager
def preserved_model(model: nn.Module) -> Iterator[None]:
    """Snapshot everything about ``model`` and put it back on exit, even after an error or Ctrl-C.

    Parameters, buffers, ``requires_grad`` flags, gradients, train/eval modes and the RNG. For
    analyses that move the parameters (line searches, landscapes, training on a copy).

    Args:
        model: any ``nn.Module``.

    Yields:
        Nothing: the body may change the model freely.

    Examples:
        >>> import torch
        >>> from lossdoctor.model_state import preserved_model
        >>> model = torch.nn.Linear(2, 1)
        >>> before = model.weight.detach().clone()
        >>> with preserved_model(model), torch.no_grad():
        ...     _ = model.weight.zero_()
        >>> torch.equal(model.weight, before)
        True
    """
    modes = capture_modes(model)
    rng = RNGState.capture()
    params = list(model.parameters())
    saved_params = [p.detach().clone() for p in params]
    saved_flags = [p.requires_grad for p in params]
    saved_grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    buffers = list(model.buffers())
    saved_buffers = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        with deferred(), torch.no_grad():
            for p, v, flag, g in zip(params, saved_params, saved_flags, saved_grads):
                p.copy_(v)
                p.requires_grad_(flag)
                p.grad = g
            for b, v in zip(buffers, saved_buffers):
                b.copy_(v)
            restore_modes(model, modes)
            rng.restore()


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Named trainable parameters, each shared (tied) parameter once, in module order.

    Args:
        model: any ``nn.Module``.

    Returns:
        ``(name, parameter)`` pairs of the parameters with ``requires_grad=True``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: the model has no trainable parameter.

    Examples:
        >>> import torch
        >>> from lossdoctor.model_state import trainable_parameters
        >>> [name for name, _ in trainable_parameters(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)))]
        ['0.weight', '0.bias', '1.weight', '1.bias']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(
            "the model has no trainable parameters (none with requires_grad=True): "
            "there is no Hessian to compute. Unfreeze the parameters to analyse."
        )
    return named


def _available_names(model: nn.Module, limit: int = 8) -> str:
    names = [n for n, _ in model.named_parameters()]
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _describe_item(item: Any) -> str:
    if isinstance(item, torch.Tensor):
        return f"a tensor of shape {tuple(item.shape)}"
    if isinstance(item, nn.Module):
        return f"a {type(item).__name__} module"
    return repr(item)


def selected_parameters(model: nn.Module, params: Any = None) -> list[tuple[str, nn.Parameter]]:
    """The parameters an analysis differentiates with respect to, as ``(name, parameter)`` in the model's own order (``named_parameters()``), each shared (tied) parameter once.

    ``params=None``: every trainable parameter (:func:`trainable_parameters`). Otherwise one of,
    or a list (any iterable, ``module.parameters()`` included) of:

    - a parameter tensor of ``model`` (``model.fc.weight``);
    - a name: a parameter's name as ``model.named_parameters()`` gives it (``"fc.weight"``), a
      submodule's name (``"layer2"``: its parameters), or a glob pattern over parameter names
      (``"layer2.*"``, ``"*.bias"``);
    - a submodule of ``model`` (its parameters);
    - a ``(name, tensor)`` pair as ``named_parameters()`` yields it (the tensor counts).

    ``requires_grad`` is never changed: a parameter named explicitly (a tensor, an exact name)
    that is frozen is refused, because autograd cannot differentiate with respect to it without
    changing its flag; frozen parameters that a module or a pattern covers are left out (as the
    whole-model default leaves them out), and a selection of nothing trainable is refused.

    Raises:
        TypeError: ``params`` (or one of its items) is none of the above.
        ValueError: a name or pattern matches nothing, a tensor or module is not part of
            ``model``, an explicitly named parameter is frozen, or nothing trainable is selected.
    """
    if params is None:
        return trainable_parameters(model)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    items, single = _param_items(model, params)
    selection = _Selection(model)
    for i, item in enumerate(items):
        selection.add(
            item[1] if _is_named_pair(item) else item, "params" if single else f"params[{i}]"
        )
    named = [(n, p) for n, p in model.named_parameters() if id(p) in selection.chosen]
    if not named:
        raise ValueError(
            "params selects no trainable parameter: every parameter it covers is frozen "
            "(requires_grad=False), and lossdoctor never changes requires_grad. Select "
            "trainable parameters, or unfreeze them yourself first."
        )
    return named


def _is_named_pair(item: Any) -> bool:
    """A ``(name, tensor)`` pair as ``named_parameters()`` yields it."""
    return (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[0], str)
        and isinstance(item[1], torch.Tensor)
    )


def _param_items(model: nn.Module, params: Any) -> tuple[list[Any], bool]:
    """``params`` as a non-empty list of items, and whether it was a single item."""
    single = isinstance(params, (str, torch.Tensor, nn.Module)) or _is_named_pair(params)
    if single:
        items = [params]
    elif isinstance(params, Mapping):
        items = list(params.values())  # a dict of {name: tensor}, such as dict(named_parameters())
    elif isinstance(params, Iterable) and not isinstance(params, bytes):
        items = list(params)
    else:
        raise TypeError(
            f"params must be parameter tensors, names (glob patterns allowed) or modules of the "
            f"model, or a list of them; got {_describe_item(params)} ({type(params).__name__})."
        )
    if not items:
        raise ValueError(
            "params is empty: it selects no parameters. Pass parameter tensors, names such as "
            f"{_available_names(model, 3)}, or modules of the model; or params=None for all."
        )
    return items, single


class _Selection:
    """The parameters chosen so far (by id), checked against the model's own."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        # Every alias of a tied parameter, so that any of its names selects it.
        self.aliases: dict[str, nn.Parameter] = dict(model.named_parameters(remove_duplicate=False))
        self.modules = dict(model.named_modules(remove_duplicate=False))
        self.module_ids = {id(m) for m in self.modules.values()}
        self.known = {id(p) for p in self.aliases.values()}
        self.chosen: set[int] = set()

    def take(self, p: torch.Tensor, what: str, explicit: bool) -> None:
        """Choose ``p``; a frozen one is refused when named ``explicit``ly, else left out."""
        if id(p) not in self.known:
            raise ValueError(
                f"{what} is not a parameter of this model (not among its "
                "named_parameters()); pass the model's own tensors, names or modules."
            )
        if not p.requires_grad:
            if explicit:
                raise ValueError(
                    f"{what} is frozen (requires_grad=False). lossdoctor never changes "
                    "requires_grad, and autograd cannot differentiate with respect to a frozen "
                    "tensor: leave it out of params, or unfreeze it yourself first."
                )
            return
        self.chosen.add(id(p))

    def add(self, item: Any, where: str) -> None:
        """Choose what one item of ``params`` (``where``) selects: a tensor, a module or a name."""
        if isinstance(item, torch.Tensor):
            self.take(item, f"{where} ({_describe_item(item)})", explicit=True)
        elif isinstance(item, nn.Module):
            if id(item) not in self.module_ids:
                raise ValueError(
                    f"{where} ({_describe_item(item)}) is not a submodule of this model; "
                    "pass one of model.modules(), or its name."
                )
            owned = list(item.parameters())
            if not owned:
                raise ValueError(f"{where} ({_describe_item(item)}) has no parameters.")
            for p in owned:
                self.take(p, f"{where} ({_describe_item(item)})", explicit=False)
        elif isinstance(item, str):
            self.add_name(item, where)
        else:
            raise TypeError(
                f"{where} must be a parameter tensor, a name (glob patterns allowed) or a "
                f"module of the model, got {_describe_item(item)} ({type(item).__name__})."
            )

    def add_name(self, item: str, where: str) -> None:
        """Choose by name: a parameter's, a submodule's, or a glob pattern over parameter names."""
        if item in self.aliases:
            self.take(self.aliases[item], f"{where} = {item!r}", explicit=True)
            return
        if item in self.modules and item:
            owned = list(self.modules[item].parameters())
            if not owned:
                raise ValueError(f"{where} = {item!r} names a module without parameters.")
        else:
            owned = [p for name, p in self.aliases.items() if fnmatch.fnmatchcase(name, item)]
            if not owned:
                raise ValueError(
                    f"{where} = {item!r} matches no parameter or module name of the "
                    f"model; its parameters are {_available_names(self.model)} (glob patterns "
                    "such as 'layer2.*' are allowed)."
                )
        for p in owned:
            self.take(p, f"{where} = {item!r}", explicit=False)


def model_device(params: Sequence[torch.Tensor]) -> torch.device:
    """The one device holding every trainable parameter; several devices are an error."""
    devices = {p.device for p in params}
    if len(devices) > 1:
        raise ValueError(
            f"the model's trainable parameters are spread over several devices "
            f"({sorted(str(d) for d in devices)}); lossdoctor needs them on one device."
        )
    return next(iter(devices))
