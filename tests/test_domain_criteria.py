"""The label-free criteria a study without target labels is judged by
(:mod:`tlsearch.train.dann_selection`), on synthetic cases whose answer is known, and a tiny
study judged by one of them (``domain_selection``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from tlsearch.train.dann_selection import (MAX_WEIGHT, bound_proxy, info_max, iwv_risk,
                                           prediction_entropy, reverse_validation, shared_weights)


def _confident(classes: np.ndarray, k: int, p: float = 0.7) -> np.ndarray:
    out = np.full((len(classes), k), (1 - p) / (k - 1))
    out[np.arange(len(classes)), classes] = p
    return out


def test_info_max_penalises_a_model_that_puts_everything_in_one_class():
    k = 4
    collapsed = _confident(np.zeros(40, int), k)
    balanced = _confident(np.arange(40) % k, k)
    # equally confident on every example: entropy cannot tell them apart
    assert prediction_entropy(collapsed) == pytest.approx(prediction_entropy(balanced))
    assert info_max(balanced) == pytest.approx(prediction_entropy(balanced))  # mean is uniform
    assert info_max(collapsed) > info_max(balanced) + 0.4  # log 4 - H(0.7, 0.1, 0.1, 0.1)
    # a confident balanced model beats an unsure one on both
    unsure = _confident(np.arange(40) % k, k, p=0.3)
    assert prediction_entropy(unsure) > prediction_entropy(balanced)
    assert info_max(unsure) > info_max(balanced)
    # bounds: 0 for one-hot balanced predictions, never negative
    assert info_max(np.eye(k)[np.arange(40) % k]) == pytest.approx(0.0, abs=1e-12)
    assert prediction_entropy(np.eye(k)[np.arange(40) % k]) == 0.0


def _blobs(rng, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Three well separated classes in 5 dimensions, the whole cloud moved by ``shift``."""
    y = np.arange(n) % 3
    centres = np.eye(3, 5) * 4
    return centres[y] + rng.normal(scale=0.7, size=(n, 5)) + shift, y


def test_reverse_validation_catches_classes_swapped_on_the_target():
    rng = np.random.default_rng(0)
    f_s, y_s = _blobs(rng, 150)
    f_t, y_t = _blobs(rng, 150, shift=0.5)
    right = reverse_validation(f_t, np.eye(3)[y_t], f_s, y_s, seed=0)
    swapped = reverse_validation(f_t, np.eye(3)[(y_t + 1) % 3], f_s, y_s, seed=0)
    collapsed = reverse_validation(f_t, np.eye(3)[np.zeros_like(y_t)], f_s, y_s, seed=0)
    assert right["error"] < 0.05 and swapped["error"] > 0.95
    assert right["loss"] < swapped["loss"] and right["loss"] < collapsed["loss"]
    assert collapsed["error"] == pytest.approx(2 / 3)
    assert all(v["loss"] >= 0 for v in (right, swapped, collapsed))
    # a class the source has but no pseudo-label names costs, and does not break it
    two = reverse_validation(f_t, np.eye(3)[np.minimum(y_t, 1)], f_s, y_s, seed=0)
    assert right["loss"] < two["loss"] and math.isfinite(two["loss"])


def test_importance_weights_are_estimated_once_on_shared_features():
    rng = np.random.default_rng(1)
    f_s = rng.normal(size=(300, 4))
    f_t = rng.normal(size=(300, 4)) + [1.0, 0, 0, 0]
    w = shared_weights(f_s, f_t, seed=0)
    # the same features give the same weights, whichever trial asks (and a caller's edit of its
    # copy changes nobody else's)
    w[:] = -1
    w1, w2 = shared_weights(f_s, f_t, seed=0), shared_weights(f_s.copy(), f_t.copy(), seed=0)
    np.testing.assert_array_equal(w1, w2)
    assert np.all(w1 >= 0) and w1.max() <= MAX_WEIGHT
    # source examples that look like the target weigh more
    near = f_s[:, 0] > 1.0
    assert w1[near].mean() > 2 * w1[~near].mean()
    # two trials' losses under the same weights: comparable, the one worse where the target is
    # judged worse even with equal unweighted means
    good_near = np.where(near, 0.1, 1.0)
    bad_near = np.where(near, 1.0, 0.1)
    bad_near *= good_near.mean() / bad_near.mean()
    assert iwv_risk(good_near, w1) < iwv_risk(bad_near, w1)
    with pytest.raises(ValueError, match="weights for"):
        iwv_risk(good_near[:-1], w1)


