"""Samplers and pruners, built from the study file's settings."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from tlsearch.config import StudyConfig

__all__ = ["TrialSeededSampler", "make_sampler", "make_pruner", "pruning_note"]


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """A sampler reseeded from ``(seed, trial number)`` before every trial.

    One seeded sampler per process makes parallel workers propose the *same* parameters (each
    starts from the same random state), while an unseeded one is not reproducible. Seeding by the
    trial number gives both: trial numbers are unique across workers, and one worker run twice
    proposes the same parameters for the same history.
    """

    def __init__(self, factory: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._factory = factory
        self._seed = seed
        self._inner = factory(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        seed = int(np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0])
        self._inner = self._factory(seed)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(cfg: StudyConfig) -> optuna.samplers.BaseSampler:
    seed = cfg.sampler.seed if cfg.sampler.seed is not None else cfg.seed
    if cfg.sampler.type == "random":
        return TrialSeededSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    return TrialSeededSampler(
        lambda s: optuna.samplers.TPESampler(seed=s, n_startup_trials=cfg.sampler.n_startup_trials,
                                             multivariate=True, group=True), seed)


def _label_free(cfg: StudyConfig) -> bool:
    return cfg.data.target is not None and cfg.data.target_validation is None


def pruning_note(cfg: StudyConfig) -> str | None:
    """Why this study prunes nothing although its file asked for no such thing, said once at
    start-up; None when it prunes as its file says."""
    if _label_free(cfg) and cfg.pruner.type != "none":
        return (f"pruning off: without `data.target_validation` a trial is judged by "
                f"{cfg.value_name} on its last epoch, which the source validation loss its epochs "
                f"report does not measure (it would prune the adapted trials first)")
    return None


def make_pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    """The study file's pruner; unless ``pruner.prune_stage1`` (or a study without stage 2), inside a
    :class:`~tlsearch.search.stage_pruning.StageAwarePruner`, which judges running bests from
    stage 2 on and hands it stage-2 epochs counted from 0.

    A study with ``data.target`` and no labelled target data prunes nothing: its epochs report
    the *source* validation loss, but its trials are judged by a label-free criterion
    (``domain_selection``) on their last epoch, and adaptation trades source loss for alignment,
    so a pruner on the source loss removes exactly the adapted trials (:func:`pruning_note` says
    so at start-up; a pruner the file asks for is refused by
    :func:`tlsearch.config_checks.domain_problems`)."""
    if _label_free(cfg):
        return optuna.pruners.NopPruner()
    if cfg.pruner.prune_stage1 or cfg.training.stage2_epochs == 0 or cfg.pruner.type == "none":
        return _optuna_pruner(cfg, cfg.training.stage1_epochs + cfg.training.stage2_epochs)
    inner = _optuna_pruner(cfg, cfg.training.stage2_epochs)  # it sees stage-2 epochs only
    from tlsearch.search.stage_pruning import StageAwarePruner

    return StageAwarePruner(inner)


def _optuna_pruner(cfg: StudyConfig, max_resource: int) -> optuna.pruners.BasePruner:
    """The Optuna pruner of the study file; ``max_resource``: the epochs it sees of a trial."""
    p = cfg.pruner
    if p.type == "none":
        return optuna.pruners.NopPruner()
    if p.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials,
                                           n_warmup_steps=p.n_warmup_steps)
    if p.type == "percentile":
        return optuna.pruners.PercentilePruner(p.percentile, n_startup_trials=p.n_startup_trials,
                                               n_warmup_steps=p.n_warmup_steps)
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, max_resource=max_resource,
                                              reduction_factor=p.reduction_factor)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource,
                                                  reduction_factor=p.reduction_factor)


