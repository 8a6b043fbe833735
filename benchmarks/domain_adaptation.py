"""Benchmark: Fashion-MNIST -> Fashion-MNIST-M on frozen EfficientNet-Lite0 features.

Three ways to get a classifier for the colour target domain, compared in one run on the same
features (the backbone's pooled output, computed once):

1. **source only**: a head (dense, relu, dropout, softmax) trained on labelled source images,
   its learning rate and width searched with Optuna and selected on the source validation loss.
2. **DANN** (:mod:`tlsearch.train.dann`): the head's hidden layer is the feature extractor, a domain
   classifier behind gradient reversal pushes it to make source and target features alike. Optuna
   searches ``lambda_max``, ``gamma``, the learning rate and the width; the trial is selected
   **without target labels**, by DEV (Deep Embedded Validation). For comparison the run also
   reports the trial the source validation loss would pick, and the best trial by target
   validation accuracy (an oracle that a real deployment does not have).
3. **target supervised**: the same head trained on the labelled target images: the upper bound.

Each is scored by its accuracy on the held-out target test images. "Gap closed" is
``(DANN - source only) / (target supervised - source only)``.

    python benchmarks/domain_adaptation.py --out benchmarks/results/domain-adaptation

About 10-15 minutes on 2 CPU cores at the defaults; ``--tiny`` checks the script in a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fashion_mnist_m as fmm  # noqa: E402

BACKBONE = "efficientnet_lite0"
SPLITS = fmm.SPLITS


def compute_features(data_dir: Path, image_size: int, out: Path, seed: int) -> dict:
    """Pooled frozen features of every split, cached in ``out/features-<size>.npz``."""
    cache = out / f"features-{image_size}.npz"
    if cache.is_file():
        with np.load(cache) as f:
            return {k: f[k] for k in f.files}
    from tlsearch.backbones import build_backbone
    from tlsearch.config import BackboneEntry

    bb = build_backbone(BackboneEntry(name=BACKBONE), image_size, seed=seed)
    bb.freeze(0)
    feats, t0 = {}, time.perf_counter()
    n_images = 0
    for split in SPLITS:
        x, y = fmm.load_split(data_dir, split)
        x = np.stack([fmm.resize(x[..., c], image_size) for c in range(3)], axis=-1)
        feats[f"{split}_x"] = bb.model.predict(x, batch_size=64, verbose=0).astype(np.float32)
        feats[f"{split}_y"] = y
        n_images += len(x)
    feats["seconds"] = np.array(time.perf_counter() - t0)
    feats["n_images"] = np.array(n_images)
    np.savez(cache, **feats)
    return feats


def _head_layers(width: int, dropout: float, n_classes: int, seed: int):
    import keras

    init = keras.initializers.GlorotUniform(seed=seed)
    extractor = keras.layers.Dense(width, activation="relu", kernel_initializer=init, name="clf_dense")
    label_head = keras.Sequential([keras.layers.Dropout(dropout, seed=seed, name="clf_dropout"),
                                   keras.layers.Dense(n_classes, activation="softmax",
                                                      kernel_initializer=init, name="clf_out")],
                                  name="label_head")
    return extractor, label_head


def train_plain(x, y, params: dict, a, seed: int):
    """A head trained on labelled data (source only, or the target-supervised upper bound)."""
    import keras

    keras.utils.set_random_seed(seed)
    extractor, head = _head_layers(params["head_width"], a.dropout, 10, seed)
    inp = keras.Input((x.shape[1],))
    model = keras.Model(inp, head(extractor(inp)))
    model.compile(keras.optimizers.Adam(params["lr"]), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=a.epochs, batch_size=a.batch_size, verbose=0, shuffle=True)
    return model


def train_dann(f: dict, params: dict, a, seed: int):
    import keras

    from tlsearch.train.dann import DANN, fit_dann

    keras.utils.set_random_seed(seed)
    extractor, head = _head_layers(params["head_width"], a.dropout, 10, seed)
    model = DANN(extractor, head, domain_width=params["head_width"], lambda_max=params["lambda_max"],
                 gamma=params["gamma"], lr_annealing=a.lr_annealing, seed=seed)
    model.compile(keras.optimizers.Adam(params["lr"]))
    h = fit_dann(model, f["source_train_x"], f["source_train_y"], f["target_train_x"],
                 epochs=a.epochs, batch_size=a.batch_size, seed=seed)
    return model, h


def accuracy(model, x, y) -> float:
    return float(np.mean(model.predict(x, batch_size=512, verbose=0).argmax(-1) == y))


def val_loss(model, x, y) -> float:
    import keras

    p = model.predict(x, batch_size=512, verbose=0)
    return float(np.mean(keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(y, p))))


def search_plain(f: dict, domain: str, a) -> dict:
    """Optuna over (lr, width) for a head trained on ``domain``'s labels, selected on its val loss."""
    import optuna

    trials = []

    def objective(trial):
        params = {"lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
                  "head_width": trial.suggest_categorical("head_width", [64, 128, 256])}
        t = time.perf_counter()
        model = train_plain(f[f"{domain}_train_x"], f[f"{domain}_train_y"], params, a, a.seed + trial.number)
        rec = {"number": trial.number, "params": params,
               "val_loss": val_loss(model, f[f"{domain}_val_x"], f[f"{domain}_val_y"]),
               "val_accuracy": accuracy(model, f[f"{domain}_val_x"], f[f"{domain}_val_y"]),
               "target_test_accuracy": accuracy(model, f["target_test_x"], f["target_test_y"]),
               "source_test_accuracy": accuracy(model, f["source_test_x"], f["source_test_y"]),
               "seconds": time.perf_counter() - t}
        trials.append(rec)
        return rec["val_loss"]

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=a.seed))
    study.enqueue_trial({"lr": 1e-3, "head_width": 128})
    study.optimize(objective, n_trials=a.plain_trials)
    best = min(trials, key=lambda r: r["val_loss"])
    return {"selected_by": f"{domain} val loss", "best": best, "trials": trials}


