"""What the Krylov methods hold in memory, sized to the memory available and stated up front.

The large allocations of eigenpairs and trace are ``n``-long vectors: the Lanczos basis (``ncv``
of them), the products ``H q`` kept beside it for true residuals, and a trace's block of probes
and products. On a 124M-parameter model one float64 vector is 1 GB, so a basis of 16 is 16 GB:
the choices here (float64 or float32 basis, on the operator's device or the host, how many
vectors, how many probes per block) are made from the memory available when the call starts,
reported in the result, and can be forced by the caller. A choice that cannot fit even at its
smallest is refused with a :class:`MemoryError` that says what would.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch

# Shares of the memory available when a call starts. The rest is left to the model's own
# products (activations, the graph of the double backward), the vectors returned and the caller.
BASIS_SHARE = 0.4  # the Lanczos basis (and its kept products)
# The products H q kept beside a float64 basis save one product per pair at the end; worth their
# memory (as much again as the basis) only while they are small.
PRODUCTS_CAP = 2**30
BLOCK_SHARE = 0.125  # one block of trace probes and their products
BLOCK_CAP = 2**30  # ... and at most this: a bigger block is no faster once the graphs are cached
# Bytes per parameter that one probe of a block costs: the float64 probe and product, the
# operator's copies in the parameters' dtype (input, output, concatenation) and float64 result.
PROBE_BYTES = 8 + 8 + 3 * 4 + 8
# A notice is written when a call is expected to take at least this long (or a fallback was chosen).
NOTICE_SECONDS = 10.0
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def available_bytes(device: torch.device | str) -> int | None:
    """Memory free for new allocations on ``device``.

    free GPU memory (CUDA), the host's ``MemAvailable`` (CPU); None where it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# glibc's malloc serves an allocation above its mmap threshold with fresh pages from the kernel
# and hands heap memory beyond twice that threshold back on free, so a loop that allocates and
# frees the same few-MB tensors over and over (a Hessian-vector product's temporaries) faults
# every page in again each time: 10,000 page faults and a third of the time of a product on the
# benchmark CNN (52-68 ms -> 39 ms per batch of 1,000). glibc raises both thresholds by itself
# the first time a block above the threshold and below its 32 MB cap is freed; freeing one such
# block at once puts the allocator where any process that has freed a mid-sized tensor already
# is (it keeps up to 64 MB of freed memory for reuse). No effect where the thresholds were
# fixed by the user (MALLOC_MMAP_THRESHOLD_ and friends) or with another allocator.
ALLOCATOR_WARM_BYTES = 30 * 2**20
_allocator_warm = False


def reuse_freed_pages() -> None:
    """Let the host allocator keep freed tensor memory for reuse (once per process; see above)."""
    global _allocator_warm
    if _allocator_warm or not sys.platform.startswith("linux"):
        return
    _allocator_warm = True
    block = torch.empty(ALLOCATOR_WARM_BYTES, dtype=torch.uint8)
    del block


def fmt_bytes(n: float | None) -> str:
    """A byte count as text (kB, MB, GB)."""
    if n is None:
        return "unknown"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _dtype(value: Any, name: str) -> torch.dtype | None:
    if value is None or (isinstance(value, str) and value == "auto"):
        return None
    if isinstance(value, str) and value in DTYPES:
        return DTYPES[value]
    if value in (torch.float64, torch.float32):
        return value
    raise ValueError(
        f"{name} must be 'auto' (or None), 'float64' or 'float32' (or the torch dtype), "
        f"got {value!r}."
    )


def _device(value: Any, name: str) -> torch.device | None:
    if value is None or (isinstance(value, str) and value == "auto"):
        return None
    try:
        return torch.device(value)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"{name} must be 'auto' (or None), 'cpu' or a device such as 'cuda:0', got {value!r}."
        ) from err


@dataclass(frozen=True)
class BasisPlan:
    """The Lanczos basis chosen.

    ``ncv`` vectors of ``dtype`` on ``device`` (plus the products ``H q`` beside them when
    ``keep_products``), ``bytes`` in all, out of ``available``."""

    dtype: torch.dtype
    device: torch.device
    ncv: int
    keep_products: bool
    bytes: int
    available: int | None
    fallback: (
        str  # why not a float64 basis of the wanted size on the operator's device ("" if it is)
    )

    @property
    def dtype_name(self) -> str:
        """The dtype without "torch."."""
        return str(self.dtype).replace("torch.", "")


