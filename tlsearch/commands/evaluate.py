"""tlsearch evaluate EXPORT_DIR DATA: an exported model on labelled data it never saw."""

from __future__ import annotations

import json


def add_parser(sub):
    p = sub.add_parser("evaluate", help="evaluate an exported model on labelled data (accuracy, "
                                        "loss, per-class precision/recall/F1, macro AUC)")
    p.add_argument("export", help="a folder written by `tlsearch export`")
    p.add_argument("data", help="labelled data in a supported format: a folder of class folders, "
                                ".npz, CSV, Parquet or JSON Lines")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return p


def run(args) -> int:
    from tlsearch._quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    from tlsearch.export.evaluate import evaluate_export, format_evaluation

    result = evaluate_export(args.export, args.data)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_evaluation(result, f"{args.export} on {args.data}"))
    return 0
