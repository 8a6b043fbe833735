"""LogME and the backbone ranking: checked against the evidence formula evaluated the slow way."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tlsearch.prescreen import logme, logme_score, rank_backbones


def _features(n: int, d: int, n_classes: int, signal: float, seed: int = 0):
    """Gaussian noise plus a class-dependent shift of strength ``signal`` (0: labels are noise)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    centres = rng.normal(size=(n_classes, d))
    return rng.normal(size=(n, d)) + signal * centres[y], y


def _evidence_marginal(f, target, alpha, beta):
    """log N(target; 0, I / beta + F F^T / alpha) / n: the evidence as the marginal likelihood of
    the targets, with an n x n covariance (no SVD, no fixed point)."""
    n = len(target)
    cov = np.eye(n) / beta + f @ f.T / alpha
    _, logdet = np.linalg.slogdet(cov)
    return (-0.5 * logdet - 0.5 * target @ np.linalg.solve(cov, target) - n / 2 * math.log(2 * math.pi)) / n


def _evidence_weights(f, target, alpha, beta):
    """The same evidence through the posterior of the weights (the formula of the LogME paper)."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ target)
    _, logdet = np.linalg.slogdet(a)
    return (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - 0.5 * logdet
            - beta / 2 * np.sum((target - f @ m) ** 2) - alpha / 2 * m @ m
            - n / 2 * math.log(2 * math.pi)) / n


@pytest.mark.parametrize("n, d", [(80, 12), (30, 50)])  # more examples than dimensions, and fewer
def test_score_is_the_evidence_at_the_converged_alpha_and_beta(n, d):
    f, y = _features(n, d, 3, signal=1.0)
    r = logme(f, y)
    assert r.converged.all()
    direct = []
    for c, label in enumerate(r.classes):
        target = (y == label).astype(float)
        e1 = _evidence_marginal(f, target, r.alphas[c], r.betas[c])
        e2 = _evidence_weights(f, target, r.alphas[c], r.betas[c])
        assert e1 == pytest.approx(e2, rel=1e-9)
        assert r.evidences[c] == pytest.approx(e1, rel=1e-8)
        direct.append(e1)
    assert r.score == pytest.approx(np.mean(direct), rel=1e-8)
    assert logme_score(f, y) == r.score


def test_weak_features_with_fewer_examples_than_dimensions_converge():
    """The fixed point can take hundreds of steps here (the reference stops at 11, unconverged)."""
    f, y = _features(60, 1280, 10, signal=0.05, seed=0)
    r = logme(f, y)
    assert r.converged.all() and r.iterations.max() > 100 and r.rank == 60
    target = (y == r.classes[0]).astype(float)
    assert r.evidences[0] == pytest.approx(_evidence_marginal(f, target, r.alphas[0], r.betas[0]),
                                           rel=1e-8)


def test_the_fixed_point_maximises_the_evidence():
    """Moving alpha or beta away from where the iteration stopped lowers the evidence."""
    f, y = _features(120, 10, 4, signal=0.7, seed=1)
    r = logme(f, y)
    for c, label in enumerate(r.classes):
        target = (y == label).astype(float)
        a, b = r.alphas[c], r.betas[c]
        best = _evidence_marginal(f, target, a, b)
        for da, db in [(1.2, 1), (1 / 1.2, 1), (1, 1.2), (1, 1 / 1.2)]:
            assert _evidence_marginal(f, target, a * da, b * db) < best


def test_features_that_carry_the_label_score_higher_than_random_ones():
    scores = [logme_score(*_features(300, 32, 5, signal=s, seed=2)) for s in (0.0, 0.3, 1.0)]
    assert scores[0] < scores[1] < scores[2]
    f, y = _features(300, 32, 5, signal=1.0, seed=2)
    shuffled = np.random.default_rng(3).permutation(y)  # same features, labels no longer match
    assert logme_score(f, shuffled) < logme_score(f, y) - 0.1


def test_invariances():
    """What should not change the score: example order, feature order or rotation, class names,
    and the features' scale (the prior's precision absorbs it at the optimum)."""
    f, y = _features(200, 16, 4, signal=0.5, seed=4)
    base = logme_score(f, y)
    rng = np.random.default_rng(5)
    rows = rng.permutation(len(y))
    assert logme_score(f[rows], y[rows]) == pytest.approx(base, rel=1e-9)
    assert logme_score(f[:, rng.permutation(16)], y) == pytest.approx(base, rel=1e-9)
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert logme_score(f @ q, y) == pytest.approx(base, rel=1e-8)
    names = np.array(["boot", "coat", "dress", "shirt"])
    assert logme_score(f, names[(y + 1) % 4]) == pytest.approx(base, rel=1e-12)
    assert logme_score(10.0 * f, y) == pytest.approx(base, abs=1e-3)
    # but adding a constant offset to every feature is not a symmetry: it changes what is linear
    assert logme_score(f + 5.0, y) != pytest.approx(base, abs=1e-3)


def test_refuses_inputs_it_cannot_score():
    f, y = _features(20, 4, 2, signal=1.0)
    with pytest.raises(ValueError, match="pool or flatten"):
        logme(f.reshape(20, 2, 2), y)
    with pytest.raises(ValueError, match="one per example"):
        logme(f, y[:-1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        logme(f, np.zeros(20, dtype=int))
    bad = f.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        logme(bad, y)


def test_rank_backbones_keeps_the_best_and_puts_useless_features_last():
    f_good, y = _features(150, 8, 3, signal=1.5, seed=6)
    f_weak, _ = _features(150, 8, 3, signal=0.2, seed=6)
    f_noise = np.random.default_rng(7).normal(size=(150, 8))
    zeros = np.zeros((150, 8))
    feats = {"zeros": (zeros, y), "noise": (f_noise, y), "good": (f_good, y), "weak": (f_weak, y)}
    ranking = rank_backbones(feats, keep=4)
    assert [name for name, _ in ranking] == ["good", "weak", "noise", "zeros"]
    assert ranking[-1][1] == -math.inf
    assert rank_backbones(feats, keep=2) == ranking[:2]
    assert rank_backbones(feats, keep=10) == ranking
    with pytest.raises(ValueError, match="same examples"):
        rank_backbones({"good": (f_good, y), "weak": (f_weak, y[::-1])}, keep=1)
    with pytest.raises(ValueError, match="keep"):
        rank_backbones(feats, keep=0)
    with pytest.raises(ValueError, match="unknown method"):
        rank_backbones(feats, keep=1, method="leep")


def test_prescreen_section_is_parsed_strictly():
    from tlsearch.config import parse_config
    from tlsearch.errors import ConfigError

    base = {"name": "t", "n_trials": 1, "data": {"path": "x"}, "backbones": ["tiny_cnn"]}
    cfg = parse_config({**base, "prescreen": {"keep": 3}})
    assert cfg.prescreen.method == "logme" and cfg.prescreen.keep == 3
    for bad, msg in [({"method": "logme"}, "prescreen.keep"), ({"keep": 2, "kep": 1}, "prescreen.kep"),
                     ({"keep": 0}, "greater than or equal to 1"), ({"keep": 1.5}, "prescreen.keep"),
                     ({"keep": 1, "method": "leep"}, "prescreen.method")]:
        with pytest.raises(ConfigError, match=msg):
            parse_config({**base, "prescreen": bad})


def test_a_study_searches_only_the_kept_backbones(tmp_path, image_folder):
    import optuna

    from conftest import write_study
    from tlsearch.cli import main
    from tlsearch.config import load_config

    study = write_study(tmp_path / "s.yaml", n_trials=2,
                        backbones=["tiny_cnn", "efficientnet_lite0"],
                        prescreen={"method": "logme", "keep": 1},
                        search={"unfreeze_blocks": 0, "head_width": 8})
    assert main(["run", str(study)]) == 0
    cfg = load_config(study)
    s = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    ranking = s.user_attrs["tlsearch.prescreen"]
    assert [n for n, _ in ranking] and len(ranking) == 2
    kept = ranking[0][0]
    assert {t.user_attrs["tlsearch.params"]["backbone"] for t in s.trials} == {kept}
    assert "backbone" not in s.trials[0].params  # one backbone left: not a searched parameter


def _text_csv(path, n: int = 40):
    import pandas as pd

    rng = np.random.default_rng(0)
    pos, neg = ["good film", "great movie", "fun and fine"], ["bad film", "awful movie", "dull"]
    y = np.arange(n) % 2
    texts = [f"{(pos if v else neg)[rng.integers(3)]} . the plot was fine" for v in y]
    pd.DataFrame({"text": texts, "label": np.where(y == 1, "pos", "neg")}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("max_length, scored", [([16, 24], {16, 24}),
                                                 ({"low": 8, "high": 24}, {8, 24})])
def test_a_text_study_prescreens_each_pooling_and_max_length_it_can_choose(tmp_path, max_length,
                                                                          scored):
    """Text features depend on the trial's pooling and max_length: each backbone is scored with
    every combination the study can choose (a range: its two ends) and ranked by its best. (It
    ended every text study in a raw ValueError, which `validate` let through.) A choice a backbone
    refuses (a decoder's `cls` pooling) is left out of its scores."""
    import optuna

    from conftest import write_study
    from tlsearch.cli import main
    from tlsearch.config import load_config

    _text_csv(tmp_path / "reviews.csv")
    study = write_study(tmp_path / "t.yaml", name="tp", n_trials=1,
                        data={"path": "reviews.csv", "validation_split": 0.25},
                        backbones=["tiny_bert", "tiny_gpt2"],
                        prescreen={"method": "logme", "keep": 1},
                        training={"stage1_epochs": 1, "stage2_epochs": 0, "batch_size": 8},
                        search={"unfreeze_blocks": 0, "head_width": 8,
                                "pooling": "mean", "max_length": max_length})
    assert main(["validate", "--data", str(study)]) == 0
    assert main(["run", str(study)]) == 0
    cfg = load_config(study)
    s = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    ranking = s.user_attrs["tlsearch.prescreen"]
    assert sorted(n for n, _ in ranking) == ["tiny_bert", "tiny_gpt2"]
    assert all(np.isfinite(score) for _, score in ranking)
    kept = ranking[0][0]
    assert {t.user_attrs["tlsearch.params"]["backbone"] for t in s.trials} == {kept}
    # the ranking is each backbone's best over the choices, and every choice was scored
    from tlsearch.search.inputs import prescreen_options

    opts = prescreen_options(cfg, "text")
    assert {o["max_length"] for o in opts} == scored and {o["pooling"] for o in opts} == {"mean"}
    both = cfg.model_copy(update={"search": cfg.search.model_copy(
        update={"pooling": ["cls", "mean"]})})
    opts = prescreen_options(both, "text")
    assert {o["pooling"] for o in opts} == {"cls", "mean"} and len(opts) == 4
    assert prescreen_options(both, "image") == [{}]
