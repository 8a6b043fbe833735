"""tlsearch validate STUDY: check a study file and show the search space as Optuna will see it."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from tlsearch import space
from tlsearch._urls import redact_url
from tlsearch.config import load_config
from tlsearch.errors import UserError
from tlsearch.modalities import modality_of


def add_parser(sub):
    p = sub.add_parser("validate", help="check a study file and print the resolved search space")
    p.add_argument("study", help="the study file (YAML)")
    p.add_argument("--data", action="store_true", help="also read and check every data file")
    p.add_argument("--json", action="store_true", help="print the resolved config as JSON")
    p.add_argument("--estimate", action="store_true",
                   help="time a few batches per backbone and unfreeze depth on this machine and "
                        "print the expected seconds per trial (reads the data)")
    p.add_argument("--estimate-depths", type=int, metavar="N",
                   help="with --estimate: time N depths per backbone (the shallowest and "
                        "deepest among them), interpolate the rest (default 6)")
    return p


def run(args) -> int:
    cfg = load_config(args.study)
    modality_name = modality_of(cfg.backbone_entries).name  # refuses image and text mixed

    if args.json:
        resolved = json.loads(cfg.model_dump_json(exclude={"base_dir"}))
        resolved["storage"] = redact_url(cfg.storage_url)
        if (resolved.get("tracking") or {}).get("mlflow"):
            mlflow = resolved["tracking"]["mlflow"]
            mlflow["tracking_uri"] = redact_url(mlflow["tracking_uri"])
        print(json.dumps(resolved, indent=2))
        return 0
    out = Console()
    out.print(f"[bold]{args.study}[/]: valid study [bold]{cfg.name}[/] ({modality_name})")
    out.print(f"  storage    {redact_url(cfg.storage_url)}")
    out.print(f"  artifacts  {cfg.artifact_dir}")
    out.print(f"  objective  {cfg.objective} ({cfg.direction})   budget: "
              f"{cfg.n_trials or '-'} trials, timeout {cfg.timeout or '-'} s")
    out.print(f"  sampler    {cfg.sampler.type}   pruner {cfg.pruner.type}")
    out.print(f"  schedule   stage 1: {cfg.training.stage1_epochs} epochs, stage 2: "
              f"{cfg.training.stage2_epochs} epochs, batch {cfg.training.batch_size}")
    t = Table(title="search space (as Optuna sees it)", show_lines=False)
    t.add_column("parameter")
    t.add_column("distribution")
    for name, d in space.distributions(cfg, modality_name).items():
        text = repr(d)
        if name == "unfreeze_blocks":
            text += "  (upper bound capped per backbone)"
        t.add_row(name, text)
    for name, v in space.fixed_values(cfg, modality_name).items():
        t.add_row(name, f"fixed: {v!r}")
    out.print(t)
    prep = None
    if args.data or args.estimate:
        from tlsearch._quiet import import_tensorflow_quietly
        from tlsearch.search.inputs import check_inputs

        import_tensorflow_quietly()
        prep = check_inputs(cfg)
        data = prep[1]
        out.print(f"  data       {data.summary()}; classes {data.class_names}")
    if args.estimate:
        from tlsearch.search.estimate import estimate
        from tlsearch.search.estimate_text import format_estimate

        if args.estimate_depths is not None and args.estimate_depths < 2:
            raise UserError(f"`--estimate-depths`: expected 2 or more, got {args.estimate_depths}")
        for line in format_estimate(estimate(cfg, depths=args.estimate_depths or 6, prep=prep)):
            out.print(line, highlight=False, soft_wrap=True)
    return 0
