"""Domain adaptation as part of a study: the study file, unlabelled target data, the DANN stage,
label-free selection, export. Tiny twins (tiny_cnn, tiny_bert) on a few dozen examples."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import REPO, make_image_folder, write_study
from tlsearch.cli import main
from tlsearch.params import DEFAULT_DOMAIN_CRITERION


def _target_folder(root: Path, seed: int = 1) -> Path:
    """Unlabelled target images: the same three patterns, colours inverted, in one flat folder."""
    labelled = make_image_folder(root.parent / (root.name + "-labelled"), seed=seed)
    root.mkdir(parents=True)
    for f in sorted(labelled.rglob("*.png")):
        a = 255 - np.asarray(Image.open(f))
        Image.fromarray(a.astype(np.uint8)).save(root / f.name)
    return root


def _inverted_labelled(root: Path, seed: int = 2) -> Path:
    labelled = make_image_folder(root, seed=seed)
    for f in labelled.rglob("*.png"):
        Image.fromarray((255 - np.asarray(Image.open(f))).astype(np.uint8)).save(f)
    return root


def _da_study(tmp_path: Path, **overrides) -> Path:
    make_image_folder(tmp_path / "images")
    _target_folder(tmp_path / "target")
    spec = dict(name="da", n_trials=2,
                data={"path": "images", "validation_split": 0.25, "image_size": 32,
                      "target": "target"},
                training={"stage1_epochs": 3, "stage2_epochs": 0, "batch_size": 8},
                sampler={"type": "random", "seed": 3, "warm_start": False},
                search={"unfreeze_blocks": 0, "head_width": [8], "lr_stage1": 1e-2,
                        "domain_adaptation": {"lambda_max": ["off", 0.5], "width": 8}})
    spec.update(overrides)
    return write_study(tmp_path / "da.yaml", **spec)


def _load(study_file: Path, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{study_file.parent / (name + '.db')}")


# ---- the study file ----------------------------------------------------------------------------


def test_domain_adaptation_without_target_is_refused(tmp_path, capsys):
    make_image_folder(tmp_path / "images")
    study = write_study(tmp_path / "s.yaml", training={"stage2_epochs": 0},
                        search={"domain_adaptation": {"lambda_max": [0.1, 1.0]}})
    assert main(["validate", str(study)]) == 2
    err = capsys.readouterr().err
    assert "`search.domain_adaptation`" in err and "`data.target`" in err
    assert not (tmp_path / "tiny.db").exists()


def test_domain_adaptation_keys_and_values_are_checked(tmp_path, capsys):
    make_image_folder(tmp_path / "images")
    _target_folder(tmp_path / "target")
    study = write_study(tmp_path / "s.yaml", data={"target": "target"},
                        search={"domain_adaptation": {"lambda_max": ["off", 1.0], "widht": 8}})
    assert main(["validate", str(study)]) == 2
    err = capsys.readouterr().err
    assert "`search.domain_adaptation.widht`: unknown key" in err and "did you mean `width`" in err
    study = write_study(tmp_path / "s.yaml", data={"target": "target"},
                        search={"domain_adaptation": {"lambda_max": ["off", -1.0]}})
    assert main(["validate", str(study)]) == 2
    err = capsys.readouterr().err
    assert "`search.domain_adaptation.lambda_max`: values must lie in [0, 100]" in err
    # label-free selection judges the head: stage 2 is refused without target labels
    assert "`training.stage2_epochs`" in err


def test_a_bare_yaml_off_is_the_word_off():
    from tlsearch.config import parse_config

    raw = yaml.safe_load("search:\n  domain_adaptation:\n    lambda_max: [off, 0.5]\n")
    assert raw["search"]["domain_adaptation"]["lambda_max"] == [False, 0.5]  # YAML 1.1
    study = {"name": "x", "n_trials": 1, "data": {"path": "d", "target": "t"},
             "backbones": ["tiny_cnn"], "training": {"stage2_epochs": 0}, **raw}
    assert parse_config(study).search.domain_lambda_max == ["off", 0.5]


def test_target_data_is_read_and_fingerprinted(tmp_path, capsys):
    study = _da_study(tmp_path)
    assert main(["validate", str(study)]) == 0
    out = capsys.readouterr().out
    assert "domain_lambda_max" in out
    from tlsearch.config import load_config
    from tlsearch.data import load_dataset

    cfg = load_config(study)
    ds = load_dataset(cfg.data, base_dir=cfg.base_dir, image_size=32, seed=0)
    assert ds.x_target.shape == (36, 32, 32, 3) and len(ds.target_fingerprint) == 64
    assert not ds.target_validation
    (tmp_path / "target" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(Exception, match=r"`data.target`.*1 of 37 files"):
        load_dataset(cfg.data, base_dir=cfg.base_dir, image_size=32, seed=0)


# ---- studies that run ----------------------------------------------------------------------------


def test_label_free_study_adapts_and_records_the_domain_game(tmp_path, capsys):
    study = _da_study(tmp_path)
    assert main(["run", str(study)]) == 0
    s = _load(study, "da")
    trials = s.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    adapted = [t for t in trials if t.user_attrs["tlsearch.params"].get("domain_lambda_max", "off")
               != "off"]
    plain = [t for t in trials if t not in adapted]
    assert adapted and plain, "the seeded sampler draws one of each"
    assert s.user_attrs["tlsearch.target"]
    for t in trials:
        d = t.user_attrs["tlsearch.domain"]
        assert d["criterion"] == DEFAULT_DOMAIN_CRITERION and d["adapted"] == (t in adapted)
        # the value is the label-free criterion of the last epoch, not the best val_loss
        assert t.value == pytest.approx(d[DEFAULT_DOMAIN_CRITERION])
        assert 0.0 <= d["domain_accuracy"] <= 1.0 and d["held_out_target"] == 9
        assert sorted(t.intermediate_values) == [0, 1, 2]
        hist = t.user_attrs["tlsearch.history"]
        if t in adapted:
            # the domain classifier's accuracy, per epoch, on the one step count
            assert [h["step"] for h in hist] == [0, 1, 2]
            assert all(0.0 <= h["domain_accuracy"] <= 1.0 for h in hist)
            assert hist[-1]["lambda"] > hist[0]["lambda"] >= 0.0  # the schedule ramps up
            assert t.user_attrs["tlsearch.params"]["domain_width"] == 8
        else:
            assert "domain_width" not in t.user_attrs["tlsearch.params"]
            assert all(math.isnan(h.get("domain_accuracy", math.nan)) for h in hist)

    # the report's section: the domain game per epoch, each trial's criterion
    from tlsearch.config import load_config
    from tlsearch.report.domain import domain_section

    sec = domain_section(s, load_config(study))
    assert sec is not None and sec.figure is not None
    assert len(sec.figure.data) == len(adapted) and DEFAULT_DOMAIN_CRITERION in sec.html
    assert f"{adapted[0].user_attrs['tlsearch.domain']['domain_accuracy']:.4f}" in sec.html
    from tlsearch.report.domain_pca import domain_pca_section, pca_2d

    pca = domain_pca_section(s, load_config(study))
    assert pca is not None and pca.figure is not None, pca and pca.note
    assert len(pca.figure.data) == 4  # source and target, before and after
    assert len(pca.figure.data[1].x) == 9  # the held-out target examples
    a, b = pca_2d(np.eye(3)[:2] * 5, np.eye(3)[2:] * 5)
    assert a.shape == (2, 2) and b.shape == (1, 2)

    # export serves the label branch only and records the adaptation
    best = adapted[0].number
    out = tmp_path / "export"
    capsys.readouterr()
    assert main(["export", str(study), "--out", str(out), "--trial", str(best),
                 "--formats", ""]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    # the value printed is named by what it is (it read val_loss=...)
    assert f"({meta['domain_adaptation']['criterion']}=" in capsys.readouterr().err
    assert meta["domain_adaptation"]["adapted"] is True
    assert meta["domain_adaptation"]["stage"] == "head"
    assert meta["domain_adaptation"]["target_fingerprint"] == s.user_attrs["tlsearch.target"]
    assert meta["domain_adaptation"]["criterion"] == DEFAULT_DOMAIN_CRITERION
    assert meta["data"]["examples"]["target"] == 36
    assert meta["data"]["target_fingerprint"] == s.user_attrs["tlsearch.target"]
    assert "chosen without target labels" in (out / "MODEL_CARD.md").read_text()
    import keras

    import tlsearch

    model = keras.saving.load_model(out / "model.keras")
    assert not [l for l in model.layers if "domain" in l.name or "gradient" in l.name]
    probs = tlsearch.load(out).predict_proba(np.zeros((2, 32, 32, 3), np.uint8))
    assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5)


def test_labelled_target_validation_judges_every_trial(tmp_path):
    _inverted_labelled(tmp_path / "target-val")
    study = _da_study(tmp_path, n_trials=1,
                      data={"path": "images", "image_size": 32, "target": "target",
                            "target_validation": "target-val"},
                      training={"stage1_epochs": 2, "stage2_epochs": 1, "batch_size": 8},
                      search={"unfreeze_blocks": 1, "head_width": [8], "lr_stage1": 1e-2,
                              "lr_stage2": 1e-3, "domain_adaptation": {"lambda_max": 0.5}})
    assert main(["run", str(study)]) == 0
    t = _load(study, "da").trials[0]
    hist = t.user_attrs["tlsearch.history"]
    assert [h["stage"] for h in hist] == [1, 1, 2]  # DANN in stage 1, source-only fine-tuning after
    assert t.value == pytest.approx(min(h["val_loss"] for h in hist))  # best epoch, on target labels
    assert not math.isnan(hist[0]["domain_accuracy"]) and "domain_accuracy" not in hist[2]
    d = t.user_attrs.get("tlsearch.domain")
    assert d is None or (d["criterion"] == "target_validation" and d["on"] == "target_validation")


def _write_text_domains(folder) -> None:
    """reviews.csv (40 labelled source snippets) and target.csv (24 unlabelled snippets in other
    wording: a text column only)."""
    rng = np.random.default_rng(0)
    pos, neg = ["good film", "great movie", "fine acting"], ["bad film", "awful movie", "poor acting"]
    y = np.arange(40) % 2
    texts = [f"{(pos if v else neg)[rng.integers(3)]} , the plot" for v in y]
    pd.DataFrame({"text": texts, "label": np.where(y == 1, "pos", "neg")}).to_csv(
        folder / "reviews.csv", index=False)
    target = [f"product is {(['great', 'good'] if v else ['awful', 'bad'])[rng.integers(2)]} !"
              for v in np.arange(24) % 2]
    pd.DataFrame({"text": target}).to_csv(folder / "target.csv", index=False)


def test_text_study_adapts_with_tiny_bert(tmp_path):
    _write_text_domains(tmp_path)
    study = write_study(tmp_path / "t.yaml", name="dat", n_trials=1,
                        data={"path": "reviews.csv", "validation_split": 0.25, "target": "target.csv"},
                        backbones=["tiny_bert"],
                        training={"stage1_epochs": 2, "stage2_epochs": 0, "batch_size": 8},
                        search={"unfreeze_blocks": 0, "head_width": [8], "max_length": 16,
                                "lr_stage1": 1e-2, "domain_adaptation": {"lambda_max": 0.3}})
    assert main(["run", str(study)]) == 0
    t = _load(study, "dat").trials[0]
    assert t.state.name == "COMPLETE"
    assert t.user_attrs["tlsearch.domain"]["adapted"] is True
    assert all(0.0 <= h["domain_accuracy"] <= 1.0 for h in t.user_attrs["tlsearch.history"])


def test_no_domain_section_without_target_data():
    import optuna

    from tlsearch.config import parse_config
    from tlsearch.report.domain import domain_section

    cfg = parse_config({"name": "x", "n_trials": 1, "data": {"path": "d"},
                        "backbones": ["tiny_cnn"]})
    assert domain_section(optuna.create_study(), cfg) is None
    assert cfg.value_name == "val_loss"
    cfg = parse_config({"name": "x", "n_trials": 1, "data": {"path": "d", "target": "t"},
                        "backbones": ["tiny_cnn"], "training": {"stage2_epochs": 0}})
    assert cfg.value_name == DEFAULT_DOMAIN_CRITERION
    cfg = parse_config({"name": "x", "n_trials": 1, "data": {"path": "d", "target": "t"},
                        "backbones": ["tiny_cnn"], "training": {"stage2_epochs": 0},
                        "domain_selection": "bound_proxy"})
    assert cfg.value_name == "bound_proxy"


def test_keras_tuner_refuses_label_free_selection(tmp_path):
    pytest.importorskip("keras_tuner")
    pytest.importorskip("tensorboard")
    from tlsearch.config import load_config
    from tlsearch.errors import UserError
    from tlsearch.keras_tuner import TransferHyperModel

    with pytest.raises(UserError, match="`data.target` without `data.target_validation`"):
        TransferHyperModel(load_config(_da_study(tmp_path)))


# ---- pruning without target labels -------------------------------------------------------------


def _without_pruner_section(study: Path) -> Path:
    raw = yaml.safe_load(study.read_text())
    raw.pop("pruner", None)  # the default pruner, as a user who never wrote one gets it
    study.write_text(yaml.safe_dump(raw, sort_keys=False))
    return study


def test_label_free_study_does_not_prune_on_the_source_loss(tmp_path, capsys):
    """The epochs report the source validation loss, but a label-free trial is judged by
    bound_proxy on its last epoch: the default pruner would drop the adapted trials (their source
    loss is the higher one) for the wrong reason. Pruning is off, and start-up says why."""
    import optuna

    from tlsearch.config import load_config
    from tlsearch.search.samplers import make_pruner

    study = _without_pruner_section(_da_study(tmp_path, n_trials=4))
    cfg = load_config(study)
    assert cfg.pruner.type == "median"  # what the file leaves to the default
    assert isinstance(make_pruner(cfg), optuna.pruners.NopPruner)
    assert main(["run", str(study)]) == 0
    out = capsys.readouterr()
    said = (out.out + out.err).replace("\n", " ")
    assert said.count("pruning off") == 1 and DEFAULT_DOMAIN_CRITERION in said
    s = _load(study, "da")
    assert [t.state.name for t in s.trials] == ["COMPLETE"] * 4
    # with labelled target data every epoch reports the value that judges the trial: it prunes
    labelled = cfg.model_copy(update={"data": cfg.data.model_copy(
        update={"target_validation": Path("target-val")})})
    assert not isinstance(make_pruner(labelled), optuna.pruners.NopPruner)


def test_a_pruner_asked_for_on_a_label_free_study_is_refused(tmp_path, capsys):
    study = _da_study(tmp_path, pruner={"type": "median"})
    assert main(["validate", str(study)]) == 2
    err = capsys.readouterr().err
    assert "`pruner.type`" in err and DEFAULT_DOMAIN_CRITERION in err
    assert main(["run", str(study)]) == 2
    assert not (tmp_path / "da.db").exists()  # nothing written
    raw = yaml.safe_load(study.read_text())
    study.write_text(yaml.safe_dump({**raw, "pruner": {"type": "none"}}))
    assert main(["validate", str(study)]) == 0


# ---- adapting through the backbone -------------------------------------------------------------


def test_label_free_stage2_is_accepted_only_where_it_adapts_through_the_backbone(tmp_path, capsys):
    """Without target labels a plain stage 2 (source labels alone) is still refused, saying why
    and what to set; `domain_adaptation.stage: backbone` (fixed or searched) lifts it."""
    base = dict(training={"stage1_epochs": 2, "stage2_epochs": 2, "batch_size": 8},
                pruner={"type": "none"})
    search = {"unfreeze_blocks": [0, 1], "head_width": [8], "dropout": 0.0, "lr_stage1": 1e-2,
              "lr_stage2": 1e-3}
    for stage, ok in (("backbone", True), (["head", "backbone"], True), ("head", False),
                      (None, False)):
        da = {"lambda_max": ["off", 0.5], **({} if stage is None else {"stage": stage})}
        study = _da_study(tmp_path / str(stage), **base, search={**search, "domain_adaptation": da})
        code = main(["validate", str(study)])
        err = capsys.readouterr().err
        assert code == (0 if ok else 2), (stage, err)
        if not ok:
            assert "`training.stage2_epochs`" in err and "source labels alone" in err
            assert "`search.domain_adaptation.stage: backbone`" in err
    study = _da_study(tmp_path / "bad", **base, search={
        **search, "domain_adaptation": {"lambda_max": 0.5, "stage": "everywhere"}})
    assert main(["validate", str(study)]) == 2
    assert "`search.domain_adaptation.stage`: expected one of ['head', 'backbone']" in \
        capsys.readouterr().err
    # the stage is searched with unfreeze_blocks and lambda_max: sampled only where both are on
    import optuna

    from tlsearch import space
    from tlsearch.config import load_config

    cfg = load_config(_da_study(tmp_path / "space", **base, search={
        **search,
        "domain_adaptation": {"lambda_max": ["off", 0.5], "stage": ["head", "backbone"]}}))
    assert "domain_stage" in space.distributions(cfg, "image")
    for fixed, sampled in (({"unfreeze_blocks": 1, "domain_lambda_max": 0.5}, True),
                           ({"unfreeze_blocks": 0, "domain_lambda_max": 0.5}, False),
                           ({"unfreeze_blocks": 1, "domain_lambda_max": "off"}, False)):
        trial = optuna.trial.FixedTrial({**fixed, "domain_stage": "backbone"})
        p = space.suggest(trial, cfg, "image", {"tiny_cnn": 4})
        assert (p.domain_stage == "backbone") is sampled
        assert ("domain_stage" in space.used(p, cfg, "image")) is sampled


def test_label_free_study_adapts_through_the_backbone_in_stage2(tmp_path, monkeypatch):
    """A label-free study with stage 2 adapting through the backbone: its stage-2 epochs record the
    domain game, the trial is judged by bound_proxy on its last (stage-2) epoch, and export serves
    the adapted label branch: the same probabilities as the DANN's label branch."""
    import tlsearch.train.dann as dann

    fits = []
    fit = dann.fit_dann

    def recording(model, *args, **kwargs):
        fits.append((model, kwargs["validation_data"][0]))
        return fit(model, *args, **kwargs)

    monkeypatch.setattr(dann, "fit_dann", recording)
    study = _da_study(tmp_path, n_trials=1,
                      training={"stage1_epochs": 2, "stage2_epochs": 2, "batch_size": 8},
                      search={"unfreeze_blocks": 1, "head_width": [8], "dropout": 0.0,
                              "lr_stage1": 1e-2, "lr_stage2": 1e-3,
                              "domain_adaptation": {"lambda_max": 0.5, "width": 8,
                                                    "stage": "backbone"}})
    assert main(["run", str(study)]) == 0
    t = _load(study, "da").trials[0]
    assert t.state.name == "COMPLETE"
    assert t.user_attrs["tlsearch.params"]["domain_stage"] == "backbone"
    hist = t.user_attrs["tlsearch.history"]
    assert [h["stage"] for h in hist] == [1, 1, 2, 2] and [h["step"] for h in hist] == [0, 1, 2, 3]
    for h in hist:
        assert 0.0 <= h["domain_accuracy"] <= 1.0 and math.isfinite(h["domain_loss"])
    lam = [h["lambda"] for h in hist]
    assert all(0 < a < b for a, b in zip(lam, lam[1:]))  # one ramp over both stages
    d = t.user_attrs["tlsearch.domain"]
    from tlsearch.params import DEFAULT_DOMAIN_CRITERION

    assert d["criterion"] == DEFAULT_DOMAIN_CRITERION and d["adapted"]
    assert t.value == pytest.approx(d[DEFAULT_DOMAIN_CRITERION])
    assert d["held_out_target"] == 9 and sorted(t.intermediate_values) == [0, 1, 2, 3]

    out = tmp_path / "export"
    assert main(["export", str(study), "--out", str(out), "--formats", ""]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["domain_adaptation"]["stage"] == "backbone"  # where the reversed gradient went
    import keras

    import tlsearch
    from tlsearch.config import load_config
    from tlsearch.data import load_dataset

    model = keras.saving.load_model(out / "model.keras")
    assert not [l for l in model.layers if "domain" in l.name or "gradient" in l.name]
    stage2, boundary_val = fits[-1]
    assert boundary_val.shape[1:] == (16, 16, 16)  # stage 2 trained on cached boundary activations
    cfg = load_config(study)
    ds = load_dataset(cfg.data, base_dir=cfg.base_dir, image_size=32, seed=0)
    assert len(ds.x_val) == len(boundary_val)
    label_branch = np.asarray(stage2(boundary_val, training=False))
    served = tlsearch.load(out).predict_proba(ds.x_val)
    np.testing.assert_allclose(served, label_branch, atol=2e-5)


def test_text_study_adapts_through_the_encoder_with_tiny_bert(tmp_path):
    """Backbone adaptation on text: the top encoder layer is the DANN's extractor in stage 2,
    label-free; its epochs carry the domain game and the export serves raw strings."""
    _write_text_domains(tmp_path)
    study = write_study(tmp_path / "t.yaml", name="datb", n_trials=1,
                        data={"path": "reviews.csv", "validation_split": 0.25, "target": "target.csv"},
                        backbones=["tiny_bert"],
                        training={"stage1_epochs": 1, "stage2_epochs": 2, "batch_size": 8},
                        search={"unfreeze_blocks": 1, "head_width": [8], "max_length": 16,
                                "lr_stage1": 1e-2, "lr_stage2": 1e-3,
                                "domain_adaptation": {"lambda_max": 0.3, "stage": "backbone"}})
    assert main(["run", str(study)]) == 0
    t = _load(study, "datb").trials[0]
    assert t.state.name == "COMPLETE"
    hist = t.user_attrs["tlsearch.history"]
    assert [h["stage"] for h in hist] == [1, 2, 2]
    assert all(0.0 <= h["domain_accuracy"] <= 1.0 and "lambda" in h for h in hist)
    assert t.user_attrs["tlsearch.domain"]["adapted"] is True
    out = tmp_path / "export"
    assert main(["export", str(study), "--out", str(out), "--formats", ""]) == 0
    import tlsearch

    probs = tlsearch.load(out).predict_proba(["product is great !", "bad film , the plot"])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
