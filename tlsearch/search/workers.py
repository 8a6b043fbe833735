"""Many workers on one study: who may start the next trial, who died, and the worker processes.

Optuna's storages are the distributed engine: every worker, on this machine or another, runs the
same loop against one database. Three things Optuna leaves to its users are done here.

* **Exactly ``n_trials``.** ``MaxTrialsCallback`` is checked after a trial ends, so N workers
  overshoot by up to N-1. Here a worker *claims* a trial: under a lock held by the whole study
  (:func:`tlsearch.search.locks.study_lock`) it counts finished and
  running trials and asks for a new one only if they fall short of the target. The lock is held
  until the new trial is RUNNING, so the next claimant counts it.
* **Dead workers.** A trial whose worker was killed stays RUNNING. On an RDB storage its heartbeat
  stops and Optuna fails it after the grace period; on this machine a dead worker is also noticed
  at once, from the host, process id and start time each trial records. Either way the trial is
  marked FAIL and retried (``heartbeat.max_retry`` times) by a WAITING copy, which the next claim
  picks up first.
* **Creating the storage once.** Several processes creating a fresh storage at the same moment
  collide on Optuna's schema tables (``UNIQUE constraint failed: alembic_version``). Creation
  runs under the same kind of lock, so whoever comes second finds the study made.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from tlsearch.search.attrs import WORKER_ATTR
from tlsearch.search.deaths import Retry, is_dead_here, sweep_dead_workers, worker_id
from tlsearch.search.journal_grpc import no_retry_to_wait_for
from tlsearch.search.locks import retrying, study_lock

__all__ = [
    "worker_id",
    "is_dead_here",
    "Claims",
    "sweep_dead_workers",
    "spawn_workers",
    "wait_recycling",
    "die_with_parent",
    "storage_engine",
    "device_env",
    "visible_gpus",
    "RECYCLE",
    "RUN",
    "WAIT",
    "DONE",
]

RUN, WAIT, DONE = "run", "wait", "done"


# ------------------------------------------------------------------------------------------------
# Claims


def storage_engine(study: optuna.Study):
    """The SQLAlchemy engine of a study's RDB storage (None for other storages)."""
    storage = study._storage
    return getattr(getattr(storage, "_backend", storage), "engine", None)


class Claims:
    """Decides, for one worker, whether to start a trial, wait for running ones, or stop."""

    def __init__(self, study: optuna.Study, url: str, max_retry: int, who: str = "this run"
                 ) -> None:
        self.study, self.url, self.who = study, url, who
        self.engine = storage_engine(study)
        self.lock = study_lock(url, f"study:{study.study_name}", self.engine)
        self.retry = Retry(max_retry=max_retry)
        self.me = worker_id()
        self.finished = 0

    def counts(self) -> dict[str, int]:
        out = {s.name: 0 for s in TrialState}
        for t in self.study.get_trials(deepcopy=False):
            out[t.state.name] += 1
        return out

    def _retrying(self, fn):
        """``fn()`` under the lock, all of it tried again after a lost database connection."""
        def attempt():
            self.lock.acquire()
            try:
                return fn()
            except BaseException:
                self.lock.release()
                raise

        return retrying(attempt, url=self.url)

    def sweep(self) -> list[int]:
        """Fail and retry the trials left RUNNING by dead workers (at the start of a run)."""
        def sweep():
            return sweep_dead_workers(self.study, self.retry, f"{self.who} at start")

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
        sweep_dead_workers(self.study, self.retry, self.who)
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
        trial.set_user_attr(WORKER_ATTR, self.me)
        self.lock.release()

    def abandon(self) -> None:
        """The claim ended without a trial starting (the storage failed): let others claim."""
        self.lock.release()

    def close(self) -> None:
        self.lock.close()


# ------------------------------------------------------------------------------------------------
# Worker processes on one machine


