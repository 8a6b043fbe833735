"""`tlsearch split`: the validation (and test) split a study cuts, written out as its runs cut it;
and `data.test_split`, the held-out test set a study can cut from `data.path` itself."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image_folder, write_study
from tlsearch.cli import main
from tlsearch.config import load_config
from tlsearch.data import load_dataset, load_labelled


def _digests(x: np.ndarray) -> list[str]:
    return sorted(hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() for v in x)


def _dataset(path: Path):
    cfg = load_config(path)
    return cfg, load_dataset(cfg.data, base_dir=cfg.base_dir, image_size=cfg.data.image_size,
                             seed=cfg.seed)


def test_split_writes_the_validation_images_a_run_validates_on(tmp_path, image_folder, capsys):
    study = write_study(tmp_path / "s.yaml", seed=7)
    cfg, ds = _dataset(study)
    out = tmp_path / "split"
    assert main(["split", str(study), "--out", str(out)]) == 0
    assert "validation" in capsys.readouterr().out

    files = sorted(p for p in (out / "validation").rglob("*") if not p.is_dir())
    assert len(files) == len(ds.y_val) == 9
    assert all(p.is_symlink() and p.resolve().is_relative_to(image_folder.resolve()) for p in files)
    x, y, _ = load_labelled(cfg.data, out / "validation", ds.class_names, base_dir=None,
                            image_size=32, field="split")
    assert _digests(x) == _digests(ds.x_val)  # the very images, by content
    assert sorted(y.tolist()) == sorted(ds.y_val.tolist())
    record = json.loads((out / "split.json").read_text())
    assert record["seed"] == 7 and record["files"] == "symlinks"
    assert record["fingerprint"] == ds.fingerprint
    assert record["splits"]["validation"]["class_counts"] == {"circle": 3, "square": 3,
                                                              "stripes": 3}
    # another seed, another split: the seed is the study's, not a default
    other = write_study(tmp_path / "o.yaml", seed=8)
    assert main(["split", str(other), "--out", str(tmp_path / "other")]) == 0
    again = sorted(p.name for p in (tmp_path / "other" / "validation").rglob("*.png"))
    assert again != sorted(p.name for p in files)


def test_test_split_is_held_out_first_and_written_too(tmp_path, image_folder):
    study = write_study(tmp_path / "s.yaml", data={"test_split": 0.25, "validation_split": 0.25},
                        )
    cfg, ds = _dataset(study)
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (18, 9, 9)
    assert not set(_digests(ds.x_test)) & set(_digests(ds.x_val) + _digests(ds.x_train))
    assert "held-out test" in ds.summary()
    out = tmp_path / "split"
    assert main(["split", str(study), "--out", str(out), "--copy"]) == 0
    for split, x in (("validation", ds.x_val), ("test", ds.x_test)):
        files = [p for p in (out / split).rglob("*.png")]
        assert files and not any(p.is_symlink() for p in files)
        got, _, _ = load_labelled(cfg.data, out / split, ds.class_names, base_dir=None,
                                  image_size=32, field="split")
        assert _digests(got) == _digests(x)
    # without test_split the validation split is what it always was
    plain = write_study(tmp_path / "p.yaml")
    _, before = _dataset(plain)
    assert len(before.y_val) == 9 and before.x_test is None


def test_split_of_a_table_and_of_arrays(tmp_path):
    import pandas as pd

    from test_text import _snippets

    _snippets(40).to_csv(tmp_path / "reviews.csv", index=False)
    study = write_study(tmp_path / "t.yaml", data={"path": "reviews.csv"}, backbones=["tiny_bert"])
    _, ds = _dataset(study)
    assert main(["split", str(study), "--out", str(tmp_path / "t")]) == 0
    table = pd.read_csv(tmp_path / "t" / "validation.csv")
    assert sorted(table["text"]) == sorted(ds.x_val.tolist())
    assert sorted(table["label"]) == sorted(ds.class_names[i] for i in ds.y_val)

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (24, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x=x, y=np.arange(24) % 3, class_names=np.array(["a", "b", "c"]))
    study = write_study(tmp_path / "a.yaml", data={"path": "a.npz", "image_size": 8})
    _, ds = _dataset(study)
    assert main(["split", str(study), "--out", str(tmp_path / "a")]) == 0
    with np.load(tmp_path / "a" / "validation.npz") as z:
        assert list(z["class_names"]) == ["a", "b", "c"] and len(z["x"]) == len(ds.y_val) == 6
        assert z["x"].shape[1:] == (8, 8)  # the rows as stored, not as trials resize them
        assert _digests(np.repeat(z["x"][..., None], 3, -1)) == _digests(ds.x_val)


def test_split_refuses_what_it_cannot_do_and_writes_nothing(tmp_path, image_folder, capsys):
    study = write_study(tmp_path / "s.yaml")
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["split", str(study), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "taken" in err and "--force" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    make_image_folder(tmp_path / "val", per_class=4, seed=1)
    given = write_study(tmp_path / "g.yaml", data={"validation": "val"})
    assert main(["split", str(given), "--out", str(tmp_path / "g")]) == 2
    assert "data.validation" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("data, words", [
    ({"test": "images", "test_split": 0.2}, "not both"),
    ({"test_split": 0.5, "validation_split": 0.5}, "test_split + validation_split < 1"),
    ({"test_split": 1.5}, "data.test_split"),
])
def test_test_split_is_checked_with_the_study_file(tmp_path, image_folder, capsys, data, words):
    study = write_study(tmp_path / "s.yaml", data=data)
    assert main(["validate", str(study)]) == 2
    assert words in capsys.readouterr().err
