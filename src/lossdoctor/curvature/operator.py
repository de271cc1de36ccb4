"""The exact Hessian of the mean loss over a dataset, as a matrix-free linear operator.

``H @ v`` is a Hessian-vector product by double back-propagation, summed over the batches of
the data with each batch weighted by its number of samples, so batches of unequal size give
the Hessian of the mean loss over *all* samples.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeGuard

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .._checks import check_arguments, check_bool
from .._distributed import process_group_active
from ..data import (
    batch_loss,
    batch_size,
    check_data,
    iter_batches,
    loss_name,
    place,
    split_batch,
)
from ..model_state import (
    ModeNotice,
    default_mode_notice,
    evaluation_mode,
    model_device,
    preserved_model,
    preserved_rng,
    selected_parameters,
)
from ..types import Data, Mode, Reduction
from ._convolution import fast_convolution_double_backward
from ._patches import patched
from .memory import reuse_freed_pages

LossFn = Callable[[Any, torch.Tensor], torch.Tensor] | None  # None: the model's own outputs.loss
MODES = ("eval", "train")
REDUCTIONS = ("mean", "sum")


def loss_reduction(loss_fn: Any) -> str:
    """The loss module's ``.reduction`` attribute where it is a string, else "mean"."""
    reduction = getattr(loss_fn, "reduction", "mean")
    return reduction if isinstance(reduction, str) else "mean"


def _is_reduction(value: object) -> TypeGuard[Reduction]:
    return value in REDUCTIONS


def _declared_reduction(loss_fn: Any, reduction: str | None) -> Reduction:
    """The per-sample contract the caller states.

    ``reduction`` if given, else the loss module's ``.reduction`` attribute, else "mean"."""
    attribute = getattr(loss_fn, "reduction", None)
    if reduction is None:
        declared = loss_reduction(loss_fn)
        if not _is_reduction(declared):
            raise ValueError(
                f"loss_fn has reduction={declared!r}; a scalar loss (one number per batch) is needed. "
                "Use reduction='mean'."
            )
        return declared
    if not _is_reduction(reduction):
        raise ValueError(
            f"reduction must be 'mean' (the loss of a batch is the mean of its samples' losses) "
            f"or 'sum' (their sum), or None to read it from loss_fn; got {reduction!r}."
        )
    if isinstance(attribute, str) and attribute in REDUCTIONS and attribute != reduction:
        raise ValueError(
            f"reduction={reduction!r} contradicts loss_fn.reduction={attribute!r}; drop the "
            "reduction argument (the loss module's own reduction is used) or change the module's."
        )
    return reduction


