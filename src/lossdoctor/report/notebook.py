"""HTML for results in a notebook.

``d`` in a Jupyter cell shows the verdict and prescriptions the way the report does. Every result's
``_repr_html_`` comes here (display is the report's job)."""

from __future__ import annotations

import base64
import dataclasses
import io
import math
from typing import Any

from .._results import fmt
from .html import esc, table

CSS = (
    "<style>.ld{font-family:system-ui,sans-serif;font-size:13px;max-width:980px}.ld table{border-collapse:collapse;"
    "margin:.4em 0}.ld td,.ld th{border:1px solid #ccc;padding:2px 6px;text-align:right}.ld td.l,.ld th.l{text-align:left}"
    ".ld .verdict{background:#eef6ee;border-left:4px solid #3a3;padding:.4em .8em}.ld img{max-width:100%}"
    ".ld code{background:#f4f4f4;padding:0 3px}</style>"
)


def inline_png(fig: Any) -> str:
    """A matplotlib figure as an inline <img> (base64 PNG); the figure is closed."""
    from .figures import pyplot

    plt = pyplot()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _scalar_rows(result: Any) -> list[tuple[str, str]]:
    rows = []
    for f in dataclasses.fields(result):
        v = getattr(result, f.name)
        if isinstance(v, bool) or v is None or isinstance(v, str):
            rows.append((f.name, str(v)))
        elif isinstance(v, (int, float)):
            rows.append((f.name, fmt(v) if isinstance(v, float) else str(v)))
    return rows


def generic_html(result: Any) -> str:
    """A compact table of a result's scalar fields and its text, folded."""
    rows = _scalar_rows(result)
    return (
        f'{CSS}<div class="ld"><b>{esc(type(result).__name__)}</b>'
        + table(["field", "value"], rows, left=2)
        + f"<details><summary>as text</summary><pre>{esc(str(result))}</pre></details></div>"
    )


def trial_figure(diagnosis: Any, top: int = 3) -> Any | None:
    """The trial curves of the top prescriptions against continuing unchanged (None without trials)."""
    tried = [p for p in diagnosis.prescriptions if p.trial is not None and p.trial.curve][:top]
    if not tried or diagnosis.trials is None:
        return None
    from .figures import new_figure

    fig, (ax,) = new_figure(1, width=6.4, height=3.4)
    control = diagnosis.trials.control_curve
    ax.plot(range(1, len(control) + 1), control, color="k", lw=1.2, label="continue unchanged")
    for i, p in enumerate(tried):
        label = p.text if len(p.text) < 60 else p.text[:57] + "..."
        ax.plot(
            range(1, len(p.trial.curve) + 1),
            p.trial.curve,
            lw=1.0,
            label=f"{i + 1}. {label}",
            color=f"C{i}",
        )
    finite = [
        v for v in list(control) + [v for p in tried for v in p.trial.curve] if math.isfinite(v)
    ]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("trial step (same batches for every branch)")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7)
    return fig


def code_for(action: dict[str, Any], index: int) -> str:
    """The line that applies a prescription, and its plain-PyTorch equivalent where there is one."""
    line = f"opt = d.prescriptions[{index}].apply(model, opt)"
    a = dict(action)
    if not a or a.get("stop"):
        return "# nothing to change"
    if "optimizer" in a:
        return (
            f"{line}  # same as: torch.optim.{a['optimizer']}(model.parameters(), lr={a['lr']:.3g})"
        )
    if set(a) == {"lr"}:
        return f"{line}  # same as: for g in opt.param_groups: g['lr'] = {a['lr']:.3g}"
    if set(a) == {"momentum"}:
        return f"{line}  # same as: for g in opt.param_groups: g['momentum'] = {a['momentum']:g}"
    if set(a) == {"weight_decay"}:
        return f"{line}  # same as: for g in opt.param_groups: g['weight_decay'] = {a['weight_decay']:.3g}"
    return line


def prescriptions_table(diagnosis: Any) -> str:
    """The prescriptions of a diagnosis as an HTML table (with their trials)."""
    rows = []
    for i, p in enumerate(diagnosis.prescriptions):
        trial = (
            "-"
            if p.trial is None
            else (
                f"{fmt(p.trial.loss, 4)} vs {fmt(p.trial.control_loss, 4)} ({p.trial.change})"
                if p.trial.finite and math.isfinite(p.trial.relative_gain)
                else str(p.trial)
            )
        )
        how = code_for(p.action, i) if p.applicable else "change your code (see the text)"
        rows.append((i + 1, p.text, trial, how))
    return table(["#", "prescription", "trial: loss vs unchanged", "apply"], rows, left=4)


def diagnosis_html(d: Any) -> str:
    """A diagnosis as HTML: the verdict, the evidence and the prescriptions."""
    fig = trial_figure(d)
    img = inline_png(fig) if fig is not None else ""
    evidence = "".join(f"<li>{esc(e)}</li>" for e in d.evidence)
    return (
        f'{CSS}<div class="ld"><p class="verdict"><b>{esc(d.cause.replace("_", " "))}</b>: {esc(d.summary)}</p>'
        + prescriptions_table(d)
        + img
        + f"<details><summary>evidence ({len(d.evidence)})</summary><ul>{evidence}</ul></details></div>"
    )


def render_html(result: Any) -> str:
    """The notebook HTML for any result object."""
    name = type(result).__name__
    if name == "Diagnosis":
        return diagnosis_html(result)
    if name == "Checkup":
        from .checkup import notebook_html

        return notebook_html(result)
    return generic_html(result)
