"""What a training stage works with, typed: one trial's parameters, data, backbone source and
head, and what the trial's runner does for it.

A stage (:mod:`tlsearch.train.stages`) is read with this module beside it, not the pipeline:
:class:`TrialContext` says what a stage may read (the parameters, the schedule, the data, the
source of backbones and cached features, the trial's head), what it records for the trial
(``step``, ``cached``, ``unfrozen``) and what it asks the runner to do:

* :meth:`~TrialContext.fit` trains a model for some epochs from the trial's global step, keeping
  the best epoch's weights of the layers it names;
* :meth:`~TrialContext.inputs` gives the (train, validation) inputs of the whole network;
* :meth:`~TrialContext.restore_head` puts the best epoch's head weights back;
* :meth:`~TrialContext.epoch_callback` records the epochs of a model that trains its own way (the
  DANN head), on the same step count and with the same best-epoch bookkeeping.

:func:`tlsearch.train.pipeline.run_trial` builds the one implementation. How many epochs a stage
runs depends on the parameters and the schedule alone (:class:`TrialPlan`), so a trial's length is
known before anything is built (:func:`tlsearch.train.pipeline.planned_steps`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Union

from tlsearch.params import TrialParams
from tlsearch.train.augment import augments
from tlsearch.train.schedule import Schedule

if TYPE_CHECKING:  # TensorFlow and the source's modules load on first use, not with the stages
    import keras
    import numpy as np
    import tensorflow as tf

    from tlsearch.backbones import Backbone
    from tlsearch.data import Dataset
    from tlsearch.train.augment import EpochBatches
    from tlsearch.train.dann import DANN
    from tlsearch.train.features import BackboneSource
    from tlsearch.train.heads import Head

__all__ = ["TrialPlan", "TrialContext", "Inputs", "DomainFeatures"]

#: a stage-2 DANN's view of the domains: the kept weights (layer name -> arrays) -> (hidden
#: features, class probabilities) of source training, source validation and held-out target rows
DomainFeatures = Callable[[dict[str, list["np.ndarray"]]], list[tuple["np.ndarray", "np.ndarray"]]]

#: what a model trains or is validated on: arrays (images, cached features or boundary
#: activations), token arrays by name (text), an augmenting trial's epochs
#: (:class:`~tlsearch.train.augment.EpochBatches`) or a ``tf.data`` pipeline
Inputs = Union["np.ndarray", "dict[str, np.ndarray]", "EpochBatches", "tf.data.Dataset"]


@dataclass
class TrialPlan:
    """What decides which stages a trial runs and for how many epochs: its parameters and the
    schedule (:meth:`Stage.epochs <tlsearch.train.stages.Stage.epochs>` reads nothing else)."""

    params: TrialParams
    schedule: Schedule


@dataclass(eq=False)
class TrialContext(TrialPlan, ABC):
    """One running trial as its stages see it; the stages run in order on the same context."""

    data: Dataset
    #: builds the trial's backbone and serves its cached frozen outputs, pooled heads and tops
    source: BackboneSource
    #: the trial's head (dense, dropout, softmax): stage 1 trains it, stage 2 goes on from it
    head: Head
    #: the global step the next stage starts at (:meth:`fit` moves it on)
    step: int = 0
    #: the trial's backbone, once a stage needed the whole network (:meth:`get_backbone`)
    backbone: Backbone | None = None
    #: whether every stage that ran could run on cached features
    cached: bool = True
    #: trainable blocks at the end of the trial (what the stored weights cover)
    unfrozen: int = 0
    #: the stage-1 DANN of an adapted trial (a stage 2 through the backbone goes on from its
    #: domain classifier)
    dann: DANN | None = None
    #: after a stage-2 DANN: ``weights -> [(hidden, probabilities)]`` of source training, source
    #: validation and held-out target rows through the adapted top blocks
    #: (:func:`~tlsearch.train.dann_stage.domain_report` reads it)
    domain_features: DomainFeatures | None = None

    @property
    def use_cache(self) -> bool:
        """Cached features serve this trial (a cache exists and no augmentation changes pixels)."""
        return self.source.cache is not None and not augments(self.params)

    def get_backbone(self) -> Backbone:
        """The trial's backbone, built on first use (for training through the whole network)."""
        if self.backbone is None:
            self.backbone = self.source.build_uncached(self.params.backbone, self.params)
        return self.backbone

    @abstractmethod
    def fit(self, model: keras.Model, x_train: Inputs, x_val: Inputs, *, stage: int,
            lr: float | None, layers: list[keras.layers.Layer], epochs: int,
            rates: dict[int, float] | None = None) -> None:
        """Train ``model`` ``epochs`` epochs from :attr:`step`, then move the step on.

        ``lr`` compiles the model at that rate first (None: it comes compiled, as a pooled head
        does); ``rates`` are per-variable multiples of ``lr`` (:mod:`tlsearch.train.rates`).
        Every epoch is recorded as stage ``stage``; the best one keeps the weights of ``layers``.
        Raises :class:`~tlsearch.errors.NonFiniteLoss` when the loss stops being finite."""

    @abstractmethod
    def inputs(self) -> tuple[Inputs, Inputs]:
        """(train, validation) inputs of the whole network: the data (token arrays for text), or
        an augmenting trial's epochs beside its validation batches."""

    @abstractmethod
    def restore_head(self) -> None:
        """Put the best epoch's weights back into :attr:`head` (the next stage goes on from
        them)."""

    @abstractmethod
    def epoch_callback(self, stage: int, layers: list[keras.layers.Layer],
                       extra_keys: tuple[str, ...]) -> keras.callbacks.Callback:
        """A Keras callback for a model that is not trained through :meth:`fit`: it records each
        epoch as stage ``stage`` (the schedule's metrics plus ``extra_keys``), keeps the best
        epoch's weights of ``layers`` and hands the epoch (and each batch: progress, the hard time
        limit) on, as :meth:`fit` does. The caller
        moves :attr:`step` on."""
