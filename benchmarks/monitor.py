"""Monitor overhead: training steps per second with and without ``lossdoctor.Monitor`` attached.

    python benchmarks/monitor.py                 # mnist1d-mlp and mnist1d-cnn, default cadence
    python benchmarks/monitor.py --steps 200 --repeats 2 --batch-size 128

Each configuration trains the same model from the same weights with plain SGD (momentum 0.9)
over MNIST-1D (4,000 samples), once without and once with a Monitor at its default cadence
(cheap signals every step, sharpness every 500 steps on 128 samples, a stall check every 30
steps, the doctor when a stall is seen). Runs alternate (plain, monitored, plain, ...) so drifts
in machine load hit both; the table reports the median steps/s of each and the overhead.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lossdoctor.training.monitor import Monitor
from lossdoctor.zoo import build


def train(name: str, steps: int, batch_size: int, monitored: bool) -> tuple[float, int]:
    problem = build(name, batch_size=batch_size, seed=0)
    model, loss_fn, data = problem.model, problem.loss_fn, problem.train_data
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monitor = Monitor(model, loss_fn, data) if monitored else None
    done = 0
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
                float(loss.detach())  # a plain loop logs its loss too: the same one sync per step
            done += 1
            if done >= steps:
                break
    elapsed = time.perf_counter() - start
    return steps / elapsed, len(monitor.diagnoses) if monitor else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="mnist1d-mlp,mnist1d-cnn")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.steps} steps, batch {args.batch_size}, "
          f"{args.repeats} repeats (median)")
    print(f"{'problem':14s} {'plain steps/s':>14s} {'monitored steps/s':>18s} {'overhead':>9s} {'diagnoses':>9s}")
    for name in args.problems.split(","):
        train(name, 20, args.batch_size, True)  # warm-up: imports, caches, first allocations
        plain, monitored, diagnoses = [], [], 0
        for _ in range(args.repeats):
            plain.append(train(name, args.steps, args.batch_size, False)[0])
            rate, diagnoses = train(name, args.steps, args.batch_size, True)
            monitored.append(rate)
        p, m = statistics.median(plain), statistics.median(monitored)
        print(f"{name:14s} {p:14.1f} {m:18.1f} {100 * (p / m - 1):8.1f}% {diagnoses:9d}")


if __name__ == "__main__":
    main()
