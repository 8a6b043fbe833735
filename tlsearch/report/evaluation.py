"""The best model rebuilt from its stored weights and evaluated: confusion matrix, per-class table."""

from __future__ import annotations

import html

import numpy as np

from tlsearch.errors import UserError
from tlsearch.evaluation import decide
from tlsearch.export.exporter import rebuild_model, select_trial, trial_record
from tlsearch.metrics import f1_of_labels
from tlsearch.report.parts import Section, style, table
from tlsearch.search.artifacts import AtomicFileSystemArtifactStore
from tlsearch.search.attrs import ATTR
from tlsearch.search.inputs import check_inputs

__all__ = ["evaluation_section"]


def evaluation_section(study, cfg, url) -> Section:
    import plotly.graph_objects as go
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


    s = Section("Best model")
    try:
        bt = select_trial(study)
        model, modality = rebuild_model(cfg, study, bt, AtomicFileSystemArtifactStore(cfg.artifact_dir, create=False))
        _, data = check_inputs(cfg)
    except UserError as e:
        s.note = f"Not available: {e}"
        return s
    classes = list(study.user_attrs.get(ATTR["classes"], data.class_names))
    if classes != data.class_names:
        s.note = (f"Not available: the data's classes {data.class_names} differ from the study's "
                  f"{classes}.")
        return s
    x: np.ndarray
    y: np.ndarray
    if data.x_test is not None and data.y_test is not None:
        s.title = "Best model on the held-out test set"
        x, y, where = data.x_test, data.y_test, "held-out test examples (data.test, never used to choose)"
    else:
        s.title = "Best model on the validation data (optimistic: it chose the trial)"
        x, y, where = data.x_val, data.y_val, (
            "validation examples. Optimistic: the same examples chose this trial among all the "
            "others; give `data.test` for an honest number")
    probs = modality.predict_all(model, x)
    pred = decide(probs, trial_record(cfg, study, bt)["decision"])  # as its export decides
    k = len(classes)
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    p, r, f, n = precision_recall_fscore_support(y, pred, labels=list(range(k)), zero_division=0)
    acc = float((pred == y).mean())
    acc_se = (acc * (1 - acc) / len(y)) ** 0.5 if len(y) > 1 else float("nan")
    s.intro = (f"Trial #{bt.number} at its best epoch (step {bt.user_attrs.get(ATTR['best_step'])}),"
               f" rebuilt from its stored weights, on the {len(y)} {where}: accuracy "
               f"{acc:.3f} ± {acc_se:.3f} (standard error). Rows are the true class, columns the predicted one.")
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
    s.figure = style(fig, size)
    s.figure.update_layout(width=size + 90)
    rows = [(html.escape(c), f"{p[i]:.3f}", f"{r[i]:.3f}", f"{f[i]:.3f}", str(int(n[i])))
            for i, c in enumerate(classes)]
    rows.append(macro_row(y, pred))
    s.html = table(["class", "precision", "recall", "F1", "support"], rows, escape=False,
                    numeric=True)
    return s


def macro_row(y: np.ndarray, pred: np.ndarray) -> tuple[str, str, str, str, str]:
    """The table's macro average over the classes present or predicted, F1 by the one definition
    every macro F1 uses (:func:`tlsearch.metrics.f1_of_labels`)."""
    from sklearn.metrics import precision_recall_fscore_support

    mp, mr, _, _ = precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    return ("<b>macro average</b>", f"{mp:.3f}", f"{mr:.3f}", f"{f1_of_labels(pred, y):.3f}",
            str(len(y)))
