"""Backbones: the registry of pretrained networks and the code that builds them.

``build_backbone`` turns one study-file entry into a :class:`Backbone`: it resolves the weights
(``imagenet``, a file, or none), builds the network, groups its layers into blocks and computes the
fingerprint that keys the feature cache.
"""

from __future__ import annotations

import re
from pathlib import Path

from tlsearch.backbones.base import Backbone, file_sha256, group_blocks
from tlsearch.backbones.registry import BackboneSpec, BuildRequest, get, names, register, specs
from tlsearch.errors import UserError

__all__ = [
    "Backbone",
    "BackboneSpec",
    "BuildRequest",
    "build_backbone",
    "describe_entry",
    "get",
    "names",
    "register",
    "specs",
    "resolve_weights",
]


def resolve_weights(entry, base_dir: Path | None = None) -> tuple[str | None, str]:
    """(what the builder gets, a fingerprint of the weights) for a study-file backbone entry."""
    if entry.path is not None:
        path = _resolve(entry.path, base_dir)
        if not path.is_file():
            raise UserError(f"backbone {entry.name!r}: the Keras file {str(path)!r} does not exist")
        return str(path), "keras-file:" + file_sha256(path)
    spec = get(entry.name)
    w = entry.weights
    if w == "default":
        w = spec.default_weights
    if w is None or str(w).lower() == "none":
        return None, "random"
    if spec.modality == "text":
        from tlsearch.backbones.text import resolve_text_weights

        return resolve_text_weights(spec, str(w), base_dir)
    if w in spec.weight_names:
        if spec.local_weights is not None:
            try:
                p = Path(spec.local_weights(w))
            except FileNotFoundError as e:
                raise UserError(f"backbone {entry.name!r}: {e}") from None
            return str(p), "sha256:" + file_sha256(p)
        return str(w), f"{spec.family}:{spec.name}:{w}"
    path = _resolve(w, base_dir)
    if not path.is_file():
        expected = ", ".join([*spec.weight_names, "none", "a path to a weights file"])
        raise UserError(
            f"backbone {entry.name!r}: `weights: {w}` is neither a file that exists nor one of: {expected}"
        )
    return str(path), "sha256:" + file_sha256(path)


def _resolve(p, base_dir: Path | None) -> Path:
    p = Path(p).expanduser()
    return p if p.is_absolute() or base_dir is None else base_dir / p


def describe_entry(entry) -> dict:
    """Static facts about an entry for messages and metadata, without building it."""
    if entry.path is not None:
        return {"name": entry.name, "modality": "image", "source": str(entry.path)}
    spec = get(entry.name)
    return {
        "name": spec.name,
        "modality": spec.modality,
        "preprocessing": spec.preprocessing,
        "default_size": spec.default_size,
    }


def build_backbone(entry, image_size: int, *, seed: int = 0, base_dir: Path | None = None,
                   options: dict | None = None) -> Backbone:
    """Build the backbone named by a study-file entry, ready to freeze, unfreeze and cut."""
    import keras

    weights, fingerprint = resolve_weights(entry, base_dir)
    if weights is None:
        fingerprint = f"random:seed={seed}"
        keras.utils.set_random_seed(seed)
    if entry.path is not None:
        from tlsearch.backbones.keras_file import build_from_keras_file

        model, pattern = build_from_keras_file(weights, image_size, entry.preprocessing or "none",
                                               entry.block_ends)
        layer_names = [l.name for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
        blocks = group_blocks(layer_names, pattern) if pattern else _blocks_by_weights(model)
        return Backbone(entry.name, model, blocks, fingerprint, "image")
    spec = get(entry.name)
    if spec.modality == "image" and image_size < spec.min_size:
        raise UserError(f"backbone {spec.name!r} needs images of at least {spec.min_size} px, "
                        f"but `data.image_size` is {image_size}")
    req = BuildRequest(weights=weights, image_size=image_size, seed=seed, options=options or {})
    try:
        model = spec.builder(req)
    except UserError:
        raise
    except Exception as e:  # a download that fails offline, or a weights file of another network
        if weights is None:
            raise  # no weights involved: a bug, keep the traceback
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"backbone {spec.name!r} could not load weights {weights!r}: {reason}. Offline, copy "
            f"the weights in and give their path as `weights:`"
        ) from None
    layer_names = [l.name for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
    if spec.strict_blocks:
        rx = re.compile(spec.blocks)
        layer_names = [n for n in layer_names if rx.match(n)]
    blocks = group_blocks(layer_names, spec.blocks)
    return Backbone(spec.name, model, blocks, fingerprint, spec.modality)


def _blocks_by_weights(model) -> list[list[str]]:
    """Default blocks for a user's network: each layer with weights (BatchNorm aside) closes one."""
    import keras

    blocks, current = [], []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        current.append(layer.name)
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization):
            blocks.append(current)
            current = []
    if current:
        (blocks[-1].extend(current) if blocks else blocks.append(current))
    return blocks
