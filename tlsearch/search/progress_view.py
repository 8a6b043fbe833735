"""How :class:`~tlsearch.search.progress.Progress` words and draws its events: the plain lines
and the live panel. Nothing here keeps state."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["fmt", "seconds", "epoch_line", "features_line", "trial_line", "render_panel",
           "SHOWN_METRICS"]

#: the metrics an epoch line shows (the objective is added when it is another one)
SHOWN_METRICS = ("loss", "val_loss", "val_accuracy")

_STAGE_NAMES = {1: "head", 2: "fine-tune"}


def fmt(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


def seconds(s: float | None) -> str:
    """``12 s``, ``3 min 05 s``, ``1 h 02 min``; ``?`` when unknown."""
    if s is None or not math.isfinite(s):
        return "?"
    s = max(0.0, s)
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _metrics(p: Any, metrics: dict) -> str:
    keys = list(SHOWN_METRICS) + ([p.objective] if p.objective not in SHOWN_METRICS else [])
    return " ".join(f"{k}={fmt(metrics.get(k))}" for k in keys if k in metrics)


def epoch_line(p: Any, record: Any) -> str:
    """``trial 3 stage 2 (fine-tune) epoch 2/4 step 9 loss=... val_loss=... 1.2 s; trial 14 s,
    ~5.0 s left; study ~3 min 10 s left``"""
    c = p.current
    stage = int(record.stage)
    planned = c["planned"].get(stage) or "?"
    return (f"trial {c['number']} stage {stage} ({_STAGE_NAMES.get(stage, stage)}) "
            f"epoch {c['epoch']}/{planned} step {record.step}  {_metrics(p, record.metrics)}  "
            f"{seconds(record.seconds)}; trial {seconds(_since(c))}, ~{seconds(p.trial_left())} "
            f"left{_study_left(p, '; ')}")


def _study_left(p: Any, sep: str) -> str:
    left, until = p.study_left(), p.timeout_in()
    if left is not None:
        return f"{sep}study ~{seconds(left)} left"
    return "" if until is None else f"{sep}timeout in {seconds(until)}"


def features_line(f: dict) -> str:
    """``computing features: efficientnet_lite0 pooled 3,200 / 4,000 images, 40 s left``"""
    left = "" if f.get("left") is None else f", {seconds(f['left'])} left"
    return (f"computing features: {f['what']} {f['done']:,} / {f['total']:,} {f['unit']}{left}")


def trial_line(p: Any, number: int, state: str, value: float | None, secs: float,
               note: str) -> str:
    params = p.current.get("params", {})
    line = (f"trial {number:>3} {state:<8} {p.value_label}={fmt(value)}  "
            f"{params.get('backbone', '')} unfreeze={params.get('unfreeze_blocks', '-')} "
            f"width={params.get('head_width', '-')} ({secs:.1f}s)" + (f"  {note}" if note else ""))
    if p.best:
        line += f"  best: #{p.best[0]} {fmt(p.best[1])}"
    return line


def _since(c: dict) -> float:
    import time

    return time.perf_counter() - c.get("t", time.perf_counter())


def render_panel(p: Any, elapsed: float):
    """The live panel: the study's line, the running trial's, and a bar while features are
    computed."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    total = f"/{p.total}" if p.total else ""
    best = f"{fmt(p.best[1])} (trial {p.best[0]})" if p.best else "-"
    head = Text(f"tlsearch  trials {p.done}{total} finished  best {p.value_label}: {best}  "
                f"elapsed {seconds(elapsed)}{_study_left(p, ', ')}", style="bold")
    parts: list = [head]
    c = p.current
    if c:
        t = Table(box=None, pad_edge=False, show_header=True, header_style="dim")
        for col in ("trial", "backbone", "unfreeze", "stage", "epoch", "batch", "running",
                    "last epoch", "time"):
            t.add_column(col)
        stage = c["stage"]
        batch = "-" if c["batch"] is None else f"{c['batch']}/{c['steps'] or '?'}"
        running = " ".join(f"{k}={fmt(v)}" for k, v in list(c["running"].items())[:3]) or "-"
        t.add_row(str(c["number"]), str(c["params"].get("backbone", "")),
                  str(c["params"].get("unfreeze_blocks", "-")),
                  f"{stage} ({_STAGE_NAMES.get(stage, stage)})",
                  f"{c['epoch']}/{c['planned'].get(stage) or '?'}", batch, running,
                  _metrics(p, c["metrics"]) or "-",
                  f"{seconds(_since(c))}, ~{seconds(p.trial_left())} left")
        parts.append(t)
    f = p.features
    if f is not None and f.get("total"):
        parts.append(Group(Text(features_line(f)),
                           ProgressBar(total=f["total"], completed=f.get("done", 0), width=40)))
    return Group(*parts)
