"""From a stored trial to production files: Keras, TF Serving SavedModel, ONNX, LiteRT, metadata.

The stored weights are checked (size and SHA-256) before anything is written, and the export is
assembled in a hidden sibling folder that is renamed into place only when every file is written, so
an export either exists whole or not at all.

Every format written is checked against the Keras model on probe inputs; a format whose predictions
differ by more than :data:`TOLERANCE` is dropped with the reason recorded, rather than shipped. ONNX
and LiteRT are optional: where their converter is missing or fails, the reason is recorded in
``metadata.json`` and the other formats are still written.

What differs between modalities (how the model is rebuilt, what it takes as input, the probe inputs,
the serving signatures) lives in one :class:`Modality` class per modality in :data:`MODALITIES`.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import math
import os
import platform
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tlsearch._hashing import sha256_file
from tlsearch.errors import UserError

__all__ = [
    "ExportResult",
    "Modality",
    "MODALITIES",
    "TOLERANCE",
    "FORMATS",
    "select_trial",
    "rebuild_model",
    "export_study",
    "sha256_file",
]

#: the largest difference from the Keras model's probabilities an exported format may show
TOLERANCE = 1e-4
#: optional formats, in the order they are written
FORMATS = ("onnx", "litert")
METADATA_VERSION = 1


# ---------------------------------------------------------------------------------------------
# modalities


class Modality:
    """What export needs to know about one kind of input."""

    name = ""

    def build_model(self, cfg, params, weights, n_classes: int):
        """The trained Keras model, from raw inputs to class probabilities."""
        raise NotImplementedError

    def input_spec(self, cfg) -> dict:
        """The model's input, as recorded in ``metadata.json`` and read back by the predictor."""
        raise NotImplementedError

    def probe(self, cfg, n: int = 4) -> np.ndarray:
        """Inputs on which each exported format is compared with the Keras model."""
        raise NotImplementedError

    def serving_endpoints(self, model, cfg) -> dict[str, tuple[Callable, list]]:
        """SavedModel endpoints: name -> (function, input signature). The first is serving_default."""
        raise NotImplementedError

    def endpoint_probes(self, cfg, probe: np.ndarray) -> dict[str, Any]:
        """Inputs for each endpoint equivalent to ``probe`` (to check every signature)."""
        return {}


class ImageModality(Modality):
    """Raw RGB pixels in 0..255 at the study's image size; the backbone's scaling is inside."""

    name = "image"
    endpoint_notes = {
        "serve_image_bytes": "encoded JPEG/PNG/GIF/BMP bytes, decoded and resized inside the model "
                             "(TensorFlow's bilinear resize: pixels may differ by 1 from the "
                             "training images' PIL resize; exact for images already at image_size)",
    }

    def build_model(self, cfg, params, weights, n_classes):
        import keras

        from tlsearch.pipeline import BackboneSource, build_trained_model

        source = BackboneSource({e.name: e for e in cfg.backbone_entries}, None,
                                cfg.data.image_size, None, seed=cfg.seed, base_dir=cfg.base_dir)
        model = build_trained_model(params, weights, n_classes, source, seed=cfg.seed)
        # one tensor in, one out (not lists of one): the plain signature serving tools expect
        return keras.Model(model.inputs[0], model.outputs[0], name="tlsearch_model")

    def input_spec(self, cfg):
        s = cfg.data.image_size
        return {
            "kind": "image",
            "name": "image",
            "shape": [None, s, s, 3],
            "dtype": "float32",
            "image_size": s,
            "pixels": "RGB in 0..255 (uint8 values; no scaling: the model scales them itself)",
            "resize": "bilinear to image_size x image_size, as in training",
        }

    def probe(self, cfg, n=4):
        s = cfg.data.image_size
        rng = np.random.default_rng(0)
        # smooth images, not pure noise, so resizing and decoding behave as on photos
        base = rng.integers(0, 256, (n, 4, 4, 3)).astype(np.float32)
        up = np.repeat(np.repeat(base, math.ceil(s / 4), axis=1), math.ceil(s / 4), axis=2)
        noise = rng.normal(0, 12, (n, s, s, 3))
        return np.clip(up[:, :s, :s] + noise, 0, 255).round().astype(np.float32)

    def serving_endpoints(self, model, cfg):
        import tensorflow as tf

        s = cfg.data.image_size

        def serve(image):
            return {"probabilities": model(image, training=False)}

        def decode_one(data):
            img = tf.io.decode_image(data, channels=3, expand_animations=False)
            img = tf.image.resize(tf.cast(img, tf.float32), (s, s), method="bilinear",
                                  antialias=True)
            # rounded back to 0..255 integers, as the training images were (PIL, uint8)
            return tf.clip_by_value(tf.round(img), 0.0, 255.0)

        def serve_image_bytes(image_bytes):
            images = tf.map_fn(decode_one, image_bytes, fn_output_signature=tf.float32)
            images.set_shape((None, s, s, 3))
            return {"probabilities": model(images, training=False)}

        return {
            "serve": (serve, [tf.TensorSpec((None, s, s, 3), tf.float32, name="image")]),
            "serve_image_bytes": (serve_image_bytes,
                                  [tf.TensorSpec((None,), tf.string, name="image_bytes")]),
        }

    def endpoint_probes(self, cfg, probe):
        from PIL import Image

        encoded = []
        for img in probe.astype(np.uint8):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            encoded.append(buf.getvalue())
        return {"serve": probe, "serve_image_bytes": np.array(encoded, dtype=object)}


