"""Every analysis on tiny Hugging Face models built from configs (no download), as the README
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


def calls(model, batches):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    op = ld.hessian(model, None, batches)

    def monitor():
        m = ld.Monitor(model, None, batches, window=8, sharpness_every=4)
        work = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the model stays as it was
        for step in range(8):
            out = model(**batches[step % len(batches)])
            work.zero_grad()
            out.loss.backward()
            work.step()
            m.step(out.loss, work)
        model.zero_grad(set_to_none=True)

    return [
        ("hessian (build)", lambda: ld.hessian(model, None, batches)),
        ("eigenpairs k=3", lambda: ld.eigenpairs(op, k=3, progress=False)),
        ("trace 30 products", lambda: ld.trace(op, matvecs=30, progress=False)),
        (
            "classify_critical_point",
            lambda: ld.classify_critical_point(model, None, batches, k=3, progress=False),
        ),
        (
            "diagnose (no trials)",
            lambda: ld.diagnose(
                model,
                None,
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
                model, None, batches, small_batch=2, pairs=8, progress=False
            ),
        ),
        (
            "landscape 1-d, 9 points",
            lambda: ld.landscape(model, None, batches, steps=9, progress=False),
        ),
        (
            "time_batch_sizes 1..16",
            lambda: ld.time_batch_sizes(model, None, batches, repeats=2, warmup=1, progress=False),
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
    for name, build in (
        ("GPT-2 causal LM (loss_fn=None)", gpt2),
        ("BERT seq. classif., padded", bert),
    ):
        model, batches = build()
        model.eval()
        params = sum(p.numel() for p in model.parameters())
        label = f"{name} {params / 1e3:.1f}k"
        for call, fn in calls(model, batches):
            best, peak = float("inf"), 0.0
            for _ in range(args.repeats):
                with Peak() as p:
                    start = time.perf_counter()
                    fn()
                    best = min(best, time.perf_counter() - start)
                peak = max(peak, p.mb)
            print(f"{label:<34} {call:<26} {best:>9.3f} {peak:>8.1f}")


if __name__ == "__main__":
    main()
