"""Benchmark: the pruner judged on held-out test images, in the same wall-clock budget.

On the peer benchmark's data (Fashion-MNIST, the seeded samples of ``common.load_data``, the same
search space, EfficientNet-Lite0, 5 + 3 epochs), runs the tlsearch study for each seed with three
pruning settings, interleaved seed by seed so that machine load hits them alike:

* ``off``: ``pruner: {type: none}``;
* ``old_default``: the default before running bests were judged: the median pruner
  (``n_startup_trials: 3, n_warmup_steps: 2``, warm-up on the global step) asked from the first
  stage-2 epoch with stage-2 raw values only, start-up counting every completed trial, and asked at
  the last epoch too (reproduced here by :class:`OldStageAware`);
* ``new_default``: the study file with no ``pruner:`` section (tlsearch's default now).

Each study gets ``--budget-seconds`` (``timeout``: no trial starts after it, and a trial that ends
after it does not count). The chosen model is the best completed trial within the budget by
validation accuracy, rebuilt from its stored weights and scored once on test images no setting
used to choose. Reports each run's test accuracy, trials completed and pruned, and the stage-2
seconds spent on trials then pruned; per setting the mean and standard error over seeds.

Run from the repository root::

    python benchmarks/pruning_judged_on_test.py --budget-seconds 160 --seeds 0,1,2 --out pruning.json
    python benchmarks/pruning_judged_on_test.py --tiny      # tiny_cnn on the sample data, seconds
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402
import peers  # noqa: E402

SETTINGS = ("off", "old_default", "new_default")


def old_stage_aware(inner):
    """The wrapper as it was: stage-2 raw values at their global steps, every completed trial a
    competitor (start-up included), the wrapped pruner's warm-up on the global step."""
    import optuna

    from tlsearch.search.stage_pruning import STAGE2_ATTR, stage2_only

    class _View:
        def __init__(self, study):
            self._study = study

        def get_trials(self, deepcopy=True, states=None):
            return [stage2_only(t) for t in self._study.get_trials(deepcopy=False, states=states)]

        def _get_trials(self, deepcopy=True, states=None, use_cache=False):
            return self.get_trials(deepcopy, states)

        def __getattr__(self, name):
            return getattr(self._study, name)

    class OldStageAware(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            start, step = trial.user_attrs.get(STAGE2_ATTR), trial.last_step
            if start is None or step is None or step < int(start):
                return False
            return inner.prune(_View(study), stage2_only(trial))

    return OldStageAware()


@contextmanager
def _asked_at_every_epoch():
    """The objective as it was: the pruner is asked at the last epoch as well."""
    from tlsearch.search import study as st

    planned = st.planned_steps
    st.planned_steps = lambda *a, **k: 10**9
    try:
        yield
    finally:
        st.planned_steps = planned


def _one(setting: str, s: common.Settings, data: dict, budget: float, root: Path,
         max_trials: int | None, tiny: bool) -> dict:
    import optuna
    from rich.console import Console

    from tlsearch.config import load_config
    from tlsearch.runner import loop
    from tlsearch.runner import prepare as st
    from tlsearch.search.progress import Progress
    from tlsearch.search.stage_pruning import pruning_cost

    folder = root / f"{setting}-{s.seed}"
    folder.mkdir(parents=True)
    extra = {"backbones": ["tiny_cnn"],
             "search": {**common.tlsearch_space(), "unfreeze_blocks": {"low": 0, "high": 2}}} \
        if tiny else {}
    path = peers.tlsearch_study_file(s, data, folder, budget=budget, n_trials=max_trials,
                                     name="bench", **extra)
    cfg = load_config(path)
    if setting == "off":
        cfg = cfg.model_copy(update={"pruner": cfg.pruner.model_copy(update={"type": "none"})})
    progress = Progress(Console(stderr=True, quiet=True), objective=cfg.objective, live=False)
    t0, t0_wall = time.perf_counter(), time.time()
    prep = st.prepare(cfg)
    if setting == "old_default":
        prep.study.pruner = old_stage_aware(
            optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2))
        with _asked_at_every_epoch():
            loop.run_trials(prep, progress)
    else:
        loop.run_trials(prep, progress)
    wall = time.perf_counter() - t0
    trials = peers.tlsearch_trials(cfg.storage_url, "bench", 0.0, t0_wall)
    in_budget = [t for t in trials if t["finished_at"] <= budget + 1e-6]
    chosen = peers._chosen(trials, budget)
    test = None if chosen is None else peers._tlsearch_test_accuracy(path, chosen["number"], data)
    cost = pruning_cost(prep.study.get_trials(deepcopy=False))
    return {
        "setting": setting, "seed": s.seed, "wall_seconds": round(wall, 1),
        "completed": sum(t["state"] == "COMPLETE" for t in in_budget),
        "pruned": sum(t["state"] == "PRUNED" for t in in_budget),
        "pruned_stage2_seconds": cost["pruned_stage2_seconds"],
        "stage2_seconds": cost["stage2_seconds"],
        "chosen_trial": None if chosen is None else chosen["number"],
        "chosen_val_accuracy": None if chosen is None else round(chosen["val_accuracy"], 4),
        "test_accuracy": None if test is None else round(test, 4),
    }


