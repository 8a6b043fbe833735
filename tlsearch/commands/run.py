"""tlsearch run STUDY: run (or resume) the study until it holds n_trials finished trials.

The command parses its arguments and prints; running the study, with or without worker processes,
is :mod:`tlsearch.runner`'s."""

from __future__ import annotations

import argparse
import json
import math
import os

from rich.console import Console
from rich.table import Table

from tlsearch._quiet import import_tensorflow_quietly
from tlsearch.config import load_config
from tlsearch.errors import TooManyFailures, UserError
from tlsearch.runner.stop import stop_lines, with_stop_reason
from tlsearch.search.progress import Progress, json_safe


def add_parser(sub):
    p = sub.add_parser("run", help="run or resume a study")
    p.add_argument("study", help="the study file (YAML)")
    p.add_argument("--storage", help="database URL (overrides the study file and $TLSEARCH_STORAGE)")
    p.add_argument("--n-trials", type=int, help="finished trials to reach in total (overrides)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes on this machine, all on the one study (default 1)")
    p.add_argument("--allow-oversubscribe", action="store_true",
                   help="start --workers N even where the available memory cannot hold N "
                        "workers (refused otherwise)")
    p.add_argument("--recycle-after", type=int, default=0, metavar="K",
                   help="run trials in worker processes that are replaced by fresh ones after K "
                        "trials each, returning what TensorFlow keeps per trial (default 0: never)")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--quiet", action="store_true",
                       help="print only the final summary (warnings still go to stderr)")
    shown.add_argument("--json", action="store_true",
                       help="JSON lines on stdout: an event per trial start, stage, epoch, "
                            "feature progress and trial end, then the summary; messages on stderr")
    p.add_argument("--no-estimate", action="store_true",
                   help="skip the cost estimate printed before a new study's first trial")
    # set on the processes that --workers starts: run trials, leave the summary to the parent
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    return p


def storage_override(args) -> str | None:
    return getattr(args, "storage", None) or os.environ.get("TLSEARCH_STORAGE") or None


def run(args) -> int:
    from tlsearch.runner.fleet import interrupt_on_sigterm
    from tlsearch.runner.journal_grpc import lost_proxy_as_error

    with interrupt_on_sigterm(), lost_proxy_as_error():  # grpc: a proxy gone is one line
        return _run(args)


