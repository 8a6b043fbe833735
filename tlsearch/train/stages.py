"""A trial's training stages, as objects: what each trains, at which rate, for how many epochs, and
whether it can run on cached features.

:func:`~tlsearch.train.pipeline.run_trial` runs a list of stages in order on one
:class:`~tlsearch.train.context.TrialContext` (everything a stage reads and asks for is typed
there); each stage trains through :meth:`TrialContext.fit`, which counts one global step across
all stages (a stage starts at the step the previous one ended), so a pruner sees one curve. A new
stage (domain adaptation, gradual unfreezing) is a new :class:`Stage` subclass added to the list,
not a new branch in ``run_trial``: :class:`GradualFineTuneStage` (ULMFiT's gradual unfreezing) is
one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tlsearch.params import UNFREEZE_ALL, TrialParams
from tlsearch.train.context import Inputs, TrialContext, TrialPlan

if TYPE_CHECKING:
    import keras

    from tlsearch.backbones import Backbone

__all__ = ["Stage", "HeadStage", "FineTuneStage", "GradualFineTuneStage", "TrialState",
           "TrialContext", "fit_on_boundary", "TrialPlan", "unfreeze_target", "blocks_to_unfreeze",
           "unfreeze_phases", "stage2_rates"]

#: the former name of :class:`~tlsearch.train.context.TrialContext`
TrialState = TrialContext


class Stage:
    """One stage of a trial. ``number`` is what the history and the report call it."""

    number = 0
    name = ""

    def epochs(self, plan: TrialPlan) -> int:
        """How many epochs this stage trains in a trial of ``plan``'s parameters and schedule."""
        raise NotImplementedError

    def runs(self, plan: TrialPlan) -> bool:
        """Whether this stage trains at all in this trial (its parameters are sampled only then)."""
        return self.epochs(plan) > 0

    def run(self, state: TrialContext) -> None:
        raise NotImplementedError


class HeadStage(Stage):
    """Stage 1: the backbone frozen, a new head trained at ``lr_stage1``.

    On cached features the head is a pooled, already traced model (see
    :mod:`tlsearch.train.heads`); otherwise the whole network runs with the backbone frozen.
    """

    number, name = 1, "head"

    def epochs(self, plan: TrialPlan) -> int:
        return int(plan.schedule.stage1_epochs)

    def run(self, state: TrialContext) -> None:
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
        x_tr, x_va = state.inputs()
        state.fit(model, x_tr, x_va, stage=self.number, lr=p.lr_stage1,
                  layers=state.head.layers, epochs=self.epochs(state))
        state.cached = False


def blocks_to_unfreeze(unfreeze_blocks: int | str, blocks: int) -> int:
    """The blocks a trial's ``unfreeze_blocks`` trains on a backbone of ``blocks`` blocks: the
    number asked for, capped at the block count (a searched range may go past a small backbone's),
    and every block for ``all``. The one place the cap is applied."""
    if unfreeze_blocks == UNFREEZE_ALL:
        return int(blocks)
    return min(int(unfreeze_blocks), int(blocks))


def unfreeze_target(params: TrialParams, backbone: Backbone) -> tuple[int, bool]:
    """(blocks, stem) that stage 2 trains: ``unfreeze_blocks`` capped at the backbone's block count
    (:func:`blocks_to_unfreeze`); ``all`` is every block plus the layers in none (a text model's
    embeddings)."""
    n = blocks_to_unfreeze(params.unfreeze_blocks, backbone.max_unfreeze)
    return n, params.unfreeze_blocks == UNFREEZE_ALL and bool(backbone.stem)


def unfreeze_phases(units: int, every: int, epochs: int) -> list[tuple[int, int]]:
    """Gradual unfreezing as ``(units trainable, epochs)`` phases: the top unit first, one more
    every ``every`` epochs, the last phase running to the end; ``every`` 0: all at once. Phases
    stop when the epochs do, so a short stage 2 may never reach the lowest units."""
    if every <= 0 or units <= 1:
        return [(units, epochs)]
    out: list[tuple[int, int]] = []
    done = 0
    while done < epochs:
        k = len(out) + 1
        e = epochs - done if k == units else min(every, epochs - done)
        out.append((k, e))
        done += e
    return out


def stage2_rates(backbone: Backbone, layers: list[keras.layers.Layer],
                 decay: float) -> dict[int, float] | None:
    """Per-variable multiples of ``lr_stage2`` for layer-wise decay: ``decay ** depth`` for each
    block (the top one at 1, see :meth:`Backbone.depths`), 1 for the head; None when ``decay``
    is 1."""
    if float(decay) == 1.0:
        return None
    from tlsearch.train.rates import variable_scales

    return variable_scales(layers, backbone.depths(), decay)


