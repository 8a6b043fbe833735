"""A model judged as its users judge it: on labelled data it never saw while being chosen.

The trial value is a best epoch on the validation set, and the best trial is the best of many on
that same set: an estimate biased upward, the more so the more trials. A held-out test set
(``data.test``) is evaluated once for each trial that ends a run as the best, after the study and
on export; ``tlsearch evaluate`` does the same for an export on any labelled data. Every figure is
the one the exported model reaches: its labels are decided by the export's rule (a screening
objective's threshold chosen on validation) and judged by the study's ``objective_params``.

Each evaluation is kept on the study (trial, time, figures): a resumed study whose best trial
changes has consulted its test set more than once, and says so, because a test set that picks
between trials is no longer fully held out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tlsearch import modalities
from tlsearch.data import load_labelled
from tlsearch.errors import UserError
from tlsearch.export.exporter import rebuild_model, trial_record
from tlsearch.evaluation import describe_operating_point, evaluate_probabilities
from tlsearch.search.artifacts import AtomicFileSystemArtifactStore

__all__ = ["evaluate_trial", "evaluate_export", "format_evaluation", "evaluate_best_on_test",
           "judged_note"]


def evaluate_trial(cfg: Any, study: Any, frozen: Any, x: np.ndarray, y: np.ndarray
                   ) -> dict[str, Any]:
    """Trial ``frozen`` at its best epoch, rebuilt from its stored weights, on ``(x, y)``, deciding
    as its export would (:func:`~tlsearch.export.exporter.decision_rule`)."""
    model, modality = rebuild_model(cfg, study, frozen,
                                    AtomicFileSystemArtifactStore(cfg.artifact_dir, create=False))
    probs = modality.predict_all(model, x)
    record = trial_record(cfg, study, frozen)
    rule = record["decision"]
    return {"trial": frozen.number,
            **evaluate_probabilities(probs, y, record["classes"], objective=cfg.objective,
                                     objective_params=rule.get("objective_params"),
                                     decision=rule)}


def evaluate_export(export_dir: str | Path, data_path: str | Path, *, batch_size: int = 64
                    ) -> dict[str, Any]:
    """An exported model on labelled data in any supported format (its labels must be among the
    model's classes); predictions made exactly as ``tlsearch predict`` makes them."""
    from tlsearch.config import DataConfig
    from tlsearch.export.predict import load

    predictor = load(export_dir)
    image_size = int(predictor.metadata.get("input", {}).get("image_size") or 224)
    cfg = DataConfig(path=Path(data_path), image_size=image_size)
    x, y, skipped = load_labelled(cfg, Path(data_path), predictor.classes, base_dir=None,
                                  image_size=image_size, field="DATA")
    kind = modalities.get(predictor.modality)
    probs = np.concatenate([kind.run(predictor.model, list(x[i:i + batch_size]))
                            for i in range(0, len(x), batch_size)])
    meta = predictor.metadata
    rule = meta.get("decision") or {"rule": "argmax"}
    params = rule.get("objective_params")
    if params is None and rule.get("rule") == "threshold":  # an export written before they were
        params = {"positive": rule["positive"]}
    out = evaluate_probabilities(probs, y, predictor.classes, objective=meta.get("objective"),
                                 objective_params=params, decision=rule)
    if skipped:
        out["skipped"] = skipped
    return out


def format_evaluation(result: dict[str, Any], title: str) -> str:
    """A few plain lines: the headline numbers, then one line per class."""
    if not result:
        raise UserError("nothing was evaluated")
    head = (f"{title}: {result['n']} examples, accuracy {result['accuracy']:.4f}"
            f"{_se(result, 'accuracy_se')}, loss {result['loss']:.4f}{_se(result, 'loss_se')}, "
            f"macro F1 {result['macro_f1']:.4f}, macro AUC "
            f"{result['macro_auc']:.4f}")
    rows = [f"  {c:<20} precision {m['precision']:.3f}  recall {m['recall']:.3f}  "
            f"F1 {m['f1']:.3f}  support {m['support']}" for c, m in result["per_class"].items()]
    point = describe_operating_point(result)
    return "\n".join([head, *([point] if point else []), *rows])


def _se(result: dict[str, Any], key: str) -> str:
    """`` ± 0.0207`` where the standard error is known (results stored before it was kept: "")."""
    se = result.get(key)
    return f" ± {se:.4f}" if isinstance(se, float) and se == se else ""


def evaluate_best_on_test(cfg: Any, study: Any, data: Any) -> dict[str, Any] | None:
    """After a study: its best trial evaluated once on ``data.test``, stored on the study (so the
    report and export show it) and returned; None without a test set or a complete trial.

    Every evaluation is appended to the study's history (:func:`~tlsearch.search.attrs.
    test_evaluations`: trial, time, figures); a trial already evaluated is not evaluated again."""
    import datetime as dt

    from tlsearch.search.attrs import ATTR, test_evaluations

    if data.x_test is None:
        return None
    try:
        best = study.best_trial
    except ValueError:
        return None
    history = test_evaluations(study)
    done = next((e for e in reversed(history) if e.get("trial") == best.number), None)
    if done is not None:
        if study.user_attrs.get(ATTR["tests"]) is None:  # an older study: start its history
            study.set_user_attr(ATTR["tests"], history)
        if (study.user_attrs.get(ATTR["test"]) or {}).get("trial") != best.number:
            study.set_user_attr(ATTR["test"], done)  # the best is an earlier best again
        return done
    result = evaluate_trial(cfg, study, best, data.x_test, data.y_test)
    result["time"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    study.set_user_attr(ATTR["tests"], [*history, result])
    study.set_user_attr(ATTR["test"], result)
    return result


def judged_note(study: Any) -> str | None:
    """A line saying how many trials the held-out test set has judged, when more than one."""
    from tlsearch.search.attrs import test_evaluations

    trials = sorted({int(e["trial"]) for e in test_evaluations(study) if e.get("trial") is not None})
    if len(trials) < 2:
        return None
    shown = ", ".join(f"#{t}" for t in trials)
    return (f"the test set has judged {len(trials)} trials ({shown}), one each time a run ended "
            f"with a new best: it is no longer fully held out, and its figures are optimistic")
