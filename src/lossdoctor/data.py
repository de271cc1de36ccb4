"""What counts as data: a DataLoader, any re-iterable of ``(inputs, targets)`` batches,
or a single ``(inputs, targets)`` pair. Everything in lossdoctor reads data through here."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

Batch = tuple[Any, torch.Tensor]


def _is_tensorish(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, Mapping):
        return all(isinstance(v, torch.Tensor) for v in x.values())
    if isinstance(x, (tuple, list)):
        return len(x) > 0 and all(isinstance(v, torch.Tensor) for v in x)
    return False


def is_single_batch(data: Any) -> bool:
    """True when ``data`` is one ``(inputs, targets)`` pair rather than a collection of batches.

    ``[(x1, y1), (x2, y2)]`` is a list of batches (its second item is a tuple, not a tensor);
    ``(x, y)`` or ``[x, y]`` with tensors is one pair.
    """
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[1], torch.Tensor)
        and _is_tensorish(data[0])
    )


def check_data(data: Any) -> None:
    """Raise a clear error for data we cannot iterate more than once."""
    if data is None:
        raise ValueError("data is None: pass a DataLoader, a list of (inputs, targets) batches, "
                         "or one (inputs, targets) pair.")
    if is_single_batch(data):
        return
    if isinstance(data, torch.Tensor):
        raise TypeError("data is a single tensor: pass (inputs, targets), a list of such batches, "
                        "or a DataLoader.")
    if not isinstance(data, Iterable):
        raise TypeError(f"data of type {type(data).__name__} is not iterable: pass a DataLoader, "
                        "a list of (inputs, targets) batches, or one (inputs, targets) pair.")
    # not iter(data) is data: that would start a DataLoader's iteration (worker processes, and a
    # draw from the global RNG for its base seed) just to look at it
    if isinstance(data, Iterator):
        raise TypeError("data is a one-shot iterator (e.g. a generator), but curvature needs to pass "
                        "over the data many times: pass a list of batches or a DataLoader instead.")


def iter_batches(data: Any) -> Iterator[Batch]:
    """Yield ``(inputs, targets)`` batches, validating their structure."""
    check_data(data)
    if is_single_batch(data):
        yield data[0], data[1]
        return
    for i, batch in enumerate(data):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(f"batch {i} is a {type(batch).__name__}, expected an (inputs, targets) "
                            "pair. A dataset yielding dicts needs a collate_fn returning (inputs, targets).")
        inputs, targets = batch
        if not _is_tensorish(inputs) or not isinstance(targets, torch.Tensor):
            raise TypeError(f"batch {i}: inputs must be a tensor (or a tuple/dict of tensors) and "
                            f"targets a tensor; got {type(inputs).__name__} and {type(targets).__name__}.")
        yield inputs, targets


def batch_size(targets: torch.Tensor) -> int:
    return int(targets.shape[0]) if targets.dim() > 0 else 1


def map_inputs(fn: Callable[[torch.Tensor], torch.Tensor], inputs: Any) -> Any:
    """Apply ``fn`` to every tensor of ``inputs`` (a tensor, a tuple/list or a dict of tensors),
    keeping the structure ``call_model`` expects."""
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    if isinstance(inputs, Mapping):
        return {k: fn(v) for k, v in inputs.items()}
    return tuple(fn(v) for v in inputs)


def split_batch(inputs: Any, targets: torch.Tensor, size: int) -> Iterator[tuple[Any, torch.Tensor, int]]:
    """Cut one batch into consecutive micro-batches of at most ``size`` samples, yielding
    ``(inputs, targets, samples)``. Every input tensor whose first dimension is the batch's size
    is cut; any other input (a mask shared by the whole batch) goes whole to every part."""
    n = batch_size(targets)
    if n <= size:
        yield inputs, targets, n
        return
    def cut(x: torch.Tensor, a: int, b: int) -> torch.Tensor:
        return x[a:b] if x.dim() > 0 and x.shape[0] == n else x

    for a in range(0, n, size):
        b = min(n, a + size)
        yield map_inputs(functools.partial(cut, a=a, b=b), inputs), targets[a:b], b - a


def to_device(inputs: Any, device: torch.device) -> Any:
    return map_inputs(lambda x: x.to(device, non_blocking=True), inputs)


def input_device(inputs: Any) -> torch.device:
    if isinstance(inputs, torch.Tensor):
        return inputs.device
    if isinstance(inputs, Mapping):
        return next(iter(inputs.values())).device
    return inputs[0].device


def place(inputs: Any, targets: torch.Tensor, device: torch.device) -> Batch:
    """Move a batch to ``device``. CPU data (what DataLoaders yield) moves to the model's device;
    data already on another accelerator is a mistake we report rather than silently copy."""
    for what, dev in (("inputs", input_device(inputs)), ("targets", targets.device)):
        if dev != device and dev.type != "cpu":
            raise ValueError(f"{what} are on {dev} but the model is on {device}: move the data "
                             f"to {device} (or to the CPU) before calling lossdoctor.")
    return to_device(inputs, device), targets.to(device, non_blocking=True)


def call_model(model: torch.nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(*inputs)
