"""From a stored trial to production files: Keras, TF Serving SavedModel, ONNX, LiteRT, metadata.

The stored weights are checked (size and SHA-256) before anything is written, and the export is
assembled in a hidden sibling folder that is renamed into place only when every file is written, so
an export either exists whole or not at all.

Every format written is checked against the Keras model on probe inputs; a format whose predictions
differ by more than :data:`TOLERANCE` is dropped with the reason recorded, rather than shipped. ONNX
and LiteRT are optional: where their converter is missing or fails, the reason is recorded in
``metadata.json`` and the other formats are still written.

What differs between modalities (how the model is rebuilt, what it takes as input, the probe inputs,
the serving signatures) comes from :mod:`tlsearch.modalities`; the formats from
:mod:`tlsearch.export.formats`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tlsearch import modalities
from tlsearch._hashing import sha256_file
from tlsearch.data import Dataset
from tlsearch.errors import UserError
from tlsearch.export.capture import convert_quietly
from tlsearch.export.card import CARD_FILE, model_card
from tlsearch.export.formats import FORMATS as _WRITERS
from tlsearch.export.formats import OPTIONAL
from tlsearch.export.integrity import SEALED_FROM, seal
from tlsearch.export.provenance import (data_provenance, domain_record, study_facts,
                                        test_errors, versions)
from tlsearch.modalities import Modality
from tlsearch.params import OBJECTIVES, objective_params, positive_index
from tlsearch.search.artifacts import ARTIFACT_ATTR, AtomicFileSystemArtifactStore, fetch_weights
from tlsearch.search.attrs import ATTR, study_objective_params, trial_params
from tlsearch.search.inputs import study_weights
from tlsearch.search.resume import check_export, study_fingerprint
from tlsearch.runner.prepare import load_study

__all__ = [
    "ExportResult",
    "TOLERANCE",
    "FORMATS",
    "select_trial",
    "rebuild_model",
    "trial_record",
    "export_study",
    "write_export",
]

#: the largest difference from the Keras model's probabilities an exported format may show
TOLERANCE = 1e-4
#: optional formats, in the order they are written
FORMATS = OPTIONAL
#: 2: metadata.json's content is sealed (:mod:`tlsearch.export.integrity`) and says where the
#: export came from (``data``, ``value_se``, the test figures' ``se``)
METADATA_VERSION = SEALED_FROM


# ---------------------------------------------------------------------------------------------
# choosing and rebuilding a trial


def select_trial(study, number: int | None = None):
    """The best trial, or trial ``number``; only COMPLETE trials have weights to export."""
    from optuna.trial import TrialState

    if number is None:
        if len(study.directions) > 1:
            front = sorted(t.number for t in study.best_trials)
            raise UserError(f"study {study.study_name!r} has several objectives, so no single best "
                            f"trial: choose one with `--trial N` (the Pareto front: {front})")
        try:
            return study.best_trial
        except ValueError:
            raise UserError(f"study {study.study_name!r} has no complete trial yet: run "
                            f"`tlsearch run` until one completes") from None
    trials = study.get_trials(deepcopy=False)
    found = next((t for t in trials if t.number == number), None)
    if found is None:
        raise UserError(f"`--trial {number}`: study {study.study_name!r} has trials "
                        f"0..{len(trials) - 1}" if trials else
                        f"`--trial {number}`: study {study.study_name!r} has no trials")
    if found.state != TrialState.COMPLETE:
        complete = [t.number for t in trials if t.state == TrialState.COMPLETE]
        raise UserError(f"`--trial {number}`: the trial is {found.state.name}, and only complete "
                        f"trials keep their weights; complete trials: {complete}")
    return found


def rebuild_model(cfg, study, frozen, store, weights: dict | None = None):
    """(model, modality) for a stored trial at its best epoch; the weights are verified first.
    ``weights``: other weights of the trial's configuration (its refit's) instead of its own."""
    modality = modalities.get(study.user_attrs.get(ATTR["modality"], "image"))
    # the backbone rebuilt from today's study file must be the one the trial was trained with
    check_export(study, cfg, study_fingerprint(cfg, study_weights(cfg, modality.make_source(cfg, None, None))))
    if weights is None:
        weights = fetch_weights(frozen, store)  # raises UserError on a damaged artifact
    classes = study.user_attrs[ATTR["classes"]]
    try:
        model = modality.build_model(cfg, trial_params(frozen), weights, len(classes))
    except ValueError as e:
        raise UserError(f"trial {frozen.number}: its weights do not fit the model the study file "
                        f"describes now ({e}); was a backbone changed?") from None
    return model, modality


# ---------------------------------------------------------------------------------------------
# the export


@dataclass
class ExportResult:
    out_dir: Path
    trial: int
    best_step: int | None
    best_stage: int | None
    formats: dict[str, dict] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)


def _files_under(root: Path) -> dict[str, dict]:
    """Every file of the export with its size and SHA-256: all but metadata.json (sealed
    itself) and the model card (documentation its readers may add to)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.relative_to(root).as_posix() not in ("metadata.json", CARD_FILE):
            out[p.relative_to(root).as_posix()] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    return out


