"""Benchmark: how well each label-free criterion ranks domain-adaptation trials.

One Optuna study on Fashion-MNIST -> Fashion-MNIST-M, on the frozen EfficientNet-Lite0 features
of :mod:`domain_adaptation` (computed once and cached): each trial trains the head either plainly
on the source labels (``lambda_max`` off) or as a DANN, on the source training split and three
quarters of the unlabelled target training split, as a study's stage 1 does
(:func:`tlsearch.train.dann_stage.target_split`). Each trial's last epoch is then judged by
tlsearch's own :func:`~tlsearch.train.dann_stage.domain_report` (the source validation split and
the held-out quarter of the target), which computes every label-free criterion, and scored on the
labelled target test split, which no criterion sees. The study samples its parameters at random
(its value is not used to steer it), so the criteria are compared on the same trials.

For each criterion the script prints Spearman's rank correlation of ``-criterion`` (all are lower
is better) with target test accuracy (+1 ranks the trials exactly as their target accuracy, 0 is
chance), a 90% bootstrap interval of it over the trials, and the target test accuracy of the
trial each criterion would have chosen. ``val_loss`` (the source validation loss) and
``dev_risk`` are shown for comparison.

    python benchmarks/domain_selection.py --out benchmarks/results/domain-selection

About 10 minutes for 30 trials on 2 busy CPU cores; ``--tiny`` checks the script in a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import domain_adaptation as da  # noqa: E402
import make_fashion_mnist_m as fmm  # noqa: E402

CRITERIA = ("reverse_validation", "iwv", "entropy", "info_max", "bound_proxy", "dev_risk",
            "val_loss")
SIZES = {"source_train": 1500, "source_val": 500, "source_test": 100, "target_train": 1500,
         "target_val": 100, "target_test": 1000}


def train_trial(f: dict, params: dict, a, seed: int) -> dict:
    """The head of one trial, plain or DANN, as ``{layer name: weights}``."""
    import keras

    from tlsearch.train.dann import DANN, fit_dann
    from tlsearch.train.dann_stage import target_split

    keras.utils.set_random_seed(seed)
    extractor, head = da._head_layers(params["head_width"], a.dropout, 10, seed)
    if params["lambda_max"] == "off":
        inp = keras.Input((f["source_train_x"].shape[1],))
        model = keras.Model(inp, head(extractor(inp)))
        model.compile(keras.optimizers.Adam(params["lr"]), loss="sparse_categorical_crossentropy")
        model.fit(f["source_train_x"], f["source_train_y"], epochs=a.epochs,
                  batch_size=a.batch_size, verbose=0, shuffle=True)
    else:
        x_t = f["target_train_x"][target_split(len(f["target_train_x"]), a.seed)[0]]
        model = DANN(extractor, head, domain_width=params["domain_width"],
                     lambda_max=float(params["lambda_max"]), gamma=params["gamma"], seed=seed)
        model.compile(keras.optimizers.Adam(params["lr"]))
        y = keras.utils.to_categorical(f["source_train_y"], 10)
        fit_dann(model, f["source_train_x"], y, x_t, epochs=a.epochs, batch_size=a.batch_size,
                 seed=seed)
    return {"clf_dense": extractor.get_weights(), "clf_out": head.layers[-1].get_weights()}


def judge(f: dict, weights: dict, params: dict, a) -> dict:
    """tlsearch's domain record of the trial, label-free (as a study without target labels)."""
    from tlsearch.train.dann_stage import domain_report, head_outputs

    state = SimpleNamespace(
        params=SimpleNamespace(backbone="efficientnet_lite0", domain_lambda_max=params["lambda_max"]),
        schedule=SimpleNamespace(seed=a.seed),
        data=SimpleNamespace(y_val=f["source_val_y"], y_train=f["source_train_y"],
                             target_validation=None, n_classes=10),
        source=SimpleNamespace(frozen_outputs=lambda *_: (f["source_train_x"], f["source_val_x"]),
                               target_outputs=lambda *_: f["target_train_x"]))
    rec = domain_report(state, weights)
    _, probs = head_outputs(weights, f["target_test_x"])
    rec["target_test_accuracy"] = float(np.mean(probs.argmax(1) == f["target_test_y"]))
    return rec


def spearman(criterion: list[float], accuracy: list[float]) -> float | None:
    from scipy.stats import spearmanr

    c, acc = np.asarray(criterion, dtype=float), np.asarray(accuracy, dtype=float)
    ok = np.isfinite(c)
    if ok.sum() < 3 or np.ptp(c[ok]) == 0 or np.ptp(acc[ok]) == 0:
        return None
    return float(spearmanr(-c[ok], acc[ok]).statistic)


