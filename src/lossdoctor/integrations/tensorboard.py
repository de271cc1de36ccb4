"""A TensorBoard sink for a plain training loop with a :class:`lossdoctor.Monitor`.

Usage::

    from torch.utils.tensorboard import SummaryWriter
    from lossdoctor.integrations.tensorboard import TensorBoardSink

    monitor = ld.Monitor(model, loss_fn, train_data)
    sink = TensorBoardSink(SummaryWriter("runs/exp"))
    for step, (x, y) in enumerate(loader):
        ...                      # forward, backward, optimizer.step()
        monitor.step(loss, optimizer)
        sink(monitor)            # scalars under lossdoctor/, each diagnosis and treatment as text

Needs ``tensorboard`` (``pip install lossdoctor[tensorboard]``); any object with
``add_scalar(tag, value, step)`` and ``add_text(tag, text, step)`` works as the writer.
"""

from __future__ import annotations

from typing import Any

from ..doctor.monitor import Monitor
from .signals import PREFIX, EventCursor, step_signals


class TensorBoardSink:
    """Writes a Monitor's signals to a ``SummaryWriter`` after each step.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (or anything with ``add_scalar`` and
            ``add_text``).
        prefix: the tags' prefix.
        every: write the scalars every this many steps (diagnoses and treatments always).

    Raises:
        TypeError: ``writer`` lacks ``add_scalar`` or ``add_text``.
        ValueError: ``every`` is not a positive integer.

    Examples:
        >>> import torch, lossdoctor as ld
        >>> from lossdoctor.integrations.tensorboard import TensorBoardSink
        >>> class Writer:  # a stand-in for SummaryWriter("runs/exp")
        ...     def __init__(self):
        ...         self.tags = set()
        ...     def add_scalar(self, tag, value, step):
        ...         self.tags.add(tag)
        ...     def add_text(self, tag, text, step):
        ...         self.tags.add(tag)
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(3, 1)
        >>> x, y = torch.randn(16, 3), torch.randn(16, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> monitor = ld.Monitor(model, torch.nn.functional.mse_loss, (x, y))
        >>> writer = Writer()
        >>> sink = TensorBoardSink(writer)
        >>> for _ in range(3):
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     opt.step()
        ...     monitor.step(loss, opt)
        ...     sink(monitor)
        >>> "lossdoctor/loss" in writer.tags
        True
    """

    def __init__(self, writer: Any, *, prefix: str = PREFIX, every: int = 1) -> None:
        if not (hasattr(writer, "add_scalar") and hasattr(writer, "add_text")):
            raise TypeError(
                f"writer must be a SummaryWriter (with add_scalar and add_text), got "
                f"{type(writer).__name__}."
            )
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}.")
        self.writer, self.prefix, self.every = writer, prefix, every
        self._events = EventCursor()

    def __call__(self, monitor: Monitor, step: int | None = None) -> None:
        """Write what ``monitor`` saw at its latest step.

        Args:
            monitor: the Monitor of the training loop.
            step: the x-axis value (default: the monitor's step count).

        Raises:
            TypeError: ``monitor`` is not a :class:`lossdoctor.Monitor`.
        """
        if not isinstance(monitor, Monitor):
            raise TypeError(
                f"TensorBoardSink is called with the lossdoctor.Monitor, got {type(monitor).__name__}."
            )
        step = monitor.steps if step is None else step
        if step % self.every == 0:
            for tag, value in step_signals(monitor, self.prefix).items():
                self.writer.add_scalar(tag, value, step)
        for kind, text in self._events.new(monitor):
            self.writer.add_text(self.prefix + kind, text, step)