class TextModality(Modality):
    """Raw strings in; the tokenizer is inside the model.

    The model itself comes from ``tlsearch.text_source.build_raw_text_model(params, weights,
    n_classes, source, seed)``, which returns a Keras model from a batch of strings (shape
    ``(None,)``, dtype string) to class probabilities.
    """

    name = "text"

    def build_model(self, cfg, params, weights, n_classes):
        try:
            from tlsearch import text_source
        except ImportError:
            raise UserError("this tlsearch cannot export text models yet") from None
        builder = getattr(text_source, "build_raw_text_model", None)
        if builder is None:
            raise UserError("this tlsearch cannot export text models yet "
                            "(tlsearch.text_source has no build_raw_text_model)")
        source = text_source.TextBackboneSource(
            {e.name: e for e in cfg.backbone_entries}, None, cfg.data.image_size, None,
            seed=cfg.seed, base_dir=cfg.base_dir)
        return builder(params, weights, n_classes, source, seed=cfg.seed)

    def input_spec(self, cfg):
        return {"kind": "text", "name": "text", "shape": [None], "dtype": "string",
                "text": "raw UTF-8 strings; tokenization is inside the model"}

    def probe(self, cfg, n=4):
        texts = ["a quiet, patient film that earns its ending",
                 "dull and far too long", "", "Ünïcödé, punctuation!? and   spaces"]
        return np.array((texts * n)[:n], dtype=object)

    def serving_endpoints(self, model, cfg):
        import tensorflow as tf

        def serve(text):
            return {"probabilities": model(text, training=False)}

        return {"serve": (serve, [tf.TensorSpec((None,), tf.string, name="text")])}

    def endpoint_probes(self, cfg, probe):
        return {"serve": probe}


MODALITIES: dict[str, Modality] = {m.name: m for m in (ImageModality(), TextModality())}


def get_modality(name: str) -> Modality:
    if name not in MODALITIES:
        raise UserError(f"cannot export {name!r} models; expected one of {sorted(MODALITIES)}")
    return MODALITIES[name]


# ---------------------------------------------------------------------------------------------
# choosing and rebuilding a trial


def select_trial(study, number: int | None = None):
    """The best trial, or trial ``number``; only COMPLETE trials have weights to export."""
    from optuna.trial import TrialState

    if number is None:
        try:
            return study.best_trial
        except ValueError:
            raise UserError(f"study {study.study_name!r} has no complete trial yet: run "
                            f"`tlsearch run` until one completes") from None
    trials = study.get_trials(deepcopy=False)
    found = next((t for t in trials if t.number == number), None)
    if found is None:
        raise UserError(f"`--trial {number}`: study {study.study_name!r} has trials "
                        f"0..{len(trials) - 1}" if trials else
                        f"`--trial {number}`: study {study.study_name!r} has no trials")
    if found.state != TrialState.COMPLETE:
        complete = [t.number for t in trials if t.state == TrialState.COMPLETE]
        raise UserError(f"`--trial {number}`: the trial is {found.state.name}, and only complete "
                        f"trials keep their weights; complete trials: {complete}")
    return found


def rebuild_model(cfg, study, frozen, store):
    """(model, modality) for a stored trial at its best epoch; the weights are verified first."""
    from tlsearch.artifacts import fetch_weights
    from tlsearch.study import ATTR, trial_params

    weights = fetch_weights(frozen, store)  # raises UserError on a damaged artifact
    modality = get_modality(study.user_attrs.get(ATTR["modality"], "image"))
    classes = study.user_attrs[ATTR["classes"]]
    try:
        model = modality.build_model(cfg, trial_params(frozen), weights, len(classes))
    except ValueError as e:
        raise UserError(f"trial {frozen.number}: its weights do not fit the model the study file "
                        f"describes now ({e}); was a backbone changed?") from None
    return model, modality


