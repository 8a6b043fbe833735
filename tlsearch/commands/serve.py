"""tlsearch serve EXPORT_DIR: the exported model behind HTTP, until interrupted.

``POST /predict`` takes one image's bytes, or JSON (``{"instances": [...]}`` pixel arrays for image
models, ``{"texts": [...]}`` for text models) and answers the label, each class's probability and,
for a screening objective, the threshold applied; ``GET /health`` and ``GET /metadata``. The web
stack (Starlette, uvicorn) is the optional extra ``serve``: this module imports it only to run.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tlsearch.errors import UserError


def add_parser(sub):
    p = sub.add_parser("serve", help="serve an exported model over HTTP (POST /predict)")
    p.add_argument("model", metavar="EXPORT_DIR", help="the folder written by `tlsearch export`")
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to listen on (default 127.0.0.1: this machine only; "
                        "0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="default 8000; 0 picks a free port")
    p.add_argument("--workers", type=int, default=1,
                   help="serving processes, each holding one copy of the model (default 1)")
    p.add_argument("--max-batch", type=int, default=32,
                   help="inputs run through the model in one call, at most (default 32)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="how long a batch waits for requests still arriving (default 5 ms)")
    p.add_argument("--max-body-mb", type=float, default=16.0,
                   help="the largest request body accepted (default 16 MB)")
    p.add_argument("--max-megapixels", type=float, default=25.0,
                   help="the largest image decoded, by its header (default 25 megapixels)")
    p.add_argument("--max-items", type=int, default=64,
                   help="instances or texts in one JSON request, at most (default 64)")
    p.add_argument("--max-concurrency", type=int, default=32,
                   help="predictions in flight per worker, each holding at most one body; more "
                        "are answered 503 (default 32)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    return p


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise UserError(f"`{name}`: expected a positive number, got {value:g}")


def run(args) -> int:
    for name, value in (("--max-batch", args.max_batch), ("--max-body-mb", args.max_body_mb),
                        ("--max-megapixels", args.max_megapixels),
                        ("--max-items", args.max_items),
                        ("--max-concurrency", args.max_concurrency)):
        _positive(name, value)
    if args.batch_wait_ms < 0:
        raise UserError(f"`--batch-wait-ms`: expected 0 or more, got {args.batch_wait_ms:g}")
    if not 0 <= args.port <= 65535:
        raise UserError(f"`--port`: expected 0..65535, got {args.port}")
    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"`tlsearch serve` needs {' and '.join(missing)}: "
                        f"pip install 'tlsearch[serve]'")
    from tlsearch.serve.inputs import Limits
    from tlsearch.serve.server import ServeOptions, serve

    limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20),
                    max_pixels=int(args.max_megapixels * 1e6), max_items=args.max_items)
    options = ServeOptions(export=Path(args.model), host=args.host, port=args.port,
                           workers=args.workers, limits=limits, max_batch=args.max_batch,
                           max_wait=args.batch_wait_ms / 1000, max_concurrency=args.max_concurrency,
                           access_log=args.access_log)
    try:
        return serve(options)
    except KeyboardInterrupt:
        return 0
