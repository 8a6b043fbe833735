"""Stage-2 models on cached boundaries, built and traced once per shape and reset for each trial.

A cached stage-2 trial trains the top N blocks and the head on the activations at the freeze
boundary. Building that model anew for every trial meant building the whole backbone (weights
read again), cutting it, compiling and tracing a training step: seconds per trial, and every
trial left a few traced functions behind that ``clear_session`` does not free (the process grew by
about 11 MB per stage-2 trial). :class:`TopPool` builds it once per (backbone, build options,
unfreeze depth, BatchNorm policy) and head shape, the way :class:`~tlsearch.train.heads.HeadPool`
does for stage-1 heads, and :meth:`PooledStage2.reset` puts back, before each trial:

* every variable of the top blocks (weights, BatchNorm statistics, dropout seed states) to the
  values the backbone was built with, i.e. the pretrained ones;
* the head to the trial's head (:class:`~tlsearch.train.heads.Head`, holding the best stage-1
  weights), and the head's dropout to the trial's rate and to the seed state stage 1 ended on;
* the optimizer's step count and slots to zero, and its learning rate to the trial's.

Everything a fresh model would start from is then the same, so the trial trains number for number
as on a freshly built model (tested); only the building and tracing are skipped. A stage that
wants more per trial (a learning rate per layer, blocks unfrozen one after another) changes what
it trains after :meth:`TopPool.get` and before fitting; a different set of trainable variables is a
different traced model, so it needs its own key here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from tlsearch.backbones import Backbone
    from tlsearch.params import TrialParams
    from tlsearch.train.heads import Head

__all__ = ["TopPool", "PooledTop", "PooledStage2"]


class PooledTop:
    """One backbone, its top ``n`` blocks trainable, cut at their boundary; built once."""

    def __init__(self, backbone: Backbone, n: int, keep_bn_frozen: bool) -> None:
        self.backbone = backbone
        self.n = n
        names = backbone.freeze(n, keep_bn_frozen=keep_bn_frozen)
        self.layers = [backbone.model.get_layer(name) for name in names]
        _, self.top = backbone.split(n)
        # every variable the top computes with, seed generators' states included (not weights)
        self._vars = list(self.top.variables)
        self._start = [np.array(v.numpy()) for v in self._vars]
        self.models: dict[tuple, PooledStage2] = {}

    def reset(self) -> None:
        """The top blocks back to their pretrained values (a trial may have trained them)."""
        for v, start in zip(self._vars, self._start):
            v.assign(start)


class PooledStage2:
    """Boundary -> top blocks -> head, compiled once; :meth:`reset` makes it a fresh trial's."""

    def __init__(self, top: PooledTop, width: int, n_classes: int,
                 compile_fn: Callable[..., None]) -> None:
        import keras

        from tlsearch.train.heads import HEAD_LAYERS, Head, RateDropout

        self.top = top
        self.head = Head(width, 0.0, n_classes, 0,
                         dropout_layer=RateDropout(0, name=HEAD_LAYERS[1]))
        inp = keras.Input(tuple(top.top.input.shape[1:]), name="boundary")
        self.model = keras.Model(inp, self.head(top.top(inp)), name="top_on_boundary")
        compile_fn(self.model, 1e-3)
        self.model.optimizer.build(self.model.trainable_variables)
        self._opt_start = [np.array(v.numpy()) for v in self.model.optimizer.variables]

    @property
    def layers(self) -> list:
        """The layers whose weights a trial keeps: the head's and the unfrozen blocks'."""
        return [self.head.dense, self.head.out, *self.top.layers]

    def reset(self, head: Head, dropout: float, lr: float) -> None:
        """Pretrained top blocks, ``head``'s weights and dropout seed state, a fresh optimizer."""
        self.top.reset()
        for mine, theirs in ((self.head.dense, head.dense), (self.head.out, head.out)):
            mine.set_weights(theirs.get_weights())
        drop = self.head.dropout
        drop.rate.assign(float(dropout))
        if hasattr(head.dropout, "seed_generator"):  # Dropout(0) has none: no mask is drawn
            drop.seed_generator.state.assign(head.dropout.seed_generator.state.value)
        opt = self.model.optimizer
        for v, start in zip(opt.variables, self._opt_start):
            v.assign(start)
        opt.learning_rate.assign(float(lr))


class TopPool:
    """The study's stage-2 models on boundaries, one per (backbone, options, depth, BN policy)
    and head shape; a depth that cannot be cut is remembered as such."""

    def __init__(self, build: Callable[[str, TrialParams | None], Backbone],
                 compile_fn: Callable[..., None]) -> None:
        self.build = build
        self.compile_fn = compile_fn
        self._tops: dict[tuple, PooledTop | None] = {}

    def top(self, name: str, options: dict, n: int, keep_bn_frozen: bool,
            params: TrialParams | None = None) -> PooledTop | None:
        key = (name, tuple(sorted(options.items())), int(n), bool(keep_bn_frozen))
        if key not in self._tops:
            backbone = self.build(name, params)
            self._tops[key] = (PooledTop(backbone, int(n), keep_bn_frozen)
                               if backbone.can_cut(int(n)) else None)
        return self._tops[key]

    def get(self, top: PooledTop, width: int, n_classes: int) -> PooledStage2:
        key = (int(width), int(n_classes))
        if key not in top.models:
            top.models[key] = PooledStage2(top, int(width), int(n_classes), self.compile_fn)
        return top.models[key]

    def __len__(self) -> int:
        return sum(len(t.models) for t in self._tops.values() if t is not None)

