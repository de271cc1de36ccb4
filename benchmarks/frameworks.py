"""Every analysis on tiny framework models (Hugging Face GPT-2 and BERT from configs, a Lightning
module, and where torchvision/timm import, i.e. in the vision venv: a ResNet of torchvision
BasicBlocks with BatchNorm in train mode, MobileNetV3-small and a timm ViT), as docs/frameworks.md
shows them: seconds and peak extra memory per call. Single-threaded; each call is repeated and
the minimum time reported; the peak is the largest resident-set growth over the process's level
before the call, sampled every 2 ms (CPU; on CUDA, torch.cuda.max_memory_allocated).

    python benchmarks/frameworks.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import torch

import lossdoctor as ld


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Peak:
    """Peak resident-set growth while active."""

    def __enter__(self):
        self.base = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    @property
    def mb(self) -> float:
        return (self.peak - self.base) / 2**20


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    )
    ids = torch.randint(0, 64, (16, 16), generator=torch.Generator().manual_seed(0))
    return model, [{"input_ids": ids[i : i + 4], "labels": ids[i : i + 4]} for i in range(0, 16, 4)]


def bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
            num_labels=3,
        )
    )
    gen = torch.Generator().manual_seed(0)
    batches = []
    for length in (12, 16, 9, 14):  # batches of different lengths, padded within each batch
        ids = torch.randint(1, 64, (4, length), generator=gen)
        mask = (torch.arange(length) < torch.randint(4, length + 1, (4, 1), generator=gen)).long()
        batches.append(
            {
                "input_ids": ids * mask,
                "attention_mask": mask,
                "labels": torch.randint(0, 3, (4,), generator=gen),
            }
        )
    return model, batches


def lightning():
    import lightning as L

    class Classifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3)
            )

        def forward(self, x):
            return self.net(x)

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=gen), torch.randint(0, 3, (64,), generator=gen)
    return Classifier(), [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]


def images(size: int, gen: torch.Generator):
    x, y = torch.randn(16, 3, size, size, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    return [(x[i : i + 4], y[i : i + 4]) for i in range(0, 16, 4)]


def resnet():
    from torch import nn
    from torchvision.models.resnet import BasicBlock, conv1x1

    torch.manual_seed(0)
    down = nn.Sequential(conv1x1(8, 16, 2), nn.BatchNorm2d(16))
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        BasicBlock(8, 8),
        BasicBlock(8, 16, stride=2, downsample=down),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 3),
    )
    return model, images(16, torch.Generator().manual_seed(0))


def mobilenet():
    from torchvision.models import mobilenet_v3_small

    torch.manual_seed(0)
    model = mobilenet_v3_small(num_classes=3, width_mult=0.25, reduced_tail=True)
    return model, images(16, torch.Generator().manual_seed(0))


def vit():
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=16,
        depth=1,
        num_heads=2,
        num_classes=3,
    )
    return model, images(32, torch.Generator().manual_seed(0))


def calls(model, loss_fn, batches, mode):
    """The calls, in ``mode`` where a call takes one (train: BatchNorm on batch statistics)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    op = ld.hessian(model, loss_fn, batches, mode=mode)

    def batch_loss(batch):
        if loss_fn is None:
            return model(**batch).loss
        return loss_fn(model(batch[0]), batch[1])

    def monitor():
        m = ld.Monitor(model, loss_fn, batches, window=8, sharpness_every=4)
        work = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the model stays as it was
        with torch.no_grad():
            saved = [b.clone() for b in model.buffers()]  # train-mode forwards move BatchNorm's
        for step in range(8):
            loss = batch_loss(batches[step % len(batches)])
            work.zero_grad()
            loss.backward()
            work.step()
            m.step(loss, work)
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for b, s in zip(model.buffers(), saved):
                b.copy_(s)

    return [
        ("hessian (build)", lambda: ld.hessian(model, loss_fn, batches, mode=mode)),
        ("eigenpairs k=3", lambda: ld.eigenpairs(op, k=3, progress=False)),
        ("trace 30 products", lambda: ld.trace(op, matvecs=30, progress=False)),
        (
            "classify_critical_point",
            lambda: ld.classify_critical_point(
                model, loss_fn, batches, k=3, mode=mode, progress=False
            ),
        ),
        (
            "diagnose (no trials)",
            lambda: ld.diagnose(
                model,
                loss_fn,
                batches,
                history={"losses": [3.0] * 60},
                optimizer=opt,
                verify=False,
                progress=False,
            ),
        ),
        ("Monitor, 8 steps", monitor),
        (
            "gradient_noise_scale",
            lambda: ld.gradient_noise_scale(
                model, loss_fn, batches, small_batch=2, pairs=8, progress=False
            ),
        ),
        (
            "landscape 1-d, 9 points",
            lambda: ld.landscape(model, loss_fn, batches, steps=9, progress=False),
        ),
        (
            "time_batch_sizes 1..16",
            lambda: ld.time_batch_sizes(
                model, loss_fn, batches, repeats=2, warmup=1, progress=False
            ),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, 1 thread, load average {load:.2f} on {os.cpu_count()} cores")
    print(f"{'model':<34} {'call':<26} {'seconds':>9} {'peak MB':>8}")
    import torch.nn.functional as F

    models = [
        ("GPT-2 causal LM (loss_fn=None)", gpt2, None, "eval"),
        ("BERT seq. classif., padded", bert, None, "eval"),
        ("Lightning module", lightning, F.cross_entropy, "eval"),
        ("ResNet (torchvision blocks), BN", resnet, F.cross_entropy, "train"),
        ("MobileNetV3-small x0.25", mobilenet, F.cross_entropy, "eval"),
        ("timm ViT, 1 block", vit, F.cross_entropy, "eval"),
    ]
    for name, build, loss_fn, mode in models:
        try:
            model, batches = build()
        except Exception as err:  # noqa: BLE001 - a framework that does not import here
            print(f"{name:<34} skipped: {type(err).__name__}: {str(err)[:60]}")
            continue
        model.train(mode == "train")
        params = sum(p.numel() for p in model.parameters())
        label = f"{name} {params / 1e3:.1f}k"
        for call, fn in calls(model, loss_fn, batches, mode):
            best, peak = float("inf"), 0.0
            for _ in range(args.repeats):
                with Peak() as p:
                    start = time.perf_counter()
                    fn()
                    best = min(best, time.perf_counter() - start)
                peak = max(peak, p.mb)
            print(f"{label:<34} {call:<26} {best:>9.3f} {peak:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
