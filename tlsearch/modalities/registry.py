# mypy: disallow-untyped-defs
"""The modality registry and what a modality is: :class:`Modality`, the inputs ``predict`` reads.

A modality registers itself with :func:`register` in its own module of this package (imported by
the package's ``__init__``, so this module imports none of them), or in an installed package that
names its module in the ``tlsearch.modalities`` entry-point group (see :mod:`tlsearch._registry`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from tlsearch._registry import Registry
from tlsearch.errors import InputError, UserError

__all__ = ["Modality", "InputItem", "failing", "register", "get", "names"]


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


_MODALITIES: Registry[Modality] = Registry("modality", "tlsearch.modalities")


def register(modality: Modality) -> Modality:
    """Add a modality under its ``name``; a name is registered once."""
    return _MODALITIES.register(modality.name, modality)


def names() -> list[str]:
    return _MODALITIES.names()


def get(name: str) -> Modality:
    """The modality registered as ``name``; an unknown one is the user's error (a study or an
    export that names a modality no installed package provides)."""
    try:
        return _MODALITIES[name]
    except KeyError as e:
        raise UserError(e.args[0]) from None
