"""What counts as data, and how a batch meets the user's model and loss. Everything in lossdoctor
reads data through here.

Data is a ``DataLoader``, any re-iterable of ``(inputs, targets)`` batches, one
``(inputs, targets)`` pair, or a map-style ``Dataset`` (a ``TensorDataset``, your own) whose
samples are read in batches of :data:`DATASET_BATCH_SIZE` (256) in order; wrap a dataset in
your own ``DataLoader`` to choose the batch size. Inputs are a tensor, a tuple/list of tensors
(``model(*inputs)``) or a dict of tensors (``model(**inputs)``); targets are a tensor.

Every batch is checked as it is read: a pair, tensors, and as many inputs as targets (the first
dimension is the batch: a plain tensor input must have as many rows as the targets; of a
tuple/dict input at least one tensor must, the others, such as a mask shared by the batch, may
be any shape). A pass over a ``DataLoader`` or dataset runs on a private copy of the global RNG
(:class:`lossdoctor.model_state.RNGStream`): its shuffle and random augmentation never move the
caller's RNG.

:func:`batch_loss` is the one place a batch meets the model and the loss: an error raised there
by the user's model or loss comes back as a ``ValueError`` with the batch index, the shapes and
dtypes, the user's own line, and the likely fix.
"""

from __future__ import annotations

import functools
import sysconfig
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .model_state import RNGStream

Batch = tuple[Any, torch.Tensor]
DATASET_BATCH_SIZE = 256  # a map-style Dataset is read in batches of this many samples
DATA_FORMS = ("pass a DataLoader, a Dataset, a list of (inputs, targets) batches, or one (inputs, targets) "
              "pair")


def _is_tensorish(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, Mapping):
        return len(x) > 0 and all(isinstance(v, torch.Tensor) for v in x.values())
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


def is_dataset(data: Any) -> bool:
    """A torch ``Dataset`` of samples (map-style or iterable), not yet batched."""
    return isinstance(data, Dataset) and not isinstance(data, DataLoader)


def check_data(data: Any, name: str = "data") -> None:
    """Raise a clear error for data we cannot read (more than once); batches held in a list are
    checked too (it costs nothing: no loader runs)."""
    _check_container(data, name)
    if isinstance(data, (list, tuple)) and not is_single_batch(data):
        for i, batch in enumerate(data):
            if isinstance(batch, (tuple, list)) and len(batch) == 2:
                _check_batch(batch[0], batch[1], i, name)


def _check_container(data: Any, name: str) -> None:
    if data is None:
        raise ValueError(f"{name} is None: {DATA_FORMS}.")
    if is_single_batch(data):
        _check_batch(data[0], data[1], 0, name, single=True)
        return
    if is_dataset(data):
        if not isinstance(data, torch.utils.data.IterableDataset) and not hasattr(data, "__len__"):
            raise TypeError(f"{name} is a {type(data).__name__} without __len__: give the Dataset a __len__, "
                            "or wrap it in a DataLoader.")
        return
    if isinstance(data, torch.Tensor):
        raise TypeError(f"{name} is a single tensor: pass (inputs, targets), a list of such batches, "
                        "a TensorDataset or a DataLoader.")
    if isinstance(data, (str, bytes)):
        raise TypeError(f"{name} is a string ({data[:40]!r}): {DATA_FORMS}. Built-in problems are loaded "
                        "with lossdoctor.load_problem.")
    if isinstance(data, Mapping):
        raise TypeError(f"{name} is a {type(data).__name__}: {DATA_FORMS} (a dict of tensors is the inputs "
                        "of one batch: pass (inputs, targets)).")
    if not isinstance(data, Iterable):
        raise TypeError(f"{name} of type {type(data).__name__} is not iterable: {DATA_FORMS}.")
    # not iter(data) is data: that would start a DataLoader's iteration (worker processes, and a
    # draw from the global RNG for its base seed) just to look at it
    if isinstance(data, Iterator):
        raise TypeError(f"{name} is a one-shot iterator (e.g. a generator), but lossdoctor passes over the "
                        "data several times: pass a list of batches or a DataLoader instead.")


def _shape(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k!r}: {_shape(v)}" for k, v in x.items()) + "}"
    if isinstance(x, (tuple, list)):
        return "(" + ", ".join(_shape(v) for v in x) + ")"
    return type(x).__name__


