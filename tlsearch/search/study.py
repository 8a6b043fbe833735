"""A study's inputs and its objective: the study file checked and turned into what trials need,
the objective around the pipeline, and the summary of a study's trials. Nothing here touches the
study's storage: opening, creating or resuming a study, and the loop that runs its trials, are the
runner's (:mod:`tlsearch.runner`), which calls :func:`load_inputs` first.

Order matters. Everything that can be wrong with the user's input (the study file, the backbone
weights, the data, a search space the backbones cannot take) is checked in :func:`load_inputs`
before anything is written, so a bad input leaves the database exactly as it was. The Python API's
objective and the KerasTuner hypermodel, which run trials inside someone else's search, use the
same inputs without any study storage at all.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import optuna

from tlsearch import modalities, space
from tlsearch.config import StudyConfig
from tlsearch.data import Dataset
from tlsearch.errors import (ArtifactWriteError, TrialEndedElsewhere, TrialFailure,
                             is_connection_error)
from tlsearch.modalities import Modality
from tlsearch.params import DEFAULT_DOMAIN_CRITERION
from tlsearch.search.artifacts import AtomicFileSystemArtifactStore, upload_weights
from tlsearch.search.attrs import ATTR
from tlsearch.search.deadlines import HARD_TIMEOUT_NOTE, STOP, Deadlines, HardTimeout
from tlsearch.search.failures import as_trial_failure
from tlsearch.search.inputs import caps as study_caps
from tlsearch.search.inputs import (check_inputs, check_writable, class_weight_map,
                                    config_snapshot, prescreen, resolve_objective_params,
                                    study_weights)
from tlsearch.search.progress import Progress
from tlsearch.search.resume import study_fingerprint
from tlsearch.search.samplers import pruning_note
from tlsearch.search.stage_pruning import pruning_cost
from tlsearch.search.tracking import Listeners, open_listeners
from tlsearch.train.cache import FeatureCache
from tlsearch.train.features import BackboneSource
from tlsearch.train.pipeline import Schedule, clear_state, planned_steps, run_trial

__all__ = [
    "StudyInputs",
    "load_inputs",
    "check_inputs",
    "make_objective",
    "summarize",
    "best_accuracy",
]


@dataclass(kw_only=True)
class StudyInputs:
    """Everything a study's trials need, checked and loaded from the study file; nothing stored.

    ``cfg`` is the study file as the trials see it: after ``prescreen`` it names only the kept
    backbones. ``signature`` (the search space) and ``fingerprint`` (what a trial computes) are
    what a stored study is compared with before it is resumed."""

    cfg: StudyConfig
    data: Dataset
    source: BackboneSource
    schedule: Schedule
    modality: str
    kind: Modality
    #: each backbone's number of blocks (what its ``unfreeze_blocks`` may reach)
    caps: dict[str, int]
    signature: dict[str, str]
    fingerprint: dict[str, Any]
    #: the objective's parameters as trials are judged by them (positive class as its index)
    objective_params: dict[str, object]
    #: the prescreen's ranking of the backbones, best first (empty without ``prescreen``)
    ranking: list[tuple[str, float]]

    def study_attrs(self) -> dict[str, object]:
        """The user attributes a study of these inputs holds: what export, report and resume read
        (the classes, the modality, the search space, the fingerprint, ...), by stored name."""
        data = self.data
        attrs: dict[str, object] = {
            "space": self.signature, "classes": data.class_names, "modality": self.modality,
            "config": config_snapshot(self.cfg), "data": data.fingerprint,
            "fingerprint": self.fingerprint, "caps": self.caps, "prescreen": self.ranking,
            "objective_params": self.objective_params,
        }
        if data.x_target is not None:
            attrs["target"] = data.target_fingerprint
        return {ATTR[k]: v for k, v in attrs.items()}

    def artifact_store(self) -> AtomicFileSystemArtifactStore:
        """The store the trials' weights go to, its folder created (the first thing written
        there; :func:`load_inputs` has checked that it can be)."""
        return AtomicFileSystemArtifactStore(self.cfg.artifact_dir)


def load_inputs(cfg: StudyConfig, *, warn: Callable[[str], None] = print,
                on_features: Callable[..., None] | None = None) -> StudyInputs:
    """Check and load everything a study's trials need, touching no storage: the data, the
    backbones (each is built once, for its block count), the objective's parameters, the class
    weights, the prescreen, the search space's signature and the study's fingerprint, and that
    the artifact folder takes files (a probe, removed). Warnings go to ``warn``; ``on_features``
    watches frozen outputs being computed (:attr:`BackboneSource.on_features
    <tlsearch.train.features.BackboneSource.on_features>`). UserError names what is wrong."""
    modality, data = check_inputs(cfg)
    for line in data.warnings + data.objective_warnings(cfg.objective):
        warn(line)
    cw_map = class_weight_map(cfg, data)
    judged_by = resolve_objective_params(cfg, data)
    note = pruning_note(cfg)
    if note is not None:
        warn(note)
    cache = FeatureCache(cfg.cache_dir, int(cfg.cache.max_gb * 2**30), warn=warn) \
        if cfg.cache.enabled else None
    kind = modalities.get(modality)
    source = kind.make_source(cfg, data, cache, prefetch_unfrozen=space.max_unfreeze_searched(cfg))
    source.on_features = on_features
    cfg, ranking = prescreen(cfg, source, data, warn)
    caps = study_caps(cfg, source)
    space.check_caps(cfg, modality, caps)
    sig = space.signature(cfg, modality, caps)
    now = study_fingerprint(cfg, study_weights(cfg, source), data=data.fingerprint,
                            classes=data.class_names)
    if data.x_target is not None:
        now["data.target"] = data.target_fingerprint
    check_writable(cfg)
    schedule = Schedule(
        stage1_epochs=cfg.training.stage1_epochs, stage2_epochs=cfg.training.stage2_epochs,
        batch_size=cfg.training.batch_size, objective=cfg.objective,
        objective_params=judged_by, class_weight=cw_map,
        keep_bn_frozen=cfg.training.keep_bn_frozen, seed=cfg.seed,
        domain_selection=domain_selection(data, cfg.domain_selection),
    )
    return StudyInputs(cfg=cfg, data=data, source=source, schedule=schedule, modality=modality,
                       kind=kind, caps=caps, signature=sig, fingerprint=now,
                       objective_params=judged_by, ranking=ranking)


def domain_selection(data: Dataset, label_free: str = DEFAULT_DOMAIN_CRITERION) -> str:
    """How a study with ``data.target`` judges trials: on its labelled target data, else by the
    label-free criterion ``label_free`` (the study file's ``domain_selection``;
    :mod:`tlsearch.train.dann_selection`)."""
    from tlsearch.train.dann_stage import TARGET_LABELS

    if data.x_target is None:
        return ""
    return TARGET_LABELS if data.target_validation else label_free


def make_objective(prep: StudyInputs, progress: Progress,
                   on_start: Callable[[optuna.Trial], None] | None = None,
                   listeners: Listeners | None = None, deadlines: Deadlines | None = None,
                   store: AtomicFileSystemArtifactStore | None = None
                   ) -> Callable[[optuna.Trial], float]:
    """The objective around :func:`~tlsearch.train.pipeline.run_trial`. ``on_start`` is called
    first, once the trial is RUNNING (the runner releases its claim there).
    ``listeners`` (default: the study file's ``tracking:``) hear each trial's start, epochs and end.
    The global step of the trial's first stage-2 epoch is stored on it (``tlsearch.stage2_step``,
    what :class:`~tlsearch.search.stage_pruning.StageAwarePruner` reads) before that epoch is
    reported, and the step of its last planned epoch (``tlsearch.last_step``) as it starts; no
    pruner is asked at that last epoch. Past ``deadlines.hard`` the trial stops after its current batch, as PRUNED.
    The weights go to ``store`` (default: the inputs' :meth:`~StudyInputs.artifact_store`)."""
    cfg, schedule = prep.cfg, prep.schedule
    hooks = open_listeners(cfg) if listeners is None else listeners
    weights_store = prep.artifact_store() if store is None else store

    def objective(trial: optuna.Trial) -> float:
        if on_start is not None:
            on_start(trial)
        params = space.suggest(trial, cfg, prep.modality, prep.caps)
        shown = space.used(params, cfg, prep.modality)
        trial.set_user_attr(ATTR["params"], shown)
        last_step = planned_steps(params, schedule) - 1
        trial.set_user_attr(ATTR["last_step"], last_step)
        progress.trial_start(trial.number, shown)
        hooks.trial_start(trial, shown)
        history: list[dict] = []

        def on_epoch(rec) -> None:
            history.append(rec.to_dict())
            if rec.stage >= 2 and ATTR["stage2_step"] not in trial.user_attrs:
                trial.set_user_attr(ATTR["stage2_step"], rec.step)
            progress.epoch(rec)
            hooks.epoch(trial, rec)
            trial.report(rec.value(schedule.objective), rec.step)
            # a trial at its last epoch has spent its compute: it completes with its best epoch
            if rec.step < last_step and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {rec.step} (stage {rec.stage})")
            if deadlines is not None:
                deadlines.check()

        def on_batch(stage: int, batch: int, steps: int | None, logs: dict) -> None:
            progress.batch(stage, batch, steps, logs)
            if deadlines is not None:
                deadlines.check()

        try:
            result = run_trial(params, schedule, prep.data, prep.source, on_epoch, progress.stage,
                               on_batch=on_batch, number=trial.number)
        except HardTimeout as e:
            trial.set_user_attr(ATTR["stopped"], HARD_TIMEOUT_NOTE)
            raise optuna.TrialPruned(HARD_TIMEOUT_NOTE) from e
        except TrialFailure as e:
            trial.set_user_attr(ATTR["failure"], str(e))
            raise
        except optuna.TrialPruned:
            raise
        except Exception as e:
            failure = as_trial_failure(e)
            if failure is None and STOP.is_set():
                # the stop (SIGTERM, the parent gone) raised its KeyboardInterrupt inside native
                # code, which handed it back as another error (TensorFlow: a SystemError, "returned
                # a result with an exception set"): the trial was interrupted, not broken
                raise KeyboardInterrupt from e
            if failure is None:
                raise
            trial.set_user_attr(ATTR["failure"], str(failure))
            raise failure from e
        finally:
            trial.set_user_attr(ATTR["history"], history)
            clear_state(prep.source)
        trial.set_user_attr(ATTR["best_step"], result.best_step)
        trial.set_user_attr(ATTR["best_stage"], result.best_stage)
        trial.set_user_attr(ATTR["seconds"], round(result.seconds, 3))
        if result.value_se is not None:
            trial.set_user_attr(ATTR["value_se"], result.value_se)
        trial.set_user_attr(ATTR["cached"], result.cached)
        if result.domain is not None:
            trial.set_user_attr(ATTR["domain"], result.domain)
        try:
            upload_weights(trial, weights_store, result.weights, step=result.best_step)
        except ArtifactWriteError as e:  # every later trial would lose its weights too: stop
            trial.set_user_attr(ATTR["failure"], str(e))
            raise
        return result.value

    def guarded(trial: optuna.Trial) -> float:
        try:
            return objective(trial)
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM, the parent gone: say why it failed, wherever
            with contextlib.suppress(Exception):  # it landed (training, or the trial's start)
                trial.set_user_attr(ATTR["failure"], "interrupted")
            raise
        except TrialFailure:
            raise
        except optuna.exceptions.UpdateFinishedTrialError as e:
            # swept as dead by another process while this one ran it: nothing more to store
            raise TrialEndedElsewhere(f"trial {trial.number} was failed elsewhere while this "
                                      f"worker ran it") from e
        except Exception as e:  # a connection lost outside the training (its attributes, weights)
            if not is_connection_error(e):
                raise
            failure = as_trial_failure(e) or TrialFailure(str(e))
            with contextlib.suppress(Exception):
                trial.set_user_attr(ATTR["failure"], str(failure))
            raise failure from e

    return hooks.wrap(guarded)


def summarize(study: optuna.Study) -> dict:
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    out: dict[str, Any] = {"study": study.study_name, "trials": len(trials), "states": states}
    out["pruning"] = pruning_cost(trials)
    try:
        bt = study.best_trial
    except ValueError:
        return out
    out["best"] = {
        "number": bt.number,
        "value": bt.value,
        "params": bt.user_attrs.get(ATTR["params"], bt.params),
        "best_step": bt.user_attrs.get(ATTR["best_step"]),
        "best_stage": bt.user_attrs.get(ATTR["best_stage"]),
        "history": bt.user_attrs.get(ATTR["history"], []),
    }
    return out


def best_accuracy(summary: dict) -> float | None:
    b = summary.get("best")
    if not b:
        return None
    step = b.get("best_step")
    for rec in b.get("history", []):
        if rec["step"] == step:
            return rec["val_accuracy"]
    return None
