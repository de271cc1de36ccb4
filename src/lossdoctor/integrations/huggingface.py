"""A Hugging Face ``TrainerCallback`` that runs the :class:`lossdoctor.Monitor` inside ``Trainer.train``.

Usage::

    from lossdoctor.integrations.huggingface import LossDoctorCallback

    trainer = transformers.Trainer(model=model, args=args, train_dataset=train)
    LossDoctorCallback.attach(trainer)       # or Trainer(..., callbacks=[LossDoctorCallback()])
    trainer.train()

The monitor records each optimizer step's training loss (the ``outputs.loss`` of that step's
forward passes, averaged over gradient accumulation, read by a forward hook that changes
nothing) with the optimizer, and measures on the trainer's training dataloader (or ``data``) with
``loss_fn`` (default ``None``: the model's own loss from the batch's ``labels``, as the Trainer
computes it). Its signals (loss, gradient norm, λ_max, counts of diagnoses and treatments) join
the Trainer's logs under ``lossdoctor/`` at every logging step (``state.log_history`` and the
``report_to`` integrations that run after this callback: :meth:`attach` puts it first); each
diagnosis and what ``treat`` did are logged as text (``logging`` logger ``lossdoctor``) and kept
in ``callback.monitor``. Needs ``transformers`` (``pip install lossdoctor[hf]``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .._checks import check_loss_fn
from ..doctor.monitor import Monitor
from .signals import EventCursor, step_signals

try:
    from transformers import TrainerCallback
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "lossdoctor.integrations.huggingface needs transformers: pip install 'lossdoctor[hf]'"
    ) from err

logger = logging.getLogger("lossdoctor")


class LossDoctorCallback(TrainerCallback):
    """Run a :class:`lossdoctor.Monitor` inside ``transformers.Trainer.train``.

    Args:
        loss_fn: the loss the doctor differentiates (default ``None``: ``outputs.loss``).
        data: what the doctor measures on (default: the trainer's training dataloader).
        **monitor_kwargs: passed to :class:`lossdoctor.Monitor` (``window``, ``treat``, ...).

    Attributes:
        monitor: the Monitor, once training has begun (``None`` before).

    Examples:
        Not run here (it trains a model); ``docs/frameworks.md`` has the full example, which
        ``tests/test_docs_frameworks.py`` runs:

        >>> from lossdoctor.integrations.huggingface import LossDoctorCallback
        >>> trainer = transformers.Trainer(model=model, args=args, train_dataset=train)  # doctest: +SKIP
        >>> callback = LossDoctorCallback.attach(trainer, window=40)  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP
        >>> callback.monitor.diagnoses  # doctest: +SKIP
    """

    def __init__(
        self, loss_fn: Callable | None = None, data: Any = None, **monitor_kwargs: Any
    ) -> None:
        self.loss_fn = check_loss_fn(loss_fn)
        self.data = data
        self.monitor_kwargs = monitor_kwargs
        self.monitor: Monitor | None = None
        self._events = EventCursor()
        self._losses: list[float] = []
        self._hook: Any = None
        self._inside = False  # the monitor's own forward passes are not training steps

    @classmethod
    def attach(cls, trainer: Any, *args: Any, **kwargs: Any) -> LossDoctorCallback:
        """A new callback put first among ``trainer``'s callbacks.

        First, so the ``report_to`` integrations (TensorBoard, W&B, ...) see its signals in the
        logs.

        Args:
            trainer: a ``transformers.Trainer``.
            *args: passed to the callback.
            **kwargs: passed to the callback.

        Returns:
            The callback, attached.
        """
        callback = cls(*args, **kwargs)
        trainer.callback_handler.callbacks.insert(0, callback)
        return callback

    def _record(self, module: Any, args: Any, kwargs: Any, outputs: Any) -> None:
        if self._inside or not module.training or not torch.is_grad_enabled():
            return
        loss = (
            outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
        )
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._losses.append(float(loss.detach()))

    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: Any = None,
        train_dataloader: Any = None,
        **kwargs: Any,
    ) -> None:
        """Attach the Monitor to the model the Trainer trains (on its train dataloader unless ``data`` was given)."""
        data = self.data if self.data is not None else train_dataloader
        if model is None or data is None:
            raise ValueError(
                "LossDoctorCallback needs the model and training data: the Trainer passes them; "
                "otherwise pass data=... ."
            )
        self._inside = True
        try:
            self.monitor = Monitor(model, self.loss_fn, data, **self.monitor_kwargs)
        finally:
            self._inside = False
        self._hook = model.register_forward_hook(self._record, with_kwargs=True)

    def on_optimizer_step(
        self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any
    ) -> None:
        """Send the step's loss (averaged over gradient accumulation) to the Monitor."""
        if self.monitor is None or not self._losses:
            return
        loss = sum(self._losses) / len(self._losses)
        self._losses.clear()
        inner = getattr(
            optimizer, "optimizer", optimizer
        )  # accelerate's wrapper holds the real one
        self._inside = True
        try:
            self.monitor.step(loss, inner if isinstance(inner, torch.optim.Optimizer) else None)
        finally:
            self._inside = False
        for _, text in self._events.new(self.monitor):
            logger.warning("%s", text)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
    ) -> None:
        """Add the Monitor's signals to the Trainer's logs."""
        if self.monitor is None or logs is None:
            return
        extra = {k: v for k, v in step_signals(self.monitor).items() if math.isfinite(v)}
        logs.update(extra)
        if state.log_history:
            state.log_history[-1].update(extra)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Detach from the model."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
