"""Monitor overhead: training time with and without ``lossdoctor.Monitor`` attached.

    python benchmarks/monitor.py                 # mnist1d-mlp and mnist1d-cnn, default cadence
    python benchmarks/monitor.py --steps 500 --repeats 5 --batch-size 128

Each configuration trains the same model from the same weights with plain SGD (momentum 0.9)
over MNIST-1D (4,000 samples), once without and once with a Monitor at its default cadence
(cheap signals every step, sharpness every 500 steps on 128 samples, a stall check every 30
steps, the doctor when a stall is seen). Runs alternate (plain, monitored, plain, ...).

A shared VM can lose most of its wall time to the host's stalls (tenths of a second at random),
far more than the few percent measured here. So every run is timed in chunks of ``--chunk``
steps; since every repeat does the same work chunk for chunk (same seed, same batches, the same
sharpness estimates and stall checks at the same steps), the fastest repeat of each chunk is
that chunk's undisturbed time, and their sum is the run's. The table shows that estimate (and
the plain median steps/s for reference); the overhead is the ratio of the two sums.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lossdoctor.training.monitor import Monitor
from lossdoctor.zoo import build


def train(name: str, steps: int, batch_size: int, monitored: bool, chunk: int) -> tuple[list[float], int]:
    """Seconds per chunk of ``chunk`` steps, and how many diagnoses the monitor made."""
    problem = build(name, batch_size=batch_size, seed=0)
    model, loss_fn, data = problem.model, problem.loss_fn, problem.train_data
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monitor = Monitor(model, loss_fn, data) if monitored else None
    done = 0
    chunks = []
    start = time.perf_counter()
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
                start = now
            if done >= steps:
                break
    return chunks, len(monitor.diagnoses) if monitor else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="mnist1d-mlp,mnist1d-cnn")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--chunk", type=int, default=25, help="steps per timed chunk")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.steps} steps, batch {args.batch_size}, "
          f"{args.repeats} repeats, chunks of {args.chunk} steps")
    print(f"{'problem':14s} {'plain ms/step':>14s} {'monitored ms/step':>18s} {'overhead':>9s} "
          f"{'(medians)':>10s} {'diagnoses':>9s}")
    for name in args.problems.split(","):
        train(name, 20, args.batch_size, True, args.chunk)  # warm-up: imports, caches, first allocations
        plain, monitored, diagnoses = [], [], 0
        for _ in range(args.repeats):
            plain.append(train(name, args.steps, args.batch_size, False, args.chunk)[0])
            chunks, diagnoses = train(name, args.steps, args.batch_size, True, args.chunk)
            monitored.append(chunks)
        # The undisturbed time of each chunk is its fastest repeat.
        p = sum(min(c) for c in zip(*plain))
        m = sum(min(c) for c in zip(*monitored))
        pm = statistics.median(sum(r) for r in plain)
        mm = statistics.median(sum(r) for r in monitored)
        print(f"{name:14s} {1e3 * p / args.steps:14.3f} {1e3 * m / args.steps:18.3f} {100 * (m / p - 1):8.1f}% "
              f"{100 * (mm / pm - 1):9.1f}% {diagnoses:9d}")


if __name__ == "__main__":
    main()
