"""Predict with an exported model: ``tlsearch.load(DIR).predict(inputs)``.

The predictor reads ``metadata.json`` for the class names and the input the model expects, checks
``model.keras`` against the SHA-256 recorded there (a damaged or swapped file is refused), and
decodes inputs in batches, so a folder of a million images never sits in memory at once.

Inputs, for image models: image files, folders of images (searched recursively), arrays of shape
``(H, W, 3)`` or ``(N, H, W, 3)`` with values in 0..255, PIL images. For text models: strings are
texts, while :class:`pathlib.Path` objects are files: ``.csv`` (the ``text`` column, or the only
column) or any other file read as one text per non-empty line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from tlsearch.errors import UserError

__all__ = ["Predictor", "load", "InputError"]

DEFAULT_BATCH = 64


class InputError(UserError):
    """An input that cannot be read; the message names it."""


@dataclass
class _Item:
    """One input to predict: a name to report it by, and how to read it (lazily)."""

    name: str
    read: Callable[[], Any]


def load(path: str | Path, *, verify: bool = True) -> "Predictor":
    """The predictor of an export folder written by ``tlsearch export``."""
    return Predictor(path, verify=verify)


class Predictor:
    """An exported model with its class names: ``predict`` gives labels, ``predict_proba`` arrays."""

    def __init__(self, path: str | Path, *, verify: bool = True) -> None:
        self.path = Path(path)
        meta_path = self.path / "metadata.json"
        if not meta_path.is_file():
            raise UserError(f"{str(self.path)!r} is not a tlsearch export (no metadata.json); "
                            f"write one with `tlsearch export STUDY --out DIR`")
        try:
            self.metadata: dict = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{str(meta_path)!r} cannot be read: {e}") from None
        self.classes: list[str] = list(self.metadata["classes"])
        self.modality: str = self.metadata.get("modality", "image")
        self.image_size: int | None = self.metadata.get("input", {}).get("image_size")
        model_path = self.path / "model.keras"
        if not model_path.is_file():
            raise UserError(f"{str(model_path)!r} is missing: the export is incomplete")
        if verify:
            self._verify(model_path)
        self.model = self._load_model(model_path)

    def __repr__(self) -> str:
        return (f"Predictor({str(self.path)!r}, study={self.metadata.get('study')!r}, "
                f"trial={self.metadata.get('trial')}, classes={self.classes})")

    def _verify(self, model_path: Path) -> None:
        from tlsearch.export import sha256_file

        expected = self.metadata.get("files", {}).get("model.keras", {}).get("sha256")
        if expected and sha256_file(model_path) != expected:
            raise UserError(f"{str(model_path)!r} does not match the SHA-256 in metadata.json: the "
                            f"export is damaged or was altered; export it again")

    def _load_model(self, model_path: Path):
        import keras

        import tlsearch.layers  # noqa: F401  (registers the preprocessing layer)

        if self.modality == "text":
            try:
                import keras_hub  # noqa: F401  (registers the tokenizer and backbone layers)
            except ImportError:
                pass
        try:
            return keras.saving.load_model(model_path, compile=False)
        except Exception as e:
            raise UserError(f"{str(model_path)!r} cannot be loaded: {e}") from None

    # ---- inputs

    def _items(self, inputs) -> list[_Item]:
        if isinstance(inputs, (str, Path)) or _is_single_image(inputs):
            inputs = [inputs]
        if isinstance(inputs, np.ndarray) and self.modality == "image" and inputs.ndim == 4:
            return [_Item(f"array[{i}]", lambda a=a: self._image_array(a))
                    for i, a in enumerate(inputs)]
        items: list[_Item] = []
        for i, x in enumerate(inputs):
            items += self._expand(x, i)
        return items

    def _expand(self, x, i: int) -> list[_Item]:
        if self.modality == "text":
            if isinstance(x, Path):
                return _text_file_items(x)
            if isinstance(x, str):
                return [_Item(f"text[{i}]", lambda x=x: x)]
            raise InputError(f"input {i}: a text model takes strings or files (pathlib.Path), "
                             f"got {type(x).__name__}")
        if isinstance(x, (str, Path)):
            p = Path(x)
            if p.is_dir():
                return _image_folder_items(p, self._image_file)
            if not p.exists():
                return [_failing(str(p), "no such file or folder")]
            return [_Item(str(p), lambda p=p: self._image_file(p))]
        if _is_single_image(x):
            return [_Item(f"image[{i}]", lambda x=x: self._image_array(x))]
        if isinstance(x, np.ndarray) and x.ndim == 4:
            return [_Item(f"array[{i}][{j}]", lambda a=a: self._image_array(a))
                    for j, a in enumerate(x)]
        raise InputError(f"input {i}: expected an image file, a folder, a PIL image or an "
                         f"(H, W, 3) array, got {type(x).__name__}")

    def _image_file(self, path: Path) -> np.ndarray:
        from tlsearch.data.images import decode_image

        try:
            return decode_image(path, self.image_size)
        except (ValueError, OSError) as e:
            raise InputError(f"{str(path)!r}: {e}") from None

    def _image_array(self, x) -> np.ndarray:
        from PIL import Image

        from tlsearch.data.images import to_rgb8

        if isinstance(x, Image.Image):
            try:
                x = np.asarray(to_rgb8(x))  # as training decoded its images: 16 bits scaled
            except ValueError as e:
                raise InputError(f"a PIL image of mode {x.mode}: {e}") from None
        a = np.asarray(x)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=-1)
        if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
            raise InputError(f"an image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); "
                             f"got {a.shape}")
        if a.shape[-1] == 1:
            a = np.repeat(a, 3, axis=-1)
        a = a[..., :3]
        s = self.image_size
        if a.shape[:2] != (s, s):
            img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
            a = np.asarray(img.resize((s, s), Image.Resampling.BILINEAR))
        return a.astype(np.float32)

    # ---- prediction

    def _run(self, batch: list) -> np.ndarray:
        if self.modality == "text":
            import tensorflow as tf

            return np.asarray(self.model(tf.constant(batch, dtype=tf.string), training=False))
        return np.asarray(self.model.predict_on_batch(np.stack(batch)))

    def iter_predict(self, inputs, *, batch_size: int = DEFAULT_BATCH,
                     skip_errors: bool = False) -> Iterator[dict]:
        """Predictions one dict at a time, reading and running ``batch_size`` inputs at once."""
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        items = self._items(inputs)
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            ready, names, results = [], [], []
            for item in chunk:
                try:
                    ready.append(item.read())
                    names.append(item.name)
                    results.append(None)
                except InputError as e:
                    if not skip_errors:
                        raise InputError(f"{e} (pass --skip-errors, or skip_errors=True, to skip "
                                         f"unreadable inputs)") from None
                    results.append({"input": item.name, "error": str(e)})
            probs = iter(self._run(ready)) if ready else iter(())
            names_it = iter(names)
            for r in results:
                yield r if r is not None else self._row(next(names_it), next(probs))

    def _row(self, name: str, p: np.ndarray) -> dict:
        k = int(np.argmax(p))
        return {"input": name, "label": self.classes[k], "probability": float(p[k]),
                "probabilities": {c: float(v) for c, v in zip(self.classes, p)}}

    def predict(self, inputs, *, batch_size: int = DEFAULT_BATCH,
                skip_errors: bool = False) -> list[dict]:
        """One dict per input: ``input``, ``label``, ``probability``, ``probabilities`` per class.

        With ``skip_errors``, an unreadable input gives ``{"input": ..., "error": reason}`` instead
        of stopping everything.
        """
        return list(self.iter_predict(inputs, batch_size=batch_size, skip_errors=skip_errors))

    def predict_proba(self, inputs, *, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Class probabilities, shape ``(n_inputs, n_classes)``, columns in ``classes`` order."""
        rows = self.predict(inputs, batch_size=batch_size)
        if not rows:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.array([[r["probabilities"][c] for c in self.classes] for r in rows],
                        dtype=np.float32)


