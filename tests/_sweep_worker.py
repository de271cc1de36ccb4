"""Run under torchrun by tests/test_sweep.py: both ranks run one sweep into a shared store and
save what they trained and the assembled result to OUT_DIR/rank<r>.json."""

import json
import sys

import torch.distributed as dist

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_sweep import sweep, tiny_problem  # noqa: E402


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    try:
        result = sweep(tiny_problem(), store=f"{out_dir}/store")
        payload = {"trained": result.trained, "runs": [r.to_dict() for r in result.runs]}
        with open(f"{out_dir}/rank{dist.get_rank()}.json", "w") as handle:
            json.dump(payload, handle)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
