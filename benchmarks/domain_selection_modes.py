"""Benchmark: Fashion-MNIST -> Fashion-MNIST-M, source only / head DANN / backbone DANN, each
chosen label-free and with k labelled target images a class, against the target-supervised ceiling.

Every arm is a tlsearch study run from a study file, on the same data (one Fashion-MNIST-M build,
``make_fashion_mnist_m.py``), for each seed (the study's seed; the data stay the same):

* **source only**: labelled source images, no target data; the trials differ in head width and
  learning rate. Label-free choice: the source validation loss (its ``cfg.value_name``).
* **head DANN**: ``data.target`` (the target's training images, labels unused) and
  ``search.domain_adaptation`` with ``stage: head``, ``lambda_max`` searched (no ``off``: the
  source-only arm is that). Label-free choice: the study's ``domain_selection`` criterion
  (its ``cfg.value_name``; the run in BENCHMARKS.md was judged by ``bound_proxy``).
* **backbone DANN**: the same with ``stage: backbone`` and ``unfreeze_blocks`` 1, so stage 2 trains
  the top block as a DANN. Label-free choice: as for the head DANN.
* **target supervised** (the ceiling): the source-only recipe trained on the target's training
  images with their labels, chosen on the target validation loss.

Each arm's study also runs once per ``--labelled-studies`` k with k labelled target images a class
(taken from the target's training images, never from its test images): as
``data.target_validation`` for the DANN arms, as ``data.validation`` for the source-only arm
(``data.target_validation`` needs ``data.target``); every trial is then judged on those images.
Besides, each label-free study's trials are re-ranked after the fact, for every k of ``--ks``, by
their accuracy on k labelled target images a class (ties: the lower loss on them): the same
trials, a different choice, so it measures how few labels suffice to choose.

Every trial of every study is scored on the target test images (rebuilt from its stored weights,
at the epoch the study kept), which no choice uses. Reported per seed and over seeds: the target
test accuracy of each chosen model, the fraction of the source-only -> ceiling gap it closes
(the source-only arm chosen label-free is 0), and per selection mode the Spearman rank correlation
over the trials between the criterion (negated where lower is better) and target test accuracy.

    python benchmarks/domain_selection_modes.py --out <folder> --seeds 0,1,2
    python benchmarks/domain_selection_modes.py --tiny --out <folder>   # tiny_cnn, the slice, seconds
    python benchmarks/domain_selection_modes.py --out <all> --merge <seed0> <seed1>   # seeds run apart

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist``; ``--from-sample`` (implied by
``--tiny``) builds the small slice from the committed sample instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fashion_mnist_m as fmm  # noqa: E402

ARMS = ("source_only", "head_dann", "backbone_dann")


def spearman(a, b) -> float | None:
    """Spearman's rho (average ranks for ties); None with fewer than 3 pairs or a constant side."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3:
        return None

    def ranks(v):
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in np.unique(v):
            same = v == value
            r[same] = r[same].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def labelled_subset(data_dir: Path, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k images a class of the target's training split (x, y, their indices in it)."""
    x, y = fmm.load_split(data_dir, "target_train")
    rng = np.random.default_rng(1000 + seed)
    idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:k] for c in range(int(y.max()) + 1)])
    if any((y[idx] == c).sum() < k for c in range(int(y.max()) + 1)):
        raise SystemExit(f"--ks: the target's training split has fewer than {k} images of a class")
    idx = np.sort(idx)
    return x[idx], y[idx], idx


def write_npz(path: Path, x, y) -> Path:
    np.savez(path, x=x, y=y, class_names=np.array(fmm.CLASSES))
    return path


def study_spec(arm: str, a, data_dir: Path, seed: int, *, labelled: Path | None = None,
               ceiling: bool = False) -> dict:
    """The study file of one arm (``labelled``: k labelled target images a class to judge on)."""
    rel = lambda p: str(Path(p).resolve())  # noqa: E731
    data = {"path": rel(data_dir / ("target_train.npz" if ceiling else "source_train.npz")),
            "validation": rel(data_dir / ("target_val.npz" if ceiling else "source_val.npz")),
            "image_size": a.image_size}
    search = {"unfreeze_blocks": 0, "head_width": a.head_widths, "dropout": 0.2,
              "lr_stage1": {"low": 1e-3, "high": 1e-2, "log": True}}
    training = {"stage1_epochs": a.stage1_epochs, "stage2_epochs": 0, "batch_size": a.batch_size}
    if arm != "source_only":
        data["target"] = rel(data_dir / "target_train.npz")
        da = {"lambda_max": a.lambdas, "gamma": 10.0, "width": 64}
        if arm == "backbone_dann":
            da["stage"] = "backbone"
            search["unfreeze_blocks"] = a.unfreeze_blocks
            search["lr_stage2"] = {"low": 1e-5, "high": 1e-3, "log": True}
            training["stage2_epochs"] = a.stage2_epochs
        search["domain_adaptation"] = da
    if labelled is not None:
        if arm == "source_only":
            data["validation"] = rel(labelled)
        else:
            del data["validation"]
            data["target_validation"] = rel(labelled)
    name = "ceiling" if ceiling else arm
    return {"name": name, "objective": "val_loss", "n_trials": a.trials, "seed": seed,
            "data": data, "backbones": [a.backbone], "training": training,
            "sampler": {"type": "random", "seed": seed, "warm_start": False},
            "pruner": {"type": "none"}, "search": search}


