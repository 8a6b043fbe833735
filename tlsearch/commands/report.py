"""tlsearch report STUDY --out report.html: one self-contained HTML report of the study."""

from __future__ import annotations

import sys

from tlsearch.config import load_config


def add_parser(sub):
    p = sub.add_parser("report", help="write an HTML report of the study (works offline)")
    p.add_argument("study", help="the study file (YAML)")
    p.add_argument("--out", default="report.html", help="the HTML file to write (default report.html)")
    p.add_argument("--storage", help="database URL (overrides the study file and $TLSEARCH_STORAGE)")
    return p


def run(args) -> int:
    from tlsearch._quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    from tlsearch.commands.run import storage_override
    from tlsearch.report import write_report

    cfg = load_config(args.study)
    write_report(cfg, args.out, url=storage_override(args),
                 log=lambda m: print(m, file=sys.stderr))
    return 0
