"""tlsearch dashboard STUDY: optuna-dashboard on the study, with the trials' weight files."""

from __future__ import annotations

import sys

from tlsearch.config import load_config


def add_parser(sub):
    p = sub.add_parser("dashboard", help="open the study in optuna-dashboard")
    p.add_argument("study", help="the study file (YAML)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--storage", help="database URL (overrides the study file and $TLSEARCH_STORAGE)")
    return p


def run(args) -> int:
    from tlsearch.commands.run import storage_override
    from tlsearch.dashboard import dashboard_url, make_dashboard_server

    cfg = load_config(args.study)
    server = make_dashboard_server(cfg, host=args.host, port=args.port,
                                   url=storage_override(args))
    host, port = server.server_address[:2]
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {args.host}: other machines can reach this dashboard, and it "
              f"has no login", file=sys.stderr)
    if not cfg.artifact_dir.is_dir():
        print(f"note: no artifact folder at {cfg.artifact_dir}; trials will show no files",
              file=sys.stderr)
    print(f"study {cfg.name!r} at {dashboard_url(args.host, port)}  (Ctrl+C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
