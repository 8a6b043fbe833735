"""An export that says where it came from (data, split, counts, uncertainty; MODEL_CARD.md), and
whose metadata.json is checked like its files: an edited one is refused wherever it is loaded."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import optuna
import pytest

from conftest import REPO, make_image_folder, write_study
from tlsearch.cli import main
from tlsearch.config import load_config
from tlsearch.export.card import CARD_FILE, limitations, model_card
from tlsearch.export.integrity import SEAL_KEY, check_seal, seal
from tlsearch.errors import UserError

SECTIONS = ("## Model details", "## Intended use", "## Training data", "## Evaluation",
            "## Limitations", "## How to use")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A one-trial tiny study with a held-out test set, exported without optional formats."""
    root = tmp_path_factory.mktemp("provenance")
    make_image_folder(root / "images")  # 3 classes x 12: 27 training, 9 validation
    make_image_folder(root / "test-images", per_class=4, seed=7)
    study = write_study(root / "study.yaml", n_trials=1, data={"test": "test-images"},
                        search={"unfreeze_blocks": 1, "head_width": 8})
    assert main(["run", str(study)]) == 0
    out = root / "model"
    assert main(["export", str(study), "--out", str(out), "--formats", ""]) == 0
    return study, out


def _meta(out):
    return json.loads((out / "metadata.json").read_text())


def test_metadata_records_the_data_split_counts_and_uncertainty(site):
    from tlsearch.data import load_dataset

    study_path, out = site
    meta = _meta(out)
    cfg = load_config(study_path)
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    trial = study.best_trial
    data = meta["data"]
    assert data["fingerprint"] == study.user_attrs["tlsearch.data"]
    assert data["paths"] == {"path": "images", "test": "test-images"}
    assert data["split"] == {"method": "stratified random", "seed": 0, "validation_split": 0.25}
    ds = load_dataset(cfg.data, base_dir=cfg.base_dir, image_size=32, seed=0)
    assert data["examples"] == {"train": 27, "validation": 9, "test": 12}
    for split, y in (("train", ds.y_train), ("validation", ds.y_val), ("test", ds.y_test)):
        assert data["class_counts"][split] == {c: int(n) for c, n in
                                               zip(ds.class_names, np.bincount(y))}
    assert data["class_counts"]["validation"] == {"circle": 3, "square": 3, "stripes": 3}
    assert meta["objective_params"] == study.user_attrs["tlsearch.objective_params"]
    assert meta["value_se"] == pytest.approx(trial.user_attrs["tlsearch.value_se"])
    test = meta["test"]
    a = test["accuracy"]
    assert test["se"]["accuracy"] == pytest.approx(math.sqrt(a * (1 - a) / 12))
    assert test["se"]["loss"] > 0
    assert meta["format_version"] == 2 and set(meta[SEAL_KEY]) == set(meta) - {SEAL_KEY}
    assert "keras-hub" not in meta["versions"]  # an image export does not need it
    assert str(cfg.base_dir) not in json.dumps(meta)  # no folder of the exporting machine


def test_model_card_has_the_hub_sections_and_the_metadata_numbers(site):
    import tlsearch

    _, out = site
    meta = _meta(out)
    card = (out / CARD_FILE).read_text()
    assert [s for s in SECTIONS if s in card] == list(SECTIONS)
    assert card.index("## Model details") < card.index("## Limitations")
    assert f"{meta['value']:.4f} ± {meta['value_se']:.4f}" in card
    t = meta["test"]
    assert f"accuracy = {t['accuracy']:.4f} ± {t['se']['accuracy']:.4f}" in card
    assert meta["data"]["fingerprint"] in card and "(seed 0)" in card
    assert "| all | 27 | 9 | 12 |" in card
    assert "The validation set is small (9 examples)" in card  # a limitation the study knows
    assert "Classes with few training examples" in card
    assert f"tlsearch predict {out.name} picture.jpg" in card
    assert card == model_card(meta, out.name)  # written from metadata.json alone
    assert CARD_FILE not in meta["files"]  # documentation, free to add to:
    (out / CARD_FILE).write_text(card + "\nOur own notes.\n")
    try:
        tlsearch.load(out)
    finally:
        (out / CARD_FILE).write_text(card)


def _edited(out, tmp_path):
    """A copy of the export whose metadata.json lists its classes in reverse order."""
    copy = tmp_path / "edited"
    shutil.copytree(out, copy)
    meta = _meta(copy)
    meta["classes"] = meta["classes"][::-1]
    (copy / "metadata.json").write_text(json.dumps(meta, indent=2))
    return copy


@pytest.mark.parametrize("how", ["predict", "evaluate", "load"])
def test_an_edited_metadata_json_is_refused_in_a_fresh_process(site, tmp_path, how):
    """`predict`, `evaluate` and `tlsearch.load`, each in a process of its own, refuse an export
    whose metadata.json says the classes come in another order, naming the file and the field."""
    study_path, out = site
    copy = _edited(out, tmp_path)
    images = study_path.parent / "test-images"
    cmd = {"predict": ["-m", "tlsearch.cli", "predict", str(copy), str(images / "circle")],
           "evaluate": ["-m", "tlsearch.cli", "evaluate", str(copy), str(images)],
           "load": ["-c", "import sys, tlsearch; tlsearch.load(sys.argv[1])", str(copy)]}[how]
    r = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == (1 if how == "load" else 2), r.stderr[-2000:]
    assert "metadata.json" in r.stderr and "`classes`" in r.stderr, r.stderr[-2000:]
    assert "edited" in r.stderr and r.stdout == ""


