"""Modalities: the one place that answers every image-vs-text question.

A :class:`Modality` says how a study of its kind of input computes and caches features (its
:class:`~tlsearch.train.features.BackboneSource`), what an exported model takes and how it is
served, and what ``predict`` accepts. Adding a modality (audio, say) is one module here with one
:func:`register` call, imported below, plus its data format (:mod:`tlsearch.data`) and its
backbones; or the same module in an installed package, named in the ``tlsearch.modalities``
entry-point group. The registry and the base class live in :mod:`~tlsearch.modalities.registry`,
which imports no modality.
"""

from __future__ import annotations

from tlsearch.errors import UserError
from tlsearch.modalities.registry import InputItem, Modality, failing, get, names, register

# Importing the modalities registers them.
from tlsearch.modalities import image, text  # noqa: E402, F401

__all__ = ["Modality", "InputItem", "failing", "register", "get", "modality_of", "names"]


def modality_of(entries: list) -> Modality:
    """The modality of a study's backbones; image and text backbones cannot share one study."""
    from tlsearch.backbones import spec_for

    kinds = {spec_for(e).modality for e in entries}
    if len(kinds) > 1:
        listed = ", ".join(f"{e.name} ({spec_for(e).modality})" for e in entries)
        raise UserError(f"`backbones`: image and text backbones cannot share one study ({listed})")
    return get(kinds.pop())
