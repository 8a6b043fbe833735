"""``tlsearch export STUDY --ensemble K``: several trials as one exported model.

A study trains dozens of models and ships one; on small data, trials of different depths and
heads that score alike on validation disagree on many examples, and their average is right more
often than any of them. The members and their weights are chosen by greedy ensemble selection
with replacement (:mod:`tlsearch.export.selection`) on every complete trial's validation
probabilities at its best epoch; the ensemble is one Keras model
(:mod:`tlsearch.export.ensemble_model`) written and checked by the exporter like a single trial,
so ``tlsearch predict``, ``serve`` and ``tlsearch.load`` take it as they take any export.

Each trial's validation probabilities are computed once, from its stored (verified) weights on
the validation split the study used (seeded, so the same examples), and kept as an artifact of
the study (``tlsearch.val_probs``: trial number -> the artifact, the data's fingerprint and the
weights' SHA-256), so a second ensemble reads them back. The latest ensemble's summary (members,
weights, validation and test figures, cost) is kept on the study (``tlsearch.ensemble``) for the
report.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tlsearch.errors import UserError
from tlsearch.export.exporter import (FORMATS, ExportResult, _check_formats, _prepare_out,
                                      decision_rule, rebuild_model, write_export)
from tlsearch.params import compute
from tlsearch.search.artifacts import (ARTIFACT_ATTR, AtomicFileSystemArtifactStore, fetch_arrays,
                                       upload_arrays)
from tlsearch.search.attrs import ATTR, study_objective_params, trial_params

__all__ = ["export_ensemble", "candidates", "validation_probabilities", "VALIDATION_NOTE",
           "REFIT_NOTE"]

VALIDATION_NOTE = ("the ensemble's validation figures are measured on the examples that chose its "
                   "members and weights: optimistic, as the best trial's are; the test figures "
                   "(data.test) are held out")
REFIT_NOTE = ("none: the members and weights were chosen on validation as the trials were "
              "trained in the search, then each member was refit on training + validation data, "
              "so no validation figure exists for the ensemble exported; the test figures "
              "(data.test) are held out")


def candidates(study: Any, modality: str) -> list[Any]:
    """The complete trials with stored weights, best first (the order ties are broken in). A text
    ensemble keeps one tokenizer: only trials of the best trial's backbone and ``max_length``."""
    from optuna.trial import TrialState

    if len(study.directions) > 1:
        raise UserError(f"study {study.study_name!r} has several objectives: an ensemble is "
                        f"chosen on one")
    maximize = study.direction.name == "MAXIMIZE"
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get(ARTIFACT_ATTR) and t.value is not None]
    if not done:
        raise UserError(f"study {study.study_name!r} has no complete trial yet: run "
                        f"`tlsearch run` until one completes")
    done.sort(key=lambda t: (-t.value if maximize else t.value, t.number))
    if modality != "text":
        return done
    first = trial_params(done[0])
    return [t for t in done if (trial_params(t).backbone, trial_params(t).max_length)
            == (first.backbone, first.max_length)]


def validation_probabilities(cfg: Any, study: Any, trials: list[Any], data: Any,
                             store: AtomicFileSystemArtifactStore,
                             log: Callable[[str], None] = print) -> dict[int, np.ndarray]:
    """Trial number -> its class probabilities on ``data``'s validation examples at its best
    epoch: read back where kept (same data, same weights, checksums agree), else computed from
    its stored weights and kept."""
    import keras

    kept = dict(study.user_attrs.get(ATTR["val_probs"]) or {})
    out: dict[int, np.ndarray] = {}
    computed = 0
    for t in trials:
        own = (t.user_attrs.get(ARTIFACT_ATTR) or {}).get("sha256")
        info = kept.get(str(t.number))
        if info and info.get("data") == data.fingerprint and info.get("of_weights") == own:
            try:
                out[t.number] = fetch_arrays(info, store, f"trial {t.number}: its validation "
                                                          f"probabilities")["probabilities"][0]
                continue
            except UserError as e:
                log(f"  {e}; computing them again")
        model, modality = rebuild_model(cfg, study, t, store)
        # eager, batch by batch: a traced predict function per trial costs more than it saves
        p = np.concatenate([np.asarray(modality.run(model, list(data.x_val[i:i + 64]), only=True),
                                       np.float32) for i in range(0, len(data.x_val), 64)])
        del model
        keras.backend.clear_session()
        info = upload_arrays(study, store, {"probabilities": [p]},
                             f"trial-{t.number}-val-probabilities.npz")
        kept[str(t.number)] = {**info, "data": data.fingerprint, "of_weights": own}
        study.set_user_attr(ATTR["val_probs"], kept)  # each as it is done: an interrupted
        out[t.number] = p                              # export keeps what it computed
        computed += 1
    log(f"  validation probabilities of {len(trials)} complete trials ({computed} computed now, "
        f"{len(trials) - computed} read back)")
    return out


def _figures(objective: str, p: np.ndarray, y: np.ndarray, params: dict) -> dict[str, float]:
    return {name: float(compute(name, p, y, params if name == objective else None).value)
            for name in dict.fromkeys(("val_loss", "val_accuracy", objective))}


