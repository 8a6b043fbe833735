"""Benchmark (issue 12): how much cheaper a stage-1-only trial is in tlsearch than in a plain loop, in one run.

Both sides train the same head (dense, dropout, softmax) on the same frozen EfficientNet-Lite0,
the same data (the benchmark's 2,000 + 1,000 Fashion-MNIST images at 96 px) and the same
schedule (``stage1_epochs`` epochs of batch 32), one after the other in this one process:

* **plain loop:** what the Optuna and Keras examples write, the full network with the frozen
  backbone in inference mode, ``model.fit`` per trial (``--plain-trials`` of them, each timed
  from building the model to the end of its last epoch);
* **tlsearch:** ``tlsearch run``'s code path on a study whose trials are all stage-1-only
  (``--trials`` of them, random sampler, no pruning): the first trial pays the forward pass that
  fills the feature cache, every later one trains a pooled head on the cached features.

The ratio is the plain loop's median trial over tlsearch's seconds per added (warm) trial; the
amortised ratio also charges tlsearch's first trial (the forward pass) to the N trials.

Run from the repository root (about 4 minutes on 2 CPU cores)::

    python benchmarks/stage1_ratio.py --plain-trials 2 --trials 30 --out stage1.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import common
from tlsearch_costs import rss_run


def plain_trials(s: common.Settings, data: dict, n: int) -> list[float]:
    """Seconds per stage-1-only trial of the plain loop, ``n`` trials, default parameters."""
    import keras

    params = {**common.DEFAULT_PARAMS, "unfreeze_blocks": 0}
    out = []
    for i in range(n):
        keras.backend.clear_session()
        keras.utils.set_random_seed(s.seed + i)
        t0 = time.perf_counter()
        model, _ = common.build_two_stage(params, s, len(data["class_names"]))
        common.compile_model(model, params["lr_stage1"])
        model.fit(data["x_train"], data["y_train"], validation_data=(data["x_val"], data["y_val"]),
                  batch_size=s.batch_size, epochs=s.stage1_epochs, verbose=0)
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="{}", help="JSON overrides of common.Settings")
    ap.add_argument("--plain-trials", type=int, default=2)
    ap.add_argument("--trials", type=int, default=30, help="tlsearch stage-1-only trials")
    ap.add_argument("--tiny", action="store_true", help="CI: tiny data (checks the script only)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    s = common.TINY if a.tiny else common.settings_from(json.loads(a.settings))
    data = common.load_data(s)
    t0 = time.perf_counter()
    plain = plain_trials(s, data, a.plain_trials)
    mine = rss_run(s, a.trials)
    plain_median = statistics.median(plain)
    warm = mine["seconds_per_added_trial"]
    total_mine = mine["points"][-1]["seconds"]
    result = {
        "settings": s.to_dict(),
        "plain_loop_trial_seconds": [round(v, 2) for v in plain],
        "tlsearch_first_trial_seconds": round(mine["first_trial_seconds"], 2),
        "tlsearch_seconds_per_added_trial": round(warm, 3) if warm else None,
        "tlsearch_trials": mine["trials"],
        "ratio_warm": round(plain_median / warm, 1) if warm else None,
        "ratio_amortised": round(plain_median * mine["trials"] / total_mine, 1),
        "rss_growth_mb": round(mine["rss_growth_mb"], 1),
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    common.report(result, a.out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