def _run(args) -> int:
    from tlsearch._urls import redact_url
    from tlsearch.runner.loop import run_trials
    from tlsearch.runner.prepare import prepare
    from tlsearch.search.study import summarize
    from tlsearch.search.tracking import check_tracking

    if args.workers < 1:
        raise UserError(f"`--workers`: expected at least 1, got {args.workers}")
    if args.recycle_after < 0:
        raise UserError(f"`--recycle-after`: expected 0 (never) or more, got {args.recycle_after}")
    if args.n_trials is not None and args.n_trials < 1:
        raise UserError(f"`--n-trials`: expected at least 1, got {args.n_trials}")
    cfg = load_config(args.study)
    if args.worker_index is not None:
        from tlsearch.runner.workers import die_with_parent

        die_with_parent()
    import_tensorflow_quietly()
    out = Console(soft_wrap=True)  # progress and summary: one stream, lines never cut
    # what is said before the trials: with the rest, or on stderr when stdout is for JSON
    err = Console(stderr=True, quiet=args.quiet, soft_wrap=True) if args.json or args.quiet \
        else out
    warn_to = Console(stderr=True, soft_wrap=True) if args.json or args.quiet else out
    mode = "json" if args.json else "quiet" if args.quiet else "auto"
    worker = args.worker_index
    if worker is not None and mode == "auto":
        mode = "plain"
    progress = Progress(out, objective=cfg.objective, maximize=cfg.direction == "maximize",
                        mode=mode, label="" if worker is None else f"worker {worker}",
                        epochs=(cfg.training.stage1_epochs, cfg.training.stage2_epochs),
                        timeout=cfg.hard_timeout or cfg.timeout)
    if worker is None and args.workers > 1:
        from tlsearch.runner.workers import worker_memory_plan

        said = worker_memory_plan(args.workers, allow=args.allow_oversubscribe)
        if said:
            warn_to.print(said, highlight=False)
    if worker is None:
        err.print(f"[bold]tlsearch[/] study [bold]{cfg.name}[/]: checking the data ...")
    check_tracking(cfg)  # a tracker that cannot work is refused before the study is created
    prep = prepare(cfg, storage_url=storage_override(args),
                   warn=warn_to.print if worker is None else (lambda *a, **k: None),
                   on_features=progress.on_features)
    if worker is not None:
        from tlsearch.runner.fleet import run_worker

        return run_worker(prep, progress, index=worker, n_trials=args.n_trials,
                          recycle_after=args.recycle_after)
    err.print(f"  {prep.data.summary()}")
    if prep.data.skipped:
        from tlsearch.data import format_file_list

        err.print(f"  skipped {len(prep.data.skipped)} unreadable files (data.skip_bad_files):\n"
                  + format_file_list(prep.data.skipped), highlight=False)
    err.print(f"  storage {redact_url(prep.storage_url)}; {prep.finished} trials already finished")
    from tlsearch.runner.journal_grpc import start_note

    if note := start_note(prep.storage_url):  # journal, gRPC: what does not hold there
        warn_to.print(note, highlight=False, soft_wrap=True)
    if not (args.no_estimate or args.quiet) and prep.finished == 0:
        from tlsearch.search.estimate_text import startup_line

        err.print(f"  {startup_line(prep.cfg, prep)}", highlight=False, soft_wrap=True)
    if args.workers > 1 or args.recycle_after:
        return _run_workers(args, cfg, prep, err, out)
    target = args.n_trials or cfg.n_trials
    try:
        summary = run_trials(prep, progress, n_trials=args.n_trials)
    except KeyboardInterrupt:
        _finish(args, out, with_stop_reason(summarize(prep.study), "interrupted", target), cfg,
                prep)
        raise
    except TooManyFailures:
        _finish(args, out, with_stop_reason(summarize(prep.study), "failures", target), cfg,
                prep)
        raise
    _finish(args, out, summary, cfg, prep)
    return 0


def _finish(args, out: Console, summary: dict, cfg, prep) -> None:
    """The summary: a JSON line with ``--json``, else the table and what comes next."""
    command = _command(args)
    if args.json:
        extra = _after_study(None, cfg, prep)
        if cfg.final.refit and summary.get("stopped") not in ("interrupted", "failures"):
            from tlsearch.export.refit import refit_after_run

            extra["refit"] = refit_after_run(prep, None)
        from tlsearch.report.sections import verdict_lines

        summary = {**summary, **extra, "verdict": verdict_lines(prep.study, cfg)
                   if summary.get("best") else [], "resume": command,
                   **({"chosen_by": chosen_by(cfg)} if chosen_by(cfg) else {})}
        out.file.write(json.dumps(json_safe({"event": "summary", **summary})) + "\n")
        out.file.flush()
        return
    _print_summary(out, summary, cfg, prep, args.study)
    _after_study(out, cfg, prep)
    if cfg.final.refit and summary.get("stopped") not in ("interrupted", "failures"):
        from tlsearch.export.refit import refit_after_run

        refit_after_run(prep, lambda line: out.print(line, highlight=False, soft_wrap=True))
    for line in stop_lines(summary, command):  # last: what the user reads first
        out.print(line, highlight=False, soft_wrap=True)


def _command(args) -> str:
    return " ".join(["tlsearch run", args.study]
                    + ([f"--n-trials {args.n_trials}"] if args.n_trials else [])
                    + ([f"--workers {args.workers}"] if args.workers > 1 else []))