# ---------------------------------------------------------------------------------------------
# writers: each writes one format and returns predictions on the probe for comparison


def _predict_keras_file(path: Path, probe):
    import keras

    import tlsearch.layers  # noqa: F401  (registers Preprocess for loading)

    return keras.saving.load_model(path, compile=False).predict(probe, verbose=0)


def _n_outputs(model) -> int:
    """Classes the model scores; a text model wraps its functional token model."""
    inner = getattr(model, "token_model", model)
    return int(inner.outputs[0].shape[-1])


def _write_saved_model(model, modality, cfg, path: Path, probe) -> dict:
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    endpoints = modality.serving_endpoints(model, cfg)
    for name, (fn, sig) in endpoints.items():
        archive.add_endpoint(name, fn, input_signature=sig)
    archive.write_out(str(path), verbose=False)
    loaded = tf.saved_model.load(str(path))
    probes = modality.endpoint_probes(cfg, probe)
    preds, signatures = {}, {}
    endpoints_notes = getattr(modality, "endpoint_notes", {})
    for i, (name, (_, sig)) in enumerate(endpoints.items()):
        if name in probes:
            x = probes[name]
            t = tf.constant(x.tolist() if x.dtype == object else x, dtype=sig[0].dtype)
            preds[name] = getattr(loaded, name)(t)["probabilities"].numpy()
        signatures["serving_default" if i == 0 else name] = {
            "endpoint": name,
            **({"note": endpoints_notes[name]} if name in endpoints_notes else {}),
            "inputs": {s.name: {"shape": list(s.shape), "dtype": s.dtype.name} for s in sig},
            "outputs": {"probabilities": {"shape": [None, _n_outputs(model)],
                                          "dtype": "float32"}},
        }
    return {"predictions": preds, "signatures": signatures}


def _write_onnx(model, path: Path, probe) -> dict:
    try:
        import tf2onnx  # noqa: F401
    except ImportError:
        return {"skipped": "tf2onnx is not installed (pip install tf2onnx onnxruntime)"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model.export(str(path), format="onnx", verbose=False)
    try:
        import onnxruntime as ort
    except ImportError:
        return {"unverified": "onnxruntime is not installed, so the file was not checked"}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    return {"predictions": {"onnx": sess.run(None, {inp.name: probe})[0]},
            "input_name": inp.name}


def _write_litert(model, path: Path, probe) -> dict:
    model.export(str(path), format="litert", verbose=False)
    interpreter = _litert_interpreter(path)
    return {"predictions": {"litert": run_litert(interpreter, probe)}}


def _litert_interpreter(path: Path):
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


# ---------------------------------------------------------------------------------------------
# the export


@dataclass
class ExportResult:
    out_dir: Path
    trial: int
    best_step: int | None
    best_stage: int | None
    formats: dict[str, dict] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)


def _versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("tlsearch", "keras", "tensorflow", "optuna", "numpy", *extra):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _files_under(root: Path) -> dict[str, dict]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "metadata.json":
            out[p.relative_to(root).as_posix()] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    return out


def _max_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UserError(f"--out {str(out)!r} is not empty; choose a new folder, or pass "
                            f"--force to replace it")
        if not (out / "metadata.json").is_file():
            raise UserError(f"--out {str(out)!r} is not empty and holds no earlier export "
                            f"(no metadata.json); refusing to replace it even with --force")


