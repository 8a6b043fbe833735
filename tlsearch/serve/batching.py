"""Requests arriving together go through the model in one call.

Each request's inputs are read (decoded, resized) in the request's own task and then submitted
here. One batching task takes the first submission waiting, adds every other one already
waiting, and, while more requests are still arriving (being read), waits up to ``max_wait`` for
them, until the batch holds ``max_batch`` inputs. The model runs in one thread of its own, so the
event loop keeps accepting and reading requests meanwhile; whatever arrives during a model call
makes up the next batch. A lone request is never held back: with nothing else arriving, it runs
at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["MicroBatcher", "BatchStats"]


@dataclass
class BatchStats:
    """What the batcher has done, for ``/health`` and the tests."""

    batches: int = 0
    requests: int = 0
    inputs: int = 0
    most_requests_in_a_batch: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"batches": self.batches, "requests": self.requests, "inputs": self.inputs,
                "most_requests_in_a_batch": self.most_requests_in_a_batch}


@dataclass
class _Job:
    inputs: list
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Collects submissions into batches for ``run`` (inputs -> one row of results per input).

    Use :meth:`arriving` around reading a request, so the batcher knows to wait for it, and
    :meth:`submit` with the inputs read; start with :meth:`start`, end with :meth:`stop`.
    """

    def __init__(self, run: Callable[[list], np.ndarray], *, max_batch: int = 32,
                 max_wait: float = 0.005) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._run = run
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._held: _Job | None = None
        self._arriving = 0
        self._task: asyncio.Task | None = None
        self._model_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tlsearch-model")

    # ---- lifecycle
    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._model_thread.shutdown(wait=True)

    # ---- requests
    def arriving(self) -> "_Arriving":
        """A context manager around reading one request: while it is open the batcher may wait
        (up to ``max_wait``) for this request to join the batch being formed."""
        return _Arriving(self)

    async def submit(self, inputs: list) -> np.ndarray:
        """The rows of results for ``inputs``, computed in some batch with other requests'."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(list(inputs), future))
        return await future

    # ---- the batching task
    async def _next(self, timeout: float | None) -> _Job | None:
        assert self._queue is not None
        if self._held is not None:
            job, self._held = self._held, None
            return job
        if not self._queue.empty() or timeout is None:
            return await self._queue.get()
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            assert first is not None
            jobs, n = [first], len(first.inputs)
            deadline = loop.time() + self.max_wait
            while n < self.max_batch:
                waiting = self._held is not None or (self._queue is not None
                                                     and not self._queue.empty())
                if not waiting and self._arriving == 0:
                    break
                job = await self._next(deadline - loop.time())
                if job is None:
                    break
                if n + len(job.inputs) > self.max_batch:
                    self._held = job  # the first of the next batch
                    break
                jobs.append(job)
                n += len(job.inputs)
            await self._run_batch(jobs, loop)

    async def _run_batch(self, jobs: list[_Job], loop: asyncio.AbstractEventLoop) -> None:
        inputs = [x for job in jobs for x in job.inputs]
        try:
            rows = await loop.run_in_executor(self._model_thread, self._run, inputs)
        except Exception as e:  # the model failed: every request of the batch hears why
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        s = self.stats
        s.batches += 1
        s.requests += len(jobs)
        s.inputs += len(inputs)
        s.most_requests_in_a_batch = max(s.most_requests_in_a_batch, len(jobs))
        start = 0
        for job in jobs:
            if not job.future.done():  # a client that went away has its future cancelled
                job.future.set_result(rows[start:start + len(job.inputs)])
            start += len(job.inputs)


class _Arriving:
    def __init__(self, batcher: MicroBatcher) -> None:
        self._b = batcher

    def __enter__(self) -> None:
        self._b._arriving += 1

    def __exit__(self, *exc: Any) -> None:
        self._b._arriving -= 1
