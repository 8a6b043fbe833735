"""Build "Fashion-MNIST-M": Fashion-MNIST blended with colour photo patches, the way MNIST-M was built.

MNIST-M (Ganin et al., JMLR 2016, section 5.2.2) is the target domain of the classic digits
experiment: each MNIST digit blended with a patch cropped at random from a colour photo,
``|digit - patch|`` per channel. The class is unchanged and the style is not, so a network trained
on the grey images has to cope with colour, texture and inverted contrast. This script does the
same to Fashion-MNIST, with the colour photos that ship inside scikit-image (MNIST-M used BSDS500,
which is not on a package registry).

Source: Fashion-MNIST, grey replicated to three channels. Target: other Fashion-MNIST images,
blended. Source and target never share an image, so the target's labels are not the source's in
disguise. Train, validation and target train come from Fashion-MNIST's training split; the two
test sets from its test split. Everything is drawn from one seeded generator: the same arguments
give byte-identical files.

    python benchmarks/make_fashion_mnist_m.py --out data/fashion-mnist-m

writes ``source_{train,val,test}.npz`` and ``target_{train,val,test}.npz`` (``x`` uint8 N x H x W x 3,
``y`` int64, ``class_names``, and ``fashion_index``: which Fashion-MNIST image of which split) and
``meta.json``. ``target_train`` is meant to be used without its
labels (they are kept for analysis).

Without Debian's Fashion-MNIST, ``--from-sample`` builds a small slice from the images every
clone has (``studies/data/fashion-sample``: 60 a class from Fashion-MNIST's training split;
``studies/data/fashion-test``: 40 a class from its test split) in a second:

    python benchmarks/make_fashion_mnist_m.py --from-sample --out data/fashion-mnist-m-slice

Its sizes (``SLICE_SIZES``): source 200 train / 100 val / 200 test, target 200 train / 100 val /
200 test. Enough to check a study file or a script, not to measure anything.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from pathlib import Path

import numpy as np

#: Debian's dataset-fashion-mnist folder, or the one TLSEARCH_FASHION_MNIST_DIR names
FASHION_DIR = Path(os.environ.get("TLSEARCH_FASHION_MNIST_DIR") or "/usr/share/datasets/fashion-mnist")
CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
#: colour photos bundled with scikit-image (no download); the microscopy, retina and space images
#: that also ship with it are left out: MNIST-M's patches come from natural photographs
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "motorcycle_right")

REPO = Path(__file__).resolve().parent.parent
#: the committed PNG sample (class folders): Fashion-MNIST's train and test splits, in part
SAMPLE_DIRS = {"train": REPO / "studies" / "data" / "fashion-sample",
               "test": REPO / "studies" / "data" / "fashion-test"}
SPLITS = ("source_train", "source_val", "source_test", "target_train", "target_val", "target_test")
DEFAULT_SIZES = {"source_train": 2000, "source_val": 500, "source_test": 1000,
                 "target_train": 2000, "target_val": 500, "target_test": 1000}
#: what the committed sample holds: 600 training and 400 test images, all used
SLICE_SIZES = {"source_train": 200, "source_val": 100, "source_test": 200,
               "target_train": 200, "target_val": 100, "target_test": 200}


def load_photos() -> dict[str, np.ndarray]:
    """The bundled colour photos as uint8 RGB arrays."""
    import skimage.data as data

    out = {}
    for name in PHOTOS:
        if name.startswith("motorcycle_"):
            left, right, _ = data.stereo_motorcycle()
            img = left if name.endswith("left") else right
        else:
            img = getattr(data, name)()
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
            raise ValueError(f"skimage.data.{name}: expected uint8 RGB, got {img.dtype} {img.shape}")
        out[name] = img
    return out


def read_fashion(split: str, root: Path = FASHION_DIR) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    try:
        with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz") as f:
            x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz") as f:
            y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    except FileNotFoundError:
        raise SystemExit(f"Fashion-MNIST is not installed ({root} is missing): "
                         f"apt-get install -y dataset-fashion-mnist") from None
    return x, y


def read_sample(split: str, dirs: dict[str, Path] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The committed PNG sample of Fashion-MNIST's ``split`` as (N x 28 x 28 uint8, labels), in the
    order of the file names (``train-01234.png``: image 1234 of that split)."""
    from PIL import Image

    root = Path((dirs or SAMPLE_DIRS)[split])
    xs, ys = [], []
    for c, name in enumerate(CLASSES):
        files = sorted((root / name).glob("*.png"))
        if not files:
            raise SystemExit(f"the Fashion-MNIST sample is missing: no images in {root / name}")
        for f in files:
            xs.append(np.asarray(Image.open(f).convert("L"), np.uint8))
            ys.append(c)
    return np.stack(xs), np.array(ys, np.int64)


