"""What every peer of the benchmark shares: the data, the search space, the backbone, the schedule.

The comparison is only fair if all three peers see the same images, search the same space with the
same epochs and build the same network, so all of that is defined here once and nowhere else.

Data: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (28x28 grey, resized to RGB at
``image_size``), a seeded class-stratified sample of the training split for training and of the
test split for validation, and another sample of the test split, disjoint from it, as the held-out
test set that judges each peer's chosen model (never seen while choosing). The tiny CI settings
fall back on the committed 600-image sample in ``studies/data/fashion-sample`` when the Debian
package is absent; there the three splits are drawn disjoint from the sample's 60 images per
class, and a test split larger than what is left is cut to what is left.

``TLSEARCH_FASHION_MNIST_DIR`` names another folder for the Debian files (the tests point it at an
empty folder, so that they check the fallback whatever the machine has installed).
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notes: expected, many models

REPO = Path(__file__).resolve().parent.parent
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_DIR = Path(os.environ.get("TLSEARCH_FASHION_MNIST_DIR") or DEBIAN_FASHION_DIR)
SAMPLE_DIR = REPO / "studies" / "data" / "fashion-sample"
CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class Settings:
    """One benchmark configuration, identical for every peer."""

    n_train: int = 2000
    n_val: int = 1000
    n_test: int = 1000
    image_size: int = 96
    stage1_epochs: int = 5
    stage2_epochs: int = 3
    batch_size: int = 32
    seed: int = 0
    tiny: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


FULL = Settings()
#: small enough for CI: a few seconds of training per peer once TensorFlow is imported
TINY = Settings(n_train=100, n_val=50, n_test=50, image_size=32, stage1_epochs=2, stage2_epochs=1,
                tiny=True)


def settings_from(d: dict) -> Settings:
    return replace(FULL, **d)


# ---------------------------------------------------------------------------------------------
# The search space, written once and translated for each peer

#: EfficientNet-Lite0's blocks (as tlsearch cuts it): unfreezing all of them is full fine-tuning
BLOCKS = 18

#: name -> (kind, arguments). Unfreezing reaches every block, and the learning rates span wide
#: ranges (a stage-2 rate stays below every stage-1 rate, as tlsearch requires), so that no
#: peer's best trial needs to sit at a fence.
SPACE = {
    "unfreeze_blocks": ("int", 0, BLOCKS),
    "head_width": ("choice", [64, 128, 256]),
    "dropout": ("float", 0.0, 0.5),
    "lr_stage1": ("log", 5e-4, 1e-1),
    "lr_stage2": ("log", 1e-7, 5e-4),
}

#: the configuration every peer tries first (Optuna's enqueue_trial; what users call a warm start)
DEFAULT_PARAMS = {"unfreeze_blocks": 0, "head_width": 128, "dropout": 0.2, "lr_stage1": 1e-3,
                  "lr_stage2": 1e-5}


def suggest_optuna(trial) -> dict:
    out = {}
    for name, (kind, *args) in SPACE.items():
        if kind == "int":
            out[name] = trial.suggest_int(name, args[0], args[1])
        elif kind == "choice":
            out[name] = trial.suggest_categorical(name, args[0])
        else:
            out[name] = trial.suggest_float(name, args[0], args[1], log=kind == "log")
    return out


def suggest_keras_tuner(hp) -> dict:
    out = {}
    for name, (kind, *args) in SPACE.items():
        if kind == "int":
            out[name] = hp.Int(name, args[0], args[1])
        elif kind == "choice":
            out[name] = hp.Choice(name, args[0])
        else:
            out[name] = hp.Float(name, args[0], args[1], sampling="log" if kind == "log" else "linear")
    return out


def tlsearch_space() -> dict:
    """The ``search:`` section of a tlsearch study file."""
    out = {}
    for name, (kind, *args) in SPACE.items():
        if kind == "choice":
            out[name] = list(args[0])
        else:
            out[name] = {"low": args[0], "high": args[1], **({"log": True} if kind == "log" else {})}
    return out


# ---------------------------------------------------------------------------------------------
# Data


def ensure_fashion_mnist() -> Path:
    """The Debian Fashion-MNIST folder, installing the package when apt-get can; else a clear error."""
    if (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        return FASHION_DIR
    apt = shutil.which("apt-get")
    if FASHION_DIR == DEBIAN_FASHION_DIR and apt and hasattr(os, "geteuid") and os.geteuid() == 0:
        subprocess.run([apt, "install", "-y", "-q", "dataset-fashion-mnist"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
            return FASHION_DIR
    raise SystemExit(
        f"Fashion-MNIST is not installed ({FASHION_DIR} is missing). Install it with\n"
        f"    sudo apt-get install -y dataset-fashion-mnist\n"
        f"or run the benchmark with --tiny, which uses {SAMPLE_DIR.relative_to(REPO)}."
    )


def _read_idx(split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return x, y


def _read_sample() -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    xs, ys = [], []
    for c, name in enumerate(CLASSES):
        for f in sorted((SAMPLE_DIR / name).glob("*.png")):
            xs.append(np.asarray(Image.open(f).convert("L")))
            ys.append(c)
    return np.stack(xs), np.array(ys, dtype=np.int64)


def _per_class(n: int) -> list[int]:
    return [n // len(CLASSES) + (1 if c < n % len(CLASSES) else 0) for c in range(len(CLASSES))]


def _stratified(y: np.ndarray, n: int, rng: np.random.Generator, exclude=None,
                what: str = "split") -> np.ndarray:
    pick = []
    for c, k in enumerate(_per_class(n)):
        pool = np.flatnonzero(y == c)
        if exclude is not None:
            pool = np.setdiff1d(pool, exclude)
        if k > len(pool):
            raise SystemExit(f"the {what} asks for {k} images of class {CLASSES[c]!r} and only "
                             f"{len(pool)} are left in the data ({n} images over {len(CLASSES)} "
                             f"classes); ask for fewer")
        pick.append(rng.choice(pool, k, replace=False))
    return rng.permutation(np.concatenate(pick))


def _sample_test_size(y: np.ndarray, used: int, wanted: int) -> int:
    """The test split the committed sample can still give after ``used`` images per class went to
    training and validation (the tiny settings rarely use the test split: it is cut, not refused)."""
    left = min(int(np.sum(y == c)) for c in range(len(CLASSES))) - used
    return max(0, min(wanted, left * len(CLASSES)))


def _to_rgb(x: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if x.shape[1:] != (size, size):
        x = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR))
                      for im in x])
    return np.repeat(x[..., None], 3, axis=-1)


def load_data(s: Settings) -> dict:
    """``x_train, y_train, x_val, y_val`` (uint8 RGB, int labels) and ``class_names``, seeded."""
    rng = np.random.default_rng(s.seed)
    have_debian = (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file()
    if have_debian or not s.tiny:
        ensure_fashion_mnist()
        x_tr_all, y_tr_all = _read_idx("train")
        x_va_all, y_va_all = _read_idx("test")
        tr = _stratified(y_tr_all, s.n_train, rng)
        va = _stratified(y_va_all, s.n_val, rng)
        te = _stratified(y_va_all, s.n_test, rng, exclude=va)
        x_tr, y_tr, x_va, y_va = x_tr_all[tr], y_tr_all[tr], x_va_all[va], y_va_all[va]
        x_te, y_te = x_va_all[te], y_va_all[te]
        source = "debian:dataset-fashion-mnist"
    else:
        x, y = _read_sample()
        tr = _stratified(y, s.n_train, rng, what="training split")
        va = _stratified(y, s.n_val, rng, exclude=tr, what="validation split")
        used = max(_per_class(s.n_train)) + max(_per_class(s.n_val))
        te = _stratified(y, _sample_test_size(y, used, s.n_test), rng,
                         exclude=np.concatenate([tr, va]), what="test split")
        x_tr, y_tr, x_va, y_va, x_te, y_te = x[tr], y[tr], x[va], y[va], x[te], y[te]
        source = "studies/data/fashion-sample"
    return {
        "x_train": _to_rgb(x_tr, s.image_size), "y_train": y_tr,
        "x_val": _to_rgb(x_va, s.image_size), "y_val": y_va,
        "x_test": _to_rgb(x_te, s.image_size), "y_test": y_te,
        "class_names": list(CLASSES), "source": source,
    }


def test_accuracy(model, data: dict, batch_size: int = 64) -> float:
    """Accuracy of a peer's chosen model on the held-out test images."""
    probs = model.predict(data["x_test"], batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(probs, axis=1) == data["y_test"]))