def export_study(cfg, out_dir: str | Path, *, trial: int | None = None, url: str | None = None,
                 formats: tuple[str, ...] = FORMATS, force: bool = False,
                 log: Callable[[str], None] = print) -> ExportResult:
    """Export trial ``trial`` (default: the best) of the study described by ``cfg`` to ``out_dir``."""
    from tlsearch.artifacts import ARTIFACT_ATTR, AtomicFileSystemArtifactStore
    from tlsearch.study import ATTR, load_study

    out = Path(out_dir)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise UserError(f"unknown export formats {unknown}; expected some of {list(FORMATS)}")
    _prepare_out(out, force)
    study = load_study(cfg, url)
    frozen = select_trial(study, trial)
    best_step = frozen.user_attrs.get(ATTR["best_step"])
    best_stage = frozen.user_attrs.get(ATTR["best_stage"])
    which = "best trial" if trial is None else "trial"
    log(f"exporting {which} #{frozen.number} of study {study.study_name!r} "
        f"({cfg.objective}={frozen.value:.4g}) at its best epoch: step {best_step} "
        f"(stage {best_stage})")
    store = AtomicFileSystemArtifactStore(cfg.artifact_dir)
    model, modality = rebuild_model(cfg, study, frozen, store)
    classes = list(study.user_attrs[ATTR["classes"]])

    probe = modality.probe(cfg)
    reference = np.asarray(model.predict(probe, verbose=0))

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        report: dict[str, dict] = {}

        def check(name: str, rel: str, result: dict) -> None:
            if "skipped" in result:
                report[name] = {"status": "skipped", "reason": result["skipped"]}
                log(f"  {name:<12} skipped: {result['skipped']}")
                return
            entry: dict[str, Any] = {"status": "ok", "path": rel}
            if "unverified" in result:
                entry.update(status="unverified", reason=result["unverified"])
            diffs = {k: _max_diff(v, reference) for k, v in result.get("predictions", {}).items()}
            if diffs:
                entry["max_abs_diff"] = {k: float(f"{d:.3g}") for k, d in diffs.items()}
            for k in ("signatures", "input_name"):
                if k in result:
                    entry[k] = result[k]
            worst = max(diffs.values(), default=0.0)
            if worst > TOLERANCE:
                target = work / rel
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
                report[name] = {"status": "dropped",
                                "reason": f"its predictions differ from the Keras model's by "
                                          f"{worst:.3g} (> {TOLERANCE:g})"}
                log(f"  {name:<12} dropped: {report[name]['reason']}")
                return
            report[name] = entry
            log(f"  {name:<12} {rel}  (max |diff| {worst:.1e})")

        model.save(work / "model.keras")
        check("keras", "model.keras",
              {"predictions": {"keras": _predict_keras_file(work / "model.keras", probe)}})
        check("saved_model", "serving/1",
              _write_saved_model(model, modality, cfg, work / "serving" / "1", probe))
        if report["keras"]["status"] != "ok" or report["saved_model"]["status"] != "ok":
            raise RuntimeError(f"the Keras or SavedModel export does not reproduce the model: "
                               f"{report}")
        writers = {"onnx": ("model.onnx", lambda p: _write_onnx(model, p, probe)),
                   "litert": ("model.tflite", lambda p: _write_litert(model, p, probe))}
        for name in formats:
            rel, writer = writers[name]
            try:
                result = writer(work / rel)
            except Exception as e:  # a converter that cannot handle this model: record, go on
                (work / rel).unlink(missing_ok=True)
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                result = {"skipped": f"conversion failed: {type(e).__name__}: {first}"}
            check(name, rel, result)

        metadata = _metadata(cfg, study, frozen, modality, classes, report, work,
                             artifact=frozen.user_attrs.get(ARTIFACT_ATTR, {}))
        (work / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        work.chmod(0o777 & ~umask)  # mkdtemp makes it private; an export is meant to be shared
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"wrote {out}")
    return ExportResult(out, frozen.number, best_step, best_stage, report, metadata)


def _metadata(cfg, study, frozen, modality: Modality, classes, report, root: Path,
              artifact: dict) -> dict:
    from tlsearch.study import ATTR

    step = frozen.user_attrs.get(ATTR["best_step"])
    history = frozen.user_attrs.get(ATTR["history"], [])
    at_best = next((dict(r) for r in history if r.get("step") == step), {})
    metrics = {k: at_best[k] for k in ("loss", "val_loss", "val_accuracy", "val_auc") if k in at_best}
    extra = ()
    if report.get("onnx", {}).get("status") in ("ok", "unverified"):
        extra = ("tf2onnx", "onnx", "onnxruntime")
    return {
        "format_version": METADATA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "study": study.study_name,
        "trial": frozen.number,
        "objective": cfg.objective,
        "direction": cfg.direction,
        "value": frozen.value,
        "best_step": step,
        "best_stage": frozen.user_attrs.get(ATTR["best_stage"]),
        "metrics": metrics,
        "params": frozen.user_attrs.get(ATTR["params"], frozen.params),
        "modality": modality.name,
        "classes": classes,
        "input": modality.input_spec(cfg),
        "output": {"name": "probabilities", "shape": [None, len(classes)], "dtype": "float32",
                   "meaning": "class probabilities, in the order of `classes`"},
        "formats": report,
        "tolerance": TOLERANCE,
        "weights_artifact": {k: artifact[k] for k in ("id", "size", "sha256") if k in artifact},
        "versions": _versions(extra),
        "files": _files_under(root),
    }
