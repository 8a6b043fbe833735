"""Trial artifacts: the best weights of each finished trial, written atomically and checksummed.

Optuna's file-system store writes straight into the final path, so a worker killed mid-upload
leaves a truncated file that later downloads without complaint. Here a write goes to a temporary
file that is renamed into place (atomic on one file system), and the size and SHA-256 are recorded
on the trial, so export can refuse a file that does not match.

The weights file is an ``.npz`` of the layers that differ from the pretrained backbone at the
trial's best epoch (the head, plus the unfrozen blocks when stage 2 won): kilobytes to a few MB,
where a whole ResNet50 per trial would be 100 MB.

Files are created with the permissions the umask gives any new file (0644 under the usual 022),
as the rest of a study's outputs are, not the 0600 of :func:`tempfile.mkstemp`: colleagues reading
a shared study folder must be able to export from it. A folder that cannot take the weights is
found by :func:`probe_writable` before the first trial, and a write that fails later raises
:class:`~tlsearch.errors.ArtifactWriteError`, which stops the study with one line.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact

from tlsearch._hashing import sha256_file
from tlsearch.errors import ArtifactWriteError, UserError

__all__ = ["AtomicFileSystemArtifactStore", "save_weights", "load_weights", "upload_weights",
           "fetch_weights", "upload_arrays", "fetch_arrays", "probe_writable", "ARTIFACT_ATTR"]

ARTIFACT_ATTR = "tlsearch.artifact"


class AtomicFileSystemArtifactStore(FileSystemArtifactStore):
    """A :class:`FileSystemArtifactStore` whose writes are all-or-nothing."""

    def __init__(self, base_path: str | Path, *, create: bool = True) -> None:
        """``create=False`` for readers (export, report, evaluate): a missing folder stays
        missing, and reading from it fails by artifact, naming it."""
        try:
            if create:
                Path(base_path).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"artifacts folder {str(base_path)!r} cannot be created "
                            f"({e.strerror or e}); set `artifacts` in the study file to a folder "
                            f"that can be") from None
        super().__init__(base_path)
        self.folder = Path(base_path)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        """Write all of an artifact or nothing; ArtifactWriteError names the folder on failure."""
        final = self._get_filepath(artifact_id)
        tmp = None
        try:
            fd, tmp = _create_new(final.parent, ".partial-")
            with os.fdopen(fd, "wb") as f:
                shutil.copyfileobj(content_body, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except OSError as e:
            _remove(tmp)
            raise ArtifactWriteError(
                f"cannot write trial weights to the artifacts folder {str(self.folder)!r} "
                f"({e.strerror or e}); the study stops here. Free space or fix the folder, then "
                f"run the same command again: the study resumes"
            ) from e
        except BaseException:
            _remove(tmp)
            raise


def _create_new(folder: Path, prefix: str) -> tuple[int, Path]:
    """A new file in ``folder``, opened for writing, with the mode the umask gives new files.

    :func:`tempfile.mkstemp` would do, but it always creates files 0600.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        path = Path(folder) / f"{prefix}{secrets.token_hex(8)}"
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue


def _remove(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def probe_writable(path: str | Path) -> None:
    """Check, before the first trial, that the artifacts folder can take files; UserError if not.

    Without this a read-only, full or impossible folder (a path under a file) would surface only
    when the first trial finishes, after its training time was spent. The probe writes and syncs
    64 KiB, so a full disk shows too, then removes the file and any folder it had to create: the
    file system is left as it was.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"artifacts folder {str(folder)!r} is not a folder; set `artifacts` in the "
                        f"study file to a folder")
    missing = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    created: list[Path] = []
    try:
        for d in reversed(missing):
            try:
                d.mkdir()
                created.append(d)
            except FileExistsError:
                pass
        fd, tmp = _create_new(folder, ".probe-")
        try:
            data = memoryview(b"\0" * 65536)
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
            _remove(tmp)
    except OSError as e:
        raise UserError(f"artifacts folder {str(folder)!r} cannot be written ({e.strerror or e}): "
                        f"each trial's weights are kept there. Free space or fix its permissions, "
                        f"or set `artifacts` in the study file to another folder") from None
    finally:
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()


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


def upload_arrays(owner, store: AtomicFileSystemArtifactStore,
                  arrays: dict[str, list[np.ndarray]], file: str) -> dict:
    """Upload named arrays as one ``.npz`` artifact of ``owner`` (a trial, or the study for what
    is made after its trials: a refit, their validation probabilities); returns the record to
    keep (id, size, SHA-256, file name) for :func:`fetch_arrays`."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / file
        save_weights(arrays, path)
        info = {"size": path.stat().st_size, "sha256": sha256_file(path), "file": path.name}
        info["id"] = upload_artifact(artifact_store=store, file_path=str(path),
                                     study_or_trial=owner)
    return info


def fetch_arrays(info: dict, store: AtomicFileSystemArtifactStore,
                 what: str) -> dict[str, list[np.ndarray]]:
    """Download an artifact recorded by :func:`upload_arrays`, refusing a file whose size or
    SHA-256 differ from the record; ``what`` names it in the error (``trial 3: its weights``)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / info["file"]
        try:
            download_artifact(artifact_store=store, artifact_id=info["id"], file_path=str(path))
        except Exception as e:
            raise UserError(f"{what}: the artifact {info['id']} cannot be read ({e})") from None
        size, digest = path.stat().st_size, sha256_file(path)
        if size != info["size"] or digest != info["sha256"]:
            raise UserError(
                f"{what}: the stored file is damaged (size {size} bytes, sha256 {digest[:12]}..., "
                f"but {info['size']} bytes, {info['sha256'][:12]}... were recorded). Refusing to "
                f"use it."
            )
        return load_weights(path.read_bytes())


def upload_weights(trial, store: AtomicFileSystemArtifactStore,
                   weights: dict[str, list[np.ndarray]], *, step: int) -> dict:
    """Upload a trial's best weights and record id, size and SHA-256 on the trial."""
    info = upload_arrays(trial, store, weights, f"trial-{trial.number}-step-{step}.weights.npz")
    info["step"] = step
    trial.set_user_attr(ARTIFACT_ATTR, info)
    return info


def fetch_weights(frozen_trial, store: AtomicFileSystemArtifactStore) -> dict[str, list[np.ndarray]]:
    """Download a trial's weights, refusing a file whose size or SHA-256 differ from the record."""
    info = frozen_trial.user_attrs.get(ARTIFACT_ATTR)
    if not info:
        raise UserError(f"trial {frozen_trial.number} has no stored weights (only COMPLETE trials do)")
    return fetch_arrays(info, store, f"trial {frozen_trial.number}: its weights")
