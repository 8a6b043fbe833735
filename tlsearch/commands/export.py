"""tlsearch export STUDY --out DIR: the best trial (or one asked for) as production files."""

from __future__ import annotations

import argparse
import json
import sys

from tlsearch.config import load_config
from tlsearch.errors import UserError


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
    p.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                   help="export the trial refit on training + validation data (refit now if the "
                        "study has none stored); default: the study file's `final.refit`; "
                        "with --ensemble: each member refit, once chosen")
    p.add_argument("--ensemble", type=int, metavar="K",
                   help="export an ensemble of up to K complete trials, chosen by greedy "
                        "selection with replacement on their validation predictions (as trained "
                        "in the search unless --refit)")
    p.add_argument("--json", action="store_true",
                   help="print what was written as JSON on stdout (the folder, the trial, each "
                        "format's status; a refit's or an ensemble's record, the test figures)")
    return p


def run(args) -> int:
    from tlsearch._quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    from tlsearch.commands.run import storage_override
    from tlsearch.export.exporter import export_study

    cfg = load_config(args.study)
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    refit = cfg.final.refit if args.refit is None else args.refit

    def log(line: str) -> None:
        print(line, file=sys.stderr)

    if args.ensemble is not None:
        if args.trial is not None:
            raise UserError("`--ensemble K` chooses its trials itself; leave out `--trial`")
        from tlsearch.export.ensemble import export_ensemble

        # members as trained in the search unless --refit is given (final.refit is the chosen
        # trial's, not an ensemble's)
        result = export_ensemble(cfg, args.out, args.ensemble, url=storage_override(args),
                                 formats=formats, force=args.force, log=log,
                                 refit=bool(args.refit))
    elif refit:
        from tlsearch.export.refit import export_refit

        result = export_refit(cfg, args.out, trial=args.trial, url=storage_override(args),
                              formats=formats, force=args.force, log=log)
    else:
        result = export_study(cfg, args.out, trial=args.trial, url=storage_override(args),
                              formats=formats, force=args.force, log=log)
    if args.json:
        meta = result.metadata
        print(json.dumps({
            "out": str(result.out_dir), "study": meta.get("study"), "trial": result.trial,
            "objective": meta.get("objective"), "value": meta.get("value"),
            "best_step": result.best_step, "best_stage": result.best_stage,
            "classes": meta.get("classes"), "formats": result.formats,
            **{k: meta[k] for k in ("refit", "ensemble", "test") if k in meta},
        }, indent=2))
    return 0
