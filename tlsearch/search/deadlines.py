"""The run's deadlines and its stop flag, as a running trial checks them.

``timeout`` only keeps new trials from starting; ``hard_timeout`` also stops the running trial after
its current batch, and the objective records it as PRUNED with :data:`HARD_TIMEOUT_NOTE`. Here,
beside the objective that checks them between batches, and not with the runner that reads them
before each trial, because the objective must not import the runner.
"""

from __future__ import annotations

import threading
import time

__all__ = ["HARD_TIMEOUT_NOTE", "HardTimeout", "STOP", "Deadlines"]

HARD_TIMEOUT_NOTE = "stopped by hard_timeout"


class HardTimeout(Exception):
    """Raised inside a trial when ``hard_timeout`` has passed (the objective prunes the trial)."""


#: set when this process is asked to stop (SIGTERM, or a worker's parent gone): the run stops at
#: its next safe point, an epoch's or batch's end or before the next trial, even where the
#: KeyboardInterrupt the signal raised was swallowed (Python ignores one raised inside a weakref
#: callback, and a worker went on claiming trials on its own)
STOP = threading.Event()


class Deadlines:
    """The run's ``timeout`` (no new trial after it) and ``hard_timeout`` (the running trial
    stops), both in seconds from the start of this run."""

    def __init__(self, timeout: float | None, hard_timeout: float | None) -> None:
        now = time.monotonic()
        self.soft = None if timeout is None else now + timeout
        self.hard = None if hard_timeout is None else now + hard_timeout

    def may_start(self) -> str | None:
        """None while a new trial may start, else the reason it may not."""
        now = time.monotonic()
        if STOP.is_set():
            return "interrupted"
        if self.hard is not None and now >= self.hard:
            return "hard_timeout"
        if self.soft is not None and now >= self.soft:
            return "timeout"
        return None

    def check(self) -> None:
        """Inside a trial: raise :class:`HardTimeout` once ``hard_timeout`` has passed, and
        KeyboardInterrupt once :data:`STOP` is set (the trial fails as ``interrupted``)."""
        if STOP.is_set():
            raise KeyboardInterrupt
        if self.hard is not None and time.monotonic() >= self.hard:
            raise HardTimeout(HARD_TIMEOUT_NOTE)
