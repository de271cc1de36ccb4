"""L2 regularization over the weights only.

Parameter groups for any ``torch.optim`` optimizer, and the explicit penalty ``1/2 * gamma *
sum(w**2)`` for users who add it to the loss.

Biases shift the function without shaping its smoothness, and normalization layers' gains and
shifts are rescaled by the layer itself, so both are left out of the penalty by default.
Normalization layers are found by module type (BatchNorm*, InstanceNorm*, LayerNorm, GroupNorm,
RMSNorm and any module class whose name ends in ``Norm``), not only by parameter name.

Penalty versus decoupled weight decay: adding ``l2_penalty`` to the loss puts ``gamma * w`` into
the gradient. With plain SGD that is exactly ``weight_decay=gamma``; with Adam the penalty's
gradient is divided by the adaptive denominator like the rest, so weights with large gradients
are barely regularized. ``torch.optim.AdamW`` (decoupled weight decay, Loshchilov & Hutter)
shrinks ``w <- w - lr * weight_decay * w`` outside the adaptive step instead. Use
:func:`weight_decay_groups` for the latter and :func:`l2_penalty` for the lecture's
``L_new = L_old + 1/2 gamma sum w**2``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from .._checks import check_bool, check_float, check_module

DEFAULT_EXCLUDE: tuple[str, ...] = ("bias", "norm")
# Keywords of ``exclude``; anything else is a parameter name or glob.
KEYWORDS = {
    "bias": "every parameter whose own name contains 'bias' (bias, in_proj_bias, bias_ih_l0, ...)",
    "norm": "every parameter of a normalization layer (found by module type)",
    "embedding": "every parameter of an nn.Embedding / nn.EmbeddingBag",
    "1d": "every parameter with at most one dimension (biases, norm gains, scalars)",
}


def _norm_types() -> tuple[type, ...]:
    # _NormBase covers BatchNorm*, SyncBatchNorm, InstanceNorm* and their lazy variants;
    # RMSNorm exists from torch 2.4 on.
    found: list[type] = [nn.modules.batchnorm._NormBase]
    found += [
        getattr(nn, n)
        for n in ("LayerNorm", "GroupNorm", "RMSNorm", "LocalResponseNorm")
        if hasattr(nn, n)
    ]
    return tuple(found)


NORM_TYPES = _norm_types()


def is_norm_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer (its gains and shifts are not decayed).

    True for torch's normalization layers and for leaf modules whose class is named ``...Norm``
    (the hand-written RMSNorm of many LLM code bases, ScaleNorm, ...; a wrapper such as
    ``PreNorm`` has children and is not one).

    Args:
        module: any module.

    Returns:
        Whether it is a normalization layer.

    Examples:
        >>> from torch import nn
        >>> from lossdoctor.training.regularization import is_norm_layer
        >>> is_norm_layer(nn.LayerNorm(4)), is_norm_layer(nn.Linear(4, 4))
        (True, False)
    """
    if isinstance(module, NORM_TYPES):
        return True
    return type(module).__name__.lower().endswith("norm") and next(module.children(), None) is None


def _owners(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str]]]:
    """For every parameter (by identity), all ``(full name, owning module, own name)`` it appears under; a tied parameter has several."""
    owners: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for own_name, p in module.named_parameters(recurse=False):
            full = f"{module_name}.{own_name}" if module_name else own_name
            owners.setdefault(id(p), []).append((full, module, own_name))
    return owners


def _matches_name(entry: str, full_name: str) -> bool:
    if any(c in entry for c in "*?["):
        return fnmatch.fnmatchcase(full_name, entry)
    return full_name == entry or full_name.endswith("." + entry)


def _check_exclude(exclude: Any) -> tuple[str, ...]:
    if isinstance(exclude, str):
        exclude = (exclude,)
    if not isinstance(exclude, Sequence) or not all(isinstance(e, str) for e in exclude):
        raise TypeError(
            f"exclude must be a sequence of strings (keywords {sorted(KEYWORDS)} or "
            f"parameter names / globs), got {exclude!r}."
        )
    return tuple(exclude)


