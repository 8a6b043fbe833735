"""Predict with an exported model: ``tlsearch.load(DIR).predict(inputs)``.

The predictor reads ``metadata.json`` for the class names and the input the model expects, checks
``model.keras`` against the SHA-256 recorded there (a damaged or swapped file is refused) and
``metadata.json``'s own content against its seal (an edited class order is refused), and
decodes inputs in batches, so a folder of a million images never sits in memory at once.

Inputs, for image models: image files, folders of images (searched recursively), arrays of shape
``(H, W, 3)`` or ``(N, H, W, 3)`` with values in 0..255, PIL images. For text models: strings are
texts, while :class:`pathlib.Path` objects are files: ``.csv`` (the ``text`` column, or the only
column) or any other file read as one text per non-empty line.

Throughput: inputs are read (decoded and resized) by a pool of threads, the next batch while the
model runs the current one, and every batch after the first goes through one function traced once
for the export's input signature (``metadata.json``'s ``input``: any batch size, no retracing).
A call whose inputs fit one batch runs the model eagerly: tracing costs more than it saves there.
"""

from __future__ import annotations

import json
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from tlsearch import modalities
from tlsearch.errors import InputError, UserError
from tlsearch.modalities import InputItem

__all__ = ["Predictor", "load", "check_export", "InputError"]

DEFAULT_BATCH = 64
#: threads that read inputs; batches read ahead of the one the model runs
READERS = max(2, min(8, os.cpu_count() or 1))
READ_AHEAD = 2


def load(path: str | Path, *, verify: bool = True) -> "Predictor":
    """The predictor of an export folder written by ``tlsearch export``."""
    return Predictor(path, verify=verify)


def check_export(path: str | Path, *, verify: bool = True) -> dict:
    """An export folder's ``metadata.json``, once its files are found whole (``verify``: every
    file's SHA-256 as recorded). Needs no TensorFlow: a process that only supervises servers
    checks an export with it. Raises :class:`UserError` naming the file at fault."""
    root = Path(path)
    meta_path = root / "metadata.json"
    if not meta_path.is_file():
        raise UserError(f"{str(root)!r} is not a tlsearch export (no metadata.json); "
                        f"write one with `tlsearch export STUDY --out DIR`")
    try:
        metadata: dict = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{str(meta_path)!r} cannot be read: {e}") from None
    model_path = root / "model.keras"
    if not model_path.is_file():
        raise UserError(f"{str(model_path)!r} is missing: the export is incomplete")
    if verify:
        _verify(root, metadata)
    return metadata


def _verify(root: Path, metadata: dict) -> None:
    """Every file the export lists has the SHA-256 metadata.json records, model.keras among
    them, and metadata.json's own content is what the export wrote (its classes, input and
    decision rule; :mod:`tlsearch.export.integrity`); an export without its list of files is
    refused, not trusted."""
    import sys

    from tlsearch._hashing import sha256_file
    from tlsearch.export.integrity import check_seal

    files = metadata.get("files")
    if not isinstance(files, dict) or "model.keras" not in files:
        raise UserError(f"{str(root / 'metadata.json')!r} has no list of its files and "
                        f"their SHA-256: the export cannot be verified; export it again")
    check_seal(metadata, root / "metadata.json", lambda line: print(line, file=sys.stderr))
    for rel, info in files.items():
        f = root / rel
        if not f.is_file():
            raise UserError(f"{str(f)!r} is missing: the export is incomplete; export it again")
        if sha256_file(f) != info.get("sha256"):
            raise UserError(f"{str(f)!r} does not match the SHA-256 in metadata.json: the "
                            f"export is damaged or was altered; export it again")


