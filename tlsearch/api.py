"""tlsearch from Python: run a study, or hand tlsearch's objective to an Optuna study of your own.

``tlsearch.run("study.yaml")`` is ``tlsearch run study.yaml`` as a function: the same checks,
storage, resume, workers' trial counting and tracking, and it returns the :class:`optuna.Study`;
``tlsearch.run("study.yaml", workers=4)`` is ``tlsearch run study.yaml --workers 4``.

``tlsearch.objective("study.yaml")`` is for people who already drive Optuna themselves (their own
sampler, their own loop, parameters of their own in the same trial). It is the objective
``tlsearch run`` uses: the same two stages, pruning through ``trial.report``/``should_prune`` (so
the *user's* pruner decides), the same feature cache and the same checksummed weight artifacts.
It needs nothing of tlsearch's from the study it is given: on its first trial in a study it adds
what ``tlsearch export`` and ``tlsearch report`` read (the classes, the modality, the search
space) to the study's user attributes, where absent, and refuses a study whose stored classes or
search space differ from the study file's, as ``tlsearch run`` does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import optuna

from tlsearch.config import StudyConfig, load_config
from tlsearch.errors import UserError
from tlsearch.search.attrs import ATTR

if TYPE_CHECKING:
    from tlsearch.search.study import StudyInputs

__all__ = ["run", "objective", "Objective", "prepare_standalone"]


def _config(study: str | Path | StudyConfig) -> StudyConfig:
    return study if isinstance(study, StudyConfig) else load_config(study)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def prepare_standalone(cfg: StudyConfig, warn: Callable[[str], None] = _stderr) -> StudyInputs:
    """What trials need, checked and loaded exactly as for ``tlsearch run`` (the data, the
    backbone source with its feature cache, the schedule), for trials that run inside someone
    else's search: an Optuna study of the user's, or KerasTuner. No study storage is opened
    (:func:`~tlsearch.search.study.load_inputs`)."""
    from tlsearch.search.study import load_inputs

    return load_inputs(cfg, warn=warn)


def run(study: str | Path | StudyConfig, *, n_trials: int | None = None,
        storage: str | None = None, quiet: bool = False, workers: int = 1,
        recycle_after: int = 0, allow_oversubscribe: bool = False) -> optuna.Study:
    """Run (or resume) the study until it holds ``n_trials`` finished trials; return it.

    ``storage`` overrides the study file's database URL (``$TLSEARCH_STORAGE`` is the command
    line's, not read here). A line per epoch and per finished trial goes to stderr unless
    ``quiet``. ``workers``, ``recycle_after`` and ``allow_oversubscribe`` are the command line's
    ``--workers``, ``--recycle-after`` and ``--allow-oversubscribe``: the trials then run in
    worker processes, each a ``tlsearch run`` on the study file (their lines go to stdout,
    labelled ``worker N``), so a :class:`~tlsearch.config.StudyConfig` made in Python, which has
    no file, is refused for them. Raises :class:`~tlsearch.errors.UserError` for bad input
    (nothing written), :class:`~tlsearch.errors.TooManyFailures` when trials keep failing, and
    :class:`~tlsearch.errors.WorkersFailed` when workers stop before the study is complete.
    With ``final: {refit: true}`` the best trial is refit at the end, as by ``tlsearch run``.
    """
    from rich.console import Console

    from tlsearch.runner.loop import run_trials
    from tlsearch.runner.prepare import prepare
    from tlsearch.search.progress import Progress
    from tlsearch.search.tracking import check_tracking

    cfg = _config(study)
    if n_trials is not None and n_trials < 1:
        raise UserError(f"`n_trials`: expected at least 1, got {n_trials}")
    if workers < 1:
        raise UserError(f"`workers`: expected at least 1, got {workers}")
    if recycle_after < 0:
        raise UserError(f"`recycle_after`: expected 0 (never) or more, got {recycle_after}")
    processes = workers > 1 or recycle_after > 0
    if processes and isinstance(study, StudyConfig):
        raise UserError("`workers`: worker processes read the study from its file; pass the "
                        "study file's path (tlsearch.run('study.yaml', workers=2)), not a "
                        "StudyConfig")
    console = Console(stderr=True, quiet=quiet)
    if workers > 1:
        from tlsearch.runner.workers import worker_memory_plan

        said = worker_memory_plan(workers, allow=allow_oversubscribe)
        if said:
            console.print(said, highlight=False)
    check_tracking(cfg)
    prep = prepare(cfg, storage_url=storage, warn=console.print)
    if processes:
        from tlsearch.runner.fleet import run_workers

        outcome = run_workers(prep, str(study), workers, n_trials=n_trials,
                              recycle_after=recycle_after, show=("--quiet",) if quiet else (),
                              say=lambda line: console.print(line, highlight=False))
        note = outcome.check()
        if note:
            console.print(f"note: {note}", highlight=False)
        if cfg.final.refit:
            _refit(prep, quiet, console)
        return prep.study
    progress = Progress(console, objective=cfg.objective, maximize=cfg.direction == "maximize",
                        live=False, epochs=(cfg.training.stage1_epochs, cfg.training.stage2_epochs),
                        timeout=cfg.hard_timeout or cfg.timeout)
    summary = run_trials(prep, progress, n_trials=n_trials)
    if cfg.final.refit and summary.get("stopped") not in ("interrupted", "failures"):
        _refit(prep, quiet, console)
    return prep.study


def _refit(prep, quiet: bool, console) -> None:
    """``final: {refit: true}``: the best trial trained again on training + validation data."""
    from tlsearch.export.refit import refit_after_run

    refit_after_run(prep, None if quiet else console.print)


class Objective:
    """tlsearch's objective for an Optuna study of your own: ``study.optimize(Objective(cfg))``.

    Returns the trial's value (``objective:`` of the study file at the trial's best epoch); the
    study must have that direction (``cfg.direction``). A failed trial raises
    :class:`~tlsearch.errors.TrialFailure`: pass ``catch=(tlsearch.TrialFailure,)`` to
    ``optimize`` to go on. The study file's ``sampler``, ``pruner``, ``n_trials`` and ``storage``
    are not used: the study you pass decides those. Inputs are checked on the first call.
    """

    def __init__(self, study: str | Path | StudyConfig, *,
                 warn: Callable[[str], None] = _stderr) -> None:
        self.cfg = _config(study)
        self.warn = warn
        self._prep: StudyInputs | None = None
        self._fn: Callable[[optuna.Trial], float] | None = None
        self._adopted: set[tuple[int, str]] = set()

    def _prepare(self) -> Callable[[optuna.Trial], float]:
        if self._fn is None:
            from rich.console import Console

            from tlsearch.search.progress import Progress
            from tlsearch.search.study import make_objective
            from tlsearch.search.tracking import open_listeners

            listeners = open_listeners(self.cfg, self.warn)
            prep = self._prep = prepare_standalone(self.cfg, self.warn)
            quiet = Progress(Console(stderr=True, quiet=True), objective=self.cfg.objective,
                             live=False)
            self._fn = make_objective(prep, quiet, listeners=listeners)
        return self._fn

    def _adopt(self, study: optuna.Study) -> None:
        """Check the user's study against the study file once, and add what export reads."""
        key = (id(study), study.study_name)
        if key in self._adopted:
            return
        from tlsearch import space

        cfg = self.cfg
        if len(study.directions) == 1 and study.direction.name.lower() != cfg.direction:
            raise UserError(f"study {study.study_name!r} is created to "
                            f"{study.direction.name.lower()}, but `objective: {cfg.objective}` is "
                            f"to {cfg.direction}: create it with direction={cfg.direction!r}")
        assert self._prep is not None
        # what `tlsearch run` stores on a study it creates, as a storage returns it (JSON)
        ours = json.loads(json.dumps(self._prep.study_attrs()))
        theirs = study.user_attrs
        if ATTR["classes"] in theirs and theirs[ATTR["classes"]] != ours[ATTR["classes"]]:
            raise UserError(f"study {study.study_name!r} holds trials for classes "
                            f"{theirs[ATTR['classes']]}, but the data now has "
                            f"{ours[ATTR['classes']]}")
        if ATTR["space"] in theirs and theirs[ATTR["space"]] != ours[ATTR["space"]]:
            changes = "; ".join(space.diff_signatures(theirs[ATTR["space"]], ours[ATTR["space"]]))
            raise UserError(f"the search space of study {study.study_name!r} differs from the "
                            f"study file's: {changes}")
        for k, v in ours.items():
            if k not in theirs:
                study.set_user_attr(k, v)
        self._adopted.add(key)

    def __call__(self, trial: optuna.Trial) -> float:
        fn = self._prepare()
        self._adopt(trial.study)
        return fn(trial)


def objective(study: str | Path | StudyConfig) -> Callable[[optuna.Trial], float]:
    """The objective of ``study`` (a study file or a :class:`~tlsearch.config.StudyConfig`), for
    ``optuna.create_study(...).optimize(...)``; see :class:`Objective`."""
    return Objective(study)
