"""What counts as data, and how a batch meets the user's model and loss.

Everything in lossdoctor reads data through here.

Data is a ``DataLoader``, any re-iterable of batches, one batch, or a map-style ``Dataset`` (a
``TensorDataset``, your own) whose samples are read in batches of :data:`DATASET_BATCH_SIZE`
(256) in order; wrap a dataset in your own ``DataLoader`` to choose the batch size. A batch is
what frameworks make:

* an ``(inputs, targets)`` pair: inputs a tensor (``model(x)``), a tuple/list of tensors
  (``model(*inputs)``) or a dict of tensors; targets a tensor;
* a longer tuple ``(x1, ..., xk, targets)``: the last item is the targets, the rest the inputs
  (``model(x1, ..., xk)``), as a ``TensorDataset(x1, x2, y)`` yields;
* a dict that carries its labels, as Hugging Face collators make it (``{"input_ids": ...,
  "attention_mask": ..., "labels": ...}``): the whole dict is the inputs (the model computes its
  own loss from the labels) and ``dict["labels"]`` (or ``"label"``, ``"label_ids"``) the targets;
  a dict without labels has no targets (use ``loss_fn=None`` or a ``loss_fn(outputs, batch)``).

A dict of inputs is passed as keywords (``model(**inputs)``) when ``forward`` takes those names
(or ``**kwargs``), else as one argument (``model(inputs)``); label keys ``forward`` does not take
are left out. :class:`Batches` chooses explicitly (``Batches(loader, call="positional")``).

The loss is ``loss_fn(outputs, targets)``; ``loss_fn=None`` takes the loss the model computed
itself (``outputs.loss`` or ``outputs["loss"]``, as Hugging Face models return it when given
labels); a ``loss_fn`` whose second parameter is named ``batch`` (or one wrapped in
:func:`loss_on_batch`) is called as ``loss_fn(outputs, batch)`` with the whole batch.

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
import inspect
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
DATA_FORMS = (
    "pass a DataLoader, a Dataset, a list of (inputs, targets) batches (or dict batches with "
    "'labels'), or one such batch"
)
LABEL_KEYS = ("labels", "label", "label_ids")  # where a dict batch carries its targets (HF's names)
CALLS = ("auto", "keywords", "positional")


class KeywordInputs(dict):
    """A dict of inputs passed as keywords, ``model(**inputs)`` (chosen with :class:`Batches`)."""


class PositionalInputs(dict):
    """A dict of inputs passed as one argument, ``model(inputs)`` (chosen with :class:`Batches`)."""


class FlatInputs(tuple):
    """The inputs of a flat batch ``(x1, ..., xk, targets)``.

    ``model(x1, ..., xk)``; the batch a ``loss_fn(outputs, batch)`` sees is the flat tuple again."""


def no_targets(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The targets of a batch that has none (a dict without labels).

    An empty ``(n, 0)`` tensor, so the batch's size still travels with it through cutting, merging
    and moving."""
    return torch.empty((n, 0), dtype=torch.long, device=device)


def has_targets(targets: torch.Tensor) -> bool:
    """Whether a batch has targets (a batch without them carries an empty ``(n, 0)`` placeholder)."""
    return not (targets.dim() == 2 and targets.shape[1] == 0)


class Batches:
    """Data whose dict batches are read as chosen here rather than detected.

    Args:
        data: any lossdoctor data.
        call: ``"keywords"`` (``model(**inputs)``), ``"positional"`` (``model(inputs)``, a
            ``forward(self, batch)`` that indexes the dict itself) or ``"auto"`` (default: from
            ``forward``'s signature).
        labels: the key of a dict batch that holds the targets (``"auto"``: the first of
            ``labels``, ``label``, ``label_ids``; ``None``: the batch has no targets).

    Raises:
        ValueError: an unknown ``call``.
        TypeError: ``labels`` is not a string or ``None``, or ``data`` is not a container of
            batches.

    Examples:
        >>> import torch, lossdoctor as ld
        >>> from torch.nn import functional as F
        >>> class Net(torch.nn.Module):  # forward takes the whole dict batch
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lin = torch.nn.Linear(3, 2)
        ...     def forward(self, batch):
        ...         return self.lin(batch["x"])
        >>> _ = torch.manual_seed(0)
        >>> data = [{"x": torch.randn(8, 3), "y": torch.randint(0, 2, (8,))}]
        >>> loss = ld.loss_on_batch(lambda out, batch: F.cross_entropy(out, batch["y"]))
        >>> H = ld.hessian(Net(), loss, ld.Batches(data, call="positional", labels="y"))
        >>> H.num_params, H.num_samples
        (8, 8)
    """

    data: Any

    def __init__(self, data: Any, *, call: str = "auto", labels: str | None = "auto") -> None:
        if call not in CALLS:
            raise ValueError(f"call must be one of {CALLS}, got {call!r}.")
        if labels is not None and not isinstance(labels, str):
            raise TypeError(
                f"labels must be the name of the labels' key (a str), 'auto' or None, got "
                f"{type(labels).__name__}."
            )
        if isinstance(data, Batches):
            data = data.data
        _check_container(data, "data")
        self.data, self.call, self.labels = data, call, labels

    def __iter__(self) -> Iterator[Batch]:
        return iter_batches(self)

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"Batches({type(self.data).__name__}, call={self.call!r}, labels={self.labels!r})"