def run_study(spec: dict, folder: Path, tests: dict[str, tuple]) -> dict:
    """Run the study in ``folder``; every complete trial's value and its accuracy on each of
    ``tests`` (name -> (x, y)), rebuilt from its stored weights."""
    import optuna
    import yaml

    from tlsearch.cli import main
    from tlsearch.config import load_config
    from tlsearch.export.exporter import rebuild_model
    from tlsearch.runner.prepare import load_study
    from tlsearch.search.artifacts import AtomicFileSystemArtifactStore
    from tlsearch.search.attrs import ATTR

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    t0 = time.perf_counter()
    rc = main(["run", str(path)])
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"{path.name}: tlsearch run failed ({rc})")
    cfg = load_config(path)
    study = load_study(cfg)
    classes = list(study.user_attrs[ATTR["classes"]])
    to_study = np.array([classes.index(n) for n in fmm.CLASSES])
    store = AtomicFileSystemArtifactStore(cfg.artifact_dir, create=False)
    trials = []
    for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]):
        model, modality = rebuild_model(cfg, study, t, store)
        rec = {"number": t.number, "value": float(t.value),
               "params": {k: (v if isinstance(v, (int, float, str)) else str(v))
                          for k, v in t.params.items()}}
        for name, (x, y) in tests.items():
            p = modality.predict_all(model, x)
            yy = to_study[y]
            rec[f"{name}_accuracy"] = float(np.mean(p.argmax(-1) == yy))
            rec[f"{name}_loss"] = float(np.mean(-np.log(np.clip(p[np.arange(len(yy)), yy], 1e-7, 1))))
        trials.append(rec)
        del model
    return {"value_name": cfg.value_name, "seconds": seconds, "trials": trials}


def choose(trials: list[dict], key: str, higher: bool = False, tie: str | None = None) -> dict:
    sign = -1 if higher else 1
    return min(trials, key=lambda r: (sign * r[key], r[tie] if tie else 0.0, r["number"]))


def one_seed(a, data_dir: Path, seed: int, tests: dict, labelled: dict[int, Path], root: Path) -> dict:
    out = {"seed": seed, "studies": {}, "choices": {}}
    folder = root / f"seed{seed}"
    ceiling = run_study(study_spec("source_only", a, data_dir, seed, ceiling=True), folder / "ceiling", tests)
    out["studies"]["ceiling"] = ceiling
    out["choices"]["ceiling"] = {"mode": "target val loss (all target_val labels)",
                                 **_choice(ceiling["trials"], "value")}
    for arm in ARMS:
        lf = run_study(study_spec(arm, a, data_dir, seed), folder / f"{arm}-label-free", tests)
        out["studies"][f"{arm}/label-free"] = lf
        out["choices"][f"{arm}/label-free"] = {"mode": f"label-free: {lf['value_name']}",
                                               **_choice(lf["trials"], "value")}
        for k in a.ks:  # the same trials re-ranked by k labelled target images a class
            out["choices"][f"{arm}/rerank-k{k}"] = {
                "mode": f"label-free study's trials re-ranked by accuracy on {k} labelled target images a class",
                **_choice(lf["trials"], f"labelled{k}_accuracy", higher=True, tie=f"labelled{k}_loss")}
        for k in a.labelled_studies:
            st = run_study(study_spec(arm, a, data_dir, seed, labelled=labelled[k]),
                           folder / f"{arm}-k{k}", tests)
            out["studies"][f"{arm}/k{k}"] = st
            out["choices"][f"{arm}/k{k}"] = {
                "mode": f"study judged on {k} labelled target images a class: {st['value_name']}",
                **_choice(st["trials"], "value")}
        print(f"seed {seed} {arm}: " + ", ".join(
            f"{n.split('/')[1]} {c['target_test_accuracy']:.3f}"
            for n, c in out["choices"].items() if n.startswith(arm + "/")), flush=True)
    src = out["choices"]["source_only/label-free"]["target_test_accuracy"]
    top = out["choices"]["ceiling"]["target_test_accuracy"]
    for c in out["choices"].values():
        c["gap_closed"] = (c["target_test_accuracy"] - src) / (top - src) if top > src else None
    return out


