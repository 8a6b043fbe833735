"""The study file: defaults, the three forms of a search entry, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tlsearch.cli import main
from tlsearch.config import Range, load_config, parse_config
from tlsearch.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
BASE = {"name": "s", "n_trials": 2, "data": {"path": "x"}, "backbones": ["tiny_cnn"]}


def problems(raw) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    return e.value.problems


def test_defaults_and_forms():
    cfg = parse_config({**BASE, "search": {"dropout": 0.1, "head_width": [32, 64],
                                           "lr_stage1": {"low": 1e-3, "high": 1e-2, "log": True}}})
    assert cfg.objective == "val_loss" and cfg.direction == "minimize"
    assert cfg.search.dropout == 0.1
    assert cfg.search.head_width == [32, 64]
    assert isinstance(cfg.search.lr_stage1, Range) and cfg.search.lr_stage1.log
    assert cfg.backbone_entries[0].name == "tiny_cnn"
    assert cfg.storage_url.startswith("sqlite:///") and cfg.storage_url.endswith("s.db")


def test_unknown_key_suggests_the_right_one():
    (p,) = problems({**BASE, "trainig": {}})
    assert "`trainig`" in p and "did you mean `training`" in p
    (p,) = problems({**BASE, "training": {"stage1_epoch": 3}})
    assert "`training.stage1_epoch`" in p and "did you mean `training.stage1_epochs`" in p


@pytest.mark.parametrize("search, field, words", [
    ({"dropout": {"low": 0.5, "high": 0.1}}, "search.dropout", "low <= high"),
    ({"lr_stage1": {"low": 0.0, "high": 0.1, "log": True}}, "search.lr_stage1", "low > 0"),
    ({"head_width": "wide"}, "search.head_width", "expected a number"),
    ({"lr_stage2": {"low": 1e-4, "high": 1e-2, "log": True}}, "search.lr_stage2", "stage-2"),
    ({"unfreeze_blocks": {"low": 0, "high": 2.5}}, "search.unfreeze_blocks", "integer"),
])
def test_bad_search_entries_name_their_field(search, field, words):
    found = problems({**BASE, "search": search})
    assert any(f"`{field}`" in p and words in p for p in found), found


def test_unknown_backbone_did_you_mean():
    (p,) = problems({**BASE, "backbones": ["resnet5O"]})
    assert "`backbones[0].name`" in p and "did you mean 'resnet50'" in p


def test_wrong_types_and_budget():
    found = problems({**BASE, "n_trials": "many"})
    assert any("`n_trials`" in p and "'many'" in p for p in found)
    found = problems({k: v for k, v in BASE.items() if k != "n_trials"})
    assert any("budget" in p for p in found)


def test_every_problem_reported_at_once():
    found = problems({**BASE, "objective": "accuracy", "training": {"batch_size": 0}})
    assert any("`objective`" in p for p in found) and any("`training.batch_size`" in p for p in found)


def test_cli_validate_exit_codes(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**BASE, "search": {"dropout": {"low": 2, "high": 1}}}))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "search.dropout" in err and "Traceback" not in err
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    assert main(["validate", str(tmp_path / "broken.yaml")]) == 2
    assert "not valid YAML at line" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2


@pytest.mark.parametrize("study", sorted((REPO / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_studies_validate(study, capsys):
    """Every study in studies/ is valid, also where its data or weights are not on this machine."""
    cfg = load_config(study)
    assert cfg.n_trials or cfg.timeout
    assert main(["validate", str(study)]) == 0
    assert "search space" in capsys.readouterr().out
