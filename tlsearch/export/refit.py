"""Refit: the chosen trial's configuration trained again on all the labelled data.

A trial learns from the training split and is chosen on the validation split, which on small
data holds back a quarter of the examples from the model that ships. A refit (AutoGluon's
``refit_full``) trains the same configuration again on training + validation data together, for
the epochs the trial's best epoch used, and ships that.

The epochs are the trial's own path to its best epoch: stage 1 up to the stage-1 epoch whose head
stage 2 went on from (the best of stage 1), then stage 2 up to the best step; a trial whose best
epoch was in stage 1 refits stage 1 up to it and no stage 2. Same seed, same head initialisation,
same augmentation keys (seed and trial number), and the last epoch is kept: no example is left to
choose an epoch on. :func:`~tlsearch.train.pipeline.run_trial` still needs validation inputs, so it
is handed one batch of the validation examples (now training examples); what they score is never
read.

The frozen backbone's outputs of the refit's examples are the study's cached ones, joined: the
same images through the same frozen part in inference mode, so a cached refit costs only its
training. The refit's weights are stored as an artifact of the study beside the trial's,
checksummed the same way, and recorded under ``tlsearch.refits`` (trial number -> what it was
trained on, its artifact, its test figures). A screening objective keeps the threshold the trial
chose on validation: the refit has no validation data to choose another.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tlsearch.data import Dataset, fingerprint
from tlsearch.errors import UserError
from tlsearch.search.artifacts import (ARTIFACT_ATTR, AtomicFileSystemArtifactStore, fetch_arrays,
                                       upload_arrays)
from tlsearch.search.attrs import ATTR, trial_params

__all__ = ["RefitPlan", "refit_plan", "refit_dataset", "refit_trial", "stored_refit",
           "stored_or_new_refit", "refit_model", "refit_record", "evaluate_refit"]

#: what a refit record and a refit export say about validation figures
NO_VALIDATION = ("none: the refit trained on the validation examples too, so no validation figure "
                 "exists for it; `refit.trial` holds the figures of the trial it repeats, trained "
                 "without them")


@dataclass(frozen=True)
class RefitPlan:
    """The epochs a refit trains: stage 1, then stage 2 (0: none)."""

    stage1_epochs: int
    stage2_epochs: int

    @property
    def epochs(self) -> int:
        return self.stage1_epochs + self.stage2_epochs


def refit_plan(frozen: Any, objective: str, maximize: bool) -> RefitPlan:
    """The epochs trial ``frozen``'s best epoch used, read off its stored history: stage 1 up to
    its best stage-1 epoch (the head stage 2 started from, chosen as the trial chose it: the first
    of equal values), then stage 2 up to its best step."""
    history = list(frozen.user_attrs.get(ATTR["history"]) or [])
    best_step = frozen.user_attrs.get(ATTR["best_step"])
    if best_step is None or not history:
        raise UserError(f"trial {frozen.number} has no stored history to refit from")
    if int(frozen.user_attrs.get(ATTR["best_stage"], 1)) == 1:
        return RefitPlan(int(best_step) + 1, 0)
    head, head_value = None, math.nan
    for r in history:
        v = float(r.get(objective, math.nan))
        if r.get("stage") != 1 or not math.isfinite(v):
            continue
        if head is None or (v > head_value if maximize else v < head_value):
            head, head_value = int(r["step"]), v
    stage2 = [int(r["step"]) for r in history if int(r.get("stage", 1)) >= 2]
    if head is None or not stage2:
        raise UserError(f"trial {frozen.number}: its history has no finite stage-1 epoch to refit "
                        f"from")
    return RefitPlan(head + 1, int(best_step) - min(stage2) + 1)


def refit_dataset(data: Dataset, batch_size: int) -> Dataset:
    """Training + validation examples as the training data; one batch of the validation examples
    as the validation inputs :func:`~tlsearch.train.pipeline.run_trial` needs (never read)."""
    x = np.concatenate([data.x_train, data.x_val])
    y = np.concatenate([data.y_train, data.y_val])
    keep = min(len(data.y_val), batch_size)
    out = Dataset(data.modality, x, y, data.x_val[:keep], data.y_val[:keep],
                  list(data.class_names))
    out.fingerprint = fingerprint(x, y, out.x_val, out.y_val, names=out.class_names)
    return out


def _joined_source(cfg: Any, kind: Any, data: Dataset, refit: Dataset, cache: Any) -> Any:
    """The refit's backbone source: its frozen outputs are the study's cached ones of the
    training and validation examples, joined (the same rows the frozen part computes for the
    refit's data; no forward pass is repeated)."""
    source = kind.make_source(cfg, refit, cache)
    if cache is None:
        return source
    study_source = kind.make_source(cfg, data, cache)
    keep = len(refit.y_val)

    def frozen_outputs(name: str, n_unfrozen: int, params: Any = None,
                       backbone: Any = None) -> tuple[np.ndarray, np.ndarray]:
        f_tr, f_va = study_source.frozen_outputs(name, n_unfrozen, params, backbone)
        return (np.concatenate([np.asarray(f_tr), np.asarray(f_va)]),
                np.array(f_va[:keep]))

    setattr(source, "frozen_outputs", frozen_outputs)  # this one source serves joined rows
    return source


def refit_trial(cfg: Any, study: Any, frozen: Any, data: Dataset, store: AtomicFileSystemArtifactStore,
                *, cache: Any = None, log: Callable[[str], None] = print) -> dict:
    """Train trial ``frozen``'s configuration on ``data``'s training + validation examples, store
    its weights beside the trial and return the record kept on the study (``tlsearch.refits``).
    ``cache``: the study's feature cache (None: every epoch through the whole network)."""
    from tlsearch import modalities
    from tlsearch.search.inputs import class_weight_map
    from tlsearch.train.pipeline import Schedule, clear_state, run_trial

    if data.x_target is not None:
        raise UserError("`final.refit`: a study with `data.target` cannot be refit (it chose its "
                        "trial by how it serves the target domain)")
    stored = study.user_attrs.get(ATTR["data"])
    if stored is not None and stored != data.fingerprint:
        raise UserError(f"the data differ from the data study {study.study_name!r} ran on "
                        f"(fingerprint {data.fingerprint[:12]}..., stored {str(stored)[:12]}...): "
                        f"a refit trains on the examples the trial was chosen on")
    t = cfg.training
    plan = refit_plan(frozen, cfg.objective, cfg.direction == "maximize")
    refit = refit_dataset(data, t.batch_size)
    kind = modalities.get(study.user_attrs.get(ATTR["modality"], data.modality))
    source = _joined_source(cfg, kind, data, refit, cache)
    schedule = Schedule(stage1_epochs=plan.stage1_epochs, stage2_epochs=plan.stage2_epochs,
                        batch_size=t.batch_size, objective="val_loss",
                        class_weight=class_weight_map(cfg, refit),
                        keep_bn_frozen=t.keep_bn_frozen, seed=cfg.seed, keep_last=True)
    log(f"refit: trial #{frozen.number} again on all {len(refit.y_train)} labelled examples "
        f"(stage 1: {plan.stage1_epochs} epochs, stage 2: {plan.stage2_epochs}) ...")
    t0 = time.perf_counter()
    try:
        result = run_trial(trial_params(frozen), schedule, refit, source, number=frozen.number)
    finally:
        clear_state(source)
    seconds = time.perf_counter() - t0
    steps = Counter(r.stage for r in result.history)
    info = upload_arrays(study, store, result.weights, f"trial-{frozen.number}-refit.weights.npz")
    record = {
        "trial": frozen.number, "examples": int(len(refit.y_train)), "epochs": len(result.history),
        "stage1_epochs": steps.get(1, 0), "stage2_epochs": steps.get(2, 0),
        "seconds": round(seconds, 1), "seed": cfg.seed, "cached": bool(result.cached),
        "trained_on": "training + validation data", "data": data.fingerprint,
        "of_weights": (frozen.user_attrs.get(ARTIFACT_ATTR) or {}).get("sha256"),
        "weights_artifact": info,
    }
    _remember(study, frozen.number, record)
    log(f"  refit in {seconds:.1f} s ({record['epochs']} epochs); kept beside trial "
        f"#{frozen.number}")
    return record


def _remember(study: Any, number: int, record: dict) -> None:
    refits = dict(study.user_attrs.get(ATTR["refits"]) or {})
    refits[str(number)] = record
    study.set_user_attr(ATTR["refits"], refits)


def stored_refit(study: Any, frozen: Any) -> dict | None:
    """The refit stored for trial ``frozen``, or None; a refit of weights the trial no longer has
    (a trial retried since) does not count."""
    record = (study.user_attrs.get(ATTR["refits"]) or {}).get(str(frozen.number))
    if not record:
        return None
    own = (frozen.user_attrs.get(ARTIFACT_ATTR) or {}).get("sha256")
    return record if record.get("of_weights") == own else None


def stored_or_new_refit(cfg: Any, study: Any, frozen: Any, store: AtomicFileSystemArtifactStore,
                        *, data: Dataset | None = None, log: Callable[[str], None] = print) -> dict:
    """Trial ``frozen``'s stored refit, or a new one (then stored), trained with the study's
    feature cache where it has one; ``data``: the study's data when the caller has read it."""
    record = stored_refit(study, frozen)
    if record is not None:
        return record
    from tlsearch.search.inputs import check_inputs
    from tlsearch.train.cache import FeatureCache

    if data is None:
        _, data = check_inputs(cfg)
    cache = FeatureCache(cfg.cache_dir, int(cfg.cache.max_gb * 2**30), warn=log) \
        if cfg.cache.enabled else None
    return refit_trial(cfg, study, frozen, data, store, cache=cache, log=log)


def refit_model(cfg: Any, study: Any, frozen: Any, record: dict,
                store: AtomicFileSystemArtifactStore) -> tuple[Any, Any]:
    """(model, modality) of a stored refit: the trial's configuration with the refit's weights,
    verified against their recorded size and SHA-256 first."""
    from tlsearch.export.exporter import rebuild_model

    weights = fetch_arrays(record["weights_artifact"], store,
                           f"trial {frozen.number}: its refit's weights")
    return rebuild_model(cfg, study, frozen, store, weights=weights)


def refit_record(cfg: Any, study: Any, frozen: Any, refit: dict) -> dict:
    """What ``metadata.json`` says about an exported refit: the trial's record, with no
    validation figure of its own, the refit's facts, and the trial's figures under
    ``refit.trial``; a screening threshold is the trial's, and says so."""
    from tlsearch.export.exporter import trial_record

    record = trial_record(cfg, study, frozen)
    trial_side = {k: record[k] for k in ("value", "best_step", "best_stage", "metrics")}
    record.update(value=None, metrics={}, validation=NO_VALIDATION,
                  weights_artifact={k: refit["weights_artifact"][k]
                                    for k in ("id", "size", "sha256")})
    record["refit"] = {k: refit[k] for k in ("examples", "epochs", "stage1_epochs",
                                             "stage2_epochs", "seconds", "seed", "trained_on")}
    record["refit"].update(validation=NO_VALIDATION, trial={"number": frozen.number, **trial_side})
    if record["decision"].get("rule") == "threshold":
        record["decision"]["chosen"] = (f"on validation by trial #{frozen.number}, before the "
                                        f"refit; kept as it was: the refit has no validation "
                                        f"data to choose another")
    return record


def evaluate_refit(cfg: Any, study: Any, frozen: Any, refit: dict, data: Dataset,
                   store: AtomicFileSystemArtifactStore) -> dict | None:
    """The stored refit on the held-out test set (``data.test``), decided by the trial's rule,
    kept in its record; None without a test set."""
    from tlsearch.evaluation import evaluate_probabilities

    if data.x_test is None or data.y_test is None:
        return None
    model, modality = refit_model(cfg, study, frozen, refit, store)
    probs = modality.predict_all(model, data.x_test)
    rule = refit_record(cfg, study, frozen, refit)["decision"]
    result = {"trial": frozen.number, "refit": True,
              **evaluate_probabilities(probs, data.y_test, list(data.class_names),
                                       objective=cfg.objective,
                                       objective_params=rule.get("objective_params"),
                                       decision=rule)}
    _remember(study, frozen.number, {**refit, "test": result})
    return result


def refit_best(cfg: Any, study: Any, data: Dataset, store: AtomicFileSystemArtifactStore, *,
               cache: Any = None, log: Callable[[str], None] = print) -> dict | None:
    """The end of ``tlsearch run`` with ``final: {refit: true}``: the best trial refit (unless its
    refit is stored already) and judged on ``data.test``; the record, with ``test`` where there
    is a test set. None without a complete trial."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    record = stored_refit(study, best)
    if record is None:
        record = refit_trial(cfg, study, best, data, store, cache=cache, log=log)
    if "test" not in record:
        test = evaluate_refit(cfg, study, best, record, data, store)
        if test is not None:
            record = {**record, "test": test}
    return record


def export_refit(cfg: Any, out_dir: str | Path, *, trial: int | None = None,
                 url: str | None = None, formats: tuple[str, ...] | None = None,
                 force: bool = False, log: Callable[[str], None] = print, study: Any = None) -> Any:
    """Export the refit of trial ``trial`` (default: the best), refitting it first when the study
    has none stored (then it is stored, as ``final: {refit: true}`` would have). The export is
    checked like any other (formats agree, ``metadata.json`` lists every file); its metadata
    carries ``refit`` and the test figures, and no validation figure."""
    from tlsearch.export.exporter import (FORMATS, _check_formats, _prepare_out, select_trial,
                                          write_export)
    from tlsearch.runner.prepare import load_study

    formats = FORMATS if formats is None else formats
    out = Path(out_dir)
    _check_formats(formats)
    _prepare_out(out, force)
    study = study if study is not None else load_study(cfg, url)
    frozen = select_trial(study, trial)
    store = AtomicFileSystemArtifactStore(cfg.artifact_dir, create=False)
    record = stored_or_new_refit(cfg, study, frozen, store, log=log)
    model, modality = refit_model(cfg, study, frozen, record, store)
    meta = refit_record(cfg, study, frozen, record)
    which = "best trial" if trial is None else "trial"
    log(f"exporting the refit of {which} #{frozen.number} of study {study.study_name!r}: "
        f"{record['examples']} examples (training + validation), {record['stage1_epochs']} + "
        f"{record['stage2_epochs']} epochs; no validation figure exists for it")
    result = write_export(cfg, model, modality, out, meta, formats=formats, force=force, log=log)
    if "test" in result.metadata and "test" not in record:
        _remember(study, frozen.number, {**record, "test": {"trial": frozen.number, "refit": True,
                                                            **result.metadata["test"]}})
    return result


def refit_after_run(prep: Any, say: Callable[[str], None] | None) -> dict | None:
    """``final: {refit: true}`` at the end of ``tlsearch run``: :func:`refit_best` on the run's
    prepared study (its data, its feature cache), said line by line through ``say`` (None: say
    nothing; ``--json`` puts the returned record in the summary)."""
    from tlsearch.export.evaluate import format_evaluation

    def tell(line: str) -> None:
        if say is not None:
            say(line)

    record = refit_best(prep.cfg, prep.study, prep.data, prep.store, cache=prep.source.cache,
                        log=tell)
    if record is None or say is None:
        return record
    test = record.get("test")
    if test:
        say(format_evaluation(test, f"held-out test set (data.test), refit of trial "
                                    f"#{record['trial']}"))
    say(f"refit:     trial #{record['trial']} on {record['examples']} examples, "
        f"{record['epochs']} epochs in {record['seconds']:.1f} s; `tlsearch export` exports it")
    return record