def test_the_criteria_are_never_negative_and_survive_nan():
    # chance-level domain accuracy is not a negative distance
    assert bound_proxy(1.0, 0.2) == 0.0
    assert bound_proxy(0.9, 0.75) == pytest.approx(0.1 + 0.5)
    probs = np.full((6, 3), 1 / 3)
    probs[0] = np.nan
    assert prediction_entropy(probs) == pytest.approx(math.log(3))
    assert info_max(probs) == pytest.approx(math.log(3))
    assert math.isnan(prediction_entropy(np.full((2, 3), np.nan)))
    assert math.isnan(info_max(np.full((2, 3), np.nan)))
    f = np.ones((6, 2))
    f[1, 0] = np.nan
    rv = reverse_validation(f, np.eye(3)[np.arange(6) % 3], np.ones((4, 2)), np.arange(4) % 3)
    assert math.isnan(rv["loss"]) and math.isnan(rv["error"])
    assert iwv_risk([0.5, np.nan, 1.0], [1.0, 1.0, 1.0]) == pytest.approx(2.5 / 3)
    assert math.isnan(iwv_risk([np.nan, np.nan], [1.0, 1.0]))
    assert iwv_risk([0.0, 0.0], [1.0, 3.0]) == 0.0


# ---- a study judged by one of them ---------------------------------------------------------------


