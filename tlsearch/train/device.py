"""What the machine offers the trials: mixed precision and XLA on a GPU, neither on a CPU.

On a GPU, the un-cached path (a trial that trains through the whole network: augmentation, a
depth that cannot be cut, no cache) computes the backbone in float16 with float32 variables, and
compiles its training step with XLA; the head stays float32, so the probabilities, the loss and the
stored head weights are float32 as on a CPU. On a CPU both are off: float16 is emulated there and
slower, and XLA made the small cached models several times slower (measured on 2 cores). Cached
paths never change: their features were computed in float32 and their models take microseconds per
step.

Each GPU's memory grows as needed rather than being taken whole at start, so several workers can
share one (``--workers`` gives each worker its own where there are several; see
:func:`tlsearch.runner.workers.device_env`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

__all__ = ["Acceleration", "CPU", "detect", "dtype_policy", "accelerated"]


@dataclass(frozen=True)
class Acceleration:
    """Whether the un-cached path computes in mixed precision, and compiles with XLA."""

    mixed_precision: bool = False
    xla: bool = False


CPU = Acceleration()


def detect() -> Acceleration:
    """Mixed precision and XLA where TensorFlow sees a GPU (memory growth turned on for each),
    off otherwise."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialized: its setting stays
            pass
    return Acceleration(mixed_precision=True, xla=True) if gpus else CPU


@contextlib.contextmanager
def dtype_policy(acceleration: Acceleration) -> Iterator[None]:
    """Layers built inside compute in float16, their variables float32 (mixed precision on)."""
    if not acceleration.mixed_precision:
        yield
        return
    import keras

    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def accelerated(model: Any) -> bool:
    """Whether ``model`` was built for the accelerated path (some of its layers compute in
    float16): it then needs loss scaling, and is compiled with XLA where that is on."""
    return any(getattr(layer, "compute_dtype", "float32") == "float16"
               for layer in model._flatten_layers(include_self=False, recursive=True))
