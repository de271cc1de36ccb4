"""Monitor overhead: training time with and without ``lossdoctor.Monitor`` attached.

    python benchmarks/monitor.py                 # mnist1d-mlp and mnist1d-cnn, default cadence
    python benchmarks/monitor.py --steps 500 --repeats 5 --batch-size 128

Each configuration trains the same model from the same weights with plain SGD (momentum 0.9)
over MNIST-1D (4,000 samples), once without and once with a Monitor at its default cadence
(signals on pairs of steps every 8, sharpness every 1000 steps on 128 samples, a stall check
every 30 steps, the doctor when a stall is seen and its 5% budget allows). Runs alternate
(plain, monitored, plain, ...).

The table splits the monitored time: the overhead of monitoring itself (signals, sharpness,
stall checks), and the doctor's calls, their count, seconds each and verdicts, with the overhead
they add on top (``benchmarks/doctor.py`` measures it all in on stalling runs).

A shared VM can lose most of its wall time to the host's stalls (a busy loop on this project's
VM loses about half: gaps of 2-300 ms, often less than 10 ms apart), far more than the few
percent measured here. So every step is timed on its own (``--chunk 1``); since every repeat
does the same work step for step (same seed, same batches, the same sharpness estimates and
stall checks at the same steps), the fastest repeat of each step is that step's undisturbed
time, and their sum is the run's. The table shows that estimate (and the medians of whole runs,
which carry the stalls); the overhead is the ratio of the two sums.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections import Counter

import torch

import lossdoctor.doctor.monitor as monitor_module
from lossdoctor.doctor.monitor import Monitor
from lossdoctor.zoo import build

_real_diagnose = monitor_module.diagnose
_doctor = {"seconds": 0.0, "causes": Counter()}


def timed_diagnose(*args, **kwargs):
    start = time.perf_counter()
    result = _real_diagnose(*args, **kwargs)
    _doctor["seconds"] += time.perf_counter() - start
    _doctor["causes"][result.cause] += 1
    return result


def train(
    name: str, steps: int, batch_size: int, monitored: bool, chunk: int
) -> tuple[list[float], list[float]]:
    """Seconds per chunk of ``chunk`` steps, and the doctor's seconds within each chunk."""
    problem = build(name, batch_size=batch_size, seed=0)
    model, loss_fn, data = problem.model, problem.loss_fn, problem.train_data
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monitor = Monitor(model, loss_fn, data) if monitored else None
    done = 0
    chunks, doctor = [], []
    start, doctor_start = time.perf_counter(), _doctor["seconds"]
    while done < steps:
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            if monitor is not None:
                monitor.step(loss, opt)
            else:
                loss.item()  # a plain loop logs its loss too: the same one sync per step
            done += 1
            if done % chunk == 0 or done >= steps:
                now = time.perf_counter()
                chunks.append(now - start)
                doctor.append(_doctor["seconds"] - doctor_start)
                start, doctor_start = now, _doctor["seconds"]
            if done >= steps:
                break
    return chunks, doctor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="mnist1d-mlp,mnist1d-cnn")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--chunk", type=int, default=1, help="steps per timed chunk")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {args.steps} steps, batch {args.batch_size}, "
        f"{args.repeats} repeats, chunks of {args.chunk} steps"
    )
    print(
        f"{'problem':14s} {'plain ms/step':>13s} {'monitored':>10s} {'overhead':>9s} {'(medians)':>10s} "
        f"{'doctor calls/run':>16s} {'s/call':>7s} {'with doctor':>12s}  verdicts"
    )
    monitor_module.diagnose = timed_diagnose
    logging.getLogger("lossdoctor.monitor").setLevel(
        logging.ERROR
    )  # the verdicts are counted below
    for name in args.problems.split(","):
        train(
            name, 20, args.batch_size, True, args.chunk
        )  # warm-up: imports, caches, first allocations
        _doctor["seconds"], _doctor["causes"] = 0.0, Counter()
        plain, monitored, doctor = [], [], []
        for _ in range(args.repeats):
            plain.append(train(name, args.steps, args.batch_size, False, args.chunk)[0])
            chunks, in_doctor = train(name, args.steps, args.batch_size, True, args.chunk)
            monitored.append([c - d for c, d in zip(chunks, in_doctor)])
            doctor.append(sum(in_doctor))
        # The undisturbed time of each chunk is its fastest repeat.
        p = sum(min(c) for c in zip(*plain))
        m = sum(min(c) for c in zip(*monitored))
        pm = statistics.median(sum(r) for r in plain)
        mm = statistics.median(sum(r) for r in monitored)
        calls = sum(_doctor["causes"].values()) / args.repeats
        per_call = min(doctor) / calls if calls else 0.0
        verdicts = (
            ", ".join(f"{k} {v // args.repeats}" for k, v in sorted(_doctor["causes"].items()))
            or "-"
        )
        print(
            f"{name:14s} {1e3 * p / args.steps:13.3f} {1e3 * m / args.steps:10.3f} {100 * (m / p - 1):8.1f}% "
            f"{100 * (mm / pm - 1):9.1f}% {calls:16.1f} {per_call:7.2f} {100 * ((m + min(doctor)) / p - 1):11.1f}%  "
            f"{verdicts}"
        )


if __name__ == "__main__":
    main()