class _BatchLoss:
    """A loss called as ``loss_fn(outputs, batch)``; see :func:`loss_on_batch`."""

    takes_batch = True

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        functools.update_wrapper(self, fn, updated=())

    def __call__(self, outputs: Any, batch: Any) -> Any:
        return self.fn(outputs, batch)


def loss_on_batch(fn: Callable) -> Callable:
    """Mark ``fn`` as a loss on the whole batch: lossdoctor calls ``fn(outputs, batch)``.

    ``batch`` is the batch as the data gave it (the dict, the flat tuple, or ``(inputs,
    targets)``). A ``loss_fn`` whose second parameter is named ``batch`` needs no mark.

    Args:
        fn: ``fn(outputs, batch)`` returning the batch-mean loss.

    Returns:
        The marked loss function.

    Raises:
        TypeError: ``fn`` is not callable.

    Examples:
        A loss that reads more of the batch than the targets: per-sample weights stored in a flat
        ``(x, weights, y)`` batch (the model is called on ``x, weights``; a dict batch read by
        ``forward(self, batch)`` is shown under :class:`Batches`).

        >>> import torch, lossdoctor as ld
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lin = torch.nn.Linear(3, 1)
        ...     def forward(self, x, weights):
        ...         return self.lin(x).squeeze(1)
        >>> def weighted_mse(out, batch):
        ...     _, weights, y = batch
        ...     return (weights * (out - y) ** 2).mean()
        >>> _ = torch.manual_seed(0)
        >>> data = [(torch.randn(8, 3), torch.rand(8), torch.randn(8))]
        >>> ld.hessian(Net(), ld.loss_on_batch(weighted_mse), data).num_params
        4
    """
    if not callable(fn):
        raise TypeError(
            f"loss_on_batch wants a function loss(outputs, batch), got {type(fn).__name__}."
        )
    return _BatchLoss(fn)


