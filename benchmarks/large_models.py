"""Large models on one machine: a ResNet-18 (11.2M parameters, BatchNorm) and a GPT-2-small-sized
model (124.4M parameters, built from a transformers ``GPT2Config`` with random weights, no
download), on small synthetic batches: top-3 eigenpairs, the trace and a diagnosis, side by side
with PyHessian on the same models where it is installed.

Each (model, library, call) runs in a fresh process, so its peak resident set (``ru_maxrss``) is
that call's own: the table gives the process's resident set once the model and data are built
("base"), its peak during the call ("peak"), and the seconds of the call. Results are appended as
JSON lines to ``--log``; ``--table`` prints the table from it, so rows can be measured in
separate runs (the 124M rows are slow on 2 shared cores).

    python benchmarks/large_models.py                      # every row, then the table
    python benchmarks/large_models.py --models gpt2 --libs pyhessian
    python benchmarks/large_models.py --table              # the table from the log

ResNet-18 is torchvision's (``num_classes=10``) where torchvision imports (``make bench-large``
runs in the vision venv), else the same architecture built here. lossdoctor analyses it in train
mode (BatchNorm on batch statistics, as it is trained); PyHessian always switches the model to
eval mode (running statistics), so its rows are of the eval-mode network, and a lossdoctor row in
eval mode is given beside them. GPT-2 has dropout, so both analyse it in eval mode (dropout off).
PyHessian stops its power iteration and its Hutchinson trace at a relative change of 1e-3 between
iterations; lossdoctor's eigenpairs run at ``--tol`` (default 1e-3 on the error bound) and its
trace at ``--trace-matvecs`` products (Hutch++). PyHessian's trace gets the same number of
products (``maxIter``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOG = HERE / "results" / "large_models.jsonl"
CALLS = ("eigenpairs", "trace", "diagnose")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- models --------------------------------------------------------------------------------------
def resnet18():
    import torch
    from torch import nn

    try:
        from torchvision.models import resnet18 as tv_resnet18

        return tv_resnet18(num_classes=10), "torchvision"
    except Exception:  # noqa: BLE001 - torchvision absent or not importable beside this torch
        pass

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + (x if self.down is None else self.down(x)))

    layers = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10)]
    return nn.Sequential(*layers), "built here (torchvision's layout)"


def build(name: str, batch: int, seq: int, lib: str = "lossdoctor"):
    """(model, description, lossdoctor (loss_fn, data), PyHessian (model, criterion, (x, y)))."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    if name == "resnet18":
        model, origin = resnet18()
        x = torch.randn(batch, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (batch,), generator=gen)
        return (
            model,
            f"ResNet-18 ({origin}), batch {batch}x3x32x32",
            (F.cross_entropy, (x, y)),
            (model, nn.CrossEntropyLoss(), (x, y)),
        )
    if name == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        # GPT-2 small's sizes, random weights. PyHessian needs the eager attention: the fused
        # kernels of the default (SDPA) have no double backward; lossdoctor selects SDPA's math
        # kernel itself while it computes products.
        config = GPT2Config()
        model = (
            GPT2LMHeadModel._from_config(config, attn_implementation="eager")
            if lib == "pyhessian"
            else GPT2LMHeadModel(config)
        )
        ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)

        class ShiftedLogits(nn.Module):
            """What PyHessian can call: model(x) -> logits of the next token, flattened."""

            def __init__(self, lm: nn.Module) -> None:
                super().__init__()
                self.lm = lm

            def forward(self, ids):
                return self.lm(input_ids=ids).logits[:, :-1].reshape(-1, self.lm.config.vocab_size)

        return (
            model,
            f"GPT-2 small config, batch {batch}x{seq} tokens",
            (None, [{"input_ids": ids, "labels": ids}]),
            (ShiftedLogits(model), nn.CrossEntropyLoss(), (ids, ids[:, 1:].reshape(-1))),
        )
    raise ValueError(f"unknown model {name!r}")


