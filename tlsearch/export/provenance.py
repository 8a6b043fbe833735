"""Where an export came from, and how sure its figures are: what ``metadata.json`` records beyond
the trial itself.

A model is only as good as the data it was trained, chosen and tested on, so the export names that
data (its paths as the study file gives them, its fingerprint), the split (seed and ratio, or the
given validation data), the examples and class counts of each split, and the standard errors of
its figures. The study stores the fingerprint, not the counts: the data is read once more at
export, and its fingerprint compared with the study's, so counts are recorded only for the data
the trial was trained on. Data that cannot be read at export (moved to another machine, say) is
recorded as such; the export goes on, since the weights do not need it.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from tlsearch.errors import UserError

if TYPE_CHECKING:
    import optuna

    from tlsearch.config import DataConfig, StudyConfig
    from tlsearch.data import Dataset

__all__ = ["study_facts", "data_provenance", "domain_record", "test_errors", "versions"]

#: packages a text export needs beside Keras and TensorFlow (its tokenizer and its TF Text ops)
TEXT_PACKAGES = ("keras-hub", "tensorflow-text")
#: packages that wrote an ONNX export
ONNX_PACKAGES = ("tf2onnx", "onnx", "onnxruntime")


def versions(modality: str, onnx: bool = False) -> dict[str, str]:
    """The library versions an export was written with: what loading it again needs."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    extra = (*(TEXT_PACKAGES if modality == "text" else ()), *(ONNX_PACKAGES if onnx else ()))
    out = {"python": platform.python_version()}
    for pkg in ("tlsearch", "keras", "tensorflow", "optuna", "numpy", *extra):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def study_facts(cfg: StudyConfig, study: optuna.Study, frozen: optuna.trial.FrozenTrial
                ) -> dict[str, Any]:
    """What the study knows about trial ``frozen`` beyond its figures: the standard error of its
    value, the objective's parameters it was judged by, where it sits against the fences of the
    search space, the study's data fingerprint, and which trials the test set has judged."""
    from tlsearch import space
    from tlsearch.search.attrs import ATTR, study_objective_params, test_evaluations

    attrs = study.user_attrs
    try:
        is_best = len(study.directions) == 1 and study.best_trial.number == frozen.number
    except ValueError:
        is_best = False
    fences = attrs.get(ATTR["fences"]) if is_best else None
    if fences is None:
        params = frozen.user_attrs.get(ATTR["params"], {})
        modality = attrs.get(ATTR["modality"], "image")
        try:
            fences = space.fences(params, cfg, modality, attrs.get(ATTR["caps"]))
        except (KeyError, ValueError, TypeError, UserError):  # a space that changed since
            fences = []
    se = frozen.user_attrs.get(ATTR["value_se"])
    return {
        "value_se": se if isinstance(se, (int, float)) and math.isfinite(se) else None,
        "objective_params": study_objective_params(cfg, study),
        "fences": list(fences),
        "data_fingerprint": attrs.get(ATTR["data"]),
        "judged_trials": sorted({int(e["trial"]) for e in test_evaluations(study)
                                 if e.get("trial") is not None}),
    }


def _counts(y: np.ndarray, classes: list[str]) -> dict[str, int]:
    return {c: int(n) for c, n in zip(classes, np.bincount(y, minlength=len(classes)))}


def _paths(data_cfg: DataConfig) -> dict[str, str]:
    """The data's paths as the study file writes them (relative to it, unless written absolute)."""
    return {name: str(getattr(data_cfg, name)) for name in
            ("path", "validation", "test", "target", "target_validation")
            if getattr(data_cfg, name, None) is not None}


def _split(cfg: StudyConfig) -> dict[str, Any]:
    d = cfg.data
    given = d.target_validation if d.target_validation is not None else d.validation
    test_split = getattr(d, "test_split", None)  # a test set cut from data.path first
    cut = {} if test_split is None else {"test_split": test_split, "seed": cfg.seed}
    if given is not None:
        field = "data.target_validation" if d.target_validation is not None else "data.validation"
        return {"method": "given", "validation": str(given), "field": field, **cut}
    return {"method": "stratified random", "seed": cfg.seed, "validation_split": d.validation_split,
            **cut}


