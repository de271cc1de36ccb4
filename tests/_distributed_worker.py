"""Run under torchrun by tests/test_distributed.py: each rank analyses its shard and saves what
it computed to OUT_DIR/rank<r>.pt."""

import sys

import torch
import torch.distributed as dist
from torch.nn import functional as F

import lossdoctor as ld

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_distributed import SHARDS, _classification, _data, _model, _results  # noqa: E402


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    try:
        rank = dist.get_rank()
        x, y = _data()
        xs, ys = x[SHARDS[rank]], y[SHARDS[rank]]
        shard = [(xs[i : i + 4], ys[i : i + 4]) for i in range(0, len(xs), 4)]
        results = _results(ld.hessian(_model(), F.cross_entropy, shard))
        ddp = torch.nn.parallel.DistributedDataParallel(_model())
        results["ddp"] = _results(ld.hessian(ddp, F.cross_entropy, shard))
        results["critical"] = _classification(_model(), shard)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
