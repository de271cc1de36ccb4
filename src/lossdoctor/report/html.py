"""The HTML page of a report: sections of text, tables and figures, self-contained but for PNGs."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f2f2f2}
td.l,th.l{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.9em;color:#555}
.verdict{background:#eef6ee;border-left:4px solid #3a3;padding:.5em 1em}
.warn{background:#fff6e5;border-left:4px solid #e90;padding:.5em 1em}
nav a{margin-right:1em}
.scroll{overflow-x:auto;max-width:100%}
@media (max-width:700px){body{margin:.5em auto;font-size:15px}table{font-size:.85em}}
@media print{nav{display:none}body{max-width:none;margin:0}section{page-break-inside:avoid}
figure img{max-width:100%;border:none}}
"""


@dataclass(frozen=True)
class Section:
    """One section of a report page: its title, anchor and HTML body."""

    key: str
    title: str
    body: str  # HTML


def esc(text: object) -> str:
    """``text`` escaped for HTML."""
    return html.escape(str(text))


def table(header: Sequence[str], rows: Sequence[Sequence[object]], left: int = 1) -> str:
    """An HTML table; the first ``left`` columns are left-aligned (labels)."""

    def cell(tag: str, i: int, value: object) -> str:
        cls = ' class="l"' if i < left else ""
        return f"<{tag}{cls}>{esc(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def figure(src: str, caption: str) -> str:
    """An HTML figure: the image ``src`` with its caption."""
    return f'<figure><img src="{esc(src)}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'


def paragraph(text: str, cls: str | None = None) -> str:
    """An HTML paragraph of escaped ``text`` (with a CSS class, if given)."""
    return f"<p{f' class={chr(34)}{cls}{chr(34)}' if cls else ''}>{esc(text)}</p>"


def verdict(text: str, verdict_text: str, prescriptions: Sequence[object]) -> str:
    """A study's text, the doctor's verdict on it and the prescriptions as a list (escaped)."""
    items = "".join(f"<li>{esc(str(p))}</li>" for p in prescriptions)
    return paragraph(text) + paragraph(verdict_text, "verdict") + f"<ul>{items}</ul>"


def write_page(out_dir: Path, sections: Sequence[Section], *, title: str, intro: str = "") -> Path:
    """Write ``index.html`` with ``sections`` into ``out_dir`` (atomically) and return its path."""
    nav = "".join(f'<a href="#{esc(s.key)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(
        f'<section id="{esc(s.key)}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections
    )
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
        f'<link rel="icon" href="data:,"><style>{STYLE}</style></head><body><h1>{esc(title)}</h1>'
        f"{paragraph(intro) if intro else ''}<nav>{nav}</nav>{body}</body></html>"
    )
    from .._files import atomic_write_text

    return atomic_write_text(out_dir, "index.html", page)  # atomic; never through a planted symlink
