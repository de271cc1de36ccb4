"""Shared behaviour of result objects: JSON-safe ``to_dict`` for frozen dataclasses."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from ._extras import MissingExtraError


def to_jsonable(value: Any) -> Any:
    """Turn tensors, arrays, dataclasses and containers into plain JSON types.

    Non-finite floats become ``None`` because JSON has no NaN/Inf.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_dict"):
            return value.to_dict()
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return str(value)


# Notebook display is the report's job, and the report sits above every layer that makes results:
# the package's façade (lossdoctor/__init__.py) installs the renderer, so nothing here imports it.
_html_renderer: Callable[[Any], str] | None = None


def set_html_renderer(render: Callable[[Any], str] | None) -> None:
    """Install the function that turns a result into notebook HTML (None: plain text only)."""
    global _html_renderer
    _html_renderer = render


class ResultMixin:
    """Mixin for frozen result dataclasses.

    Subclasses list in ``_skip_in_dict`` fields that are too large or not meaningful
    in JSON (eigenvectors, for instance); those are left out of ``to_dict``.
    """

    _skip_in_dict: tuple[str, ...] = ()

    def _repr_html_(self) -> str | None:
        """Notebook display, by the renderer the façade installed (None: Jupyter shows ``str``)."""
        if _html_renderer is None:
            return None
        try:
            return _html_renderer(self)
        except (
            MissingExtraError
        ):  # the report extra (matplotlib) is not installed: Jupyter shows str()
            return None

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON types (tensors and arrays as lists, NaN/Inf as ``None``).

        Returns:
            A dict from field name to value, without the fields in ``_skip_in_dict``.
        """
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name in self._skip_in_dict:
                continue
            out[f.name] = to_jsonable(getattr(self, f.name))
        return out


def fmt(x: float | None, digits: int = 4) -> str:
    """Compact scientific-ish formatting for human-readable summaries."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return str(x)
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:.{digits}g}"
    return f"{x:.{max(digits - 1, 1)}e}"
