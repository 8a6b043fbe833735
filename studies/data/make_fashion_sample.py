"""Write the quickstart's image folders: a class-balanced sample of Fashion-MNIST as PNG files.

Fashion-MNIST (MIT licence) comes from Debian's ``dataset-fashion-mnist`` package
(``apt-get install dataset-fashion-mnist``). The sample in ``fashion-sample/`` was made with the
defaults below and is committed, so the quickstart needs no download. Its held-out test set,
``fashion-test/``, holds 40 images a class from Fashion-MNIST's own test split (images the training
sample cannot contain):

    python studies/data/make_fashion_sample.py --per-class 60 --out studies/data/fashion-sample
    python studies/data/make_fashion_sample.py --split test --per-class 40 --out studies/data/fashion-test
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
SOURCE = Path("/usr/share/datasets/fashion-mnist")


def read_idx(split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(SOURCE / f"{prefix}-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(SOURCE / f"{prefix}-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    return x, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--split", choices=["train", "test"], default="train")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "fashion-sample")
    a = ap.parse_args()
    x, y = read_idx(a.split)
    rng = np.random.default_rng(a.seed)
    for c, name in enumerate(CLASSES):
        idx = rng.choice(np.flatnonzero(y == c), a.per_class, replace=False)
        d = a.out / name
        d.mkdir(parents=True, exist_ok=True)
        for i in idx:
            Image.fromarray(x[i]).save(d / f"{a.split}-{i:05d}.png", optimize=True)
    print(f"wrote {a.per_class * len(CLASSES)} images to {a.out}")


if __name__ == "__main__":
    main()
