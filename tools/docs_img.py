"""Shrink the tour's figures into docs/img for the docs site (each well under 100 kB).

Usage: ``lossdoctor tour --out report`` (or any earlier report folder), then
``python tools/docs_img.py report``. Only the figures the lecture pages show are copied.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

FIGURES = [
    "critical-toy-surface",
    "critical-regression",
    "rare-minima",
    "critical-toy-escape",
    "valley-contours",
    "valley-curves",
    "batch-time",
    "batch-sweep",
    "flat-sharp-interpolation",
    "l2-curves",
    "l2-sweep",
    "warmup",
]
WIDTH = 900  # pixels: the docs column is narrower
COLORS = 128  # a palette image: tour figures are flat-coloured line plots


def shrink(src: Path, dst: Path) -> int:
    with Image.open(src) as im:
        im = im.convert("RGB")
        if im.width > WIDTH:
            im = im.resize((WIDTH, round(im.height * WIDTH / im.width)), Image.LANCZOS)
        im.quantize(colors=COLORS, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)
    return dst.stat().st_size


def main(argv: list[str]) -> int:
    report = Path(argv[0] if argv else "report")
    out = Path(__file__).resolve().parents[1] / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    missing = []
    for name in FIGURES:
        src = report / f"{name}.png"
        if not src.exists():
            missing.append(name)
            continue
        print(
            f"{name}.png: {src.stat().st_size // 1024} kB -> {shrink(src, out / f'{name}.png') // 1024} kB"
        )
    if missing:
        print(f"not in {report}: {', '.join(missing)}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
