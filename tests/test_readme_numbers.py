"""The quickstart numbers README.md quotes come from one recorded run,
studies/quickstart.expected.json; and what the report says of Optuna is what Optuna computes."""

from __future__ import annotations

import json

import optuna
import pytest

from conftest import REPO

EXPECTED = json.loads((REPO / "studies" / "quickstart.expected.json").read_text())
README = " ".join((REPO / "README.md").read_text().split())  # line breaks do not matter


def _quotes() -> list[str]:
    e, best, v = EXPECTED, EXPECTED["best"], EXPECTED["verdict"]
    ft, ho = v["fine_tuned"], v["head_only"]
    return [
        f"`make quickstart` {e['wall_time']}",
        f"{e['n_trials']} trials, {e['complete']} complete and {e['pruned']} pruned",
        f"best val_loss {best['val_loss']:.4f}, val accuracy {best['val_accuracy']:.3f}",
        f"splits/validation` on the exported best trial gives back its val_loss "
        f"{best['val_loss']:.4f} and val accuracy {best['val_accuracy']:.3f}",
        f"({e['n_validation']} for validation) the verdict is \"{v['kind']}\"",
        f"val_loss {ft['val_loss']:.4f} ± {ft['se']:.4f} against {ho['val_loss']:.4f} ± "
        f"{ho['se']:.4f} for the best head-only result",
        f"held-out test set (data.test), trial #{e['test']['trial']}: {e['test']['n']} examples, "
        f"accuracy {e['test']['accuracy']:.4f} ± {e['test']['accuracy_se']:.4f}, loss "
        f"{e['test']['loss']:.4f} ± {e['test']['loss_se']:.4f}",
        f"{v['seconds_ratio']:g}x the seconds per trial and {v['weights_ratio']:g}x the stored "
        f"weights",
        f"exporting best trial #{best['trial']} of study 'quickstart' (val_loss="
        f"{best['val_loss']:.4f}) at its best epoch: step {best['best_step']} (stage "
        f"{best['best_stage']})",
        *(f"{name} {file} (max |diff| {e['export']['max_abs_diff'][name]})"
          for name, file in e["export"]["formats"].items()),
    ]


@pytest.mark.parametrize("quote", _quotes())
def test_readme_quotes_the_recorded_quickstart(quote):
    assert quote in README, f"README.md does not say (as recorded): {quote}"


def test_the_record_is_consistent():
    trials = EXPECTED["trials"]
    assert len(trials) == EXPECTED["n_trials"]
    assert sum(t["state"] == "COMPLETE" for t in trials) == EXPECTED["complete"]
    assert sum(t["state"] == "PRUNED" for t in trials) == EXPECTED["pruned"]
    best = min((t for t in trials if t["state"] == "COMPLETE"), key=lambda t: t["val_loss"])
    assert (best["number"], best["val_loss"]) == (EXPECTED["best"]["trial"],
                                                  EXPECTED["best"]["val_loss"])
    assert best["unfreeze_blocks"] == EXPECTED["best"]["unfreeze_blocks"]
    assert EXPECTED["test"]["trial"] == EXPECTED["best"]["trial"]  # the chosen trial, judged once
    ft = EXPECTED["verdict"]["fine_tuned"]
    assert any(t["number"] == ft["trial"] and t["val_loss"] == ft["val_loss"] for t in trials)


def test_the_report_names_the_importance_optuna_computes(monkeypatch):
    """Optuna 5.1 computes PED-ANOVA by default (not fANOVA): the report says which."""
    from optuna.importance import PedAnovaImportanceEvaluator

    from tlsearch.report import sections

    used = []
    real = PedAnovaImportanceEvaluator.evaluate
    monkeypatch.setattr(PedAnovaImportanceEvaluator, "evaluate",
                        lambda self, *a, **k: used.append(self) or real(self, *a, **k))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
    study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_float("y", 0, 1), 12)
    optuna.importance.get_param_importances(study)
    assert used  # the default
    text = (REPO / "tlsearch" / "report" / "sections.py").read_text()
    assert "PED-ANOVA" in text and "fANOVA" not in text
    assert "fANOVA" not in README
    section = sections._importance_section(study, None)
    assert "PED-ANOVA" in section.intro
