"""The trial loop of one process: claim a trial, run it, until the study holds ``n_trials``
finished trials, the time is up, failures pile up, or this process has done its share.

The same loop runs in ``tlsearch run``, in :func:`tlsearch.run` and in each ``--workers`` process;
the count is the study's, across every process (:class:`~tlsearch.runner.quota.TrialQuota`).
"""

from __future__ import annotations

import time

import optuna
from optuna.trial import TrialState

from tlsearch.errors import TooManyFailures, TrialFailure, connection_words, is_connection_error
from tlsearch.runner.locks import retrying
from tlsearch.runner.prepare import PreparedStudy
from tlsearch.runner.quota import DONE, WAIT, TrialQuota
from tlsearch.runner.stop import with_stop_reason
from tlsearch.search.attrs import ATTR, FINISHED
from tlsearch.search.deadlines import Deadlines
from tlsearch.search.progress import Progress
from tlsearch.search.quiet import quiet_interrupts
from tlsearch.search.study import make_objective, summarize

__all__ = ["run_trials", "FailureGuard"]


class FailureGuard:
    """Stops the study after ``limit`` failed trials in a row: then the problem is not one trial."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.reasons: list[str] = []

    def __call__(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        if frozen.state == TrialState.FAIL:
            self.count += 1
            self.reasons.append(f"trial {frozen.number}: "
                                f"{frozen.user_attrs.get(ATTR['failure'], 'failed')}")
            if self.count >= self.limit:
                study.stop()
        elif frozen.state in FINISHED:
            self.count = 0
            self.reasons = []

    @property
    def tripped(self) -> bool:
        return self.count >= self.limit


def _best(study: optuna.Study) -> tuple[int, float] | None:
    try:
        bt = study.best_trial
    except ValueError:
        return None
    return bt.number, float(bt.value)  # type: ignore[arg-type]


def run_trials(prep: PreparedStudy, progress: Progress, *, n_trials: int | None = None,
               poll: float | None = None, max_here: int | None = None,
               who: str = "this run") -> dict:
    """Run trials until the study holds ``n_trials`` finished ones (or the timeout passes), or
    until this process has run ``max_here`` trials (then the summary says ``recycle``: a fresh
    process should carry on; see :data:`tlsearch.runner.workers.RECYCLE`). The summary says why
    it stopped (``stopped``, :mod:`tlsearch.runner.stop`) and the trials left (``left``).

    The count is the study's, across every worker: each trial is claimed before it starts (see
    :class:`~tlsearch.runner.quota.TrialQuota`), so N workers stop at exactly ``n_trials``. A
    worker whose own work is done waits while the last trials run elsewhere, since one of them
    may die and need a retry, and stops when they finish.
    """
    cfg = prep.cfg
    progress.value_label = cfg.value_name
    target = n_trials or cfg.n_trials
    best = retrying(lambda: _best(prep.study), url=prep.storage_url)
    guard = FailureGuard(cfg.training.max_consecutive_failures)
    quota = TrialQuota(prep.study, prep.storage_url, cfg.heartbeat.max_retry, who)
    poll = poll if poll is not None else min(5.0, float(cfg.heartbeat.interval))
    deadlines = Deadlines(cfg.timeout, cfg.hard_timeout)
    reason = "n_trials"

    def on_done(study, frozen):
        note = frozen.user_attrs.get(ATTR["failure"], "") if frozen.state == TrialState.FAIL \
            else frozen.user_attrs.get(ATTR["stopped"], "")
        progress.trial_end(frozen.number, frozen.state.name, frozen.value, note)

    objective = make_objective(prep, progress, on_start=quota.started, deadlines=deadlines,
                               store=prep.store)
    here, recycle = 0, False
    try:
        swept = quota.sweep()
        if swept:
            progress.message(f"trials {swept} were left running by a worker that died: failed "
                             f"(swept at start by {who}) and queued again")
        progress.start(target, prep.finished, best)
        while not guard.tripped:
            late = deadlines.may_start()
            if late is not None:
                reason = late
                break
            decision = quota.next(target)
            if decision == DONE:
                break
            if decision == WAIT:
                time.sleep(poll)
                continue
            if max_here is not None and here >= max_here:  # trials remain: a fresh process
                quota.abandon()
                recycle = True
                break
            progress.done = quota.finished
            here += 1
            try:
                with quiet_interrupts():  # Ctrl-C: tlsearch's one line, not Optuna's traceback
                    prep.study.optimize(objective, n_trials=1, catch=(TrialFailure,),
                                        callbacks=[on_done, guard])  # clear_state collects
            except Exception as e:
                if not is_connection_error(e):
                    taken = quota.swept_mine()
                    if taken is None:
                        raise
                    # Optuna could not tell a trial already failed ("Cannot tell a FAIL trial")
                    progress.message(f"trial {taken[0]} was failed elsewhere while this worker "
                                     f"ran it ({taken[1]}); its result is dropped and its retry "
                                     f"runs; carrying on")
                    continue
                # the trial's end was not stored (Optuna raises AssertionError "Should not reach"
                # from the lost connection): it fails with the reason and is queued again; the
                # next claim reconnects
                lost = connection_words(e)
                quota.abandon()
                failed = quota.fail_mine(f"lost the database connection: {lost}")
                progress.message(f"lost the database connection during a trial ({lost})"
                                 + (f"; trials {failed} failed and queued again" if failed else "")
                                 + "; carrying on")
            finally:
                quota.abandon()  # a no-op once the trial started
    finally:
        progress.close()
        quota.close()
    if guard.tripped:
        reasons = "\n".join(f"  - {r}" for r in guard.reasons[-guard.limit:])
        raise TooManyFailures(
            f"{guard.count} trials failed in a row; the study was stopped:\n{reasons}\n"
            f"Fix the cause and run the same command again: the study resumes."
        )
    summary = with_stop_reason(retrying(lambda: summarize(prep.study), url=prep.storage_url),
                               "recycle" if recycle else reason, target)
    if recycle:
        summary["recycle"] = True
    return summary
