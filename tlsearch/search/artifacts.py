"""Trial artifacts: the best weights of each finished trial, written atomically and checksummed.

Optuna's file-system store writes straight into the final path, so a worker killed mid-upload
leaves a truncated file that later downloads without complaint. Here a write goes to a temporary
file that is renamed into place (atomic on one file system), and the size and SHA-256 are recorded
on the trial, so export can refuse a file that does not match.

The weights file is an ``.npz`` of the layers that differ from the pretrained backbone at the
trial's best epoch (the head, plus the unfrozen blocks when stage 2 won): kilobytes to a few MB,
where a whole ResNet50 per trial would be 100 MB.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact

from tlsearch._hashing import sha256_file
from tlsearch.errors import UserError

__all__ = ["AtomicFileSystemArtifactStore", "save_weights", "load_weights", "upload_weights",
           "fetch_weights", "ARTIFACT_ATTR"]

ARTIFACT_ATTR = "tlsearch.artifact"


class AtomicFileSystemArtifactStore(FileSystemArtifactStore):
    """A :class:`FileSystemArtifactStore` whose writes are all-or-nothing."""

    def __init__(self, base_path: str | Path) -> None:
        Path(base_path).mkdir(parents=True, exist_ok=True)
        super().__init__(base_path)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        final = self._get_filepath(artifact_id)
        fd, tmp = tempfile.mkstemp(prefix=".partial-", dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                shutil.copyfileobj(content_body, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def save_weights(weights: dict[str, list[np.ndarray]], path: Path) -> None:
    """Layer name -> weight arrays, as one ``.npz`` (no pickle: loading runs no code)."""
    arrays = {}
    index = {}
    for layer, values in weights.items():
        index[layer] = len(values)
        for i, v in enumerate(values):
            arrays[f"{layer}/{i}"] = np.asarray(v)
    arrays["__index__"] = np.frombuffer(json.dumps(index).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]


def load_weights(source: Path | bytes) -> dict[str, list[np.ndarray]]:
    f = io.BytesIO(source) if isinstance(source, bytes) else source
    with np.load(f, allow_pickle=False) as z:
        index = json.loads(bytes(z["__index__"]).decode())
        return {layer: [z[f"{layer}/{i}"] for i in range(n)] for layer, n in index.items()}


def upload_weights(trial, store: AtomicFileSystemArtifactStore,
                   weights: dict[str, list[np.ndarray]], *, step: int) -> dict:
    """Upload a trial's best weights and record id, size and SHA-256 on the trial."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"trial-{trial.number}-step-{step}.weights.npz"
        save_weights(weights, path)
        info = {"size": path.stat().st_size, "sha256": sha256_file(path), "file": path.name, "step": step}
        info["id"] = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    trial.set_user_attr(ARTIFACT_ATTR, info)
    return info


def fetch_weights(frozen_trial, store: AtomicFileSystemArtifactStore) -> dict[str, list[np.ndarray]]:
    """Download a trial's weights, refusing a file whose size or SHA-256 differ from the record."""
    info = frozen_trial.user_attrs.get(ARTIFACT_ATTR)
    if not info:
        raise UserError(f"trial {frozen_trial.number} has no stored weights (only COMPLETE trials do)")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / info["file"]
        try:
            download_artifact(artifact_store=store, artifact_id=info["id"], file_path=str(path))
        except Exception as e:
            raise UserError(f"trial {frozen_trial.number}: its weights artifact {info['id']} cannot "
                            f"be read ({e})") from None
        size, digest = path.stat().st_size, sha256_file(path)
        if size != info["size"] or digest != info["sha256"]:
            raise UserError(
                f"trial {frozen_trial.number}: the stored weights are damaged (size {size} bytes, "
                f"sha256 {digest[:12]}..., but {info['size']} bytes, {info['sha256'][:12]}... were "
                f"recorded). Refusing to use them."
            )
        return load_weights(path.read_bytes())
