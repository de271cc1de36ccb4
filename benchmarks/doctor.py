"""The stall doctor's validation: causes, fixes, the Monitor's treatment and its overhead.

    python benchmarks/doctor.py                      # everything, tuning and held-out seeds
    python benchmarks/doctor.py --only validation --set held-out
    python benchmarks/doctor.py --only monitor       # treat=True against unmonitored; overhead

Four tables, each labelled with the seeds it comes from:

1. **Causes and fixes** (``studies/doctor_validation.py``): every family of ``studies/stall_cases.py``
   on the tuning seeds (0-5: they shaped the rules) and the held-out seeds (6-8: they only
   measure; run once, results in ``benchmarks/results/doctor_heldout_seeds_6-8.txt``). Right cause, healthy false alarms, and the first prescription applied through its
   own ``apply`` and trained on for the family's horizon against continuing unchanged and the
   known remedy (fixed: at least half the gap closed; harmful: worse than unchanged).
2. **Diagnosis cost** per architecture: seconds, Hessian-vector products, trial steps.
3. **Monitor(treat=True)**: from each stalled state, ``--treat-steps`` more training steps with the
   Monitor treating, against the same steps unmonitored (same batches): ends lower? On healthy
   runs: did it change anything?
4. **Monitor overhead, all in** (treat=False, default budget): time per step with and without
   the Monitor on stalling and healthy runs of an MLP (0.1 ms steps), a BatchNorm CNN and the
   transformer, one thread, the fastest of interleaved repeats; the doctor's calls included;
   under each budget clock (``steps``: counted passes, deterministic; ``wall``: measured
   seconds).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
from collections import defaultdict

import torch

from lossdoctor.doctor.monitor import Monitor
from lossdoctor.studies import doctor_validation as dv
from lossdoctor.studies import stall_cases as sc


def load() -> str:
    try:
        return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    except OSError:  # pragma: no cover
        return "load unknown"


def validation(
    seeds: tuple[int, ...], label: str, families: list[sc.StallFamily]
) -> dv.ValidationStudy:
    print(f"\n## Causes and fixes, {label} seeds {list(seeds)} ({load()})", flush=True)
    study = dv.run(
        seeds=seeds,
        families=families,
        progress=lambda done, total: print(f"  {done}/{total}", end="\r", flush=True),
    )
    print(study)
    return study


def costs(studies: list[dv.ValidationStudy]) -> None:
    print("\n## Diagnosis cost per architecture (all runs above)")
    by = defaultdict(list)
    for s in studies:
        for r in s.runs:
            by[r.architecture].append(r)
    print(
        f"{'architecture':28s} {'runs':>5s} {'seconds (median / max)':>24s} {'HVPs (median)':>14s} "
        f"{'trial steps (median)':>21s}"
    )
    for arch, runs in sorted(by.items()):
        secs = [r.seconds for r in runs]
        print(
            f"{arch:28s} {len(runs):5d} {statistics.median(secs):11.2f} / {max(secs):9.2f} "
            f"{statistics.median(r.hvps for r in runs):14.0f} {statistics.median(r.trial_steps for r in runs):21.0f}"
        )


def _continue(stall: sc.Stall, steps: int, monitor: Monitor | None) -> float:
    model, opt = stall.model, stall.optimizer
    model.train()
    for k in range(stall.steps, stall.steps + steps):
        x, y = stall.data[k % len(stall.data)]
        opt.zero_grad(set_to_none=True)
        loss = stall.loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if monitor is not None:
            monitor.step(
                loss, opt
            )  # a monitored run goes on: the monitor sees the NaN and may restore
        elif not math.isfinite(float(loss.detach())):
            return math.inf
    value = sc.full_loss(model, stall.loss_fn, stall.full_data)
    return value if math.isfinite(value) else math.inf


def treatment(
    seeds: tuple[int, ...], label: str, families: list[sc.StallFamily], steps: int
) -> None:
    print(
        f"\n## Monitor(treat=True), {label} seeds {list(seeds)}: {steps} more steps from each stalled state "
        f"({load()})",
        flush=True,
    )
    lower = stalled = unchanged_healthy = healthy = 0
    for seed in seeds:
        for family in families:
            stall = family.build(seed)
            saved_model, saved_opt = (
                copy.deepcopy(stall.model.state_dict()),
                copy.deepcopy(stall.optimizer.state_dict()),
            )
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                plain = _continue(stall, steps, None)
            stall.model.load_state_dict(saved_model)
            stall.optimizer.load_state_dict(saved_opt)
            monitor = Monitor(
                stall.model,
                stall.loss_fn,
                stall.data,
                treat=True,
                checkpoint_every=None if stall.checkpoint is None else 10**9,
            )
            if stall.checkpoint is not None:
                monitor._checkpoint = (
                    stall.checkpoint
                )  # what a Monitor watching from the start would hold
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                treated = _continue(stall, steps, monitor)
            acts = "; ".join(f"{a.kind} {a.prescription.action}" for a in monitor.actions) or "none"
            if family.cause == "progressing":
                healthy += 1
                unchanged_healthy += not any(a.kind == "applied" for a in monitor.actions)
                print(
                    f"  {family.key:32s} s{seed} healthy: plain {plain:.4g} monitored {treated:.4g}; actions: {acts}"
                )
            elif family.cause != "converged":
                stalled += 1
                lower += treated < plain
                print(
                    f"  {family.key:32s} s{seed} plain {plain:.4g} treated {treated:.4g} "
                    f"{'LOWER' if treated < plain else 'not lower'}; actions: {acts}",
                    flush=True,
                )
    print(
        f"treat=True ended below the unmonitored run on {lower}/{stalled} stalled runs "
        f"({lower / max(stalled, 1):.1%}); changed nothing on {unchanged_healthy}/{healthy} healthy runs"
    )


def _timed_run(
    family: sc.StallFamily, seed: int, steps: int, clock: str | None
) -> tuple[float, Monitor | None]:
    stall = family.build(seed)
    monitor = Monitor(stall.model, stall.loss_fn, stall.data, budget_clock=clock) if clock else None
    model, opt = stall.model, stall.optimizer
    start = time.perf_counter()
    for k in range(stall.steps, stall.steps + steps):
        x, y = stall.data[k % len(stall.data)]
        opt.zero_grad(set_to_none=True)
        loss = stall.loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if monitor is not None:
            monitor.step(loss, opt)
        else:
            loss.item()  # a plain loop logs its loss too: the same one sync per step
    return time.perf_counter() - start, monitor


OVERHEAD_CASES = (
    "lr-too-small/mlp",
    "healthy/mlp-adam",
    "lr-too-small/cnn-bn",
    "lr-too-small/lm-adamw",
    "healthy/lm-adamw",
)


def overhead(steps: int, repeats: int) -> None:
    """The Monitor's all-in overhead under each budget clock (treat=False, default share)."""
    print(
        f"\n## Monitor overhead, all in (treat=False, default budget), {steps} steps, fastest of {repeats} "
        f"interleaved repeats, 1 thread ({load()})",
        flush=True,
    )
    torch.set_num_threads(1)
    print(
        f"{'run':24s} {'clock':>6s} {'step ms':>8s} {'plain s':>8s} {'monitored s':>12s} "
        f"{'overhead':>9s} {'diagnoses':>10s} {'doctor s':>9s} {'step-eq.':>9s} {'deferred':>9s}"
    )
    for key in OVERHEAD_CASES:
        family = next(f for f in sc.FAMILIES if f.key == key)
        times: dict[str | None, list[float]] = {None: [], "steps": [], "wall": []}
        monitors: dict[str, Monitor] = {}
        for _ in range(repeats):
            for clock in times:
                seconds, monitor = _timed_run(family, 0, steps, clock)
                times[clock].append(seconds)
                if clock is not None and monitor is not None:
                    monitors[clock] = monitor
        plain = min(times[None])
        for clock, monitor in monitors.items():
            watched = min(times[clock])
            print(
                f"{key:24s} {clock:>6s} {1e3 * plain / steps:8.3f} {plain:8.3f} {watched:12.3f} "
                f"{watched / plain - 1:+9.1%} {len(monitor.diagnoses):10d} "
                f"{monitor.doctor_seconds:9.3f} {monitor.doctor_cost:9.1f} {monitor.deferred:9d}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["validation", "monitor", "overhead"], default=None)
    parser.add_argument(
        "--set",
        choices=["tuning", "held-out", "both", "fresh"],
        default="both",
        help="fresh: seeds 9-11, first run on 2026-12-03 after the Monitor's treat rules changed.",
    )
    parser.add_argument(
        "--families", default=None, help="Comma-separated substrings of family keys."
    )
    parser.add_argument(
        "--first-seeds",
        type=int,
        default=None,
        help="Only the first N seeds of each set (the Monitor's treatment is slow).",
    )
    parser.add_argument(
        "--seeds",
        default=None,
        help="Comma-separated seeds of the chosen set to run (e.g. 7,8), instead of all of them.",
    )
    parser.add_argument("--treat-steps", type=int, default=300)
    parser.add_argument("--overhead-steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="Write the validation studies here.")
    args = parser.parse_args()
    families = (
        sc.FAMILIES
        if not args.families
        else [f for f in sc.FAMILIES if any(s in f.key for s in args.families.split(","))]
    )
    sets = {
        "tuning": [("tuning", dv.TUNE_SEEDS)],
        "held-out": [("held-out", dv.HELD_OUT_SEEDS)],
        "both": [("tuning", dv.TUNE_SEEDS), ("held-out", dv.HELD_OUT_SEEDS)],
        "fresh": [("fresh held-out", dv.FRESH_SEEDS)],
    }[args.set]
    if args.first_seeds is not None:
        sets = [(label, seeds[: args.first_seeds]) for label, seeds in sets]
    if args.seeds is not None:
        chosen = {int(s) for s in args.seeds.split(",")}
        sets = [(label, tuple(s for s in seeds if s in chosen)) for label, seeds in sets]
        sets = [(label, seeds) for label, seeds in sets if seeds]
    print(f"lossdoctor doctor benchmark, torch {torch.__version__}, {load()}")
    studies = []
    if args.only in (None, "validation"):
        for label, seeds in sets:
            studies.append(validation(seeds, label, families))
        costs(studies)
        if args.json:
            with open(args.json, "w") as f:
                json.dump([s.to_dict() for s in studies], f)
    if args.only in (None, "monitor"):
        for label, seeds in sets:
            treatment(seeds, label, families, args.treat_steps)
    if args.only in (None, "overhead"):
        overhead(args.overhead_steps, args.repeats)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
