"""Which exceptions fail one trial (and the study goes on), and when failures stop the study.

A trial that runs out of memory, meets a bad batch or loses its database connection is recorded as
FAIL with its reason and the next trial starts; a run of failures in a row means the problem is
not one trial, and the study stops (``FailureGuard``).
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from tlsearch.errors import TrialFailure
from tlsearch.search.attrs import ATTR, FINISHED
from tlsearch.runner.locks import is_connection_error

__all__ = ["FailureGuard", "as_trial_failure"]


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


def as_trial_failure(e: BaseException) -> TrialFailure | None:
    if is_connection_error(e):  # the next claim reconnects; this trial's writes are lost
        first = str(getattr(e, "orig", None) or e).strip().splitlines()
        return TrialFailure(f"lost the database connection: {first[0][:200] if first else e}")
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover
        return None
    if isinstance(e, tf.errors.ResourceExhaustedError):
        return TrialFailure(f"out of memory: {str(e).splitlines()[0][:200]}; try a smaller "
                            f"`training.batch_size` or image size")
    if isinstance(e, (tf.errors.InvalidArgumentError, MemoryError)):
        return TrialFailure(f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return None
