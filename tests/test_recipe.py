"""The whole fine-tuning recipe: full fine-tuning (`all`), layer-wise rates, gradual unfreezing,
augmentation per transform, and the feature-extraction-or-fine-tuning verdict."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from conftest import write_study
from tlsearch import space
from tlsearch.config import BackboneEntry, parse_config
from tlsearch.data import Dataset
from tlsearch.errors import ConfigError
from tlsearch.params import TrialParams
from tlsearch.train.cache import FeatureCache
from tlsearch.train.features import BackboneSource
from tlsearch.train.pipeline import Schedule, run_trial
from tlsearch.train.stages import (FineTuneStage, GradualFineTuneStage, HeadStage, Stage,
                                   unfreeze_phases)


@pytest.fixture(scope="module")
def images() -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 120, (48, 32, 32, 3)).astype(np.uint8)
    y = np.arange(48) % 3
    x[y == 1, :12] = 250
    x[y == 2, :, :12] = 250
    return Dataset("image", x[:36], y[:36], x[36:], y[36:], ["a", "b", "c"], fingerprint="t")


def _source(data, name="tiny_cnn", cache=True):
    cls = BackboneSource
    if data.modality == "text":
        from tlsearch.modalities.text import TextBackboneSource as cls
    return cls({name: BackboneEntry(name=name)}, data, 32,
               FeatureCache(None, 1 << 30) if cache else None)


def _texts() -> Dataset:
    rng = np.random.default_rng(0)
    words = ["good film", "great movie", "fun and fine", "bad film", "awful movie", "dull plot"]
    y = np.arange(36) % 2
    x = np.array([f"{words[rng.integers(3) + 3 * (1 - t)]} . the acting was fine" for t in y],
                 dtype=object)
    ds = Dataset("text", x[:24], y[:24], x[24:], y[24:], ["neg", "pos"])
    ds.fingerprint = "recipe-text"
    return ds


class _Snapshot(Stage):
    """A last stage that trains nothing: it keeps the backbone's weights and trainable flags."""

    number, name = 9, "snapshot"

    def __init__(self) -> None:
        self.weights: dict = {}
        self.trainable: set = set()

    def runs(self, state):
        return True

    def epochs(self, state):
        return 0

    def run(self, state):
        model = state.get_backbone().model
        self.weights = {v.path: np.array(v) for v in model.weights}
        self.trainable = {v.path for v in model.trainable_weights}


def _pretrained(src, name, params):
    return {v.path: np.array(v) for v in src.build(name, params).model.weights}


# ---------------------------------------------------------------------------- 1. all


@pytest.mark.parametrize("name, keep_bn", [("tiny_bert", True), ("tiny_cnn", False)])
def test_unfreeze_all_trains_every_weight_embeddings_and_stem_included(images, name, keep_bn):
    data = _texts() if name == "tiny_bert" else images
    src = _source(data, name)
    snap = _Snapshot()
    p = TrialParams(name, unfreeze_blocks="all", lr_stage1=1e-2, lr_stage2=1e-2, max_length=16)
    r = run_trial(p, Schedule(1, 1, 12, keep_bn_frozen=keep_bn), data, src,
                  stages=[HeadStage(), FineTuneStage(), snap])
    before = _pretrained(src, name, p)
    assert snap.trainable == {k for k in before if "moving" not in k}  # BatchNorm's statistics
    assert not r.cached  # the embeddings train: nothing below them can be cached
    unchanged = [k for k, v in before.items() if np.array_equal(v, snap.weights[k])]
    assert not unchanged
    if name == "tiny_bert":
        assert any("token_embedding" in k for k in before)


def test_the_top_count_of_blocks_is_not_all_for_text():
    """Without `all`, every encoder layer trains but the embeddings stay as pretrained."""
    data = _texts()
    src = _source(data, "tiny_bert")
    snap = _Snapshot()
    p = TrialParams("tiny_bert", unfreeze_blocks=3, lr_stage2=1e-2, max_length=16)
    run_trial(p, Schedule(1, 1, 12), data, src, stages=[HeadStage(), FineTuneStage(), snap])
    before = _pretrained(src, "tiny_bert", p)
    assert all(np.array_equal(before[k], snap.weights[k]) for k in before if "embedding" in k)


