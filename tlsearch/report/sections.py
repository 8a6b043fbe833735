"""The study's sections: history, learning curves, importances, parallel coordinates, backbones,
what stage 2 added, and whether fine-tuning paid for itself against feature extraction."""

from __future__ import annotations

import html
import math
import statistics

from tlsearch.report.parts import PALETTE, Section, better_sign, complete, finished, style, table
from tlsearch.search.artifacts import ARTIFACT_ATTR
from tlsearch.search.attrs import ATTR

__all__ = ["summary_html", "SECTIONS", "stage2_gains", "frozen_vs_finetuned", "verdict_lines"]


def summary_html(study, cfg) -> str:
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
    test = study.user_attrs.get(ATTR["test"])
    if test:
        rows.append(("held-out test", f"trial #{test['trial']}: accuracy {test['accuracy']:.4f}, "
                                      f"loss {test['loss']:.4f} on {test['n']} examples"))
    else:
        rows.append(("held-out test", "none (no `data.test`): every number here is on the "
                                      "validation data that chose the trial, so optimistic"))
    for line in study.user_attrs.get(ATTR["fences"], []):
        rows.append(("fence", line))
    return table(None, rows)


def _history_section(study, cfg) -> Section:
    import optuna

    s = Section("Optimisation history",
                f"The objective ({cfg.objective}) of each complete trial, and the best so far.")
    if not complete(study):
        s.note = "No complete trial yet."
        return s
    s.figure = style(optuna.visualization.plot_optimization_history(study))
    s.figure.update_layout(title=None)
    return s


def _curves_section(study, cfg) -> Section:
    from plotly.subplots import make_subplots

    obj = cfg.objective
    second = "val_accuracy" if obj != "val_accuracy" else "val_loss"
    s = Section("Learning curves",
                f"{obj} and {second} per epoch of every finished trial, across both stages (one "
                f"step count). Stage 2 (top blocks unfrozen, lower learning rate) starts at the "
                f"dashed line; the best trial is drawn thick, pruned trials dotted.")
    trials = [t for t in finished(study) if t.user_attrs.get(ATTR["history"])]
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
        color = "#C44E52" if is_best else PALETTE[i % len(PALETTE)]
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
    s.figure = style(fig, 460)
    return s


def _importance_section(study, cfg) -> Section:
    import optuna

    s = Section("Parameter importances",
                "How much each searched parameter matters: PED-ANOVA, Optuna's default, which "
                "compares where each parameter's values lie in the best 10% of the complete "
                "trials with where they lie in all of them.")
    n = len(complete(study))
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
    s.figure = style(fig, 360)
    s.figure.update_layout(title=None)
    return s


def _parallel_section(study, cfg) -> Section:
    import optuna

    s = Section("Parallel coordinates",
                "Each line is a complete trial, through its parameter values to its objective.")
    if not complete(study):
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
    s.figure = style(fig, 440)
    s.figure.update_layout(title=None, margin=dict(l=80, r=80, t=60, b=40))
    return s


def _backbones_section(study, cfg) -> Section:
    import plotly.graph_objects as go

    s = Section("Backbones compared",
                "The objective of every complete trial, by backbone; the line in each box is the "
                "median, the points are trials.")
    by: dict[str, list] = {}
    for t in complete(study):
        name = t.user_attrs.get(ATTR["params"], {}).get("backbone", t.params.get("backbone", "?"))
        by.setdefault(name, []).append(t)
    if not by:
        s.note = "No complete trial yet."
        return s
    fig = go.Figure()
    for i, (name, ts) in enumerate(sorted(by.items())):
        fig.add_box(y=[t.value for t in ts], name=f"{name} ({len(ts)})", boxpoints="all",
                    jitter=0.4, pointpos=0, marker=dict(color=PALETTE[i % len(PALETTE)], size=7),
                    text=[f"trial {t.number}" for t in ts],
                    hovertemplate="%{text}<br>%{y:.4f}<extra></extra>")
    fig.update_yaxes(title_text=cfg.objective)
    fig.update_layout(showlegend=False)
    if len(by) == 1:
        s.intro += " This study searched one backbone."
    s.figure = style(fig, 380)
    return s