# -- one measurement, in its own process ---------------------------------------------------------
def run_one(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    model, description, (loss_fn, data), (ph_model, criterion, ph_data) = build(
        args.model, args.batch, args.seq, args.lib
    )
    mode = args.mode or (
        "train" if args.model == "resnet18" and args.lib == "lossdoctor" else "eval"
    )
    if args.model == "gpt2":
        model.eval()  # dropout off (lossdoctor refuses a random loss; PyHessian switches to eval)
    n = sum(p.numel() for p in model.parameters())
    row = {
        "model": args.model,
        "description": description,
        "params": n,
        "lib": args.lib,
        "call": args.call,
        "mode": mode,
        "threads": args.threads,
        "torch": torch.__version__,
    }
    base = rss_bytes()
    started = time.perf_counter()
    if args.lib == "lossdoctor":
        import lossdoctor as ld

        if args.call == "eigenpairs":
            op = ld.hessian(model, loss_fn, data, mode=mode)
            res = ld.eigenpairs(op, k=3, tol=args.tol, max_matvecs=args.max_matvecs, progress=False)
            row.update(
                values=[float(v) for v in res.eigenvalues],
                converged=[bool(c) for c in res.converged],
                error_bounds=[float(b) for b in res.error_bounds],
                matvecs=res.matvecs,
                **{
                    k: getattr(res, k)
                    for k in ("basis_dtype", "basis_device", "ncv", "memory_estimate_bytes")
                    if hasattr(res, k)
                },
            )
        elif args.call == "trace":
            op = ld.hessian(model, loss_fn, data, mode=mode)
            res = ld.trace(op, matvecs=args.trace_matvecs, progress=False)
            row.update(
                trace=res.estimate,
                standard_error=res.standard_error,
                matvecs=res.matvecs,
                **{
                    k: getattr(res, k)
                    for k in ("block", "memory_estimate_bytes")
                    if hasattr(res, k)
                },
            )
        elif args.call == "diagnose":
            # A stalled run: a flat, slightly noisy loss history; AdamW at a small lr; no trials.
            gen = torch.Generator().manual_seed(1)
            history = (2.3 + 0.01 * torch.randn(120, generator=gen)).tolist()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
            res = ld.diagnose(
                model,
                loss_fn,
                data,
                history=history,
                optimizer=opt,
                verify=False,
                mode=mode if args.model == "resnet18" else "eval",
                budget=args.diagnose_budget,
                progress=False,
            )
            row.update(cause=str(getattr(res, "cause", "")), summary=str(res).splitlines()[0][:120])
    elif args.lib == "pyhessian":
        from pyhessian import hessian as PyHessian

        x, y = ph_data
        hess = PyHessian(ph_model, criterion, data=(x, y), cuda=False)
        if args.call == "eigenpairs":
            values, _ = hess.eigenvalues(top_n=3, tol=1e-3, maxIter=100)
            row.update(values=[float(v) for v in values])
        elif args.call == "trace":
            terms = hess.trace(maxIter=args.trace_matvecs, tol=1e-3)
            row.update(trace=float(sum(terms) / len(terms)), matvecs=len(terms))
        else:
            row.update(skipped="PyHessian has no diagnosis")
    row.update(seconds=time.perf_counter() - started, base_rss=base, peak_rss=peak_bytes())
    return row


# -- the table -----------------------------------------------------------------------------------
def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    latest: dict[tuple, dict] = {}
    for r in rows:  # the latest measurement of each (model, lib, call, mode)
        latest[(r["model"], r["lib"], r["call"], r["mode"])] = r
    done = {(r["model"], r["lib"], r["call"]) for r in latest.values() if "error" not in r}
    latest = {
        k: r
        for k, r in latest.items()
        if "error" not in r or (r["model"], r["lib"], r["call"]) not in done
    }
    lines = [
        "| model | params | library | call | mode | seconds | base RSS GB | peak RSS GB | load | result |",
        "|---|---:|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in sorted(
        latest.values(), key=lambda r: (r["params"], CALLS.index(r["call"]), r["lib"], r["mode"])
    ):
        if "error" in r:
            result = "FAILED: " + r["error"][:90]
        elif "skipped" in r:
            continue
        elif r["call"] == "eigenpairs":
            vals = ", ".join(f"{v:.4g}" for v in r["values"])
            extra = ""
            if "matvecs" in r:
                conv = sum(r.get("converged", []))
                extra = (
                    f"; {r['matvecs']} products, {conv}/3 converged; basis {r.get('ncv', '?')} x "
                    f"{r.get('basis_dtype', '?')} on {r.get('basis_device', '?')}"
                )
            result = f"top-3 [{vals}]{extra}"
        elif r["call"] == "trace":
            se = f" +/- {r['standard_error']:.3g}" if "standard_error" in r else ""
            blk = f", block {r['block']}" if "block" in r else ""
            result = f"{r['trace']:.5g}{se} ({r['matvecs']} products{blk})"
        else:
            result = r.get("summary", "")
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['lib']} | {r['call']} | {r['mode']} | "
            f"{r['seconds']:.1f} | {r['base_rss'] / 1e9:.2f} | {r['peak_rss'] / 1e9:.2f} | {r.get('load', float('nan')):.1f} | "
            f"{result} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default="resnet18,gpt2")
    p.add_argument("--libs", default="lossdoctor,pyhessian")
    p.add_argument("--calls", default=",".join(CALLS))
    p.add_argument(
        "--batch", type=int, default=None, help="samples per batch (default 8 images, 2 sequences)"
    )
    p.add_argument("--seq", type=int, default=32, help="tokens per sequence (GPT-2)")
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--max-matvecs", type=int, default=300)
    p.add_argument("--trace-matvecs", type=int, default=30)
    p.add_argument("--diagnose-budget", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--mode",
        default=None,
        help="lossdoctor's mode (default: train for ResNet-18, eval for GPT-2)",
    )
    p.add_argument("--log", type=Path, default=LOG)
    p.add_argument("--table", action="store_true", help="print the table from --log and exit")
    p.add_argument("--one", nargs=3, metavar=("MODEL", "LIB", "CALL"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.table:
        print(table(args.log))
        return
    if args.one:
        args.model, args.lib, args.call = args.one
        if args.batch is None:
            args.batch = 8 if args.model == "resnet18" else 2
        print(json.dumps(run_one(args)))
        return
    args.log.parent.mkdir(parents=True, exist_ok=True)
    for model in args.models.split(","):
        for call in args.calls.split(","):
            for lib in args.libs.split(","):
                if lib == "pyhessian" and call == "diagnose":
                    continue
                modes = [args.mode]
                if (
                    model == "resnet18"
                    and lib == "lossdoctor"
                    and args.mode is None
                    and call != "diagnose"
                ):
                    modes = ["train", "eval"]  # eval: the network PyHessian analyses
                for mode in modes:
                    cmd = [
                        sys.executable,
                        __file__,
                        "--one",
                        model,
                        lib,
                        call,
                        "--seq",
                        str(args.seq),
                        "--tol",
                        str(args.tol),
                        "--max-matvecs",
                        str(args.max_matvecs),
                        "--trace-matvecs",
                        str(args.trace_matvecs),
                        "--threads",
                        str(args.threads),
                        "--diagnose-budget",
                        str(args.diagnose_budget),
                    ]
                    if args.batch is not None:
                        cmd += ["--batch", str(args.batch)]
                    if mode is not None:
                        cmd += ["--mode", mode]
                    print(f"# {model} {lib} {call} {mode or ''}", file=sys.stderr, flush=True)
                    proc = subprocess.run(cmd, capture_output=True, text=True)
                    if proc.returncode == 0:
                        row = json.loads(proc.stdout.strip().splitlines()[-1])
                    else:
                        row = {
                            "model": model,
                            "lib": lib,
                            "call": call,
                            "mode": mode or "?",
                            "params": 0,
                            "seconds": float("nan"),
                            "base_rss": 0,
                            "peak_rss": 0,
                            "error": f"exit {proc.returncode}: "
                            + (
                                proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "?"
                            ),
                        }
                        print(proc.stderr[-3000:], file=sys.stderr)
                    row["load"] = os.getloadavg()[0]
                    with args.log.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(
                        json.dumps({k: v for k, v in row.items() if k not in ("error_bounds",)}),
                        flush=True,
                    )
    print(table(args.log))


if __name__ == "__main__":
    main()
