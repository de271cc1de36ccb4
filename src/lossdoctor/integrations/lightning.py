"""A Lightning ``Callback`` that runs the :class:`lossdoctor.Monitor` inside ``Trainer.fit``.

Usage::

    from lossdoctor.integrations.lightning import LossDoctorCallback

    trainer = lightning.Trainer(max_steps=1000, callbacks=[LossDoctorCallback(F.cross_entropy)])
    trainer.fit(module, train_loader)

After every optimizer step the monitor records the loss ``training_step`` returned (the mean over
the batches of a gradient accumulation), and its
signals (loss, gradient norm, λ_max, counts of diagnoses and treatments) go to the trainer's
logger(s) under ``lossdoctor/`` through ``LightningModule.log_dict``; each diagnosis and what
``treat`` did are logged as text (``logging`` logger ``lossdoctor``, and ``add_text`` on loggers
that have it, such as TensorBoard's). ``callback.monitor`` is the Monitor.

The doctor computes the loss as ``loss_fn(module(inputs), targets)`` on the training data's
first batches (or ``data``), so ``loss_fn`` must be the loss ``training_step`` computes;
``None`` when the module's outputs carry their own ``.loss``. Needs ``lightning``
(``pip install lossdoctor[lightning]``); ``pytorch_lightning`` works too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .._checks import check_loss_fn
from ..doctor.monitor import Monitor
from .signals import PREFIX, EventCursor, step_signals

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - the older package name
    try:
        # The same class under the package's old name (mypy sees two distinct types).
        from pytorch_lightning import Callback  # type: ignore[assignment]
    except ImportError as err:
        raise ImportError(
            "lossdoctor.integrations.lightning needs lightning: pip install 'lossdoctor[lightning]'"
        ) from err

logger = logging.getLogger("lossdoctor")


class LossDoctorCallback(Callback):
    """Run a :class:`lossdoctor.Monitor` inside ``Trainer.fit``.

    Args:
        loss_fn: the loss ``training_step`` computes from ``module(inputs)`` and the targets
            (``None``: the outputs' own ``.loss``).
        data: what the doctor measures on (default: the trainer's training dataloader; the
            monitor reads its first ``diagnose_samples`` samples once, on a saved RNG).
        log: send the signals to the trainer's logger(s).
        **monitor_kwargs: passed to :class:`lossdoctor.Monitor` (``window``, ``treat``,
            ``sharpness_every``, ...).

    Attributes:
        monitor: the Monitor, once training has started (``None`` before).

    Examples:
        Not run here (it trains a model); ``docs/frameworks.md`` has the full example, which
        ``tests/test_docs_frameworks.py`` runs:

        >>> from lossdoctor.integrations.lightning import LossDoctorCallback
        >>> callback = LossDoctorCallback(F.cross_entropy, window=40)  # doctest: +SKIP
        >>> lightning.Trainer(max_steps=200, callbacks=[callback]).fit(module, train_loader)  # doctest: +SKIP
        >>> callback.monitor.diagnoses  # doctest: +SKIP
    """

    def __init__(
        self, loss_fn: Callable | None, data: Any = None, *, log: bool = True, **monitor_kwargs: Any
    ) -> None:
        super().__init__()
        self.loss_fn = check_loss_fn(loss_fn)
        self.data = data
        self.log_signals = log
        self.monitor_kwargs = monitor_kwargs
        self.monitor: Monitor | None = None
        self._events = EventCursor()
        self._pending: list[float] = []

    @staticmethod
    def _epoch_end(trainer: Any, batch_idx: int) -> bool:
        """The last batch of an epoch, where Lightning steps on a partial accumulation."""
        total = getattr(trainer, "num_training_batches", None)
        return isinstance(total, int) and batch_idx + 1 >= total

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Attach the Monitor to the LightningModule (on the trainer's train dataloader unless ``data`` was given)."""
        data = self.data if self.data is not None else trainer.train_dataloader
        if data is None:
            raise ValueError(
                "LossDoctorCallback found no training dataloader: pass data=... (the batches the "
                "doctor measures on)."
            )
        self.monitor = Monitor(pl_module, self.loss_fn, data, **self.monitor_kwargs)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Send each optimizer step's loss (the mean over accumulated batches) to the Monitor; log its signals."""
        if self.monitor is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):
            return  # training_step returned no loss (manual optimization, skipped batch)
        # Lightning hands back the loss divided by accumulate_grad_batches; the monitor wants the
        # batch loss, one entry per optimizer step (the mean over the accumulated batches).
        accumulate = max(1, int(getattr(trainer, "accumulate_grad_batches", 1) or 1))
        self._pending.append(float(loss.detach()) * accumulate)
        if len(self._pending) < accumulate and not self._epoch_end(trainer, batch_idx):
            return
        loss_value = sum(self._pending) / len(self._pending)
        self._pending.clear()
        optimizers = trainer.optimizers
        optimizer = getattr(optimizers[0], "optimizer", optimizers[0]) if optimizers else None
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            optimizer = None
        self.monitor.step(loss_value, optimizer)
        if self.log_signals:
            pl_module.log_dict(step_signals(self.monitor), on_step=True, on_epoch=False)
        for kind, text in self._events.new(self.monitor):
            logger.warning("%s", text)
            for lg in trainer.loggers if self.log_signals else []:
                add_text = getattr(getattr(lg, "experiment", None), "add_text", None)
                if callable(add_text):
                    add_text(PREFIX + kind, text, trainer.global_step)
