"""Benchmark (issue 3): a tlsearch study on Rotten Tomatoes vs two baselines, on held-out snippets.

The split is the fixed one written by ``studies/data/make_rotten_tomatoes.py`` (1,500 training,
500 validation, 1,000 held-out test). Three numbers, each test accuracy on the 1,000 held-out
snippets:

* the best trial of a study of at most 20 trials (``studies/rotten-tomatoes-minilm.yaml``,
  selected on the validation snippets), rebuilt from its stored weights and run on raw strings;
* MiniLM's frozen mean-pooled features + logistic regression (trained on the 1,500);
* a from-scratch model with no pretraining: TF-IDF words and bigrams + logistic regression.

Run from the repository root (about 15-25 minutes on 2 CPU cores)::

    python benchmarks/text_rotten_tomatoes.py --n-trials 12
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pandas as pd

import common

REPO = Path(__file__).resolve().parent.parent
STUDY = REPO / "studies" / "rotten-tomatoes-minilm.yaml"
DATA = REPO / "studies" / "data" / "rotten-tomatoes"


def _frozen_baseline(source, train: pd.DataFrame, test: pd.DataFrame) -> float:
    from sklearn.linear_model import LogisticRegression

    from tlsearch.params import TrialParams

    bb = source.build("minilm_l6", TrialParams("minilm_l6", pooling="mean"))
    feats = [bb.model.predict(source.tokenize("minilm_l6", d["text"].to_numpy(object), 128),
                              batch_size=64, verbose=0) for d in (train, test)]
    clf = LogisticRegression(max_iter=2000).fit(feats[0], train["label"])
    return float(clf.score(feats[1], test["label"]))


def _scratch_baseline(train: pd.DataFrame, test: pd.DataFrame) -> float:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True),
                          LogisticRegression(C=10, max_iter=2000))
    return float(model.fit(train["text"], train["label"]).score(test["text"], test["label"]))


def _count_states(study) -> dict:
    from collections import Counter

    return dict(Counter(t.state for t in study.trials))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-trials", type=int, default=12, help="at most 20 (the issue's budget)")
    p.add_argument("--timeout", type=float, help="a time budget in seconds instead of a trial "
                   "count: trials start until it has passed (the issue's budget: 1800)")
    p.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    if not 1 <= args.n_trials <= 20:
        p.error("--n-trials must lie in 1..20")
    if args.timeout is not None and args.timeout <= 0:
        p.error("--timeout must be positive")

    from tlsearch.runner import loop
    from tlsearch.runner import prepare as st
    from tlsearch.search.artifacts import fetch_weights
    from tlsearch.search.attrs import ATTR, trial_params
    from tlsearch.config import load_config
    from tlsearch.search.progress import Progress
    from tlsearch.modalities.text import build_raw_text_model

    train, test = (pd.read_csv(DATA / f"{n}.csv") for n in ("train", "test"))
    budget = ({"n_trials": None, "timeout": args.timeout} if args.timeout
              else {"n_trials": args.n_trials})
    results: dict = {**budget, "test_snippets": len(test)}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(STUDY).model_copy(update={
            "storage": f"sqlite:///{tmp}/bench.db", "artifacts": Path(tmp) / "artifacts",
            **budget})
        prep = st.prepare(cfg)
        results["tfidf_logreg_from_scratch_test_accuracy"] = _scratch_baseline(train, test)
        t1 = time.perf_counter()
        results["frozen_minilm_logreg_test_accuracy"] = _frozen_baseline(prep.source, train, test)
        results["baseline_seconds"] = round(time.perf_counter() - t1, 1)
        print(json.dumps(results), flush=True)
        from rich.console import Console

        t0 = time.perf_counter()
        loop.run_trials(prep, Progress(Console(stderr=True), objective=cfg.objective, maximize=True,
                              epochs=(cfg.training.stage1_epochs, cfg.training.stage2_epochs),
                              timeout=cfg.timeout))
        results["study_seconds"] = round(time.perf_counter() - t0, 1)
        results["trials"] = {s.name.lower(): n for s, n in _count_states(prep.study).items()}
        best = prep.study.best_trial
        params = trial_params(best)
        results["best_trial"] = {"number": best.number, "val_accuracy": best.value,
                                 "params": best.user_attrs[ATTR["params"]]}
        model = build_raw_text_model(params, fetch_weights(best, prep.store), prep.data.n_classes,
                                     prep.source, seed=cfg.seed)
        probs = model.predict(test["text"].to_numpy(object), batch_size=64, verbose=0)
        pred = np.array(prep.data.class_names)[probs.argmax(1)]
        results["best_trial_test_accuracy"] = float((pred == test["label"].to_numpy()).mean())
    common.report(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
