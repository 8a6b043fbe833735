"""One study, N worker processes on this machine: what ``tlsearch run --workers N`` and
``tlsearch.run(..., workers=N)`` both do once the study exists.

The parent creates or resumes the study (once, under the storage's lock), sweeps what dead
workers left RUNNING, then starts the workers (:func:`~tlsearch.runner.workers.spawn_workers`),
each a ``tlsearch run`` process on the same study file that only loads the study and runs the
trial loop (:func:`run_worker`). A worker that ends early has its running trial failed and queued
again at once (:func:`worker_died`). The outcome says why the run stopped, and which workers did
not finish (:class:`WorkersOutcome`).

Workers read the study from its file: a :class:`~tlsearch.config.StudyConfig` made in Python has
none, and is refused for ``workers > 1`` by :func:`tlsearch.run`.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

from tlsearch.errors import TooManyFailures, UserError, WorkersFailed
from tlsearch.optuna_adapter import storage_engine
from tlsearch.runner.locks import retrying
from tlsearch.runner.loop import run_trials
from tlsearch.runner.prepare import PreparedStudy
from tlsearch.runner.quota import TrialQuota
from tlsearch.runner.stale import Retry, fail_trials_of
from tlsearch.runner.stop import with_stop_reason
from tlsearch.runner.workers import RECYCLE, parent_gone, spawn_workers
from tlsearch.search.deadlines import STOP
from tlsearch.search.progress import Progress
from tlsearch.search.study import summarize

__all__ = ["WorkersOutcome", "run_workers", "run_worker", "worker_died", "describe_exit",
           "interrupt_on_sigterm"]

#: exit codes of a worker stopped by Ctrl-C (130, or killed by SIGINT)
_INTERRUPTED = (130, -int(signal.SIGINT))


@dataclass
class WorkersOutcome:
    """How a run with workers ended: the study's summary (with why it stopped) and the workers
    that exited otherwise than by finishing (their index, from 1, and exit code)."""

    summary: dict
    bad: dict[int, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        left = self.summary.get("left")
        return self.summary.get("target") is not None and left == 0

    def check(self) -> str | None:
        """None when every worker finished; a note when some did not but the others finished the
        study; else raises what the command exits with: KeyboardInterrupt for Ctrl-C,
        :class:`TooManyFailures` when trials kept failing, else :class:`WorkersFailed`."""
        if not self.bad:
            return None
        shown = ", ".join(f"worker {i} exited with {describe_exit(c)}"
                          for i, c in self.bad.items())
        if self.complete:
            return f"{shown}; the others finished the study"
        if set(_INTERRUPTED) & set(self.bad.values()):
            raise KeyboardInterrupt
        if all(c == TooManyFailures.exit_code for c in self.bad.values()):
            raise TooManyFailures(f"{shown}: trials kept failing (see each worker's reasons "
                                  f"above). Fix the cause and run the same command again: the "
                                  f"study resumes.")
        raise WorkersFailed(f"{shown}. Run the same command again: the study resumes.")


def run_workers(prep: PreparedStudy, study_file: str, n: int, *, n_trials: int | None = None,
                recycle_after: int = 0, show: tuple[str, ...] = (),
                say: Callable[[str], object] = print) -> WorkersOutcome:
    """Run the prepared study in ``n`` worker processes (each replaced by a fresh one after
    ``recycle_after`` trials when given) until it holds its ``n_trials`` finished trials; return
    the outcome. ``study_file`` is what the workers load (the study ``prep`` was prepared from);
    ``show`` is passed on to them (``--quiet`` or ``--json``); ``say`` hears what the parent
    does."""
    cfg, url = prep.cfg, prep.storage_url
    if url.startswith("sqlite") and ":memory:" in url:
        raise UserError("`storage`: an in-memory database cannot be shared by --workers; "
                        "give a file (sqlite:///study.db) or a PostgreSQL URL")
    quota = TrialQuota(prep.study, url, cfg.heartbeat.max_retry)
    try:
        swept = quota.sweep()
    finally:
        quota.close()
    if swept:
        say(f"  trials {swept} were left running by a worker that died: failed (swept at "
            f"start by this run) and queued again")
    _release_connections(prep)  # no idle connections held while the workers run
    say(f"  starting {n} worker{'s' if n > 1 else ''}"
        + (f", each replaced by a fresh process after {recycle_after} trials"
           if recycle_after else ""))
    argv = ["run", study_file, *show]
    if n_trials is not None:
        argv += ["--n-trials", str(n_trials)]
    if recycle_after:
        argv += ["--recycle-after", str(recycle_after)]
    codes = spawn_workers(argv, n, storage_url=url,
                          on_exit=lambda pid, code: worker_died(prep, pid, code, say))
    summary = retrying(lambda: summarize(prep.study), url=url)
    target = n_trials or cfg.n_trials
    finished = summary["states"].get("COMPLETE", 0) + summary["states"].get("PRUNED", 0)
    bad = {i + 1: c for i, c in enumerate(codes) if c != 0}
    reason = "n_trials" if target is not None and finished >= target else \
        "interrupted" if set(_INTERRUPTED) & set(bad.values()) else \
        "failures" if bad else "timeout"
    return WorkersOutcome(with_stop_reason(summary, reason, target), bad)


def run_worker(prep: PreparedStudy, progress: Progress, *, index: int,
               n_trials: int | None = None, recycle_after: int = 0) -> int:
    """The trial loop of worker ``index`` (a process :func:`run_workers` started); returns its
    exit code: 0, or :data:`~tlsearch.runner.workers.RECYCLE` when a fresh process should carry
    on. A stop at a safe point (SIGTERM, the parent gone) raises KeyboardInterrupt, as Ctrl-C."""
    summary = run_trials(prep, progress, n_trials=n_trials, max_here=recycle_after or None,
                         who=f"worker {index}")
    if summary.get("stopped") == "interrupted":  # stopped at a safe point: as by Ctrl-C
        raise KeyboardInterrupt
    return RECYCLE if summary.get("recycle") else 0


def worker_died(prep: PreparedStudy, pid: int, code: int,
                say: Callable[[str], object] = print) -> None:
    """A worker ended early: its running trial fails with the reason, and is queued again."""
    reason = f"worker died: {describe_exit(code).removeprefix('signal ')}"
    quota = TrialQuota(prep.study, prep.storage_url, prep.cfg.heartbeat.max_retry)
    try:
        with quota.lock.held():
            failed = fail_trials_of(prep.study, pid, socket.gethostname(), reason,
                                    Retry(max_retry=prep.cfg.heartbeat.max_retry))
    except Exception as e:  # the workers' own sweeps will find the trial
        say(f"  worker {pid} ended ({reason}); its trial is left to the next sweep ({e})")
        return
    finally:
        quota.close()
        _release_connections(prep)
    if failed:
        say(f"  trial {failed} failed ({reason}) and queued again")


def _release_connections(prep: PreparedStudy) -> None:
    engine = storage_engine(prep.study)
    if engine is not None:
        engine.dispose()


def describe_exit(code: int) -> str:
    """A process's exit code in words: ``code 1``, or ``signal SIGKILL`` for a negative one."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM ends a run as Ctrl-C does: the running trial fails as ``interrupted``, one line."""

    stopping: list[bool] = []

    def interrupt(signum, frame):
        # once: a second SIGTERM (a parent's death is told once per thread of it) must not cut the
        # recording of the first one's trial short. Ignored first, and a handler entered again
        # (a SIGTERM that came meanwhile) returns at once: one that landed inside STOP.set()
        # waited for the lock its own thread held, and the worker hung for ever. STOP stays set,
        # so that a KeyboardInterrupt that Python swallowed still stops the run at its next safe
        # point
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if stopping:
            return
        stopping.append(True)
        STOP.set()
        raise KeyboardInterrupt

    def unraisable(args) -> None:
        # the interrupt raised where Python cannot raise it (a weakref callback, a __del__):
        # Python prints "Exception ignored in ..." with a traceback; STOP carries the stop on.
        # So does a SIGTERM that came while the first was handled, once it is ignored ("Signal
        # 15 ignored due to race condition")
        if STOP.is_set() and (issubclass(args.exc_type, KeyboardInterrupt) or (
                issubclass(args.exc_type, OSError)
                and "ignored due to race condition" in str(args.exc_value))):
            return
        hook(args)

    STOP.clear()  # a new run (the tests run several in one process)
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, interrupt)
    hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    finally:
        # a worker whose parent is gone is told so again by each of the parent's threads as it
        # ends (Linux's parent-death signal): SIGTERM stays ignored while this process ends, or
        # its default action killed the worker silently (exit -15) after its run had unwound
        signal.signal(signal.SIGTERM, signal.SIG_IGN if STOP.is_set() and parent_gone() else old)
        sys.unraisablehook = hook
