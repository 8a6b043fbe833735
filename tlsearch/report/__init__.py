"""One self-contained HTML report of a study: plots that open offline, plotly.js embedded once.

Each section degrades on its own: with one complete trial there are no parameter importances, with
the data moved away there is no confusion matrix; the section then says why, and the rest of the
report is still written.
"""

from __future__ import annotations

import datetime as _dt
import html
from pathlib import Path
from typing import Callable

from tlsearch.errors import UserError
from tlsearch.report.parts import Section
from tlsearch.report.sections import SECTIONS, stage2_gains, summary_html

__all__ = ["build_report", "write_report", "Section", "stage2_gains"]

_PLOT_CONFIG = {"displaylogo": False, "responsive": True}


_CSS = """
body { font-family: -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; margin: 0;
       color: #222; background: #f6f7f9; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 19px; margin: 0 0 6px; }
.sub { color: #666; margin: 0 0 18px; font-size: 14px; }
section { background: #fff; border: 1px solid #e2e4e8; border-radius: 8px; padding: 18px 22px;
          margin: 0 0 20px; }
section p { color: #444; font-size: 14px; margin: 0 0 8px; max-width: 980px; }
.note { color: #8a6d3b; background: #fcf8e3; border: 1px solid #f1e3b5; border-radius: 6px;
        padding: 10px 14px; font-size: 14px; }
table { border-collapse: collapse; font-size: 14px; margin-top: 8px; }
td, th { padding: 5px 12px; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
th { background: #f3f4f6; }
table.num td:not(:first-child), table.num th:not(:first-child) { text-align: right;
          font-variant-numeric: tabular-nums; }
.summary td:first-child { font-weight: 600; white-space: nowrap; color: #444; }
.eval { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
"""


def build_report(cfg, *, url: str | None = None, log: Callable[[str], None] = print) -> str:
    """The report's HTML, for the study described by ``cfg``."""
    from plotly.offline import get_plotlyjs

    import tlsearch
    from tlsearch.report.evaluation import evaluation_section
    from tlsearch.runner.prepare import load_study

    study = load_study(cfg, url)
    sections = []
    for make in SECTIONS:
        sections.append(make(study, cfg))
    from tlsearch.report.domain import domain_section
    from tlsearch.report.domain_pca import domain_pca_section

    from tlsearch.report.ensemble import beyond_section

    for extra in (domain_section(study, cfg), domain_pca_section(study, cfg),
                  beyond_section(study, cfg)):
        if extra is not None:
            sections.append(extra)
    log("evaluating the best model on the validation data ...")
    sections.append(evaluation_section(study, cfg, url))

    created = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>tlsearch report: {html.escape(study.study_name)}</title>",
        f"<style>{_CSS}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body><main>",
        f"<h1>Study {html.escape(study.study_name)}</h1>",
        f'<p class="sub">tlsearch {tlsearch.__version__} report, {created}</p>',
        '<section class="summary"><h2>Summary</h2>',
        summary_html(study, cfg).replace("<table>", '<table class="summary">', 1), "</section>",
    ]
    for i, s in enumerate(sections):
        parts.append(f'<section id="s{i}"><h2>{html.escape(s.title)}</h2>')
        if s.intro:
            parts.append(f"<p>{html.escape(s.intro)}</p>")
        if s.note:
            parts.append(f'<p class="note">{html.escape(s.note)}</p>')
        body = []
        if s.figure is not None:
            body.append(s.figure.to_html(full_html=False, include_plotlyjs=False,
                                         config=_PLOT_CONFIG, div_id=f"plot{i}"))
        if s.html:
            body.append(f"<div>{s.html}</div>")
        if body:
            parts.append('<div class="eval">' + "".join(body) + "</div>" if len(body) > 1
                         else body[0])
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts)


def write_report(cfg, out: str | Path, *, url: str | None = None,
                 log: Callable[[str], None] = print) -> Path:
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {str(out)!r} is a folder; give a file name such as report.html")
    text = build_report(cfg, url=url, log=log)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return out
