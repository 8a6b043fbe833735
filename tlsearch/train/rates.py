"""Layer-wise learning rates (``lr_decay``): each variable trains at its own multiple of the rate.

Fine-tuning recipes for pretrained transformers (ELECTRA, Clark et al. 2020; BEiT, Bao et al.
2022) train the top block at the base rate and each block below at ``decay`` times the one above:
the lower blocks hold the general features worth keeping. Keras has no per-variable rate, and
scaling gradients is not one: Adam divides the scale out again. So the optimizer's own update step
is given ``learning_rate * scale`` for each variable (:func:`layerwise`), which is exact for every
Keras optimizer, Adam and SGD alike.

The scales live in a variable of the optimizer, one entry per trainable variable in the order it
was built with, so a traced training step serves new scales without tracing again
(:meth:`LayerwiseRates.set_scales`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable, Mapping

__all__ = ["layerwise", "LayerwiseRates", "variable_scales"]

#: what the mixin is mixed into: a Keras optimizer (seen as Any by type checkers)
_Optimizer: Any = object


class LayerwiseRates(_Optimizer):
    """Mixed into a Keras optimizer class: ``scales`` maps ``id(variable)`` (a Keras variable of
    the model) to the multiple of the learning rate it trains at; the others train at 1."""

    def __init__(self, *args: Any, scales: Mapping[int, float] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scale_of = dict(scales or {})
        self._lr_scales: Any = None  # built with the optimizer

    def build(self, variables: list) -> None:
        import tensorflow as tf

        if self.built:
            return
        super().build(variables)
        # a plain tf.Variable: no optimizer state to save, reset or count, and not one of
        # `optimizer.variables` (which a pooled model restores to its start values)
        self._lr_scales = tf.Variable([float(self._scale_of.get(id(v), 1.0)) for v in variables],
                                      trainable=False, dtype="float32", name="lr_scales")

    def set_scales(self, scales: Mapping[int, float]) -> None:
        """New scales for the variables the optimizer was built with (a reused, traced model)."""
        self._scale_of = dict(scales)
        if self._lr_scales is not None:
            self._lr_scales.assign([float(self._scale_of.get(id(v), 1.0))
                                    for v in self._trainable_variables])

    def scale(self, variable: Any) -> float:
        """The multiple of the learning rate ``variable`` trains at (as built)."""
        return float(self._lr_scales.numpy()[self._get_variable_index(variable)])

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> Any:
        from keras import ops

        scale = self._lr_scales[self._get_variable_index(variable)]
        lr = ops.cast(learning_rate, variable.dtype) * ops.cast(scale, variable.dtype)
        return super().update_step(gradient, variable, lr)


@lru_cache(maxsize=None)
def layerwise(optimizer_class: type) -> type:
    """``optimizer_class`` with a learning rate per variable (one subclass per class)."""
    return type(f"Layerwise{optimizer_class.__name__}", (LayerwiseRates, optimizer_class), {})


def variable_scales(layers: Iterable[Any], depths: Mapping[str, int], decay: float
                    ) -> dict[int, float]:
    """``id(variable) -> decay ** depth`` for the trainable weights of ``layers`` (a layer without
    a depth, such as the head's, trains at 1)."""
    out: dict[int, float] = {}
    for layer in layers:
        scale = float(decay) ** depths.get(layer.name, 0)
        for v in layer.trainable_weights:
            out[id(v)] = scale
    return out