def test_an_export_written_before_the_seal_loads_with_a_note(site, tmp_path, capsys):
    import tlsearch

    _, out = site
    copy = tmp_path / "old"
    shutil.copytree(out, copy)
    meta = _meta(copy)
    del meta[SEAL_KEY]
    (copy / "metadata.json").write_text(json.dumps({**meta, "format_version": 1}))
    capsys.readouterr()
    assert tlsearch.load(copy).classes == meta["classes"]
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 1 and notes[0].startswith("note:") and "metadata.json" in notes[0]
    # a sealed format without its seal is an edit, not an old export
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="no valid `content_sha256`"):
        tlsearch.load(copy)


def test_the_seal_names_each_field_that_differs():
    meta = seal({"format_version": 2, "classes": ["cat", "fox"], "decision": {"rule": "argmax"},
                 "input": {"image_size": 32}, "files": {}})
    check_seal(meta, "m/metadata.json", note=pytest.fail)  # untouched: silent
    check_seal(json.loads(json.dumps(meta, indent=4, sort_keys=True)), "m/metadata.json",
               note=pytest.fail)  # layout and key order are not content
    cases = {"classes": ["fox", "cat"], "input": {"image_size": 64},
             "decision": {"rule": "threshold", "threshold": 0.1, "positive": 0}}
    for field, value in cases.items():
        with pytest.raises(UserError, match=rf"metadata\.json.*`{field}`"):
            check_seal({**meta, field: value}, "m/metadata.json", note=pytest.fail)
    with pytest.raises(UserError, match=r"`extra` \(added\)"):
        check_seal({**meta, "extra": 1}, "m/metadata.json", note=pytest.fail)


def test_limitations_come_from_what_the_study_knows():
    meta = {"classes": ["a", "b"], "value_se": 0.05, "fences": ["best dropout=0.5 is the top "
                                                                 "of 0..0.5: widen the range"],
            "domain_adaptation": {"adapted": True, "criterion": "bound_proxy"},
            "data": {"examples": {"train": 300, "validation": 60},
                     "class_counts": {"train": {"a": 290, "b": 10}}}}
    got = " ".join(limitations(meta))
    assert "small (60 examples)" in got and "± 0.0980" in got
    assert "without target labels" in got and "`b` (10)" in got and "`a`" not in got
    assert "widen the range" in got and "No held-out test set" in got
    meta["data"]["examples"]["validation"] = 5000
    meta["test"] = {"n": 100, "operating_point": {"requirement_met": False}}
    meta["judged_trials"] = [3, 7]
    meta["domain_adaptation"]["criterion"] = "target_validation"
    got = " ".join(limitations(meta))
    assert "small" not in got and "without target labels" not in got
    assert "judged 2 trials" in got and "does not meet" in got
    card = model_card(meta)
    assert all(s in card for s in SECTIONS)


def test_a_text_export_names_the_text_libraries_it_needs():
    from importlib.metadata import version

    from tlsearch.export.provenance import versions

    text = versions("text")
    assert text["keras-hub"] == version("keras-hub")
    assert text["tensorflow-text"] == version("tensorflow-text")
    assert "keras-hub" not in versions("image")


def test_export_without_the_training_data_still_writes_and_says_so(site, tmp_path, capsys):
    study_path, _ = site
    images = study_path.parent / "images"
    images.rename(study_path.parent / "moved")
    try:
        out = tmp_path / "e"
        assert main(["export", str(study_path), "--out", str(out), "--formats", ""]) == 0
    finally:
        (study_path.parent / "moved").rename(images)
    assert "data: not read at export" in capsys.readouterr().err
    data = _meta(out)["data"]
    assert "`data.path`: 'images' does not exist" in data["not_read"] and "examples" not in data
    assert str(study_path.parent) not in json.dumps(_meta(out))
    assert data["fingerprint"] and _meta(out)["test"]["n"] == 12
    assert "Data: `data.path`" in (out / CARD_FILE).read_text()


def test_split_provenance_names_a_test_split_cut_from_the_data(tmp_path):
    """metadata.json's ``data.split`` says when the test set was cut from ``data.path`` itself
    (``data.test_split``, with the seed that cut it), and says nothing of one otherwise."""
    from conftest import write_study

    from tlsearch.config import load_config
    from tlsearch.export.provenance import _split

    plain = load_config(write_study(tmp_path / "a.yaml"))
    assert _split(plain) == {"method": "stratified random", "seed": 0, "validation_split": 0.25}
    cut = load_config(write_study(tmp_path / "b.yaml", data={"test_split": 0.2}))
    assert _split(cut)["test_split"] == 0.2 and _split(cut)["seed"] == 0
