"""A study in its storage: opened under the storage's lock, created or resumed, its attributes set.

:func:`prepare` is what ``tlsearch run`` and :func:`tlsearch.run` do before the first trial: the
storage URL checked (cheap, so a typo is refused before the data is read), the inputs loaded and
checked (:func:`tlsearch.search.study.load_inputs`, which touches no storage), then
:func:`open_study`. Nothing is written before every input is checked, so a bad input leaves the
database exactly as it was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Callable

import optuna

from tlsearch import space
from tlsearch._urls import redact_url
from tlsearch.config import StudyConfig
from tlsearch.errors import StorageError, UserError, is_connection_error
from tlsearch.runner.locks import RETRY_DELAYS, retrying, study_lock
from tlsearch.runner.journal_grpc import check_other_storage
from tlsearch.runner.sqlite_probe import check_sqlite_writable
from tlsearch.runner.storage import (check_url, open_storage, server_answers, sqlite_missing,
                                     storage_error)
from tlsearch.search.artifacts import AtomicFileSystemArtifactStore
from tlsearch.search.attrs import ATTR, FINISHED
from tlsearch.search.resume import check_resume
from tlsearch.search.samplers import make_pruner, make_sampler
from tlsearch.search.study import StudyInputs, load_inputs

__all__ = ["PreparedStudy", "prepare", "open_study", "load_study"]


@dataclass(kw_only=True)
class PreparedStudy(StudyInputs):
    """The inputs, and the study they run in: created or resumed in its storage."""

    study: optuna.Study
    storage_url: str
    store: AtomicFileSystemArtifactStore

    @property
    def finished(self) -> int:
        """The study's finished trials (read again after a lost connection)."""
        return retrying(lambda: len(self.study.get_trials(deepcopy=False, states=FINISHED)),
                        url=self.storage_url)


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


def open_study(inputs: StudyInputs, url: str | None = None) -> optuna.Study:
    """The study of ``inputs`` in the storage at ``url`` (default: the study file's): resumed
    when the storage holds it (refused, naming each change, when its search space or fingerprint
    differ: :func:`~tlsearch.search.resume.check_resume`), else created with the inputs' user
    attributes (:meth:`~tlsearch.search.study.StudyInputs.study_attrs`) and the warm-start trial.

    The inputs carry the study file as the trials see it (after ``prescreen``), which is what the
    sampler, the stored snapshot and the warm start are made from; hence no separate ``cfg``.
    Runs under a lock shared by every process using the storage
    (:func:`~tlsearch.runner.locks.study_lock`): workers started at the same moment on a fresh
    database would otherwise all try to create Optuna's tables, and most would crash.

    A connection the server dropped meanwhile (a restart, ``pg_terminate_backend``) is opened
    again while the server answers new ones (for about a minute); a server that does not answer
    is named at once (:class:`~tlsearch.errors.StorageError`)."""
    cfg = inputs.cfg
    url = url or cfg.storage_url
    check_url(url)
    began: list[bool] = []  # set once this run has created the study
    for delay in (*RETRY_DELAYS, None):
        try:
            return _open_study(inputs, url, began)
        except Exception as e:
            if not is_connection_error(e):
                raise
            if delay is None or not server_answers(url):
                if isinstance(e, StorageError):
                    raise
                raise storage_error(url, e) from None
        time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _open_study(inputs: StudyInputs, url: str, began: list[bool]) -> optuna.Study:
    cfg = inputs.cfg
    lock = study_lock(url, "storage")
    try:
        with lock.held():
            storage = open_storage(cfg, url)
            try:
                study = optuna.load_study(study_name=cfg.name, storage=storage,
                                          sampler=make_sampler(cfg), pruner=make_pruner(cfg))
            except KeyError:
                study = None
            if study is not None and began:  # created here, its connection lost before the end
                _complete(study, inputs)
            elif study is not None:
                check_resume(study, cfg, inputs.signature, inputs.fingerprint)
                if ATTR["objective_params"] not in study.user_attrs:  # stored before they were
                    study.set_user_attr(ATTR["objective_params"], inputs.objective_params)
            else:
                began.append(True)
                study = optuna.create_study(
                    study_name=cfg.name, storage=storage, direction=cfg.direction,  # type: ignore[arg-type]
                    sampler=make_sampler(cfg), pruner=make_pruner(cfg),
                )
                _complete(study, inputs)
    finally:
        lock.close()
    return study


def _complete(study: optuna.Study, inputs: StudyInputs) -> None:
    """What a new study holds besides its name: the inputs' attributes (those not stored yet)
    and the warm-start trial."""
    cfg = inputs.cfg
    stored = study.user_attrs
    for key, value in inputs.study_attrs().items():
        if key not in stored:
            study.set_user_attr(key, value)
    if cfg.sampler.warm_start and not study.trials:
        study.enqueue_trial(space.warm_start(cfg, inputs.modality, inputs.caps),
                            skip_if_exists=True)


def prepare(cfg: StudyConfig, *, storage_url: str | None = None,
            warn: Callable[[str], None] = print,
            on_features: Callable[..., None] | None = None) -> PreparedStudy:
    """Check the storage URL, load the inputs (:func:`~tlsearch.search.study.load_inputs`), then
    create or resume the study (:func:`open_study`). ``warn`` hears the inputs' warnings;
    ``on_features`` watches frozen outputs being computed."""
    url = storage_url or cfg.storage_url
    check_url(url)
    check_other_storage(cfg, url)  # journal:, grpc: what they cannot honour
    check_sqlite_writable(url)
    inputs = load_inputs(cfg, warn=warn, on_features=on_features)
    study = open_study(inputs, url)
    given = {f.name: getattr(inputs, f.name) for f in fields(StudyInputs)}
    return PreparedStudy(**given, study=study, storage_url=url, store=inputs.artifact_store())