def search_dann(f: dict, a) -> dict:
    """Optuna over (lambda_max, gamma, lr, width), minimising the DEV risk: no target labels used."""
    import optuna

    from tlsearch.train.dann_selection import selection_report

    trials = []

    def objective(trial):
        params = {"lambda_max": trial.suggest_float("lambda_max", 0.03, 3.0, log=True),
                  "gamma": trial.suggest_float("gamma", 2.0, 20.0, log=True),
                  "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
                  "head_width": trial.suggest_categorical("head_width", [64, 128, 256])}
        t = time.perf_counter()
        model, h = train_dann(f, params, a, a.seed + trial.number)
        train_s = time.perf_counter() - t
        report = selection_report(model, f["source_val_x"], f["source_val_y"], f["target_train_x"],
                                  x_source_train=f["source_train_x"], seed=a.seed)
        rec = {"number": trial.number, "params": params, **report,
               "last_epoch": {k: float(v[-1]) for k, v in h.history.items()},
               # for the analysis only: never used to select
               "target_val_accuracy": accuracy(model, f["target_val_x"], f["target_val_y"]),
               "target_test_accuracy": accuracy(model, f["target_test_x"], f["target_test_y"]),
               "source_test_accuracy": accuracy(model, f["source_test_x"], f["source_test_y"]),
               "train_seconds": train_s, "seconds": time.perf_counter() - t}
        trials.append(rec)
        print(f"  dann trial {trial.number}: {params} dev {rec['dev_risk']:.3f} "
              f"(ess {rec['dev_effective_sample_size']:.0f}) src-val-loss "
              f"{rec['source_val_loss']:.3f} dom-acc {rec['domain_accuracy']:.2f} target-test "
              f"{rec['target_test_accuracy']:.3f} ({rec['seconds']:.0f} s)", flush=True)
        value = rec[a.dann_criterion]
        return value if np.isfinite(value) else float("inf")

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=a.seed))
    study.enqueue_trial({"lambda_max": 0.3, "gamma": 10.0, "lr": 1e-3, "head_width": 128})
    study.optimize(objective, n_trials=a.dann_trials)
    finite = [r for r in trials if np.isfinite(r["dev_risk"])]
    reliable = [r for r in finite if r["dev_reliable"]]
    return {
        "selected_by": a.dann_criterion,
        "best": min(finite or trials, key=lambda r: r[a.dann_criterion]),
        "by_dev": min(finite or trials, key=lambda r: r["dev_risk"]),
        # DEV where its weights can carry it, else the source validation loss
        "by_reliable_dev": (min(reliable, key=lambda r: r["dev_risk"]) if reliable
                            else min(trials, key=lambda r: r["source_val_loss"])),
        "n_dev_reliable": len(reliable),
        "by_source_val_loss": min(trials, key=lambda r: r["source_val_loss"]),
        "by_bound_proxy": min(trials, key=lambda r: r["bound_proxy"]),
        "oracle_by_target_val": max(trials, key=lambda r: r["target_val_accuracy"]),
        "trials": trials,
    }


