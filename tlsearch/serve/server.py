"""Running the app: one process, or ``--workers N`` processes sharing one listening socket.

The port is bound first (``--port 0`` picks a free port, printed), so a port already in use is
refused before any model is loaded; with ``--workers``, each worker listens on a socket of its
own on that port where the system has SO_REUSEPORT (Linux), and the kernel spreads connections
over them. Each serving process loads the export itself (checking every
file's SHA-256), traces the model once and only then accepts connections: a process answers
``/health`` only when it can predict.

Memory with ``--workers N``: N processes, each holding one model and its own limits (body size,
pixels, items, ``--max-concurrency`` predictions in flight, refused with 503 beyond, and 1,024
open connections, each buffered by uvicorn up to 64 KB at most while it waits), so the total
is N times one worker's, which the load check measures (``benchmarks/serve_load.py``). The parent
only supervises: it checks the export without TensorFlow and holds no model. TensorFlow's thread
pool in each worker is sized to its share of the CPU cores, so N workers do not oversubscribe them.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from multiprocessing.connection import wait
from pathlib import Path

from tlsearch.errors import UserError
from tlsearch.serve.inputs import Limits

__all__ = ["ServeOptions", "serve"]


@dataclass(frozen=True)
class ServeOptions:
    """What ``tlsearch serve`` was asked for."""

    export: Path
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    limits: Limits = field(default_factory=Limits)
    max_batch: int = 32
    max_wait: float = 0.005
    max_concurrency: int = 32
    #: open connections per worker (idle keep-alive ones included); more are answered 503
    max_connections: int = 1024
    access_log: bool = False


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def serve(options: ServeOptions) -> int:
    """Serve until interrupted; the exit code. Bad options and a damaged export raise
    :class:`UserError` before anything listens."""
    if options.workers < 1:
        raise UserError(f"`--workers`: expected at least 1, got {options.workers}")
    from tlsearch.export.predict import check_export

    check_export(options.export, verify=False)  # not an export at all: said before TensorFlow
    if options.workers == 1:
        sock = _bind(options)  # a port in use: said before the model is loaded
        try:
            predictor = _load(options, threads=None)
        except BaseException:
            sock.close()
            raise
        _say(f"serving {options.export} on {_url(sock)} (1 worker): POST /predict, "
             f"GET /health, GET /metadata")
        _run(predictor, options, sock)
        return 0
    check_export(options.export)  # a damaged export stops here, before any worker starts
    # Where the system can, each worker listens on a socket of its own on the port (SO_REUSEPORT)
    # and the kernel spreads connections over them; on one shared socket, one worker's event loop
    # tends to accept every keep-alive connection of a burst while the others idle.
    own = hasattr(socket, "SO_REUSEPORT")
    sock = _bind(options, listen=not own, reuse_port=own)  # with `own`: the port, reserved
    _say(f"serving {options.export} on {_url(sock)} ({options.workers} workers, each loading "
         f"the model): POST /predict, GET /health, GET /metadata")
    return _supervise(replace(options, port=sock.getsockname()[1]), sock, own)


def _bind(options: ServeOptions, *, listen: bool = True, reuse_port: bool = False
          ) -> socket.socket:
    family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
    # sockets that say they are TCP, and with it on, an answer written in two pieces waits for
    # the client's delayed ACK: 40 ms a request
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((options.host, options.port))
    except OSError as e:
        sock.close()
        raise UserError(f"`--host {options.host} --port {options.port}`: cannot listen there "
                        f"({e.strerror or e})") from None
    if listen:
        sock.listen(2048)  # from here on, connections wait in the backlog until one is accepted
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _load(options: ServeOptions, threads: int | None):
    """The predictor, loaded, verified and traced once (a first request pays no tracing)."""
    import numpy as np

    from tlsearch._quiet import import_tensorflow_quietly

    tf = import_tensorflow_quietly(lean=True)
    if threads is not None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already started its pools: keep them
            pass
    from tlsearch.export.predict import load

    predictor = load(options.export)
    if predictor.modality == "text":
        predictor.proba_batch(["warm-up"])
    else:
        size = int(predictor.image_size or 0)
        predictor.proba_batch([np.zeros((size, size, 3), np.uint8)])
    return predictor


def _run(predictor, options: ServeOptions, sock: socket.socket) -> None:
    import uvicorn

    from tlsearch.serve.app import create_app

    app = create_app(predictor, limits=options.limits, max_batch=options.max_batch,
                     max_wait=options.max_wait, max_concurrency=options.max_concurrency)
    config = uvicorn.Config(app, log_level="warning", access_log=options.access_log,
                            limit_concurrency=options.max_connections, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


# ---- --workers N


def _worker(options: ServeOptions, sock: socket.socket | None, index: int, parent: int) -> None:
    """One serving process: loads its own model, then serves the shared socket, or (``sock``
    None) a socket of its own on the same port."""
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        predictor = _load(options, threads=max(1, (cores or 1) // options.workers))
        if sock is None:
            sock = _bind(options, reuse_port=True)
    except UserError as e:
        _say(f"error: worker {index + 1}: {e}")
        sys.exit(e.exit_code)
    _say(f"worker {index + 1} of {options.workers} ready (pid {os.getpid()})")
    _run(predictor, options, sock)


def _watch_parent(parent: int) -> None:
    """A worker whose supervisor is gone stops (uvicorn shuts down on SIGTERM)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def _supervise(options: ServeOptions, sock: socket.socket, own: bool) -> int:
    """Start the workers and wait; when one exits, or on SIGINT/SIGTERM, stop them all.
    ``own``: each worker listens on a socket of its own (``sock`` only reserves the port)."""
    ctx = multiprocessing.get_context("spawn")  # TensorFlow is not safe to fork
    shared = None if own else sock
    procs = [ctx.Process(target=_worker, args=(options, shared, i, os.getpid()),
                         name=f"tlsearch-serve-{i + 1}") for i in range(options.workers)]

    def stop(signum, frame) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    code = 0
    try:
        for p in procs:
            p.start()
        done = wait([p.sentinel for p in procs])
        ended = next(p for p in procs if p.sentinel in done)
        ended.join()
        code = ended.exitcode or 0
        if code:
            _say(f"worker {procs.index(ended) + 1} exited with code {code}; stopping the others")
    except KeyboardInterrupt:
        code = 0
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    return code if code >= 0 else 1
