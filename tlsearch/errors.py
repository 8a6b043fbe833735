"""The errors a user can act on.

Two kinds, as in KerasTuner: a :class:`UserError` is fatal and is reported without a traceback
(exit code 2: the study file, the data or the storage is wrong and nothing was written), while a
:class:`TrialFailure` ends one trial only and the search goes on.
"""

from __future__ import annotations

__all__ = [
    "TrialEndedElsewhere",
    "UserError",
    "ConfigError",
    "DataError",
    "StorageError",
    "SpaceChangedError",
    "TrialFailure",
    "NonFiniteLoss",
    "TooManyFailures",
    "WorkersFailed",
    "InputError",
    "ArtifactWriteError",
    "is_connection_error",
    "connection_words",
]


class UserError(Exception):
    """Bad input from the user: printed as a message, exit code 2, nothing written."""

    exit_code = 2


class ConfigError(UserError):
    """The study file is invalid. ``problems`` holds one line per wrong field."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} is not a valid study file:\n{lines}")


class DataError(UserError):
    """The data named by the study file cannot be used as it is."""


class StorageError(UserError):
    """The storage URL is malformed or the database cannot be reached."""


class SpaceChangedError(UserError):
    """The study file's search space differs from the one the stored study was created with."""


class TrialFailure(Exception):
    """One trial cannot go on (non-finite loss, out of memory, a bad batch); the study continues."""


class TrialEndedElsewhere(TrialFailure):
    """Another process failed the trial while this one ran it (a sweep took it for dead: its
    heartbeat came late). Its result is dropped: the sweep's reason stands and the retry runs."""


class NonFiniteLoss(TrialFailure):
    """The loss became NaN or infinite."""


class TooManyFailures(Exception):
    """Several trials in a row failed: something is wrong beyond one unlucky configuration."""

    exit_code = 1


class WorkersFailed(TooManyFailures):
    """Worker processes stopped before the study reached its target."""


class InputError(UserError):
    """An input given to a trained model (``predict``, ``evaluate``) cannot be read; the message
    names it."""


class ArtifactWriteError(Exception):
    """A trial's weights could not be written to the artifact folder (full, read-only, gone).

    Not a :class:`TrialFailure`: every later trial would fail the same way, so the study should
    stop, with this one-line message, instead of burning trials. Not a :class:`UserError` either:
    the study has started and holds trials.
    """

    exit_code = 1


def is_connection_error(e: BaseException) -> bool:
    """True for a database connection that was lost or refused, which a new one may cure.

    Here, below every layer, because both sides need it: the objective records such a trial as
    failed (:func:`tlsearch.search.failures.as_trial_failure`) and the runner retries the claim.
    SQLAlchemy is imported on the first call, so ``import tlsearch`` stays without it."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    seen: BaseException | None = e
    while seen is not None:  # Optuna wraps SQLAlchemy's errors (StorageInternalError)
        if isinstance(seen, DBAPIError):
            return bool(seen.connection_invalidated) or isinstance(
                seen, (OperationalError, InterfaceError))
        seen = seen.__cause__ or seen.__context__
    return False


def connection_words(e: BaseException) -> str:
    """The database's own words for a lost connection in ``e``'s chain (the first line of the
    driver's error, which SQLAlchemy keeps as ``orig``): Optuna's wrapper (StorageInternalError)
    says only "An exception is raised during the commit ... e.g. exceeding max length"."""
    seen: BaseException | None = e
    while seen is not None:
        orig = getattr(seen, "orig", None)
        if orig is not None:
            lines = str(orig).strip().splitlines()
            return lines[0][:200] if lines else type(orig).__name__
        seen = seen.__cause__ or seen.__context__
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__