def interval(criterion: list[float], accuracy: list[float], seed: int,
             n: int = 1000) -> tuple[float, float] | None:
    """A 90% bootstrap interval of :func:`spearman` over the trials (resampled with replacement)."""
    c, acc = np.asarray(criterion, dtype=float), np.asarray(accuracy, dtype=float)
    rng = np.random.default_rng(seed)
    draws = [spearman(c[i], acc[i]) for i in (rng.integers(0, len(c), len(c)) for _ in range(n))]
    draws = [d for d in draws if d is not None and np.isfinite(d)]
    return (float(np.quantile(draws, 0.05)), float(np.quantile(draws, 0.95))) if draws else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=None,
                    help="where the data and the cached features go (default: --out)")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="a minute-long check of the script")
    a = ap.parse_args(argv)
    sizes = dict(SIZES)
    if a.tiny:
        sizes = {s: 120 for s in fmm.SPLITS}
        a.image_size, a.epochs, a.trials = 32, 2, 4
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    a.out.mkdir(parents=True, exist_ok=True)
    work = a.work or a.out
    work.mkdir(parents=True, exist_ok=True)
    data_dir = work / "fashion-mnist-m"
    t0 = time.perf_counter()
    if not (data_dir / "meta.json").is_file():
        fmm.build(data_dir, seed=a.seed, sizes=sizes)
    f = da.compute_features(data_dir, a.image_size, work, a.seed)
    print(f"features: {int(f['n_images'])} images in {float(f['seconds']):.0f} s", flush=True)
    trials = []

    def objective(trial):
        params = {"lambda_max": trial.suggest_categorical("lambda_max",
                                                          ["off", 0.03, 0.1, 0.3, 1.0]),
                  "gamma": trial.suggest_float("gamma", 2.0, 20.0, log=True),
                  "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
                  "head_width": trial.suggest_categorical("head_width", [64, 128, 256]),
                  "domain_width": trial.suggest_categorical("domain_width", [64, 128])}
        t = time.perf_counter()
        rec = judge(f, train_trial(f, params, a, a.seed + trial.number), params, a)
        rec.update(number=trial.number, params=params, seconds=time.perf_counter() - t)
        trials.append(rec)
        print(f"  trial {trial.number}: lambda_max {params['lambda_max']} target test "
              f"{rec['target_test_accuracy']:.3f} " + " ".join(
                  f"{k} {rec[k]:.3f}" for k in CRITERIA if rec.get(k) is not None)
              + f" ({rec['seconds']:.0f} s)", flush=True)
        return rec["target_test_accuracy"]  # recorded only: the sampler is random

    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=a.seed))
    study.optimize(objective, n_trials=a.trials)
    acc = [r["target_test_accuracy"] for r in trials]
    rows = []
    for k in CRITERIA:
        vals = [np.nan if r.get(k) is None else float(r[k]) for r in trials]
        pick = trials[int(np.nanargmin(vals))] if np.isfinite(vals).any() else None
        rows.append({"criterion": k, "spearman": spearman(vals, acc),
                     "interval_90": interval(vals, acc, a.seed),
                     "chosen_trial": None if pick is None else pick["number"],
                     "chosen_target_test_accuracy": None if pick is None
                     else pick["target_test_accuracy"]})
    import keras
    import tensorflow as tf

    res = {"settings": {k: str(v) for k, v in vars(a).items() if k not in ("out", "work")},
           "sizes": sizes, "trials": trials, "criteria": rows,
           "machine": {"cpus": os.cpu_count(), "tensorflow": tf.__version__,
                       "keras": keras.__version__, "date": date.today().isoformat()},
           "total_seconds": time.perf_counter() - t0}
    n_adapted = sum(r["adapted"] for r in trials)
    def ci(r):
        return "" if r["interval_90"] is None else \
            " [{:+.2f}, {:+.2f}]".format(*r["interval_90"])

    lines = ["| criterion | Spearman with target test accuracy [90% bootstrap interval] | "
             "target test accuracy of its choice |", "|---|---|---|"]
    lines += [f"| {r['criterion']} | " + ("n/a" if r["spearman"] is None else f"{r['spearman']:+.2f}")
              + ci(r) + f" | {r['chosen_target_test_accuracy']:.3f} (trial {r['chosen_trial']}) |"
              for r in rows if r["chosen_trial"] is not None]
    lines += ["", f"{len(trials)} trials ({n_adapted} adapted, {len(trials) - n_adapted} plain); "
                  f"target test accuracy min {min(acc):.3f}, median {float(np.median(acc)):.3f}, "
                  f"max {max(acc):.3f}; {res['total_seconds']:.0f} s in all."]
    (a.out / "results.json").write_text(json.dumps(res, indent=1, default=float))
    (a.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