def test_study_is_judged_by_the_criterion_its_file_names(tmp_path, capsys):
    from test_domain_study import _da_study, _load

    from tlsearch.cli import main

    study = _da_study(tmp_path, domain_selection="reverse_validation")
    assert main(["run", str(study), "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    summary = [x for x in lines if x.get("event") == "summary"][-1]
    assert "reverse_validation" in summary["chosen_by"]
    assert "data.target_validation" in summary["chosen_by"]
    trials = _load(study, "da").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    records = [t.user_attrs["tlsearch.domain"] for t in trials]
    assert {d["adapted"] for d in records} == {True, False}
    for t, d in zip(trials, records):
        assert d["criterion"] == "reverse_validation"
        assert t.value == pytest.approx(d["reverse_validation"])
        for k in ("reverse_validation", "reverse_validation_error", "iwv", "entropy", "info_max",
                  "bound_proxy"):
            assert d[k] is not None and d[k] >= 0, k
    # one set of importance weights for the study: the same effective sample size for the plain
    # and the adapted trial, although their own features differ
    assert records[0]["iwv_effective_sample_size"] == records[1]["iwv_effective_sample_size"]
    assert records[0]["iwv_effective_sample_size"] > 0


def test_the_run_summary_and_the_card_say_which_criterion_chose(tmp_path, capsys):
    from test_domain_study import _da_study

    from tlsearch.cli import main
    from tlsearch.export.card import model_card

    study = _da_study(tmp_path, n_trials=1, domain_selection="entropy")
    assert main(["run", str(study)]) == 0
    out = capsys.readouterr().out.replace("\n", " ")
    assert "chosen by: chosen without target labels by entropy" in out
    assert "Fashion-MNIST -> Fashion-MNIST-M" in out and "`data.target_validation`" in out
    card = model_card({"study": "da", "trial": 0, "objective": "val_loss",
                       "domain_adaptation": {"adapted": True, "criterion": "entropy"},
                       "data": {"examples": {"target": 36}}})
    assert "How the model was chosen: chosen without target labels by entropy" in card
    assert "(by entropy, a proxy" in card and "data.target_validation" in card
    labelled = model_card({"study": "da", "trial": 0, "objective": "val_loss",
                           "domain_adaptation": {"adapted": True,
                                                 "criterion": "target_validation"},
                           "data": {"examples": {"target": 36}}})
    assert "chosen on the labelled target data" in labelled
    assert "chosen without target labels" not in labelled


def test_domain_selection_is_refused_where_it_would_judge_nothing(tmp_path, capsys):
    from test_domain_study import _da_study, _inverted_labelled

    from tlsearch.cli import main

    _inverted_labelled(tmp_path / "target-val")
    study = _da_study(tmp_path, domain_selection="iwv",
                      data={"path": "images", "image_size": 32, "target": "target",
                            "target_validation": "target-val"})
    assert main(["validate", str(study)]) == 2
    assert "`domain_selection`" in capsys.readouterr().err
    raw = yaml.safe_load(study.read_text())
    raw["data"].pop("target_validation")
    study.write_text(yaml.safe_dump({**raw, "domain_selection": "iwvv"}))
    assert main(["validate", str(study)]) == 2
    assert "'reverse_validation', 'iwv'" in capsys.readouterr().err
    study.write_text(yaml.safe_dump({**raw, "domain_selection": "info_max"}))
    assert main(["validate", str(study)]) == 0


def test_changing_the_criterion_changes_what_the_trials_computed():
    """A resumed study keeps its criterion: its stored trials were judged by it. One stored before
    ``domain_selection`` existed was judged by bound_proxy."""
    from tlsearch.config import parse_config
    from tlsearch.search.resume import _changes, _comparable, study_fingerprint

    def fp(**extra):
        cfg = parse_config({"name": "x", "n_trials": 1, "data": {"path": "d", "target": "t"},
                            "backbones": ["tiny_cnn"], "training": {"stage2_epochs": 0}, **extra})
        return cfg, study_fingerprint(cfg, {})

    cfg, now = fp()
    assert now["domain_selection"] == "reverse_validation"
    _, before = fp(domain_selection="iwv")
    stored, keys = _comparable(before, now, cfg)
    assert _changes(stored, now, keys) == ['domain_selection: was "iwv", now "reverse_validation"']
    old = {k: v for k, v in before.items() if k != "domain_selection"}
    stored, keys = _comparable(old, now, cfg)
    assert _changes(stored, now, keys) == [
        'domain_selection: was "bound_proxy", now "reverse_validation"']
    cfg, now = fp(domain_selection="bound_proxy")
    stored, keys = _comparable(old, now, cfg)
    assert _changes(stored, now, keys) == []
    plain = parse_config({"name": "x", "n_trials": 1, "data": {"path": "d"},
                          "backbones": ["tiny_cnn"]})
    assert "domain_selection" not in study_fingerprint(plain, {})


def test_the_figures_the_study_quotes_are_those_benchmarks_md_records():
    """The summary and the card quote each criterion's measured ranking: BENCHMARKS.md's table."""
    from conftest import REPO
    from tlsearch.params import DEFAULT_DOMAIN_CRITERION, DOMAIN_CRITERIA

    bench = (REPO / "BENCHMARKS.md").read_text()
    readme = " ".join((REPO / "README.md").read_text().split())
    assert DEFAULT_DOMAIN_CRITERION in DOMAIN_CRITERIA
    for name, (_, measured) in DOMAIN_CRITERIA.items():
        rho, low, high = measured.replace("(90% interval", "").replace(" to ", " ").split()[:3]
        assert f"| `{name}`" in bench and f"{rho} [{low}, {high.rstrip(',')}]" in bench, name
        assert f"`{name}` {rho}" in readme, name
