"""A model judged as its users judge it: on labelled data it never saw while being chosen.

The trial value is a best epoch on the validation set, and the best trial is the best of many on
that same set: an estimate biased upward, the more so the more trials. A held-out test set
(``data.test``) is evaluated once, for the chosen trial only, after the study and on export;
``tlsearch evaluate`` does the same for an export on any labelled data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tlsearch import modalities
from tlsearch.data import load_labelled
from tlsearch.errors import UserError
from tlsearch.export.exporter import rebuild_model
from tlsearch.evaluation import evaluate_probabilities
from tlsearch.search.artifacts import AtomicFileSystemArtifactStore

__all__ = ["evaluate_trial", "evaluate_export", "format_evaluation"]


def evaluate_trial(cfg: Any, study: Any, frozen: Any, x: np.ndarray, y: np.ndarray
                   ) -> dict[str, Any]:
    """Trial ``frozen`` at its best epoch, rebuilt from its stored weights, on ``(x, y)``."""
    from tlsearch.search.attrs import ATTR

    model, modality = rebuild_model(cfg, study, frozen,
                                    AtomicFileSystemArtifactStore(cfg.artifact_dir, create=False))
    probs = modality.predict_all(model, x)
    classes = list(study.user_attrs[ATTR["classes"]])
    return {"trial": frozen.number,
            **evaluate_probabilities(probs, y, classes, objective=cfg.objective,
                                     objective_params=cfg.objective_params)}


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
    labels = np.array([predictor.label_index(p) for p in probs])
    meta = predictor.metadata
    out = evaluate_probabilities(probs, y, predictor.classes, objective=meta.get("objective"),
                                 labels=labels)
    if skipped:
        out["skipped"] = skipped
    return out


def format_evaluation(result: dict[str, Any], title: str) -> str:
    """A few plain lines: the headline numbers, then one line per class."""
    if not result:
        raise UserError("nothing was evaluated")
    head = (f"{title}: {result['n']} examples, accuracy {result['accuracy']:.4f}, loss "
            f"{result['loss']:.4f}, macro F1 {result['macro_f1']:.4f}, macro AUC "
            f"{result['macro_auc']:.4f}")
    rows = [f"  {c:<20} precision {m['precision']:.3f}  recall {m['recall']:.3f}  "
            f"F1 {m['f1']:.3f}  support {m['support']}" for c, m in result["per_class"].items()]
    return "\n".join([head, *rows])


def evaluate_best_on_test(cfg: Any, study: Any, data: Any) -> dict[str, Any] | None:
    """After a study: its best trial evaluated once on ``data.test``, stored on the study (so the
    report and export show it) and returned; None without a test set or a complete trial."""
    from tlsearch.search.attrs import ATTR

    if data.x_test is None:
        return None
    try:
        best = study.best_trial
    except ValueError:
        return None
    stored = study.user_attrs.get(ATTR["test"])
    if stored and stored.get("trial") == best.number:
        return stored
    result = evaluate_trial(cfg, study, best, data.x_test, data.y_test)
    study.set_user_attr(ATTR["test"], result)
    return result
