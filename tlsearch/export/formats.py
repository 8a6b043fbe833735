"""The export formats, one writer each, in the order they are written.

A writer takes the trained Keras model, the study's modality and config, the file or folder to
write and the probe inputs, writes its format, loads it back and returns its predictions on the
probe (``{"predictions": {name: array}, ...}``), or ``{"skipped": reason}`` when its converter is
missing. The exporter compares every format's predictions with the Keras model's. Adding a format
is one :func:`register` call here, or in an installed package that names its module in the
``tlsearch.export_formats`` entry-point group (see :mod:`tlsearch._registry`); a plugin's formats
are written after the built-in ones, and are optional unless ``required``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tlsearch._registry import Registry

__all__ = ["Format", "FORMATS", "OPTIONAL", "optional", "register", "run_litert",
           "litert_interpreter", "predict_keras_file"]


@dataclass(frozen=True)
class Format:
    name: str
    path: str  # relative to the export folder
    write: Callable[[Any, Any, Any, Path, np.ndarray], dict]
    #: a required format failing fails the export; an optional one is recorded and skipped
    required: bool = False


#: every format, in the order they are written (a mapping: name -> Format)
FORMATS: Registry[Format] = Registry("export format", "tlsearch.export_formats")


def register(fmt: Format) -> Format:
    """Add an export format; a name is registered once."""
    return FORMATS.register(fmt.name, fmt)


def predict_keras_file(path: Path, probe: np.ndarray) -> np.ndarray:
    import keras

    import tlsearch.layers  # noqa: F401  (registers tlsearch's layers for loading)

    return keras.saving.load_model(path, compile=False).predict(probe, verbose=0)


def _write_keras(model, modality, cfg, path: Path, probe) -> dict:
    model.save(path)
    return {"predictions": {"keras": predict_keras_file(path, probe)}}


def _n_outputs(model) -> int:
    """Classes the model scores; a text model wraps its functional token model."""
    inner = getattr(model, "token_model", model)
    return int(inner.outputs[0].shape[-1])


def _write_saved_model(model, modality, cfg, path: Path, probe) -> dict:
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    # The endpoints track every variable they use. Tracking the model as well stored each variable
    # a second time (28 MB instead of 14.5 for EfficientNet-Lite0): only the lookup tables of a
    # text model's tokenizer, which no endpoint lists, are tracked by hand.
    preprocessor = getattr(model, "preprocessor", None)
    if preprocessor is not None:
        archive.track(preprocessor)
    endpoints = modality.serving_endpoints(model, cfg)
    for name, (fn, sig) in endpoints.items():
        archive.add_endpoint(name, fn, input_signature=sig)
    archive.write_out(str(path), verbose=False)
    loaded = tf.saved_model.load(str(path))
    probes = modality.endpoint_probes(cfg, probe)
    preds, signatures = {}, {}
    for i, (name, (_, sig)) in enumerate(endpoints.items()):
        if name in probes:
            x = probes[name]
            t = tf.constant(x.tolist() if x.dtype == object else x, dtype=sig[0].dtype)
            preds[name] = getattr(loaded, name)(t)["probabilities"].numpy()
        note = modality.endpoint_notes.get(name)
        signatures["serving_default" if i == 0 else name] = {
            "endpoint": name,
            **({"note": note} if note else {}),
            "inputs": {s.name: {"shape": list(s.shape), "dtype": s.dtype.name} for s in sig},
            "outputs": {"probabilities": {"shape": [None, _n_outputs(model)],
                                          "dtype": "float32"}},
        }
    return {"predictions": preds, "signatures": signatures}


def _write_onnx(model, modality, cfg, path: Path, probe) -> dict:
    try:
        import tf2onnx  # noqa: F401
    except ImportError:
        return {"skipped": "tf2onnx is not installed (pip install 'tlsearch[onnx]')"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model.export(str(path), format="onnx", verbose=False)
    try:
        import onnxruntime as ort
    except ImportError:
        return {"unverified": "onnxruntime is not installed, so the file was not checked "
                              "(pip install 'tlsearch[onnx]')"}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    return {"predictions": {"onnx": sess.run(None, {inp.name: probe})[0]},
            "input_name": inp.name}


def _write_litert(model, modality, cfg, path: Path, probe) -> dict:
    model.export(str(path), format="litert", verbose=False)
    interpreter = litert_interpreter(path)
    return {"predictions": {"litert": run_litert(interpreter, probe)}}


def litert_interpreter(path: Path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():  # tf.lite's notice that ai_edge_litert will replace it
        warnings.simplefilter("ignore")
        return Interpreter(model_path=str(path))


def run_litert(interpreter, x: np.ndarray) -> np.ndarray:
    """Run a LiteRT interpreter on one batch (the batch dimension is resized to fit)."""
    inp = interpreter.get_input_details()[0]
    if tuple(inp["shape"]) != x.shape:
        interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


register(Format("keras", "model.keras", _write_keras, required=True))
register(Format("saved_model", "serving/1", _write_saved_model, required=True))
register(Format("onnx", "model.onnx", _write_onnx))
register(Format("litert", "model.tflite", _write_litert))


def __getattr__(name: str) -> Any:
    # OPTIONAL is computed when first asked for, not at import: the plugins' formats are only
    # known once the entry points are loaded, and a plugin's module imports this one.
    if name == "OPTIONAL":
        return optional()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def optional() -> tuple[str, ...]:
    """The formats a user may leave out (``--formats``), plugins' included."""
    return tuple(name for name, f in FORMATS.items() if not f.required)
