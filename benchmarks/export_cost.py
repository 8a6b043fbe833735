"""Benchmark (issue 12): what an export of the quickstart model weighs, and what writing and loading it cost.

One trial of the quickstart study (EfficientNet-Lite0 at 96 px, 6 blocks unfrozen, the README's
best trial's depth; one epoch per stage, since only the files matter here) is run into a
temporary folder, then:

* ``tlsearch export`` is timed as a user runs it (a fresh process, wall time), with all formats;
* the size of every format is compared with the Keras file (the SavedModel used to store each
  variable twice);
* loading is timed in fresh processes, ``--repeats`` times each, as a server starting up would
  pay it: importing TensorFlow and tlsearch, loading the export (``tlsearch.load``, which also
  verifies every file's SHA-256; ``keras.saving.load_model`` on ``model.keras``;
  ``tf.saved_model.load`` on the SavedModel), and the first prediction of one image;
* ``tlsearch predict EXPORT IMAGE`` is timed end to end (wall time of the command).

Run from the repository root (about 3-5 minutes on 2 CPU cores)::

    python benchmarks/export_cost.py --repeats 3 --out export.json
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
STUDY = REPO / "studies" / "quickstart.yaml"

#: run in a fresh process: prints one JSON line of timings (seconds) for one way of loading
LOADERS = {
    "tlsearch.load": """
import tlsearch
t1 = time.perf_counter()
p = tlsearch.load(EXPORT)
t2 = time.perf_counter()
p.predict([np.zeros((96, 96, 3), np.uint8)])
""",
    "keras.load_model": """
import keras, tlsearch.layers
t1 = time.perf_counter()
m = keras.saving.load_model(EXPORT + "/model.keras", compile=False)
t2 = time.perf_counter()
m.predict(np.zeros((1, 96, 96, 3), np.float32), verbose=0)
""",
    "tf.saved_model.load": """
import tensorflow as tf
t1 = time.perf_counter()
m = tf.saved_model.load(EXPORT + "/serving/1")
t2 = time.perf_counter()
m.serve(tf.zeros((1, 96, 96, 3), tf.float32))
""",
}

_PROLOGUE = """
import json, os, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
t0 = time.perf_counter()
import numpy as np
EXPORT = {export!r}
"""
_EPILOGUE = """
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "first_predict": t3 - t2, "total": t3 - t0}))
"""


def _study_file(tmp: Path) -> Path:
    import yaml

    spec = yaml.safe_load(STUDY.read_text())
    spec["n_trials"] = 1
    spec["data"]["path"] = str(STUDY.parent / spec["data"]["path"])
    spec["data"].pop("test", None)  # export cost only: the test set is not read
    spec["training"].update(stage1_epochs=1, stage2_epochs=1)
    spec["search"]["unfreeze_blocks"] = 6
    spec["storage"] = f"sqlite:///{tmp}/export-bench.db"
    spec["artifacts"] = str(tmp / "artifacts")
    path = tmp / "export-bench.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _cli(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tlsearch.cli", *args], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() \
        else path.stat().st_size


def _load_times(export: Path, repeats: int) -> dict:
    out = {}
    for name, body in LOADERS.items():
        runs = []
        for _ in range(repeats):
            code = _PROLOGUE.format(export=str(export)) + body + _EPILOGUE
            r = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                               text=True)
            runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
        out[name] = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
        out[name]["runs"] = runs
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per way of loading")
    p.add_argument("--out", type=Path, help="write the numbers as JSON here")
    p.add_argument("--keep", type=Path, help="leave the study and its export in this new folder")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["TLSEARCH_NO_ESTIMATE"] = "1"
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.keep:
            args.keep.mkdir(parents=True)
            tmp = args.keep.resolve()
        study = _study_file(tmp)
        results["train_seconds"] = round(_cli("run", str(study), "--quiet"), 1)
        export = tmp / "export"
        results["export_seconds"] = round(_cli("export", str(study), "--out", str(export)), 1)
        keras_mb = _size(export / "model.keras") / 1e6
        sizes = {"model.keras": keras_mb, "serving/1": _size(export / "serving" / "1") / 1e6}
        for f in ("model.onnx", "model.tflite"):
            if (export / f).exists():
                sizes[f] = _size(export / f) / 1e6
        results["size_mb"] = {k: round(v, 2) for k, v in sizes.items()}
        results["size_vs_keras"] = {k: round(v / keras_mb, 3) for k, v in sizes.items()}
        results["load_seconds"] = _load_times(export, args.repeats)
        image = next((STUDY.parent / "data" / "fashion-sample" / "bag").iterdir())
        results["cli_predict_seconds"] = sorted(
            round(_cli("predict", str(export), str(image)), 2) for _ in range(args.repeats))
    common.report(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
