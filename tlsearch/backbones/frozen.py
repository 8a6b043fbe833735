"""What the frozen part of a backbone computes from: ONE declaration, read by both the feature
cache's key and the fingerprint a study stores to refuse a resume that changed it.

:class:`FrozenPart` lists every input of the frozen computation: which network and weights, how
inputs are scaled, where the network is cut, its build options, the input size and the resize,
the data, and the libraries that run it. The cache key is a hash of all of it
(:meth:`FrozenPart.key_parts`); a study's stored fingerprint (:mod:`tlsearch.search.resume`) takes the
fields whose ``fingerprint`` metadata names a key (:meth:`FrozenPart.fingerprint`). A field added here
changes both at once; tests flip each field and check that the key changes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from typing import Any

__all__ = ["FrozenPart", "frozen_part", "FEATURE_VERSION", "RESIZE"]

#: bump when the way frozen outputs are computed changes (the same inputs give other numbers)
FEATURE_VERSION = 1
#: how every image reaches ``data.image_size`` (:func:`tlsearch.data.images.resize_pixels`)
RESIZE = "bilinear, antialiased, rounded to whole pixel values"


def _fingerprint(key: str | None, why: str = "") -> Any:
    """Field metadata: the key of a study's fingerprint the field is stored under (``{name}``: the
    backbone's), or None with the reason it is not part of a study's fingerprint."""
    return field(metadata={"fingerprint": key, "why": why})


@dataclass(frozen=True)
class FrozenPart:
    """Everything that changes what the frozen part of one backbone entry computes."""

    #: the family and registered name (a ``.keras`` file: its entry's name)
    backbone: str = _fingerprint(None, "the fingerprint's keys name the backbone")
    #: the weights' fingerprint: a content hash for files, the name of hub or ImageNet weights,
    #: ``random:seed=N`` for random ones
    weights: str | None = _fingerprint("backbones.{name}.weights")
    #: how raw inputs are scaled before the first layer
    preprocessing: str = _fingerprint("backbones.{name}.preprocessing")
    #: the cut points: the block pattern over layer names (empty: a ``.keras`` file's default,
    #: every layer with weights ends a block)
    block_ends: str = _fingerprint("backbones.{name}.block_ends")
    #: the study-file entry's own build options (a ``.keras`` file's ``preprocessing``)
    build_options: dict = _fingerprint("backbones.{name}.build_options")
    #: build options a trial chooses (text: ``max_length``, ``pooling``)
    trial_options: dict = _fingerprint(None, "search parameters, in the search space's signature")
    image_size: int = _fingerprint("data.image_size")
    resize: str = _fingerprint("data.resize")
    #: the data's fingerprint (None: not known here, as in an export)
    data: str | None = _fingerprint("data")
    #: which output: ``pooled`` or a freeze boundary (``below-top-N``)
    output: str = _fingerprint(None, "every output of the frozen part is its own cache entry")
    #: the libraries that compute it (a third-party backbone's package among them) and
    #: :data:`FEATURE_VERSION`
    versions: dict = _fingerprint(None, "an upgrade changes rounding, not what a trial means; a study "
                                    "stays resumable across one")

    def key_parts(self) -> dict[str, Any]:
        """Everything, for the cache key."""
        return asdict(self)

    def fingerprint(self, name: str) -> dict[str, Any]:
        """The fields that are part of a study's fingerprint, under their keys (an unknown data
        fingerprint left out)."""
        out = {}
        for f in fields(self):
            key = f.metadata["fingerprint"]
            value = getattr(self, f.name)
            if key is not None and not (f.name == "data" and value is None):
                out[key.format(name=name)] = value
        return out


@lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"tlsearch.features": str(FEATURE_VERSION)}
    for package in ("keras", "tensorflow", "keras-hub"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "-"
    return out


def frozen_part(entry: Any, *, weights: str | None, image_size: int, data: str | None,
                seed: int = 0, output: str = "pooled",
                trial_options: dict | None = None) -> FrozenPart:
    """The declaration for study-file backbone ``entry``: ``weights`` is its fingerprint
    (:func:`~tlsearch.backbones.resolve_weights`), ``data`` the data's."""
    from tlsearch.backbones import origin, spec_for

    spec = spec_for(entry)
    if weights == "random":
        weights = f"random:seed={seed}"
    versions = dict(_versions())
    plugin = origin(spec.name) if entry.path is None else None
    if plugin is not None:  # a backbone of another package: its code computes the features too
        versions[plugin[0]] = plugin[1]
    return FrozenPart(
        backbone=f"{spec.family}:{spec.name}", weights=weights, preprocessing=spec.preprocessing,
        block_ends=spec.blocks,
        build_options={f: getattr(entry, f) for f in spec.entry_options},
        trial_options=dict(trial_options or {}), image_size=int(image_size), resize=RESIZE,
        data=data, output=output, versions=versions,
    )
