"""What a stage works with is one typed context: its fields name their types, its four methods
(fit, inputs, restore_head, epoch_callback) are what a stage asks of the trial's runner, and a new
stage written against it alone plugs into a trial. How many epochs a trial runs needs only its
parameters and schedule; the block cap is one function."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
import typing
from types import SimpleNamespace

import numpy as np
import pytest

from tlsearch.config import BackboneEntry
from tlsearch.data import Dataset
from tlsearch.params import TrialParams
from tlsearch.train.context import TrialContext, TrialPlan
from tlsearch.train.features import BackboneSource
from tlsearch.train.pipeline import METRIC_KEYS, Schedule, default_stages, planned_steps, run_trial
from tlsearch.train.stages import (HeadStage, Stage, TrialState, blocks_to_unfreeze,
                                   unfreeze_target)


def test_the_context_names_the_type_of_everything_a_stage_reads():
    import keras
    import tensorflow as tf

    from tlsearch.backbones import Backbone
    from tlsearch.train.augment import EpochBatches
    from tlsearch.train.dann import DANN
    from tlsearch.train.heads import Head

    fields = {f.name: f.type for f in dataclasses.fields(TrialContext)}
    assert fields == {"params": "TrialParams", "schedule": "Schedule", "data": "Dataset",
                      "source": "BackboneSource", "head": "Head", "step": "int",
                      "backbone": "Backbone | None", "cached": "bool", "unfrozen": "int",
                      "dann": "DANN | None", "domain_features": "DomainFeatures | None"}
    assert TrialContext.__abstractmethods__ == {"fit", "inputs", "restore_head",
                                                "epoch_callback"}
    assert TrialState is TrialContext  # the former name
    # every annotation resolves to a real type, none of them Any
    names = {"np": np, "keras": keras, "tf": tf, "Backbone": Backbone, "Dataset": Dataset,
             "BackboneSource": BackboneSource, "Head": Head, "EpochBatches": EpochBatches,
             "DANN": DANN}
    for target in (TrialContext, TrialContext.fit, TrialContext.inputs,
                   TrialContext.epoch_callback):
        hints = typing.get_type_hints(target, localns=names)
        assert hints and typing.Any not in hints.values(), target
    fit = inspect.signature(TrialContext.fit).parameters
    assert list(fit) == ["self", "model", "x_train", "x_val", "stage", "lr", "layers", "epochs",
                         "rates"]
    assert all(fit[k].kind is inspect.Parameter.KEYWORD_ONLY
               for k in ("stage", "lr", "layers", "epochs", "rates"))


@pytest.fixture(scope="module")
def data() -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 120, (40, 32, 32, 3)).astype(np.uint8)
    y = np.arange(40) % 2
    x[y == 1, :12] = 250
    return Dataset("image", x[:28], y[:28], x[28:], y[28:], ["a", "b"], fingerprint="ctx")


class _OwnFit(Stage):
    """A stage written against the context alone: it puts the best head back, takes the
    network's inputs and trains with its own ``fit``, recorded through the context's callback
    (at rate 0, so the head it restored is the one it ends with)."""

    number, name = 3, "own fit"

    def __init__(self) -> None:
        self.restored: dict[str, list[np.ndarray]] = {}

    def epochs(self, plan: TrialPlan) -> int:
        return 1

    def run(self, state: TrialContext) -> None:
        import keras

        from tlsearch.train.heads import assemble_model

        state.restore_head()
        self.restored = {l.name: [np.array(w) for w in l.get_weights()] for l in state.head.layers
                         if l.weights}
        x_tr, x_va = state.inputs()
        assert x_tr is state.data.x_train and x_va is state.data.x_val
        model = assemble_model(state.get_backbone(), state.head)
        state.source.compiler(model, 0.0)
        hook = state.epoch_callback(self.number, state.head.layers, ("own_metric",))
        n = state.data.n_classes
        model.fit(x_tr, keras.utils.to_categorical(state.data.y_train, n),
                  validation_data=(x_va, keras.utils.to_categorical(state.data.y_val, n)),
                  epochs=state.step + 1, initial_epoch=state.step, callbacks=[hook], verbose=0)
        state.step += 1


def test_a_stage_written_against_the_context_plugs_into_a_trial(data):
    src = BackboneSource({"tiny_cnn": BackboneEntry(name="tiny_cnn")}, data, 32, None)
    own = _OwnFit()
    seen = []
    r = run_trial(TrialParams("tiny_cnn", lr_stage1=1e-2), Schedule(2, 0, 8), data, src,
                  on_epoch=seen.append, stages=[HeadStage(), own])
    assert [(e.step, e.stage) for e in seen] == [(0, 1), (1, 1), (2, 3)]
    assert set(seen[-1].metrics) == {*METRIC_KEYS, "own_metric"}
    # rate 0: the restored head is the best stage-1 head, and its epoch does not beat it
    assert r.best_stage == 1 and seen[-1].val_loss == seen[r.best_step].val_loss
    assert set(own.restored) == {"clf_dense", "clf_out"}
    for name, ws in own.restored.items():
        assert all(np.array_equal(a, b) for a, b in zip(ws, r.weights[name]))
    assert not r.cached  # it ran through the whole network


class _Every(Stage):
    number = 3

    def epochs(self, plan: TrialPlan) -> int:
        assert type(plan) is TrialPlan  # nothing of a running trial is built to count epochs
        return plan.params.head_width // 32


def test_planned_steps_needs_only_the_parameters_and_the_schedule():
    stages = [*default_stages(), _Every()]
    assert planned_steps(TrialParams("any", unfreeze_blocks=2, head_width=64), Schedule(2, 3),
                         stages) == 2 + 3 + 2
    assert planned_steps(TrialParams("any", head_width=96), Schedule(2, 3), stages) == 2 + 3


def test_the_block_cap_is_one_function():
    assert [blocks_to_unfreeze(u, 4) for u in (0, 2, 4, 9, "all")] == [0, 2, 4, 4, 4]
    backbone = SimpleNamespace(max_unfreeze=4, stem=["embeddings"])
    assert unfreeze_target(TrialParams("x", unfreeze_blocks=9), backbone) == (4, False)
    assert unfreeze_target(TrialParams("x", unfreeze_blocks="all"), backbone) == (4, True)
    assert unfreeze_target(TrialParams("x", unfreeze_blocks=3),
                           SimpleNamespace(max_unfreeze=4, stem=[])) == (3, False)


def test_stages_import_neither_the_pipeline_nor_tensorflow():
    """No import cycle: the stages and their context load without the pipeline that runs them,
    and without TensorFlow (which loads on first use)."""
    code = ("import sys, tlsearch.train.context, tlsearch.train.stages, tlsearch.train.dann_stage; "
            "print('tlsearch.train.pipeline' in sys.modules, 'tensorflow' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["False", "False"]
