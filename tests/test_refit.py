"""Refit: the chosen trial trained again on training + validation data, for the epochs its best
epoch used, stored beside the trial and exported with the usual checks."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import make_image_folder, write_reviews, write_study
from tlsearch.cli import main


def _frozen(history, best_step, best_stage, number=0):
    return SimpleNamespace(number=number, user_attrs={
        "tlsearch.history": history, "tlsearch.best_step": best_step,
        "tlsearch.best_stage": best_stage})


def _curve(values, stage1):
    return [{"step": i, "stage": 1 if i < stage1 else 2, "val_loss": v}
            for i, v in enumerate(values)]


def test_refit_plan_follows_the_path_to_the_best_epoch():
    from tlsearch.export.refit import refit_plan

    # best in stage 1 (step 2): stage 1 up to it, no stage 2
    plan = refit_plan(_frozen(_curve([0.9, 0.7, 0.5, 0.6, 0.8, 0.9], 4), 2, 1), "val_loss", False)
    assert (plan.stage1_epochs, plan.stage2_epochs) == (3, 0)
    # best in stage 2 (step 5): stage 2 went on from the best stage-1 head (step 1, the first of
    # two equal values), so stage 1 runs 2 epochs and stage 2 two (steps 4 and 5)
    plan = refit_plan(_frozen(_curve([0.9, 0.5, 0.7, 0.5, 0.45, 0.4, 0.6], 4), 5, 2),
                      "val_loss", False)
    assert (plan.stage1_epochs, plan.stage2_epochs, plan.epochs) == (2, 2, 4)
    # a maximised objective picks the highest
    hist = [{"step": i, "stage": 1 if i < 3 else 2, "val_accuracy": v}
            for i, v in enumerate([0.5, 0.9, 0.7, 0.8])]
    plan = refit_plan(_frozen(hist, 3, 2), "val_accuracy", True)
    assert (plan.stage1_epochs, plan.stage2_epochs) == (2, 1)


def test_refit_dataset_trains_on_every_labelled_example():
    from tlsearch.data import Dataset
    from tlsearch.export.refit import refit_dataset

    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.arange(20) % 2
    data = Dataset("image", x[:14], y[:14], x[14:], y[14:], ["a", "b"])
    refit = refit_dataset(data, batch_size=4)
    assert len(refit.y_train) == 20 and len(refit.y_val) == 4
    np.testing.assert_array_equal(refit.x_train, x)
    assert refit.fingerprint and refit.fingerprint != data.fingerprint


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """A tiny study with `final: {refit: true}`, a test set and trials that reach stage 2, run
    once: (study file, what the run printed)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("refit")
    make_image_folder(root / "images")
    make_image_folder(root / "test", per_class=4, seed=7)
    path = write_study(root / "study.yaml", n_trials=2, final={"refit": True},
                       data={"path": "images", "validation_split": 0.25, "image_size": 32,
                             "test": "test"},
                       search={"unfreeze_blocks": {"low": 1, "high": 2}})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["run", str(path)]) == 0
    return path, out.getvalue()


@pytest.fixture
def refit_study(ran):
    return ran[0]


def test_run_with_final_refit_trains_on_all_examples_and_stores_it(ran):
    import optuna

    from tlsearch.export.refit import refit_plan

    refit_study, out = ran
    assert "refit of trial" in out and "refit:" in out
    study = optuna.load_study(study_name="tiny",
                              storage=f"sqlite:///{refit_study.parent / 'tiny.db'}")
    best = study.best_trial
    record = study.user_attrs["tlsearch.refits"][str(best.number)]
    assert record["examples"] == 36  # 27 training + 9 validation images
    plan = refit_plan(best, "val_loss", False)
    assert (record["stage1_epochs"], record["stage2_epochs"]) == (plan.stage1_epochs,
                                                                  plan.stage2_epochs)
    assert record["epochs"] == plan.epochs
    assert record["weights_artifact"]["sha256"] and record["test"]["n"] == 12
    # stored beside the trial, in the study's artifact folder, checksummed
    stored = refit_study.parent / "tiny-artifacts" / record["weights_artifact"]["id"]
    from tlsearch._hashing import sha256_file

    assert sha256_file(stored) == record["weights_artifact"]["sha256"]


def test_run_again_reads_the_stored_refit_into_the_json_summary(ran, capsys):
    refit_study, _ = ran
    capsys.readouterr()
    assert main(["run", str(refit_study), "--json"]) == 0
    got = capsys.readouterr()
    summary = json.loads(got.out.strip().splitlines()[-1])
    assert summary["event"] == "summary" and summary["refit"]["examples"] == 36
    assert "refit: trial" not in got.err  # stored: not trained again