def split_parameters(
    model: nn.Module, *, exclude: Sequence[str] = DEFAULT_EXCLUDE, trainable_only: bool = True
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """Split the model's named parameters into those decayed and those not.

    Each tied parameter appears once (under its first name), in module order.

    Args:
        model: any ``nn.Module``.
        exclude: keywords (``"bias"``, ``"norm"``, ``"embedding"``, ``"1d"``) and parameter
            names (a full name, a dotted suffix such as ``"pos_embed"`` or ``"head.weight"``, or
            a glob such as ``"*.scale"``); a tied parameter is excluded when any of its names is.
        trainable_only: leave out parameters with ``requires_grad=False``.

    Returns:
        ``(decayed, not_decayed)``: two lists of ``(name, parameter)``.

    Raises:
        ValueError: a name in ``exclude`` matches no parameter (a typo would silently decay).

    Examples:
        >>> import torch, lossdoctor as ld
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1))
        >>> from lossdoctor.training.regularization import split_parameters
        >>> decayed, kept = split_parameters(model)
        >>> [n for n, _ in decayed], [n for n, _ in kept]
        (['0.weight', '2.weight'], ['0.bias', '1.weight', '1.bias', '2.bias'])
    """
    check_module(model)
    check_bool(trainable_only, "trainable_only")
    entries = _check_exclude(exclude)
    keywords = {e for e in entries if e in KEYWORDS}
    names = [e for e in entries if e not in KEYWORDS]
    owners = _owners(model)
    used: set[str] = set()
    decayed: list[tuple[str, nn.Parameter]] = []
    kept: list[tuple[str, nn.Parameter]] = []
    for name, p in model.named_parameters():  # tied parameters once
        if trainable_only and not p.requires_grad:
            continue
        places = owners[id(p)]
        excluded = (
            ("bias" in keywords and any("bias" in own for _, _, own in places))
            or ("norm" in keywords and any(is_norm_layer(m) for _, m, _ in places))
            or (
                "embedding" in keywords
                and any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for _, m, _ in places)
            )
            or ("1d" in keywords and p.dim() <= 1)
        )
        for entry in names:
            if any(_matches_name(entry, full) for full, _, _ in places):
                used.add(entry)
                excluded = True
        (kept if excluded else decayed).append((name, p))
    unused = [e for e in names if e not in used]
    if unused:
        all_names = [full for places in owners.values() for full, _, _ in places]
        raise ValueError(
            f"exclude names {unused} match no {'trainable ' if trainable_only else ''}parameter "
            f"of the model; its parameters are {all_names[:12]}"
            f"{' ...' if len(all_names) > 12 else ''}. Keywords are {sorted(KEYWORDS)}."
        )
    return decayed, kept


def weight_decay_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    trainable_only: bool = True,
) -> list[dict[str, Any]]:
    """Parameter groups for any ``torch.optim`` optimizer that decay the weights only.

    The weights get ``weight_decay``; biases, normalization-layer parameters and the names in
    ``exclude`` get ``weight_decay=0``. Each group carries its ``param_names``. Tied parameters
    appear once. Frozen parameters (``requires_grad=False``) are left out unless
    ``trainable_only=False`` (then they follow the same rules). Empty groups are dropped.

    Args:
        model: any ``nn.Module``.
        weight_decay: the decay of the weights.
        exclude: what is not decayed (see :func:`split_parameters`).
        trainable_only: leave out frozen parameters.

    Returns:
        One or two parameter groups (dicts with ``params``, ``weight_decay``, ``param_names``).

    Raises:
        ValueError: the model has no trainable parameters, or ``exclude`` names none.

    Examples:
        >>> import torch, lossdoctor as ld
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1))
        >>> groups = ld.weight_decay_groups(model, 0.05)
        >>> [(g["weight_decay"], g["param_names"]) for g in groups]
        [(0.05, ['0.weight', '2.weight']), (0.0, ['0.bias', '1.weight', '1.bias', '2.bias'])]
        >>> optimizer = torch.optim.AdamW(groups, lr=1e-3)
    """
    weight_decay = check_float(weight_decay, "weight_decay", minimum=0.0)
    decayed, kept = split_parameters(model, exclude=exclude, trainable_only=trainable_only)
    if not decayed and not kept:
        raise ValueError(
            "the model has no trainable parameters (none with requires_grad=True) to put "
            "in an optimizer; pass trainable_only=False to include frozen ones."
        )
    groups = []
    for params, wd in ((decayed, float(weight_decay)), (kept, 0.0)):
        if params:
            groups.append(
                {
                    "params": [p for _, p in params],
                    "weight_decay": wd,
                    "param_names": [n for n, _ in params],
                }
            )
    return groups


def l2_penalty(
    model: nn.Module, gamma: float, *, exclude: Sequence[str] = DEFAULT_EXCLUDE
) -> torch.Tensor:
    """The lecture's L2 penalty ``1/2 * gamma * sum(w**2)`` over the weights, biases left out.

    Over the model's trainable weights (biases and normalization parameters excluded by default;
    tied weights counted once), differentiable, on the parameters' device:
    ``loss = loss_fn(model(x), y) + ld.l2_penalty(model, 1e-4)``. Its gradient is ``gamma * w``:
    with SGD the same as ``weight_decay=gamma``, with Adam not the same as AdamW's decoupled
    decay (see the module docstring).

    Args:
        model: any ``nn.Module``.
        gamma: the strength γ.
        exclude: what is not penalized (see :func:`split_parameters`).

    Returns:
        A scalar tensor (zero when nothing is penalized).

    Examples:
        >>> import torch, lossdoctor as ld
        >>> model = torch.nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[3.0, 4.0]]))
        ...     _ = model.bias.fill_(100.0)
        >>> ld.l2_penalty(model, 0.1)  # 1/2 * 0.1 * (9 + 16): the bias is left out
        tensor(1.2500, grad_fn=<MulBackward0>)
    """
    gamma = check_float(gamma, "gamma", minimum=0.0)
    decayed, kept = split_parameters(model, exclude=exclude)
    if not decayed:
        device = next((p.device for _, p in kept), torch.device("cpu"))
        return torch.zeros((), device=device)
    total = sum(p.pow(2).sum() for _, p in decayed)  # not stack: groups may differ in dtype
    return cast(torch.Tensor, 0.5 * gamma * total)