def takes_batch(loss_fn: Any) -> bool:
    """Whether ``loss_fn`` is called as ``loss_fn(outputs, batch)``."""
    if getattr(loss_fn, "takes_batch", False) is True:
        return True
    try:
        params = [
            p
            for p in inspect.signature(loss_fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return False
    return len(params) >= 2 and params[1].name == "batch"


def _is_tensorish(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, Mapping):
        return any(isinstance(v, torch.Tensor) for v in x.values())
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


def _is_flat_batch(data: Any) -> bool:
    """``(x1, ..., xk, y)``: three or more tensors."""
    return (
        isinstance(data, (tuple, list))
        and len(data) >= 3
        and all(isinstance(v, torch.Tensor) for v in data)
    )


def _is_one_batch(data: Any) -> bool:
    """One batch of any form: a pair, a flat tuple of tensors or a dict of tensors."""
    return (
        is_single_batch(data)
        or _is_flat_batch(data)
        or (isinstance(data, Mapping) and _is_tensorish(data))
    )


def is_dataset(data: Any) -> bool:
    """A torch ``Dataset`` of samples (map-style or iterable), not yet batched."""
    return isinstance(data, Dataset) and not isinstance(data, DataLoader)


def check_data(data: Any, name: str = "data") -> None:
    """Raise a clear error for data we cannot read (more than once).

    Batches held in a list are checked too (it costs nothing: no loader runs)."""
    _check_container(data, name)
    if isinstance(data, Batches):
        data = data.data
    if isinstance(data, (list, tuple)) and not _is_one_batch(data):
        for i, batch in enumerate(data):
            if isinstance(batch, (tuple, list, Mapping)):
                _split(batch, i, name)


def _check_container(data: Any, name: str) -> None:
    if data is None:
        raise ValueError(f"{name} is None: {DATA_FORMS}.")
    if isinstance(data, Batches):
        return
    if _is_one_batch(data):
        _split(data, 0, name, single=True)
        return
    if is_dataset(data):
        if not isinstance(data, torch.utils.data.IterableDataset) and not hasattr(data, "__len__"):
            raise TypeError(
                f"{name} is a {type(data).__name__} without __len__: give the Dataset a __len__, "
                "or wrap it in a DataLoader."
            )
        return
    if isinstance(data, torch.Tensor):
        raise TypeError(
            f"{name} is a single tensor: pass (inputs, targets), a list of such batches, "
            "a TensorDataset or a DataLoader."
        )
    if isinstance(data, (str, bytes)):
        raise TypeError(
            f"{name} is a string ({data[:40]!r}): {DATA_FORMS}. Built-in problems are loaded "
            "with lossdoctor.load_problem."
        )
    if isinstance(data, Mapping):
        raise TypeError(
            f"{name} is a {type(data).__name__} without tensors: {DATA_FORMS} (a dict batch holds "
            "tensors, e.g. {'input_ids': ..., 'labels': ...})."
        )
    if not isinstance(data, Iterable):
        raise TypeError(f"{name} of type {type(data).__name__} is not iterable: {DATA_FORMS}.")
    # not iter(data) is data: that would start a DataLoader's iteration (worker processes, and a
    # draw from the global RNG for its base seed) just to look at it
    if isinstance(data, Iterator):
        raise TypeError(
            f"{name} is a one-shot iterator (e.g. a generator), but lossdoctor passes over the "
            "data several times: pass a list of batches or a DataLoader instead."
        )


def _shape(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k!r}: {_shape(v)}" for k, v in x.items()) + "}"
    if isinstance(x, (tuple, list)):
        return "(" + ", ".join(_shape(v) for v in x) + ")"
    return type(x).__name__


def input_tensors(inputs: Any) -> list[torch.Tensor]:
    """The tensors of a batch's inputs: the tensor itself, or a dict's or tuple's tensor values."""
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    values = inputs.values() if isinstance(inputs, Mapping) else inputs
    return [v for v in values if isinstance(v, torch.Tensor)]


def _label_key(batch: Mapping, labels: str | None, where: str) -> str | None:
    if labels is None:
        return None
    if labels != "auto":
        if labels not in batch:
            raise ValueError(
                f"{where}: the dict batch has no key {labels!r} (its keys: {sorted(map(str, batch))}); "
                "pass Batches(..., labels=<the key of the targets>) or labels=None."
            )
        return labels
    return next((k for k in LABEL_KEYS if isinstance(batch.get(k), torch.Tensor)), None)


def _split(
    batch: Any,
    index: int,
    name: str,
    single: bool = False,
    call: str = "auto",
    labels: str | None = "auto",
) -> Batch:
    """A batch as frameworks make it, as ``(inputs, targets)``, checked (see the module docstring)."""
    where = f"{name}" if single else f"{name}: batch {index}"
    marker = {"keywords": KeywordInputs, "positional": PositionalInputs}.get(call)
    if isinstance(batch, Mapping):
        if not _is_tensorish(batch):
            raise TypeError(
                f"{where} is a dict without tensors (keys {sorted(map(str, batch))[:8]}): a dict batch "
                "holds tensors, e.g. {'input_ids': ..., 'attention_mask': ..., 'labels': ...}."
            )
        key = _label_key(batch, labels, where)
        inputs = (marker or dict)(batch)
        if key is not None:
            targets = batch[key]
        else:
            firsts = [t.shape[0] for t in input_tensors(inputs) if t.dim() > 0]
            if not firsts:
                raise ValueError(
                    f"{where}: no tensor of the dict batch has a batch dimension ({_shape(batch)})."
                )
            targets = no_targets(firsts[0], input_tensors(inputs)[0].device)
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, targets = batch
        if marker is not None and isinstance(inputs, Mapping):
            inputs = marker(inputs)
    elif _is_flat_batch(batch):
        inputs, targets = FlatInputs(batch[:-1]), batch[-1]
    else:
        raise TypeError(
            f"{where} is a {type(batch).__name__}"
            + (f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else "")
            + ", expected an (inputs, targets) pair, a tuple of tensors (x1, ..., targets) or a dict "
            "of tensors (with 'labels' for the targets). A dataset yielding other things needs a "
            "collate_fn returning one of these."
        )
    _check_batch(inputs, targets, index, name, single=single)
    return inputs, targets


def _check_batch(inputs: Any, targets: Any, index: int, name: str, single: bool = False) -> None:
    where = f"{name}" if single else f"{name}: batch {index}"
    if not _is_tensorish(inputs) or not isinstance(targets, torch.Tensor):
        raise TypeError(
            f"{where}: inputs must be a tensor (or a tuple/dict of tensors) and targets a tensor; "
            f"got {type(inputs).__name__} and {type(targets).__name__}."
        )
    if targets.dim() == 0:
        return  # one unbatched sample
    n = targets.shape[0]
    firsts = [t.shape[0] if t.dim() > 0 else None for t in input_tensors(inputs)]
    matched = firsts[0] == n if isinstance(inputs, torch.Tensor) else n in firsts
    if not matched:
        shown = firsts[0] if isinstance(inputs, torch.Tensor) else firsts
        raise ValueError(
            f"{where} pairs inputs of shape {_shape(inputs)} with targets of shape {_shape(targets)}: "
            f"{shown} input rows against {n} targets. lossdoctor reads the first dimension as the "
            "batch, so inputs and targets must have as many rows: check how the batches were cut "
            "(X[a:b] with Y[a:b]); for sequence models, put the batch first (batch_first=True)."
        )


def _loader(data: Any) -> Any:
    return DataLoader(data, batch_size=DATASET_BATCH_SIZE) if is_dataset(data) else data


def iter_batches(data: Any, name: str = "data", rng: RNGStream | None = None) -> Iterator[Batch]:
    """Yield ``(inputs, targets)`` batches, validating each one.

    A DataLoader, a dataset or any other iterable that may draw random numbers is read on
    ``rng`` (a fresh :class:`RNGStream` by default, so every pass draws the same), never on the
    caller's global RNG. Lists and tuples of batches are read as they are.
    """
    _check_container(data, name)
    call, labels = "auto", "auto"
    if isinstance(data, Batches):
        data, call, labels = data.data, data.call, data.labels
    if _is_one_batch(data):
        yield _split(data, 0, name, single=True, call=call, labels=labels)
        return
    source = _loader(data)
    if isinstance(source, (list, tuple)):
        batches: Iterable[Any] = source
    else:
        batches = _guarded(source, rng if rng is not None else RNGStream())
    for i, batch in enumerate(batches):
        yield _split(batch, i, name, call=call, labels=labels)


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
    """The number of samples in a batch: the targets' first dimension (1 for a 0-d target)."""
    return int(targets.shape[0]) if targets.dim() > 0 else 1


def map_inputs(fn: Callable[[torch.Tensor], torch.Tensor], inputs: Any) -> Any:
    """Apply ``fn`` to every tensor of ``inputs`` (a tensor, a tuple/list or a dict of tensors), keeping the structure ``call_model`` expects."""
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    if isinstance(inputs, Mapping):
        out = {k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        return type(inputs)(out) if isinstance(inputs, (KeywordInputs, PositionalInputs)) else out
    mapped = (fn(v) if isinstance(v, torch.Tensor) else v for v in inputs)
    return FlatInputs(mapped) if isinstance(inputs, FlatInputs) else tuple(mapped)


def split_batch(
    inputs: Any, targets: torch.Tensor, size: int
) -> Iterator[tuple[Any, torch.Tensor, int]]:
    """Cut one batch into consecutive micro-batches of at most ``size`` samples, yielding ``(inputs, targets, samples)``.

    Every input tensor whose first dimension is the batch's size is cut; any other input (a mask
    shared by the whole batch) goes whole to every part."""
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
    """The inputs (a tensor, tuple or dict of tensors) moved to ``device``."""
    return map_inputs(lambda x: x.to(device, non_blocking=True), inputs)


def input_device(inputs: Any) -> torch.device:
    """The device of the inputs' first tensor."""
    return input_tensors(inputs)[0].device


def place(inputs: Any, targets: torch.Tensor, device: torch.device) -> Batch:
    """Move a batch to ``device``.

    CPU data (what DataLoaders yield) moves to the model's device; data already on another
    accelerator is a mistake we report rather than silently copy."""
    for what, dev in (("inputs", input_device(inputs)), ("targets", targets.device)):
        if dev != device and dev.type != "cpu":
            raise ValueError(
                f"{what} are on {dev} but the model is on {device}: move the data "
                f"to {device} (or to the CPU) before calling lossdoctor."
            )
    return to_device(inputs, device), targets.to(device, non_blocking=True)


def _forward_signature(model: torch.nn.Module) -> tuple[set[str], bool, int] | None:
    """``forward``'s keyword names, whether it takes ``**kwargs``, and how many positional parameters it has; None when it cannot be read."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    positional = sum(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params
    )
    return names, any(p.kind == p.VAR_KEYWORD for p in params), positional


def dict_call(model: torch.nn.Module, inputs: Mapping) -> str:
    """How a dict of inputs meets ``model``.

    ``"keywords"`` when ``forward`` takes its (non-label) keys by name or takes ``**kwargs``;
    ``"positional"`` when it takes none of them but has a positional parameter (``forward(self,
    batch)``). Chosen explicitly by the dict's type (:class:`Batches`)."""
    if isinstance(inputs, PositionalInputs):
        return "positional"
    if isinstance(inputs, KeywordInputs):
        return "keywords"
    sig = _forward_signature(model)
    if sig is None:
        return "keywords"
    names, var_keyword, positional = sig
    keys = [k for k in inputs if k not in LABEL_KEYS] or list(inputs)
    if var_keyword or all(k in names for k in keys):
        return "keywords"
    return "positional" if positional and not any(k in names for k in keys) else "keywords"


def call_model(model: torch.nn.Module, inputs: Any) -> Any:
    """Call ``model`` on inputs as a batch gave them: a tensor, positional tuple or keyword dict."""
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    if isinstance(inputs, Mapping):
        if dict_call(model, inputs) == "positional":
            return model(dict(inputs))
        sig = _forward_signature(model)
        if (
            sig is not None and not sig[1]
        ):  # label keys forward does not take stay out (HF Trainer's way)
            inputs = {k: v for k, v in inputs.items() if k not in LABEL_KEYS or k in sig[0]}
        return model(**inputs)
    return model(*inputs)


def as_batch(inputs: Any, targets: torch.Tensor) -> Any:
    """The batch as the data gave it, for a ``loss_fn(outputs, batch)``."""
    if isinstance(inputs, Mapping):
        return dict(inputs)
    if isinstance(inputs, FlatInputs):
        return (*inputs, targets)
    return (inputs, targets) if has_targets(targets) else inputs


def _own_loss(outputs: Any, index: int) -> Any:
    """``outputs.loss`` / ``outputs["loss"]`` for ``loss_fn=None``, or a clear error."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
    if loss is None:
        has = isinstance(outputs, Mapping) and "loss" in outputs or hasattr(outputs, "loss")
        what = (
            f"a {type(outputs).__name__} whose loss is None"
            if has
            else f"a {type(outputs).__name__} without a loss"
            + (" (a tuple: return_dict=False?)" if isinstance(outputs, tuple) else "")
        )
        raise ValueError(
            f"loss_fn=None takes the loss the model computes itself (outputs.loss), but on batch "
            f"{index} the model returned {what}. Give the model its labels (a dict batch with a "
            "'labels' key, e.g. {'input_ids': ids, 'labels': ids} for a causal LM), or pass a "
            "loss_fn(outputs, targets)."
        )
    return loss


def compute_loss(
    model: torch.nn.Module, loss_fn: Callable | None, inputs: Any, targets: torch.Tensor
) -> Any:
    """The model's outputs and the loss, unchecked (hot loops such as timing; see :func:`forward`)."""
    outputs = call_model(model, inputs)
    if loss_fn is None:
        return outputs, _own_loss(outputs, 0)
    if takes_batch(loss_fn):
        return outputs, loss_fn(outputs, as_batch(inputs, targets))
    return outputs, loss_fn(outputs, targets)


# -- the user's model and loss on one batch ------------------------------------------------------
def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a CUDA (or other) out-of-memory error."""
    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
    )


_NOT_USER = tuple(
    str(Path(p).resolve())
    for p in (
        Path(torch.__file__).parent,
        Path(np.__file__).parent,
        Path(__file__).parent,
        sysconfig.get_paths()["stdlib"],
    )
)


def user_frame(err: BaseException) -> str:
    """``" (raised at file.py:12 in forward: <line>)"``.

    The innermost frame of the traceback that is the user's code (not torch's, lossdoctor's or the
    standard library's), or ``""``."""
    frames = [
        f
        for f in reversed(traceback.extract_tb(err.__traceback__))
        if not str(Path(f.filename).resolve()).startswith(_NOT_USER)
        and not f.filename.startswith("<")
    ]
    # the user's own file before an installed library's (transformers, lightning, timm)
    own = [
        f for f in frames if "site-packages" not in f.filename and "dist-packages" not in f.filename
    ]
    for frame in own[:1] or frames[:1]:
        line = f": {frame.line.strip()}" if frame.line else ""
        return f" (at {frame.filename}:{frame.lineno} in {frame.name}{line})"
    return ""


def _user_call(call: Callable[[], Any], explain: Callable[[Exception], tuple[str, str]]) -> Any:
    """``call()``, the user's model or loss, with its error explained.

    The error comes back as a ``ValueError``: what failed (``explain(err)[0]``), the user's line,
    the error's first line and the likely fix (``explain(err)[1]``). Out-of-memory errors pass
    through unchanged."""
    try:
        return call()
    except Exception as err:
        if is_out_of_memory(err):
            raise
        what, fix = explain(err)
        raise ValueError(f"{what}{user_frame(err)}: {_first_line(err)}. Likely fix: {fix}") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _class_count(outputs: Any) -> int | None:
    return (
        int(outputs.shape[1]) if isinstance(outputs, torch.Tensor) and outputs.dim() >= 2 else None
    )


def loss_name(loss_fn: Any) -> str:
    """How messages name a loss: a function's ``__name__``, else its class (``CrossEntropyLoss``)."""
    return getattr(loss_fn, "__name__", type(loss_fn).__name__)


def _loss_hint(err: BaseException, outputs: Any, targets: torch.Tensor) -> str:
    """The likely fix for an error the loss function raised, read from the error and the data."""
    text = str(err).lower()
    if not isinstance(outputs, torch.Tensor) and (
        hasattr(outputs, "logits") or hasattr(outputs, "loss") or isinstance(outputs, Mapping)
    ):
        return (
            f"the model returns a {type(outputs).__name__}, not a tensor: pass loss_fn=None to use the loss "
            "the model computes itself (outputs.loss, from the batch's 'labels'), or a loss that reads "
            "outputs.logits, e.g. lambda out, y: F.cross_entropy(out.logits, y)."
        )
    classes = _class_count(outputs)
    if targets.is_floating_point() and (
        "long" in text
        or "expected scalar type" in text
        or "class probabilities" in text
        or "target dtype" in text
    ):
        return (
            "cross-entropy (and NLL) losses want class indices of dtype torch.long, one per sample: "
            "pass targets.long() (or class probabilities shaped like the outputs)."
        )
    if "multi-target" in text or "1d target tensor expected" in text:
        return (
            f"cross-entropy wants one class index per sample (targets of shape ({targets.shape[0]},)), but "
            f"the targets have shape {tuple(targets.shape)}; for several labels per sample use "
            "nn.BCEWithLogitsLoss with float targets."
        )
    if (
        (
            "out of bounds" in text
            or "index out of range" in text
            or "out of range" in text
            or isinstance(err, IndexError)
        )
        and not targets.is_floating_point()
        and targets.numel()
    ):
        top, low = int(targets.max()), int(targets.min())
        got = f"the targets hold classes {low}..{top}"
        if classes is not None:
            return (
                f"{got} but the model outputs {classes} classes: class indices must lie in [0, {classes}). "
                f"Give the model {top + 1} outputs, or relabel the classes from 0."
            )
        return f"{got}: class indices must lie in [0, number of classes)."
    if "size" in text or "shape" in text or "match" in text or "broadcast" in text:
        return (
            f"the loss cannot pair outputs of shape {_shape(outputs)} with targets of shape {_shape(targets)}: "
            "check that the model's output has the targets' layout (class indices for cross-entropy, "
            "the same shape for MSE)."
        )
    if "device" in text:
        return "put the model and the data on one device."
    return "check the loss function on this batch."


def _model_hint(err: BaseException, inputs: Any, model: torch.nn.Module) -> str:
    text = str(err).lower()
    if isinstance(inputs, Mapping) and (
        "unexpected keyword" in text or "positional argument" in text
    ):
        how = "as one argument" if dict_call(model, inputs) == "positional" else "as keywords"
        other = "keywords" if how == "as one argument" else "positional"
        return (
            f"the dict of inputs was passed {how} (read from forward's signature); choose with "
            f"lossdoctor.Batches(data, call={other!r}), or give the dict the names forward takes."
        )
    param = next(iter(model.parameters()), None)
    dtypes = {t.dtype for t in input_tensors(inputs) if t.is_floating_point()}
    if (
        param is not None
        and dtypes
        and param.dtype not in dtypes
        and ("dtype" in text or "scalar type" in text or "double" in text or "float" in text)
    ):
        got = ", ".join(sorted(str(d).replace("torch.", "") for d in dtypes))
        want = str(param.dtype).replace("torch.", "")
        return f"the inputs are {got} but the model's parameters {want}: convert the inputs (x.to({param.dtype}))."
    if "shape" in text or "size" in text or "mat1" in text or "dimension" in text:
        return (
            f"the inputs' shape {_shape(inputs)} does not fit the model: check the number of features "
            "and the layout (the first dimension is the batch)."
        )
    if "device" in text:
        return "put the model and the data on one device."
    return "check the model on this batch."


def batch_loss(
    model: torch.nn.Module, loss_fn: Callable | None, inputs: Any, targets: torch.Tensor, index: int
) -> torch.Tensor:
    """``loss_fn(model(inputs), targets)`` on batch ``index``, as a 0-d tensor (see :func:`forward`)."""
    return forward(model, loss_fn, inputs, targets, index)[1]


def forward(  # noqa: C901 - one guarded call per step (model, loss, shapes), each with its own message
    model: torch.nn.Module, loss_fn: Callable | None, inputs: Any, targets: torch.Tensor, index: int
) -> tuple[Any, torch.Tensor]:
    """The model's outputs and ``loss_fn(outputs, targets)`` (a 0-d tensor) on batch ``index``.

    ``loss_fn=None``: the model's own ``outputs.loss``; a loss on the batch: ``loss_fn(outputs,
    batch)`` (see the module docstring).

    An error raised by the model or the loss comes back as a ``ValueError`` naming the batch,
    the shapes and dtypes, the user's own line and the likely fix (out-of-memory errors pass
    through unchanged). The result must be a scalar tensor; where gradients are being recorded it
    must depend on the parameters (a detached loss is refused).
    """
    outputs = _user_call(
        lambda: call_model(model, inputs),
        lambda err: (
            f"the model failed on batch {index} (inputs {_shape(inputs)})",
            _model_hint(err, inputs, model),
        ),
    )
    if loss_fn is None:
        loss = _own_loss(outputs, index)
    elif takes_batch(loss_fn):
        batch = as_batch(inputs, targets)
        loss = _user_call(
            lambda: loss_fn(outputs, batch),
            lambda err: (
                f"the loss function failed on batch {index} (outputs {_shape(outputs)}, batch "
                f"{_shape(batch)})",
                "check the loss function on this batch.",
            ),
        )
    else:
        if not has_targets(targets):
            raise ValueError(
                f"batch {index} has no targets (a dict batch without a 'labels' key: "
                f"{_shape(inputs)}), but loss_fn={loss_name(loss_fn)} is called as loss_fn(outputs, "
                "targets). Put the targets under 'labels', pass loss_fn=None to use the model's own "
                "loss, or a loss_fn(outputs, batch) that reads them from the batch."
            )
        loss = _user_call(
            lambda: loss_fn(outputs, targets),
            lambda err: (
                f"the loss function failed on batch {index} (outputs {_shape(outputs)}, targets "
                f"{_shape(targets)})",
                _loss_hint(err, outputs, targets),
            ),
        )
    if not isinstance(loss, torch.Tensor):
        raise TypeError(
            f"loss_fn returned {type(loss).__name__} on batch {index}, expected a scalar tensor "
            "(return the loss tensor itself, not .item())."
        )
    if loss.numel() != 1:
        per_sample = loss.dim() >= 1 and loss.shape[0] == batch_size(targets)
        raise ValueError(
            f"loss_fn returned a tensor of shape {tuple(loss.shape)} on batch {index}; it must "
            "return a scalar (use reduction='mean')"
            + (": this looks like per-sample losses (reduction='none')." if per_sample else ".")
        )
    if torch.is_grad_enabled() and not loss.requires_grad:
        params = any(p.requires_grad for p in model.parameters())
        if params:
            graph = isinstance(outputs, torch.Tensor) and outputs.requires_grad
            culprit = (
                "loss_fn detached it (.detach(), .item(), numpy, torch.tensor(...) or torch.no_grad() "
                "inside the loss)"
                if graph or not isinstance(outputs, torch.Tensor)
                else "the model's forward detached its outputs (torch.no_grad() or .detach() inside forward)"
            )
            raise ValueError(
                f"the loss on batch {index} does not depend on the model's parameters: {culprit}. "
                "lossdoctor differentiates the loss: return it as computed from the outputs."
            )
    if not bool(torch.isfinite(loss.detach()).all()):
        bad = [
            t
            for t in input_tensors(inputs)
            if t.is_floating_point() and not bool(torch.isfinite(t).all())
        ]
        if bad or (targets.is_floating_point() and not bool(torch.isfinite(targets).all())):
            # A NaN in the data is no training failure: say so before any verdict is drawn from it.
            raise ValueError(
                f"the loss is {float(loss.detach().reshape(-1)[0])} on batch {index}: its "
                f"{'inputs' if bad else 'targets'} hold NaN/Inf values, so the loss is not finite "
                "whatever the model does. Clean or drop those samples "
                "(torch.isfinite(x).all(dim=1) finds them)."
            )
    return outputs, loss.reshape(())


# -- all samples as one batch (the batch-size lab, noise scale, landscape) -------------------------
PAD_VALUES = {"attention_mask": 0, **{k: -100 for k in LABEL_KEYS}}  # -100: HF's ignored label


def _pad_cat(parts: list[torch.Tensor], key: Any, name: str, masked: bool) -> torch.Tensor:
    """Concatenate along the batch.

    Sequences of unequal length (dimension 1) are right-padded when an attention mask marks the
    padding (0 in the mask, -100 in labels, 0 elsewhere)."""
    lengths = {t.shape[1] for t in parts if t.dim() >= 2}
    if len(lengths) > 1:
        if not masked:
            raise ValueError(
                f"{name}: {key!r} has sequences of different lengths in different batches "
                f"({sorted(lengths)[:6]}) and no attention_mask marks padding, so the batches cannot be "
                "merged into one: pad every batch to one length (e.g. a collator with "
                "padding='max_length'), or add an 'attention_mask'."
            )
        width = max(lengths)
        fill = PAD_VALUES.get(key, 0)
        parts = [
            torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1]), value=fill)
            if t.dim() >= 2 and t.shape[1] < width
            else t
            for t in parts
        ]
    try:
        return torch.cat(parts)
    except RuntimeError as err:
        raise ValueError(
            f"{name}: the batches cannot be merged into one tensor ({key!r}: "
            f"{[tuple(t.shape) for t in parts[:4]]}): every batch needs the same shape apart from the "
            f"batch dimension ({err})."
        ) from None


