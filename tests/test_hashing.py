"""File digests stay the plain SHA-256 of the bytes: caches and checksums on disk are keyed by
them."""

from __future__ import annotations

import hashlib

import pytest

from tlsearch._hashing import sha256_file
from tlsearch.backbones.base import file_sha256


@pytest.mark.parametrize("content, digest", [
    (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    # past one 1 MiB chunk, as the weights files and exports are
    (bytes(range(256)) * 4097 + b"tail",
     "1c4d7bde606e473865e8b1fbe8ff182d59285eb43a67e1bde87f8044a11ea84c"),
])
def test_file_digests_are_the_sha256_of_the_bytes(tmp_path, content, digest):
    path = tmp_path / "weights.bin"
    path.write_bytes(content)
    assert hashlib.sha256(content).hexdigest() == digest
    assert sha256_file(path) == digest
    assert sha256_file(str(path)) == digest
    assert file_sha256(path) == digest  # the cached one the backbones use
