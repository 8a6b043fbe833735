"""tlsearch storage-proxy --storage URL: serve a database to workers as ``grpc://host:port``."""

from __future__ import annotations

import os
import signal
import sys


def add_parser(sub):
    p = sub.add_parser("storage-proxy",
                       help="serve a study database to workers over gRPC (their storage: "
                            "grpc://host:port)")
    p.add_argument("--storage",
                   help="the database to serve: a SQLite or PostgreSQL URL (default "
                        "$TLSEARCH_STORAGE)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 for "
                        "workers on other machines)")
    p.add_argument("--port", type=int, default=13000,
                   help="port (default 13000, the port of grpc://host without one; 0: any free)")
    return p


def _interrupt(signum, frame) -> None:
    """SIGTERM stops the proxy as Ctrl-C does: the same one line, the port released."""
    raise KeyboardInterrupt


def run(args) -> int:
    from tlsearch.errors import UserError
    from tlsearch.runner.grpc_proxy import make_proxy_server
    from tlsearch._urls import redact_url

    url = args.storage or os.environ.get("TLSEARCH_STORAGE")
    if not url:
        raise UserError("`--storage`: expected the database to serve (for example "
                        "postgresql+psycopg://user@host/db or sqlite:///study.db), or set "
                        "$TLSEARCH_STORAGE")
    if not 0 <= args.port < 65536:
        raise UserError(f"`--port`: expected 0 to 65535, got {args.port}")
    # a port that cannot be bound is said below, in one line: not also in gRPC's own log
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    server, port = make_proxy_server(url, args.host, args.port)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    where = f"grpc://{shown}:{port}"
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {args.host}: other machines can reach this proxy, and it has "
              f"no login and no encryption: keep it inside a trusted network", file=sys.stderr)
    old = signal.signal(signal.SIGTERM, _interrupt)
    server.start()
    print(f"storage proxy for {redact_url(url)} at {where}  (workers: --storage {where}; "
          f"Ctrl+C to stop)", flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop(grace=2).wait()
        signal.signal(signal.SIGTERM, old)
    print(f"storage proxy at {where} stopped", flush=True)
    return 0
