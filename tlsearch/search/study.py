"""The study: inputs checked, the study created or resumed, the objective around the pipeline,
and the run loop.

Order matters here. Everything that can be wrong with the user's input (the study file, the
backbone weights, the data, the storage URL, a search space edited since the study was created) is
checked in :func:`prepare` before anything is written, so a bad input leaves the database exactly
as it was. Only then is the study created, once, and trials run.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from tlsearch import modalities, space
from tlsearch.config import StudyConfig
from tlsearch.data import Dataset
from tlsearch.errors import (ArtifactWriteError, TooManyFailures, TrialFailure,
                             UserError)
from tlsearch.modalities import Modality
from tlsearch.search.artifacts import AtomicFileSystemArtifactStore, upload_weights
from tlsearch.search.attrs import ATTR, FINISHED
from tlsearch.search.failures import FailureGuard, as_trial_failure
from tlsearch.search.endings import HARD_TIMEOUT_NOTE, Deadlines, HardTimeout, ending
from tlsearch.search.inputs import caps as study_caps
from tlsearch.search.journal_grpc import check_other_storage
from tlsearch.search.inputs import (check_inputs, check_writable, resolve_objective_params,
                                    class_weight_map, config_snapshot, prescreen, study_weights)
from tlsearch.search.progress import Progress
from tlsearch.search.resume import check_resume, meaning
from tlsearch.search.sqlite_probe import check_sqlite_writable
from tlsearch.search.locks import is_connection_error, study_lock
from tlsearch.search.quiet import quiet_interrupts
from tlsearch.search.samplers import make_pruner, make_sampler, pruning_note
from tlsearch.search.stage_pruning import pruning_cost
from tlsearch.search.storage import check_url, open_storage, redact_url, sqlite_missing
from tlsearch.search.tracking import Listeners, open_listeners
from tlsearch.search.workers import DONE, WAIT, Claims
from tlsearch.train.cache import FeatureCache
from tlsearch.train.features import BackboneSource
from tlsearch.train.pipeline import Schedule, clear_state, planned_steps, run_trial

__all__ = [
    "PreparedStudy",
    "check_inputs",
    "prepare",
    "make_objective",
    "run",
    "load_study",
    "summarize",
    "best_accuracy",
]

@dataclass
class PreparedStudy:
    """Everything checked and loaded; the study exists in storage."""

    cfg: StudyConfig
    study: optuna.Study
    data: Dataset
    source: BackboneSource
    schedule: Schedule
    store: AtomicFileSystemArtifactStore
    modality: str
    storage_url: str
    kind: Modality | None = None
    #: each backbone's number of blocks (what its ``unfreeze_blocks`` may reach)
    caps: dict[str, int] = field(default_factory=dict)

    @property
    def finished(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=FINISHED))


def load_study(cfg: StudyConfig, url: str | None = None) -> optuna.Study:
    """The stored study, for reading (export, report, dashboard). Fails clearly if absent."""
    url = url or cfg.storage_url
    if sqlite_missing(url):
        raise UserError(f"no study database at {redact_url(url)}: run `tlsearch run` first")
    storage = open_storage(cfg, url, heartbeat=False)
    try:
        return optuna.load_study(study_name=cfg.name, storage=storage)
    except KeyError:
        raise UserError(f"study {cfg.name!r} is not in {redact_url(url)}: run `tlsearch run` "
                        f"first") from None


def prepare(cfg: StudyConfig, *, storage_url: str | None = None, warn=print,
            create: bool = True, on_features=None) -> PreparedStudy:
    """Check the inputs, compare with a stored study of the same name, then create or load it.

    Nothing is written before every input is checked: the data, the backbones (each is built
    once, for its block count), the artifact folder, and a stored study's search space and
    meaning (:mod:`tlsearch.search.resume`). The storage is opened and the study created under a
    lock shared by every process using the storage (see :mod:`tlsearch.search.workers`): workers
    started at the same moment on a fresh database would otherwise all try to create Optuna's
    tables, and most would crash. ``on_features`` watches frozen outputs being computed
    (:attr:`BackboneSource.on_features <tlsearch.train.features.BackboneSource.on_features>`).
    """
    url = storage_url or cfg.storage_url
    check_url(url)
    check_other_storage(cfg, url, create=create)  # journal:, grpc: what they cannot honour
    if create:
        check_sqlite_writable(url)
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
    now = meaning(cfg, study_weights(cfg, source), data=data.fingerprint, classes=data.class_names)
    if data.x_target is not None:
        now["data.target"] = data.target_fingerprint
    if not create:
        if not sqlite_missing(url):
            try:
                check_resume(optuna.load_study(study_name=cfg.name, storage=open_storage(cfg, url)),
                             cfg, sig, now)
            except KeyError:
                pass
        raise UserError("nothing to do")
    check_writable(cfg)
    lock = study_lock(url, "storage")
    try:
        with lock.held():
            storage = open_storage(cfg, url)
            try:
                study = optuna.load_study(study_name=cfg.name, storage=storage,
                                          sampler=make_sampler(cfg), pruner=make_pruner(cfg))
            except KeyError:
                study = None
            if study is not None:
                check_resume(study, cfg, sig, now)
                if ATTR["objective_params"] not in study.user_attrs:  # stored before they were
                    study.set_user_attr(ATTR["objective_params"], judged_by)
            else:
                study = optuna.create_study(
                    study_name=cfg.name, storage=storage, direction=cfg.direction,  # type: ignore[arg-type]
                    sampler=make_sampler(cfg), pruner=make_pruner(cfg),
                )
                for key, value in (("space", sig), ("classes", data.class_names),
                                   ("modality", modality), ("config", config_snapshot(cfg)),
                                   ("data", data.fingerprint), ("meaning", now), ("caps", caps),
                                   ("prescreen", ranking), ("objective_params", judged_by),
                                   *((("target", data.target_fingerprint),)
                                     if data.x_target is not None else ())):
                    study.set_user_attr(ATTR[key], value)
                if cfg.sampler.warm_start and not study.trials:
                    study.enqueue_trial(space.warm_start(cfg, modality, caps),
                                        skip_if_exists=True)
    finally:
        lock.close()
    schedule = Schedule(
        stage1_epochs=cfg.training.stage1_epochs, stage2_epochs=cfg.training.stage2_epochs,
        batch_size=cfg.training.batch_size, objective=cfg.objective,
        objective_params=judged_by, class_weight=cw_map,
        keep_bn_frozen=cfg.training.keep_bn_frozen, seed=cfg.seed,
        domain_selection=domain_selection(data),
    )
    store = AtomicFileSystemArtifactStore(cfg.artifact_dir)
    return PreparedStudy(cfg, study, data, source, schedule, store, modality, url, kind, caps)


def domain_selection(data: Dataset) -> str:
    """How a study with ``data.target`` judges trials (:mod:`tlsearch.train.dann_stage`)."""
    from tlsearch.train.dann_stage import LABEL_FREE, TARGET_LABELS

    if data.x_target is None:
        return ""
    return TARGET_LABELS if data.target_validation else LABEL_FREE


def make_objective(prep: PreparedStudy, progress: Progress,
                   on_start: Callable[[optuna.Trial], None] | None = None,
                   listeners: Listeners | None = None, deadlines: Deadlines | None = None):
    """The objective around :func:`~tlsearch.train.pipeline.run_trial`. ``on_start`` is called first,
    once the trial is RUNNING (a claim is released there: see :class:`tlsearch.search.workers.Claims`).
    ``listeners`` (default: the study file's ``tracking:``) hear each trial's start, epochs and end.
    The global step of the trial's first stage-2 epoch is stored on it (``tlsearch.stage2_step``,
    what :class:`~tlsearch.search.stage_pruning.StageAwarePruner` reads) before that epoch is
    reported, and the step of its last planned epoch (``tlsearch.last_step``) as it starts; no
    pruner is asked at that last epoch. Past ``deadlines.hard`` the trial stops after its current batch, as PRUNED."""
    cfg, schedule = prep.cfg, prep.schedule
    hooks = open_listeners(cfg) if listeners is None else listeners

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
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM, the parent gone: say why it failed
            with contextlib.suppress(Exception):
                trial.set_user_attr(ATTR["failure"], "interrupted")
            raise
        except Exception as e:
            failure = as_trial_failure(e)
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
            upload_weights(trial, prep.store, result.weights, step=result.best_step)
        except ArtifactWriteError as e:  # every later trial would lose its weights too: stop
            trial.set_user_attr(ATTR["failure"], str(e))
            raise
        return result.value

    return hooks.wrap(objective)


def run(prep: PreparedStudy, progress: Progress, *, n_trials: int | None = None,
        poll: float | None = None, max_here: int | None = None, who: str = "this run") -> dict:
    """Run trials until the study holds ``n_trials`` finished ones (or the timeout passes), or
    until this process has run ``max_here`` trials (then the summary says ``recycle``: a fresh
    process should carry on; see :data:`tlsearch.search.workers.RECYCLE`). The summary says why
    it stopped (``stopped``, :mod:`tlsearch.search.endings`) and the trials left (``left``).

    The count is the study's, across every worker: each trial is claimed before it starts (see
    :class:`tlsearch.search.workers.Claims`), so N workers stop at exactly ``n_trials``. A worker whose
    own work is done waits while the last trials run elsewhere, since one of them may die and
    need a retry, and stops when they finish.
    """
    cfg = prep.cfg
    progress.value_label = cfg.value_name
    target = n_trials or cfg.n_trials
    best = None
    try:
        bt = prep.study.best_trial
        best = (bt.number, float(bt.value))  # type: ignore[arg-type]
    except ValueError:
        pass
    guard = FailureGuard(cfg.training.max_consecutive_failures)
    claims = Claims(prep.study, prep.storage_url, cfg.heartbeat.max_retry, who)
    poll = poll if poll is not None else min(5.0, float(cfg.heartbeat.interval))
    deadlines = Deadlines(cfg.timeout, cfg.hard_timeout)
    reason = "n_trials"

    def on_done(study, frozen):
        note = frozen.user_attrs.get(ATTR["failure"], "") if frozen.state == TrialState.FAIL \
            else frozen.user_attrs.get(ATTR["stopped"], "")
        progress.trial_end(frozen.number, frozen.state.name, frozen.value, note)

    objective = make_objective(prep, progress, on_start=claims.started, deadlines=deadlines)
    here, recycle = 0, False
    try:
        swept = claims.sweep()
        if swept:
            progress.message(f"trials {swept} were left running by a worker that died: failed "
                             f"(swept at start by {who}) and queued again")
        progress.start(target, prep.finished, best)
        while not guard.tripped:
            late = deadlines.may_start()
            if late is not None:
                reason = late
                break
            decision = claims.next(target)
            if decision == DONE:
                break
            if decision == WAIT:
                time.sleep(poll)
                continue
            if max_here is not None and here >= max_here:  # trials remain: a fresh process
                claims.abandon()
                recycle = True
                break
            progress.done = claims.finished
            here += 1
            try:
                with quiet_interrupts():  # Ctrl-C: tlsearch's one line, not Optuna's traceback
                    prep.study.optimize(objective, n_trials=1, catch=(TrialFailure,),
                                        callbacks=[on_done, guard])  # clear_state collects
            except Exception as e:
                if not is_connection_error(e):
                    raise
                # the trial's heartbeat stops: it is swept and retried; the next claim reconnects
                progress.message(f"lost the database connection during a trial ({type(e).__name__})"
                                 f"; carrying on")
            finally:
                claims.abandon()  # a no-op once the trial started
    finally:
        progress.close()
        claims.close()
    if guard.tripped:
        reasons = "\n".join(f"  - {r}" for r in guard.reasons[-guard.limit:])
        raise TooManyFailures(
            f"{guard.count} trials failed in a row; the study was stopped:\n{reasons}\n"
            f"Fix the cause and run the same command again: the study resumes."
        )
    summary = ending(summarize(prep.study), "recycle" if recycle else reason, target)
    if recycle:
        summary["recycle"] = True
    return summary


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
