"""The Monitor inside other people's loops: a real ``lightning.Trainer``, a real
``transformers.Trainer`` (tiny GPT-2 from a config) and a TensorBoard ``SummaryWriter`` in a
plain loop, a few steps each. Each test skips cleanly when its framework is not installed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lossdoctor as ld

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp_data(n: int = 32):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=gen)
    return x, (x[:, 0] > 0).long()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


# -- TensorBoard -----------------------------------------------------------------------------
class FakeWriter:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []
        self.texts: list[tuple[str, str, int]] = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_text(self, tag, text, step):
        self.texts.append((tag, text, step))


def plain_loop(sink, steps: int, lr: float, **monitor_kwargs):
    x, y = mlp_data()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    monitor = ld.Monitor(model, F.cross_entropy, (x, y), **monitor_kwargs)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        monitor.step(loss, opt)
        sink(monitor)
        losses.append(float(loss))
    return monitor, losses


def test_tensorboard_sink_writes_every_signal_and_each_diagnosis_once():
    from lossdoctor.integrations.tensorboard import TensorBoardSink

    writer = FakeWriter()
    # lr far too small: the loss stalls, the doctor runs (no cost cap) and says so
    monitor, losses = plain_loop(
        TensorBoardSink(writer),
        24,
        1e-7,
        window=8,
        signals_every=1,
        sharpness_every=4,
        sharpness_iters=2,
        doctor_share=None,
    )
    loss_tags = [(v, s) for t, v, s in writer.scalars if t == "lossdoctor/loss"]
    assert [v for v, _ in loss_tags] == pytest.approx(losses) and [s for _, s in loss_tags] == list(
        range(1, 25)
    )
    norms = [v for t, v, _ in writer.scalars if t == "lossdoctor/grad_norm"]
    assert len(norms) == 24 and all(math.isfinite(v) for v in norms)  # signals_every=1: every step
    sharp = [v for t, v, _ in writer.scalars if t == "lossdoctor/lambda_max"]
    assert sharp[-1] == monitor.record.sharpness[-1][1]
    assert monitor.diagnoses, "the stalled run should have been diagnosed"
    texts = [t for t in writer.texts if t[0] == "lossdoctor/diagnosis"]
    assert (
        len(texts) == len(monitor.diagnoses)
        and monitor.diagnoses[0].cause.replace("_", " ") in texts[0][1]
    )
    with pytest.raises(TypeError, match="SummaryWriter"):
        TensorBoardSink(object())


def test_tensorboard_sink_with_a_real_summary_writer(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    from lossdoctor.integrations.tensorboard import TensorBoardSink

    writer = SummaryWriter(str(tmp_path))
    _, losses = plain_loop(
        TensorBoardSink(writer),
        6,
        0.1,
        window=8,
        sharpness_every=3,
        sharpness_iters=2,
        doctor_share=None,
    )
    writer.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    scalars = events.Scalars("lossdoctor/loss")
    assert [e.value for e in scalars] == pytest.approx(losses, rel=1e-6)
    assert "lossdoctor/lambda_max" in events.Tags()["scalars"]


# -- Lightning ------------------------------------------------------------------------------
def test_lightning_callback_monitors_fit_and_logs(tmp_path):
    L = pytest.importorskip("lightning")
    from lightning.pytorch.loggers import CSVLogger

    from lossdoctor.integrations.lightning import LossDoctorCallback

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mlp()
            self.losses = []

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            self.losses.append(float(loss))
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x, y = mlp_data()
    module = Module()
    callback = LossDoctorCallback(
        F.cross_entropy, window=8, sharpness_every=2, sharpness_iters=2, doctor_share=None
    )
    trainer = L.Trainer(
        max_steps=6,
        accelerator="cpu",
        logger=CSVLogger(str(tmp_path)),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=8))
    assert callback.monitor.record.losses == pytest.approx(module.losses)
    assert len(callback.monitor.record.sharpness) == 3
    # gradient accumulation: one monitor step per optimizer step, on the mean batch loss
    module2, callback2 = Module(), LossDoctorCallback(F.cross_entropy, window=8, sharpness_every=0)
    L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        callbacks=[callback2],
        accumulate_grad_batches=2,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(module2, DataLoader(TensorDataset(x, y), batch_size=8))
    pairs = [sum(module2.losses[i : i + 2]) / 2 for i in range(0, 6, 2)]
    assert callback2.monitor.record.losses == pytest.approx(pairs)
    import csv

    with open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = [float(r["lossdoctor/loss"]) for r in rows if r.get("lossdoctor/loss")]
    assert logged == pytest.approx(module.losses)
    assert any(r.get("lossdoctor/lambda_max") for r in rows)


# -- Hugging Face -----------------------------------------------------------------------------
def test_hf_trainer_callback_monitors_train_and_logs(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from lossdoctor.integrations.huggingface import LossDoctorCallback

    cfg = transformers.GPT2Config(
        vocab_size=16,
        n_positions=8,
        n_embd=8,
        n_layer=1,
        n_head=2,
        n_inner=16,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 16, (16, 6), generator=gen)
    train = [{"input_ids": ids[i], "labels": ids[i]} for i in range(16)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=5,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train)

    seen = []

    class Reporter(transformers.TrainerCallback):  # stands for a report_to integration
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    trainer.add_callback(Reporter())
    callback = LossDoctorCallback.attach(
        trainer, window=8, sharpness_every=2, sharpness_iters=2, doctor_share=None
    )
    trainer.train()
    monitor = callback.monitor
    assert len(monitor.record.losses) == 5 and len(monitor.record.sharpness) == 2
    history = [h for h in trainer.state.log_history if "loss" in h and "lossdoctor/loss" in h]
    assert len(history) == 5
    # the monitor saw each step's training loss, as the Trainer logged it
    assert [h["lossdoctor/loss"] for h in history] == pytest.approx(
        [h["loss"] for h in history], rel=1e-4
    )
    assert any("lossdoctor/lambda_max" in s for s in seen)
    assert callback._hook is None  # removed after training: the model is left as it was