def stage2_gains(study, cfg) -> list[dict]:
    """Per finished trial that reached stage 2: its best objective in each stage and the gain.

    ``gain`` is positive when stage 2 improved on stage 1, whichever the direction.
    """
    sign = better_sign(cfg.direction)
    out = []
    for t in finished(study):
        hist = t.user_attrs.get(ATTR["history"]) or []
        vals: dict[int, list[float]] = {1: [], 2: []}
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
        hovertemplate=("trial %{x} (%{customdata[2]})<br>stage 1 best %{customdata[0]:.4f}"
                       "<br>stage 2 best %{customdata[1]:.4f}<br>gain %{y:.4f}<extra></extra>"),
    ))
    fig.add_hline(y=0, line=dict(color="#333", width=1))
    fig.update_xaxes(title_text="trial", type="category")
    fig.update_yaxes(title_text=f"improvement in {cfg.objective}")
    helped = sum(g["gain"] > 0 for g in gains)
    s.intro += f" Stage 2 helped in {helped} of {len(gains)} trials that reached it."
    s.figure = style(fig, 380)
    return s


def frozen_vs_finetuned(study, cfg) -> dict[str, dict] | None:
    """The best complete frozen-only trial (``unfreeze_blocks`` 0: feature extraction) and the best
    fine-tuned one, each with what it cost: ``{"frozen": {...}, "fine-tuned": {...}}`` with the
    trial, its objective and the standard error of it over the validation examples (None where
    the trial did not store one), its held-out test accuracy (where the study's test evaluation
    is of that trial), its seconds, the median seconds of its kind's complete trials and its stored
    weights' size in bytes; None unless both kinds completed.

    A trial's value is that of its best epoch, so a trial that unfroze blocks but scored best at a
    stage-1 epoch got it from a head on frozen features: it counts as feature extraction (its
    ``unfreeze_blocks`` then says what it went on to unfreeze). What a trial of each kind costs is
    still read from the trials that planned it (``unfreeze_blocks`` 0, or above 0)."""
    groups: dict[str, list] = {"frozen": [], "fine-tuned": []}
    planned: dict[str, list] = {"frozen": [], "fine-tuned": []}
    for t in complete(study):
        unfrozen = t.user_attrs.get(ATTR["params"], {}).get("unfreeze_blocks", 0)
        if t.value is not None and math.isfinite(t.value):
            tuned = bool(unfrozen) and t.user_attrs.get(ATTR["best_stage"]) != 1
            groups["fine-tuned" if tuned else "frozen"].append(t)
            planned["fine-tuned" if unfrozen else "frozen"].append(t)
    if not all(groups.values()):
        return None
    sign = better_sign(cfg.direction)
    test = study.user_attrs.get(ATTR["test"]) or {}
    out = {}
    for kind, trials in groups.items():
        best = max(trials, key=lambda t: sign * t.value)
        seconds = [t.user_attrs[ATTR["seconds"]] for t in planned[kind]
                   if ATTR["seconds"] in t.user_attrs]
        out[kind] = {"trial": best.number, "value": best.value,
                     "test_accuracy": test.get("accuracy") if test.get("trial") == best.number
                     else None,
                     "seconds": best.user_attrs.get(ATTR["seconds"]),
                     "median_seconds": statistics.median(seconds) if seconds else None,
                     "bytes": best.user_attrs.get(ARTIFACT_ATTR, {}).get("size"),
                     "se": best.user_attrs.get(ATTR["value_se"]),
                     "unfreeze_blocks": best.user_attrs.get(ATTR["params"], {}).get(
                         "unfreeze_blocks", 0)}
    # the best trial that unfroze nothing at all, which the frozen side may not be (a stage-1
    # epoch of a fine-tuning trial can beat it): the pure feature-extraction recipe, named too
    zero = max(planned["frozen"], key=lambda t: sign * t.value, default=None)
    out["frozen"]["zero_block"] = None if zero is None else {
        "trial": zero.number, "value": zero.value, "se": zero.user_attrs.get(ATTR["value_se"])}
    return out


def _ratio(a, b) -> str:
    return f"{a / b:.1f}x" if a and b else "?x"


def _with_se(side: dict) -> str:
    """A side's value, with its standard error where it was measured."""
    se = side.get("se")
    return f"{side['value']:.4f}" + (f" ± {se:.4f}" if se is not None else "")


def noise(c: dict[str, dict]) -> float | None:
    """The standard error of the difference between the two sides of :func:`frozen_vs_finetuned`:
    ``sqrt(se_frozen^2 + se_fine-tuned^2)``, None unless both trials stored one. Both are measured
    on the same validation examples, whose errors the two trials partly share, so this is if
    anything larger than the true one: a gap beyond it is no accident of the split."""
    a, b = (c[k].get("se") for k in ("frozen", "fine-tuned"))
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return None
    return math.hypot(float(a), float(b))


