"""Optuna logs a trial ended by Ctrl-C, by a :class:`~tlsearch.errors.TrialFailure` or by an
:class:`~tlsearch.errors.ArtifactWriteError` (the weights found no room) as a failure with a
traceback; tlsearch says "interrupted", the trial's reason, or the error's one line of its own, so
those records are dropped while a trial runs. Tracebacks are for bugs: any other error keeps its."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

__all__ = ["quiet_interrupts"]


class _DropInterrupts(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        from tlsearch.errors import ArtifactWriteError, TrialFailure

        exc = record.exc_info[0] if record.exc_info else None
        if exc is not None and issubclass(exc, (KeyboardInterrupt, TrialFailure,
                                                ArtifactWriteError)):
            self.interrupted = True
            return False
        # Optuna's second line about the same trial ("Trial 3 failed with value None.")
        return not (self.interrupted and record.getMessage().endswith("failed with value None."))


@contextlib.contextmanager
def quiet_interrupts() -> Iterator[None]:
    # on the handlers: a logger's own filters do not see its children's records (optuna.study...)
    handlers = list(logging.getLogger("optuna").handlers) + list(logging.getLogger().handlers)
    f = _DropInterrupts()
    for h in handlers:
        h.addFilter(f)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(f)
