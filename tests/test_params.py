"""The catalogue: one description of each parameter and objective drives the schema, the checks,
the Optuna space and a trial's parameters; modalities answer every image-vs-text question."""

from __future__ import annotations

import dataclasses

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from tlsearch import modalities, space
from tlsearch.config import BackboneEntry, Range, parse_config
from tlsearch.errors import ConfigError, UserError
from tlsearch.params import OBJECTIVES, PARAMS, TrialParams, params_for


def _study(**search):
    return {"name": "t", "n_trials": 1, "data": {"path": "x"}, "backbones": ["tiny_cnn"],
            "search": search}


def test_trial_params_has_a_field_per_catalogue_entry():
    fields = {f.name for f in dataclasses.fields(TrialParams)}
    assert fields == {"backbone", *PARAMS}


def test_every_catalogue_default_is_a_valid_study_entry():
    cfg = parse_config(_study())
    for p in PARAMS.values():
        spec = getattr(cfg.search, p.name)
        expected = Range(**p.default) if isinstance(p.default, dict) else p.default
        assert spec == expected


@pytest.mark.parametrize("name", [p.name for p in PARAMS.values() if p.kind != "choice"])
def test_bounds_come_from_the_catalogue(name):
    p = PARAMS[name]
    too_high = p.high * 2 if p.high is not None else None
    if too_high is None:
        pytest.skip("unbounded")
    with pytest.raises(ConfigError, match=f"search.{p.where}"):
        parse_config(_study(**{name: too_high}))


def test_choice_parameter_checked_against_its_choices():
    with pytest.raises(ConfigError, match=r"search.pooling.*'cls', 'mean'"):
        parse_config(_study(pooling="max"))


def test_unknown_objective_is_refused_with_a_hint():
    with pytest.raises(ConfigError, match="did you mean 'val_accuracy'"):
        parse_config({**_study(), "objective": "val_acuracy"})


def test_direction_comes_from_the_objective():
    for name, o in OBJECTIVES.items():
        assert parse_config({**_study(), "objective": name}).direction == o.direction


def test_space_per_modality():
    cfg = parse_config(_study(pooling=["cls", "mean"], augmentation={"low": 0.0, "high": 0.5}))
    image = space.distributions(cfg, "image")
    text = space.distributions(cfg, "text")
    assert "augmentation" in image and "pooling" not in image
    assert "pooling" in text and "augmentation" not in text
    assert isinstance(text["pooling"], CategoricalDistribution)
    assert isinstance(image["unfreeze_blocks"], IntDistribution)
    assert isinstance(image["lr_stage1"], FloatDistribution) and image["lr_stage1"].log
    assert {p.name for p in params_for("text")} == set(space.space_entries(cfg, "text")) - {"backbone"}


def test_modality_of_refuses_image_and_text_together():
    with pytest.raises(UserError, match="image and text backbones cannot share one study"):
        modalities.modality_of([BackboneEntry(name="tiny_cnn"), BackboneEntry(name="tiny_bert")])
    assert modalities.modality_of([BackboneEntry(name="tiny_bert")]).name == "text"


def test_validate_refuses_a_mixed_study(tmp_path, capsys):
    import yaml

    from tlsearch.cli import main

    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({**_study(), "backbones": ["tiny_cnn", "tiny_bert"]}))
    assert main(["validate", str(f)]) == 2
    assert "cannot share one study" in capsys.readouterr().err


def test_importing_tlsearch_changes_no_global_logging():
    import subprocess
    import sys

    code = ("import optuna, warnings; before = optuna.logging.get_verbosity(); "
            "n = len(warnings.filters); import tlsearch.search.study; "
            "assert optuna.logging.get_verbosity() == before, 'verbosity changed'; "
            "assert len(warnings.filters) == n, 'warning filters changed'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