class FineTuneStage(Stage):
    """Stage 2: the top ``unfreeze_blocks`` blocks trainable (BatchNorm kept frozen unless the
    schedule says otherwise), at ``lr_stage2`` (each block below the top at ``lr_decay`` times the
    one above), going on from the best stage-1 head.

    With a cache it trains only the top on the activations at the freeze boundary, which the
    frozen bottom computes the same way every epoch; in the plain schedule (no layer-wise decay,
    the default optimizer) through a pooled, already traced model (:mod:`tlsearch.train.pool`). ``unfreeze_blocks: all``
    also trains the embeddings (text) and so always runs through the whole network.
    """

    number, name = 2, "fine-tune"

    def epochs(self, plan: TrialPlan) -> int:
        return int(plan.schedule.stage2_epochs)

    def runs(self, plan: TrialPlan) -> bool:
        u = plan.params.unfreeze_blocks
        return self.epochs(plan) > 0 and (u == UNFREEZE_ALL or int(u) > 0)

    def run(self, state: TrialContext) -> None:
        p = state.params
        if (state.use_cache and p.unfreeze_blocks != UNFREEZE_ALL
                and float(p.lr_decay) == 1.0 and state.source.compiler.optimizer is None):
            n = blocks_to_unfreeze(p.unfreeze_blocks, state.source.max_unfreeze(p.backbone))
            state.unfrozen = n
            if fit_on_boundary(state, n, stage=self.number, lr=p.lr_stage2,
                               epochs=self.epochs(state)):
                return
        backbone = state.get_backbone()
        n, stem = unfreeze_target(state.params, backbone)
        model, x_tr, x_va = self.model_for(state, backbone, n, stem)
        state.restore_head()
        self.train(state, backbone, model, (x_tr, x_va), n, stem, self.epochs(state))

    def model_for(self, state: TrialContext, backbone: Backbone, n: int,
                  stem: bool) -> tuple[keras.Model, Inputs, Inputs]:
        """(model, train inputs, validation inputs) for training the top ``n`` blocks (and the
        stem): the top on cached boundary activations where it can, else the whole network."""
        import keras

        from tlsearch.train.heads import assemble_model

        p = state.params
        if state.use_cache and not stem and backbone.can_cut(n):
            b_tr, b_va = state.source.frozen_outputs(p.backbone, n, p, backbone=backbone)
            _, top = backbone.split(n)
            inp = keras.Input(b_tr.shape[1:], name="boundary")
            return keras.Model(inp, state.head(top(inp)), name="top_on_boundary"), b_tr, b_va
        model = assemble_model(backbone, state.head)
        x_tr, x_va = state.inputs()
        state.cached = False
        return model, x_tr, x_va

    def train(self, state: TrialContext, backbone: Backbone, model: keras.Model,
              inputs: tuple[Inputs, Inputs], n: int, stem: bool, epochs: int) -> None:
        """Make the top ``n`` blocks (and the stem) trainable, compile at ``lr_stage2`` with the
        layer-wise rates, and train ``epochs`` epochs from the trial's global step."""
        p, s = state.params, state.schedule
        trainable = backbone.freeze(n, keep_bn_frozen=s.keep_bn_frozen, stem=stem)
        layers = state.head.layers + [backbone.model.get_layer(name) for name in trainable]
        state.unfrozen = n
        state.fit(model, *inputs, stage=self.number, lr=p.lr_stage2, layers=layers, epochs=epochs,
                  rates=stage2_rates(backbone, layers, p.lr_decay))


class GradualFineTuneStage(FineTuneStage):
    """Stage 2 with gradual unfreezing (ULMFiT, Howard & Ruder 2018): the top block alone first,
    one more block every ``unfreeze_every`` epochs (with ``all``, the embeddings last), on the
    one global step count. Lower blocks start moving only once the head and the blocks above have
    settled, so their pretrained features are not wrecked by the new head's first large gradients.

    Each phase recompiles (a new trainable set needs a new training step, and a fresh optimizer).
    The model is built once, for the last phase: on cached activations at that phase's boundary,
    the blocks still frozen run there in inference mode, as in the full network.
    ``unfreeze_every: 0`` is :class:`FineTuneStage`.
    """

    def run(self, state: TrialContext) -> None:
        every = int(state.params.unfreeze_every)
        if every <= 0:
            return super().run(state)
        backbone = state.get_backbone()
        n, stem = unfreeze_target(state.params, backbone)
        phases = unfreeze_phases(n + int(stem), every, self.epochs(state))
        last = phases[-1][0]
        model, x_tr, x_va = self.model_for(state, backbone, min(last, n), last > n)
        state.restore_head()
        for units, epochs in phases:
            self.train(state, backbone, model, (x_tr, x_va), min(units, n), units > n, epochs)


def fit_on_boundary(state: TrialContext, n: int, *, stage: int, lr: float, epochs: int) -> bool:
    """Train the top ``n`` blocks and the head on cached boundary activations, through a pooled
    model. Returns False (nothing done) when the backbone cannot be cut there."""
    p, s = state.params, state.schedule
    source = state.source
    top = source.tops.top(p.backbone, source.options(p), n, s.keep_bn_frozen, p)
    if top is None:
        return False
    # reset before the boundaries are read: computing a missing one runs this backbone
    top.reset()
    b_tr, b_va = source.frozen_outputs(p.backbone, n, p, backbone=top.backbone)
    head = state.head
    for layer, dim in ((head.dense, top.top.output.shape[-1]), (head.out, p.head_width)):
        if not layer.built:  # stage 1 trained a pooled copy: give this one its initial weights
            layer.build((None, int(dim)))
    state.restore_head()  # the trial's head now holds the best stage-1 weights
    pooled = source.tops.get(top, p.head_width, state.data.n_classes)
    pooled.reset(head, p.dropout, lr)
    state.fit(pooled.model, b_tr, b_va, stage=stage, lr=None, layers=pooled.layers, epochs=epochs)
    return True