def merge_batches(batches: list[Batch], name: str = "data") -> Batch:
    """All ``batches`` as one ``(inputs, targets)`` batch.

    Tensors concatenated, dicts key by key (sequences right-padded where an ``attention_mask`` marks
    padding), tuples item by item. Every input tensor must have the batch as its first dimension."""
    first = batches[0][0]
    for i, (inputs, targets) in enumerate(batches):
        n = batch_size(targets)
        if type(inputs) is not type(first) and not (
            isinstance(inputs, Mapping) and isinstance(first, Mapping)
        ):
            raise ValueError(
                f"{name}: batch {i} has inputs of another form ({type(inputs).__name__}) than batch 0 "
                f"({type(first).__name__}): the batches cannot be merged."
            )
        if isinstance(inputs, Mapping) and set(inputs) != set(first):
            raise ValueError(
                f"{name}: batch {i} has keys {sorted(map(str, inputs))}, batch 0 {sorted(map(str, first))}: "
                "dict batches are merged key by key and need the same keys."
            )
        for t in input_tensors(inputs):
            if t.dim() == 0 or t.shape[0] != n:
                raise ValueError(
                    f"{name}: batch {i}: an input of shape {tuple(t.shape)} has no batch dimension of "
                    f"{n}; merging batches (for the batch-size lab) needs every input tensor to have the "
                    "batch first."
                )
    masked = isinstance(first, Mapping) and "attention_mask" in first
    if isinstance(first, torch.Tensor):
        inputs = _pad_cat([b[0] for b in batches], "inputs", name, False)
    elif isinstance(first, Mapping):
        merged = {
            k: _pad_cat([b[0][k] for b in batches], k, name, masked)
            if isinstance(first[k], torch.Tensor)
            else first[k]
            for k in first
        }
        inputs = (
            type(first)(merged) if isinstance(first, (KeywordInputs, PositionalInputs)) else merged
        )
    else:
        items = [
            _pad_cat([b[0][j] for b in batches], f"inputs[{j}]", name, False)
            for j in range(len(first))
        ]
        inputs = FlatInputs(items) if isinstance(first, FlatInputs) else tuple(items)
    key = next(
        (k for k in LABEL_KEYS if isinstance(first, Mapping) and batches[0][1] is first.get(k)),
        None,
    )
    if key is not None and all(b[1] is b[0].get(key) for b in batches):
        targets = inputs[
            key
        ]  # the labels inside the dict are the targets: one tensor, padded alike
    else:
        targets = _pad_cat([b[1] for b in batches], "targets", name, masked)
    return inputs, targets


def take(
    inputs: Any,
    targets: torch.Tensor,
    index: torch.Tensor | slice,
    device: torch.device | None = None,
) -> Batch:
    """The samples ``index`` of a merged batch (optionally moved to ``device``)."""

    def pick(t: torch.Tensor) -> torch.Tensor:
        t = t[index]
        return t if device is None else t.to(device, non_blocking=True)

    return map_inputs(pick, inputs), pick(targets)
