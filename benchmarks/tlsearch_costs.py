"""What a tlsearch study costs as it grows: RSS and time over many trials, data size, backbones.

``rss``: one process runs N stage-1-only trials (``unfreeze_blocks: 0``, no pruning) through the same
code as ``tlsearch run`` and records the resident set size and the clock after every trial. Memory
that grows trial after trial is the complaint users have of KerasTuner and Optuna loops (ANCHORS
trap 4); the clock gives the cost per added trial.

``sweep``: small studies of stage-1-only trials at several training-set sizes, and with one and two
backbones (the second, MobileNetV2 with random weights, costs what it would with ImageNet weights,
which cannot be loaded offline). Each study starts with a cold feature cache, so its time includes
the forward passes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import common
from common import Settings
from peers import forward_seconds, tlsearch_study_file

STAGE1_ONLY = {**common.tlsearch_space(), "unfreeze_blocks": 0}


def _run_study(path: Path, on_trial_end=None) -> dict:
    """``tlsearch run`` in this process, quietly, calling ``on_trial_end(number)`` after each trial."""
    from rich.console import Console

    from tlsearch.runner import loop
    from tlsearch.runner import prepare as st
    from tlsearch.config import load_config
    from tlsearch.search.progress import Progress

    class _Recorder(Progress):
        def trial_end(self, number, state, value, note=""):
            super().trial_end(number, state, value, note)
            if on_trial_end is not None:
                on_trial_end(number)

    cfg = load_config(path)
    t0 = time.perf_counter()
    prep = st.prepare(cfg, warn=lambda *a, **k: None)
    progress = _Recorder(Console(file=open("/dev/null", "w"), quiet=True), objective=cfg.objective,
                         maximize=cfg.direction == "maximize")
    summary = loop.run_trials(prep, progress)
    return {"seconds": time.perf_counter() - t0, "trials": summary["trials"]}


def rss_run(s: Settings, n_trials: int) -> dict:
    """RSS and elapsed time after each of ``n_trials`` stage-1-only trials in one process."""
    data = common.load_data(s)
    points: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = tlsearch_study_file(s, data, Path(tmp), n_trials=n_trials, search=STAGE1_ONLY,
                                   name="rss")
        _patch_pruner_none(path)
        rss0 = common.rss_mb()
        t0 = time.perf_counter()
        out = _run_study(path, lambda n: points.append(
            {"trial": n, "rss_mb": common.rss_mb(), "seconds": time.perf_counter() - t0}))
    first, last = points[0], points[-1]
    per_trial = ((last["seconds"] - first["seconds"]) / (len(points) - 1)) if len(points) > 1 else None
    return {
        "trials": len(points), "rss_before_mb": rss0, "rss_after_first_mb": first["rss_mb"],
        "rss_after_last_mb": last["rss_mb"], "rss_growth_mb": last["rss_mb"] - first["rss_mb"],
        "first_trial_seconds": first["seconds"], "seconds_per_added_trial": per_trial,
        "study_seconds": out["seconds"], "points": points,
    }


def _patch_pruner_none(path: Path) -> None:
    import yaml

    study = yaml.safe_load(path.read_text())
    study["pruner"] = {"type": "none"}
    study["sampler"] = {"type": "random"}
    path.write_text(yaml.safe_dump(study, sort_keys=False))


def sweep_run(s: Settings, sizes: list[int], n_trials: int) -> dict:
    """Study time against training-set size (one backbone) and against one vs two backbones."""
    rows = []
    for n in sizes:
        si = replace(s, n_train=n, n_val=max(n // 2, 10 * 2))
        rows.append({"kind": "data", "n_train": si.n_train, "n_val": si.n_val, "backbones": 1,
                     **_timed_study(si, n_trials, [common.BACKBONE])})
    two = [common.BACKBONE, {"name": "mobilenet_v2", "weights": "none"}]
    rows.append({"kind": "backbones", "n_train": s.n_train, "n_val": s.n_val, "backbones": 2,
                 **_timed_study(s, n_trials, two)})
    return {"trials_per_study": n_trials, "rows": rows}


def _timed_study(s: Settings, n_trials: int, backbones: list) -> dict:
    data = common.load_data(s)
    with tempfile.TemporaryDirectory() as tmp:
        path = tlsearch_study_file(s, data, Path(tmp), n_trials=n_trials, search=STAGE1_ONLY,
                                   backbones=backbones, name="sweep")
        _patch_pruner_none(path)
        out = _run_study(path)
    return {"study_seconds": out["seconds"], "forward_seconds_one_backbone": forward_seconds(s, data)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["rss", "sweep"])
    ap.add_argument("--settings", default="{}", help="JSON overrides of common.Settings")
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--sizes", default="500,1000,2000")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    s = common.settings_from(json.loads(a.settings))
    if a.what == "rss":
        result = rss_run(s, a.trials)
    else:
        result = sweep_run(s, [int(v) for v in a.sizes.split(",")], a.trials)
    a.out.write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