def stratified_disjoint(y: np.ndarray, sizes: list[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Disjoint, class-balanced index sets of the given sizes, in a random order each."""
    n_classes = int(y.max()) + 1
    pools = [rng.permutation(np.flatnonzero(y == c)) for c in range(n_classes)]
    taken = [0] * n_classes
    out = []
    for n in sizes:
        per = [n // n_classes + (1 if c < n % n_classes else 0) for c in range(n_classes)]
        pick = []
        for c, k in enumerate(per):
            if taken[c] + k > len(pools[c]):
                raise ValueError(f"not enough images of class {c} for the requested sizes")
            pick.append(pools[c][taken[c]:taken[c] + k])
            taken[c] += k
        out.append(rng.permutation(np.concatenate(pick)))
    return out


def resize(x: np.ndarray, size: int) -> np.ndarray:
    if x.shape[1] == size:
        return x
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR))
                     for im in x])


def blend(gray: np.ndarray, photos: list[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``|image - patch|`` per channel with a random crop of a random photo (MNIST-M's recipe).

    Returns the blended images and, for the record, which photo each patch came from.
    """
    n, h, w = gray.shape
    out = np.empty((n, h, w, 3), np.uint8)
    which = rng.integers(0, len(photos), n)
    for i in range(n):
        p = photos[which[i]]
        top = rng.integers(0, p.shape[0] - h + 1)
        left = rng.integers(0, p.shape[1] - w + 1)
        patch = p[top:top + h, left:left + w].astype(np.int16)
        out[i] = np.abs(gray[i].astype(np.int16)[..., None] - patch).astype(np.uint8)
    return out, which


def build(out_dir: Path, *, seed: int = 0, size: int = 28, sizes: dict[str, int] | None = None,
          fashion_dir: Path = FASHION_DIR, from_sample: bool = False) -> dict:
    """Write the six splits into ``out_dir``; returns what ``meta.json`` records.

    ``from_sample``: take the images from the committed PNG sample instead of Debian's
    Fashion-MNIST (sizes default to ``SLICE_SIZES``; ``fashion_index`` then indexes the sample).
    """
    sizes = {**(SLICE_SIZES if from_sample else DEFAULT_SIZES), **(sizes or {})}
    rng = np.random.default_rng(seed)
    if from_sample:
        x_tr, y_tr = read_sample("train")
        x_te, y_te = read_sample("test")
    else:
        x_tr, y_tr = read_fashion("train", fashion_dir)
        x_te, y_te = read_fashion("test", fashion_dir)
    from_train = ["source_train", "source_val", "target_train", "target_val"]
    from_test = ["source_test", "target_test"]
    idx = dict(zip(from_train, stratified_disjoint(y_tr, [sizes[s] for s in from_train], rng)))
    idx.update(zip(from_test, stratified_disjoint(y_te, [sizes[s] for s in from_test], rng)))
    photos = load_photos()
    photo_list = [photos[n] for n in PHOTOS]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"seed": seed, "size": size, "sizes": sizes, "photos": list(PHOTOS),
            "fashion": "committed sample (studies/data/fashion-sample, fashion-test)" if from_sample
            else "Fashion-MNIST",
            "recipe": "target = |fashion - random photo crop| per channel (MNIST-M)", "files": {}}
    for split in SPLITS:
        xs, ys = (x_tr, y_tr) if split in from_train else (x_te, y_te)
        gray = resize(xs[idx[split]], size)
        if split.startswith("target"):
            x, which = blend(gray, photo_list, rng)
            meta.setdefault("photo_counts", {})[split] = np.bincount(which, minlength=len(PHOTOS)).tolist()
        else:
            x = np.repeat(gray[..., None], 3, axis=-1)
        path = out_dir / f"{split}.npz"
        np.savez(path, x=x, y=ys[idx[split]], class_names=np.array(CLASSES),
                 fashion_index=idx[split], fashion_split="train" if split in from_train else "test")
        meta["files"][split] = {"n": int(len(x)), "shape": list(x.shape[1:])}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def load_split(out_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(Path(out_dir) / f"{split}.npz") as f:
        return f["x"], f["y"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=28, help="image side in pixels (MNIST-M: 28)")
    ap.add_argument("--from-sample", action="store_true",
                    help="a small slice from the committed PNG sample (no Debian package needed)")
    for split in SPLITS:
        ap.add_argument(f"--n-{split.replace('_', '-')}", type=int, default=None,
                        help=f"default {DEFAULT_SIZES[split]} ({SLICE_SIZES[split]} with --from-sample)")
    a = ap.parse_args(argv)
    sizes = {s: getattr(a, "n_" + s) for s in SPLITS if getattr(a, "n_" + s) is not None}
    meta = build(a.out, seed=a.seed, size=a.size, sizes=sizes, from_sample=a.from_sample)
    print(json.dumps(meta["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
