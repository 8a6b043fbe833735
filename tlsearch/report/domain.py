"""The report's domain-adaptation section: the adversarial game per epoch, and how each trial's
head sees the two domains (:func:`tlsearch.train.dann_stage.domain_report`)."""

from __future__ import annotations

from tlsearch.params import criterion_statement
from tlsearch.report.parts import PALETTE, Section, finished, style, table
from tlsearch.search.attrs import ATTR

__all__ = ["domain_section"]


def _fmt(v, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def domain_section(study, cfg) -> Section | None:
    """None for a study without ``data.target``."""
    if not study.user_attrs.get(ATTR["target"]):
        return None
    trials = [t for t in finished(study) if t.user_attrs.get(ATTR["history"])]
    labelled = cfg.data.target_validation is not None
    s = Section(
        "Domain adaptation",
        "Left: the domain classifier's accuracy on its training batches, per epoch, for every "
        "adapted trial; the adversarial game should drive it towards 0.5 (chance). The table: "
        "each trial's kept head, on the validation data ("
        + ("the labelled target data" if labelled else "the source: no target labels") +
        "), and a fresh linear classifier's accuracy at telling the head's features of the two "
        "domains apart (source "
        + ("training" if labelled else "validation") + " against held-out target; 0.5: aligned). "
        + ("" if labelled else "Without target labels the trial value is "
           + criterion_statement(cfg.value_name) + ". ")
        + "DEV is shown for comparison and is unreliable when the domains barely overlap.")
    if not trials:
        s.note = "No finished trial yet."
        return s
    adapted = [t for t in trials
               if any(r.get("domain_accuracy") is not None for r in t.user_attrs[ATTR["history"]])]
    if adapted:
        import plotly.graph_objects as go

        fig = go.Figure()
        for i, t in enumerate(adapted):
            hist = [r for r in t.user_attrs[ATTR["history"]] if "domain_accuracy" in r]
            fig.add_scatter(x=[r["step"] for r in hist], y=[r["domain_accuracy"] for r in hist],
                            mode="lines+markers", name=f"trial {t.number}",
                            line=dict(color=PALETTE[i % len(PALETTE)]))
        fig.add_hline(y=0.5, line=dict(dash="dash", color="#555"), annotation_text="chance")
        fig.update_layout(xaxis_title="step (epoch)", yaxis_title="domain classifier accuracy")
        s.figure = style(fig, 400)
    else:
        s.note = "No trial adapted (every sampled lambda_max was off)."
    rows = []
    for t in trials:
        d = t.user_attrs.get(ATTR["domain"]) or {}
        p = t.user_attrs.get(ATTR["params"], {})
        rows.append((t.number, t.state.name.lower(), p.get("domain_lambda_max", "off"),
                     _fmt(t.value), _fmt(d.get("val_accuracy")), _fmt(d.get("domain_accuracy")),
                     _fmt(d.get("dev_risk")), _fmt(d.get("dev_reliable"))))
    acc = "target val accuracy" if labelled else "source val accuracy"
    s.html = table(["trial", "state", "lambda_max", cfg.value_name, acc, "domain accuracy",
                    "DEV risk", "DEV reliable"], rows, numeric=True)
    return s
