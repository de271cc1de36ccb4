"""Wall time of the top-5 Hessian eigenvalues with 1 process vs N processes (torch.distributed).

Each run is launched with ``torchrun --standalone --nproc-per-node P``; every rank holds
1/P of the data (MNIST-1D, CNN1d) and lossdoctor all-reduces each Hessian-vector product.
The communication share is the time spent inside ``all_reduce`` over the total.

    python benchmarks/distributed.py                 # 1 vs 2 processes, gloo on CPU
    python benchmarks/distributed.py --procs 1 2 4 --samples 8000
On a GPU machine each rank uses its own GPU with NCCL (``--device cuda``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    import lossdoctor as ld
    from lossdoctor.zoo.mnist1d import CNN1d, batches, mnist1d_arrays

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(max(1, args.threads // world))
    x, y, _, _ = mnist1d_arrays(args.samples, 0)
    torch.manual_seed(0)
    model = CNN1d().to(device)
    shard = batches(x[rank::world], y[rank::world], args.batch_size)
    comm = [0.0]
    original = dist.all_reduce

    def timed_all_reduce(tensor, *a, **k):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = original(tensor, *a, **k)
        if device.type == "cuda":
            torch.cuda.synchronize()
        comm[0] += time.perf_counter() - t
        return out

    dist.all_reduce = timed_all_reduce
    walls, comms = [], []
    try:
        op = ld.hessian(model, torch.nn.functional.cross_entropy, shard)
        for _ in range(args.repeats):
            dist.barrier()
            comm[0] = 0.0
            start = time.perf_counter()
            result = ld.eigenpairs(op, k=5, which="largest", tol=1e-6, seed=0)
            walls.append(time.perf_counter() - start)
            comms.append(comm[0])
    finally:
        dist.all_reduce = original
    if rank == 0:
        best = min(range(len(walls)), key=walls.__getitem__)
        Path(args.out).write_text(
            json.dumps(
                {
                    "procs": world,
                    "wall_s": walls[best],
                    "comm_s": comms[best],
                    "walls_s": walls,
                    "matvecs": result.matvecs,
                    "eigenvalues": [float(v) for v in result.eigenvalues],
                    "num_samples": op.num_samples,
                    "num_params": op.num_params,
                }
            )
        )
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--samples", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="CPU threads shared among the ranks of one run",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed solves per run; the fastest is reported (a shared VM stalls at random)",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for procs in args.procs:
            out = Path(tmp) / f"p{procs}.json"
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                str(procs),
                __file__,
                "--worker",
                "--out",
                str(out),
                "--samples",
                str(args.samples),
                "--batch-size",
                str(args.batch_size),
                "--threads",
                str(args.threads),
                "--device",
                args.device,
                "--repeats",
                str(args.repeats),
            ]
            subprocess.run(
                cmd,
                check=True,
                env={**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads // procs))},
            )
            rows.append(json.loads(out.read_text()))
    base = rows[0]["wall_s"]
    print(
        f"top-5 Hessian eigenvalues, CNN1d ({rows[0]['num_params']} parameters), "
        f"{rows[0]['num_samples']} MNIST-1D samples, device {args.device}"
    )
    print(f"fastest of {args.repeats} solves per run (all runs in brackets)")
    print(
        f"{'procs':>5} {'wall s':>8} {'speed-up':>8} {'comm s':>8} {'comm %':>7} {'matvecs':>7}  {'lambda_max':>12}  runs"
    )
    for r in rows:
        runs = ", ".join(f"{w:.2f}" for w in r.get("walls_s", [r["wall_s"]]))
        print(
            f"{r['procs']:>5} {r['wall_s']:>8.2f} {base / r['wall_s']:>8.2f} {r['comm_s']:>8.3f} "
            f"{100 * r['comm_s'] / r['wall_s']:>6.1f}% {r['matvecs']:>7}  {r['eigenvalues'][0]:>12.7g}  [{runs}]"
        )


if __name__ == "__main__":
    main()
