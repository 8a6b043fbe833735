"""The frozen-feature cache shared by every trial of a study, and by later runs of it.

While a block is frozen and BatchNorm runs in inference mode, what it outputs depends only on the
backbone, its weights, the input size, the preprocessing and the data. So the frozen part of a
network is computed once per study and kept, and every trial trains only what is trainable:

* stage 1 trains the head on the pooled backbone outputs;
* stage 2 trains the unfrozen top blocks and the head on the activations at the *freeze
  boundary*, the input of the lowest unfrozen block.

Both are exact (the same numbers the full network would compute), which the tests check. Random
augmentation changes the inputs every epoch, so a trial that augments runs un-cached.

Entries live in ``<cache dir>/features/<key>/{train,val}.npy``, keyed by a SHA-256 of exactly what
they depend on. The folder never grows past ``max_gb``: the least recently used entries are removed
first, and an entry larger than the whole limit is kept in memory only, with a warning.

Deep boundaries are large (EfficientNet-Lite0's lowest one holds 288 KB per 96-px image, all 17 of
them about 700 KB), so entries above :data:`MMAP_BYTES` are read memory-mapped, and entries computed
together in one forward pass can be *staged*: filled in place in memory-mapped files on disk
(:meth:`FeatureCache.stage`), so that the pass never holds them all in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Literal

import numpy as np

__all__ = ["FeatureCache", "cache_key", "cache_usage", "clear_cache", "check_rows", "rows_differ"]

_MEMORY_LIMIT = 4 << 30  # bytes of features kept in this process (memory-mapped ones not counted)
#: entries larger than this are read memory-mapped: the pages are read as training touches them
MMAP_BYTES = 64 << 20


#: how far a recomputed row may lie from a stored one, relative to the rows' largest value:
#: float32 rounding in another batch is ~1e-6 of it, features computed from anything else differ
#: by far more than this
CHECK_RTOL = 1e-3


def check_rows(n: int) -> np.ndarray:
    """The rows of a split of ``n`` that the read guard recomputes: the first and the last."""
    return np.unique([0, n - 1]) if n else np.zeros(0, np.int64)


def rows_differ(stored: np.ndarray, got: np.ndarray, rtol: float = CHECK_RTOL) -> str | None:
    """Why recomputed rows ``got`` are not the ``stored`` ones (None: they agree)."""
    stored, got = np.asarray(stored, np.float64), np.asarray(got, np.float64)
    if stored.shape != got.shape:
        return f"shape {stored.shape[1:]} stored, {got.shape[1:]} now"
    scale = max(float(np.abs(stored).max(initial=0)), float(np.abs(got).max(initial=0)), 1e-6)
    diff = float(np.abs(stored - got).max(initial=0))
    if not np.isfinite(diff) or diff > rtol * scale:
        return f"largest difference {diff:.3g} on values up to {scale:.3g}"
    return None


def cache_key(**parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _entry_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.glob("*") if f.is_file())


def _in_memory(a: np.ndarray) -> int:
    """Bytes ``a`` holds in this process's memory (a memory-mapped file: none of its own)."""
    return 0 if isinstance(a, np.memmap) else a.nbytes


def cache_usage(root: Path) -> tuple[int, int]:
    """(entries, bytes) in the feature cache under ``root``."""
    d = Path(root) / "features"
    if not d.is_dir():
        return 0, 0
    entries = [e for e in d.iterdir() if e.is_dir()]
    return len(entries), sum(_entry_bytes(e) for e in entries)


def clear_cache(root: Path) -> tuple[int, int]:
    """Remove every cached entry; returns what was removed as (entries, bytes)."""
    n, size = cache_usage(root)
    d = Path(root) / "features"
    if d.is_dir():
        shutil.rmtree(d)
    return n, size


