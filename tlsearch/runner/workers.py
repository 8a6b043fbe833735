"""Worker processes on one machine, all on one study: started, replaced after their
``--recycle-after`` trials, ended with their parent, given a GPU each, and planned against the
machine's memory.

Optuna's storages are the distributed engine: every worker, on this machine or another, runs the
same loop against one database (:mod:`tlsearch.runner.loop`); exactly ``n_trials`` across them is
:mod:`tlsearch.runner.quota`'s, and their dead trials :mod:`tlsearch.runner.stale`'s. Several
processes creating a fresh storage at the same moment collide on Optuna's schema tables
(``UNIQUE constraint failed: alembic_version``): creation runs under the storage's lock
(:func:`tlsearch.runner.prepare.open_study`), so whoever comes second finds the study made.
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

__all__ = [
    "spawn_workers",
    "wait_recycling",
    "parent_gone",
    "die_with_parent",
    "watch_parent",
    "device_env",
    "visible_gpus",
    "worker_memory_plan",
    "RECYCLE",
]


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
    # the workers import the same tlsearch as this process, installed or not: the folder that
    # holds the package (tlsearch/runner/workers.py is three levels below it)
    here = str(Path(__file__).resolve().parents[2])
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
    """In a worker started by :func:`spawn_workers`: whether the parent that started it is gone,
    or going. Linux sends ``PR_SET_PDEATHSIG`` when the parent's thread that started the worker
    ends; while the parent's other threads still end, the worker's parent id is the parent's
    (the worker is handed to one of them) and the parent is a zombie: gone as well."""
    parent = os.environ.get("TLSEARCH_PARENT_PID", "")
    return parent.isdigit() and _gone(int(parent))


def _gone(parent: int) -> bool:
    return os.getppid() != parent or _process_state(parent) in ("Z", "X", None)


def _process_state(pid: int) -> str | None:
    """The state letter of process ``pid`` from /proc (``Z`` for a zombie); None when it is not
    there, ``?`` where /proc is not (the process is then taken to run)."""
    if not Path("/proc/self").exists():
        return "?"
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


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

    threading.Thread(target=watch_parent, args=(int(parent),), name="tlsearch-parent-watch",
                     daemon=True).start()


def watch_parent(parent: int, interval: float = 1.0) -> None:
    """Wait for ``parent`` to be gone, then stop this process as SIGTERM does, unless it is already
    stopping (the parent-death signal came first): once the run has unwound, SIGTERM's default
    action is back, and this second signal killed the worker silently (exit -15, no line)."""
    from tlsearch.search.deadlines import STOP

    while not _gone(parent):
        time.sleep(interval)
    if STOP.is_set():
        return
    STOP.set()  # whatever becomes of the signal, the run stops at its next safe point
    os.kill(os.getpid(), signal.SIGTERM)


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
