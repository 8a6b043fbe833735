"""tlsearch run STUDY: run (or resume) the study until it holds n_trials finished trials."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from tlsearch.config import load_config
from tlsearch._quiet import import_tensorflow_quietly
from tlsearch.progress import Progress


def add_parser(sub):
    p = sub.add_parser("run", help="run or resume a study")
    p.add_argument("study", help="the study file (YAML)")
    p.add_argument("--storage", help="database URL (overrides the study file and $TLSEARCH_STORAGE)")
    p.add_argument("--n-trials", type=int, help="finished trials to reach in total (overrides)")
    return p


def storage_override(args) -> str | None:
    import os

    return getattr(args, "storage", None) or os.environ.get("TLSEARCH_STORAGE") or None


def run(args) -> int:
    from tlsearch import study as st

    cfg = load_config(args.study)
    import_tensorflow_quietly()
    err = Console(stderr=True)
    out = Console()
    err.print(f"[bold]tlsearch[/] study [bold]{cfg.name}[/]: checking the data ...")
    prep = st.prepare(cfg, storage_url=storage_override(args), warn=err.print)
    err.print(f"  {prep.data.summary()}")
    if prep.data.skipped:
        from tlsearch.data import format_file_list

        err.print(f"  skipped {len(prep.data.skipped)} unreadable files (data.skip_bad_files):\n"
                  + format_file_list(prep.data.skipped), highlight=False)
    err.print(f"  storage {st.redact_url(prep.storage_url)}; {prep.finished} trials already finished")
    progress = Progress(err, objective=cfg.objective, maximize=cfg.direction == "maximize")
    summary = st.run(prep, progress, n_trials=args.n_trials)
    _print_summary(out, summary, cfg, prep)
    return 0


def _print_summary(out: Console, summary: dict, cfg, prep) -> None:
    from tlsearch.study import best_accuracy, redact_url

    out.print()
    states = ", ".join(f"{n} {k.lower()}" for k, n in sorted(summary["states"].items()))
    out.print(f"[bold]study {summary['study']}[/]: {summary['trials']} trials ({states})")
    best = summary.get("best")
    if best:
        t = Table(title=f"best trial: #{best['number']}", show_header=False)
        t.add_column("", style="bold")
        t.add_column("")
        t.add_row(cfg.objective, f"{best['value']:.4f}")
        acc = best_accuracy(summary)
        if acc is not None and math.isfinite(acc):
            t.add_row("val_accuracy", f"{acc:.4f}")
        t.add_row("best epoch", f"step {best['best_step']} (stage {best['best_stage']})")
        for k, v in best["params"].items():
            t.add_row(k, f"{v:.3g}" if isinstance(v, float) else str(v))
        out.print(t)
    else:
        out.print("no trial has completed yet")
    url = prep.storage_url
    out.print(f"storage:   {redact_url(url)}")
    out.print(f"artifacts: {cfg.artifact_dir}")
    out.print(f"dashboard: optuna-dashboard '{redact_url(url)}' --artifact-dir '{cfg.artifact_dir}'")
