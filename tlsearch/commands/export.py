"""tlsearch export STUDY --out DIR: the best trial (or one asked for) as production files."""

from __future__ import annotations

import json
import sys

from tlsearch.config import load_config


def add_parser(sub):
    p = sub.add_parser("export", help="export the best trial's model (Keras, SavedModel, ONNX, "
                                      "LiteRT) with its metadata")
    p.add_argument("study", help="the study file (YAML)")
    p.add_argument("--out", required=True, help="the folder to write (must be new or empty)")
    p.add_argument("--trial", type=int, help="export this trial number instead of the best")
    p.add_argument("--storage", help="database URL (overrides the study file and $TLSEARCH_STORAGE)")
    p.add_argument("--formats", default="onnx,litert",
                   help="optional formats besides Keras and SavedModel, comma-separated "
                        "(default: onnx,litert; '' for none)")
    p.add_argument("--force", action="store_true", help="replace an earlier export in --out")
    p.add_argument("--json", action="store_true",
                   help="print what was written as JSON on stdout (the folder, the trial, each "
                        "format's status)")
    return p


def run(args) -> int:
    from tlsearch._quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    from tlsearch.commands.run import storage_override
    from tlsearch.export.exporter import export_study

    cfg = load_config(args.study)
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    result = export_study(cfg, args.out, trial=args.trial, url=storage_override(args),
                          formats=formats, force=args.force, log=lambda m: print(m, file=sys.stderr))
    if args.json:
        meta = result.metadata
        print(json.dumps({
            "out": str(result.out_dir), "study": meta.get("study"), "trial": result.trial,
            "objective": meta.get("objective"), "value": meta.get("value"),
            "best_step": result.best_step, "best_stage": result.best_stage,
            "classes": meta.get("classes"), "formats": result.formats,
        }, indent=2))
    return 0
