"""A built backbone: a flat Keras graph from raw inputs to a pooled feature vector, cut into blocks.

Why a flat graph: the two-stage pipeline needs to (1) freeze everything, (2) unfreeze whole blocks
from the top, and (3) cut the network at a block boundary so that the frozen bottom can be computed
once and cached. All three are simple on one functional graph whose layers are grouped into blocks,
and impossible on a nested model treated as one layer.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from tlsearch._hashing import sha256_file

__all__ = ["Backbone", "group_blocks", "file_sha256"]


def group_blocks(layer_names: list[str], pattern: str) -> list[list[str]]:
    """Group ordered layer names into blocks (see :class:`~tlsearch.backbones.registry.BackboneSpec`)."""
    rx = re.compile(pattern)
    blocks: list[list[str]] = []
    if rx.groups:
        current_id: str | None = None
        for name in layer_names:
            m = rx.match(name)
            if m and m.group(1) != current_id:
                if current_id is None and blocks:
                    blocks[-1].append(name)  # leading unmatched layers join the first block
                else:
                    blocks.append([name])
                current_id = m.group(1)
            else:
                if not blocks:
                    blocks.append([])
                blocks[-1].append(name)
        return [b for b in blocks if b]
    current: list[str] = []
    for name in layer_names:
        current.append(name)
        if rx.search(name):
            blocks.append(current)
            current = []
    if current:
        if blocks:
            blocks[-1].extend(current)
        else:
            blocks.append(current)
    return blocks


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime: float) -> str:
    return sha256_file(path)


def file_sha256(path: str | Path) -> str:
    st = os.stat(path)
    return _sha256_cached(str(path), st.st_size, st.st_mtime)


def _inference_call(call: Any, *args: Any, **kwargs: Any) -> Any:
    kwargs["training"] = False
    return call(*args, **kwargs)


def set_inference(layer: Any, frozen: bool) -> None:
    """Make ``layer`` and every layer inside it run in inference mode whatever it is called with
    (``frozen``), or undo that.

    Keras 3 passes the outer model's ``training`` flag down to every layer of a nested functional
    model at run time, even one called with ``training=False``: during ``fit`` a frozen backbone's
    Dropout would be active (BatchNorm is safe only because it also checks ``trainable``). A frozen
    layer computes what the feature cache computed only if it runs in inference mode, so its
    ``call`` is wrapped to receive ``training=False``; unfreezing restores the class's own ``call``.
    """
    for sub in layer._flatten_layers(include_self=True, recursive=True):
        if not frozen:
            sub.__dict__.pop("call", None)
        elif "call" not in sub.__dict__ and "training" in inspect.signature(sub.call).parameters:
            # object.__setattr__: a plain attribute, not tracked or saved by Keras
            object.__setattr__(sub, "call", functools.partial(_inference_call, sub.call))


@dataclass
class Backbone:
    """A backbone ready for the pipeline.

    ``model`` maps raw inputs (pixels in 0..255, or token ids) to one feature vector per example and
    contains the backbone's own preprocessing. ``blocks`` lists layer names bottom to top; the
    ``Input`` layer is in none of them.
    """

    name: str
    model: Any  # keras.Model
    blocks: list[list[str]]
    fingerprint: str
    modality: str = "image"

    @property
    def max_unfreeze(self) -> int:
        return len(self.blocks)

    @property
    def feature_dim(self) -> int:
        return int(self.model.output.shape[-1])

    def _check_n(self, n: int) -> None:
        if not 0 <= n <= self.max_unfreeze:
            raise ValueError(f"{self.name} has {self.max_unfreeze} blocks; cannot unfreeze {n}")

    @property
    def stem(self) -> list[str]:
        """Layers with weights that are in no block: a text model's embeddings (and a decoder's
        final norm). Image backbones have none: their stem is part of the first block. They train
        only when everything does (``unfreeze_blocks: all``)."""
        in_blocks = {n for block in self.blocks for n in block}
        return [layer.name for layer in self.model.layers
                if layer.name not in in_blocks and layer.weights]

    def freeze(self, n_unfrozen: int = 0, *, keep_bn_frozen: bool = True,
               stem: bool = False) -> list[str]:
        """Make exactly the top ``n_unfrozen`` blocks trainable, BatchNorm excepted. Returns their layers.

        ``stem``: the layers in no block train too (with every block: full fine-tuning). Each
        layer's flag is set one by one: setting ``model.trainable`` alone would not re-enable
        sublayers that were frozen individually. Every layer left frozen runs in inference mode
        (see :func:`set_inference`); the trainable ones follow the training flag (their dropout
        on while fitting, BatchNorm per ``keep_bn_frozen``).
        """
        import keras

        self._check_n(n_unfrozen)
        if stem and n_unfrozen != self.max_unfreeze:
            raise ValueError(f"{self.name}: the stem trains only with all {self.max_unfreeze} "
                             f"blocks, not {n_unfrozen}")
        top = {n for block in self.blocks[len(self.blocks) - n_unfrozen :] for n in block}
        if stem:
            top |= set(self.stem)
        self.model.trainable = True
        for layer in self.model.layers:
            on = layer.name in top
            if on and keep_bn_frozen and isinstance(layer, keras.layers.BatchNormalization):
                on = False
            layer.trainable = on
            set_inference(layer, frozen=not on)
        return [layer.name for layer in self.model.layers if layer.name in top]

    def depths(self) -> dict[str, int]:
        """How far below the top each layer sits, in blocks: 0 for the top block, 1 for the one
        under it, ...; the stem below the first block is one further than it, a layer in no block
        above the last (a decoder's final norm) counts as the top. Layer-wise learning rates
        (``lr_decay``) scale by ``decay ** depth``."""
        n = len(self.blocks)
        out = {name: n - 1 - i for i, block in enumerate(self.blocks) for name in block}
        names = [layer.name for layer in self.model.layers]
        first = min((names.index(b[0]) for b in self.blocks if b and b[0] in names), default=0)
        for name in self.stem:
            out[name] = n if names.index(name) < first else 0
        return out

    def boundary_layer(self, n_unfrozen: int) -> str | None:
        """The layer whose output feeds the lowest unfrozen block (None: the model's input)."""
        self._check_n(n_unfrozen)
        first = len(self.blocks) - n_unfrozen
        if first == 0:
            return None
        return self.blocks[first - 1][-1]

    def can_cut(self, n_unfrozen: int) -> bool:
        """Whether the frozen bottom hands exactly one tensor to the top (so it can be cached)."""
        boundary = self.boundary_layer(n_unfrozen)
        if boundary is None:
            return False
        top = {n for block in self.blocks[len(self.blocks) - n_unfrozen :] for n in block}
        for layer in self.model.layers:
            if layer.name not in top:
                continue
            for node in layer._inbound_nodes[:1]:  # the original graph; cuts add cloned nodes
                for t in node.arguments.keras_tensors:
                    src = t._keras_history.operation.name
                    if src not in top and src != boundary:
                        return False
        return True

    def boundary_output(self, n_unfrozen: int):
        """The tensor that is cached at the freeze boundary of the top ``n_unfrozen`` blocks."""
        return self.model.get_layer(self.boundary_layer(n_unfrozen)).output

    def split(self, n_unfrozen: int):
        """(bottom, top): bottom maps inputs to the boundary, top maps the boundary to features."""
        import keras

        if not self.can_cut(n_unfrozen):
            raise ValueError(f"{self.name} cannot be cut below its top {n_unfrozen} blocks")
        boundary = self.boundary_output(n_unfrozen)
        bottom = keras.Model(self.model.inputs, boundary, name=f"{self.name}_bottom")
        top = keras.Model(boundary, self.model.output, name=f"{self.name}_top")
        return bottom, top
