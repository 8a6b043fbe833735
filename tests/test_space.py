"""The search space: per-backbone conditional parameters, stages that do not run, fences."""

from __future__ import annotations

import optuna
import pytest

from tlsearch import space
from tlsearch.config import parse_config
from tlsearch.errors import UserError
from tlsearch.search.samplers import make_sampler

CAPS = {"vgg16": 5, "resnet50": 17}


def _cfg(backbones, **over):
    raw = {"name": "t", "n_trials": 1, "seed": 0, "data": {"path": "x"}, "backbones": backbones,
           "sampler": {"type": "tpe", "n_startup_trials": 10},
           "search": {"unfreeze_blocks": {"low": 0, "high": 17}, "head_width": 64,
                      "dropout": 0.1, "lr_stage1": 1e-3,
                      "lr_stage2": {"low": 1e-5, "high": 1e-4, "log": True}}}
    for k, v in over.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    return parse_config(raw)


@pytest.mark.parametrize("order", [["vgg16", "resnet50"], ["resnet50", "vgg16"]])
def test_sampler_reaches_a_deep_optimum_in_the_second_backbone_whatever_the_order(order):
    """With one shared ``unfreeze_blocks`` TPE kept the first backbone's range (0..5) and never
    proposed more than 2 blocks for resnet50; per-backbone parameters fix that."""
    cfg = _cfg(order)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(cfg))
    study.enqueue_trial(space.warm_start(cfg, "image", CAPS))

    def objective(trial):
        p = space.suggest(trial, cfg, "image", CAPS)
        assert p.unfreeze_blocks <= CAPS[p.backbone]  # never a value that cannot run
        if p.backbone == "vgg16":
            return 0.5 + 0.02 * p.unfreeze_blocks
        return 1.0 - abs(p.unfreeze_blocks - 14) / 14

    study.optimize(objective, n_trials=40)
    after_startup = [t for t in study.trials[11:] if t.params.get("backbone") == "resnet50"]
    deep = [t.params["unfreeze_blocks[resnet50]"] for t in after_startup]
    assert deep and max(deep) >= 12, deep
    assert study.best_trial.params["backbone"] == "resnet50"
    assert study.best_trial.params["unfreeze_blocks[resnet50]"] >= 11


def test_each_backbone_has_its_own_range():
    d = space.distributions(_cfg(["vgg16", "resnet50"]), "image", CAPS)
    assert d["unfreeze_blocks[vgg16]"].high == 5 and d["unfreeze_blocks[resnet50]"].high == 17
    assert "unfreeze_blocks" not in d
    one = space.distributions(_cfg(["resnet50"]), "image", CAPS)
    assert "unfreeze_blocks" in one and one["unfreeze_blocks"].high == 17


@pytest.mark.parametrize("spec", [9, [2, 9]])
def test_a_value_that_cannot_run_is_refused_not_clamped(spec):
    cfg = _cfg(["vgg16", "resnet50"], search={"unfreeze_blocks": spec})
    with pytest.raises(UserError, match=r"cannot run on backbone 'vgg16', which has 5 blocks"):
        space.check_caps(cfg, "image", CAPS)


def test_stage2_parameters_are_not_sampled_when_stage2_does_not_run():
    cfg = _cfg(["vgg16"], training={"stage2_epochs": 0})
    d = space.distributions(cfg, "image", CAPS)
    assert "unfreeze_blocks" not in d and "lr_stage2" not in d
    cfg = _cfg(["vgg16"])
    study = optuna.create_study()
    study.enqueue_trial({"unfreeze_blocks": 0})
    study.enqueue_trial({"unfreeze_blocks": 3})
    seen = []
    study.optimize(lambda t: seen.append(space.suggest(t, cfg, "image", CAPS)) or 0.0, n_trials=2)
    assert "lr_stage2" not in study.trials[0].params and "lr_stage2" in study.trials[1].params
    assert "lr_stage2" not in space.used(seen[0], cfg, "image")


def test_fences_name_the_edges():
    cfg = _cfg(["resnet50"], search={"unfreeze_blocks": {"low": 0, "high": 4},
                                     "lr_stage2": {"low": 1e-6, "high": 1e-4, "log": True}})
    best = {"backbone": "resnet50", "unfreeze_blocks": 4, "lr_stage2": 9.5e-5, "dropout": 0.1}
    lines = space.fences(best, cfg, "image", CAPS)
    assert "best unfreeze_blocks=4 is the top of 0..4: widen the range" in lines
    assert any(line.startswith("best lr_stage2=9.5e-05 is the top") for line in lines)
    assert not space.fences({**best, "unfreeze_blocks": 2, "lr_stage2": 1e-5}, cfg, "image", CAPS)
    # all of a backbone's blocks is full fine-tuning: no fence to widen
    full = _cfg(["vgg16"], search={"unfreeze_blocks": {"low": 0, "high": 5}})
    assert not space.fences({"backbone": "vgg16", "unfreeze_blocks": 5}, full, "image", CAPS)
    # no dropout below 0: its bottom is no fence, while the top of a 0..0.5 range is one
    drop = _cfg(["resnet50"], search={"dropout": {"low": 0.0, "high": 0.5}})
    assert not space.fences({"backbone": "resnet50", "dropout": 0.01}, drop, "image", CAPS)
    assert space.fences({"backbone": "resnet50", "dropout": 0.49}, drop, "image", CAPS) == [
        "best dropout=0.49 is the top of 0..0.5: widen the range"]