def plan_basis(
    n: int,
    *,
    ncv: int,
    min_ncv: int,
    op_device: torch.device | str,
    ncv_given: bool = False,
    dtype: Any = None,
    device: Any = None,
    keep_products: bool = True,
    held: int = 0,
    available: dict[str, int | None] | None = None,
) -> BasisPlan:
    """Choose the Lanczos basis for ``n`` parameters.

    ``ncv + 1`` rows wanted (at least ``min_ncv + 1`` usable), while ``held`` bytes are held beside
    it (pairs found so far).

    In order of preference: float64 on the operator's device, float32 there, then (CUDA
    operators) the same on the host; products ``H q`` are kept only beside a float64 basis and
    only where both fit. Where none fits at ``ncv`` (and ``ncv`` was not given), fewer vectors
    of the last choice (more restarts, same answer). ``dtype``/``device`` force a choice.
    ``available`` maps a device string to bytes (tests); by default it is read now."""
    op_device = torch.device(op_device)
    want_dtype, want_device = _dtype(dtype, "basis_dtype"), _device(device, "basis_device")
    dtypes = [want_dtype] if want_dtype is not None else [torch.float64, torch.float32]
    devices = (
        [want_device]
        if want_device is not None
        else ([op_device, torch.device("cpu")] if op_device.type == "cuda" else [op_device])
    )

    def free(dev: torch.device) -> int | None:
        if available is not None:
            return available.get(str(dev), available.get(dev.type))
        return available_bytes(dev)

    def budget(dev: torch.device) -> float:
        got = free(dev)
        return (
            float("inf") if got is None else BASIS_SHARE * got - (held if dev == op_device else 0)
        )

    rows = ncv + 1
    first_need = rows * n * 8
    for dev in devices:
        for dt in dtypes:
            size = rows * n * torch.finfo(dt).bits // 8
            room = budget(dev)
            if size <= room:
                products = (
                    keep_products
                    and dt == torch.float64
                    and 2 * size <= room
                    and size <= PRODUCTS_CAP
                )
                why = (
                    ""
                    if (dt == torch.float64 and dev == op_device)
                    else (
                        f"a float64 basis of {rows} vectors on {op_device} would need {fmt_bytes(first_need)}, "
                        f"{fmt_bytes(free(op_device))} is available there"
                    )
                )
                if want_dtype is not None or want_device is not None:
                    why = "chosen by the caller" if why else ""
                return BasisPlan(
                    dt, dev, ncv, products, size * (2 if products else 1), free(dev), why
                )
    # Nothing holds ncv vectors: fewer vectors of the smallest choice on the roomiest device.
    dev = max(devices, key=budget)
    dt = dtypes[-1]
    item = torch.finfo(dt).bits // 8
    room = budget(dev)
    fit = int(room // (n * item)) - 1 if room > 0 else -1
    if not ncv_given and fit >= min_ncv:
        return BasisPlan(
            dt,
            dev,
            fit,
            False,
            (fit + 1) * n * item,
            free(dev),
            f"{ncv} vectors of {n:,} parameters do not fit in {fmt_bytes(free(dev))} available on "
            f"{dev}: {fit} {str(dt).replace('torch.', '')} vectors (more restarts)",
        )
    rows = ncv + 1 if ncv_given else min_ncv + 1
    raise MemoryError(
        f"The Lanczos basis does not fit: {rows} vectors of {n:,} parameters in {str(dt).replace('torch.', '')} "
        f"need {fmt_bytes(rows * n * item)}{'' if ncv_given else ' at the least'}, and {fmt_bytes(free(dev))} is "
        f"available on {dev}, of which the basis may use {BASIS_SHARE:.0%} less the {fmt_bytes(held)} the "
        f"eigenvectors take. Free memory, analyse a subset of "
        f"the parameters, ask for fewer eigenpairs (k), "
        + ("pass a smaller ncv, " if ncv_given else "")
        + (
            "or basis_dtype='float32' / basis_device='cpu'."
            if want_dtype or want_device
            else "or run on a machine with more memory."
        )
    )


def plan_block(
    n: int,
    *,
    block: int | None,
    max_block: int,
    device: torch.device | str,
    available: int | None = None,
) -> int:
    """Probes per block for a trace.

    as many as ``max_block`` allows within ``min(BLOCK_SHARE * available, BLOCK_CAP)`` (one at the
    least); ``block`` if given."""
    if block is not None:
        return int(block)
    free = available_bytes(device) if available is None else available
    if free is None:
        return int(max_block)
    room = min(BLOCK_SHARE * free, BLOCK_CAP)
    return int(max(1, min(max_block, room // (PROBE_BYTES * n))))


def notice(progress: Any, text: str) -> None:
    """One line on stderr, where the caller wants progress (a bar or a callback)."""
    if progress is None:
        return
    stream = sys.stderr
    if stream is None:
        return
    stream.write("\r" + text + "\n")
    stream.flush()


def time_text(seconds: float) -> str:
    """Seconds as text (s, min, h)."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