def test_export_of_a_refit_study_carries_refit_and_loads_fresh(refit_study, tmp_path, capsys):
    out = tmp_path / "refit"
    assert main(["export", str(refit_study), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "refit:" not in err  # stored by the run: not trained again
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["refit"]["examples"] == 36
    assert {"epochs", "stage1_epochs", "stage2_epochs"} <= set(meta["refit"])
    assert meta["value"] is None and meta["metrics"] == {}
    assert "no validation figure" in meta["validation"]
    assert meta["test"]["n"] == 12 and 0 <= meta["test"]["accuracy"] <= 1
    for name in ("keras", "saved_model", "litert"):
        assert meta["formats"][name]["status"] == "ok", meta["formats"][name]
    r = subprocess.run([sys.executable, "-m", "tlsearch.cli", "predict", str(out),
                        str(refit_study.parent / "test" / "circle")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("circle_") == 4

    plain = tmp_path / "plain"
    assert main(["export", str(refit_study), "--out", str(plain), "--no-refit",
                 "--formats", ""]) == 0
    meta = json.loads((plain / "metadata.json").read_text())
    assert "refit" not in meta and meta["value"] is not None


def test_an_ensemble_of_refit_members_averages_the_refits(refit_study, tmp_path, capsys):
    """--ensemble K --refit: the members and weights chosen on validation as trained in the
    search, then each member is its refit (stored ones reused, others trained and stored); the
    export equals the weighted average of the refits, in a fresh process, and has no
    validation figure."""
    import optuna

    out = tmp_path / "ens-refit"
    assert main(["export", str(refit_study), "--out", str(out), "--ensemble", "2", "--refit",
                 "--formats", ""]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    ens = meta["ensemble"]
    assert meta["value"] is None and meta["metrics"] == {} and "refit" in meta["validation"]
    assert ens["value"] is None and ens["validation_of_the_choice"]["value"] is not None
    members = [m["trial"] for m in ens["members"]]
    assert [r["trial"] for r in ens["refit"]] == members
    assert all(r["examples"] == 36 for r in ens["refit"])
    assert meta["test"]["n"] == 12
    study = optuna.load_study(study_name="tiny",
                              storage=f"sqlite:///{refit_study.parent / 'tiny.db'}")
    refits = study.user_attrs["tlsearch.refits"]
    assert all(str(t) in refits for t in members)  # every member's refit is stored
    assert study.user_attrs["tlsearch.ensemble"]["refit"] is True
    shas = [r["weights_artifact"]["sha256"] for r in ens["refit"]]
    assert shas == [refits[str(t)]["weights_artifact"]["sha256"] for t in members]
    # the export is the weighted average of the refit members, loaded in a fresh process
    code = (
        "import json, sys, numpy as np, optuna, tlsearch\n"
        "from tlsearch.config import load_config\n"
        "from tlsearch.export.refit import refit_model\n"
        "from tlsearch.search.artifacts import AtomicFileSystemArtifactStore\n"
        "study_file, out = sys.argv[1], sys.argv[2]\n"
        "cfg = load_config(study_file)\n"
        "study = optuna.load_study(study_name='tiny', storage=cfg.storage_url)\n"
        "meta = json.load(open(out + '/metadata.json'))\n"
        "store = AtomicFileSystemArtifactStore(cfg.artifact_dir, create=False)\n"
        "x = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3)).astype('float32')\n"
        "avg = 0\n"
        "for m in meta['ensemble']['members']:\n"
        "    t = study.trials[m['trial']]\n"
        "    rec = study.user_attrs['tlsearch.refits'][str(t.number)]\n"
        "    model, kind = refit_model(cfg, study, t, rec, store)\n"
        "    avg = avg + m['weight'] * np.asarray(model.predict(x, verbose=0))\n"
        "got = tlsearch.load(out).predict_proba(x)\n"
        "print(float(np.abs(got - avg).max()))\n")
    r = subprocess.run([sys.executable, "-c", code, str(refit_study), str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert float(r.stdout.strip().splitlines()[-1]) < 1e-5


def test_bad_refit_and_ensemble_requests_exit_2(refit_study, tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["export", str(refit_study), "--out", str(out), "--trial", "0",
                 "--ensemble", "2"]) == 2
    assert "--trial" in capsys.readouterr().err and not out.exists()
    bad = write_study(tmp_path / "bad.yaml", final={"refit": True},
                      data={"path": "images", "target": "images"})
    assert main(["validate", str(bad)]) == 2
    assert "final.refit" in capsys.readouterr().err
    typo = write_study(tmp_path / "typo.yaml", final={"refitt": True})
    assert main(["validate", str(typo)]) == 2
    assert "final.refitt" in capsys.readouterr().err


@pytest.mark.slow
def test_export_refit_of_a_text_study_with_a_threshold_objective(tmp_path, capsys):
    """--refit at export time (the study did not refit), uncached, on a screening objective: the
    threshold chosen on validation is kept, and says so."""
    write_reviews(tmp_path / "reviews.csv")
    study = write_study(tmp_path / "study.yaml", name="tinytext", n_trials=1,
                        objective="val_sens_at_spec",
                        objective_params={"specificity": 0.5, "positive": "pos"},
                        data={"path": "reviews.csv", "image_size": 32},
                        backbones=["tiny_bert"], cache={"enabled": False},
                        training={"stage1_epochs": 2, "stage2_epochs": 1, "batch_size": 12},
                        search={"unfreeze_blocks": 1, "head_width": [8], "pooling": "mean",
                                "max_length": 16})
    assert main(["run", str(study)]) == 0
    out = tmp_path / "export"
    assert main(["export", str(study), "--out", str(out), "--refit", "--formats", ""]) == 0
    assert "refit: trial #0 again on all 48" in capsys.readouterr().err
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["refit"]["examples"] == 48
    if meta["decision"]["rule"] == "threshold":
        assert "before the refit" in meta["decision"]["chosen"]
    r = subprocess.run([sys.executable, "-c", "import sys, tlsearch; "
                        "print(tlsearch.load(sys.argv[1]).predict(['a great fun film'])[0]"
                        "['label'])", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() in ("neg", "pos"), r.stderr[-3000:]