def _max_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UserError(f"--out {str(out)!r} is not empty; choose a new folder, or pass "
                            f"--force to replace it")
        if not (out / "metadata.json").is_file():
            raise UserError(f"--out {str(out)!r} is not empty and holds no earlier export "
                            f"(no metadata.json); refusing to replace it even with --force")


def _check_formats(formats: tuple[str, ...]) -> None:
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise UserError(f"unknown export formats {unknown}; expected some of {list(FORMATS)}")


def trial_record(cfg, study, frozen) -> dict:
    """What ``metadata.json`` says about the trial an export comes from."""
    step = frozen.user_attrs.get(ATTR["best_step"])
    history = frozen.user_attrs.get(ATTR["history"], [])
    at_best = next((dict(r) for r in history if r.get("step") == step), {})
    artifact = frozen.user_attrs.get(ARTIFACT_ATTR, {})
    return {
        "study": study.study_name,
        "trial": frozen.number,
        "value": frozen.value if len(frozen.values or ()) <= 1 else frozen.values,
        "best_step": step,
        "best_stage": frozen.user_attrs.get(ATTR["best_stage"]),
        "metrics": {k: v for k, v in at_best.items() if k not in ("step", "stage", "seconds")},
        "decision": decision_rule(cfg, list(study.user_attrs[ATTR["classes"]]), at_best,
                                  study_objective_params(cfg, study)),
        "params": frozen.user_attrs.get(ATTR["params"], frozen.params),
        "classes": list(study.user_attrs[ATTR["classes"]]),
        "weights_artifact": {k: artifact[k] for k in ("id", "size", "sha256") if k in artifact},
        **domain_record(study, frozen),
        **study_facts(cfg, study, frozen),
    }


def export_study(cfg, out_dir: str | Path, *, trial: int | None = None, url: str | None = None,
                 formats: tuple[str, ...] = FORMATS, force: bool = False,
                 log: Callable[[str], None] = print, study=None) -> ExportResult:
    """Export trial ``trial`` (default: the best) of the study described by ``cfg`` to ``out_dir``.

    ``study`` is the :class:`optuna.Study` to export from, when it is not the one the study file
    names (an in-memory study driven with :func:`tlsearch.objective`, say)."""
    out = Path(out_dir)
    _check_formats(formats)
    _prepare_out(out, force)
    study = study if study is not None else load_study(cfg, url)
    frozen = select_trial(study, trial)
    record = trial_record(cfg, study, frozen)
    which = "best trial" if trial is None else "trial"
    value = record["value"]
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    store = AtomicFileSystemArtifactStore(cfg.artifact_dir, create=False)
    # rebuilt first: a study file whose objective changed is refused before its name is printed
    # beside the stored value
    model, modality = rebuild_model(cfg, study, frozen, store)
    log(f"exporting {which} #{frozen.number} of study {study.study_name!r} "
        f"({cfg.value_name}={shown}) at its best epoch: step {record['best_step']} "
        f"(stage {record['best_stage']})")
    return write_export(cfg, model, modality, out, record, formats=formats, force=force, log=log)