def _halves_reduction(
    loss_of: Callable[[Any, torch.Tensor], float],
    inputs: Any,
    targets: torch.Tensor,
    n: int,
    whole: float,
    rtol: float,
) -> tuple[Reduction | None, list[tuple[float, int]]]:
    """How a batch's loss ``whole`` combines its samples, with its halves' ``(loss, samples)``.

    "mean" or "sum"; None where the two halves cannot tell (a batch that cannot be cut, a loss of
    zero, another normalization)."""
    try:
        parts = [(loss_of(x, y), m) for x, y, m in split_batch(inputs, targets, (n + 1) // 2)]
    except (ValueError, TypeError, RuntimeError, IndexError):
        return None, []  # the batch cannot be cut (inputs whose first dimension is not the batch)
    if len(parts) != 2 or not all(math.isfinite(v) for v, _ in parts):
        return None, parts
    as_mean = sum(v * m for v, m in parts) / n
    as_sum = sum(v for v, _ in parts)
    scale = max(abs(whole), abs(as_mean), abs(as_sum), 1e-30)
    mean_fits = abs(whole - as_mean) <= rtol * scale
    sum_fits = abs(whole - as_sum) <= rtol * scale
    if mean_fits == sum_fits:  # neither (another normalization), or both (a loss of zero)
        return None, parts
    return ("mean" if mean_fits else "sum"), parts


def observed_reduction(model: nn.Module, loss_fn: LossFn, data: Data) -> Reduction | None:
    """How ``loss_fn`` combines a batch's samples, as its first batch of two samples or more shows.

    The batch's loss is compared, in eval mode, with the losses of its two halves: "mean" when it
    is their size-weighted mean, "sum" when it is their sum, None where they cannot tell (no such
    batch, a batch that cannot be cut, a loss of zero, or another normalization such as a mean
    over unmasked tokens). A function such as ``lambda o, t: F.mse_loss(o, t, reduction="sum")``
    has no ``.reduction`` attribute to read; this tells it apart. The model is left as it was.

    Args:
        model: any ``nn.Module``.
        loss_fn: the loss, as for :func:`lossdoctor.hessian`.
        data: a DataLoader, a list of batches or one batch.

    Returns:
        "mean", "sum" or None.

    Examples:
        >>> import torch, lossdoctor as ld
        >>> from torch.nn import functional as F
        >>> model, batch = torch.nn.Linear(3, 1), (torch.randn(8, 3), torch.randn(8, 1))
        >>> ld.observed_reduction(model, lambda o, t: F.mse_loss(o, t, reduction="sum"), batch)
        'sum'
    """
    check_arguments(model=model, loss_fn=loss_fn)
    selected_parameters(model, None)  # a model with nothing to train is refused, as everywhere
    found = _first_batch_reduction(model, loss_fn, data)
    return None if found is None else found[0]


def _first_batch_reduction(
    model: nn.Module, loss_fn: LossFn, data: Data
) -> tuple[Reduction, int, int, float, list[tuple[float, int]]] | None:
    """What the first batch of two samples or more shows, or None where nothing could tell.

    The observed reduction with that batch's index, samples, loss and halves."""
    check_data(data)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    empty = True
    with preserved_model(model), evaluation_mode(model, "eval"):
        for index, (inputs, targets) in enumerate(iter_batches(data)):
            empty = False
            inputs, targets = place(inputs, targets, device)
            n = batch_size(targets)
            if n < 2:
                continue

            def loss_of(x: Any, y: torch.Tensor, index: int = index) -> float:
                with torch.no_grad():
                    return float(batch_loss(model, loss_fn, x, y, index))

            # With gradients recorded, so a loss detached from the parameters is refused here too.
            whole = float(batch_loss(model, loss_fn, inputs, targets, index).detach())
            observed, parts = _halves_reduction(
                loss_of, inputs, targets, n, whole, _contract_rtol(dtype)
            )
            return None if observed is None else (observed, index, n, whole, parts)
    if empty:
        raise ValueError("data is empty: it yielded no samples.")
    return None


def _contract_error(
    loss_fn: Any,
    observed: Reduction,
    index: int,
    n: int,
    whole: float,
    parts: list[tuple[float, int]],
    consequence: str,
) -> ValueError:
    """The error for a loss whose batches combine their samples otherwise than declared."""
    name = loss_name(loss_fn)
    if observed == "sum":
        return ValueError(
            f"loss_fn ({name}) returns the sum of its samples' losses, not their mean: on batch {index} "
            f"({n} samples) it gives {whole:.8g}, and its two halves {parts[0][0]:.8g} + {parts[1][0]:.8g}. "
            f"Taken for a mean, {consequence}. Pass reduction='sum' (the mean per-sample loss is then "
            "used, as for nn.MSELoss(reduction='sum')), or make loss_fn return the batch mean."
        )
    return ValueError(
        f"reduction='sum' was given but loss_fn ({name}) returns the mean of its samples' losses: on "
        f"batch {index} ({n} samples) it gives {whole:.8g}, the size-weighted mean of its halves' "
        f"{parts[0][0]:.8g} and {parts[1][0]:.8g}. Drop reduction='sum' (or pass reduction='mean')."
    )


def checked_reduction(
    model: nn.Module, loss_fn: LossFn, data: Data, reduction: str | None, consequence: str
) -> Reduction:
    """The per-sample contract declared, confirmed on the first batch that can tell.

    Declared: ``reduction``, else ``loss_fn.reduction``, else "mean"; confirmed as by
    :func:`observed_reduction`. A contradiction is a ValueError naming ``consequence`` (what
    taking a sum for a mean would do)."""
    declared = _declared_reduction(loss_fn, reduction)
    found = _first_batch_reduction(model, loss_fn, data)
    if found is not None and found[0] != declared:
        raise _contract_error(loss_fn, *found, consequence)
    return declared


def _contract_rtol(dtype: torch.dtype) -> float:
    return 1e-4 if dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-9


@contextlib.contextmanager
def _full_fp32_matmul() -> Iterator[None]:
    """TF32 products (cuDNN convolutions use them by default on Ampere and later) carry ~1e-3 relative error, enough to stall Lanczos at tol=1e-6; Hessian products use full float32."""
    matmul = torch.backends.cuda.matmul
    try:
        saved = matmul.allow_tf32
        matmul.allow_tf32 = False
    except RuntimeError:  # the user set the newer fp32_precision API; mixing the two is refused
        saved = None
    try:
        yield
    finally:
        if saved is not None:
            matmul.allow_tf32 = saved


def _hardsigmoid(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    return F.relu6(input + 3.0) / 6.0


def _hardswish(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    return input * (F.relu6(input + 3.0) / 6.0)


@contextlib.contextmanager
def _twice_differentiable_activations() -> Iterator[None]:
    """Torch's hardsigmoid and hardswish kernels have no double backward ("derivative for aten::hardsigmoid_backward is not implemented".

    MobileNetV3, EfficientNet-lite); the same functions written with relu6 have one (out of place:
    an in-place activation would overwrite what the second backward needs)."""
    with patched(F, {"hardsigmoid": lambda _: _hardsigmoid, "hardswish": lambda _: _hardswish}):
        yield


@contextlib.contextmanager
def _double_backward_safe(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Some kernels (cuDNN's RNNs, fused attention, hardsigmoid/hardswish) have no double backward.

    Fall back to implementations that do, only where they are needed. Convolutions get a faster
    second backward (``_convolution``). On CUDA, no TF32."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            _twice_differentiable_activations()
        )  # modules and functional calls alike
        stack.enter_context(fast_convolution_double_backward())
        if device.type == "cuda":
            rnn = any(isinstance(m, nn.RNNBase) for m in model.modules())
            cudnn = torch.backends.cudnn
            try:
                stack.enter_context(
                    cudnn.flags(
                        enabled=cudnn.enabled and not rnn,
                        benchmark=cudnn.benchmark,
                        deterministic=cudnn.deterministic,
                        allow_tf32=False,
                    )
                )
            except RuntimeError:  # newer fp32_precision API in use: only switch cuDNN off for RNNs
                if rnn:
                    stack.enter_context(cudnn.flags(enabled=False))
            stack.enter_context(_full_fp32_matmul())
        try:  # on every device: the CPU flash-attention kernel has no double backward either
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        except ImportError:  # older torch
            pass
        yield


class _KeptGraphs(NamedTuple):
    """The gradient graphs kept between products (see ``hessian(cache=...)``)."""

    versions: list[int]  # the parameters' versions they were built at
    graphs: list  # (live, g_live, n) of the first batches
    complete: bool  # whether those are all the batches
    nbytes: int  # what their saved tensors hold


class HessianOperator:
    """Matrix-free exact Hessian of the mean loss over ``data`` w.r.t. the trainable parameters.

    Supports ``H @ v`` (a flat vector of length ``num_params``) and ``H @ V`` (a matrix whose
    columns are such vectors), for torch tensors and numpy arrays. Products use the model's
    current parameters; the model is left exactly as it was after every product. Build it with
    :func:`hessian`, which checks the arguments first; the arguments are documented there.

    Attributes:
        names: the trainable parameters' names, in the order of the flat vectors.
        num_params: the length of a flat vector (the Hessian is ``num_params`` square).
        num_samples: the samples in ``data`` (over all ranks when distributed).
        num_batches: the batches in ``data``.
        loss: the mean loss over ``data`` at the current parameters, measured when built.
        num_matvecs: Hessian-vector products done so far (a block of ``k`` vectors counts ``k``).
        mode: ``"eval"`` or ``"train"``: how the model is evaluated.
        reduction: ``"mean"`` or ``"sum"``: how ``loss_fn`` combines a batch's samples.
        dtype: the parameters' dtype, which products compute in.
        device: the parameters' device.

    Examples:
        >>> import torch, lossdoctor as ld
        >>> from lossdoctor.zoo.lecture import lecture_saddle
        >>> p = lecture_saddle()  # L = (1 - w1*w2)^2 at (0, 0)
        >>> H = ld.hessian(p.model, p.loss_fn, p.train_data)
        >>> H.shape, H.names
        ((2, 2), ['w1', 'w2'])
        >>> H @ torch.tensor([1.0, 1.0])
        tensor([-2., -2.])
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Any,
        *,
        mode: Mode | None = None,
        max_block: int = 16,
        micro_batch_size: int | None = None,
        distributed: bool | None = None,
        cache: bool | str | int = "auto",
        reduction: str | None = None,
        params: Any = None,
        check_reduction: bool = True,
    ) -> None:
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        self.mode_defaulted = mode is None  # None: "eval", and a notice on BatchNorm/dropout models
        if mode is None:
            mode = "eval"
            notice = default_mode_notice(
                model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
            )
            if notice:
                warnings.warn(notice, ModeNotice, stacklevel=3)
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(
                f"loss_fn must be callable (a loss module or a function such as "
                f"torch.nn.functional.cross_entropy) or None (the model's own outputs.loss), "
                f"got {type(loss_fn).__name__}."
            )
        check_data(data)
        if isinstance(model, nn.parallel.DistributedDataParallel):
            # DDP's forward may broadcast buffers (a collective per batch, which would hang with
            # unequal shards) and its hooks do not see autograd.grad: use the wrapped module,
            # whose parameters are the very same tensors.
            model = model.module
        named = selected_parameters(model, params)
        if mode == "train":
            stochastic = [
                type(m).__name__
                for m in model.modules()
                if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0
            ]
            if stochastic:
                raise ValueError(
                    f"mode='train' makes the loss random ({', '.join(sorted(set(stochastic)))} "
                    "active), so it has no well-defined Hessian. Use mode='eval' (the default), "
                    "or set the dropout probability to 0."
                )
        # Unchecked, a loss is taken as it returns a batch's value (a module's sum stays a sum).
        reduction = (
            _declared_reduction(loss_fn, reduction)
            if check_reduction or reduction is not None
            else "mean"
        )
        self.model = model
        self.loss_fn = loss_fn
        self.data = data
        self.mode = mode
        self.max_block = max(1, int(max_block))
        if micro_batch_size is not None and (
            isinstance(micro_batch_size, bool)
            or not isinstance(micro_batch_size, (int, np.integer))
            or micro_batch_size < 1
        ):
            raise ValueError(
                f"micro_batch_size must be a positive integer or None, got {micro_batch_size!r}."
            )
        self.micro_batch_size = None if micro_batch_size is None else int(micro_batch_size)
        self.reduction = reduction
        self._sum_reduction = reduction == "sum"
        self.reduction_verified = False  # set by _check_reduction when a batch could tell
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        # Every parameter of the model, selected or not: the kept gradient graphs hold all of
        # their values, so an in-place change to any of them invalidates the cache.
        self._all_params = list(model.parameters())
        self.subset = len(self.params) < sum(1 for p in self._all_params if p.requires_grad)
        self.shapes = [tuple(p.shape) for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.num_params = int(sum(self.numels))
        self.device = model_device(self.params)
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) > 1 or not next(iter(dtypes)).is_floating_point:
            raise TypeError(
                f"trainable parameters must share one floating dtype, got {sorted(map(str, dtypes))}."
            )
        self.dtype = next(iter(dtypes))
        self.num_matvecs = 0
        self.cache = cache
        self._cache_budget = _cache_budget(cache, self.device)
        self._graph_cache: _KeptGraphs | None = None
        self._cache_gave_up = False  # the forward changes buffers in place: graphs cannot be kept
        self.distributed = process_group_active() if distributed is None else bool(distributed)
        if self.distributed and not process_group_active():
            raise ValueError(
                "distributed=True but no torch.distributed process group is initialized: "
                "call torch.distributed.init_process_group first (e.g. under torchrun)."
            )
        self.loss, self.num_samples, self.num_batches = self._validate(check_reduction)

    # -- shape and layout ---------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(num_params, num_params)``, as for a matrix."""
        return (self.num_params, self.num_params)

    def flatten(self, tensors: list[torch.Tensor] | dict[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate per-parameter tensors into one flat vector in the operator's order.

        Args:
            tensors: one tensor per trainable parameter, as a list in the order of ``names``
                or a dict keyed by parameter name (extra keys are ignored).

        Returns:
            The flat vector of length ``num_params``.

        Examples:
            >>> import torch, lossdoctor as ld
            >>> from lossdoctor.zoo.lecture import lecture_saddle
            >>> p = lecture_saddle()
            >>> H = ld.hessian(p.model, p.loss_fn, p.train_data)
            >>> H.flatten({"w1": torch.tensor(1.0), "w2": torch.tensor(2.0)})
            tensor([1., 2.])
        """
        if isinstance(tensors, dict):
            tensors = [tensors[n] for n in self.names]
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Map a flat vector back to ``{parameter name: tensor of that parameter's shape}``.

        Args:
            vector: a flat vector of length ``num_params`` (an eigenvector, a gradient).

        Returns:
            A dict from each trainable parameter's name to its part of ``vector``, shaped like it.

        Raises:
            ValueError: ``vector`` does not have ``num_params`` entries.

        Examples:
            >>> import torch, lossdoctor as ld
            >>> from lossdoctor.zoo.lecture import lecture_saddle
            >>> p = lecture_saddle()
            >>> H = ld.hessian(p.model, p.loss_fn, p.train_data)
            >>> H.unflatten(torch.tensor([1.0, 2.0]))
            {'w1': tensor(1.), 'w2': tensor(2.)}
        """
        if vector.shape[0] != self.num_params:
            raise ValueError(f"vector has length {vector.shape[0]}, expected {self.num_params}.")
        parts = torch.split(vector, self.numels)
        return {n: part.reshape(s) for n, part, s in zip(self.names, parts, self.shapes)}

    def parameter_vector(self) -> torch.Tensor:
        """The model's current trainable parameters as one flat vector.

        Returns:
            A detached flat vector of length ``num_params``, in the order of ``names``.
        """
        return self.flatten([p.detach() for p in self.params])

    def restrict(self, params: Any) -> HessianOperator:
        """The principal submatrix of this Hessian on a subset of its parameters, as an operator of its own.

        The same model, loss, data and settings, without another pass to validate them. Products
        cost what this operator's do, less the backward passes into parameters outside the subset
        (the per-module blocks of :func:`lossdoctor.layer_curvature` are built this way).

        Args:
            params: the subset, as for :func:`hessian` (tensors, names or glob patterns, modules).

        Returns:
            The sub-operator, of size the subset's number of entries.

        Raises:
            ValueError: ``params`` selects parameters outside this operator's.

        Examples:
            >>> import torch, lossdoctor as ld
            >>> from lossdoctor.zoo.lecture import lecture_saddle
            >>> p = lecture_saddle()
            >>> ld.hessian(p.model, p.loss_fn, p.train_data).restrict("w1") @ torch.ones(1)
            tensor([0.])
        """
        named = selected_parameters(self.model, params)
        mine = {id(p) for p in self.params}
        outside = [n for n, p in named if id(p) not in mine]
        if outside:
            raise ValueError(
                f"params: {outside[:4]} are not among this operator's parameters; a restriction "
                "can only select from them."
            )
        sub = copy.copy(self)
        sub.names = [n for n, _ in named]
        sub.params = [p for _, p in named]
        sub.shapes = [tuple(p.shape) for p in sub.params]
        sub.numels = [p.numel() for p in sub.params]
        sub.num_params = int(sum(sub.numels))
        sub.subset = sub.num_params < self.num_params or self.subset
        sub.num_matvecs = 0
        sub._graph_cache = None  # graphs differentiate with respect to the parameters selected
        return sub

    # -- passes over the data ------------------------------------------------------------
    def _user_batches(self) -> Iterator[tuple[Any, torch.Tensor, int]]:
        for inputs, targets in iter_batches(self.data):
            inputs, targets = place(inputs, targets, self.device)
            yield inputs, targets, batch_size(targets)

    def _batches(self) -> Iterator[tuple[Any, torch.Tensor, int]]:
        """The batches every pass computes on: the user's, cut to ``micro_batch_size``."""
        for inputs, targets, n in self._user_batches():
            if self.micro_batch_size is None:
                yield inputs, targets, n
            else:
                yield from split_batch(inputs, targets, self.micro_batch_size)

    def _batch_loss(self, inputs: Any, targets: torch.Tensor, index: int) -> torch.Tensor:
        return batch_loss(self.model, self.loss_fn, inputs, targets, index)

    def _weight(self, n: int) -> float:
        return 1.0 if self._sum_reduction else float(n)

    def _check_split(
        self, inputs: Any, targets: torch.Tensor, n: int, index: int, loss: float
    ) -> None:
        """Micro-batching is exact only when the batch loss is the mean (or sum) of per-sample losses of samples the model treats independently; compare the two losses on this batch."""
        assert self.micro_batch_size is not None  # called only when micro-batching
        parts = 0.0
        for j, (x, y, m) in enumerate(split_batch(inputs, targets, self.micro_batch_size)):
            try:
                parts += self._batch_loss(x, y, index).item() * self._weight(m)
            except (ValueError, TypeError, RuntimeError) as err:
                raise ValueError(
                    f"micro_batch_size={self.micro_batch_size}: micro-batch {j} of batch {index} "
                    f"failed ({err}). Micro-batching cuts every input whose first dimension "
                    "is the batch; use micro_batch_size=None for other layouts."
                ) from err
        parts /= 1.0 if self._sum_reduction else n
        rtol = 1e-4 if self.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-9
        if abs(parts - loss) > rtol * max(abs(loss), 1e-6):
            raise ValueError(
                f"micro_batch_size={self.micro_batch_size} changes the loss of batch {index} ({loss:.8g} whole, "
                f"{parts:.8g} from micro-batches): the model or the loss couples the samples of a batch "
                "(BatchNorm in mode='train', a loss that is not a per-sample mean or sum, inputs whose "
                "first dimension is not the batch). Use micro_batch_size=None."
            )

    def _check_reduction(
        self, inputs: Any, targets: torch.Tensor, n: int, index: int, loss: float
    ) -> None:
        """Check the per-sample contract (the batch loss is the mean, or with reduction="sum" the sum, of its samples' losses) on the first batch of two samples or more: its loss against the losses of its two halves, in eval mode (so BatchNorm in mode="train" does not couple the halves).

        A function ``lambda o, t: F.mse_loss(o, t, reduction="sum")`` has no ``.reduction`` to read;
        taken for a mean, its Hessian would be the batch size times too large. A loss that is
        neither (a mean over unmasked tokens, a model that couples its samples even in eval mode)
        cannot be told apart here: it is used as declared."""
        with evaluation_mode(self.model, "eval"):
            try:
                whole = (
                    self._batch_loss(inputs, targets, index).item()
                    if self.mode == "train"
                    else loss
                )
            except (ValueError, TypeError, RuntimeError, IndexError):
                return  # a model that cannot run in eval mode: its contract stays as declared
            observed, parts = _halves_reduction(
                lambda x, y: self._batch_loss(x, y, index).item(),
                inputs,
                targets,
                n,
                whole,
                _contract_rtol(self.dtype),
            )
        if observed is None:
            return
        self.reduction_verified = True
        if observed == self.reduction:
            return
        raise _contract_error(
            self.loss_fn,
            observed,
            index,
            n,
            whole,
            parts,
            "the Hessian would be the batch size times too large",
        )

    def _validate(self, check_reduction: bool) -> tuple[float, int, int]:
        total, count, batches = 0.0, 0, 0
        with evaluation_mode(self.model, self.mode), torch.no_grad():
            for i, (inputs, targets, n) in enumerate(self._user_batches()):
                loss = self._batch_loss(inputs, targets, i).item()
                if not math.isfinite(loss):
                    raise ValueError(
                        f"the loss is {loss} on batch {i}: the Hessian of a "
                        "non-finite loss is meaningless. Check the data and the model's "
                        "parameters for NaN/Inf."
                    )
                if check_reduction and not self.reduction_verified and n >= 2:
                    self._check_reduction(inputs, targets, n, i, loss)
                if self.micro_batch_size is not None and n > self.micro_batch_size:
                    self._check_split(inputs, targets, n, i, loss)
                total += loss * self._weight(n)
                count += n
                batches += 1
        self._local_samples = count
        if self.distributed:
            total, samples, reduced = self._all_reduce_scalars(total, count, batches)
            count, batches = int(samples), int(reduced)
        if count == 0:
            raise ValueError(
                "data is empty: it yielded no samples"
                + (" on any rank." if self.distributed else ".")
            )
        return total / count, count, batches

    def _to_param_dtype(self, block: torch.Tensor) -> torch.Tensor:
        return block.to(device=self.device, dtype=self.dtype)

    def _first_backward(
        self, inputs: Any, targets: torch.Tensor, n: int, index: int
    ) -> tuple[list[int], list[torch.Tensor]]:
        """The batch's gradient with its graph: which parameters it depends on, and those parts."""
        loss = self._batch_loss(inputs, targets, index) * self._weight(n)
        grads = torch.autograd.grad(
            loss, self.params, create_graph=True, allow_unused=True, materialize_grads=True
        )
        live = [j for j, g in enumerate(grads) if g.requires_grad]
        return live, [grads[j] for j in live]

    def _versions(self) -> list[int]:
        return [p._version for p in self._all_params]

    def _buffer_versions(self) -> list[int]:
        return [b._version for b in self.model.buffers()]

    def _gradient_graphs(self):
        """Yield ``(live, g_live, n, kept)`` per batch.

        ``kept`` says the graph is held between products (so it must survive this one). Graphs of
        the current parameters are taken from the cache; the others are computed afresh. The cache
        holds the graphs of the first batches, as many as fit the budget (all with ``cache=True``),
        and is rebuilt when the parameters change."""
        held = self._held_graphs()
        if held is not None:
            yield from ((*g, True) for g in held.graphs)
            if not held.complete:
                yield from self._fresh_graphs(skip=len(held.graphs))
            return
        self._graph_cache = None  # free old graphs (parameters changed) before building new ones
        if self._cache_budget == 0 or self._cache_gave_up:
            yield from self._fresh_graphs()
            return
        keep, kept, saved = True, [], _SavedBytes()
        saved.exclude(self._all_params)
        with evaluation_mode(self.model, self.mode), _double_backward_safe(self.model, self.device):
            for i, (inputs, targets, n) in enumerate(self._batches()):
                if keep:
                    buffers, kept_bytes = self._buffer_versions(), saved.total
                    with saved:
                        live, g_live = self._first_backward(inputs, targets, n, i)
                    if self._buffer_versions() != buffers:
                        # The forward changes buffers in place (BatchNorm in train mode): the next
                        # batch's forward would invalidate this graph.
                        if self.cache is True:
                            raise ValueError(
                                "cache=True cannot keep the gradient graphs of a model whose forward "
                                "changes its buffers in place (BatchNorm running statistics in "
                                "mode='train'); use cache='auto' or cache=False."
                            )
                        keep, kept = False, []
                        self._cache_gave_up = True
                    elif saved.total > self._cache_budget:
                        keep = False  # this batch and the rest are recomputed in every product
                else:
                    live, g_live = self._first_backward(inputs, targets, n, i)
                if keep:
                    kept.append((live, g_live, n))
                yield live, g_live, n, keep
        if not self._cache_gave_up:
            self._graph_cache = _KeptGraphs(
                self._versions(), kept, keep, saved.total if keep else kept_bytes
            )

    def _fresh_graphs(self, skip: int = 0):
        """The gradient graphs of the batches after the first ``skip``, computed for this product."""
        with evaluation_mode(self.model, self.mode), _double_backward_safe(self.model, self.device):
            for i, (inputs, targets, n) in enumerate(self._batches()):
                if i >= skip:
                    yield *self._first_backward(inputs, targets, n, i), n, False

    def _hvp_block(self, block: torch.Tensor) -> torch.Tensor:
        """``block`` is (k, num_params) in the parameters' dtype; returns H @ block.T as (k, n)."""
        k = block.shape[0]
        pieces = [
            piece.reshape(k, *s)
            for piece, s in zip(torch.split(block, self.numels, dim=1), self.shapes)
        ]
        out = torch.zeros(k, self.num_params, device=self.device, dtype=self.dtype)
        count = 0
        for live, g_live, n, kept in self._gradient_graphs():
            count += n
            if not live:  # loss is at most linear in every parameter: zero curvature
                continue
            # One forward and first backward serve every column of the block.
            for c in range(k):
                hv = torch.autograd.grad(
                    g_live,
                    self.params,
                    [pieces[j][c] for j in live],
                    retain_graph=kept or c < k - 1,
                    allow_unused=True,
                    materialize_grads=True,
                )
                out[c] += torch.cat([h.reshape(-1) for h in hv])
        if count != self._local_samples:
            raise ValueError(
                f"data yielded {count} samples in this pass but {self._local_samples} when "
                "the operator was built; the Hessian needs the same data on every pass."
            )
        if self.distributed:
            torch.distributed.all_reduce(out)  # each rank holds its shard's sum over samples
        self.num_matvecs += k
        return out.div_(self.num_samples)

    def _apply(self, matrix: torch.Tensor) -> torch.Tensor:
        """``matrix`` is (n, k) of any dtype/device; returns H @ matrix with the same dtype/device."""
        rows = matrix.T
        outs = []
        if self.device.type == "cpu":
            reuse_freed_pages()
        with preserved_rng():
            for start in range(0, rows.shape[0], self.max_block):
                chunk = self._to_param_dtype(rows[start : start + self.max_block])
                try:
                    outs.append(self._hvp_block(chunk))
                except RuntimeError as err:
                    if "derivative for" in str(err) and "not implemented" in str(err):
                        raise RuntimeError(
                            f"The model uses an operation torch cannot differentiate twice ({err}); a "
                            "Hessian-vector product needs its second derivative. Replace it by an equivalent "
                            "built from differentiable operations (hardsigmoid and hardswish, fused attention "
                            "and cuDNN RNN kernels are replaced automatically), or analyse only parameters "
                            "before it."
                        ) from err
                    raise
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return out.T.to(device=matrix.device, dtype=matrix.dtype)

    # -- the linear-operator protocol -------------------------------------------------------
    def __matmul__(self, other: Any) -> Any:
        as_numpy = isinstance(other, np.ndarray)
        x = torch.from_numpy(np.ascontiguousarray(other)) if as_numpy else other
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"HessianOperator @ expects a torch.Tensor or numpy array, got {type(other).__name__}."
            )
        if x.dim() not in (1, 2) or x.shape[0] != self.num_params:
            raise ValueError(
                f"HessianOperator @ expects a vector of length {self.num_params} or a matrix "
                f"with {self.num_params} rows, got shape {tuple(x.shape)}."
            )
        if not x.is_floating_point():
            x = x.to(self.dtype)
        result = self._apply(x.reshape(self.num_params, -1))
        result = result.reshape(x.shape)
        return result.numpy() if as_numpy else result

    @property
    def cached(self) -> bool:
        """Whether the gradient graphs of every batch are held for the current parameters."""
        held = self._held_graphs()
        return held is not None and held.complete

    @property
    def cached_batches(self) -> int:
        """How many batches (micro-batches) have their gradient graphs held for the current parameters: products recompute only the others (see ``cache``)."""
        held = self._held_graphs()
        return 0 if held is None else len(held.graphs)

    @property
    def cached_bytes(self) -> int:
        """The bytes of the tensors the held gradient graphs save (the cache's memory, not counting the parameters themselves)."""
        held = self._held_graphs()
        return 0 if held is None else held.nbytes

    def _held_graphs(self) -> _KeptGraphs | None:
        """The cache, if it was built for the current parameters."""
        held = self._graph_cache
        return held if held is not None and held.versions == self._versions() else None

    def clear_cache(self) -> None:
        """Free the gradient graphs kept by ``cache``."""
        self._graph_cache = None

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H @ v``, for code that expects a ``matvec`` method (as scipy's operators have).

        Args:
            v: a flat vector of length ``num_params``, or a ``(num_params, k)`` matrix.

        Returns:
            The product, with ``v``'s type, dtype and device.
        """
        return self @ v

    def gradient(self) -> tuple[float, torch.Tensor]:
        """The mean loss and its flat gradient over all of ``data`` (one pass, no curvature).

        Returns:
            ``(loss, gradient)``: the mean loss over every sample (a float) and its gradient as a
            flat vector of length ``num_params``.

        Examples:
            >>> import lossdoctor as ld
            >>> from lossdoctor.zoo.lecture import lecture_saddle
            >>> p = lecture_saddle()  # the saddle point: gradient zero
            >>> ld.hessian(p.model, p.loss_fn, p.train_data).gradient()
            (1.0, tensor([0., 0.]))
        """
        grad = torch.zeros(self.num_params, device=self.device, dtype=self.dtype)
        total, count = 0.0, 0
        with preserved_rng(), evaluation_mode(self.model, self.mode):
            for i, (inputs, targets, n) in enumerate(self._batches()):
                loss = self._batch_loss(inputs, targets, i) * self._weight(n)
                gs = torch.autograd.grad(
                    loss, self.params, allow_unused=True, materialize_grads=True
                )
                grad += torch.cat([g.reshape(-1) for g in gs])
                total += loss.item()
                count += n
        if self.distributed:
            torch.distributed.all_reduce(grad)
            total, samples = self._all_reduce_scalars(total, count)
            return total / samples, grad / samples
        return total / count, grad / count

    def _all_reduce_scalars(self, *values: float) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def to_scipy(self):
        """This operator as a ``scipy.sparse.linalg.LinearOperator`` (float64).

        Returns:
            A ``LinearOperator`` of shape ``(num_params, num_params)`` whose products are this
            operator's, for scipy's solvers (``eigsh``, ``cg``, ...).

        Examples:
            >>> import numpy as np, lossdoctor as ld
            >>> from lossdoctor.zoo.lecture import lecture_saddle
            >>> p = lecture_saddle()
            >>> ld.hessian(p.model, p.loss_fn, p.train_data).to_scipy() @ np.ones(2)
            array([-2., -2.])
        """
        from scipy.sparse.linalg import LinearOperator

        def mv(x: np.ndarray) -> np.ndarray:
            return (self @ np.asarray(x, dtype=np.float64)).astype(np.float64)

        return LinearOperator(self.shape, matvec=mv, matmat=mv, rmatvec=mv, dtype=np.float64)

    def __repr__(self) -> str:
        micro = (
            "" if self.micro_batch_size is None else f", micro_batch_size={self.micro_batch_size}"
        )
        return (
            f"HessianOperator(num_params={self.num_params}, num_samples={self.num_samples}, "
            f"batches={self.num_batches}{micro}, mode={self.mode!r}, dtype={self.dtype}, device={self.device})"
        )


CACHE_MAX_BYTES = 4 * 2**30
CACHE_SHARE = 0.25


def _cache_budget(cache: Any, device: torch.device) -> float:
    """The bytes of saved tensors the gradient-graph cache may hold."""
    if cache is True:
        return math.inf
    if cache is False:
        return 0
    if isinstance(cache, str) and cache == "auto":
        return cache_budget_bytes(device)
    if isinstance(cache, (int, np.integer)) and not isinstance(cache, bool) and cache >= 0:
        return int(cache)
    raise ValueError(
        f"cache must be True, False, 'auto' or a number of bytes (an int >= 0), got {cache!r}."
    )


def cache_budget_bytes(device: torch.device) -> int:
    """How much ``cache="auto"`` may hold.

    a quarter of the memory available now on ``device`` (free GPU memory; the host's MemAvailable),
    at most 4 GiB."""
    available = None
    if device.type == "cuda":
        try:
            available = torch.cuda.mem_get_info(device)[0]
        except RuntimeError:
            available = None
    else:
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        available = int(line.split()[1]) * 1024
                        break
        except OSError:
            available = None
    if available is None:  # not Linux: stay modest
        available = 2**30
    return int(min(CACHE_MAX_BYTES, CACHE_SHARE * available))


class _SavedBytes:
    """Counts the bytes of the distinct storages autograd saves while active (the memory a kept gradient graph holds), leaving out the parameters' own storage."""

    def __init__(self) -> None:
        self.total = 0
        # Weak references: a storage that died (a pruned node's temporary) may leave its address
        # to a new one, which must count.
        self._seen: dict[int, weakref.ref] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _first_sight(self, storage: torch.UntypedStorage) -> bool:
        seen = self._seen.get(storage.data_ptr())
        if seen is not None and seen() is storage:
            return False
        self._seen[storage.data_ptr()] = weakref.ref(storage)
        return True

    def exclude(self, tensors: list[torch.Tensor]) -> None:
        for t in tensors:
            self._first_sight(t.untyped_storage())

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # no plain storage (sparse, nested, ...)
            self.total += t.numel() * t.element_size()
        else:
            if self._first_sight(storage):
                self.total += storage.nbytes()
        # detach(): the packed tensor must not hold its own grad_fn (a cycle autograd cannot free);
        # autograd re-attaches the graph on unpacking.
        return t.detach()

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    def __enter__(self) -> _SavedBytes:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


def hessian(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    *,
    mode: Mode | None = None,
    max_block: int = 16,
    micro_batch_size: int | None = None,
    distributed: bool | None = None,
    cache: bool | str | int = "auto",
    reduction: Reduction | None = None,
    params: Any = None,
    check_reduction: bool = True,
) -> HessianOperator:
    """The exact Hessian of the mean of ``loss_fn`` over every sample in ``data``.

    Args:
        model: any ``nn.Module``; its trainable parameters (``requires_grad=True``) span the
            space, or those of them that ``params`` selects.
        loss_fn: ``loss_fn(model(inputs), targets)`` returning the batch-mean loss (a module or a
            function such as ``torch.nn.functional.cross_entropy``); ``None``: the loss the model
            computes itself (``outputs.loss``: a Hugging Face model given ``labels``); a
            ``loss_fn(outputs, batch)`` (second parameter named ``batch``) gets the whole batch.
        data: a DataLoader, a list of batches (``(inputs, targets)`` pairs, tuples
            ``(x1, ..., targets)`` or dicts with ``labels``), or one such batch.
        mode: ``"eval"`` (dropout off, BatchNorm running statistics) or ``"train"`` (BatchNorm on
            each batch's statistics, as the network is trained). ``None`` (default) is ``"eval"``,
            with a one-line :class:`~lossdoctor.model_state.ModeNotice` warning on a model with
            BatchNorm or dropout saying so and how to choose the other; ``op.mode`` and every
            result computed from the operator state the mode used.
        max_block: how many vectors one pass over the data multiplies at once (memory bound).
        micro_batch_size: cut every batch larger than this into micro-batches for the products
            and gradients, so the memory of one product no longer grows with the DataLoader's batch
            size (a batch of 1,000 on a 94k-parameter CNN: +110 MB peak, in micro-batches of 250:
            +70 MB). The Hessian is the same, because it is checked, on every batch when the
            operator is built, that the micro-batches give the batch's loss; a model or loss that
            couples the samples of a batch (BatchNorm in ``mode="train"``) is refused with a
            ``ValueError``. ``None`` (default) computes on the batches as given.
        distributed: with a ``torch.distributed`` process group (default: whenever one is
            initialized), each rank's ``data`` is its shard and the operator is the Hessian of
            the mean loss over all shards, weighted by their sample counts; every rank gets the
            same products.
        cache: keep the batches' gradient graphs between products, so each product after the
            first costs one second backward pass instead of a forward and two backward passes
            (about 40% less time), at the price of holding their saved tensors in memory (a
            94k-parameter CNN: 11 KB per sample). ``"auto"`` (default) keeps them within a
            quarter of the memory available (at most 4 GiB); a number keeps them within that
            many bytes; ``True`` keeps them all, ``False`` none. Where not all fit, the graphs of
            the first batches are kept and the rest are recomputed in every product, so the time
            falls in step with the memory given (``op.cached_batches`` says how many are held,
            ``op.cached`` whether all are). The cache is rebuilt when any parameter is modified
            in place; ``clear_cache()`` frees it. Kept graphs fix their batches: a DataLoader
            that augments at random is measured on its first pass for those batches.
        reduction: how ``loss_fn`` combines a batch's per-sample losses: ``"mean"`` or
            ``"sum"`` (the Hessian is always that of the mean per-sample loss, so a sum is
            divided by the number of samples). ``None`` (default) reads ``loss_fn.reduction``
            (loss modules) and otherwise assumes a mean. Checked on the first batch of two
            samples or more (the batch's loss against its halves'): a function that sums, such
            as ``lambda o, t: F.mse_loss(o, t, reduction="sum")``, is refused with a
            ``ValueError`` unless ``reduction="sum"`` is given. A loss normalized otherwise (a
            token cross-entropy with ``ignore_index``, a mean over the unmasked tokens of each
            batch) is neither and is used as declared: its Hessian is of the size-weighted mean
            of batch losses, which weights a token by 1 / (its batch's unmasked tokens).
            ``op.reduction_verified`` says whether the first batch confirmed the contract
            (False for such a loss).
        params: the parameters to differentiate with respect to (default ``None``: every
            trainable one). Parameter tensors, names (``"fc.weight"``, a module's name such as
            ``"layer2"``, or glob patterns such as ``"layer2.*"``), submodules, or a list of
            them. The operator is the principal submatrix of the full Hessian on those
            coordinates, in the model's parameter order (``op.names``). ``requires_grad`` is
            never touched, before, during or after: a frozen parameter named explicitly is
            refused with a ``ValueError``, as are unknown names, tensors or modules of another
            model, and a selection of nothing.
        check_reduction: False takes the loss as it returns a batch's value, whatever its
            reduction: no check, and with ``reduction=None`` a loss module's ``.reduction`` is not
            read either. The Hessian is then that of ``loss_fn``'s value on a batch,
            size-weighted over the batches: for a loss that sums, the objective an optimizer
            steps on at that batch size. The stall doctor measures this way, so a training loop
            that sums its loss is diagnosed, not refused.

    Returns:
        The operator ``H``: ``H @ v`` for a flat vector or a matrix of them (torch or numpy),
        ready for :func:`lossdoctor.eigenpairs`, :func:`lossdoctor.trace` and
        :func:`lossdoctor.spectral_density`.

    Raises:
        ValueError: bad arguments (a mode, a reduction, ``mode="train"`` with active dropout,
            ``distributed=True`` without a process group), or a loss that is not the declared
            mean or sum of per-sample losses.
        TypeError: ``loss_fn`` is not callable, or the parameters do not share one floating dtype.

    Examples:
        The lecture's saddle, L = (1 - w1*w2)^2 at (0, 0), has the Hessian [[0, -2], [-2, 0]]:

        >>> import torch, lossdoctor as ld
        >>> from lossdoctor.zoo.lecture import lecture_saddle
        >>> p = lecture_saddle()
        >>> H = ld.hessian(p.model, p.loss_fn, p.train_data)
        >>> H @ torch.tensor([1.0, 0.0])
        tensor([ 0., -2.])

        A loss that sums over the batch says so:

        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(3, 1)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> H = ld.hessian(model, lambda o, t: ((o - t) ** 2).sum(), (x, y), reduction="sum")
        >>> H.num_params, H.reduction
        (4, 'sum')
    """
    check_arguments(
        model=model,
        loss_fn=loss_fn,
        mode=mode,
        max_block=max_block,
        micro_batch_size=micro_batch_size,
        distributed=distributed,
        cache=cache,
    )
    check_bool(check_reduction, "check_reduction")
    return HessianOperator(
        model,
        loss_fn,
        data,
        mode=mode,
        max_block=max_block,
        micro_batch_size=micro_batch_size,
        distributed=distributed,
        cache=cache,
        reduction=reduction,
        params=params,
        check_reduction=check_reduction,
    )


def stepped_hessian(
    model: nn.Module, loss_fn: LossFn, data: Data, mode: Mode | None, params: Any = None
) -> HessianOperator:
    """The Hessian of the loss as the optimizer steps on it: ``loss_fn``'s value on each batch.

    A loss that sums over the batch (a function, or a module with ``reduction="sum"``) stays a
    sum, so ``lr * lambda_max`` is the step the run takes. ``hessian`` alone refuses a summing
    function, and reads a module's sum as a per-sample mean (B times flatter). For a loss that is
    a batch mean the two are the same operator."""
    return hessian(model, loss_fn, data, mode=mode, params=params, check_reduction=False)
