"""Leave the user's model exactly as it was: snapshots and restores of parameters, buffers,
train/eval modes, ``requires_grad``, ``.grad`` and the global RNG state (torch's CPU and CUDA
generators, numpy's and Python's)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ._interrupt import deferred


@dataclass
class RNGState:
    """Every global random state a computation could draw from: torch's CPU generator, every
    initialized CUDA generator, numpy's legacy global state and Python's ``random``."""

    cpu: torch.Tensor
    cuda: list[torch.Tensor] | None
    numpy: Any = None
    python: Any = None

    @classmethod
    def capture(cls) -> RNGState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(torch.get_rng_state(), cuda, np.random.get_state(), random.getstate())

    def restore(self) -> None:
        with deferred():
            self._restore()

    def _restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        if self.numpy is not None:
            np.random.set_state(self.numpy)
        if self.python is not None:
            random.setstate(self.python)


class RNGStream:
    """A private copy of the global RNG for code we run but do not own (a DataLoader drawing its
    shuffle order and worker seeds, a dataset's random augmentation): inside :meth:`active` the
    global generators hold this stream's state, and on leaving they are back to the caller's,
    untouched, while the stream keeps where it got to. A stream made once and used for several
    passes gives each pass the next draws (a new shuffle per epoch); a stream per pass gives every
    pass the same draws. It starts from the global state at creation, so the first pass sees
    what the caller's own loop would have seen."""

    def __init__(self, seed: int | None = None) -> None:
        """``seed=None``: start from the global state now; a seed: start from that seed (a pass
        whose order must not depend on the caller's RNG at all)."""
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
    """Run with the global RNG seeded from ``seed`` (dropout, random augmentation inside a
    training run), then put the caller's state back: the result depends on ``seed`` only, and
    the caller's RNG does not move."""
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
    return [m.training for m in model.modules()]


def restore_modes(model: nn.Module, modes: list[bool]) -> None:
    for m, training in zip(model.modules(), modes):
        m.training = training


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    state = RNGState.capture()
    try:
        yield
    finally:
        state.restore()



@torch.no_grad()
def load_flat(params: Sequence[torch.Tensor], vector: torch.Tensor) -> None:
    """Write the flat ``vector`` into ``params`` in order, each piece cast to its parameter's device
    and dtype (the inverse of concatenating the flattened parameters)."""
    sizes = [p.numel() for p in params]
    if vector.numel() != sum(sizes):
        raise ValueError(f"the vector has {vector.numel()} entries; the parameters hold {sum(sizes)}.")
    for p, piece in zip(params, torch.split(vector.reshape(-1), sizes), strict=True):
        p.copy_(piece.view_as(p))


@contextlib.contextmanager
def evaluation_mode(model: nn.Module, mode: str = "eval") -> Iterator[None]:
    """Put ``model`` in eval (or train) mode and restore every module's flag afterwards.

    In train mode, buffers such as BatchNorm running statistics would be updated by each
    forward pass; they are restored too, and so is the RNG.
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
    """Snapshot everything about ``model`` and put it back on exit, even after an error
    or a KeyboardInterrupt. For analyses that move the parameters (line searches,
    landscapes, training on a copy)."""
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
    """Named trainable parameters, each shared (tied) parameter once, in module order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters (none with requires_grad=True): "
                         "there is no Hessian to compute. Unfreeze the parameters to analyse.")
    return named


def model_device(params: Sequence[torch.Tensor]) -> torch.device:
    devices = {p.device for p in params}
    if len(devices) > 1:
        raise ValueError(f"the model's trainable parameters are spread over several devices "
                         f"({sorted(str(d) for d in devices)}); lossdoctor needs them on one device.")
    return next(iter(devices))
