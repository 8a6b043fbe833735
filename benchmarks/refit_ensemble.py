"""Benchmark (issue 21): beyond the single best trial. The best single trial of one search
against its refit on training + validation data, ensembles of K = 3 and 5 trials, and an ensemble
of 5 whose members are refit (both), all from the same search, judged on held-out test data.

Three setups (``--setup``):

* ``quickstart``: the quickstart study (EfficientNet-Lite0, 600 Fashion-MNIST images, 400
  held-out test images in ``studies/data/fashion-test``), its 12 trials;
* ``peer``: the peer benchmark's data and space (``benchmarks/common.py``: 2,000 training and
  1,000 validation Fashion-MNIST images at 96 px, 1,000 held-out test images, 5 + 3 epochs, up to
  all 18 blocks, objective validation accuracy), searched for ``--budget-seconds`` (default 240,
  the peer benchmark's budget);
* ``text``: ``studies/rotten-tomatoes-minilm.yaml`` (1,500 training and 500 validation snippets,
  1,000 held-out test snippets) searched for ``--budget-seconds``.

For each seed the study is run once (``tlsearch run``, timed; a study already complete in the
output folder is reused), then each model is exported as a user would (``tlsearch export``, a
fresh process, timed, ``--formats ''``):

* ``best``: the best trial (``--no-refit``); ``refit``: ``--refit`` (its training time is in the
  export's, and in ``refit.seconds``); ``ensemble5``, ``ensemble3``: ``--ensemble K`` (the first
  computes every complete trial's validation probabilities and keeps them; the second reads them
  back, so its extra seconds are the cost of a later ensemble); ``ensemble5_refit``:
  ``--ensemble 5 --refit`` (the same members and weights as ``ensemble5``, each member refit; the
  best trial's refit is the one ``refit`` stored).

Each export is then loaded (``tlsearch.load``) and predicts the test examples; the figures are
test accuracy with its binomial standard error, the paired difference from the best trial (mean
and standard error of the per-example difference in correctness: the same examples judge both),
test loss, the measured inference time per example (best of 5 batches of 32, each model in turn),
and the size of ``model.keras``. A refit's seconds come on top of the search's: the total
seconds of each model (search + its export) are in the results.

Run from the repository root (2 CPU cores: the quickstart is about 6 minutes of study and 8 of
exports a seed)::

    python benchmarks/refit_ensemble.py --seeds 0 --out refit-ensemble
    python benchmarks/refit_ensemble.py --setup peer --seeds 0,1,2 --out refit-ensemble-peer
    python benchmarks/refit_ensemble.py --setup text --budget-seconds 600 --out refit-ensemble-text
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this repository's tlsearch judges the exports, as it wrote them
STUDY = REPO / "studies" / "quickstart.yaml"
TEXT_STUDY = REPO / "studies" / "rotten-tomatoes-minilm.yaml"
#: what is exported, and the export command's extra arguments; the first ensemble computes the
#: trials' validation probabilities (and keeps them), the second reads them back
VARIANTS = {"best": ["--no-refit"], "refit": ["--refit"], "ensemble5": ["--ensemble", "5"],
            "ensemble3": ["--ensemble", "3"], "ensemble5_refit": ["--ensemble", "5", "--refit"]}


def _cli(args: list[str], cwd: Path) -> float:
    """Run ``tlsearch ARGS`` in a fresh process; its wall time in seconds."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "tlsearch.cli", *args], cwd=cwd, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"tlsearch {' '.join(args)} failed:\n{r.stdout[-2000:]}{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def study_file(folder: Path, seed: int, tiny: bool, setup: str = "quickstart",
               budget: float | None = None) -> Path:
    """The setup's study file in ``folder``, its folders made absolute, with ``seed``; ``tiny``:
    3 trials of few epochs at 32 px on the committed sample (checks the script, not the figures)."""
    if setup == "peer":
        return _peer_study(folder, seed, tiny, budget)
    raw = yaml.safe_load((TEXT_STUDY if setup == "text" else STUDY).read_text())
    base = (TEXT_STUDY if setup == "text" else STUDY).parent
    for key in ("path", "validation", "test"):
        if key in raw["data"]:
            raw["data"][key] = str(base / raw["data"][key])
    raw["seed"] = seed  # each seed's study in its own folder
    if budget is not None:
        raw.pop("n_trials", None)
        raw["timeout"] = float(budget)
    if tiny:
        raw.update(n_trials=3, backbones=["tiny_bert" if setup == "text" else "tiny_cnn"],
                   pruner={"type": "none"})
        raw.pop("timeout", None)
        if setup != "text":
            raw["data"]["image_size"] = 32
        raw["training"] = {"stage1_epochs": 2, "stage2_epochs": 1, "batch_size": 32}
        raw["search"]["unfreeze_blocks"] = {"low": 0, "high": 2}
    path = folder / f"study-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _peer_study(folder: Path, seed: int, tiny: bool, budget: float | None) -> Path:
    """The peer benchmark's data (training, validation and held-out test images as .npz) and
    its tlsearch study, searched for ``budget`` seconds (``tiny``: 3 trials of the tiny setting)."""
    from dataclasses import replace

    sys.path.insert(0, str(REPO / "benchmarks"))
    import common
    import peers

    s = replace(common.TINY if tiny else common.FULL, seed=seed)
    data = common.load_data(s)
    path = peers.tlsearch_study_file(s, data, folder, budget=None if tiny else budget,
                                     n_trials=3 if tiny else None, name=f"peer-seed{seed}")
    test = folder / "data-test.npz"
    np.savez(test, x=data["x_test"], y=data["y_test"], class_names=np.array(data["class_names"]))
    raw = yaml.safe_load(path.read_text())
    raw["data"]["test"] = str(test)
    if tiny:
        raw["search"]["unfreeze_blocks"] = {"low": 0, "high": 2}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def judge(exports: dict[str, Path], study: Path) -> dict[str, dict]:
    """Each export on the study's held-out test examples (``data.test``): accuracy (± SE), paired
    difference from ``best``, loss, time per example, size."""
    import tlsearch
    from tlsearch.config import load_config
    from tlsearch.data import load_labelled
    from tlsearch.metrics import weighted_crossentropy

    predictors = {k: tlsearch.load(p) for k, p in exports.items()}
    first = next(iter(predictors.values()))
    cfg = load_config(study)
    size = int((first.metadata.get("input") or {}).get("image_size") or 0)
    x, y, _ = load_labelled(cfg.data, cfg.data.test, first.classes, base_dir=cfg.base_dir,
                            image_size=size, field="test")
    probs = {k: p.predict_proba(x) for k, p in predictors.items()}
    right = {k: (p.argmax(axis=1) == y).astype(float) for k, p in probs.items()}
    batch = x[:32]
    times = {k: math.inf for k in predictors}
    for p in predictors.values():
        p.predict_proba(batch)
    for _ in range(5):
        for k, p in predictors.items():
            t0 = time.perf_counter()
            p.predict_proba(batch)
            times[k] = min(times[k], (time.perf_counter() - t0) / len(batch))
    n = len(y)
    out = {}
    for k in predictors:
        acc = float(right[k].mean())
        diff = right[k] - right["best"]
        meta = predictors[k].metadata
        out[k] = {
            "test_accuracy": acc, "test_accuracy_se": math.sqrt(acc * (1 - acc) / n), "n": n,
            "vs_best": float(diff.mean()),
            "vs_best_se": float(diff.std(ddof=1) / math.sqrt(n)) if k != "best" else 0.0,
            "test_loss": float(weighted_crossentropy(probs[k], y)),
            "ms_per_image": round(1000 * times[k], 3),
            "model_keras_mb": round((exports[k] / "model.keras").stat().st_size / 1e6, 1),
            "members": [m["trial"] for m in meta.get("ensemble", {}).get("members", [])]
            or [meta.get("trial")],
            "weights": [m["weight"] for m in meta.get("ensemble", {}).get("members", [])],
            "refit": meta.get("refit"),
            "validation": meta.get("value"),
        }
    return out


def run_seed(seed: int, out: Path, tiny: bool, setup: str = "quickstart",
             budget: float | None = None) -> dict:
    folder = out / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    study = study_file(folder, seed, tiny, setup, budget)
    seconds = {"study": _cli(["run", str(study), "--quiet", "--no-estimate"], folder)}
    exports = {}
    for name, extra in VARIANTS.items():
        exports[name] = folder / name
        seconds[f"export_{name}"] = _cli(["export", str(study), "--out", str(exports[name]),
                                          "--force", "--formats", "", *extra], folder)
    figures = judge(exports, study)
    return {"seed": seed, "setup": setup, "budget_seconds": budget, "seconds": seconds,
            "trials": _trial_counts(study), "figures": figures}


def _trial_counts(study: Path) -> dict:
    """How many trials the search finished, by state."""
    from collections import Counter

    from tlsearch.config import load_config
    from tlsearch.runner.prepare import load_study

    cfg = load_config(study)
    return dict(Counter(t.state.name for t in load_study(cfg).get_trials(deepcopy=False)))


def table(results: list[dict]) -> str:
    rows = ["| seed | model | test accuracy | vs best trial (paired) | test loss | ms/example | "
            "model.keras MB | extra seconds | search + export seconds | members |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        base = r["seconds"]["export_best"]
        for k, f in r["figures"].items():
            extra = r["seconds"][f"export_{k}"] - base if k != "best" else 0.0
            total = r["seconds"]["study"] + r["seconds"][f"export_{k}"]
            members = ", ".join(f"#{m} x{w:.2f}" for m, w in zip(f["members"], f["weights"])) \
                or f"#{f['members'][0]}"
            rows.append(f"| {r['seed']} | {k} | {f['test_accuracy']:.4f} ± "
                        f"{f['test_accuracy_se']:.4f} | {f['vs_best']:+.4f} ± {f['vs_best_se']:.4f}"
                        f" | {f['test_loss']:.4f} | {f['ms_per_image']:.2f} | "
                        f"{f['model_keras_mb']:.1f} | {extra:.0f} | {total:.0f} | {members} |")
    return "\n".join(rows)


def summary(results: list[dict]) -> str:
    """Over the seeds: mean test accuracy and loss, the mean paired difference from the best
    trial, each with its standard error over seeds (none for one seed)."""
    def mean_se(values: list[float]) -> str:
        m = float(np.mean(values))
        if len(values) < 2:
            return f"{m:.4f}"
        return f"{m:.4f} ± {float(np.std(values, ddof=1)) / math.sqrt(len(values)):.4f}"

    rows = [f"| model | test accuracy (mean ± SE over {len(results)} seeds) | vs best trial | "
            f"test loss | inference time vs best trial | model.keras MB |",
            "|---|---|---|---|---|---|"]
    for k in results[0]["figures"]:
        f = [r["figures"][k] for r in results]
        ratio = [x["ms_per_image"] / r["figures"]["best"]["ms_per_image"]
                 for x, r in zip(f, results)]
        rows.append(f"| {k} | {mean_se([x['test_accuracy'] for x in f])} | "
                    f"{mean_se([x['vs_best'] for x in f])} | "
                    f"{mean_se([x['test_loss'] for x in f])} | {np.mean(ratio):.1f}x | "
                    f"{np.mean([x['model_keras_mb'] for x in f]):.1f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0", help="comma-separated study seeds (default 0)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the studies and results")
    ap.add_argument("--setup", choices=("quickstart", "peer", "text"), default="quickstart",
                    help="which study (default: the quickstart)")
    ap.add_argument("--budget-seconds", type=float, default=None,
                    help="search for this long instead of the study's n_trials (peer: 240)")
    ap.add_argument("--tiny", action="store_true", help="3 tiny trials (checks the script)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    budget = args.budget_seconds
    if budget is None and args.setup == "peer":
        budget = 240.0
    results = [run_seed(int(s), args.out, args.tiny, args.setup, budget)
               for s in args.seeds.split(",")]
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = summary(results) + "\n\n" + table(results) + "\n"
    (args.out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