def write_npz(data: dict, path: Path) -> tuple[Path, Path]:
    """The same images as tlsearch ``npz`` data: ``<stem>-train.npz`` and ``<stem>-val.npz``, so that
    tlsearch validates on exactly the images the other peers validate on (``data.validation``)."""
    path = Path(path)
    np.savez(path.with_name(path.stem + "-train.npz"), x=data["x_train"], y=data["y_train"],
             class_names=np.array(data["class_names"]))
    np.savez(path.with_name(path.stem + "-val.npz"), x=data["x_val"], y=data["y_val"],
             class_names=np.array(data["class_names"]))
    return path.with_name(path.stem + "-train.npz"), path.with_name(path.stem + "-val.npz")


# ---------------------------------------------------------------------------------------------
# The network the hand-written peers build (tlsearch builds the same one itself)


def build_backbone(s: Settings):
    """EfficientNet-Lite0 with ImageNet weights, as a tlsearch :class:`Backbone` (blocks known)."""
    from tlsearch.backbones import build_backbone as _build
    from tlsearch.config import BackboneEntry

    return _build(BackboneEntry(name=BACKBONE), s.image_size, seed=s.seed)


def build_two_stage(params: dict, s: Settings, n_classes: int):
    """The model a user writes for stage 1: frozen backbone (inference mode), dense, dropout, softmax.

    Returns ``(model, backbone)``; :func:`unfreeze` then opens the top blocks for stage 2.
    """
    import keras

    bb = build_backbone(s)
    bb.freeze(0)
    inp = keras.Input((s.image_size, s.image_size, 3), name="image")
    x = bb.model(inp, training=False)
    x = keras.layers.Dense(int(params["head_width"]), activation="relu")(x)
    x = keras.layers.Dropout(float(params["dropout"]))(x)
    out = keras.layers.Dense(n_classes, activation="softmax")(x)
    return keras.Model(inp, out), bb


def unfreeze(bb, n: int) -> None:
    """Whole top blocks, BatchNorm kept frozen (the recipe of the keras-io transfer guide)."""
    bb.freeze(min(int(n), bb.max_unfreeze), keep_bn_frozen=True)


def compile_model(model, lr: float) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def rss_mb() -> float:
    """Resident set size of this process, from /proc (Linux), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class BudgetSpent(Exception):
    """Raised inside a trial when the peer's wall-clock budget has run out."""


def deadline_callback(deadline: float):
    """A Keras callback that stops a peer at its budget, mid-trial: that trial does not count."""
    import time

    import keras

    class _Deadline(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if time.perf_counter() > deadline:
                raise BudgetSpent()

    return _Deadline()


def report(result: dict, out: Path | None, *, indent: int = 2, default=None) -> None:
    """Print a benchmark's result as JSON and, with ``--out``, write the same text there."""
    import json

    text = json.dumps(result, indent=indent, default=default)
    print(text)
    if out:
        out.write_text(text + "\n")