def _choice(trials: list[dict], key: str, higher: bool = False, tie: str | None = None) -> dict:
    best = choose(trials, key, higher, tie)
    crit = [(r[key] if higher else -r[key]) for r in trials]
    return {"trial": best["number"], "target_test_accuracy": best["target_test_accuracy"],
            "criterion": key, "n_trials": len(trials),
            "spearman": spearman(crit, [r["target_test_accuracy"] for r in trials])}


def summarize(res: dict) -> tuple[dict, str]:
    names = list(res["seeds"][0]["choices"])
    over = {}
    for n in names:
        cs = [s["choices"][n] for s in res["seeds"]]
        acc = [c["target_test_accuracy"] for c in cs]
        gaps = [c["gap_closed"] for c in cs if c["gap_closed"] is not None]
        rhos = [c["spearman"] for c in cs if c["spearman"] is not None]
        over[n] = {"mode": cs[0]["mode"],
                   "target_test_accuracy_mean": statistics.fmean(acc),
                   "target_test_accuracy_se": statistics.stdev(acc) / len(acc) ** 0.5 if len(acc) > 1 else None,
                   "gap_closed_mean": statistics.fmean(gaps) if gaps else None,
                   "spearman_mean": statistics.fmean(rhos) if rhos else None,
                   "per_seed": acc}
    src = over["source_only/label-free"]["target_test_accuracy_mean"]
    top = over["ceiling"]["target_test_accuracy_mean"]
    for o in over.values():  # steadier than the mean of per-seed fractions when a gap is small
        o["gap_closed_of_means"] = (o["target_test_accuracy_mean"] - src) / (top - src) if top > src else None

    def f(v, fmt="{:.3f}"):
        return "n/a" if v is None else fmt.format(v)

    seeds = [s["seed"] for s in res["seeds"]]
    lines = [f"| choice | how | " + " | ".join(f"seed {s}: test acc / gap / rho" for s in seeds)
             + " | mean test acc | mean gap closed | gap closed of means | mean rho |",
             "|---|---|" + "---|" * (len(seeds) + 4)]
    for n in names:
        cells = []
        for s in res["seeds"]:
            c = s["choices"][n]
            cells.append(f"{c['target_test_accuracy']:.3f} / {f(c['gap_closed'], '{:+.0%}')} / "
                         f"{f(c['spearman'], '{:+.2f}')}")
        o = over[n]
        lines.append(f"| {n} | {o['mode']} | " + " | ".join(cells) +
                     f" | {f(o['target_test_accuracy_mean'])} | {f(o['gap_closed_mean'], '{:+.0%}')} | "
                     f"{f(o['gap_closed_of_means'], '{:+.0%}')} | "
                     f"{f(o['spearman_mean'], '{:+.2f}')} |")
    return over, "\n".join(lines)


def goals(over: dict, a) -> dict:
    """The issue's targets, judged on the gap the mean accuracies over seeds close (and the mean
    Spearman); the best of the DANN arms' choices for each k, so an optimistic reading."""
    out = {}
    arms = ARMS[1:]
    for k in sorted(set(a.labelled_studies) | set(a.ks)):
        keys = [f"{arm}/k{k}" for arm in arms if f"{arm}/k{k}" in over] + \
               [f"{arm}/rerank-k{k}" for arm in arms if f"{arm}/rerank-k{k}" in over]
        if keys:
            best = max(keys, key=lambda n: _gap(over[n]))
            out[f"k{k}_best_dann_choice_closes_half"] = {
                "choice": best, "gap_closed": over[best]["gap_closed_of_means"],
                "met": _gap(over[best]) >= 0.5}
    lf = [f"{arm}/label-free" for arm in arms]
    best = max(lf, key=lambda n: _gap(over[n]))
    out["label_free_closes_a_quarter_and_ranks"] = {
        "choice": best, "gap_closed": over[best]["gap_closed_of_means"],
        "spearman_mean": over[best]["spearman_mean"],
        "met": _gap(over[best]) >= 0.25 and (over[best]["spearman_mean"] or -9) >= 0.5}
    return out


def _gap(o: dict) -> float:
    return o["gap_closed_of_means"] if o["gap_closed_of_means"] is not None else -9.0


