"""What every section of the report is made of: the :class:`Section`, the plot style, tables."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

__all__ = ["Section", "finished", "complete", "better_sign", "style", "table", "PALETTE"]

PALETTE = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3",
           "#8C8C8C", "#CCB974", "#64B5CD"]


@dataclass
class Section:
    title: str
    intro: str = ""
    figure: Any = None  # a plotly Figure
    html: str = ""  # extra HTML (tables)
    note: str = ""  # why the section has no plot


def finished(study):
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def complete(study):
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def better_sign(direction: str) -> float:
    return 1.0 if direction == "maximize" else -1.0


def style(fig, height: int = 420):
    fig.update_layout(template="plotly_white", height=height, margin=dict(l=60, r=30, t=50, b=50),
                      font=dict(size=13))
    return fig



def table(header: list[str] | None, rows, *, escape: bool = True, numeric: bool = False) -> str:
    esc = html.escape if escape else (lambda v: v)
    cls = ' class="num"' if numeric else ""
    out = [f"<table{cls}>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)