def export_ensemble(cfg: Any, out_dir: str | Path, k: int, *, url: str | None = None,
                    formats: tuple[str, ...] = FORMATS, force: bool = False,
                    log: Callable[[str], None] = print, study: Any = None,
                    refit: bool = False) -> ExportResult:
    """Export the ensemble of up to ``k`` complete trials chosen by greedy selection with
    replacement on their validation probabilities; its summary is kept on the study.
    ``refit``: once chosen, each member is its refit on training + validation data (stored
    refits are reused, missing ones trained and stored), with the weights chosen before."""
    from tlsearch import modalities
    from tlsearch.export.ensemble_model import ensemble_model, inference_cost
    from tlsearch.export.selection import greedy_selection
    from tlsearch.search.inputs import check_inputs
    from tlsearch.runner.prepare import load_study

    if k < 1:
        raise UserError(f"`--ensemble`: expected K, the most trials to combine, of at least 1; "
                        f"got {k}")
    out = Path(out_dir)
    _check_formats(formats)
    _prepare_out(out, force)
    study = study if study is not None else load_study(cfg, url)
    kind = modalities.get(study.user_attrs.get(ATTR["modality"], "image"))
    pool = candidates(study, kind.name)
    _, data = check_inputs(cfg)
    if study.user_attrs.get(ATTR["data"]) not in (None, data.fingerprint):
        raise UserError(f"the data differ from the data study {study.study_name!r} ran on: an "
                        f"ensemble is chosen on the validation examples its trials were judged on")
    store = AtomicFileSystemArtifactStore(cfg.artifact_dir, create=False)
    log(f"ensemble of up to {k} of study {study.study_name!r}'s {len(pool)} complete trials "
        f"(greedy selection with replacement on {cfg.objective}) ...")
    probs = validation_probabilities(cfg, study, pool, data, store, log)
    params = study_objective_params(cfg, study)
    arrays = [probs[t.number] for t in pool]
    chosen = greedy_selection(arrays, data.y_val, cfg.objective, k, params)
    members = [pool[i] for i in chosen.counts]
    weights = [chosen.weights[i] for i in chosen.counts]
    p = chosen.average(arrays)
    classes = list(study.user_attrs[ATTR["classes"]])
    threshold = compute(cfg.objective, p, data.y_val, params).threshold
    decision = decision_rule(cfg, classes, {f"{cfg.objective}_threshold": threshold}, params)
    if decision.get("rule") == "threshold":
        decision["chosen"] = "on validation, on the ensemble's averaged probabilities"
    refits: list[dict] = []
    if refit:
        from tlsearch.export.refit import refit_model, stored_or_new_refit

        log(f"  refitting the {len(members)} members on training + validation data ...")
        refits = [stored_or_new_refit(cfg, study, t, store, data=data, log=log) for t in members]
        models = [refit_model(cfg, study, t, r, store)[0] for t, r in zip(members, refits)]
        if decision.get("rule") == "threshold":
            decision["chosen"] = ("on validation, on the averaged probabilities of the members as "
                                  "trained in the search, before their refits; kept as it was")
    else:
        models = [rebuild_model(cfg, study, t, store)[0] for t in members]
    model = ensemble_model(models, weights, [t.number for t in members])
    best = pool[0]
    single = models[0] if members[0] is best and not refit \
        else rebuild_model(cfg, study, best, store)[0]
    best_value = float(compute(cfg.objective, arrays[0], data.y_val, params).value)
    shown = ", ".join(f"#{t.number} x{chosen.counts[i]}" for t, i in zip(members, chosen.counts))
    log(f"  members {shown}: {cfg.objective} {chosen.value:.4g} on validation, best single "
        f"trial #{best.number} {best_value:.4g}")
    summary: dict[str, Any] = {
        "method": "greedy ensemble selection with replacement (Caruana et al., ICML 2004) on the "
                  "complete trials' validation probabilities at their best epochs; weights are "
                  "each member's share of the additions kept",
        "k": k, "candidates": [t.number for t in pool],
        "additions": [pool[i].number for i in chosen.additions],
        "members": [{"trial": t.number, "weight": w, "count": chosen.counts[i],
                     "value": t.value, "params": t.user_attrs.get(ATTR["params"], t.params),
                     "weights_artifact": {key: (t.user_attrs.get(ARTIFACT_ATTR) or {}).get(key)
                                          for key in ("id", "size", "sha256")}}
                    for t, w, i in zip(members, weights, chosen.counts)],
        "value": chosen.value, "metrics": _figures(cfg.objective, p, data.y_val, params),
        "best_trial": {"trial": best.number, "value": best_value,
                       "metrics": _figures(cfg.objective, arrays[0], data.y_val, params)},
        "inference_cost": inference_cost(model, single, kind, cfg),
    }
    if refit:
        summary["refit"] = [{"trial": t.number, **{key: r[key] for key in (
            "examples", "epochs", "stage1_epochs", "stage2_epochs", "seconds", "seed")},
            "weights_artifact": {key: r["weights_artifact"][key] for key in ("id", "size", "sha256")}}
            for t, r in zip(members, refits)]
        summary["validation_of_the_choice"] = {"value": chosen.value, "metrics": summary["metrics"]}
        summary["value"], summary["metrics"] = None, {}
    record = {"study": study.study_name, "trial": None, "value": summary["value"],
              "best_step": None, "best_stage": None, "metrics": summary["metrics"],
              "decision": decision, "params": {}, "classes": classes, "weights_artifact": {},
              "validation": REFIT_NOTE if refit else VALIDATION_NOTE, "ensemble": summary}
    result = write_export(cfg, model, kind, out, record, formats=formats, force=force, log=log)
    kept = {k2: v for k2, v in summary.items() if k2 not in ("members", "refit")}
    kept["refit"] = bool(refit)
    kept["members"] = [{key: m[key] for key in ("trial", "weight", "count", "value")}
                       for m in summary["members"]]
    if "test" in result.metadata:
        kept["test"] = {key: result.metadata["test"][key] for key in ("n", "accuracy", "loss")}
    kept["time"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    study.set_user_attr(ATTR["ensemble"], kept)
    return result
