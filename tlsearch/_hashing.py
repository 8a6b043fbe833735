"""SHA-256 of files: weights files, artifacts and exports can be large, so never read whole.

The digests key the feature cache and the checksums in ``metadata.json`` and artifact records that
users have on disk: they are the plain SHA-256 of the file's bytes, however it is read.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["sha256_file"]


def sha256_file(path: str | Path) -> str:
    """The hex SHA-256 of a file's bytes, read in chunks by :func:`hashlib.file_digest`."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