def test_all_is_a_value_of_the_study_file_per_backbone():
    cfg = parse_config({"name": "t", "n_trials": 1, "data": {"path": "x"},
                        "backbones": ["vgg16", "resnet50"],
                        "search": {"unfreeze_blocks": [0, 2, "all"]}})
    d = space.distributions(cfg, "image", {"vgg16": 5, "resnet50": 17})
    assert d["unfreeze_blocks[vgg16]"].choices == (0, 2, "all")
    space.check_caps(cfg, "image", {"vgg16": 5, "resnet50": 17})
    study = optuna.create_study()
    study.enqueue_trial({"backbone": "vgg16", "unfreeze_blocks[vgg16]": "all"})
    seen = []
    study.optimize(lambda t: seen.append(space.suggest(t, cfg, "image", {"vgg16": 5})) or 0.0,
                   n_trials=1)
    assert seen[0].unfreeze_blocks == "all" and "lr_stage2" in study.trials[0].params
    with pytest.raises(ConfigError, match="search.unfreeze_blocks"):
        parse_config({"name": "t", "n_trials": 1, "data": {"path": "x"}, "backbones": ["vgg16"],
                      "search": {"unfreeze_blocks": "most"}})


# ---------------------------------------------------------------------------- 2. lr_decay


def test_layerwise_optimizer_updates_each_variable_at_its_rate():
    import keras

    from tlsearch.train.rates import layerwise

    a, b = keras.Variable(np.zeros(3, "float32")), keras.Variable(np.zeros(2, "float32"))
    opt = layerwise(keras.optimizers.SGD)(learning_rate=0.1, scales={id(b): 0.25})
    grads = [np.array([1.0, -2.0, 3.0], "float32"), np.array([4.0, 0.5], "float32")]
    opt.apply(grads, [a, b])
    np.testing.assert_allclose(np.array(a), -0.1 * grads[0], rtol=1e-6)
    np.testing.assert_allclose(np.array(b), -0.025 * grads[1], rtol=1e-6)
    opt.set_scales({id(a): 0.5})  # a reused, traced model takes new scales
    assert opt.scale(a) == 0.5 and opt.scale(b) == 1.0


@pytest.mark.parametrize("cache", [True, False])
def test_one_sgd_step_moves_each_block_at_decay_to_the_depth(images, cache):
    """The update of block k below the top, relative to the same step with no decay, is
    decay ** k (the head's is 1), on cached boundary activations and through the network."""
    import keras

    def step(decay):
        src = _source(images, cache=cache)
        src.compiler.optimizer = keras.optimizers.SGD
        snap = _Snapshot()
        p = TrialParams("tiny_cnn", unfreeze_blocks=3, lr_stage1=0.1, lr_stage2=0.5,
                        lr_decay=decay, dropout=0.0)
        r = run_trial(p, Schedule(1, 1, 36), images, src,  # one batch: one step per epoch
                      stages=[HeadStage(), FineTuneStage(), snap])
        assert r.cached == cache
        return snap.weights, _pretrained(src, "tiny_cnn", p)

    plain, start = step(1.0)
    decayed, _ = step(0.5)
    depth = {"block2": 0, "block1": 1, "block0": 2}
    checked = set()
    for path, w0 in start.items():
        block = path.split("_")[0]
        if block not in depth or "_bn/" in path:  # BatchNorm stays frozen
            continue
        d1 = plain[path].astype(np.float64) - w0
        dd = decayed[path].astype(np.float64) - w0
        ratio = float((dd * d1).sum() / (d1 * d1).sum())
        assert ratio == pytest.approx(0.5 ** depth[block], rel=1e-5), path
        checked.add(block)
    assert checked == set(depth)


# ---------------------------------------------------------------------------- 3. gradual


