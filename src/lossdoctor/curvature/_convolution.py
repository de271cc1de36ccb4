"""Convolutions whose second backward uses torch's fast kernels.

A Hessian-vector product by double back-propagation differentiates a convolution's backward.
Torch's formula for that (``_convolution_double_backward``) computes the weight part as a
convolution with the batch taken for channels, after transposing both operands: on the CPU that
was about 40% of a product on the benchmark CNN. Written out, each of the three parts is a plain
convolution or one half of ``convolution_backward``, which have fast kernels everywhere:

- towards the output's gradient ``g``: ``conv(ddx, w) + conv(x, ddw) + ddb``;
- towards the input ``x``: the input-gradient of ``conv(., ddw)`` at output gradient ``g``;
- towards the weight ``w``: the weight-gradient of ``conv(ddx, .)`` at output gradient ``g``;

where ``ddx, ddw, ddb`` are what flows back into the first backward's results. The values are
those of torch's formula (the same kernels), so products are unchanged; only their time is.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.autograd import Function
from torch.nn import functional as F

from ._patches import patched

_aten = torch.ops.aten


def _conv(x: torch.Tensor, w: torch.Tensor, conf: tuple) -> torch.Tensor:
    stride, padding, dilation, groups = conf
    zeros = [0] * (x.dim() - 2)
    return _aten.convolution(x, w, None, stride, padding, dilation, False, zeros, groups)


def _conv_backward(
    g: torch.Tensor, x: torch.Tensor, w: torch.Tensor, conf: tuple, mask: list[bool]
) -> tuple[Any, Any, Any]:
    stride, padding, dilation, groups = conf
    zeros = [0] * (x.dim() - 2)
    bias_sizes = [w.shape[0]] if mask[2] else None
    return _aten.convolution_backward(
        g, x, w, bias_sizes, stride, padding, dilation, False, zeros, groups, mask
    )


class _ConvolutionBackward(Function):
    """The first backward of a convolution, differentiable again through fast kernels."""

    @staticmethod
    def forward(ctx, g, x, w, has_bias, conf):  # type: ignore[override]
        ctx.save_for_backward(g, x, w)
        ctx.conf, ctx.has_bias = conf, has_bias
        return _conv_backward(g, x, w, conf, [x.requires_grad, w.requires_grad, has_bias])

    @staticmethod
    def backward(ctx, ddx, ddw, ddb):  # type: ignore[override]
        g, x, w = ctx.saved_tensors
        conf = ctx.conf
        dg = dx = dw = None
        if ctx.needs_input_grad[0]:
            parts = []
            if ddx is not None:
                parts.append(_conv(ddx, w, conf))
            if ddw is not None:
                parts.append(_conv(x, ddw, conf))
            if ddb is not None and ctx.has_bias:
                parts.append(ddb.reshape(1, -1, *([1] * (g.dim() - 2))).expand_as(g))
            for part in parts:
                dg = part if dg is None else dg + part
        if ctx.needs_input_grad[1] and ddw is not None:
            dx = _conv_backward(g, x, ddw, conf, [True, False, False])[0]
        if ctx.needs_input_grad[2] and ddx is not None:
            dw = _conv_backward(g, ddx, w, conf, [False, True, False])[1]
        return dg, dx, dw, None, None


class _Convolution(Function):
    """A convolution (no transposition) whose backward is :class:`_ConvolutionBackward`."""

    @staticmethod
    def forward(ctx, x, w, b, conf):  # type: ignore[override]
        ctx.save_for_backward(x, w)
        ctx.conf, ctx.has_bias = conf, b is not None
        stride, padding, dilation, groups = conf
        zeros = [0] * (x.dim() - 2)
        return _aten.convolution(x, w, b, stride, padding, dilation, False, zeros, groups)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, w = ctx.saved_tensors
        dx, dw, db = _ConvolutionBackward.apply(g, x, w, ctx.has_bias, ctx.conf)
        return dx, dw, db, None


def _as_list(value: Any, dims: int) -> list[int] | None:
    if isinstance(value, int):
        return [value] * dims
    if (
        isinstance(value, (tuple, list))
        and len(value) == dims
        and all(isinstance(v, int) for v in value)
    ):
        return list(value)
    return None  # "same"/"valid" and anything else: left to torch


def _fast_convolution(dims: int, original: Any) -> Any:
    def convolution(
        input: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
    ) -> torch.Tensor:
        conf = (_as_list(stride, dims), _as_list(padding, dims), _as_list(dilation, dims), groups)
        plain = (torch.Tensor, nn.Parameter)  # not a tensor subclass with its own dispatch
        usable = (
            torch.is_grad_enabled()
            and type(input) in plain
            and type(weight) in plain
            and (bias is None or type(bias) in plain)
            and input.dim() == dims + 2  # batched
            and input.dtype.is_floating_point
            and None not in conf[:3]
            and isinstance(groups, int)
            and (input.requires_grad or weight.requires_grad)
            and not torch.is_autocast_enabled(input.device.type)
        )
        if not usable:
            return original(input, weight, bias, stride, padding, dilation, groups)
        return _Convolution.apply(input, weight, bias, conf)

    convolution.__wrapped__ = original  # type: ignore[attr-defined]
    return convolution


@contextlib.contextmanager
def fast_convolution_double_backward() -> Iterator[None]:
    """Convolutions with a faster second backward, within the block.

    ``F.conv1d/2d/3d`` (what ``nn.Conv*d`` calls) build graphs whose second backward uses
    :class:`_ConvolutionBackward` (module docstring): the same values in less time. Safe to
    enter from several threads at once (:func:`._patches.patched`)."""
    factories = {f"conv{dims}d": functools.partial(_fast_convolution, dims) for dims in (1, 2, 3)}
    with patched(F, factories):
        yield