def verdict_lines(study, cfg) -> list[str]:
    """One line: does fine-tuning beat feature extraction on this study, and at what cost (the
    run summary prints it; the report's section leads with it). Empty unless both kinds of trial
    completed. A gap smaller than one standard error of the difference (:func:`noise`) is "no
    clear difference": the validation data cannot tell the two apart."""
    c = frozen_vs_finetuned(study, cfg)
    if c is None:
        return []
    fr, ft = c["frozen"], c["fine-tuned"]
    gain = better_sign(cfg.direction) * (ft["value"] - fr["value"])
    cost = (f"{_ratio(ft['median_seconds'], fr['median_seconds'])} the seconds per trial and "
            f"{_ratio(ft['bytes'], fr['bytes'])} the stored weights")
    frozen_kind = "head-only result" if fr["unfreeze_blocks"] else "frozen-only"
    se = noise(c)
    if se is not None and abs(gain) < se:
        return [f"no clear difference: best fine-tuned trial #{ft['trial']} {cfg.objective} "
                f"{_with_se(ft)} vs {_with_se(fr)} for the best {frozen_kind} #{fr['trial']}, "
                f"within one standard error of the difference ({se:.4f}); fine-tuning costs "
                f"{cost}"]
    if gain > 0:
        return [f"fine-tuning pays: best fine-tuned trial #{ft['trial']} {cfg.objective} "
                f"{_with_se(ft)} vs {_with_se(fr)} for the best {frozen_kind} #{fr['trial']}, "
                f"at {cost}"]
    which = (f"the best head-only result ({cfg.objective} {_with_se(fr)}: trial "
             f"#{fr['trial']} at a stage-1 epoch, which then fine-tuned {fr['unfreeze_blocks']} "
             f"blocks without doing better)" if fr["unfreeze_blocks"]
             else f"the best frozen-only trial #{fr['trial']} ({cfg.objective} {_with_se(fr)})")
    return [f"feature extraction is enough: {which} is at least as good as the best fine-tuned "
            f"#{ft['trial']} ({_with_se(ft)}), which costs {cost}"]


def _fmt(v, spec: str, unit: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{unit}"


def _zero_block_row(fr: dict) -> list[tuple[str, str, str]]:
    """Where the frozen side's best is a fine-tuning trial's stage-1 epoch, the best trial that
    unfroze no block (or that none completed), so the table shows the pure recipe too."""
    if not fr["unfreeze_blocks"]:
        return []
    zero = fr.get("zero_block")
    shown = f"#{zero['trial']}: {_with_se(zero)}" if zero else "none complete"
    return [("best trial with 0 blocks unfrozen", shown, "")]


def _extraction_section(study, cfg) -> Section:
    s = Section("Feature extraction or fine-tuning?",
                "The best trial that trained only a head on the frozen backbone (unfreeze_blocks "
                "0) against the best that also fine-tuned blocks: what each reached, what a trial "
                "of its kind cost, and how much must be stored beyond the pretrained backbone. "
                "Test accuracy is shown for the trial the held-out test set evaluated.")
    c = frozen_vs_finetuned(study, cfg)
    if c is None:
        s.note = ("Needs a complete trial of each kind (unfreeze_blocks 0 and above 0); this "
                  "study has not got both.")
        return s
    fr, ft = c["frozen"], c["fine-tuned"]
    first = (f"#{fr['trial']} (its stage 1; it went on to {fr['unfreeze_blocks']} blocks)"
             if fr["unfreeze_blocks"] else f"#{fr['trial']}")
    rows = [("best trial", first, f"#{ft['trial']} ({ft['unfreeze_blocks']} blocks)"),
            (cfg.objective + (" ± standard error" if noise(c) is not None else ""),
             _with_se(fr), _with_se(ft)),
            *_zero_block_row(fr),
            ("held-out test accuracy", _fmt(fr["test_accuracy"], ".4f"),
             _fmt(ft["test_accuracy"], ".4f")),
            ("seconds (best trial)", _fmt(fr["seconds"], ".1f"), _fmt(ft["seconds"], ".1f")),
            ("seconds per trial (median of its kind)", _fmt(fr["median_seconds"], ".1f"),
             _fmt(ft["median_seconds"], ".1f")),
            ("stored weights", _fmt(fr["bytes"] and fr["bytes"] / 1e3, ",.0f", " kB"),
             _fmt(ft["bytes"] and ft["bytes"] / 1e3, ",.0f", " kB"))]
    verdict = "".join(f"<p><b>{html.escape(line)}</b></p>" for line in verdict_lines(study, cfg))
    s.html = verdict + table(["", "frozen only (feature extraction)", "fine-tuned"], rows,
                             numeric=True)
    return s


#: the sections drawn from the stored trials alone, in the report's order
SECTIONS = (_history_section, _curves_section, _importance_section, _parallel_section,
            _backbones_section, _gain_section, _extraction_section)