def test_unfreeze_phases():
    assert unfreeze_phases(3, 0, 5) == [(3, 5)]
    assert unfreeze_phases(3, 2, 5) == [(1, 2), (2, 2), (3, 1)]
    assert unfreeze_phases(3, 1, 5) == [(1, 1), (2, 1), (3, 3)]
    assert unfreeze_phases(4, 2, 3) == [(1, 2), (2, 1)]  # stage 2 ends before the lowest block
    assert unfreeze_phases(1, 2, 3) == [(1, 3)]


class _Recording(GradualFineTuneStage):
    def __init__(self) -> None:
        self.seen: list[tuple[int, list[str]]] = []

    def train(self, state, backbone, model, inputs, n, stem, epochs):
        start = state.step
        super().train(state, backbone, model, inputs, n, stem, epochs)
        self.seen.append((start, sorted({l.name.split("_")[0] for l in backbone.model.layers
                                         if l.trainable and l.trainable_weights})))


@pytest.mark.parametrize("cache", [True, False])
def test_gradual_unfreezing_adds_a_block_every_n_epochs_on_one_step_count(images, cache):
    rec, seen = _Recording(), []
    p = TrialParams("tiny_cnn", unfreeze_blocks=3, unfreeze_every=1, lr_stage1=1e-2,
                    lr_stage2=1e-3)
    r = run_trial(p, Schedule(2, 4, 8), images, _source(images, cache=cache),
                  on_epoch=seen.append, stages=[HeadStage(), rec])
    assert rec.seen == [(2, ["block2"]), (3, ["block1", "block2"]),
                        (4, ["block0", "block1", "block2"])]
    assert [s.step for s in seen] == list(range(6))
    assert [s.stage for s in seen] == [1, 1, 2, 2, 2, 2]
    assert r.cached == cache and r.unfrozen_blocks == 3


