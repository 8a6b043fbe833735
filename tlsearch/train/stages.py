"""A trial's training stages, as objects: what each trains, at which rate, for how many epochs, and
whether it can run on cached features.

:func:`~tlsearch.train.pipeline.run_trial` runs a list of stages in order on one
:class:`TrialState`; each stage trains through :meth:`TrialState.fit`, which counts one global
step across all stages (a stage starts at the step the previous one ended), so a pruner sees one
curve. A new stage (domain adaptation, gradual unfreezing) is a new :class:`Stage` subclass added
to the list, not a new branch in ``run_trial``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from tlsearch.backbones import Backbone
from tlsearch.data import Dataset
from tlsearch.params import TrialParams

__all__ = ["Stage", "HeadStage", "FineTuneStage", "TrialState", "default_stages"]


@dataclass
class TrialState:
    """What the stages of one trial share: the data, the head, the best epoch so far, the step."""

    params: TrialParams
    schedule: Any  # train.pipeline.Schedule
    data: Dataset
    source: Any  # train.features.BackboneSource
    head: Any  # train.heads.Head
    fit: Callable[..., None]
    #: the global step the next stage starts at
    step: int = 0
    backbone: Backbone | None = None
    #: whether every stage that ran could run on cached features
    cached: bool = True
    #: trainable blocks at the end of the trial (what the stored weights cover)
    unfrozen: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def use_cache(self) -> bool:
        """Cached features serve this trial (a cache exists and no augmentation changes pixels)."""
        return self.source.cache is not None and self.params.augmentation == 0

    def get_backbone(self) -> Backbone:
        if self.backbone is None:
            self.backbone = self.source.build_uncached(self.params.backbone, self.params)
        return self.backbone


class Stage:
    """One stage of a trial. ``number`` is what the history and the report call it."""

    number = 0
    name = ""

    def epochs(self, state: TrialState) -> int:
        raise NotImplementedError

    def runs(self, state: TrialState) -> bool:
        """Whether this stage trains at all in this trial (its parameters are sampled only then)."""
        return self.epochs(state) > 0

    def run(self, state: TrialState) -> None:
        raise NotImplementedError


class HeadStage(Stage):
    """Stage 1: the backbone frozen, a new head trained at ``lr_stage1``.

    On cached features the head is a pooled, already traced model (see
    :mod:`tlsearch.train.heads`); otherwise the whole network runs with the backbone frozen.
    """

    number, name = 1, "head"

    def epochs(self, state: TrialState) -> int:
        return int(state.schedule.stage1_epochs)

    def run(self, state: TrialState) -> None:
        p, s = state.params, state.schedule
        if state.use_cache:
            f_tr, f_va = state.source.frozen_outputs(p.backbone, 0, p)
            pooled = state.source.heads.get(f_tr.shape[-1], p.head_width, state.data.n_classes,
                                            s.seed, p.dropout, p.lr_stage1)
            state.fit(pooled.model, f_tr, f_va, stage=self.number, lr=None, layers=pooled.layers,
                      epochs=self.epochs(state))
            # the next stage draws its dropout masks where this one left off, as one model
            # trained through would
            if hasattr(state.head.dropout, "seed_generator"):  # Dropout(0) has none
                state.head.dropout.seed_generator.state.assign(
                    pooled.dropout.seed_generator.state.value)
            return
        from tlsearch.train.heads import assemble_model  # TensorFlow, loaded on first use

        backbone = state.get_backbone()
        backbone.freeze(0)
        model = assemble_model(backbone, state.head)
        x_tr, x_va = state.extra["inputs"]()
        state.fit(model, x_tr, x_va, stage=self.number, lr=p.lr_stage1,
                  layers=state.head.layers, epochs=self.epochs(state))
        state.cached = False


class FineTuneStage(Stage):
    """Stage 2: the top ``unfreeze_blocks`` blocks trainable (BatchNorm kept frozen unless the
    schedule says otherwise), at ``lr_stage2``, going on from the best stage-1 head.

    With a cache it trains only the top on the activations at the freeze boundary, which the
    frozen bottom computes the same way every epoch, through a pooled model
    (:mod:`tlsearch.train.pool`).
    """

    number, name = 2, "fine-tune"

    def epochs(self, state: TrialState) -> int:
        return int(state.schedule.stage2_epochs)

    def runs(self, state: TrialState) -> bool:
        return self.epochs(state) > 0 and int(state.params.unfreeze_blocks) > 0

    def run(self, state: TrialState) -> None:
        from tlsearch.train.heads import assemble_model
        from tlsearch.train.pool import fit_on_boundary

        p, s = state.params, state.schedule
        n = min(int(p.unfreeze_blocks), state.source.max_unfreeze(p.backbone))
        state.unfrozen = n
        if state.use_cache and fit_on_boundary(state, n, stage=self.number, lr=p.lr_stage2,
                                               epochs=self.epochs(state)):
            return
        backbone = state.get_backbone()
        trainable = backbone.freeze(n, keep_bn_frozen=s.keep_bn_frozen)
        layers = state.head.layers + [backbone.model.get_layer(name) for name in trainable]
        model = assemble_model(backbone, state.head)
        state.extra["restore_head"]()
        x_tr, x_va = state.extra["inputs"]()
        state.fit(model, x_tr, x_va, stage=self.number, lr=p.lr_stage2, layers=layers,
                  epochs=self.epochs(state))
        state.cached = False


def default_stages() -> list[Stage]:
    """The recipe: a head on the frozen backbone, then the top blocks fine-tuned."""
    return [HeadStage(), FineTuneStage()]
