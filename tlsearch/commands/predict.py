"""tlsearch predict DIR INPUT...: label and probability for each input, printed or written."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from tlsearch.errors import UserError


def add_parser(sub):
    p = sub.add_parser("predict", help="predict with an exported model")
    p.add_argument("model", help="the folder written by `tlsearch export`")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files or folders of images; for text models, CSV files (a `text` "
                        "column) or text files (one text a line)")
    p.add_argument("--out", help="write all predictions to this .csv or .json file")
    p.add_argument("--batch-size", type=int, default=64, help="inputs read and run at once")
    p.add_argument("--skip-errors", action="store_true",
                   help="report unreadable inputs and go on with the rest")
    return p


def run(args) -> int:
    from tlsearch._quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    from tlsearch.export.predict import load

    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise UserError(f"--out {args.out!r}: expected a file ending in .csv or .json")
    predictor = load(args.model)
    rows = []
    skipped = 0
    for row in predictor.iter_predict([Path(p) for p in args.inputs], batch_size=args.batch_size,
                                      skip_errors=args.skip_errors):
        if "error" in row:
            skipped += 1
            print(f"skipped: {row['error']}", file=sys.stderr)
        elif out is None:
            print(f"{row['input']}\t{row['label']}\t{row['probability']:.4f}", flush=True)
        rows.append(row)
    if out is not None:
        _write(out, rows, predictor.classes)
        print(f"wrote {len(rows) - skipped} predictions to {out}", file=sys.stderr)
    if skipped:
        print(f"{skipped} of {len(rows)} inputs skipped", file=sys.stderr)
    return 0


def _write(path: Path, rows: list[dict], classes: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
        return
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["input", "label", "probability", *[f"p_{c}" for c in classes], "error"])
        for r in rows:
            if "error" in r:
                w.writerow([r["input"], "", "", *[""] * len(classes), r["error"]])
            else:
                w.writerow([r["input"], r["label"], f"{r['probability']:.6f}",
                            *[f"{r['probabilities'][c]:.6f}" for c in classes], ""])
