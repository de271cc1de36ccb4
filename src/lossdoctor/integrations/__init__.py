"""Optional integrations: the :class:`lossdoctor.Monitor` inside other people's training loops.

Each is a small module importing its framework only when used (install the extra):

* :mod:`lossdoctor.integrations.lightning`: a Lightning ``Callback`` (``pip install lossdoctor[lightning]``);
* :mod:`lossdoctor.integrations.huggingface`: a ``transformers.TrainerCallback`` (``lossdoctor[hf]``);
* :mod:`lossdoctor.integrations.tensorboard`: a ``SummaryWriter`` sink for plain loops
  (``lossdoctor[tensorboard]``).

All three send the same signals (:func:`lossdoctor.integrations.signals.step_signals`): the
loss, the gradient norm, the latest λ_max estimate, the number of diagnoses and treatments, and
the text of each new diagnosis and of what ``treat`` did.
"""
