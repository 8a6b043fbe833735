"""metadata.json checked like the files it lists: an edited one is refused, naming the field.

The files of an export are covered by the SHA-256 that ``metadata.json`` records for each of them,
but the predictor also acts on what ``metadata.json`` itself says: the order of ``classes`` names
the model's outputs, ``input`` says how pictures are resized, ``decision`` holds a screening
objective's threshold. An edit there (the class order reversed, say) changes every label and loss
without a word, so the exporter seals the content: :data:`SEAL_KEY` holds the SHA-256 of each
top-level field's canonical JSON (sorted keys, no spaces), and :func:`check_seal` refuses a
``metadata.json`` whose fields differ from their seal, naming them.

It guards against edits and damage, not against someone who recomputes the seal: the files'
checksums live in the same ``metadata.json``, and are no stronger.

Exports written before the seal (``format_version`` 1) have none; they still load, with a one-line
note. From ``format_version`` 2 a missing seal is itself an edit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Mapping

from tlsearch.errors import UserError

__all__ = ["SEAL_KEY", "SEALED_FROM", "canonical_digest", "seal", "check_seal"]

#: the field of metadata.json that holds the digests of every other field
SEAL_KEY = "content_sha256"
#: the first ``format_version`` whose metadata.json is sealed
SEALED_FROM = 2


def canonical_digest(value: Any) -> str:
    """SHA-256 of ``value`` as canonical JSON: what was written, whatever the indentation or the
    order of keys, but not the order of list items (classes) or any value."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata`` as it will be read back from JSON, with :data:`SEAL_KEY` added (last)."""
    plain = json.loads(json.dumps({k: v for k, v in metadata.items() if k != SEAL_KEY}))
    plain[SEAL_KEY] = {k: canonical_digest(v) for k, v in plain.items()}
    return plain


def _changed(metadata: Mapping[str, Any], sealed: Mapping[str, Any]) -> list[str]:
    """The fields that differ from their seal: edited, added or removed."""
    fields = (set(metadata) - {SEAL_KEY}) | set(sealed)
    out = []
    for k in sorted(fields):
        if k not in metadata:
            out.append(f"`{k}` (removed)")
        elif k not in sealed:
            out.append(f"`{k}` (added)")
        elif canonical_digest(metadata[k]) != sealed[k]:
            out.append(f"`{k}`")
    return out


def check_seal(metadata: Mapping[str, Any], path: str | Path,
               note: Callable[[str], None]) -> None:
    """Refuse (:class:`UserError`) a ``metadata.json`` at ``path`` whose content is not what the
    export wrote; ``note`` hears one line for an export written before content was sealed."""
    sealed = metadata.get(SEAL_KEY)
    version = metadata.get("format_version")
    if sealed is None and not (isinstance(version, int) and version >= SEALED_FROM):
        note(f"note: {str(path)!r} was written before tlsearch checked metadata.json's own "
             f"content (classes, input, decision rule): only the files are verified; export "
             f"again to have it checked")
        return
    if not isinstance(sealed, dict):
        raise UserError(f"{str(path)!r} has no valid `{SEAL_KEY}` although its format_version "
                        f"is {version}: metadata.json was edited after export; export it again")
    changed = _changed(metadata, sealed)
    if changed:
        raise UserError(f"{str(path)!r} was edited after export: {', '.join(changed)} differ from "
                        f"what the export wrote (checked by `{SEAL_KEY}`), so its labels, "
                        f"inputs or figures cannot be trusted; undo the edit or export it again")
