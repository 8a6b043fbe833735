"""tlsearch cache info|clear [STUDY]: see or empty the frozen-feature cache."""

from __future__ import annotations

import json
from pathlib import Path

from tlsearch.train.cache import cache_usage, clear_cache


def add_parser(sub):
    p = sub.add_parser("cache", help="show or clear the frozen-feature cache")
    p.add_argument("action", choices=["info", "clear"])
    p.add_argument("study", nargs="?", help="a study file, to use its `cache.dir`")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON on stdout")
    return p


def _root(study: str | None) -> Path:
    if study:
        from tlsearch.config import load_config

        return load_config(study).cache_dir
    import os

    env = os.environ.get("TLSEARCH_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "tlsearch"


def run(args) -> int:
    root = _root(args.study)
    if args.action == "info":
        n, size = cache_usage(root)
        text = f"{root}: {n} cached feature sets, {size / 2**20:.1f} MB"
        numbers = {"dir": str(root), "entries": n, "bytes": size}
    else:
        n, size = clear_cache(root)
        text = f"removed {n} cached feature sets ({size / 2**20:.1f} MB) from {root}"
        numbers = {"dir": str(root), "removed": n, "bytes": size}
    print(json.dumps(numbers) if args.json else text)
    return 0
