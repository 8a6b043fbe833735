"""The fixed part of a study's training schedule, and the numbers each epoch records.

Its own module so that a stage (:mod:`tlsearch.train.stages`), the context a stage works with
(:mod:`tlsearch.train.context`) and the pipeline that runs stages can all name it without one
importing another.
"""

from __future__ import annotations

from dataclasses import dataclass

from tlsearch.params import OBJECTIVES

__all__ = ["Schedule", "METRIC_KEYS"]

#: the per-epoch numbers every trial's history keeps: the training loss and the Keras-computed
#: objectives (a study's own callback objective, and its threshold, are added to them)
METRIC_KEYS = ("loss", *(n for n, o in OBJECTIVES.items() if not o.needs_callback))


@dataclass(frozen=True)
class Schedule:
    """The fixed part of the schedule and how epochs are judged."""

    stage1_epochs: int = 5
    stage2_epochs: int = 5
    batch_size: int = 32
    objective: str = "val_loss"
    #: the objective's parameters (``specificity`` for ``val_sens_at_spec`` ...); a study passes
    #: them resolved (``search.inputs.resolve_objective_params``), None takes the defaults
    objective_params: dict | None = None
    class_weight: dict[int, float] | None = None
    keep_bn_frozen: bool = True
    seed: int = 0
    #: with ``data.target``: how trials are judged, ``train.dann_stage.TARGET_LABELS`` (the
    #: objective on labelled target data, best epoch) or the name of a label-free criterion
    #: (``params.DOMAIN_CRITERIA``, on the last epoch); "" without target data
    domain_selection: str = ""
    #: keep the last epoch rather than the best: a refit (:mod:`tlsearch.export.refit`) trains on
    #: the validation examples too, so nothing is left to choose an epoch on
    keep_last: bool = False

    @property
    def maximize(self) -> bool:
        return OBJECTIVES[self.objective].direction == "maximize"

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """What each epoch records: :data:`METRIC_KEYS`, plus the objective computed by the
        validation callback (and the threshold it chose) when Keras does not compute it."""
        o = OBJECTIVES[self.objective]
        if not o.needs_callback:
            return METRIC_KEYS
        return (*METRIC_KEYS, o.name, *([f"{o.name}_threshold"] if o.threshold else []))
