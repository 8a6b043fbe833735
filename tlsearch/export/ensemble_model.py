"""An ensemble of trials as one Keras model: one input, one output, the weighted average of its
members' class probabilities, exported through the same exporter (and its checks) as one trial.

Images: a functional model whose input feeds every member (each a trial's whole model, raw pixels
to probabilities, named ``trial_N``) and a :class:`~tlsearch.layers.WeightedAverage` on top, so
every format converts it as it converts one trial. Text: the members' token models averaged the
same way, behind one tokenizer (:func:`~tlsearch.modalities.text.raw_text_model`); the candidates
of a text ensemble share the best trial's tokenizer (backbone and ``max_length``) for that.

Each member carries its whole backbone, frozen part included: an ensemble of K trials costs about
K trials at inference, and :func:`inference_cost` measures how much.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

__all__ = ["ensemble_model", "inference_cost", "parameter_count"]


def _renamed(model: Any, name: str) -> Any:
    """The same layers as a functional model of another name (members must differ in name)."""
    import keras

    return keras.Model(model.input, model.output, name=name)


def ensemble_model(models: Sequence[Any], weights: Sequence[float], numbers: Sequence[int]) -> Any:
    """The model whose output is ``sum(weights[i] * models[i](x))``; ``numbers`` (trial numbers)
    name the members. Text members (raw-string models) share the first one's tokenizer."""
    import keras

    from tlsearch.layers import RawTextModel, WeightedAverage

    if len(models) != len(weights) or len(models) != len(numbers) or not models:
        raise ValueError("one weight and one trial number per member model")
    average = WeightedAverage([float(w) for w in weights], name="average")
    if isinstance(models[0], RawTextModel):
        from tlsearch.modalities.text import raw_text_model

        first = models[0].token_model
        inputs = {t.name: keras.Input(shape=t.shape[1:], dtype=t.dtype, name=t.name)
                  for t in first.inputs}
        outs = [_renamed(m.token_model, f"trial_{n}")(inputs) for m, n in zip(models, numbers)]
        tokens = keras.Model(inputs, average(outs), name="token_ensemble")
        return raw_text_model(tokens, models[0].preprocessor, name="tlsearch_text_ensemble")
    x = keras.Input(shape=models[0].input.shape[1:], name="image")
    outs = [_renamed(m, f"trial_{n}")(x) for m, n in zip(models, numbers)]
    return keras.Model(x, average(outs), name="tlsearch_ensemble")


def parameter_count(model: Any) -> int:
    """The model's weights, trainable or not, counted once each."""
    return int(sum(int(np.prod(w.shape)) for w in model.weights))


def inference_cost(model: Any, single: Any, modality: Any, cfg: Any, n: int = 32,
                   repeats: int = 5) -> dict[str, Any]:
    """Measured time per example of ``model`` and of ``single`` (the best trial's model) on the
    same batch of ``n`` probe inputs, as ``predict`` runs them: one warm-up call each, then
    ``repeats`` calls of each in turn (so a busy moment of the machine falls on both), the best
    of each; their ratio, and the ratio of their parameter counts."""
    batch = list(modality.probe(cfg, n))
    best = {"model": float("inf"), "single": float("inf")}
    for m in (model, single):
        modality.run(m, batch)  # traced on first use: not counted
    for _ in range(repeats):
        for key, m in (("model", model), ("single", single)):
            t0 = time.perf_counter()
            modality.run(m, batch)
            best[key] = min(best[key], time.perf_counter() - t0)
    ours, theirs = best["model"] / len(batch), best["single"] / len(batch)
    return {
        "relative_to_best_trial": round(ours / theirs, 2) if theirs > 0 else None,
        "seconds_per_example": float(f"{ours:.3g}"),
        "best_trial_seconds_per_example": float(f"{theirs:.3g}"),
        "parameters_relative_to_best_trial": round(parameter_count(model)
                                                   / max(1, parameter_count(single)), 2),
        "measured": f"wall-clock time per example on a batch of {len(batch)} probe inputs, "
                    f"best of {repeats} calls of each model in turn after a warm-up call, on the "
                    f"machine that exported",
    }
