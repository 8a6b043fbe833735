"""Benchmark (issue 21): beyond the single best trial. On the quickstart study (EfficientNet-Lite0,
600 Fashion-MNIST images, 400 held-out test images in ``studies/data/fashion-test``), the best
single trial against its refit on training + validation data and against ensembles of K = 3 and 5
trials, all from one search (the same budget), judged on the held-out test set.

For each seed the study is run once (``tlsearch run``, timed; a study already complete in the
output folder is reused), then each model is exported as a user would (``tlsearch export``, a
fresh process, timed, ``--formats ''``):

* ``best``: the best trial (``--no-refit``); ``refit``: ``--refit`` (its training time is in the
  export's, and in ``refit.seconds``); ``ensemble5``, ``ensemble3``: ``--ensemble K`` (the first
  computes every complete trial's validation probabilities and keeps them; the second reads them
  back, so its extra seconds are the cost of a later ensemble).

Each export is then loaded (``tlsearch.load``) and predicts the test images; the figures are test
accuracy with its binomial standard error, the paired difference from the best trial (mean and
standard error of the per-image difference in correctness: the same images judge both), test
loss, the measured inference time per image (best of 5 batches of 32, each model in turn), and
the size of ``model.keras``.

Run from the repository root (2 CPU cores: about 6 minutes of study and 8 of exports a seed)::

    python benchmarks/refit_ensemble.py --seeds 0 --out refit-ensemble
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
#: what is exported, and the export command's extra arguments; the first ensemble computes the
#: trials' validation probabilities (and keeps them), the second reads them back
VARIANTS = {"best": ["--no-refit"], "refit": ["--refit"], "ensemble5": ["--ensemble", "5"],
            "ensemble3": ["--ensemble", "3"]}


def _cli(args: list[str], cwd: Path) -> float:
    """Run ``tlsearch ARGS`` in a fresh process; its wall time in seconds."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "tlsearch.cli", *args], cwd=cwd, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"tlsearch {' '.join(args)} failed:\n{r.stdout[-2000:]}{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def study_file(folder: Path, seed: int, tiny: bool) -> Path:
    """The quickstart study with its folders made absolute, and ``seed``; ``tiny``: 3 trials of
    few epochs at 32 px on the committed sample (checks the script, not the figures)."""
    raw = yaml.safe_load(STUDY.read_text())
    for key in ("path", "test"):
        raw["data"][key] = str(STUDY.parent / raw["data"][key])
    raw["seed"] = seed  # each seed's study in its own folder
    if tiny:
        raw.update(n_trials=3, backbones=["tiny_cnn"], pruner={"type": "none"})
        raw["data"]["image_size"] = 32
        raw["training"] = {"stage1_epochs": 2, "stage2_epochs": 1, "batch_size": 32}
        raw["search"]["unfreeze_blocks"] = {"low": 0, "high": 2}
    path = folder / f"study-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def judge(exports: dict[str, Path], test_dir: Path) -> dict[str, dict]:
    """Each export on the test images: accuracy (± SE), paired difference from ``best``, loss,
    time per image, size."""
    import tlsearch
    from tlsearch.data import load_labelled
    from tlsearch.config import DataConfig
    from tlsearch.metrics import weighted_crossentropy

    predictors = {k: tlsearch.load(p) for k, p in exports.items()}
    first = next(iter(predictors.values()))
    size = int(first.metadata["input"]["image_size"])
    x, y, _ = load_labelled(DataConfig(path=test_dir, image_size=size), test_dir,
                            first.classes, base_dir=None, image_size=size, field="test")
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


def run_seed(seed: int, out: Path, tiny: bool) -> dict:
    folder = out / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    study = study_file(folder, seed, tiny)
    seconds = {"study": _cli(["run", str(study), "--quiet", "--no-estimate"], folder)}
    exports = {}
    for name, extra in VARIANTS.items():
        exports[name] = folder / name
        seconds[f"export_{name}"] = _cli(["export", str(study), "--out", str(exports[name]),
                                          "--force", "--formats", "", *extra], folder)
    figures = judge(exports, Path(yaml.safe_load(study.read_text())["data"]["test"]))
    return {"seed": seed, "seconds": seconds, "figures": figures}


def table(results: list[dict]) -> str:
    rows = ["| seed | model | test accuracy | vs best trial (paired) | test loss | ms/image | "
            "model.keras MB | extra seconds |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        base = r["seconds"]["export_best"]
        for k, f in r["figures"].items():
            extra = r["seconds"][f"export_{k}"] - base if k != "best" else 0.0
            rows.append(f"| {r['seed']} | {k} | {f['test_accuracy']:.4f} ± "
                        f"{f['test_accuracy_se']:.4f} | {f['vs_best']:+.4f} ± {f['vs_best_se']:.4f}"
                        f" | {f['test_loss']:.4f} | {f['ms_per_image']:.2f} | "
                        f"{f['model_keras_mb']:.1f} | {extra:.0f} |")
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
    ap.add_argument("--tiny", action="store_true", help="3 tiny trials (checks the script)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = [run_seed(int(s), args.out, args.tiny) for s in args.seeds.split(",")]
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = summary(results) + "\n\n" + table(results) + "\n"
    (args.out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
