"""The one place backbones are registered.

Each entry carries what the pipeline needs to know about a pretrained network without building it:
its modality, its own preprocessing, its default input size, how its layers group into blocks (the
units that are unfrozen together) and how to build it. Adding a backbone is one ``register`` call in
one module of this package (imported by the package's ``__init__``), or in an installed package
that names its module in the ``tlsearch.backbones`` entry-point group (see
:mod:`tlsearch._registry`). This module imports no family. Building is deferred: listing or
validating backbones imports no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from tlsearch._registry import Registry
from tlsearch.params import PREPROCESSING_MODES

__all__ = ["BackboneSpec", "BuildRequest", "register", "get", "names", "specs", "origin",
           "PREPROCESSING"]

PREPROCESSING = tuple(PREPROCESSING_MODES)


@dataclass(frozen=True)
class BuildRequest:
    """What a builder is asked for: resolved weights (None = random init), input size, seed."""

    weights: str | None
    image_size: int
    seed: int = 0
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone.

    ``blocks`` is a regular expression over layer names. With one capture group, consecutive layers
    whose names give the same group form a block (``^(block\\d)_`` for VGG). Without a group, each
    matching layer *ends* a block (``^mixed\\d+$`` for InceptionV3). Layers that match nothing join
    the block they sit in, unless ``strict_blocks``: then they are in no block (a text model's
    embeddings, which are not counted when unfreezing encoder layers from the top) and train only
    with ``unfreeze_blocks: all``.
    """

    name: str
    builder: Callable[[BuildRequest], object]
    modality: Literal["image", "text"] = "image"
    preprocessing: str = "none"
    default_size: int = 224
    min_size: int = 32
    blocks: str = ""
    default_weights: str | None = "imagenet"
    family: str = ""
    description: str = ""
    tiny: bool = False
    #: weights values this backbone understands besides a file path and None
    weight_names: tuple[str, ...] = ("imagenet",)
    strict_blocks: bool = False
    #: the family's own weights resolution, ``(spec, weights, base_dir) -> (for the builder,
    #: fingerprint)``, or None for the generic one (names in ``weight_names``, or a file path)
    resolve: Callable[[BackboneSpec, str, Path | None], tuple[str | None, str]] | None = None
    #: the :class:`~tlsearch.backbones.base.Backbone` subclass that freezes and cuts this family
    #: (None: the plain one, cut between image blocks)
    backbone_class: type | None = None
    #: text families: ``(weights as resolved, max_length) -> keras-hub preprocessor layer``
    preprocessor: Callable[[str | None, int], Any] | None = None
    #: extra fields of a study-file entry the builder reads (``BuildRequest.options``)
    entry_options: tuple[str, ...] = ()


_BACKBONES: Registry[BackboneSpec] = Registry("backbone", "tlsearch.backbones")


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone. A name is registered once: a second registration is a bug."""
    if spec.preprocessing not in PREPROCESSING:
        raise ValueError(f"{spec.name}: unknown preprocessing {spec.preprocessing!r}")
    return _BACKBONES.register(spec.name, spec)


def names() -> list[str]:
    return _BACKBONES.names()


def specs() -> list[BackboneSpec]:
    return [_BACKBONES[n] for n in _BACKBONES.names()]


def get(name: str) -> BackboneSpec:
    """The spec registered as ``name``; an unknown name fails (KeyError) listing the close ones."""
    return _BACKBONES[name]


def origin(name: str) -> tuple[str, str] | None:
    """(package, version) of the installed package that registered backbone ``name``; None for
    tlsearch's own."""
    return _BACKBONES.origin(name)
