"""Memory and time of many stage-2 trials in one process, on the tiny CNN twin.

    python benchmarks/stage2_memory.py --trials 100 --out stage2-memory.json
    python benchmarks/stage2_memory.py --trials 100 --path uncached --out uncached.json
    python benchmarks/stage2_memory.py --trials 40 --path uncached --recycle-after 10 --out r.json

Runs one study through ``tlsearch run``'s code path (``prepare`` then ``run``, no pruning, random
sampling) in which every trial fine-tunes 1-3 blocks of ``tiny_cnn`` (``--path cached``: on cached
boundaries, through the pooled stage-2 models; ``--path uncached``: with augmentation, so every
trial trains the whole network) and records the process's resident set size (psutil) and the clock
after every trial, plus the number of traced TensorFlow functions alive at the end. What is
measured is the growth per trial, which would add up over a long study; the data are small on
purpose, so that the per-trial cost is mostly what the framework keeps, not the training.

``--recycle-after K`` runs ``tlsearch run --recycle-after K`` as a command instead and samples the
resident set size of its worker processes twice a second: the peak per worker process shows what
recycling bounds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def _images(n: int, size: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 120, (n, size, size, 3)).astype(np.uint8)
    y = np.arange(n) % 3
    x[y == 1, : size // 3] = 250
    x[y == 2, :, : size // 3] = 250
    return x, y


def study_file(folder: Path, trials: int, path: str, n_train: int = 96, n_val: int = 32) -> Path:
    import numpy as np
    import yaml

    classes = np.array(["a", "b", "c"])
    for split, n, seed in (("train", n_train, 0), ("val", n_val, 1)):
        x, y = _images(n, 32, seed)
        np.savez(folder / f"{split}.npz", x=x, y=y, class_names=classes)
    search = {"unfreeze_blocks": {"low": 1, "high": 3}, "head_width": [8, 16],
              "dropout": {"low": 0.0, "high": 0.5},
              "lr_stage1": {"low": 1e-3, "high": 1e-2, "log": True},
              "lr_stage2": {"low": 1e-4, "high": 1e-3, "log": True}}
    if path == "uncached":
        search["augmentation"] = 0.3
    study = {"name": "mem", "n_trials": trials, "seed": 0,
             "storage": f"sqlite:///{folder / 'mem.db'}", "artifacts": str(folder / "artifacts"),
             "data": {"path": str(folder / "train.npz"), "validation": str(folder / "val.npz"),
                      "image_size": 32},
             "backbones": ["tiny_cnn"],
             "training": {"stage1_epochs": 1, "stage2_epochs": 1, "batch_size": 16},
             "pruner": {"type": "none"}, "sampler": {"type": "random"},
             "search": search, "cache": {"dir": str(folder / "cache")}}
    f = folder / "mem.yaml"
    f.write_text(yaml.safe_dump(study, sort_keys=False))
    return f


def traced_functions() -> int:
    """Graphs of traced TensorFlow functions still reachable in this process."""
    from tensorflow.python.framework.func_graph import FuncGraph

    gc.collect()
    return sum(isinstance(o, FuncGraph) for o in gc.get_objects())


def run(trials: int, path: str) -> dict:
    import optuna
    import psutil
    from rich.console import Console

    from tlsearch.config import load_config
    from tlsearch.runner import loop
    from tlsearch.runner import prepare as st
    from tlsearch.search.progress import Progress

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    proc = psutil.Process()
    points: list[dict] = []

    class _Recorder(Progress):
        def trial_end(self, number, state, value, note=""):
            super().trial_end(number, state, value, note)
            points.append({"trial": number, "state": state, "rss_mb": proc.memory_info().rss / 2**20,
                           "seconds": time.perf_counter() - t0})

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(study_file(Path(tmp), trials, path))
        rss0 = proc.memory_info().rss / 2**20
        t0 = time.perf_counter()
        prep = st.prepare(cfg, warn=lambda *a, **k: None)
        progress = _Recorder(Console(file=open(os.devnull, "w"), quiet=True),
                             objective=cfg.objective, maximize=cfg.direction == "maximize")
        loop.run_trials(prep, progress)
        functions = traced_functions()
        tops = getattr(prep.source, "tops", None)  # None: a version without the pool
        pooled = None if tops is None else len(tops)
    first, last = points[0], points[-1]
    tenth = points[min(9, len(points) - 1)]
    n = len(points)
    return {
        "path": path, "trials": n, "states": sorted({p["state"] for p in points}),
        "rss_before_mb": rss0, "rss_after_first_mb": first["rss_mb"],
        "rss_after_tenth_mb": tenth["rss_mb"], "rss_after_last_mb": last["rss_mb"],
        "rss_growth_mb": last["rss_mb"] - first["rss_mb"],
        "rss_growth_after_tenth_mb": last["rss_mb"] - tenth["rss_mb"],
        "mb_per_trial_after_tenth": (last["rss_mb"] - tenth["rss_mb"]) / max(1, n - 10),
        "seconds_per_trial_after_first": (last["seconds"] - first["seconds"]) / max(1, n - 1),
        "traced_functions_at_end": functions, "pooled_stage2_models": pooled, "points": points,
    }


def run_recycled(trials: int, path: str, every: int) -> dict:
    """``tlsearch run --recycle-after every`` as a command, its workers' RSS sampled."""
    import subprocess

    import optuna
    import psutil

    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(repo), os.environ.get("PYTHONPATH")) if p)}
    peak: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        f = study_file(Path(tmp), trials, path)
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "tlsearch.cli", "run", str(f),
                                 "--recycle-after", str(every)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        parent = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                for c in parent.children(recursive=True):
                    rss = c.memory_info().rss / 2**20
                    peak[c.pid] = max(peak.get(c.pid, 0.0), rss)
            except psutil.Error:
                pass
            time.sleep(0.5)
        seconds = time.perf_counter() - t0
        study = optuna.load_study(study_name="mem", storage=f"sqlite:///{Path(tmp) / 'mem.db'}")
        done = [t for t in study.trials if t.state.name == "COMPLETE"]
    workers = [peak[p] for p in sorted(peak)]
    return {"path": path, "recycle_after": every, "exit_code": proc.returncode,
            "trials": len(done), "seconds": seconds, "worker_processes": len(workers),
            "peak_rss_per_worker_mb": workers, "peak_rss_mb": max(workers) if workers else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--path", choices=["cached", "uncached"], default="cached")
    ap.add_argument("--recycle-after", type=int, default=0, metavar="K",
                    help="run `tlsearch run --recycle-after K` instead, sampling its workers' RSS")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    result = (run_recycled(a.trials, a.path, a.recycle_after) if a.recycle_after
              else run(a.trials, a.path))
    a.out.write_text(json.dumps(result, indent=1))
    summary = {k: v for k, v in result.items() if k != "points"}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