def summarize(res: dict) -> str:
    src = res["source_only"]["best"]["target_test_accuracy"]
    tgt = res["target_supervised"]["best"]["target_test_accuracy"]
    gap = tgt - src

    def closed(acc):
        return f"{(acc - src) / gap:+.0%}" if gap > 0 else "n/a"

    d = res["dann"]
    picks = [("DEV (the search objective)", "by_dev"),
             (f"DEV among trials where it is reliable ({d['n_dev_reliable']} of {len(d['trials'])}), "
              f"else source val loss", "by_reliable_dev"),
             ("source val loss", "by_source_val_loss"),
             ("source val error + (2 domain accuracy - 1)", "by_bound_proxy")]
    rows = [("source only (selected on source val loss)", None, src, "0%")]
    for label, key in picks:
        r = d[key]
        rows.append((f"DANN, selected by {label}", r, r["target_test_accuracy"], closed(r["target_test_accuracy"])))
    r = d["oracle_by_target_val"]
    rows.append(("DANN, best trial by target val accuracy (oracle, uses target labels)", r,
                 r["target_test_accuracy"], closed(r["target_test_accuracy"])))
    rows.append(("target supervised (upper bound, selected on target val loss)", None, tgt, "100%"))

    def describe(r):
        if r is None:
            return ""
        p = r["params"]
        return (f"trial {r['number']}: lambda_max {p['lambda_max']:.3g}, gamma {p['gamma']:.3g}, "
                f"lr {p['lr']:.2g}, width {p['head_width']}; domain acc {r['domain_accuracy']:.2f}, "
                f"DEV ESS {r['dev_effective_sample_size']:.0f}")

    accs = [r["target_test_accuracy"] for r in d["trials"]]
    lines = ["| method | target test accuracy | gap closed | selected trial |", "|---|---|---|---|"]
    lines += [f"| {name} | {acc:.3f} | {c} | {describe(r)} |" for name, r, acc, c in rows]
    lines += ["", f"DANN trials: {len(accs)}; target test accuracy min {min(accs):.3f}, median "
                  f"{float(np.median(accs)):.3f}, max {max(accs):.3f}. Source test accuracy of the "
                  f"source-only head: {res['source_only']['best']['source_test_accuracy']:.3f}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=None, help="Fashion-MNIST-M folder (built if absent)")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--plain-trials", type=int, default=8)
    ap.add_argument("--dann-trials", type=int, default=24)
    ap.add_argument("--dann-criterion", choices=["dev_risk", "source_val_loss", "bound_proxy"],
                    default="dev_risk", help="what the DANN search minimises")
    ap.add_argument("--lr-annealing", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="a minute-long check of the script")
    a = ap.parse_args(argv)
    sizes = None
    if a.tiny:
        sizes = {s: 120 for s in SPLITS}
        a.image_size, a.epochs, a.plain_trials, a.dann_trials = 32, 3, 2, 2
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    a.out.mkdir(parents=True, exist_ok=True)
    data_dir = a.data or a.out / "fashion-mnist-m"
    t0 = time.perf_counter()
    if not (data_dir / "meta.json").is_file():
        fmm.build(data_dir, seed=a.seed, sizes=sizes)
    f = compute_features(data_dir, a.image_size, a.out, a.seed)
    print(f"features: {int(f['n_images'])} images in {float(f['seconds']):.0f} s", flush=True)

    # the folders are left out: results are meant to be copied into the repository
    res = {"settings": {k: v for k, v in vars(a).items() if k not in ("out", "data")},
           "data": json.loads((data_dir / "meta.json").read_text()),
           "feature_seconds": float(f["seconds"])}
    for name, fn in (("source_only", lambda: search_plain(f, "source", a)),
                     ("target_supervised", lambda: search_plain(f, "target", a)),
                     ("dann", lambda: search_dann(f, a))):
        t = time.perf_counter()
        res[name] = fn()
        res[name]["seconds"] = time.perf_counter() - t
        print(f"{name}: target test accuracy {res[name]['best']['target_test_accuracy']:.3f} "
              f"({res[name]['seconds']:.0f} s)", flush=True)
    import keras
    import tensorflow as tf

    res["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                      "tensorflow": tf.__version__, "keras": keras.__version__,
                      "gpus": len(tf.config.list_physical_devices("GPU")), "date": date.today().isoformat()}
    res["total_seconds"] = time.perf_counter() - t0
    table = summarize(res)
    (a.out / "results.json").write_text(json.dumps(res, indent=1, default=float))
    (a.out / "results.md").write_text(table + "\n")
    print(table)
    print(f"total {res['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
