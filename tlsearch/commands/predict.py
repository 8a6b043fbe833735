"""tlsearch predict DIR INPUT...: label and probability for each input, streamed as it goes.

Rows are written as each batch is predicted and flushed once per batch, so a pipeline downstream
(``| jq``, a queue consumer) sees results while a large folder is still being read. Formats:
``tsv`` (input, label, probability: for people), ``csv``, ``json`` (one array) and ``jsonl`` (one
object a line). ``--out`` writes to a file instead of stdout, whole or not at all.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import IO

from tlsearch.errors import UserError

FORMATS = ("tsv", "csv", "json", "jsonl")


def add_parser(sub):
    p = sub.add_parser("predict", help="predict with an exported model")
    p.add_argument("model", help="the folder written by `tlsearch export`")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files or folders of images; for text models, CSV files (a `text` "
                        "column) or text files (one text a line)")
    p.add_argument("--format", choices=FORMATS,
                   help="tsv (input, label, probability), csv, json or jsonl (one JSON object a "
                        "line); default: from --out's suffix, else tsv")
    p.add_argument("--out", help="write the predictions to this file (.tsv, .csv, .json, .jsonl) "
                                 "instead of stdout")
    p.add_argument("--batch-size", type=int, default=64, help="inputs read and run at once")
    p.add_argument("--skip-errors", action="store_true",
                   help="report unreadable inputs and go on with the rest")
    return p


class _Writer:
    """Writes rows in one format; ``error`` rows are written where the format can hold them."""

    def __init__(self, fmt: str, f: IO[str], classes: list[str]) -> None:
        self.fmt, self.f, self.classes = fmt, f, classes
        self.n = 0
        self.csv = csv.writer(f, lineterminator="\n") if fmt == "csv" else None
        if self.csv is not None:
            self.csv.writerow(["input", "label", "probability",
                               *[f"p_{c}" for c in classes], "error"])
        elif fmt == "json":
            f.write("[")

    def row(self, r: dict) -> None:
        if self.fmt == "tsv":
            if "error" not in r:
                self.f.write(f"{r['input']}\t{r['label']}\t{r['probability']:.4f}\n")
        elif self.csv is not None:
            if "error" in r:
                self.csv.writerow([r["input"], "", "", *[""] * len(self.classes), r["error"]])
            else:
                self.csv.writerow([r["input"], r["label"], f"{r['probability']:.6f}",
                                   *[f"{r['probabilities'][c]:.6f}" for c in self.classes], ""])
        else:
            text = json.dumps(r, ensure_ascii=False)
            if self.fmt == "json":
                text = ("\n " if self.n == 0 else ",\n ") + text
            else:
                text += "\n"
            self.f.write(text)
        self.n += 1

    def close(self) -> None:
        if self.fmt == "json":
            self.f.write("\n]\n" if self.n else "]\n")
        self.f.flush()


def _format(args) -> str:
    if args.format:
        return args.format
    if args.out:
        suffix = Path(args.out).suffix.lower().lstrip(".")
        if suffix not in FORMATS:
            raise UserError(f"--out {args.out!r}: expected a file ending in .tsv, .csv, .json or "
                            f".jsonl, or give --format")
        return suffix
    return "tsv"


def run(args) -> int:
    fmt = _format(args)
    if args.batch_size < 1:
        raise UserError(f"`--batch-size`: expected at least 1, got {args.batch_size}")
    tmp = _open_out(args.out) if args.out else None  # a folder that cannot be written: now
    try:
        from tlsearch._quiet import import_tensorflow_quietly

        import_tensorflow_quietly(lean=True)  # no scikit-learn: 1.4 s of a one-image predict
        from tlsearch.export.predict import load

        predictor = load(args.model)
        rows = predictor.iter_predict([Path(p) for p in args.inputs], batch_size=args.batch_size,
                                      skip_errors=args.skip_errors)
        if tmp is None:
            try:
                total, skipped = _stream(rows, _Writer(fmt, sys.stdout, predictor.classes),
                                         args.batch_size)
            except BrokenPipeError:  # the reader went away (`| head`): nothing more to say
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                return 0
        else:
            fd, name = tmp
            tmp = (-1, name)  # the file object below closes the descriptor
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
                total, skipped = _stream(rows, _Writer(fmt, f, predictor.classes), args.batch_size)
            os.chmod(name, 0o666 & ~_umask())
            os.replace(name, args.out)
            tmp = None
            print(f"wrote {total - skipped} predictions to {args.out}", file=sys.stderr)
    finally:
        if tmp is not None:
            if tmp[0] >= 0:
                os.close(tmp[0])
            Path(tmp[1]).unlink(missing_ok=True)
    if skipped:
        print(f"{skipped} of {total} inputs skipped", file=sys.stderr)
    return 0


def _open_out(out: str) -> tuple[int, str]:
    """The temporary file the predictions go to before they replace ``out`` whole: made before
    any model is loaded, so an unwritable place is refused at once."""
    folder = Path(out).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{Path(out).name}.", dir=folder)
    except OSError as e:
        raise UserError(f"--out {out!r}: cannot write in {str(folder)!r} "
                        f"({e.strerror or e})") from None


def _stream(rows, writer: _Writer, batch_size: int) -> tuple[int, int]:
    """Write every row, flushing once per batch; (rows, skipped)."""
    total = skipped = 0
    for r in rows:
        if "error" in r:
            skipped += 1
            print(f"skipped: {r['error']}", file=sys.stderr)
        writer.row(r)
        total += 1
        if total % batch_size == 0:
            writer.f.flush()
    writer.close()
    return total, skipped


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