def _is_single_image(x) -> bool:
    try:
        from PIL import Image

        if isinstance(x, Image.Image):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(x, np.ndarray) and x.ndim in (2, 3) and x.dtype != object


def _failing(name: str, reason: str) -> _Item:
    """An input known to be unreadable: it fails when read, so --skip-errors can skip it."""

    def read():
        raise InputError(f"{name!r}: {reason}")

    return _Item(name, read)


def _image_folder_items(folder: Path, read: Callable[[Path], np.ndarray]) -> list[_Item]:
    from tlsearch.data.images import IMAGE_SUFFIXES

    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        return [_failing(str(folder), f"no image files ({', '.join(IMAGE_SUFFIXES)}) in this "
                                      f"folder")]
    return [_Item(str(p), lambda p=p: read(p)) for p in files]


def _text_file_items(path: Path) -> list[_Item]:
    if not path.is_file():
        return [_failing(str(path), "no such file")]
    if path.suffix.lower() in (".csv", ".tsv"):
        import pandas as pd

        try:
            df = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",",
                             dtype=str, keep_default_na=False)
        except Exception as e:
            return [_failing(str(path), f"not a readable CSV file ({e})")]
        if "text" in df.columns:
            col = "text"
        elif len(df.columns) == 1:
            col = df.columns[0]
        else:
            return [_failing(str(path), f"expected a `text` column or a single column, found "
                                        f"{list(df.columns)}")]
        return [_Item(f"{path}:{i + 2}", lambda t=t: t) for i, t in enumerate(df[col].tolist())]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        return [_failing(str(path), f"cannot be read as UTF-8 text ({e})")]
    return [_Item(f"{path}:{i + 1}", lambda t=t: t) for i, t in enumerate(lines) if t.strip()]