def _write(res: dict, table: str, out: Path) -> None:
    text = [table, "", "Goals (gap closed by the mean accuracy over seeds; the best DANN choice):"]
    text += [f"- {n}: {g['choice']}, gap closed {_pct(g['gap_closed'])}"
             + (f", Spearman {_num(g['spearman_mean'])}" if "spearman_mean" in g else "")
             + f": {'met' if g['met'] else 'missed'}" for n, g in res["goals"].items()]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=float))
    (out / "results.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


def _pct(v):
    return "n/a" if v is None else f"{v:+.0%}"


def _num(v):
    return "n/a" if v is None else f"{v:+.2f}"


def merge(folders: list[Path], out: Path) -> int:
    runs = [json.loads((f / "results.json").read_text()) for f in folders]
    res = {**runs[0], "seeds": [s for r in runs for s in r["seeds"]],
           "machines": [r["machine"] for r in runs],
           "total_seconds": sum(r["total_seconds"] for r in runs)}
    res.pop("machine", None)
    over, table = summarize(res)
    res["over_seeds"] = over
    res["goals"] = goals(over, argparse.Namespace(**res["settings"]))
    _write(res, table, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=None, help="a Fashion-MNIST-M folder (built if absent)")
    ap.add_argument("--from-sample", action="store_true", help="build the slice of the committed sample")
    ap.add_argument("--n", type=int, nargs=6, metavar=("SRC_TRAIN", "SRC_VAL", "SRC_TEST", "TGT_TRAIN",
                                                       "TGT_VAL", "TGT_TEST"), default=None)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--stage1-epochs", type=int, default=10)
    ap.add_argument("--stage2-epochs", type=int, default=3)
    ap.add_argument("--unfreeze-blocks", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--head-widths", default="64,128")
    ap.add_argument("--lambdas", default="0.1,0.3,1.0")
    ap.add_argument("--ks", default="5,10,20", help="labelled target images a class to re-rank with")
    ap.add_argument("--labelled-studies", default="10",
                    help="k for which each arm's study is also run judged on k labelled target "
                         "images a class (empty: none)")
    ap.add_argument("--tiny", action="store_true", help="tiny_cnn on the committed sample's slice")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="only combine the results.json of runs of other seeds (same settings)")
    a = ap.parse_args(argv)
    if a.merge:
        return merge(a.merge, a.out)
    if a.tiny:
        a.from_sample, a.backbone, a.image_size, a.trials = True, "tiny_cnn", 32, 2
        a.stage1_epochs, a.stage2_epochs, a.batch_size, a.head_widths = 2, 1, 16, "8"
        a.ks, a.labelled_studies = "2,5", "5"
    a.seeds = [int(s) for s in a.seeds.split(",")]
    a.ks = [int(k) for k in a.ks.split(",") if k]
    a.labelled_studies = [int(k) for k in a.labelled_studies.split(",") if k]
    a.head_widths = [int(w) for w in a.head_widths.split(",")]
    a.lambdas = [float(v) for v in a.lambdas.split(",")]
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    a.out.mkdir(parents=True, exist_ok=True)
    data_dir = a.data or a.out / "fashion-mnist-m"
    t0 = time.perf_counter()
    if not (data_dir / "meta.json").is_file():
        sizes = dict(zip(fmm.SPLITS, a.n)) if a.n else None
        fmm.build(data_dir, seed=0, sizes=sizes, from_sample=a.from_sample)
    from tlsearch.data.images import resize_batch

    x_test, y_test = fmm.load_split(data_dir, "target_test")
    x_test = resize_batch(x_test, a.image_size)  # tlsearch's own resize, as the studies' loader
    ks = sorted(set(a.ks) | set(a.labelled_studies))
    res = {"settings": {k: v for k, v in vars(a).items() if k not in ("out", "data", "n")},
           "data": json.loads((data_dir / "meta.json").read_text()), "seeds": []}
    for seed in a.seeds:
        tests, labelled = {"target_test": (x_test, y_test)}, {}
        for k in ks:  # drawn per seed from the target's training split
            x, y, idx = labelled_subset(data_dir, k, seed)
            tests[f"labelled{k}"] = (resize_batch(x, a.image_size), y)
            labelled[k] = write_npz(a.out / f"target_labelled_k{k}_seed{seed}.npz", x, y)
        t = time.perf_counter()
        res["seeds"].append(one_seed(a, data_dir, seed, tests, labelled, a.out / "studies"))
        res["seeds"][-1]["seconds"] = time.perf_counter() - t
    over, table = summarize(res)
    res["over_seeds"] = over
    res["goals"] = goals(over, a)
    import keras
    import tensorflow as tf

    res["machine"] = {"cpus": os.cpu_count(), "load_average": os.getloadavg(),
                      "python": platform.python_version(), "tensorflow": tf.__version__,
                      "keras": keras.__version__, "gpus": len(tf.config.list_physical_devices("GPU")),
                      "date": date.today().isoformat()}
    res["total_seconds"] = time.perf_counter() - t0
    _write(res, table, a.out)
    print(f"total {res['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