def _input_tensors(inputs: Any) -> list[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    return list(inputs.values()) if isinstance(inputs, Mapping) else list(inputs)


def _check_batch(inputs: Any, targets: Any, index: int, name: str, single: bool = False) -> None:
    where = f"{name}" if single else f"{name}: batch {index}"
    if not _is_tensorish(inputs) or not isinstance(targets, torch.Tensor):
        raise TypeError(f"{where}: inputs must be a tensor (or a tuple/dict of tensors) and targets a tensor; "
                        f"got {type(inputs).__name__} and {type(targets).__name__}.")
    if targets.dim() == 0:
        return  # one unbatched sample
    n = targets.shape[0]
    firsts = [t.shape[0] if t.dim() > 0 else None for t in _input_tensors(inputs)]
    matched = firsts[0] == n if isinstance(inputs, torch.Tensor) else n in firsts
    if not matched:
        shown = firsts[0] if isinstance(inputs, torch.Tensor) else firsts
        raise ValueError(f"{where} pairs inputs of shape {_shape(inputs)} with targets of shape {_shape(targets)}: "
                         f"{shown} input rows against {n} targets. lossdoctor reads the first dimension as the "
                         "batch, so inputs and targets must have as many rows: check how the batches were cut "
                         "(X[a:b] with Y[a:b]); for sequence models, put the batch first (batch_first=True).")


def _loader(data: Any) -> Any:
    return DataLoader(data, batch_size=DATASET_BATCH_SIZE) if is_dataset(data) else data


def iter_batches(data: Any, name: str = "data", rng: RNGStream | None = None) -> Iterator[Batch]:
    """Yield ``(inputs, targets)`` batches, validating each one.

    A DataLoader, a dataset or any other iterable that may draw random numbers is read on
    ``rng`` (a fresh :class:`RNGStream` by default, so every pass draws the same), never on the
    caller's global RNG. Lists and tuples of batches are read as they are.
    """
    _check_container(data, name)
    if is_single_batch(data):
        yield data[0], data[1]
        return
    source = _loader(data)
    if isinstance(source, (list, tuple)):
        batches: Iterable[Any] = source
    else:
        batches = _guarded(source, rng if rng is not None else RNGStream())
    for i, batch in enumerate(batches):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(f"{name}: batch {i} is a {type(batch).__name__}, expected an (inputs, targets) "
                            "pair. A dataset yielding dicts needs a collate_fn returning (inputs, targets).")
        inputs, targets = batch
        _check_batch(inputs, targets, i, name)
        yield inputs, targets


def _guarded(source: Iterable[Any], rng: RNGStream) -> Iterator[Any]:
    """Iterate ``source`` with every step (``iter`` and each ``next``) on ``rng``."""
    with rng.active():
        it = iter(source)
    while True:
        with rng.active():
            try:
                batch = next(it)
            except StopIteration:
                return
        yield batch


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


# -- the user's model and loss on one batch ------------------------------------------------------
def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


_NOT_USER = tuple(str(Path(p).resolve()) for p in (
    Path(torch.__file__).parent, Path(np.__file__).parent, Path(__file__).parent, sysconfig.get_paths()["stdlib"]))


def user_frame(err: BaseException) -> str:
    """``" (raised at file.py:12 in forward: <line>)"``: the innermost frame of the traceback
    that is the user's code (not torch's, lossdoctor's or the standard library's), or ``""``."""
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        path = str(Path(frame.filename).resolve())
        if not path.startswith(_NOT_USER) and not frame.filename.startswith("<"):
            line = f": {frame.line.strip()}" if frame.line else ""
            return f" (at {frame.filename}:{frame.lineno} in {frame.name}{line})"
    return ""


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _class_count(outputs: Any) -> int | None:
    return int(outputs.shape[1]) if isinstance(outputs, torch.Tensor) and outputs.dim() >= 2 else None


def _loss_hint(err: BaseException, outputs: Any, targets: torch.Tensor) -> str:
    """The likely fix for an error the loss function raised, read from the error and the data."""
    text = str(err).lower()
    classes = _class_count(outputs)
    if targets.is_floating_point() and ("long" in text or "expected scalar type" in text
                                        or "class probabilities" in text or "target dtype" in text):
        return ("cross-entropy (and NLL) losses want class indices of dtype torch.long, one per sample: "
                "pass targets.long() (or class probabilities shaped like the outputs).")
    if "multi-target" in text or "1d target tensor expected" in text:
        return (f"cross-entropy wants one class index per sample (targets of shape ({targets.shape[0]},)), but "
                f"the targets have shape {tuple(targets.shape)}; for several labels per sample use "
                "nn.BCEWithLogitsLoss with float targets.")
    if ("out of bounds" in text or "index out of range" in text or "out of range" in text
            or isinstance(err, IndexError)) and not targets.is_floating_point() and targets.numel():
        top, low = int(targets.max()), int(targets.min())
        got = f"the targets hold classes {low}..{top}"
        if classes is not None:
            return (f"{got} but the model outputs {classes} classes: class indices must lie in [0, {classes}). "
                    f"Give the model {top + 1} outputs, or relabel the classes from 0.")
        return f"{got}: class indices must lie in [0, number of classes)."
    if "size" in text or "shape" in text or "match" in text or "broadcast" in text:
        return (f"the loss cannot pair outputs of shape {_shape(outputs)} with targets of shape {_shape(targets)}: "
                "check that the model's output has the targets' layout (class indices for cross-entropy, "
                "the same shape for MSE).")
    if "device" in text:
        return "put the model and the data on one device."
    return "check the loss function on this batch."


def _model_hint(err: BaseException, inputs: Any, model: torch.nn.Module) -> str:
    text = str(err).lower()
    param = next(iter(model.parameters()), None)
    dtypes = {t.dtype for t in _input_tensors(inputs) if t.is_floating_point()}
    if param is not None and dtypes and param.dtype not in dtypes and ("dtype" in text or "scalar type" in text
                                                                        or "double" in text or "float" in text):
        got = ", ".join(sorted(str(d).replace("torch.", "") for d in dtypes))
        want = str(param.dtype).replace("torch.", "")
        return f"the inputs are {got} but the model's parameters {want}: convert the inputs (x.to({param.dtype}))."
    if "shape" in text or "size" in text or "mat1" in text or "dimension" in text:
        return (f"the inputs' shape {_shape(inputs)} does not fit the model: check the number of features "
                "and the layout (the first dimension is the batch).")
    if "device" in text:
        return "put the model and the data on one device."
    return "check the model on this batch."


def batch_loss(model: torch.nn.Module, loss_fn: Callable, inputs: Any, targets: torch.Tensor,
               index: int) -> torch.Tensor:
    """``loss_fn(model(inputs), targets)`` on batch ``index``, as a 0-d tensor (see
    :func:`forward`)."""
    return forward(model, loss_fn, inputs, targets, index)[1]


def forward(model: torch.nn.Module, loss_fn: Callable, inputs: Any, targets: torch.Tensor,
            index: int) -> tuple[Any, torch.Tensor]:
    """The model's outputs and ``loss_fn(outputs, targets)`` (a 0-d tensor) on batch ``index``.

    An error raised by the model or the loss comes back as a ``ValueError`` naming the batch,
    the shapes and dtypes, the user's own line and the likely fix (out-of-memory errors pass
    through unchanged). The result must be a scalar tensor; where gradients are being recorded it
    must depend on the parameters (a detached loss is refused).
    """
    try:
        outputs = call_model(model, inputs)
    except Exception as err:
        if is_out_of_memory(err):
            raise
        raise ValueError(f"the model failed on batch {index} (inputs {_shape(inputs)}){user_frame(err)}: "
                         f"{_first_line(err)}. Likely fix: {_model_hint(err, inputs, model)}") from err
    try:
        loss = loss_fn(outputs, targets)
    except Exception as err:
        if is_out_of_memory(err):
            raise
        raise ValueError(f"the loss function failed on batch {index} (outputs {_shape(outputs)}, targets "
                         f"{_shape(targets)}){user_frame(err)}: {_first_line(err)}. Likely fix: "
                         f"{_loss_hint(err, outputs, targets)}") from err
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss_fn returned {type(loss).__name__} on batch {index}, expected a scalar tensor "
                        "(return the loss tensor itself, not .item()).")
    if loss.numel() != 1:
        per_sample = loss.dim() >= 1 and loss.shape[0] == batch_size(targets)
        raise ValueError(f"loss_fn returned a tensor of shape {tuple(loss.shape)} on batch {index}; it must "
                         "return a scalar (use reduction='mean')"
                         + (": this looks like per-sample losses (reduction='none')." if per_sample else "."))
    if torch.is_grad_enabled() and not loss.requires_grad:
        params = any(p.requires_grad for p in model.parameters())
        if params:
            graph = isinstance(outputs, torch.Tensor) and outputs.requires_grad
            culprit = ("loss_fn detached it (.detach(), .item(), numpy, torch.tensor(...) or torch.no_grad() "
                       "inside the loss)" if graph or not isinstance(outputs, torch.Tensor) else
                       "the model's forward detached its outputs (torch.no_grad() or .detach() inside forward)")
            raise ValueError(f"the loss on batch {index} does not depend on the model's parameters: {culprit}. "
                             "lossdoctor differentiates the loss: return it as computed from the outputs.")
    if not bool(torch.isfinite(loss.detach()).all()):
        bad = [t for t in _input_tensors(inputs) if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad or (targets.is_floating_point() and not bool(torch.isfinite(targets).all())):
            # A NaN in the data is no training failure: say so before any verdict is drawn from it.
            raise ValueError(f"the loss is {float(loss.detach().reshape(-1)[0])} on batch {index}: its "
                             f"{'inputs' if bad else 'targets'} hold NaN/Inf values, so the loss is not finite "
                             "whatever the model does. Clean or drop those samples "
                             "(torch.isfinite(x).all(dim=1) finds them).")
    return outputs, loss.reshape(())
