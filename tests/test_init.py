"""`tlsearch init DATA`: a commented study file fit to the data, that validates and runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
import yaml

from conftest import REPO, make_image_folder
from tlsearch.cli import main
from tlsearch.config import load_config
from tlsearch.starter.recipe import Timing, choose_backbones, depth_share, make_recipe
from tlsearch.starter.survey import DataSurvey


def test_init_writes_a_study_that_validates_and_runs(tmp_path, image_folder, monkeypatch,
                                                     capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["init", "images", "--backbones", "tiny_cnn", "--no-estimate"]) == 0
    assert "tlsearch run study.yaml" in capsys.readouterr().out
    text = (tmp_path / "study.yaml").read_text()
    cfg = load_config(tmp_path / "study.yaml")
    assert cfg.name == "images" and cfg.timeout is None and cfg.n_trials == 30
    assert "not timed (--no-estimate)" in text  # the budget says where it came from
    assert "0 = the pretrained features alone; up to 1 of 4 blocks" in text
    assert "test_split: not set" in text  # 36 images: too few to spare a test set, and it says so
    assert cfg.data.validation_split == 0.25 and cfg.data.image_size == 32
    assert sum(line.lstrip().startswith("#") for line in text.splitlines()) >= 10
    assert main(["validate", "study.yaml"]) == 0
    assert main(["run", "study.yaml", "--n-trials", "1"]) == 0
    study = optuna.load_study(study_name="images", storage=cfg.storage_url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"]


def test_init_never_overwrites_and_refuses_bad_data(tmp_path, image_folder, capsys):
    out = tmp_path / "study.yaml"
    out.write_text("name: mine\n")
    assert main(["init", str(image_folder), "--out", str(out), "--no-estimate"]) == 2
    err = capsys.readouterr().err
    assert "study.yaml" in err and "--force" in err
    assert out.read_text() == "name: mine\n"

    assert main(["init", str(tmp_path / "nothing"), "--out", str(tmp_path / "n.yaml")]) == 2
    assert "nothing" in capsys.readouterr().err
    one = make_image_folder(tmp_path / "one", classes=("only",), per_class=4)
    assert main(["init", str(one), "--out", str(tmp_path / "o.yaml"), "--no-estimate"]) == 2
    assert "single class" in capsys.readouterr().err
    assert not (tmp_path / "n.yaml").exists() and not (tmp_path / "o.yaml").exists()

    assert main(["init", str(image_folder), "--out", str(out), "--no-estimate", "--force",
                 "--backbones", "tiny_cnn"]) == 0
    assert load_config(out).name == "images"


def test_the_budget_comes_from_the_timing(tmp_path, image_folder, monkeypatch):
    """Timed on this machine (tiny_cnn: seconds), n_trials is what fits in --minutes."""
    monkeypatch.delenv("TLSEARCH_NO_ESTIMATE")
    out = tmp_path / "s.yaml"
    assert main(["init", str(image_folder), "--out", str(out), "--backbones", "tiny_cnn",
                 "--minutes", "5"]) == 0
    cfg = load_config(out)
    assert cfg.timeout == 300 and 10 <= cfg.n_trials <= 60
    assert "fit in 5 min" in out.read_text() and "timed on this machine" in out.read_text()
    # the rule itself, on numbers: what fits, kept within 10..60
    s = _survey({"a": 200, "b": 200})
    for mean, n in ((10.0, 18), (1.0, 60), (100.0, 10)):
        r = make_recipe(s, out_dir=Path("."), backbones=["tiny_cnn"], backbones_why="",
                        image_size=32, image_size_why="", caps={"tiny_cnn": 4},
                        timing=Timing(features=120, cheapest=1, costliest=2 * mean, mean=mean),
                        minutes=5)
        assert (r.study["n_trials"], r.study["timeout"]) == (n, 300)


def test_init_takes_train_val_test_folders_and_text_tables(tmp_path, capsys):
    for seed, (split, n) in enumerate((("train", 8), ("val", 3), ("test", 3))):
        make_image_folder(tmp_path / "ds" / split, per_class=n, seed=seed)
    out = tmp_path / "s.yaml"
    assert main(["init", str(tmp_path / "ds"), "--out", str(out), "--no-estimate",
                 "--backbones", "tiny_cnn"]) == 0
    raw = yaml.safe_load(out.read_text())
    assert raw["data"]["path"] == "ds/train" and raw["data"]["validation"] == "ds/val"
    assert raw["data"]["test"] == "ds/test" and "validation_split" not in raw["data"]

    from test_text import _snippets

    frame = _snippets(40)
    frame.rename(columns={"text": "review", "label": "sentiment"}).to_csv(tmp_path / "r.csv",
                                                                           index=False)
    out = tmp_path / "t.yaml"
    assert main(["init", str(tmp_path / "r.csv"), "--out", str(out), "--no-estimate",
                 "--backbones", "tiny_bert"]) == 0
    cfg = load_config(out)
    assert (cfg.data.text_column, cfg.data.label_column) == ("review", "sentiment")
    assert cfg.search.max_length == 32 and "max_length" in out.read_text()
    assert main(["validate", str(out)]) == 0


def _survey(counts: dict[str, int], modality: str = "image") -> DataSurvey:
    s = DataSurvey(Path("data"), Path("data"), "image_folder", modality)
    s.counts, s.image_sides = counts, (64, 48)
    return s


def _recipe(counts: dict[str, int]):
    s = _survey(counts)
    names, why = choose_backbones(s, None)
    return make_recipe(s, out_dir=Path("."), backbones=names, backbones_why=why, image_size=96,
                       image_size_why="", caps={n: 18 for n in names})


def test_the_recipe_grows_with_the_data():
    small, large = _recipe({"a": 200, "b": 200}), _recipe({"a": 40000, "b": 40000})
    assert small.study["search"]["unfreeze_blocks"]["high"] < \
        large.study["search"]["unfreeze_blocks"]["high"] == 18
    assert [depth_share(n) for n in (100, 1000, 5000, 20000, 90000)] == sorted(
        depth_share(n) for n in (100, 1000, 5000, 20000, 90000))
    assert "test_split" not in small.study["data"] and large.study["data"]["test_split"] == 0.15
    assert small.study["data"]["validation_split"] > large.study["data"]["validation_split"]
    assert large.study["backbones"] == ["efficientnet_lite0", "efficientnet_lite2"]
    assert "class_weight" not in small.study["training"] and small.study["objective"] == "val_loss"
    skewed = _recipe({"a": 600, "b": 100})
    assert skewed.study["training"]["class_weight"] == "auto"
    assert skewed.study["objective"] == "val_weighted_loss" and "6.0:1" in skewed.why["objective"]


@pytest.mark.slow
def test_init_on_the_quickstart_data_validates_and_runs(tmp_path, monkeypatch, capsys):
    """The README's first example after the quickstart, on the quickstart's own images, with the
    default backbone and the cost estimate."""
    monkeypatch.delenv("TLSEARCH_NO_ESTIMATE")
    shutil.copytree(REPO / "studies" / "data" / "fashion-sample", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert main(["init", "data/", "--minutes", "10"]) == 0
    cfg = load_config(tmp_path / "study.yaml")
    assert [e.name for e in cfg.backbone_entries] == ["efficientnet_lite0"]
    assert cfg.data.image_size == 96 and cfg.timeout == 600
    assert main(["run", "study.yaml", "--n-trials", "1", "--no-estimate"]) == 0
