"""`ld.checkup` on four models of different families, at its default budget.

    python benchmarks/checkup.py [--out DIR] [--seed 0] [--screenshots]

For each model (an MNIST-1D tanh MLP stalled at a saddle, a CNN with BatchNorm oscillating under
momentum 0.995, a 2-layer transformer at AdamW lr 0.1, a healthy Adam MLP; a Hugging Face GPT-2
built from a config when ``transformers`` is installed): the checkup's wall time against the
2-minute floor, whether its verdict and prescriptions equal ``diagnose(verify=True)``'s, whether
the model, its buffers, the optimizer state and the global RNG are exactly as before, and the
section statuses. With ``--screenshots`` each page is rendered by headless Chromium to a PNG and
the first lines a reader sees are printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

import lossdoctor as ld
from lossdoctor.checkup import BUDGET
from lossdoctor.report.checkup import write
from lossdoctor.studies import stall_cases as sc

CASES = {
    "saddle (MNIST-1D tanh MLP)": "saddle/zero-tanh-mlp",
    "oscillating (CNN + BatchNorm)": "momentum/cnn-bn",
    "Adam lr too high (transformer)": "oscillation/lm-adam",
    "healthy (Adam MLP)": "healthy/mlp-adam",
}
FLOOR_SECONDS = 120.0


def load() -> str:
    try:
        return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    except OSError:  # pragma: no cover
        return "load unknown"


def state_of(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    tensors = [t.detach().clone() for t in model.state_dict().values()]
    for per_param in optimizer.state.values():
        tensors += [v.detach().clone() for v in per_param.values() if isinstance(v, torch.Tensor)]
    return tensors


def unchanged(before: list[torch.Tensor], after: list[torch.Tensor]) -> bool:
    return len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after))


def screenshot(page: Path, png: Path) -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        return "no chromium"
    done = subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1000,1400",
            f"--screenshot={png}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return str(png) if done.returncode == 0 and png.exists() else f"failed: {done.stderr[-200:]}"


def first_lines(page: Path, n: int = 6) -> list[str]:
    """The page's first visible lines (tags stripped), as a reader meets them."""
    import html
    import re

    body = page.read_text().split("<body>", 1)[-1]
    body = re.sub(r"<(script|style)[^>]*>.*?</\1>", "", body, flags=re.S)
    text = html.unescape(re.sub(r"<[^>]+>", "\n", body))
    return [line.strip() for line in text.splitlines() if line.strip()][:n]


def hf_case(seed: int) -> sc.Stall | None:
    """GPT-2 from a config (no download) at AdamW lr 0.05, when transformers is installed."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except Exception:  # noqa: BLE001 - any import failure means: not available here
        return None
    torch.manual_seed(seed)
    x, y = sc.markov_tokens(seed)
    config = GPT2Config(vocab_size=12, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)

    def logits_loss(out, targets):
        logits = out.logits if hasattr(out, "logits") else out
        return sc.token_loss(logits, targets)

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, ids):
            return self.inner(input_ids=ids).logits

    wrapped = Logits(model)
    opt = torch.optim.AdamW(wrapped.parameters(), lr=0.05)
    data = sc.batches_of(x, y, 32, seed, epochs=20)
    return sc._run(wrapped, logits_loss, opt, data, (x, y), 200, sc.set_lr(3e-3), 200)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="checkup-pages")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--screenshots", action="store_true")
    args = parser.parse_args()
    families = {f.key: f for f in sc.FAMILIES}
    out_root = Path(args.out)
    print(
        f"# checkup at its default budget ({BUDGET:.0f} s), seed {args.seed}, "
        f"{load()}, torch threads {torch.get_num_threads()}\n"
    )
    rows = []
    cases = [(name, lambda key=key: families[key].build(args.seed)) for name, key in CASES.items()]
    cases.append(("Adam lr too high (HF GPT-2 from a config)", lambda: hf_case(args.seed)))
    for name, build in cases:
        stall = build()
        if stall is None:
            rows.append((name, "skipped: transformers is not installed", "", "", "", ""))
            continue
        before = state_of(stall.model, stall.optimizer)
        rng = torch.get_rng_state()
        t0 = time.perf_counter()
        c = ld.checkup(
            stall.model, stall.loss_fn, stall.data, history=stall.losses, optimizer=stall.optimizer
        )
        seconds = time.perf_counter() - t0
        untouched = unchanged(before, state_of(stall.model, stall.optimizer)) and torch.equal(
            rng, torch.get_rng_state()
        )
        d = ld.diagnose(
            stall.model,
            stall.loss_fn,
            stall.data,
            history=stall.losses,
            optimizer=stall.optimizer,
            verify=True,
        )
        same = c.diagnosis.cause == d.cause and [p.action for p in c.diagnosis.prescriptions] == [
            p.action for p in d.prescriptions
        ]
        folder = out_root / name.split(" (")[0].replace(" ", "-")
        page = write(c, folder)
        shot = screenshot(page, folder / "screenshot.png") if args.screenshots else "-"
        statuses = ", ".join(f"{s.key}:{s.status.split(':')[0]}" for s in c.sections)
        rows.append(
            (
                name,
                f"{seconds:.0f} s" + (" (OVER the floor)" if seconds > FLOOR_SECONDS else ""),
                c.diagnosis.cause,
                "yes" if same else "NO",
                "yes" if untouched else "NO",
                statuses,
            )
        )
        print(f"## {name}: {page}")
        print("   first lines: " + " | ".join(first_lines(page)))
        print(f"   screenshot: {shot}\n", flush=True)
    print(
        "| model | checkup time | verdict | = diagnose(verify=True) | model untouched | sections |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    sys.exit(main())