def _thread_env(n_workers: int) -> dict[str, str]:
    """Split the cores between the workers: N processes with a thread per core each oversubscribe
    the CPU and run slower than N processes with cores/N threads."""
    per = str(max(1, (os.cpu_count() or 1) // n_workers))
    return {"TF_NUM_INTRAOP_THREADS": per, "OMP_NUM_THREADS": per}


def spawn_workers(argv: list[str], n: int, *, storage_url: str,
                  on_exit: Callable[[int, int], None] = lambda pid, code: None) -> list[int]:
    """Run ``python -m tlsearch.cli <argv>`` in ``n`` processes; return their exit codes.

    The storage URL goes to the workers in ``$TLSEARCH_STORAGE``, not on their command line, where
    any user of the machine could read a password with ``ps``. The workers run in their own process
    group: Ctrl-C or SIGTERM reaches the parent, which passes it on once. ``on_exit(pid, code)``
    hears each worker that ends otherwise than by finishing (a signal's code is negative).
    """
    env = dict(os.environ)
    for k, v in _thread_env(n).items():
        env.setdefault(k, v)
    env["TLSEARCH_STORAGE"] = storage_url
    env["TLSEARCH_PARENT_PID"] = str(os.getpid())  # a worker ends when this process dies
    # the workers import the same tlsearch as this process, installed or not
    here = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    procs: list[subprocess.Popen] = []
    stopping: list[int] = []

    def forward(signum, frame):
        stopping.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    def start(i: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "tlsearch.cli", *argv, "--worker-index", str(i + 1)],
            env={**env, **device_env(i)}, process_group=0,
        )

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        procs.extend(start(i) for i in range(n))
        return wait_recycling(procs, start, stopping=lambda: bool(stopping), on_exit=on_exit)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


#: the exit code of a worker that has run its ``--recycle-after`` trials: the parent starts a fresh
#: process in its place. TensorFlow keeps some memory per model it ever traced, which only the end of
#: the process returns; a fresh worker picks the study up from its storage, so no trial is lost.
RECYCLE = 75


def wait_recycling(procs: list, start: Callable[[int], subprocess.Popen], *,
                   stopping: Callable[[], bool] = lambda: False, poll: float = 0.2,
                   on_exit: Callable[[int, int], None] = lambda pid, code: None) -> list[int]:
    """Wait for every worker, starting a worker that exits with :data:`RECYCLE` again in its slot
    (``procs`` is updated in place, so signals reach the new process), unless the run is being
    stopped. Returns the final exit codes."""
    codes: list[int | None] = [None] * len(procs)
    while any(c is None for c in codes):
        for i, p in enumerate(procs):
            code = p.poll() if codes[i] is None else None
            if code == RECYCLE and not stopping():
                procs[i] = start(i)
            elif code is not None:
                codes[i] = code
                if code not in (0, RECYCLE) and getattr(p, "pid", None) is not None:
                    on_exit(p.pid, code)
        time.sleep(poll)
    return [int(c) for c in codes if c is not None]


def parent_gone() -> bool:
    """In a worker started by :func:`spawn_workers`: whether the parent that started it is gone."""
    parent = os.environ.get("TLSEARCH_PARENT_PID", "")
    return parent.isdigit() and os.getppid() != int(parent)


def die_with_parent() -> None:
    """In a worker started by :func:`spawn_workers`: end (as by SIGTERM, so the running trial
    fails as ``interrupted``) when the parent dies, even by ``kill -9``, instead of running on
    orphaned. Linux tells at once (``PR_SET_PDEATHSIG``); elsewhere a thread looks every second."""
    parent = os.environ.get("TLSEARCH_PARENT_PID", "")
    if not parent.isdigit():
        return
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        from tlsearch.search.endings import STOP

        while os.getppid() == int(parent):
            time.sleep(1.0)
        STOP.set()  # whatever became of the signal, the run stops at its next safe point
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="tlsearch-parent-watch", daemon=True).start()


def device_env(i: int, gpus: list[str] | None = None) -> dict[str, str]:
    """What worker ``i`` sees of the accelerators: one GPU each, round robin, with memory growth on
    (TensorFlow otherwise takes all of a GPU's memory at start). None on a machine without GPUs.

    ``gpus`` defaults to ``$CUDA_VISIBLE_DEVICES`` when set (the GPUs this run may use), else to
    every GPU ``nvidia-smi`` lists; asking TensorFlow would start CUDA in the parent process.
    """
    if gpus is None:
        gpus = visible_gpus()
    if not gpus:
        return {}
    return {"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)], "TF_FORCE_GPU_ALLOW_GROWTH": "true"}


def visible_gpus() -> list[str]:
    """The GPU ids this process may hand to its workers (empty on a machine without one)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()] \
        if out.returncode == 0 else []


#: the least a TensorFlow worker process is planned at (measured: 0.9-1.1 GB for EfficientNet-Lite0
#: at 96 px on 2,000 images; see BENCHMARKS.md)
MIN_WORKER_BYTES = 2**30


def worker_memory_plan(n: int, *, allow: bool = False) -> str | None:
    """Refuse ``n`` workers that this machine's available memory cannot hold: each is planned at
    twice this process's size once TensorFlow and the study are loaded (a worker adds the model,
    its activations and the features), and at least :data:`MIN_WORKER_BYTES`. Returns a line to
    print (the plan), or raises UserError; ``allow`` (``--allow-oversubscribe``) starts them
    anyway, saying so."""
    import psutil

    from tlsearch.errors import UserError

    each = max(MIN_WORKER_BYTES, 2 * psutil.Process().memory_info().rss)
    free = psutil.virtual_memory().available
    need = n * each
    gb = 2**30
    fits = max(1, int(free // each))
    if need <= free:
        return None
    line = (f"`--workers {n}`: about {n} x {each / gb:.1f} GB = {need / gb:,.0f} GB of memory "
            f"(a worker is planned at {each / gb:.1f} GB), and this machine has {free / gb:.1f} GB "
            f"available")
    if allow:
        return f"warning: {line}; starting them anyway (--allow-oversubscribe)"
    raise UserError(f"{line}: use at most {fits} workers here, or --allow-oversubscribe to start "
                    f"them anyway")