def write_export(cfg, model, modality: Modality, out_dir: str | Path, record: dict, *,
                 formats: tuple[str, ...] = FORMATS, force: bool = False,
                 log: Callable[[str], None] = print) -> ExportResult:
    """Write the export folder of a trained ``model``: every format, checked against the Keras
    model, and ``metadata.json`` from ``record`` (see :func:`trial_record`). All or nothing."""
    out = Path(out_dir)
    _check_formats(formats)
    _prepare_out(out, force)
    probe = modality.probe(cfg)
    reference = np.asarray(model.predict(probe, verbose=0))
    data, dataset = data_provenance(cfg, record, log)
    record = {**record, "data": data}

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        report: dict[str, dict] = {}

        def check(name: str, rel: str, result: dict) -> None:
            if "skipped" in result:
                report[name] = {"status": "skipped", "reason": result["skipped"],
                                **({"details": result["details"]} if result.get("details")
                                   else {})}
                log(f"  {name:<12} {result.get('line') or 'skipped: ' + result['skipped']}")
                return
            entry: dict[str, Any] = {"status": "ok", "path": rel}
            if "unverified" in result:
                entry.update(status="unverified", reason=result["unverified"])
            diffs = {k: _max_diff(v, reference) for k, v in result.get("predictions", {}).items()}
            if diffs:
                entry["max_abs_diff"] = {k: float(f"{d:.3g}") for k, d in diffs.items()}
            for k in ("signatures", "input_name"):
                if k in result:
                    entry[k] = result[k]
            worst = max(diffs.values(), default=0.0)
            if worst > TOLERANCE:
                target = work / rel
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
                report[name] = {"status": "dropped",
                                "reason": f"its predictions differ from the Keras model's by "
                                          f"{worst:.3g} (> {TOLERANCE:g})"}
                log(f"  {name:<12} dropped: {report[name]['reason']}")
                return
            report[name] = entry
            log(f"  {name:<12} {rel}  (max |diff| {worst:.1e})")

        for fmt in _WRITERS.values():
            if not fmt.required and fmt.name not in formats:
                continue
            target = work / fmt.path
            if fmt.required:
                check(fmt.name, fmt.path, fmt.write(model, modality, cfg, target, probe))
                if report[fmt.name]["status"] != "ok":
                    raise RuntimeError(f"the {fmt.name} export does not reproduce the model: "
                                       f"{report[fmt.name]}")
                continue
            check(fmt.name, fmt.path, convert_quietly(fmt, model, modality, cfg, target, probe))

        metadata = _metadata(cfg, record, modality, report, work)
        if cfg.data.test is not None:
            metadata["test"] = _evaluate_on_test(cfg, model, modality, record, log, dataset)
        metadata = seal(metadata)
        (work / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        (work / CARD_FILE).write_text(model_card(metadata, out.name))
        umask = os.umask(0)
        os.umask(umask)
        work.chmod(0o777 & ~umask)  # mkdtemp makes it private; an export is meant to be shared
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"wrote {out}")
    return ExportResult(out, record["trial"], record["best_step"], record["best_stage"], report,
                        metadata)


