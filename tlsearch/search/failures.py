"""Which exceptions fail one trial (and the study goes on).

A trial that runs out of memory, meets a bad batch or loses its database connection is recorded as
FAIL with its reason and the next trial starts; a run of failures in a row means the problem is
not one trial, and the runner stops the study
(:class:`~tlsearch.runner.loop.FailureGuard`).
"""

from __future__ import annotations

from tlsearch.errors import TrialFailure, connection_words, is_connection_error

__all__ = ["as_trial_failure"]


def as_trial_failure(e: BaseException) -> TrialFailure | None:
    """The :class:`TrialFailure` that ``e``, raised inside a trial, amounts to; None for an
    exception that is not one trial's (a bug, or the user's interrupt): it propagates."""
    if is_connection_error(e):  # the next claim reconnects; this trial's writes are lost
        return TrialFailure(f"lost the database connection: {connection_words(e)}")
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
