"""Stale trials (Optuna's word): trials whose worker stopped, failed with the reason recorded, and
retried.

A trial can end without its objective returning in three ways: the worker is interrupted (Ctrl-C,
SIGTERM: the objective records ``interrupted`` itself), the worker is killed (its parent sees the
signal: ``worker died: SIGKILL``), or nobody saw it die (a later claim finds it RUNNING with a dead
process or a stale heartbeat: ``swept at start by worker 3``). The reason is the trial's
``tlsearch.failure`` user attribute, as for any failed trial, and the retry (a WAITING copy with
the same parameters) starts clean.
"""

from __future__ import annotations

import copy
import datetime
import os
import socket
from pathlib import Path
from typing import Callable

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from tlsearch.optuna_adapter import (fail_running_trial, grace_period, has_heartbeat,
                                     stale_trial_ids, trial_id)
from tlsearch.search.attrs import ATTR, WORKER_ATTR

__all__ = ["SWEPT", "Retry", "sweep_stale_trials", "fail_trials_of", "is_dead_here", "worker_id"]

#: what the reason of every trial failed by a sweep holds (``worker died: swept by worker 3``)
SWEPT = ": swept by "

#: attributes of a failed trial that its retry must not inherit
_NOT_INHERITED = (ATTR["failure"], ATTR["history"], WORKER_ATTR)


class Retry(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial that died, without the dead trial's failure and history."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        clean = copy.copy(trial)
        clean.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in _NOT_INHERITED}
        super().__call__(study, clean)


def _fail(study: optuna.Study, trial: FrozenTrial, reason: str, retry: Callable | None) -> bool:
    """Fail one RUNNING trial with ``reason`` and queue its retry; False if it ended meanwhile."""
    failed = fail_running_trial(study, trial, {ATTR["failure"]: reason})
    if failed is None:
        return False  # another worker got there first
    if retry is not None:
        retry(study, failed)
    return True


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is told apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return stat.rsplit(")", 1)[1].split()[19]


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def is_dead_here(ident: str | None) -> bool:
    """True only when ``ident`` names a process on this host that no longer runs."""
    if not ident:
        return False
    try:
        host, pid_s, start = ident.rsplit(":", 2)
        pid = int(pid_s)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False  # another machine's worker: its heartbeat tells
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return start != "?" and _start_ticks(pid) not in ("?", start)


def sweep_stale_trials(study: optuna.Study, retry: Callable | None,
                       who: str = "a later claim") -> list[int]:
    """Fail the RUNNING trials whose worker is known dead (heartbeat stale, or a dead process on
    this host), each with the reason ``swept by <who>``, and queue their retries. Returns the
    numbers of the trials failed here."""
    stale = stale_trial_ids(study)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial_id(t) in stale:
            why = "worker died (no heartbeat)"
        elif is_dead_here(t.user_attrs.get(WORKER_ATTR)):
            why = "worker died"
        elif _never_beat(study, t):
            why = "worker died before its first heartbeat"
        else:
            continue
        if _fail(study, t, f"{why}{SWEPT}{who}", retry):
            failed.append(t.number)
    return failed


def _never_beat(study: optuna.Study, t: FrozenTrial) -> bool:
    """A RUNNING trial that no worker ever marked as its own and that has had no heartbeat for a
    whole grace period since it started: its worker died between creating it and its first beat
    (Optuna calls only trials with a recorded heartbeat stale, so this one would wait forever)."""
    grace = grace_period(study)
    if not grace or t.user_attrs.get(WORKER_ATTR) or t.datetime_start is None:
        return False
    age = (datetime.datetime.now() - t.datetime_start).total_seconds()
    return age > grace and not has_heartbeat(study, trial_id(t))


def fail_trials_of(study: optuna.Study, pid: int, host: str, reason: str,
                   retry: Callable | None) -> list[int]:
    """Fail the RUNNING trials of the process ``pid`` on ``host`` (which just died) with
    ``reason``, and queue their retries."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        ident = str(t.user_attrs.get(WORKER_ATTR, ""))
        if ident.startswith(f"{host}:{pid}:") and _fail(study, t, reason, retry):
            failed.append(t.number)
    return failed
