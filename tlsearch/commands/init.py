"""tlsearch init DATA [--out study.yaml]: write a commented study file fit to the data."""

from __future__ import annotations

import os
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("init", help="read a data folder (or file) and write a study file fit to "
                                    "it, each choice commented with its reason")
    p.add_argument("data", help="a folder of class folders (or train/, val/, test/ of them), a "
                                ".npz, or a CSV, Parquet or JSON Lines table")
    p.add_argument("--out", default="study.yaml", help="the study file to write "
                                                       "(default: study.yaml)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--backbones", help="comma-separated backbones to search instead of the "
                                       "default for the modality")
    p.add_argument("--minutes", type=float, default=60.0,
                   help="the time budget the study's n_trials and timeout are set for "
                        "(default: 60)")
    p.add_argument("--no-estimate", action="store_true",
                   help="do not time the study on this machine (a fixed trial count, no timeout)")
    p.add_argument("--text-column", help="text data: the column of the texts")
    p.add_argument("--label-column", help="text data: the column of the labels")
    return p


def run(args) -> int:
    from rich.console import Console

    from tlsearch.errors import UserError
    from tlsearch.starter.plan import plan

    out = Path(args.out)
    if out.exists() and not args.force:
        raise UserError(f"`--out`: {str(out)!r} exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise UserError(f"`--out`: the folder {str(out.parent)!r} does not exist")
    if not args.minutes > 0:
        raise UserError(f"`--minutes`: expected a positive number, got {args.minutes:g}")
    err = Console(stderr=True)
    skip = os.environ.get("TLSEARCH_NO_ESTIMATE", "") not in ("", "0")
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()] \
        if args.backbones else None
    text, s = plan(args.data, out, backbones=backbones, minutes=args.minutes,
                   timed=not (args.no_estimate or skip), text_column=args.text_column,
                   label_column=args.label_column, log=lambda m: err.print(m, highlight=False))
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, out)
    what = "images" if s.modality == "image" else "texts"
    print(f"wrote {out}: {s.n} {what}, {len(s.counts)} classes; next: tlsearch run {out}")
    return 0
