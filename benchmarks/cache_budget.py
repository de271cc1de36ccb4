"""How speed follows the memory given to the gradient-graph cache: ``hessian(cache=BYTES)``.

On the case of ``curvature.py`` (a ~94k-parameter 1D CNN, 4,000 MNIST-1D samples in batches of
1,000, micro-batches of 250), each budget runs in a fresh process and reports how many graphs it
kept, the time of one product and of the top-5 eigenvalues at tol=1e-6, and the peak RSS above
the RSS once the model and data are loaded (the figure ``curvature.py`` compares).

    python benchmarks/cache_budget.py                       # budgets 0, 1/4, 1/2, 3/4 and all
    python benchmarks/cache_budget.py --budgets-mb 0,20,1000 --micro-batch-size 0
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import curvature as bench  # noqa: E402


def child(weights: Path, budget: int, micro_batch_size: int | None, repeats: int) -> dict:
    import torch
    from torch.nn import functional as F

    import lossdoctor as ld

    case = bench.Case()
    model, data = bench.load_model(case, weights), bench.load_data(case)
    loaded = bench.rss_mb()
    H = ld.hessian(
        model, F.cross_entropy, data, cache=budget, micro_batch_size=micro_batch_size, max_block=4
    )
    v = torch.randn(H.num_params, generator=torch.Generator().manual_seed(0))
    H @ v  # builds the cache
    products = [bench.timed(H.matvec, v)[0] for _ in range(repeats)]
    top5 = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(repeats):
            seconds, r = bench.timed(ld.eigenpairs, H, k=5, which="largest", seed=0)
            top5.append(seconds)
    return {
        "budget": budget,
        "cached_batches": H.cached_batches,
        "cached_mb": H.cached_bytes / 2**20,
        "product_s": min(products),
        "top5_s": min(top5),
        "top5_matvecs": r.matvecs,
        "peak_mb": bench.peak_rss_mb() - loaded,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--workdir", type=Path, default=None, help="Where curvature.py keeps its weights."
    )
    p.add_argument(
        "--budgets-mb",
        default=None,
        help="Comma-separated budgets in MB (default: 0, 1/4, 1/2, "
        "3/4 of the whole cache, and unbounded).",
    )
    p.add_argument("--micro-batch-size", type=int, default=250, help="0: whole batches.")
    p.add_argument(
        "--repeats", type=int, default=3, help="Timed runs per figure (the fastest is shown)."
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    micro = args.micro_batch_size or None
    workdir = args.workdir or bench.default_workdir()
    weights = bench.prepare_weights(bench.Case(), workdir, print)
    if args.child is not None:
        print(json.dumps(child(weights, int(args.child), micro, args.repeats)))
        return 0

    def run(budget: int) -> dict:
        cmd = [
            sys.executable,
            __file__,
            "--workdir",
            str(workdir),
            "--micro-batch-size",
            str(args.micro_batch_size),
            "--repeats",
            str(args.repeats),
            "--child",
            str(budget),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    if args.budgets_mb:
        budgets = [int(float(b) * 2**20) for b in args.budgets_mb.split(",")]
        rows = [run(b) for b in budgets]
    else:
        whole = run(2**62)
        rows = [run(int(whole["cached_mb"] * 2**20 * f)) for f in (0, 0.25, 0.5, 0.75)] + [whole]
    print(f"micro_batch_size={micro}, max_block=4; {time.strftime('%Y-%m-%d %H:%M')}")
    print(
        f"{'budget MB':>10} {'graphs kept':>12} {'kept MB':>8} {'product s':>10} {'top-5 s':>8} "
        f"{'matvecs':>8} {'peak +MB':>9}"
    )
    for r in rows:
        budget = "all" if r["budget"] >= 2**62 else f"{r['budget'] / 2**20:.1f}"
        print(
            f"{budget:>10} {r['cached_batches']:>12} {r['cached_mb']:>8.1f} {r['product_s']:>10.3f} "
            f"{r['top5_s']:>8.2f} {r['top5_matvecs']:>8} {r['peak_mb']:>9.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