def _evaluate_on_test(cfg, model, modality: Modality, record: dict,
                      log: Callable[[str], None], dataset: Dataset | None = None) -> dict:
    """The exported trial on the held-out test set (``data.test``): what production can expect,
    decided by the export's own rule (a screening objective's stored threshold), with the
    standard errors of its figures. ``dataset``: the study's data, already read with its test
    set (else the test set is read here)."""
    from tlsearch.data import load_labelled
    from tlsearch.evaluation import describe_operating_point, evaluate_probabilities

    classes = record["classes"]
    if dataset is not None and dataset.x_test is not None and dataset.y_test is not None:
        x, y = dataset.x_test, dataset.y_test
    else:
        x, y, _ = load_labelled(cfg.data, cfg.data.test, classes, base_dir=cfg.base_dir,
                                image_size=cfg.data.image_size, field="data.test")
    probs = modality.predict_all(model, x)
    rule = record["decision"]
    result = evaluate_probabilities(probs, y, classes, objective=cfg.objective,
                                    objective_params=rule.get("objective_params"), decision=rule)
    result["se"] = test_errors(cfg.objective, probs, y, result, rule.get("objective_params"))
    log(f"  held-out test set: {result['n']} examples, accuracy {result['accuracy']:.4f}, "
        f"loss {result['loss']:.4f}")
    point = describe_operating_point(result)
    if point:
        log(point)
    return result


def decision_rule(cfg, classes: list[str], at_best: dict, params: dict[str, Any] | None = None
                  ) -> dict:
    """How predict turns probabilities into a label: the most probable class, or, for an
    objective that chose a threshold on validation (sensitivity at a required specificity ...),
    the positive class wherever its probability reaches that threshold. ``objective_params``
    (the requirement, the positive class's index) comes along, so whoever evaluates the export
    judges it as the study did; ``params`` are the study's resolved ones (by default, the study
    file's)."""
    obj = OBJECTIVES[cfg.objective]
    if params is None:
        params = objective_params(obj, cfg.objective_params)
        if "positive" in params:
            params["positive"] = positive_index(params["positive"], classes)
    judged = {"objective": cfg.objective, "objective_params": dict(params)}
    threshold = at_best.get(f"{cfg.objective}_threshold")
    if not obj.threshold or threshold is None or not math.isfinite(threshold):
        return {"rule": "argmax", **judged}
    positive = int(params["positive"])  # type: ignore[arg-type]
    return {"rule": "threshold", "threshold": float(threshold),
            "positive": positive, "positive_class": classes[positive],
            "meaning": f"{classes[positive]!r} when its probability is at least the threshold, "
                       f"otherwise the most probable other class", **judged}


def _metadata(cfg, record: dict, modality: Modality, report, root: Path) -> dict:
    onnx = report.get("onnx", {}).get("status") in ("ok", "unverified")
    classes = record["classes"]
    return {
        "format_version": METADATA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **{k: record[k] for k in ("study", "trial") if k in record},
        "objective": record.get("objective", cfg.objective),
        "direction": record.get("direction", cfg.direction),
        **{k: record.get(k) for k in ("value", "value_se", "best_step", "best_stage")},
        "metrics": record.get("metrics", {}),
        "decision": record.get("decision", {"rule": "argmax"}),
        "objective_params": record.get("objective_params",
                                       record.get("decision", {}).get("objective_params")),
        "fences": record.get("fences", []),
        "judged_trials": record.get("judged_trials", []),
        "params": record.get("params", {}),
        "data": record.get("data", {}),
        "modality": modality.name,
        "classes": classes,
        "input": modality.input_spec(cfg),
        "output": {"name": "probabilities", "shape": [None, len(classes)], "dtype": "float32",
                   "meaning": "class probabilities, in the order of `classes`"},
        "formats": report,
        "tolerance": TOLERANCE,
        "weights_artifact": record.get("weights_artifact", {}),
        **({"source": record["source"]} if "source" in record else {}),
        **({"domain_adaptation": record["domain_adaptation"]}
           if "domain_adaptation" in record else {}),
        # a refit or an ensemble says what it is, and why it has no validation figure of its own
        **{k: record[k] for k in ("validation", "refit", "ensemble") if k in record},
        "versions": versions(modality.name, onnx),
        "files": _files_under(root),
        "load": {
            "python": "import tlsearch; tlsearch.load(DIR).predict([...])  (checks every file)",
            "keras": "import tlsearch, keras; keras.saving.load_model(DIR + '/model.keras')  "
                     "(import tlsearch registers its layers; text models need keras-hub too)",
        },
    }
