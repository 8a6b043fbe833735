"""Does LogME on frozen features rank backbones the way trained heads do, and what does it cost?

For each image size and each candidate (EfficientNet-Lite0, Lite1, Lite2 with ImageNet weights,
and Lite0 with random weights as a control) this computes, on Fashion-MNIST:

* the frozen pooled features of the training and held-out test images (one forward pass, through
  tlsearch's ``BackboneSource``, which also keeps the activations below the top blocks);
* LogME of the *training* features (``tlsearch.prescreen.logme``), timed;
* the test accuracy of tlsearch's stage 1 (a head trained on the frozen features), and of stage 1
  followed by a short fine-tune of the top blocks, both through ``run_trial``, timed, averaged over
  ``--seeds`` (heads) and ``--finetune-seeds`` (fine-tunes) initialisations. The accuracy is that
  of the last epoch: no epoch is chosen on the test images;
* the test accuracy of a linear probe (scikit-learn's logistic regression on standardised
  features): what LogME estimates is how well a linear model fits the features, whatever their
  scale, while tlsearch's head sees the features as the backbone gives them.

Then Kendall's tau between the LogME ranking and each accuracy ranking, over all candidates, over
the pretrained ones only, and within each image size.

    python benchmarks/logme_ranking.py --out benchmarks/results/logme-ranking
    python benchmarks/logme_ranking.py --tiny --out tiny-run   # a minute: checks the script only
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np

import common
from common import Settings

PRETRAINED = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
CONTROL = "efficientnet_lite0_random"


def _candidates(names: list[str]) -> dict:
    from tlsearch.config import BackboneEntry

    out = {n: BackboneEntry(name=n) for n in names}
    out[CONTROL] = BackboneEntry(name="efficientnet_lite0", weights="none")
    return out


def _dataset(raw: dict):
    from tlsearch.data import Dataset

    return Dataset(modality="image", x_train=raw["x_train"], y_train=raw["y_train"],
                   x_val=raw["x_val"], y_val=raw["y_val"], class_names=raw["class_names"],
                   fingerprint=f"fashion-mnist:{len(raw['y_train'])}:{len(raw['y_val'])}:"
                               f"{raw['x_train'].shape[1]}")


def _linear_probe(f_train, y_train, f_test, y_test) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t = time.perf_counter()
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
    probe.fit(f_train, y_train)
    return float(probe.score(f_test, y_test)), time.perf_counter() - t


def run_size(s: Settings, names: list[str], epochs: int, ft_blocks: int, ft_epochs: int,
             ft_lr: float, seeds: list[int], ft_seeds: list[int], log) -> list[dict]:
    """One row per candidate at image size ``s.image_size``."""
    from tlsearch.params import TrialParams
    from tlsearch.train.cache import FeatureCache
    from tlsearch.train.features import BackboneSource
    from tlsearch.train.pipeline import Schedule, clear_state, run_trial
    from tlsearch.prescreen import logme

    data = _dataset(common.load_data(s))
    source = BackboneSource(_candidates(names), data, s.image_size, FeatureCache(None, 1 << 34),
                            seed=s.seed, prefetch_unfrozen=ft_blocks)
    rows = []
    for name in [*names, CONTROL]:
        t = time.perf_counter()
        f_train, f_test = source.frozen_outputs(name, 0)  # with the fine-tune boundary, one pass
        forward = time.perf_counter() - t
        lm = logme(f_train, data.y_train)

        def accuracy(unfreeze: int, e2: int, lr2: float, seeds: list[int]) -> tuple[list[float], float]:
            accs, secs = [], []
            for seed in seeds:
                params = TrialParams(backbone=name, unfreeze_blocks=unfreeze, lr_stage1=1e-3,
                                     lr_stage2=lr2)
                sched = Schedule(stage1_epochs=epochs, stage2_epochs=e2, batch_size=s.batch_size,
                                 objective="val_accuracy", seed=seed)
                r = run_trial(params, sched, data, source)
                clear_state(source)
                accs.append(float(r.history[-1].val_accuracy))
                secs.append(r.seconds)
            return accs, float(np.mean(secs))

        accs, sec_head = accuracy(0, 0, 0.0, seeds)
        probe, sec_probe = _linear_probe(f_train, data.y_train, f_test, data.y_val)
        row = {"size": s.image_size, "backbone": name, "feature_dim": int(f_train.shape[1]),
               "feature_abs_mean": float(np.abs(f_train).mean()),
               "logme": lm.score, "logme_seconds": lm.seconds, "logme_rank": lm.rank,
               "logme_converged": bool(lm.converged.all()), "forward_seconds": forward,
               "head_accuracy": float(np.mean(accs)), "head_accuracies": accs,
               "head_seconds": sec_head, "probe_accuracy": probe, "probe_seconds": sec_probe}
        if ft_blocks > 0 and ft_epochs > 0:
            accs_ft, sec_ft = accuracy(ft_blocks, ft_epochs, ft_lr, ft_seeds)
            row.update(finetune_accuracy=float(np.mean(accs_ft)), finetune_accuracies=accs_ft,
                       finetune_seconds=sec_ft)
        rows.append(row)
        log(f"{s.image_size:>4} px  {name:<26} LogME {lm.score:8.4f} ({lm.seconds:5.2f} s)  "
            f"head {row['head_accuracy']:.3f} ({sec_head:5.1f} s)"
            + (f"  fine-tune {row['finetune_accuracy']:.3f} ({row['finetune_seconds']:5.1f} s)"
               if "finetune_accuracy" in row else "")
            + f"  probe {probe:.3f} ({sec_probe:5.1f} s)  forward {forward:5.1f} s")
    return rows


def _tau(rows: list[dict], key: str) -> dict | None:
    from scipy.stats import kendalltau

    if len(rows) < 2 or any(key not in r for r in rows):
        return None
    res = kendalltau([r["logme"] for r in rows], [r[key] for r in rows])
    best_logme = max(rows, key=lambda r: r["logme"])
    best_acc = max(rows, key=lambda r: r[key])
    return {"n": len(rows), "tau": float(res.statistic), "p_value": float(res.pvalue),
            "logme_top1_is_best": best_logme is best_acc,
            "accuracy_of_logme_top1": best_logme[key], "best_accuracy": best_acc[key]}


def summarise(rows: list[dict]) -> dict:
    groups = {"all": rows, "pretrained": [r for r in rows if r["backbone"] != CONTROL]}
    for size in sorted({r["size"] for r in rows}):
        groups[f"{size}px"] = [r for r in rows if r["size"] == size]
    keys = ("head_accuracy", "finetune_accuracy", "probe_accuracy")
    taus = {g: {k: _tau(rs, k) for k in keys} for g, rs in groups.items()}
    return {
        "kendall_tau": taus,
        #: per candidate: LogME once; a head and a fine-tune per seed (the mean time of one is kept
        #: per row, so the sums below are for one head and one fine-tune per candidate)
        "seconds": {k: float(sum(r.get(k, 0.0) for r in rows))
                    for k in ("logme_seconds", "head_seconds", "finetune_seconds", "probe_seconds",
                              "forward_seconds")},
    }


def markdown(result: dict) -> str:
    rows = result["rows"]
    has_ft = any("finetune_accuracy" in r for r in rows)
    head = ("| size | backbone | LogME | LogME s | head acc | head s |"
            + (" fine-tune acc | fine-tune s |" if has_ft else "") + " linear probe acc | probe s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (f"| {r['size']} | {r['backbone']} | {r['logme']:.4f} | {r['logme_seconds']:.2f} | "
                f"{r['head_accuracy']:.3f} | {r['head_seconds']:.1f} |")
        if has_ft:
            line += f" {r['finetune_accuracy']:.3f} | {r['finetune_seconds']:.1f} |"
        line += f" {r['probe_accuracy']:.3f} | {r['probe_seconds']:.1f} |"
        lines.append(line)

    def cell(t):
        return f"{t['tau']:.2f} (p {t['p_value']:.2f})" if t else "-"

    def top(t):
        return "yes" if t and t["logme_top1_is_best"] else "no" if t else "-"

    lines += ["", "Kendall's tau between the LogME ranking and each accuracy ranking "
                  "(top: LogME's first pick has the best accuracy):", "",
              "| candidates | n | head | top | fine-tune | top | linear probe | top |",
              "|---|---|---|---|---|---|---|---|"]
    for g, t in result["summary"]["kendall_tau"].items():
        h, f, p = t["head_accuracy"], t["finetune_accuracy"], t["probe_accuracy"]
        if h is None:
            continue
        lines.append(f"| {g} | {h['n']} | {cell(h)} | {top(h)} | {cell(f)} | {top(f)} | "
                     f"{cell(p)} | {top(p)} |")
    sec = result["summary"]["seconds"]
    lines += ["", f"Seconds, summed over candidates: LogME {sec['logme_seconds']:.1f}; one head each "
                  f"{sec['head_seconds']:.1f}; one fine-tune each {sec['finetune_seconds']:.1f}; linear "
                  f"probes {sec['probe_seconds']:.1f}; forward passes {sec['forward_seconds']:.1f}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64,96", help="image sizes, comma-separated")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=10, help="stage-1 epochs of each head")
    ap.add_argument("--finetune-blocks", type=int, default=2, help="top blocks fine-tuned (0: none)")
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--finetune-lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0, help="data sample and random-weights control")
    ap.add_argument("--seeds", default="0,1,2", help="head initialisations averaged per candidate")
    ap.add_argument("--finetune-seeds", default="0", help="the same for the fine-tunes (slower)")
    ap.add_argument("--tiny", action="store_true", help="Lite0 and its control, 32 px, a few images")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    names, sizes = PRETRAINED, [int(x) for x in a.sizes.split(",")]
    n_train, n_test, epochs, ft_epochs = a.n_train, a.n_test, a.epochs, a.finetune_epochs
    seeds = [int(x) for x in a.seeds.split(",")]
    ft_seeds = [int(x) for x in a.finetune_seeds.split(",")]
    if a.tiny:
        names, sizes, n_train, n_test, epochs, ft_epochs = ["efficientnet_lite0"], [32], 60, 30, 2, 1
        seeds, ft_seeds = seeds[:1], ft_seeds[:1]
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = []
    for size in sizes:
        s = Settings(n_train=n_train, n_val=n_test, image_size=size, seed=a.seed, tiny=a.tiny)
        rows += run_size(s, names, epochs, a.finetune_blocks, ft_epochs, a.finetune_lr, seeds,
                         ft_seeds, log=lambda m: print(m, flush=True))
    result = {
        "settings": {"sizes": sizes, "n_train": n_train, "n_test": n_test, "epochs": epochs,
                     "finetune_blocks": a.finetune_blocks, "finetune_epochs": ft_epochs,
                     "finetune_lr": a.finetune_lr, "seed": a.seed, "seeds": seeds, "finetune_seeds": ft_seeds,
                     "tiny": a.tiny},
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "date": date.today().isoformat(),
        "rows": rows,
        "summary": summarise(rows),
        "wall_seconds": time.perf_counter() - t0,
    }
    (a.out / "results.json").write_text(json.dumps(result, indent=2))
    md = markdown(result)
    (a.out / "results.md").write_text(md)
    print(md)
    print(f"wall {result['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
