"""Modalities: the one place that answers every image-vs-text question.

A :class:`Modality` says how a study of its kind of input computes and caches features (its
:class:`~tlsearch.train.features.BackboneSource`), what an exported model takes and how it is
served, and what ``predict`` accepts. Adding a modality (audio, say) is one module here with one
:func:`register` call, plus its data format (:mod:`tlsearch.data`) and its backbones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from tlsearch.errors import InputError, UserError

__all__ = ["Modality", "InputItem", "failing", "register", "get", "modality_of", "names"]


@dataclass
class InputItem:
    """One input to predict: a name to report it by, and how to read it (lazily)."""

    name: str
    read: Callable[[], Any]


def failing(name: str, reason: str) -> InputItem:
    """An input known to be unreadable: it fails when read, so --skip-errors can skip it."""

    def read() -> Any:
        raise InputError(f"{name!r}: {reason}")

    return InputItem(name, read)


class Modality:
    """What the rest of tlsearch needs to know about one kind of input."""

    name = ""
    #: optional export formats this modality's models cannot be converted to: (the line the
    #: terminal shows, the details metadata.json keeps)
    unavailable_formats: dict[str, tuple[str, str]] = {}

    # ---- training
    def make_source(self, cfg: Any, data: Any, cache: Any, prefetch_unfrozen: int = 0) -> Any:
        """The study's :class:`~tlsearch.train.features.BackboneSource` (``data`` None: export)."""
        raise NotImplementedError

    # ---- the exported model
    def build_model(self, cfg: Any, params: Any, weights: dict, n_classes: int) -> Any:
        """The trained Keras model, from raw inputs to class probabilities."""
        raise NotImplementedError

    def input_spec(self, cfg: Any) -> dict:
        """The model's input, as recorded in ``metadata.json`` and read back by the predictor."""
        raise NotImplementedError

    def probe(self, cfg: Any, n: int = 4) -> np.ndarray:
        """Inputs on which each exported format is compared with the Keras model."""
        raise NotImplementedError

    def serving_endpoints(self, model: Any, cfg: Any) -> dict[str, tuple[Callable, list]]:
        """SavedModel endpoints: name -> (function, input signature). The first is serving_default."""
        raise NotImplementedError

    def endpoint_probes(self, cfg: Any, probe: np.ndarray) -> dict[str, Any]:
        """Inputs for each endpoint equivalent to ``probe`` (to check every signature)."""
        return {}

    endpoint_notes: dict[str, str] = {}

    # ---- predicting with an exported model
    def load_dependencies(self) -> None:
        """Import what registers the layers an exported model of this kind needs."""
        import tlsearch.layers  # noqa: F401

    def input_items(self, inputs: Any, metadata: dict) -> list[InputItem] | None:
        """Items for a whole batch given at once (an ``(N, H, W, 3)`` array), or None."""
        return None

    def expand(self, x: Any, i: int, metadata: dict) -> list[InputItem]:
        """The items of the ``i``-th input (a file, a folder, a string, an array ...)."""
        raise NotImplementedError

    def is_single(self, x: Any) -> bool:
        """Whether ``x`` is one input rather than a list of them."""
        return False

    def collate(self, batch: list, metadata: dict) -> Any:
        """Read inputs as the model's input batch (images read at another size are resized
        here, together: one call per size, not one per image)."""
        return batch

    def run(self, model: Any, batch: list, *, only: bool = False) -> np.ndarray:
        """Class probabilities for a batch of read inputs; ``only``: the one batch of a call
        (worth no traced graph)."""
        raise NotImplementedError

    def predict_all(self, model: Any, x: Any, batch: int = 64) -> np.ndarray:
        """Class probabilities for every example of a dataset's inputs, in batches, computed as
        ``predict`` computes them."""
        return np.concatenate([self.run(model, list(x[i:i + batch]))
                               for i in range(0, len(x), batch)])


_REGISTRY: dict[str, Modality] = {}


def register(modality: Modality) -> Modality:
    if modality.name in _REGISTRY:
        raise ValueError(f"modality {modality.name!r} is already registered")
    _REGISTRY[modality.name] = modality
    return modality


def _load_all() -> None:
    from tlsearch.modalities import image, text  # noqa: F401


def names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get(name: str) -> Modality:
    _load_all()
    if name not in _REGISTRY:
        raise UserError(f"unknown modality {name!r}; expected one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def modality_of(entries: list) -> Modality:
    """The modality of a study's backbones; image and text backbones cannot share one study."""
    from tlsearch.backbones import spec_for

    kinds = {spec_for(e).modality for e in entries}
    if len(kinds) > 1:
        listed = ", ".join(f"{e.name} ({spec_for(e).modality})" for e in entries)
        raise UserError(f"`backbones`: image and text backbones cannot share one study ({listed})")
    return get(kinds.pop())
