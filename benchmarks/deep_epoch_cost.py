"""What one stage-2 epoch costs at each unfreeze depth, on cached boundaries and through the whole
network, and what a second trial at the same depth costs once its model is pooled.

    python benchmarks/deep_epoch_cost.py --out deep.json            # depths 1, 4, 8 and all

EfficientNet-Lite0 (ImageNet weights) on a few hundred Fashion-MNIST images at 96 px
(``benchmarks/common.py``). Every depth runs one trial of 1 stage-1 epoch and 2 stage-2 epochs on
cached features (the boundary of every depth computed in one forward pass, timed as the cache
fill), then a second trial at the same depth (the pooled model reused), then the same trial with no
cache, through the whole network. The epoch figure is the faster of the two stage-2 epochs: the
first also traces.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import common


def run(n_train: int, n_val: int, size: int, depths: list[str], batch_size: int) -> dict:
    from tlsearch.config import BackboneEntry
    from tlsearch.data import Dataset
    from tlsearch.params import TrialParams
    from tlsearch.train.cache import FeatureCache
    from tlsearch.train.features import BackboneSource
    from tlsearch.train.pipeline import Schedule, run_trial

    s = common.settings_from({"n_train": n_train, "n_val": n_val, "image_size": size})
    d = common.load_data(s)
    data = Dataset("image", d["x_train"], d["y_train"], d["x_val"], d["y_val"], d["class_names"],
                   fingerprint=f"fashion-{n_train}-{n_val}-{size}")
    entries = {common.BACKBONE: BackboneEntry(name=common.BACKBONE)}
    schedule = Schedule(1, 2, batch_size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        probe = BackboneSource(entries, data, size, None)
        blocks = probe.max_unfreeze(common.BACKBONE)
        wanted = [blocks if x == "all" else int(x) for x in depths]
        cached = BackboneSource(entries, data, size, FeatureCache(Path(tmp), 8 << 30),
                                prefetch_unfrozen=max(n for n in wanted if n < blocks))
        t = time.perf_counter()
        cached.frozen_outputs(common.BACKBONE, 0)
        fill = time.perf_counter() - t
        plain = BackboneSource(entries, data, size, None)
        cut = cached.build(common.BACKBONE)
        for label, n in zip(depths, wanted):
            p = TrialParams(common.BACKBONE, unfreeze_blocks=n, lr_stage1=1e-3, lr_stage2=1e-4)
            row = {"depth": label, "blocks": n, "cacheable": cut.can_cut(n)}
            for mode, src in (("cached", cached), ("uncached", plain)):
                if mode == "cached" and not row["cacheable"]:
                    continue
                trials = 2 if mode == "cached" else 1
                for i in range(trials):
                    t = time.perf_counter()
                    r = run_trial(p, schedule, data, src)
                    secs = time.perf_counter() - t
                    epochs = [h.seconds for h in r.history if h.stage == 2]
                    tag = mode if i == 0 else f"{mode}_again"
                    row[f"{tag}_trial_s"] = secs
                    row[f"{tag}_epoch_s"] = min(epochs)
                    row[f"{tag}_first_epoch_s"] = epochs[0]
                    row[f"{tag}_val_accuracy"] = max(h.val_accuracy for h in r.history)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"n_train": n_train, "n_val": n_val, "image_size": size, "batch_size": batch_size,
            "backbone": common.BACKBONE, "blocks": blocks, "cache_fill_s": fill, "rows": rows}


def markdown(r: dict) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.2f}"

    lines = [f"{r['backbone']} ({r['blocks']} blocks), {r['n_train']} + {r['n_val']} images at "
             f"{r['image_size']} px, batch {r['batch_size']}; boundaries of every depth filled in "
             f"one pass: {r['cache_fill_s']:.1f} s.", "",
             "| depth | cached epoch s | uncached epoch s | uncached / cached | cached trial s "
             "(first; again, pooled) | uncached trial s |", "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        c, u = row.get("cached_epoch_s"), row.get("uncached_epoch_s")
        lines.append(f"| {row['depth']} ({row['blocks']}) | {f(c)} | {f(u)} | "
                     f"{f(u / c) if c and u else 'n/a'} | {f(row.get('cached_trial_s'))}; "
                     f"{f(row.get('cached_again_trial_s'))} | {f(row.get('uncached_trial_s'))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--n-val", type=int, default=100)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--depths", default="1,4,8,all")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    r = run(a.n_train, a.n_val, a.image_size, a.depths.split(","), a.batch_size)
    a.out.write_text(json.dumps(r, indent=1))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
