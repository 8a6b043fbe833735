"""Benchmark (issue 23): batch prediction against a plain loop over the loaded SavedModel.

On the quickstart's 600 images (``studies/data/fashion-sample``), side by side in one run,
``--repeats`` times each, taking turns:

* **plain loop, files**: the file bytes of each batch of 64 through the SavedModel's
  ``serve_image_bytes`` endpoint (decoded and resized inside its graph): what a user writes to
  run the export over a folder;
* **plain loop, arrays**: the images decoded beforehand, each batch through ``serve``: the model
  alone, an upper bound no reader of files reaches;
* **in-process predict**: ``tlsearch.load(EXPORT).predict(FOLDER)``;
* **``tlsearch predict``** as a subprocess (``--format jsonl``): start-up is the time to its first
  batch of rows (importing TensorFlow, loading and verifying the export, tracing, one batch),
  reported apart, as is the time from its last row to its exit; its warm rate counts the images
  after the first batch over the time from the first rows to the last.

Every in-process figure is warm: one pass over a batch runs first, untimed; each also reports its
CPU time per image (all threads), which the machine's other load does not move as it moves wall
time. Medians are printed and written with every run. Without ``--export``, one trial of the
quickstart study (1 epoch per stage, 6 blocks unfrozen; only the network matters here) is run and
exported to a temporary folder first, as ``export_cost.py`` does.

    python benchmarks/predict_throughput.py --repeats 3 --out predict-throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "studies" / "data" / "fashion-sample"


def _export(tmp: Path) -> Path:
    """One quickstart trial, exported (Keras and SavedModel only)."""
    from export_cost import _study_file

    study = _study_file(tmp)
    env = {**os.environ, "TLSEARCH_NO_ESTIMATE": "1"}
    for args in (["run", str(study), "--quiet"],
                 ["export", str(study), "--out", str(tmp / "export"), "--formats", ""]):
        subprocess.run([sys.executable, "-m", "tlsearch.cli", *args], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    return tmp / "export"


def _cli_predict(export: Path, folder: Path, batch_size: int) -> dict:
    """``tlsearch predict`` in a fresh process: start-up (to its first rows) and the warm rate."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "tlsearch.cli", "predict", str(export),
                             str(folder), "--format", "jsonl", "--batch-size", str(batch_size)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = last = None
    n = n_first = 0
    for line in proc.stdout:
        now = time.perf_counter()
        n += 1
        if first is None:
            first = now
        if now - first < 1e-3:  # the rows of the first batch arrive in one flush
            n_first = n
        last = now
    if proc.wait() != 0:
        raise SystemExit(f"tlsearch predict failed ({proc.returncode})")
    total = time.perf_counter() - t0
    assert first is not None and last is not None
    return {"images": n, "total_s": round(total, 3), "startup_s": round(first - t0, 3),
            # None when every row came in one read (a run of a batch or two: nothing to time)
            "warm_images_per_s": (round((n - n_first) / (last - first), 1)
                                  if n > n_first and last > first else None),
            "exit_s": round(t0 + total - last, 3)}


def _cpu() -> float:
    """CPU seconds of this process, every thread: what a way costs whatever else the machine
    runs (wall time on a shared machine moves with its load)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export", type=Path, help="an export folder (default: make one)")
    p.add_argument("--images", type=Path, default=IMAGES, help="the folder of images to predict")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    with tempfile.TemporaryDirectory() as tmp:
        export = args.export or _export(Path(tmp))
        return _measure(export, args)


def _measure(export: Path, args) -> int:
    import numpy as np
    from PIL import Image

    from tlsearch._quiet import import_tensorflow_quietly

    tf = import_tensorflow_quietly(lean=True)
    import tlsearch

    bs = args.batch_size
    files = sorted(f for f in args.images.rglob("*") if f.suffix.lower() == ".png")
    n = len(files)
    saved = tf.saved_model.load(str(export / "serving" / "1"))
    decoded = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) for f in files]
    predictor = tlsearch.load(export)

    def plain_files() -> None:
        for i in range(0, n, bs):
            data = [f.read_bytes() for f in files[i:i + bs]]
            saved.serve_image_bytes(tf.constant(data))["probabilities"].numpy()

    def plain_arrays() -> None:
        for i in range(0, n, bs):
            saved.serve(tf.constant(np.stack(decoded[i:i + bs])))["probabilities"].numpy()

    def in_process() -> None:
        rows = predictor.predict([args.images], batch_size=bs)
        assert len(rows) == n

    ways = {"plain loop, files (serve_image_bytes)": plain_files,
            "plain loop, arrays (serve; decoded beforehand)": plain_arrays,
            "in-process predict (tlsearch.load(...).predict)": in_process}
    # warm-up, untimed: each traced function once (the predictor's over two batches)
    saved.serve_image_bytes(tf.constant([files[0].read_bytes()]))
    saved.serve(tf.constant(decoded[0][None]))
    predictor.predict(files[:bs + 1], batch_size=bs)

    runs: dict[str, list[float]] = {k: [] for k in ways}
    cpu: dict[str, list[float]] = {k: [] for k in ways}
    cli: list[dict] = []
    load = os.getloadavg()
    for _ in range(args.repeats):
        for name, fn in ways.items():
            c0, t0 = _cpu(), time.perf_counter()
            fn()
            runs[name].append(round(n / (time.perf_counter() - t0), 1))
            cpu[name].append(round((_cpu() - c0) / n * 1000, 3))
        cli.append(_cli_predict(export, args.images, bs))
    medians = {k: statistics.median(v) for k, v in runs.items()}
    warm = [c["warm_images_per_s"] for c in cli if c["warm_images_per_s"] is not None]
    if warm:
        medians["tlsearch predict (subprocess, warm)"] = statistics.median(warm)
    plain = medians["plain loop, files (serve_image_bytes)"]
    result = {
        "images": n, "batch_size": bs, "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "images_per_s": runs, "median_images_per_s": medians,
        "cpu_ms_per_image": cpu,
        "median_cpu_ms_per_image": {k: statistics.median(v) for k, v in cpu.items()},
        "vs_plain_files": {k: round(v / plain, 3) for k, v in medians.items()},
        "cli": cli,
        "cli_startup_s_median": statistics.median(c["startup_s"] for c in cli),
        "cli_exit_s_median": statistics.median(c["exit_s"] for c in cli),
    }
    common.report(result, args.out)
    cpu_ms = result["median_cpu_ms_per_image"]
    print(f"\n{'way':<52} {'images/s (median)':>18} {'vs plain files':>15} {'CPU ms/image':>13}",
          file=sys.stderr)
    for k, v in medians.items():
        shown = f"{cpu_ms[k]:.3f}" if k in cpu_ms else "-"
        print(f"{k:<52} {v:>18.1f} {v / plain:>15.2f} {shown:>13}", file=sys.stderr)
    print(f"tlsearch predict start-up (to its first rows), median: "
          f"{result['cli_startup_s_median']:.2f} s; from its last row to its exit: "
          f"{result['cli_exit_s_median']:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
