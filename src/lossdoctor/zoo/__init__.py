"""Built-in problems, all generated offline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..problem import Problem
from .examples import CrawlingRun as CrawlingRun
from .examples import crawling_regression as crawling_regression
from .examples import noisy_regression as noisy_regression
from .examples import tanh_classifier as tanh_classifier
from .examples import tiny_classification as tiny_classification
from .lecture import lecture_saddle
from .mnist1d import mnist1d_cnn, mnist1d_mlp

BUILTIN: dict[str, Callable[..., Problem]] = {
    "mnist1d-mlp": mnist1d_mlp,
    "mnist1d-cnn": mnist1d_cnn,
    "lecture-saddle": lecture_saddle,
}


def build(name: str, **kwargs: Any) -> Problem:
    """Build the built-in problem ``name`` with ``kwargs``; an unknown name or bad options is a ``ValueError``."""
    try:
        factory = BUILTIN[name]
    except KeyError:
        raise ValueError(
            f"unknown built-in problem {name!r}; choose from {sorted(BUILTIN)}."
        ) from None
    try:
        return factory(**kwargs)
    except TypeError as err:
        raise ValueError(f"bad options for problem {name!r}: {err}") from err
