"""When augmentation pays: a few hundred labelled images, each transform setting trained alike.

One fixed configuration (EfficientNet-Lite0 with ImageNet weights; a new head trained ``--epochs``
epochs at 1e-3, width 128, dropout 0.2; with ``--unfreeze N``, then the top N blocks fine-tuned
``--stage2-epochs`` epochs at 1e-4), trained on small seeded samples of Fashion-MNIST (``--sizes``
images per training set, a fixed ``--n-val``-image validation set), once per augmentation
setting:

* ``none``: no augmentation; the frozen features are computed once and cached;
* ``fits``: what suits clothes photographed flat: horizontal flips, zoom 0.1, translation 0.1;
* ``fits+mixup``: the same plus mixup (alpha 0.2);
* ``wrong``: flips in both directions and rotation 0.25 (up to 90 degrees): transforms that
  make images no clothes photo looks like.

Each row is the best epoch's (by validation accuracy) accuracy and loss, and the seconds the
trial took: an
augmented trial sees new pixels every epoch, so it runs through the whole backbone each epoch
instead of training on cached features. Run from the repository root::

    python benchmarks/augmentation_small_data.py --out augmentation.json
    python benchmarks/augmentation_small_data.py --sizes 300 --epochs 10 --unfreeze 2 \
        --stage2-epochs 10 --n-val 300 --out augmentation-finetuned.json
    python benchmarks/augmentation_small_data.py --tiny       # seconds: tiny_cnn, the CI check
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BACKBONE, Settings, load_data  # noqa: E402

SETTINGS = {
    "none": {},
    "fits": {"flip": "horizontal", "zoom": 0.1, "translation": 0.1},
    "fits+mixup": {"flip": "horizontal", "zoom": 0.1, "translation": 0.1, "mixup": 0.2},
    "wrong": {"flip": "both", "rotation": 0.25},
}


def run(sizes: list[int], seeds: list[int], epochs: int, image_size: int, n_val: int,
        tiny: bool, unfreeze: int = 0, stage2_epochs: int = 0) -> dict:
    from tlsearch.config import BackboneEntry
    from tlsearch.data import Dataset
    from tlsearch.params import TrialParams
    from tlsearch.train.cache import FeatureCache
    from tlsearch.train.features import BackboneSource
    from tlsearch.train.pipeline import Schedule, clear_state, run_trial

    backbone = "tiny_cnn" if tiny else BACKBONE
    rows = []
    for n in sizes:
        for seed in seeds:
            d = load_data(Settings(n_train=n, n_val=n_val, image_size=image_size, seed=seed,
                                   tiny=tiny))
            data = Dataset("image", d["x_train"], d["y_train"], d["x_val"], d["y_val"],
                           d["class_names"], fingerprint=f"fashion-{n}-{n_val}-{image_size}-{seed}")
            source = BackboneSource({backbone: BackboneEntry(name=backbone)}, data, image_size,
                                    FeatureCache(None, 1 << 32), seed=seed)
            source.frozen_outputs(backbone, 0)  # the cache, filled before any trial is timed
            for name, aug in SETTINGS.items():
                p = TrialParams(backbone, unfreeze_blocks=unfreeze, head_width=128, dropout=0.2,
                                lr_stage1=1e-3, lr_stage2=1e-4, **aug)
                t0 = time.perf_counter()
                r = run_trial(p, Schedule(stage1_epochs=epochs, stage2_epochs=stage2_epochs,
                                          batch_size=32, objective="val_accuracy", seed=seed),
                              data, source)
                seconds = time.perf_counter() - t0
                best = next(h for h in r.history if h.step == r.best_step)
                rows.append({"n_train": n, "seed": seed, "setting": name, "cached": r.cached,
                             "val_accuracy": best.val_accuracy, "val_loss": best.val_loss,
                             "best_step": r.best_step, "best_stage": r.best_stage,
                             "seconds": round(seconds, 2)})
                print(json.dumps(rows[-1]), flush=True)
                clear_state(source)
    return {"rows": rows, "summary": summarize(rows),
            "settings": {"sizes": sizes, "seeds": seeds, "epochs": epochs, "n_val": n_val,
                         "image_size": image_size, "backbone": backbone, "unfreeze": unfreeze,
                         "stage2_epochs": stage2_epochs, "augmentation": SETTINGS},
            "machine": {"python": platform.python_version(), "platform": platform.platform()}}


def summarize(rows: list[dict]) -> list[dict]:
    """Mean over seeds per (training set size, setting), with the gain over ``none``."""
    out = []
    for n in sorted({r["n_train"] for r in rows}):
        base = None
        for name in SETTINGS:
            mine = [r for r in rows if r["n_train"] == n and r["setting"] == name]
            acc = statistics.mean(r["val_accuracy"] for r in mine)
            base = acc if base is None else base
            out.append({"n_train": n, "setting": name, "val_accuracy": round(acc, 4),
                        "gain": round(acc - base, 4),
                        "val_loss": round(statistics.mean(r["val_loss"] for r in mine), 4),
                        "per_seed": [round(r["val_accuracy"], 4) for r in mine],
                        "seconds": round(statistics.mean(r["seconds"] for r in mine), 1)})
    return out


def table(summary: list[dict]) -> str:
    lines = ["| training images | augmentation | val accuracy (mean) | gain over none | per seed "
             "| val loss (mean) | s per trial |", "|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['n_train']} | {s['setting']} | {s['val_accuracy']:.4f} | "
                     f"{s['gain']:+.4f} | {', '.join(f'{v:.3f}' for v in s['per_seed'])} | "
                     f"{s['val_loss']:.4f} | {s['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100,300", help="training set sizes (comma separated)")
    p.add_argument("--seeds", default="0,1", help="data and training seeds (comma separated)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--n-val", type=int, default=500)
    p.add_argument("--unfreeze", type=int, default=0, help="blocks fine-tuned in stage 2")
    p.add_argument("--stage2-epochs", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="tiny_cnn on the committed sample: a check")
    p.add_argument("--out", type=Path, help="write the rows and the summary as JSON")
    a = p.parse_args(argv)
    if a.tiny:
        a.sizes, a.seeds, a.epochs, a.image_size, a.n_val = "30", "0", 2, 32, 30
    result = run([int(v) for v in a.sizes.split(",")], [int(v) for v in a.seeds.split(",")],
                 a.epochs, a.image_size, a.n_val, a.tiny, a.unfreeze, a.stage2_epochs)
    print(table(result["summary"]))
    if a.out:
        a.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