class FeatureCache:
    """Arrays keyed by what they were computed from, in memory and on disk."""

    def __init__(self, root: Path | None, max_bytes: int, *, enabled: bool = True,
                 warn: Callable[[str], None] = print) -> None:
        self.root = Path(root) / "features" if root is not None else None
        self.max_bytes = int(max_bytes)
        self.enabled = enabled
        self.warn = warn
        self._memory: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._staged: dict[str, tuple[Path, str]] = {}
        self.hits = self.misses = 0
        #: entries read from disk that the read guard checked, and those it found wrong
        self.checks = self.rejected = 0

    def get_or_compute(self, key: str, compute: Callable[[], tuple[np.ndarray, np.ndarray]],
                       describe: str = "",
                       check: Callable[[tuple[np.ndarray, np.ndarray]], str | None] | None = None,
                       ) -> tuple[np.ndarray, np.ndarray]:
        """The arrays stored under ``key``, or ``compute()``'s, stored. ``check`` guards a read
        from disk: it recomputes a few stored rows and says why they differ (None: they agree);
        an entry that differs was made for other inputs, and is discarded and computed again."""
        if key in self._memory:
            self._memory.move_to_end(key)
            self.hits += 1
            return self._memory[key]
        arrays = self._read(key)
        if arrays is not None and check is not None:
            self.checks += 1
            why = check(arrays)
            if why is not None:
                self.rejected += 1
                self.warn(f"feature cache: the stored {describe or key} are not what the frozen "
                          f"backbone computes now from the same rows ({why}): they were computed "
                          f"for other inputs under the same key. Discarding them and computing "
                          f"them again.")
                arrays = None
                assert self.root is not None
                shutil.rmtree(self.root / key, ignore_errors=True)
        if arrays is None:
            self.misses += 1
            arrays = compute()
            if self.enabled and not self.contains(key):  # (compute may have staged it)
                self._write(key, arrays, describe)
        else:
            self.hits += 1
        self._remember(key, arrays)
        return arrays

    def contains(self, key: str) -> bool:
        """Whether ``key`` is held, in memory or on disk (without reading it)."""
        if key in self._memory:
            return True
        return self.enabled and self.root is not None and (self.root / key / "meta.json").is_file()

    def put(self, key: str, arrays: tuple[np.ndarray, np.ndarray], describe: str = "") -> None:
        """Keep arrays computed alongside another entry (several boundaries in one forward pass)."""
        if self.enabled:
            self._write(key, arrays, describe)
        self._remember(key, arrays)

    def _remember(self, key: str, arrays: tuple[np.ndarray, np.ndarray]) -> None:
        self._memory[key] = arrays
        while len(self._memory) > 1 and sum(_in_memory(a) + _in_memory(b)
                                            for a, b in self._memory.values()) > _MEMORY_LIMIT:
            self._memory.popitem(last=False)

    def can_stage(self, nbytes: int) -> bool:
        """Whether an entry of ``nbytes`` can be filled in place on disk (:meth:`stage`)."""
        return (self.enabled and self.root is not None and not self._write_failed
                and nbytes <= self.max_bytes)

    def stage(self, key: str, shapes: tuple[tuple, tuple],
              describe: str = "") -> tuple[np.ndarray, np.ndarray]:
        """Writable memory-mapped (train, val) arrays for ``key`` in a hidden folder of the cache:
        :meth:`commit` makes them the entry, :meth:`discard` drops them. Raises ``OSError`` when
        the folder cannot be written."""
        assert self.root is not None
        self.root.mkdir(parents=True, exist_ok=True)
        self._make_room(4 * sum(int(np.prod(s)) for s in shapes))
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        self._staged[key] = (tmp, describe)
        train, val = (np.lib.format.open_memmap(tmp / f"{split}.npy", mode="w+", dtype=np.float32,
                                                shape=tuple(shape))
                      for split, shape in zip(("train", "val"), shapes))
        return train, val

    def commit(self, key: str, arrays: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Store a staged entry (atomically, as :meth:`put` does); returns it memory-mapped."""
        tmp, describe = self._staged.pop(key)
        for a in arrays:
            if isinstance(a, np.memmap):
                a.flush()
        (tmp / "meta.json").write_text(json.dumps({
            "describe": describe, "created": time.time(),
            "train_shape": list(arrays[0].shape), "val_shape": list(arrays[1].shape)}))
        assert self.root is not None
        try:
            os.replace(tmp, self.root / key)
        except OSError:  # another process stored the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
        got = self._read(key, mmap=True)
        if got is None:
            raise OSError(f"feature cache: {describe or key} could not be read back")
        self._remember(key, got)
        return got

    def discard(self) -> None:
        """Drop every staged entry (the forward pass that was filling them failed)."""
        for tmp, _ in self._staged.values():
            shutil.rmtree(tmp, ignore_errors=True)
        self._staged.clear()

    def _read(self, key: str, mmap: bool = False):
        if not self.enabled or self.root is None:
            return None
        d = self.root / key
        try:
            meta = json.loads((d / "meta.json").read_text())
            mode: Literal["r"] | None = "r" if mmap or _entry_bytes(d) > MMAP_BYTES else None
            train = np.load(d / "train.npy", mmap_mode=mode)
            val = np.load(d / "val.npy", mmap_mode=mode)
        except (OSError, ValueError):
            return None
        if list(train.shape) != meta["train_shape"] or list(val.shape) != meta["val_shape"]:
            return None
        os.utime(d / "meta.json")  # mark as recently used
        return train, val

    #: set by the first failed write: the cache is an optimisation, so a folder that is read-only,
    #: full or impossible costs one warning and the run goes on uncached (reads still work)
    _write_failed = False

    def _write(self, key: str, arrays: tuple[np.ndarray, np.ndarray], describe: str) -> None:
        if self.root is None or self._write_failed:
            return
        size = sum(a.nbytes for a in arrays)
        if size > self.max_bytes:
            self.warn(
                f"feature cache: {describe or key} needs {size / 2**20:.0f} MB, more than the whole "
                f"cache limit ({self.max_bytes / 2**20:.0f} MB); kept in memory only. Raise "
                f"`cache.max_gb` to keep it on disk."
            )
            return
        tmp = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._make_room(size)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
            np.save(tmp / "train.npy", arrays[0])
            np.save(tmp / "val.npy", arrays[1])
            (tmp / "meta.json").write_text(json.dumps({
                "describe": describe, "created": time.time(),
                "train_shape": list(arrays[0].shape), "val_shape": list(arrays[1].shape),
            }))
            os.replace(tmp, self.root / key)  # atomic: a reader sees all of an entry or none
        except OSError as e:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if (self.root / key).is_dir():
                return  # another process stored the same entry first
            self._write_failed = True
            self.warn(f"feature cache: cannot write to {str(self.root.parent)!r} "
                      f"({e.strerror or e}); carrying on without the disk cache, so frozen "
                      f"features are computed again by each run. Free space, or set `cache.dir` "
                      f"to a writable folder.")

    def _make_room(self, incoming: int) -> None:
        assert self.root is not None
        entries = [e for e in self.root.iterdir() if e.is_dir() and not e.name.startswith(".")]
        used = sum(_entry_bytes(e) for e in entries)
        if used + incoming <= self.max_bytes:
            return
        entries.sort(key=lambda e: (e / "meta.json").stat().st_mtime if (e / "meta.json").exists() else 0)
        freed = 0
        for e in entries:
            if used - freed + incoming <= self.max_bytes:
                break
            freed += _entry_bytes(e)
            shutil.rmtree(e, ignore_errors=True)
        self.warn(f"feature cache full ({self.max_bytes / 2**30:.1f} GB limit): removed "
                  f"{freed / 2**20:.0f} MB of least recently used features. `tlsearch cache clear` "
                  f"empties it; `cache.max_gb` sets the limit.")