def _run_workers(args, cfg, prep, err: Console, out: Console) -> int:
    """The study exists now (created once, here); the workers only load it."""
    from tlsearch.runner.fleet import run_workers

    outcome = run_workers(prep, args.study, args.workers, n_trials=args.n_trials,
                          recycle_after=args.recycle_after,
                          show=("--json",) if args.json else ("--quiet",) if args.quiet else (),
                          say=lambda line: err.print(line, highlight=False))
    _finish(args, out, outcome.summary, cfg, prep)
    note = outcome.check()  # raises what the command exits with when the study is not complete
    if note:
        Console(stderr=True).print(f"note: {note}")
    return 0


def _after_study(out: Console | None, cfg, prep) -> dict:
    """What the best trial says beyond its validation score: where it sits against the fences of
    the search space, and its accuracy on the held-out test set (``data.test``). Printed on
    ``out``, and returned (``fences``, ``test``)."""
    from tlsearch import space
    from tlsearch.search.attrs import ATTR

    try:
        best = prep.study.best_trial
    except ValueError:
        return {}
    lines = space.fences(best.user_attrs.get(ATTR["params"], {}), cfg, prep.modality, prep.caps)
    prep.study.set_user_attr(ATTR["fences"], lines)
    found: dict = {"fences": lines}
    for line in lines:
        if out is not None:
            out.print(f"[yellow]fence:[/] {line}", highlight=False)
    if prep.data.x_test is not None:
        from tlsearch.export.evaluate import evaluate_best_on_test, format_evaluation, judged_note

        result = evaluate_best_on_test(cfg, prep.study, prep.data)
        if result is not None:
            found["test"] = result
            if out is not None:
                out.print(format_evaluation(result, f"held-out test set (data.test), trial "
                                                    f"#{result['trial']}"), highlight=False)
                if note := judged_note(prep.study):
                    out.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    return found


def chosen_by(cfg) -> str | None:
    """With ``data.target``: which criterion judged the trials, and how far to trust it."""
    from tlsearch.params import criterion_statement

    if cfg.data.target is None:
        return None
    return criterion_statement("target_validation" if cfg.data.target_validation is not None
                               else cfg.domain_selection)


def _print_summary(out: Console, summary: dict, cfg, prep, args_study: str) -> None:
    from tlsearch._urls import redact_url
    from tlsearch.report.sections import verdict_lines
    from tlsearch.search.study import best_accuracy

    out.print()
    states = ", ".join(f"{n} {k.lower()}" for k, n in sorted(summary["states"].items()))
    out.print(f"[bold]study {summary['study']}[/]: {summary['trials']} trials ({states})")
    best = summary.get("best")
    if best:
        t = Table(title=f"best trial: #{best['number']}", show_header=False)
        t.add_column("", style="bold")
        t.add_column("")
        t.add_row(cfg.value_name, f"{best['value']:.4f}")
        acc = best_accuracy(summary)
        if cfg.objective != "val_accuracy" and acc is not None and math.isfinite(acc):
            t.add_row("val_accuracy", f"{acc:.4f}")
        t.add_row("best epoch", f"step {best['best_step']} (stage {best['best_stage']})")
        for k, v in best["params"].items():
            t.add_row(k, f"{v:.3g}" if isinstance(v, float) else str(v))
        out.print(t)
        if chosen_by(cfg):
            out.print(f"chosen by: {chosen_by(cfg)}", highlight=False, soft_wrap=True)
        for line in verdict_lines(prep.study, cfg):  # feature extraction or fine-tuning?
            out.print(f"verdict:   {line}", highlight=False, soft_wrap=True)
    else:
        out.print("no trial has completed yet")
    url = prep.storage_url
    out.print(f"storage:   {redact_url(url)}")
    out.print(f"artifacts: {cfg.artifact_dir}")
    out.print(f"dashboard: tlsearch dashboard {args_study}", soft_wrap=True)
    from tlsearch.runner.journal_grpc import dashboard_line

    out.print(dashboard_line(url, cfg.artifact_dir) or
              f"       or: optuna-dashboard '{redact_url(url)}' --artifact-dir '{cfg.artifact_dir}'",
              soft_wrap=True)
    out.print(f"next:      tlsearch export {args_study} --out best-model   |   "
              f"tlsearch report {args_study} --out report.html", soft_wrap=True)