def _mean_se(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else None
    return round(statistics.fmean(xs), 4), None if se is None else round(se, 4)


def summarize(rows: list[dict]) -> dict:
    out = {}
    for setting in SETTINGS:
        mine = [r for r in rows if r["setting"] == setting]
        tests = [r["test_accuracy"] for r in mine if r["test_accuracy"] is not None]
        mean, se = _mean_se(tests)
        out[setting] = {
            "test_accuracy_mean": mean, "test_accuracy_se": se, "seeds": len(mine),
            "completed_mean": round(statistics.fmean(r["completed"] for r in mine), 1),
            "pruned_mean": round(statistics.fmean(r["pruned"] for r in mine), 1),
            "pruned_stage2_seconds_mean": round(
                statistics.fmean(r["pruned_stage2_seconds"] for r in mine), 1),
        }
    new = out["new_default"]
    for other in ("off", "old_default"):
        o = out[other]
        if new["test_accuracy_mean"] is None or o["test_accuracy_mean"] is None:
            continue
        diff = new["test_accuracy_mean"] - o["test_accuracy_mean"]
        se = new["test_accuracy_se"] or 0.0
        new[f"minus_{other}"] = round(diff, 4)
        new[f"at_least_as_good_as_{other}"] = diff >= -se  # better, or within one standard error
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-seconds", type=float, default=160.0)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--max-trials", type=int, default=None, help="also stop a study at N trials")
    p.add_argument("--n-train", type=int, default=common.FULL.n_train)
    p.add_argument("--n-val", type=int, default=common.FULL.n_val)
    p.add_argument("--image-size", type=int, default=common.FULL.image_size)
    p.add_argument("--tiny", action="store_true", help="tiny_cnn on the sample data, seconds")
    p.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    seeds = [int(x) for x in args.seeds.split(",")]
    if args.tiny:
        seeds = seeds[:1]
        budget, max_trials = 60.0, args.max_trials or 4
        base = replace(common.TINY, stage1_epochs=2, stage2_epochs=3)
    else:
        budget, max_trials = args.budget_seconds, args.max_trials
        base = replace(common.FULL, n_train=args.n_train, n_val=args.n_val,
                       image_size=args.image_size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            s = replace(base, seed=seed)
            data = common.load_data(s)
            for setting in SETTINGS:  # interleaved: load hits every setting alike
                rows.append(_one(setting, s, data, budget, Path(tmp), max_trials, args.tiny))
                print(rows[-1], file=sys.stderr, flush=True)
    common.report({"budget_seconds": budget, "max_trials": max_trials, "seeds": seeds,
                   "settings": base.to_dict(), "data_source": data["source"],
                   "summary": summarize(rows), "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
