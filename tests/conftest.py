"""Shared fixtures: tiny image folders and tiny study files that run in seconds."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# `tlsearch run` times a few batches before a new study (seconds each); tests of it unset this
os.environ.setdefault("TLSEARCH_NO_ESTIMATE", "1")

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """No test writes into the user's ~/.cache."""
    monkeypatch.setenv("TLSEARCH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def bench_env(tmp_path_factory) -> dict:
    """The environment a benchmark script runs in from the tests: the repository importable and
    Debian's Fashion-MNIST hidden (an empty folder in its place), so that the tiny runs take the
    committed sample whatever this machine has installed, as on a newcomer's machine."""
    return {**os.environ, "PYTHONPATH": str(REPO),
            "TLSEARCH_FASHION_MNIST_DIR": str(tmp_path_factory.mktemp("no-debian-fashion-mnist"))}


def make_image_folder(root: Path, classes=("circle", "square", "stripes"), per_class: int = 12,
                      size: int = 32, seed: int = 0) -> Path:
    """Learnable synthetic images: each class has its own pattern, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for c, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size, 3)).astype(np.float32)
            if c % 3 == 0:
                mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
            elif c % 3 == 1:
                mask = (abs(yy - size / 2) < size / 4) & (abs(xx - size / 2) < size / 4)
            else:
                mask = (xx // 4) % 2 == 0
            img[mask] += 180
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{name}_{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images")


def write_study(path: Path, **overrides) -> Path:
    """A tiny study file (tiny_cnn, a few epochs) with ``overrides`` merged in at the top level."""
    study = {
        "name": "tiny",
        "n_trials": 3,
        "seed": 0,
        "data": {"path": "images", "validation_split": 0.25, "image_size": 32},
        "backbones": ["tiny_cnn"],
        "training": {"stage1_epochs": 2, "stage2_epochs": 2, "batch_size": 8},
        "pruner": {"type": "none"},
        "sampler": {"type": "random"},
        "search": {"unfreeze_blocks": {"low": 0, "high": 2}, "head_width": [8, 16],
                   "lr_stage1": {"low": 1e-3, "high": 1e-2, "log": True},
                   "lr_stage2": {"low": 1e-4, "high": 1e-3, "log": True}},
    }
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(study.get(k), dict):
            study[k] = {**study[k], **v}
        else:
            study[k] = v
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def write_reviews(path: Path) -> Path:
    """48 tiny two-class reviews (pos/neg) as a CSV, for text studies on ``tiny_bert``."""
    import pandas as pd

    rng = np.random.default_rng(0)
    y = rng.permutation(np.arange(48) % 2)
    words = (["dull and bad", "awful film", "poor acting"], ["great fun", "good film", "fine acting"])
    pd.DataFrame({"text": [f"{words[t][i % 3]} . the plot" for i, t in enumerate(y)],
                  "label": np.where(y == 1, "pos", "neg")}).to_csv(path, index=False)
    return path


@pytest.fixture
def tiny_study(tmp_path, image_folder) -> Path:
    return write_study(tmp_path / "study.yaml")