def test_gradual_unfreezing_on_the_cache_equals_through_the_network(images):
    p = TrialParams("tiny_cnn", unfreeze_blocks=2, unfreeze_every=1, lr_stage1=1e-2,
                    lr_stage2=1e-3)
    cached = run_trial(p, Schedule(1, 3, 8), images, _source(images, cache=True))
    plain = run_trial(p, Schedule(1, 3, 8), images, _source(images, cache=False))
    np.testing.assert_allclose([h.val_loss for h in cached.history],
                               [h.val_loss for h in plain.history], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- 4. augmentation


def test_augmentation_is_the_shorthand_it_was_and_per_transform_settings():
    from tlsearch.train.augment import Augmentation, settings

    assert settings(TrialParams("x", augmentation=0.5)) == Augmentation(
        "horizontal", 0.05, 0.1, 0.05)
    assert settings(TrialParams("x", flip="both", contrast=0.2, mixup=0.4)) == Augmentation(
        "both", contrast=0.2, mixup=0.4)
    assert not settings(TrialParams("x")).any
    with pytest.raises(ConfigError, match="search.augmentation.*cannot be given with flip"):
        parse_config({"name": "t", "n_trials": 1, "data": {"path": "x"}, "backbones": ["tiny_cnn"],
                      "search": {"augmentation": 0.3, "flip": "none"}})
    with pytest.raises(ConfigError, match=r"search.flip.*'none', 'horizontal', 'both'"):
        parse_config({"name": "t", "n_trials": 1, "data": {"path": "x"}, "backbones": ["tiny_cnn"],
                      "search": {"flip": "vertical"}})


def test_mixup_blends_images_and_labels_repeatably():
    import tensorflow as tf

    from tlsearch.train.augment import dataset_augmenter

    x = np.stack([np.full((4, 4, 3), 10.0 * i, "float32") for i in range(8)])
    y = np.eye(2, dtype="float32")[np.arange(8) % 2]
    augment = dataset_augmenter(TrialParams("x", mixup=0.4), seed=3)

    def first_epoch():
        ds = augment(tf.data.Dataset.from_tensor_slices((x, y)).batch(8))
        return [tuple(np.array(t) for t in batch) for batch in ds]

    (xa, ya), = first_epoch()
    (xb, yb), = first_epoch()
    np.testing.assert_array_equal(xa, xb)  # same seed, same blend
    assert not np.allclose(xa, x) and not np.allclose(ya, y)
    # each example becomes lam * itself + (1 - lam) * a partner, partners a permutation of the
    # batch: labels stay distributions, and the batch's sums are kept
    np.testing.assert_allclose(ya.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(xa.sum(axis=0), x.sum(axis=0), rtol=1e-5)
    np.testing.assert_allclose(ya.sum(axis=0), y.sum(axis=0), rtol=1e-5)


def test_a_trial_with_per_transform_augmentation_runs_uncached(images):
    p = TrialParams("tiny_cnn", unfreeze_blocks=1, flip="horizontal", rotation=0.05,
                    contrast=0.2, mixup=0.2)
    r = run_trial(p, Schedule(1, 1, 12), images, _source(images))
    assert not r.cached and len(r.history) == 2


def test_validate_shows_the_new_parameters(tmp_path, capsys):
    from tlsearch.cli import main

    path = write_study(tmp_path / "s.yaml", search={
        "unfreeze_blocks": [0, 2, "all"], "lr_decay": {"low": 0.5, "high": 1.0},
        "unfreeze_every": [0, 1], "flip": ["none", "horizontal"],
        "rotation": {"low": 0.0, "high": 0.1}, "mixup": [0.0, 0.2], "contrast": 0.1})
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    for name in ("lr_decay", "unfreeze_every", "flip", "rotation", "mixup", "contrast", "zoom"):
        assert name in out, name
    assert "'all'" in out


def test_old_studies_resume_new_parameters_read_as_off():
    cfg = parse_config({"name": "t", "n_trials": 1, "data": {"path": "x"},
                        "backbones": ["tiny_cnn"]})
    now = space.signature(cfg, "image")
    old = {k: v for k, v in now.items()
           if k not in ("lr_decay", "unfreeze_every", "flip", "rotation", "zoom", "translation",
                        "contrast", "mixup")}
    assert space.diff_signatures(old, now) == []
    changed = dict(now, mixup='{"fixed": 0.2}')
    assert space.diff_signatures(old, changed) == ["mixup: was fixed 0.0, now fixed 0.2"]
    used = space.used(TrialParams("tiny_cnn", unfreeze_blocks=1), cfg, "image")
    assert "flip" not in used and "lr_decay" not in used  # off: not shown on the trial


# ---------------------------------------------------------------------------- 5. the verdict


def _fake_study(trials: list[tuple], test: dict | None = None):
    """A study of complete trials: (unfreeze_blocks, value, seconds, stored bytes[, best stage[,
    standard error of the value]]) each; the best stage defaults to 2 for a trial that unfreezes
    blocks."""
    study = optuna.create_study(direction="maximize")
    for u, value, seconds, size, *stage in trials:
        stage, se = (stage + [None, None])[:2]
        t = study.ask()
        if se is not None:
            t.set_user_attr("tlsearch.value_se", se)
        t.set_user_attr("tlsearch.params", {"backbone": "tiny_cnn", "unfreeze_blocks": u})
        t.set_user_attr("tlsearch.seconds", seconds)
        t.set_user_attr("tlsearch.artifact", {"size": size})
        t.set_user_attr("tlsearch.best_stage", stage if stage else (2 if u else 1))
        study.tell(t, value)
    if test:
        study.set_user_attr("tlsearch.test", test)
    return study


def test_feature_extraction_or_fine_tuning_is_answered():
    from tlsearch.report.sections import SECTIONS, frozen_vs_finetuned, verdict_lines

    cfg = parse_config({"name": "t", "n_trials": 1, "data": {"path": "x"},
                        "backbones": ["tiny_cnn"], "objective": "val_accuracy"})
    study = _fake_study([(0, 0.80, 2.0, 4000), (0, 0.82, 4.0, 4000), (2, 0.90, 20.0, 40000),
                         ("all", 0.85, 40.0, 400000)],
                        test={"trial": 2, "accuracy": 0.88, "loss": 0.3, "n": 50})
    c = frozen_vs_finetuned(study, cfg)
    assert (c["frozen"]["trial"], c["fine-tuned"]["trial"]) == (1, 2)
    assert c["fine-tuned"]["test_accuracy"] == 0.88 and c["frozen"]["test_accuracy"] is None
    assert c["frozen"]["median_seconds"] == 3.0 and c["fine-tuned"]["median_seconds"] == 30.0
    (line,) = verdict_lines(study, cfg)
    assert line.startswith("fine-tuning pays") and "10.0x the seconds" in line
    assert "10.0x the stored weights" in line
    section = SECTIONS[-1](study, cfg)
    assert section.title == "Feature extraction or fine-tuning?" and "0.8800" in section.html

    frozen_wins = _fake_study([(0, 0.91, 2.0, 4000), (1, 0.90, 10.0, 9000)])
    (line,) = verdict_lines(frozen_wins, cfg)
    assert line.startswith("feature extraction is enough")
    only_frozen = _fake_study([(0, 0.91, 2.0, 4000)])
    assert verdict_lines(only_frozen, cfg) == [] and SECTIONS[-1](only_frozen, cfg).note


def test_a_best_epoch_in_stage_1_counts_for_feature_extraction():
    """A trial that unfroze blocks but scored best at a stage-1 epoch got its value from a head on
    frozen features: it must not make the verdict say that fine-tuning pays."""
    from tlsearch.report.sections import frozen_vs_finetuned, verdict_lines

    cfg = parse_config({"name": "t", "n_trials": 1, "data": {"path": "x"},
                        "backbones": ["tiny_cnn"], "objective": "val_accuracy"})
    study = _fake_study([(0, 0.80, 2.0, 4000), (9, 0.90, 20.0, 4000, 1), (4, 0.85, 20.0, 40000)])
    c = frozen_vs_finetuned(study, cfg)
    assert (c["frozen"]["trial"], c["fine-tuned"]["trial"]) == (1, 2)
    assert c["frozen"]["median_seconds"] == 2.0  # what a head-only trial costs: unfreeze_blocks 0
    (line,) = verdict_lines(study, cfg)
    assert line.startswith("feature extraction is enough") and "#1" in line
    assert "stage-1 epoch" in line
    from tlsearch.report.sections import SECTIONS

    assert "#1 (its stage 1; it went on to 9 blocks)" in SECTIONS[-1](study, cfg).html


def test_a_verdict_within_the_noise_says_no_clear_difference():
    """0.90 against 0.88 on 100 validation examples (binomial standard errors 0.030 and 0.032):
    the 0.02 gap is within one standard error of the difference, so neither side 'pays'."""
    from tlsearch.report.sections import SECTIONS, verdict_lines

    cfg = parse_config({"name": "t", "n_trials": 1, "data": {"path": "x"},
                        "backbones": ["tiny_cnn"], "objective": "val_accuracy"})
    se = lambda p, n=100: (p * (1 - p) / n) ** 0.5  # noqa: E731
    close = _fake_study([(0, 0.88, 2.0, 4000, None, se(0.88)),
                         (2, 0.90, 20.0, 40000, None, se(0.90))])
    (line,) = verdict_lines(close, cfg)
    assert line.startswith("no clear difference"), line
    assert "0.9000 ± 0.0300" in line and "0.8800 ± 0.0325" in line
    assert "within one standard error" in line and "10.0x the seconds" in line
    assert "0.9000 ± 0.0300" in SECTIONS[-1](close, cfg).html
    # a clear gap keeps the verdict, now with its standard errors
    clear = _fake_study([(0, 0.70, 2.0, 4000, None, se(0.70)),
                         (2, 0.90, 20.0, 40000, None, se(0.90))])
    (line,) = verdict_lines(clear, cfg)
    assert line.startswith("fine-tuning pays") and "± 0.0300" in line
    frozen_clear = _fake_study([(0, 0.90, 2.0, 4000, None, se(0.90)),
                                (2, 0.70, 20.0, 40000, None, se(0.70))])
    (line,) = verdict_lines(frozen_clear, cfg)
    assert line.startswith("feature extraction is enough")
    # the same gap with ten times the examples is clear
    big = _fake_study([(0, 0.88, 2.0, 4000, None, se(0.88, 1000)),
                       (2, 0.90, 20.0, 40000, None, se(0.90, 1000))])
    assert verdict_lines(big, cfg)[0].startswith("fine-tuning pays")


def test_trials_store_the_standard_error_of_their_value(tmp_path, image_folder):
    """A real study: each trial stores the standard error of its value over the validation
    examples (binomial for accuracy, of the mean per-example loss for the loss)."""
    from conftest import write_study
    from tlsearch.cli import main

    for objective in ("val_accuracy", "val_loss"):
        study = write_study(tmp_path / f"{objective}.yaml", name=objective, n_trials=2,
                            objective=objective,
                            training={"stage1_epochs": 2, "stage2_epochs": 1, "batch_size": 8},
                            search={"unfreeze_blocks": [0, 1], "head_width": 8})
        assert main(["run", str(study), "--quiet"]) == 0
        s = optuna.load_study(study_name=objective,
                              storage=f"sqlite:///{tmp_path / (objective + '.db')}")
        for t in s.trials:
            se = t.user_attrs["tlsearch.value_se"]
            if objective == "val_accuracy":  # 9 validation images (a 0.25 split of 36)
                assert se == pytest.approx((t.value * (1 - t.value) / 9) ** 0.5)
            else:
                assert 0.0 < se < t.value


def test_value_se_per_objective():
    """Binomial for accuracy, the standard error of the mean for the loss, a seeded bootstrap for
    the rest (shrinking as the validation set grows)."""
    from tlsearch.train.validation import value_se

    rng = np.random.default_rng(0)

    def preds(n):
        y = rng.integers(0, 3, n)
        p = rng.dirichlet(np.ones(3), n)
        p[np.arange(n), y] += 0.5
        return p / p.sum(1, keepdims=True), y

    p, y = preds(400)
    a = np.mean(p.argmax(1) == y)
    assert value_se("val_accuracy", p, y) == pytest.approx(np.sqrt(a * (1 - a) / 400))
    losses = -np.log(p[np.arange(400), y])
    assert value_se("val_loss", p, y) == pytest.approx(losses.std(ddof=1) / 20)
    assert value_se("val_loss", p, np.eye(3)[y]) == value_se("val_loss", p, y)  # one-hot labels
    small = value_se("val_macro_f1", *preds(100))
    large = value_se("val_macro_f1", *preds(1600))
    assert 0 < large < small / 2
    assert value_se("val_macro_f1", p, y) == value_se("val_macro_f1", p, y)  # seeded
    assert np.isnan(value_se("val_loss", p[:1], y[:1]))


def test_the_extraction_table_shows_the_0_block_trial_too():
    """When the frozen side's best is a stage-1 epoch of a trial that went on to fine-tune, the
    best trial that unfroze nothing is in the table as well: the recipe a user would pick."""
    from tlsearch.report.sections import SECTIONS

    cfg = parse_config({"name": "t", "n_trials": 1, "data": {"path": "x"},
                        "backbones": ["tiny_cnn"], "objective": "val_accuracy"})
    study = _fake_study([(0, 0.80, 2.0, 4000, None, 0.04), (9, 0.90, 20.0, 4000, 1, 0.03),
                         (0, 0.70, 2.0, 4000), (4, 0.85, 20.0, 40000, None, 0.035)])
    html = SECTIONS[-1](study, cfg).html
    assert "best trial with 0 blocks unfrozen" in html and "#0: 0.8000 ± 0.0400" in html
    plain = _fake_study([(0, 0.91, 2.0, 4000), (1, 0.90, 10.0, 9000)])
    assert "0 blocks unfrozen" not in SECTIONS[-1](plain, cfg).html  # the frozen side is one
    none = _fake_study([(9, 0.90, 20.0, 4000, 1), (4, 0.85, 20.0, 40000)])
    assert "none complete" in SECTIONS[-1](none, cfg).html
