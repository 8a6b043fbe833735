"""Benchmark (issue 16): pruning that waits for stage 2 vs pruning during stage 1, on the quickstart.

Runs ``studies/quickstart.yaml`` twice with the same trial budget, seed and sampler, once with
the default pruner (the study's median pruner, asked only from each trial's first stage-2 epoch,
on stage-2 steps) and once with ``pruner.prune_stage1: true`` (the same median pruner on whole
curves, as before). Each study lives in a temporary folder; the frozen features are computed once
and shared through the feature cache (the first study pays for them). Reports, for each: the best
validation loss and accuracy, how many trials were pruned and in which stage, how many reached
stage 2, and the wall time (the default runs first, with a cold cache: its time includes the
feature computation).

Run from the repository root::

    python benchmarks/quickstart_pruning.py --out quickstart-pruning.json

On a busy 2-core machine (load about 7) the default setting's 12 trials took 577 s, and both
settings together more than 15 minutes; ``--n-trials N`` runs a smaller budget for both.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import common

REPO = Path(__file__).resolve().parent.parent
STUDY = REPO / "studies" / "quickstart.yaml"


def _one(cfg, tmp: Path, prune_stage1: bool) -> dict:
    from rich.console import Console

    from tlsearch.runner import loop
    from tlsearch.runner import prepare as st
    from tlsearch.search.attrs import ATTR
    from tlsearch.search.progress import Progress

    label = "prune_stage1" if prune_stage1 else "default"
    cfg = cfg.model_copy(update={
        "name": f"quickstart-{label}", "storage": f"sqlite:///{tmp}/{label}.db",
        "artifacts": tmp / f"{label}-artifacts",
        "pruner": cfg.pruner.model_copy(update={"prune_stage1": prune_stage1})})
    t0 = time.perf_counter()
    prep = st.prepare(cfg)
    loop.run_trials(prep, Progress(Console(stderr=True), objective=cfg.objective, mode="plain",
                          label=label, epochs=(cfg.training.stage1_epochs,
                                               cfg.training.stage2_epochs)))
    seconds = time.perf_counter() - t0
    trials = prep.study.get_trials(deepcopy=False)
    best = prep.study.best_trial
    history = best.user_attrs[ATTR["history"]]
    at = next(r for r in history if r["step"] == best.user_attrs[ATTR["best_step"]])
    s1 = cfg.training.stage1_epochs
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    return {
        "setting": label,
        "trials": len(trials),
        "best_trial": best.number,
        "best_val_loss": round(float(best.value), 4),
        "best_val_accuracy": round(float(at["val_accuracy"]), 4),
        "best_unfreeze_blocks": best.user_attrs[ATTR["params"]].get("unfreeze_blocks"),
        "best_stage": best.user_attrs[ATTR["best_stage"]],
        "pruned_in_stage1": sum(1 for t in pruned if (t.last_step or 0) < s1),
        "pruned_in_stage2": sum(1 for t in pruned if (t.last_step or 0) >= s1),
        "reached_stage2": sum(1 for t in trials if ATTR["stage2_step"] in t.user_attrs),
        "wall_seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-trials", type=int, default=None, help="default: the quickstart's")
    p.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = p.parse_args(argv)

    from tlsearch.config import load_config

    cfg = load_config(STUDY)
    if args.n_trials:
        cfg = cfg.model_copy(update={"n_trials": args.n_trials})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TLSEARCH_CACHE_DIR"] = str(Path(tmp) / "cache")  # cold: the first study pays
        for prune_stage1 in (False, True):
            rows.append(_one(cfg, Path(tmp), prune_stage1))
            print(json.dumps(rows[-1]), flush=True)
    common.report({"study": "studies/quickstart.yaml", "n_trials": cfg.n_trials,
                   "seed": cfg.seed, "pruner": cfg.pruner.model_dump(), "rows": rows},
                  args.out, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
