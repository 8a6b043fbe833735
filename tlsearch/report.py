"""One self-contained HTML report of a study: plots that open offline, plotly.js embedded once.

Each section degrades on its own: with one complete trial there are no parameter importances, with
the data moved away there is no confusion matrix; the section then says why, and the rest of the
report is still written.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tlsearch.errors import UserError

__all__ = ["build_report", "write_report", "Section", "stage2_gains"]

_PLOT_CONFIG = {"displaylogo": False, "responsive": True}
_PALETTE = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3",
            "#8C8C8C", "#CCB974", "#64B5CD"]


@dataclass
class Section:
    title: str
    intro: str = ""
    figure: object | None = None  # a plotly Figure
    html: str = ""  # extra HTML (tables)
    note: str = ""  # why the section has no plot


def _finished(study):
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def _complete(study):
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _better_sign(direction: str) -> float:
    return 1.0 if direction == "maximize" else -1.0


def _style(fig, height: int = 420):
    fig.update_layout(template="plotly_white", height=height, margin=dict(l=60, r=30, t=50, b=50),
                      font=dict(size=13))
    return fig


# ---- sections


def _summary_html(study, cfg) -> str:
    from tlsearch.search.attrs import ATTR

    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none"
    rows = [("study", study.study_name), ("trials", f"{len(trials)} ({counts})"),
            ("objective", f"{cfg.objective} ({cfg.direction})"),
            ("classes", ", ".join(study.user_attrs.get(ATTR["classes"], [])))]
    try:
        bt = study.best_trial
    except ValueError:
        bt = None
    if bt is not None:
        rows.append(("best trial", f"#{bt.number}: {cfg.objective} = {bt.value:.4f} at step "
                                   f"{bt.user_attrs.get(ATTR['best_step'])} (stage "
                                   f"{bt.user_attrs.get(ATTR['best_stage'])})"))
        params = bt.user_attrs.get(ATTR["params"], bt.params)
        rows.append(("best parameters", ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())))
    return _table(None, rows)


def _history_section(study, cfg) -> Section:
    import optuna

    s = Section("Optimisation history",
                f"The objective ({cfg.objective}) of each complete trial, and the best so far.")
    if not _complete(study):
        s.note = "No complete trial yet."
        return s
    s.figure = _style(optuna.visualization.plot_optimization_history(study))
    s.figure.update_layout(title=None)
    return s


def _curves_section(study, cfg) -> Section:
    from plotly.subplots import make_subplots

    from tlsearch.search.attrs import ATTR

    obj = cfg.objective
    second = "val_accuracy" if obj != "val_accuracy" else "val_loss"
    s = Section("Learning curves",
                f"{obj} and {second} per epoch of every finished trial, across both stages (one "
                f"step count). Stage 2 (top blocks unfrozen, lower learning rate) starts at the "
                f"dashed line; the best trial is drawn thick, pruned trials dotted.")
    trials = [t for t in _finished(study) if t.user_attrs.get(ATTR["history"])]
    if not trials:
        s.note = "No trial has recorded a learning curve yet."
        return s
    try:
        best = study.best_trial.number
    except ValueError:
        best = None
    fig = make_subplots(rows=1, cols=2, subplot_titles=(obj, second), horizontal_spacing=0.08)
    for i, t in enumerate(trials):
        hist = t.user_attrs[ATTR["history"]]
        steps = [r["step"] for r in hist]
        is_best = t.number == best
        color = "#C44E52" if is_best else _PALETTE[i % len(_PALETTE)]
        line = dict(width=3.5 if is_best else 1.3, color=color,
                    dash="dot" if t.state.name == "PRUNED" else "solid")
        for col, metric in ((1, obj), (2, second)):
            fig.add_scatter(x=steps, y=[r.get(metric) for r in hist], mode="lines+markers",
                            line=line, marker=dict(size=5 if is_best else 3), opacity=1 if is_best
                            else 0.55, name=f"trial {t.number}" + (" (best)" if is_best else ""),
                            legendgroup=str(t.number), showlegend=col == 1, row=1, col=col,
                            hovertemplate=f"trial {t.number}<br>step %{{x}}<br>{metric} %{{y:.4f}}"
                                          f"<extra></extra>")
    boundary = cfg.training.stage1_epochs - 0.5
    for col in (1, 2):
        fig.add_vline(x=boundary, line=dict(dash="dash", color="#555", width=1.5), row=1, col=col)
        fig.add_annotation(x=boundary, y=1.0, yref="y domain" if col == 1 else "y2 domain",
                           xref="x" if col == 1 else "x2", text=" stage 2 →", showarrow=False,
                           xanchor="left", yanchor="top", font=dict(color="#555", size=12))
    fig.update_xaxes(title_text="step (epoch)", dtick=1)
    s.figure = _style(fig, 460)
    return s


def _importance_section(study, cfg) -> Section:
    import optuna

    s = Section("Parameter importances",
                "How much of the objective's variation each searched parameter explains "
                "(fANOVA over the complete trials).")
    n = len(_complete(study))
    if n < 2:
        s.note = f"Needs at least 2 complete trials; the study has {n}."
        return s
    try:
        fig = optuna.visualization.plot_param_importances(study)
    except (RuntimeError, ValueError, ZeroDivisionError) as e:
        s.note = f"Cannot be computed for this study: {e}"
        return s
    if not fig.data:
        s.note = "No searched parameter varied across the complete trials."
        return s
    s.figure = _style(fig, 360)
    s.figure.update_layout(title=None)
    return s


def _parallel_section(study, cfg) -> Section:
    import optuna

    s = Section("Parallel coordinates",
                "Each line is a complete trial, through its parameter values to its objective.")
    if not _complete(study):
        s.note = "No complete trial yet."
        return s
    try:
        fig = optuna.visualization.plot_parallel_coordinate(study)
    except (RuntimeError, ValueError) as e:
        s.note = f"Cannot be drawn for this study: {e}"
        return s
    if not fig.data:
        s.note = "No searched parameter to draw."
        return s
    s.figure = _style(fig, 440)
    s.figure.update_layout(title=None, margin=dict(l=80, r=80, t=60, b=40))
    return s


def _backbones_section(study, cfg) -> Section:
    import plotly.graph_objects as go

    from tlsearch.search.attrs import ATTR

    s = Section("Backbones compared",
                f"The objective of every complete trial, by backbone; the line in each box is the "
                f"median, the points are trials.")
    by: dict[str, list] = {}
    for t in _complete(study):
        name = t.user_attrs.get(ATTR["params"], {}).get("backbone", t.params.get("backbone", "?"))
        by.setdefault(name, []).append(t)
    if not by:
        s.note = "No complete trial yet."
        return s
    fig = go.Figure()
    for i, (name, ts) in enumerate(sorted(by.items())):
        fig.add_box(y=[t.value for t in ts], name=f"{name} ({len(ts)})", boxpoints="all",
                    jitter=0.4, pointpos=0, marker=dict(color=_PALETTE[i % len(_PALETTE)], size=7),
                    text=[f"trial {t.number}" for t in ts],
                    hovertemplate="%{text}<br>%{y:.4f}<extra></extra>")
    fig.update_yaxes(title_text=cfg.objective)
    fig.update_layout(showlegend=False)
    if len(by) == 1:
        s.intro += " This study searched one backbone."
    s.figure = _style(fig, 380)
    return s


def stage2_gains(study, cfg) -> list[dict]:
    """Per finished trial that reached stage 2: its best objective in each stage and the gain.

    ``gain`` is positive when stage 2 improved on stage 1, whichever the direction.
    """
    from tlsearch.search.attrs import ATTR

    sign = _better_sign(cfg.direction)
    out = []
    for t in _finished(study):
        hist = t.user_attrs.get(ATTR["history"]) or []
        vals = {1: [], 2: []}
        for r in hist:
            v = r.get(cfg.objective)
            if v is not None and math.isfinite(v) and r.get("stage") in vals:
                vals[r["stage"]].append(v)
        if not vals[1] or not vals[2]:
            continue
        pick = max if sign > 0 else min
        b1, b2 = pick(vals[1]), pick(vals[2])
        params = t.user_attrs.get(ATTR["params"], {})
        out.append({"trial": t.number, "stage1": b1, "stage2": b2, "gain": sign * (b2 - b1),
                    "unfreeze_blocks": params.get("unfreeze_blocks"), "state": t.state.name})
    return out


def _gain_section(study, cfg) -> Section:
    import plotly.graph_objects as go

    s = Section("Gain of stage 2 over stage 1",
                f"Per trial, the best {cfg.objective} in stage 2 against the best in stage 1, "
                f"signed so that a bar above zero means unfreezing helped. Bars are labelled with "
                f"the number of unfrozen blocks.")
    gains = stage2_gains(study, cfg)
    if not gains:
        s.note = "No trial reached stage 2 (all chose unfreeze_blocks = 0, or were pruned before)."
        return s
    colors = ["#55A868" if g["gain"] > 0 else "#C44E52" for g in gains]
    fig = go.Figure(go.Bar(
        x=[f"#{g['trial']}" for g in gains], y=[g["gain"] for g in gains], marker_color=colors,
        text=[f"{g['unfreeze_blocks']} blk" for g in gains], textposition="outside",
        customdata=[[g["stage1"], g["stage2"], g["state"].lower()] for g in gains],
        hovertemplate=(f"trial %{{x}} (%{{customdata[2]}})<br>stage 1 best %{{customdata[0]:.4f}}"
                       f"<br>stage 2 best %{{customdata[1]:.4f}}<br>gain %{{y:.4f}}<extra></extra>"),
    ))
    fig.add_hline(y=0, line=dict(color="#333", width=1))
    fig.update_xaxes(title_text="trial", type="category")
    fig.update_yaxes(title_text=f"improvement in {cfg.objective}")
    helped = sum(g["gain"] > 0 for g in gains)
    s.intro += f" Stage 2 helped in {helped} of {len(gains)} trials that reached it."
    s.figure = _style(fig, 380)
    return s


def _evaluation_section(study, cfg, url) -> Section:
    import plotly.graph_objects as go
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from tlsearch.search.artifacts import AtomicFileSystemArtifactStore
    from tlsearch.export.exporter import rebuild_model, select_trial
    from tlsearch.search.attrs import ATTR
    from tlsearch.search.study import check_inputs

    s = Section("Best model on the validation data")
    try:
        bt = select_trial(study)
        model, modality = rebuild_model(cfg, study, bt, AtomicFileSystemArtifactStore(cfg.artifact_dir))
        _, data = check_inputs(cfg)
    except UserError as e:
        s.note = f"Not available: {e}"
        return s
    classes = list(study.user_attrs.get(ATTR["classes"], data.class_names))
    if classes != data.class_names:
        s.note = (f"Not available: the data's classes {data.class_names} differ from the study's "
                  f"{classes}.")
        return s
    probs = _predict(model, data.x_val, modality.name)
    pred = probs.argmax(axis=1)
    y = data.y_val
    k = len(classes)
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    p, r, f, n = precision_recall_fscore_support(y, pred, labels=list(range(k)), zero_division=0)
    acc = float((pred == y).mean())
    s.intro = (f"Trial #{bt.number} at its best epoch (step {bt.user_attrs.get(ATTR['best_step'])}),"
               f" rebuilt from its stored weights, on the {len(y)} validation examples: accuracy "
               f"{acc:.3f}. Rows are the true class, columns the predicted one.")
    row_sum = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, row_sum, out=np.zeros_like(cm, dtype=float), where=row_sum > 0)
    fig = go.Figure(go.Heatmap(
        z=share, x=classes, y=classes, colorscale="Blues", zmin=0, zmax=1,
        text=cm, texttemplate="%{text}", customdata=share,
        hovertemplate="true %{y}<br>predicted %{x}<br>%{text} (%{customdata:.0%} of row)"
                      "<extra></extra>",
        colorbar=dict(title="share of row"),
    ))
    fig.update_yaxes(autorange="reversed", title_text="true class")
    fig.update_xaxes(title_text="predicted class", side="bottom")
    size = min(760, 260 + 38 * k)
    s.figure = _style(fig, size)
    s.figure.update_layout(width=size + 90)
    rows = [(html.escape(c), f"{p[i]:.3f}", f"{r[i]:.3f}", f"{f[i]:.3f}", str(int(n[i])))
            for i, c in enumerate(classes)]
    mp, mr, mf, _ = precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    rows.append(("<b>macro average</b>", f"{mp:.3f}", f"{mr:.3f}", f"{mf:.3f}", str(len(y))))
    s.html = _table(["class", "precision", "recall", "F1", "support"], rows, escape=False,
                    numeric=True)
    return s


def _predict(model, x, modality: str) -> np.ndarray:
    if modality == "text":
        import tensorflow as tf

        return np.concatenate([np.asarray(model(tf.constant(list(x[i:i + 64])), training=False))
                               for i in range(0, len(x), 64)])
    return np.asarray(model.predict(x, batch_size=64, verbose=0))


# ---- assembly


def _table(header: list[str] | None, rows, *, escape: bool = True, numeric: bool = False) -> str:
    esc = html.escape if escape else (lambda v: v)
    cls = ' class="num"' if numeric else ""
    out = [f"<table{cls}>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


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
    from tlsearch.search.study import load_study

    study = load_study(cfg, url)
    sections = []
    for make in (_history_section, _curves_section, _importance_section, _parallel_section,
                 _backbones_section, _gain_section):
        sections.append(make(study, cfg))
    log("evaluating the best model on the validation data ...")
    sections.append(_evaluation_section(study, cfg, url))

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
        _summary_html(study, cfg).replace("<table>", '<table class="summary">', 1), "</section>",
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
