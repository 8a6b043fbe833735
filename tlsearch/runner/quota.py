"""Exactly ``n_trials`` across workers: who may start the next trial.

Optuna's ``MaxTrialsCallback`` is checked after a trial ends, so N workers overshoot by up to N-1.
Here a worker *claims* a trial: under a lock held by the whole study
(:func:`tlsearch.runner.locks.study_lock`) it counts finished and running trials and asks for a
new one only if they fall short of the target. The lock is held until the new trial is RUNNING, so
the next claimant counts it. Each claim first sweeps the stale trials
(:mod:`tlsearch.runner.stale`): a trial whose worker died is failed and retried by a WAITING copy,
which the next claim picks up first.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import optuna
from optuna.trial import TrialState

from tlsearch.optuna_adapter import storage_engine
from tlsearch.runner.journal_grpc import no_retry_to_wait_for
from tlsearch.runner.locks import retrying, study_lock
from tlsearch.runner.stale import SWEPT, Retry, fail_trials_of, sweep_stale_trials, worker_id
from tlsearch.search.attrs import ATTR, WORKER_ATTR

__all__ = ["TrialQuota", "RUN", "WAIT", "DONE"]

T = TypeVar("T")

#: what :meth:`TrialQuota.next` answers: start a trial, wait for the running ones, or stop
RUN, WAIT, DONE = "run", "wait", "done"


class TrialQuota:
    """Decides, for one worker, whether to start a trial, wait for running ones, or stop, so that
    N workers stop at exactly ``n_trials`` finished trials (see the module's docstring)."""

    def __init__(self, study: optuna.Study, url: str, max_retry: int, who: str = "this run"
                 ) -> None:
        self.study, self.url, self.who = study, url, who
        self.engine = storage_engine(study)
        self.lock = study_lock(url, f"study:{study.study_name}", self.engine)
        self.retry = Retry(max_retry=max_retry)
        self.me = worker_id()
        self.finished = 0
        self.current: int | None = None  # the number of the trial this worker last started

    def counts(self) -> dict[str, int]:
        out = {s.name: 0 for s in TrialState}
        for t in self.study.get_trials(deepcopy=False):
            out[t.state.name] += 1
        return out

    def _retrying(self, fn: Callable[[], T]) -> T:
        """``fn()`` under the lock, all of it tried again after a lost database connection."""
        def attempt() -> T:
            self.lock.acquire()
            try:
                return fn()
            except BaseException:
                self.lock.release()
                raise

        return retrying(attempt, url=self.url)

    def sweep(self) -> list[int]:
        """Fail and retry the trials left RUNNING by dead workers (at the start of a run)."""
        def sweep() -> list[int]:
            return sweep_stale_trials(self.study, self.retry, f"{self.who} at start")

        try:
            return self._retrying(sweep)
        finally:
            self.lock.release()

    def next(self, target: int | None) -> str:
        """RUN (the lock stays held until :meth:`started` or :meth:`abandon`), WAIT or DONE."""
        decision = self._retrying(lambda: self._decide(target))
        if decision != RUN:
            self.lock.release()
        return decision

    def _decide(self, target: int | None) -> str:
        sweep_stale_trials(self.study, self.retry, self.who)
        c = self.counts()
        self.finished = c["COMPLETE"] + c["PRUNED"]
        if target is None:
            return RUN
        if self.finished >= target:
            return DONE
        if self.finished + c["RUNNING"] < target:
            return RUN
        if no_retry_to_wait_for(self.study):  # journal, gRPC: a death elsewhere goes unseen
            return DONE
        return WAIT  # the last trials are running elsewhere; one may die and need a retry

    def started(self, trial: optuna.Trial) -> None:
        """The claimed trial is RUNNING and marked with this worker: others may claim now."""
        self.current = trial.number
        trial.set_user_attr(WORKER_ATTR, self.me)
        self.lock.release()

    def swept_mine(self) -> tuple[int, str] | None:
        """The number and the reason of the trial this worker last started, if a sweep elsewhere
        failed it (it took this worker for dead: a late heartbeat) while this worker ran it."""
        if self.current is None:
            return None
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            reason = str(t.user_attrs.get(ATTR["failure"], ""))
            if t.number == self.current and SWEPT in reason:
                return t.number, reason
        return None

    def fail_mine(self, reason: str) -> list[int]:
        """Fail the trials this worker left RUNNING with ``reason`` and queue their retries: their
        end could not be stored (the database connection was lost as they were told). Left
        RUNNING, each waited a grace period to be swept as if this worker had died."""
        host, pid, _ = self.me.rsplit(":", 2)

        def fail() -> list[int]:
            return fail_trials_of(self.study, int(pid), host, reason, self.retry)

        try:
            return self._retrying(fail)
        finally:
            self.lock.release()

    def abandon(self) -> None:
        """The claim ended without a trial starting (the storage failed): let others claim."""
        self.lock.release()

    def close(self) -> None:
        self.lock.close()
