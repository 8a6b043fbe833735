"""Predict with an exported model: ``tlsearch.load(DIR).predict(inputs)``.

The predictor reads ``metadata.json`` for the class names and the input the model expects, checks
``model.keras`` against the SHA-256 recorded there (a damaged or swapped file is refused) and
``metadata.json``'s own content against its seal (an edited class order is refused), and
decodes inputs in batches, so a folder of a million images never sits in memory at once.

Inputs, for image models: image files, folders of images (searched recursively), arrays of shape
``(H, W, 3)`` or ``(N, H, W, 3)`` with values in 0..255, PIL images. For text models: strings are
texts, while :class:`pathlib.Path` objects are files: ``.csv`` (the ``text`` column, or the only
column) or any other file read as one text per non-empty line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from tlsearch import modalities
from tlsearch.errors import InputError, UserError
from tlsearch.modalities import InputItem

__all__ = ["Predictor", "load", "InputError"]

DEFAULT_BATCH = 64


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
        self._kind = modalities.get(self.modality)
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
        """Every file the export lists has the SHA-256 metadata.json records, model.keras among
        them, and metadata.json's own content is what the export wrote (its classes, input and
        decision rule; :mod:`tlsearch.export.integrity`); an export without its list of files
        is refused, not trusted."""
        import sys

        from tlsearch._hashing import sha256_file
        from tlsearch.export.integrity import check_seal

        files = self.metadata.get("files")
        if not isinstance(files, dict) or "model.keras" not in files:
            raise UserError(f"{str(self.path / 'metadata.json')!r} has no list of its files and "
                            f"their SHA-256: the export cannot be verified; export it again")
        check_seal(self.metadata, self.path / "metadata.json",
                   lambda line: print(line, file=sys.stderr))
        for rel, info in files.items():
            f = self.path / rel
            if not f.is_file():
                raise UserError(f"{str(f)!r} is missing: the export is incomplete; export it again")
            if sha256_file(f) != info.get("sha256"):
                raise UserError(f"{str(f)!r} does not match the SHA-256 in metadata.json: the "
                                f"export is damaged or was altered; export it again")

    def _load_model(self, model_path: Path):
        import keras

        self._kind.load_dependencies()
        try:
            return keras.saving.load_model(model_path, compile=False)
        except Exception as e:
            raise UserError(f"{str(model_path)!r} cannot be loaded: {e}") from None

    # ---- inputs

    def _items(self, inputs) -> list[InputItem]:
        if isinstance(inputs, (str, Path)) or self._kind.is_single(inputs):
            inputs = [inputs]
        whole = self._kind.input_items(inputs, self.metadata)
        if whole is not None:
            return whole
        items: list[InputItem] = []
        for i, x in enumerate(inputs):
            items += self._kind.expand(x, i, self.metadata)
        return items

    # ---- prediction

    def _run(self, batch: list, only: bool = False) -> np.ndarray:
        return self._kind.run(self.model, batch, only=only)

    def iter_predict(self, inputs, *, batch_size: int = DEFAULT_BATCH,
                     skip_errors: bool = False) -> Iterator[dict]:
        """Predictions one dict at a time, reading and running ``batch_size`` inputs at once."""
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        items = self._items(inputs)
        only = len(items) <= batch_size
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            ready: list = []
            names: list[str] = []
            results: list[dict | None] = []
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
            probs = iter(self._run(ready, only)) if ready else iter(())
            names_it = iter(names)
            for r in results:
                yield r if r is not None else self._row(next(names_it), next(probs))

    def label_index(self, p: np.ndarray) -> int:
        """The predicted class of one row of probabilities, by the export's decision rule."""
        from tlsearch.evaluation import decide

        return int(decide(np.asarray(p)[None, :], self.metadata.get("decision"))[0])

    def _row(self, name: str, p: np.ndarray) -> dict:
        k = self.label_index(p)
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