def data_provenance(cfg: StudyConfig, record: dict, log: Callable[[str], None]
                    ) -> tuple[dict, Dataset | None]:
    """(``metadata["data"]``, the :class:`~tlsearch.data.Dataset` read, or None when it could not
    be read or is not the data the study was run on)."""
    from tlsearch.data import fingerprint, load_dataset

    out: dict[str, Any] = {"fingerprint": record.get("data_fingerprint"), "paths": _paths(cfg.data),
                           "format": cfg.data.format, "split": _split(cfg)}
    try:
        ds = load_dataset(cfg.data, base_dir=cfg.base_dir, image_size=cfg.data.image_size,
                          seed=cfg.seed)
    except (UserError, OSError, ValueError) as e:  # the weights are exported without it
        # the study file's folder left out: the record names paths as the study file gives them
        out["not_read"] = str(e).splitlines()[0].replace(f"{cfg.base_dir}{os.sep}", "")
        log(f"  data: not read at export ({out['not_read']}); its counts are not recorded")
        return out, None
    if out["format"] is None:
        from tlsearch.data import infer_format

        out["format"] = infer_format(cfg.base_dir / cfg.data.path)
    stored = out["fingerprint"]
    if stored is None:  # a study stored without one: the data as read now
        out["fingerprint"] = ds.fingerprint
    elif stored != ds.fingerprint or list(ds.class_names) != list(record["classes"]):
        out["changed"] = (f"the data at these paths is not the data the study was run on "
                          f"(fingerprint now {ds.fingerprint[:12]}...): its counts are not "
                          f"recorded")
        log(f"  data: {out['changed']}")
        return out, None
    classes = list(ds.class_names)
    splits = {"train": ds.y_train, "validation": ds.y_val}
    if ds.y_test is not None:
        splits["test"] = ds.y_test
        out["test_fingerprint"] = fingerprint(ds.x_test, ds.y_test, names=classes)
    out["examples"] = {k: int(len(v)) for k, v in splits.items()}
    if ds.x_target is not None:
        out["examples"]["target"] = int(len(ds.x_target))
        out["target_fingerprint"] = ds.target_fingerprint
    out["class_counts"] = {k: _counts(v, classes) for k, v in splits.items()}
    shared = [w for w in ds.warnings if "`data.test`" in w and "also in the training" in w]
    if shared:
        out["test_overlap"] = shared[0].removeprefix("warning: ")
    if ds.skipped:
        out["skipped_files"] = len(ds.skipped)
    return out, ds


def test_errors(objective: str, probs: np.ndarray, y: np.ndarray, result: dict[str, Any],
                params: dict[str, Any] | None) -> dict[str, float]:
    """Standard errors of the test figures: how far they would move on another test set of the
    same size. Accuracy binomial, loss the standard error of a mean, and the study's objective
    bootstrapped where it is neither (not for a screening objective, whose figure is at a stored
    threshold the bootstrap would choose again)."""
    from tlsearch.params import OBJECTIVES
    from tlsearch.train.validation import value_se

    n = int(result["n"])
    if n < 2:
        return {}
    a = float(result["accuracy"])
    out = {"accuracy": math.sqrt(a * (1.0 - a) / n),
           "loss": value_se("val_loss", probs, y)}
    key = objective.removeprefix("val_")
    if key not in out and key in result and not OBJECTIVES[objective].threshold:
        out[key] = value_se(objective, probs, y, params)
    return {k: float(v) for k, v in out.items() if math.isfinite(v)}


def domain_record(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> dict:
    """``domain_adaptation`` for a study with ``data.target``: whether this trial's head was
    adapted (and where: ``stage``), to which target data (its fingerprint), and how the trial
    was judged."""
    from tlsearch.params import adapts, adapts_backbone
    from tlsearch.search.attrs import ATTR, trial_params

    target = study.user_attrs.get(ATTR["target"])
    if not target:
        return {}
    params = trial_params(frozen)
    report = dict(frozen.user_attrs.get(ATTR["domain"]) or {})
    adapted = adapts(params)
    # where the reversed gradient went: the head only, or the backbone's top blocks too
    stage = ("backbone" if adapts_backbone(params) else "head") if adapted else None
    return {"domain_adaptation": {
        "adapted": adapted,
        "stage": stage,
        "target_fingerprint": target,
        "criterion": report.pop("criterion", None),
        "report": report,
    }}
