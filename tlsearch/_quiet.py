"""Import TensorFlow without its C++ start-up chatter.

TensorFlow's native code logs through absl before logging is configured, so TF_CPP_MIN_LOG_LEVEL
does not silence "Could not find cuda drivers" and friends on a CPU machine. The only reliable way
is to point file descriptor 2 at /dev/null while TensorFlow loads and finds its devices.
"""

from __future__ import annotations

import os
import sys

__all__ = ["import_tensorflow_quietly"]


def import_tensorflow_quietly():
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()  # device discovery logs too
        import keras  # noqa: F401
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tf
