"""The Lanczos basis's own cost: eigenpairs with a float64 and a float32 basis on a diagonal
operator (its products cost next to nothing, so the time is the basis's: orthogonalization,
restarts, combining the pairs), interleaved, fastest of the repeats, with the page faults and
system time of each call.

    python benchmarks/basis_dtype.py --n 4000000 --repeats 2

A float32 basis is combined in float64 a slice of columns at a time (curvature/lanczos.py).
Slices of 2**20 columns made float64 copies of 8 MB per row (200 MB for 25 rows) that the
allocator mapped and page-faulted afresh each time: 1.28 s per product against the float64 basis's 0.27, about 60%
of its CPU time in the kernel (n = 4M, 1 thread, load ~10). Slices of at most SLICE_BYTES = 4 MB
are served from the heap instead: 0.31 s per product (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import warnings

import numpy as np
import torch

import lossdoctor as ld


class Diagonal:
    def __init__(self, d: np.ndarray) -> None:
        self.d = torch.as_tensor(d, dtype=torch.float64)
        self.shape = (len(d), len(d))

    def __matmul__(self, X: torch.Tensor) -> torch.Tensor:
        return X * self.d[:, None]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=float, default=4e6)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--k", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    n = int(args.n)
    rng = np.random.default_rng(0)
    top = [10.0, 9.0, 8.0, 7.5, 7.0]
    op = Diagonal(np.concatenate([top, rng.laplace(0.0, 0.5, n - len(top))]))
    best: dict[str, tuple] = {}
    for _ in range(args.repeats):
        for dtype in ("float64", "float32"):
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = ld.eigenpairs(op, k=args.k, tol=1e-6, basis_dtype=dtype, progress=False)
            wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
            row = (
                wall,
                r1.ru_utime - r0.ru_utime,
                r1.ru_stime - r0.ru_stime,
                r1.ru_minflt - r0.ru_minflt,
                r.matvecs,
                float(np.max(np.abs(r.eigenvalues - top[: args.k]))),
            )
            if dtype not in best or wall < best[dtype][0]:
                best[dtype] = row
    print(f"n = {n:,}, k = {args.k}, tol 1e-6, 1 thread, load {os.getloadavg()[0]:.1f}")
    print(
        f"{'basis':8s} {'wall s':>7s} {'user s':>7s} {'sys s':>6s} {'page faults':>12s} {'products':>9s} {'max err':>8s}"
    )
    for dtype, (wall, user, sys_, flt, mv, err) in best.items():
        print(f"{dtype:8s} {wall:7.2f} {user:7.2f} {sys_:6.2f} {flt:12d} {mv:9d} {err:8.1e}")


if __name__ == "__main__":
    main()