class Predictor:
    """An exported model with its class names: ``predict`` gives labels, ``predict_proba`` arrays."""

    def __init__(self, path: str | Path, *, verify: bool = True) -> None:
        self.path = Path(path)
        self.metadata: dict = check_export(self.path, verify=verify)
        self.classes: list[str] = list(self.metadata["classes"])
        self.modality: str = self.metadata.get("modality", "image")
        self._kind = modalities.get(self.modality)
        self.image_size: int | None = self.metadata.get("input", {}).get("image_size")
        self.model = self._load_model(self.path / "model.keras")
        self._forward: Callable[[Any], Any] | None = None  # traced on first use

    def __repr__(self) -> str:
        return (f"Predictor({str(self.path)!r}, study={self.metadata.get('study')!r}, "
                f"trial={self.metadata.get('trial')}, classes={self.classes})")

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

    def _signature(self) -> Any:
        """The model's input as a ``tf.TensorSpec`` (from ``metadata.json``), or None when the
        export does not record its shape and dtype."""
        spec = self.metadata.get("input", {})
        if "shape" not in spec or "dtype" not in spec:
            return None
        import tensorflow as tf

        return tf.TensorSpec([None if d is None else int(d) for d in spec["shape"]],
                             tf.as_dtype(spec["dtype"]), name=spec.get("name"))

    def proba_batch(self, batch: list) -> np.ndarray:
        """Class probabilities of read inputs (what :meth:`iter_predict` reads: image arrays,
        small ones still at their own size, or strings) through the one traced function: traced
        on the first call, reused for every batch size after it."""
        return self._forward_batch(self._kind.collate(batch, self.metadata))

    def _forward_batch(self, batch: Any, only: bool = False) -> np.ndarray:
        """Probabilities of a collated batch: eagerly when it is a call's ``only`` batch."""
        import tensorflow as tf

        spec = self._signature()
        if only or spec is None:
            return self._kind.run(self.model, batch, only=only)
        if self._forward is None:
            model = self.model
            self._forward = tf.function(lambda x: model(x, training=False), autograph=False,
                                        input_signature=[spec])
        if spec.dtype == tf.string:
            x = tf.constant(list(batch), dtype=tf.string)
        else:
            stacked = batch if isinstance(batch, np.ndarray) else np.stack(batch)
            x = tf.constant(np.asarray(stacked, dtype=spec.dtype.as_numpy_dtype))
        return np.asarray(self._forward(x))

    def iter_predict(self, inputs, *, batch_size: int = DEFAULT_BATCH,
                     skip_errors: bool = False) -> Iterator[dict]:
        """Predictions one dict at a time, reading and running ``batch_size`` inputs at once.

        Reader threads read the inputs; another thread assembles each batch once its inputs are
        read (small images resized together), so this one only runs the model. They keep at most
        :data:`READ_AHEAD` batches ahead of it: memory holds a few batches, whatever the number
        of inputs."""
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        items = self._items(inputs)
        only = len(items) <= batch_size
        readers = ThreadPoolExecutor(max_workers=min(READERS, max(1, len(items))),
                                     thread_name_prefix="tlsearch-read")
        assembler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tlsearch-batch")
        try:
            pending: deque[Future] = deque()
            starts = iter(range(0, len(items), batch_size))
            while True:
                while len(pending) <= READ_AHEAD:
                    start = next(starts, None)
                    if start is None:
                        break
                    chunk = items[start:start + batch_size]
                    reads = [readers.submit(_read, item) for item in chunk]
                    pending.append(assembler.submit(self._assemble, chunk, reads))
                if not pending:
                    return
                yield from self._predict_chunk(pending.popleft().result(), only, skip_errors)
        finally:
            for pool in (assembler, readers):
                pool.shutdown(wait=True, cancel_futures=True)

    def _assemble(self, chunk: list[InputItem], reads: list[Future]) -> tuple:
        """(names, errors by position, the collated batch or None) of one chunk's reads."""
        names: list[str] = []
        ready: list = []
        errors: dict[int, tuple[str, InputError]] = {}
        for i, (item, future) in enumerate(zip(chunk, reads)):
            value, error = future.result()
            if error is None:
                ready.append(value)
                names.append(item.name)
            else:
                errors[i] = (item.name, error)
        batch = self._kind.collate(ready, self.metadata) if ready else None
        return len(chunk), names, errors, batch

    def _predict_chunk(self, assembled: tuple, only: bool, skip_errors: bool) -> Iterator[dict]:
        n, names, errors, batch = assembled
        if errors and not skip_errors:
            error = errors[min(errors)][1]
            raise InputError(f"{error} (pass --skip-errors, or skip_errors=True, to skip "
                             f"unreadable inputs)") from None
        rows = iter(self.rows(names, self._forward_batch(batch, only)) if names else ())
        for i in range(n):
            yield ({"input": errors[i][0], "error": str(errors[i][1])} if i in errors
                   else next(rows))

    def rows(self, names: list[str], probs: np.ndarray) -> list[dict]:
        """One dict per row of probabilities: ``input``, ``label`` (by the export's decision
        rule), ``probability`` of that label, ``probabilities`` per class."""
        from tlsearch.evaluation import decide

        probs = np.asarray(probs)
        labels: list[int] = (decide(probs, self.metadata.get("decision")).tolist()
                             if len(probs) else [])
        out = []
        for name, p, k in zip(names, probs.tolist(), labels):
            out.append({"input": name, "label": self.classes[k], "probability": p[k],
                        "probabilities": dict(zip(self.classes, p))})
        return out

    def label_index(self, p: np.ndarray) -> int:
        """The predicted class of one row of probabilities, by the export's decision rule."""
        from tlsearch.evaluation import decide

        return int(decide(np.asarray(p)[None, :], self.metadata.get("decision"))[0])

    def _row(self, name: str, p: np.ndarray) -> dict:
        return self.rows([name], np.asarray(p)[None, :])[0]

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


def _read(item: InputItem) -> tuple[Any, InputError | None]:
    """An input read in a reader thread: (value, None), or (None, the reason it is unreadable)."""
    try:
        return item.read(), None
    except InputError as e:
        return None, e
