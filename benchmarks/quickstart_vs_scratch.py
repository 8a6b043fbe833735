"""What pretraining buys on the quickstart data: the quickstart study vs the same head from scratch.

Three numbers on the quickstart's validation images (150 Fashion-MNIST images, 10 classes, the
study's own stratified split), each the best epoch's validation accuracy and loss:

* the quickstart study (``studies/quickstart.yaml``): EfficientNet-Lite0 with ImageNet weights;
* EfficientNet-Lite0 from random weights, every block training, BatchNorm learning its statistics
  (``studies/quickstart-scratch.yaml``, one trial per learning rate);
* a small CNN from random weights (``tiny_cnn``, 4 blocks), every block training.

Run from the repository root (a few minutes on 2 CPU cores)::

    python benchmarks/quickstart_vs_scratch.py --out quickstart.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import yaml

import common

REPO = Path(__file__).resolve().parent.parent


def _study(tmp: Path, name: str, overrides: dict | None = None, source: str = "quickstart.yaml"):
    raw = yaml.safe_load((REPO / "studies" / source).read_text())
    raw["data"]["path"] = str(REPO / "studies" / raw["data"]["path"])
    raw.update(overrides or {})
    raw["name"] = name
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _best(path: Path) -> dict:
    import optuna

    from tlsearch.config import load_config

    cfg = load_config(path)
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    bt = study.best_trial
    step = bt.user_attrs["tlsearch.best_step"]
    rec = next(h for h in bt.user_attrs["tlsearch.history"] if h["step"] == step)
    return {"trials": len(study.trials), "best_trial": bt.number, "val_loss": rec["val_loss"],
            "val_accuracy": rec["val_accuracy"], "best_step": step,
            "params": bt.user_attrs["tlsearch.params"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path)
    p.add_argument("--scratch-trials", type=int, default=3)
    args = p.parse_args(argv)

    from tlsearch.cli import main as cli

    results = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        runs = {
            "quickstart_pretrained": _study(tmp, "pretrained"),
            "efficientnet_lite0_from_scratch": _study(
                tmp, "lite0-scratch", {"n_trials": args.scratch_trials},
                source="quickstart-scratch.yaml"),
            "small_cnn_from_scratch": _study(tmp, "cnn-scratch", {
                "n_trials": args.scratch_trials, "backbones": ["tiny_cnn"],
                "training": {"stage1_epochs": 2, "stage2_epochs": 10, "batch_size": 32,
                             "keep_bn_frozen": False},
                "pruner": {"type": "none"},
                "search": {"unfreeze_blocks": 4, "head_width": 128, "dropout": 0.2,
                           "lr_stage1": 3e-3, "lr_stage2": [3e-4, 1e-3, 3e-3]}}),
        }
        for key, path in runs.items():
            t0 = time.perf_counter()
            assert cli(["run", str(path)]) == 0, key
            results[key] = {**_best(path), "seconds": round(time.perf_counter() - t0, 1)}
            print(json.dumps({key: results[key]}), flush=True)
    common.report(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
