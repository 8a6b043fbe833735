"""Import TensorFlow without its C++ start-up chatter.

TensorFlow's native code logs through absl before logging is configured, so TF_CPP_MIN_LOG_LEVEL
does not silence "Could not find cuda drivers" and friends on a CPU machine. The only reliable way
is to point file descriptor 2 at /dev/null while TensorFlow loads and finds its devices.
"""

from __future__ import annotations

import os
import sys

__all__ = ["import_tensorflow_quietly"]


def import_tensorflow_quietly(*, lean: bool = False):
    """TensorFlow and Keras, imported with fd 2 silenced.

    ``lean``: for a process that only loads and runs a model (``tlsearch predict``). Keras
    imports scikit-learn at start-up, when it is installed, for its scikit-learn wrappers: 1.4 s
    of the 7 s a one-image ``tlsearch predict`` took on 2 cores. Hidden while Keras loads, so
    its wrappers stay unusable in this process; ``import sklearn`` afterwards works as usual.
    Only for processes tlsearch owns: a library caller's Keras keeps its wrappers.
    """
    if "tensorflow" in sys.modules and "keras" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    hidden = [m for m in _LEAN_SKIPS if m not in sys.modules] if lean else []
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        for m in hidden:
            sys.modules[m] = None  # type: ignore[assignment]  # "import sklearn" raises ImportError
        import tensorflow as tf

        tf.config.list_physical_devices()  # device discovery logs too
        import keras  # noqa: F401
    finally:
        for m in hidden:
            if sys.modules.get(m, 0) is None:
                del sys.modules[m]
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tf


#: what a lean start-up leaves out (see :func:`import_tensorflow_quietly`)
_LEAN_SKIPS = ("sklearn",)
