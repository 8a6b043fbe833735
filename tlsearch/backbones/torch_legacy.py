"""Read a PyTorch state dict without PyTorch.

Pretrained vision weights often ship only as ``torch.save`` files. Installing PyTorch (hundreds of MB
to several GB) just to read a few dozen arrays is a poor trade, so this module reads both of
``torch.save``'s formats (the zip archive of PyTorch >= 1.6 and the older sequence of pickles) with
``pickle`` and NumPy alone. The unpickler is restricted to the handful of names a state dict uses:
any other global in the file is refused, so a hostile checkpoint cannot run code.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["load_state_dict"]

_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str) -> None:
        self.dtype = np.dtype(_DTYPES[name])


class _Storage:
    """A storage whose bytes arrive after the pickle (legacy) or from a zip member."""

    def __init__(self, dtype: np.dtype, numel: int) -> None:
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise ValueError("tensor storage was never read: the file is truncated")
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=tuple(s * item for s in self.stride),
        )
        return np.array(view, copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_args):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_args):
    return data


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, f: BinaryIO, storages: dict[str, _Storage], zip_file=None, prefix=""):
        super().__init__(f)
        self._storages = storages
        self._zip = zip_file
        self._prefix = prefix

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a state dict holds only tensors"
            ) from None

    def persistent_load(self, saved_id: Any) -> Any:
        kind, storage_type, key, _location, numel = saved_id[:5]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        if key not in self._storages:
            dtype = storage_type.dtype
            storage = _Storage(dtype, numel)
            if self._zip is not None:
                raw = self._zip.read(f"{self._prefix}data/{key}")
                storage.data = np.frombuffer(raw, dtype=dtype)
            self._storages[key] = storage
        return self._storages[key]


def _tensors_to_numpy(obj: Any) -> dict[str, np.ndarray]:
    return {k: v.to_numpy() for k, v in obj.items() if isinstance(v, _Tensor)}


def _load_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        pkl = next(n for n in zf.namelist() if n.endswith("data.pkl"))
        prefix = pkl[: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        obj = _Unpickler(io.BytesIO(zf.read(pkl)), storages, zf, prefix).load()
    return _tensors_to_numpy(obj)


def _load_legacy(f: BinaryIO) -> dict[str, np.ndarray]:
    magic = _HeaderUnpickler(f).load()
    if magic != 0x1950A86A20F9469CFC6C:
        raise ValueError("not a PyTorch checkpoint (bad magic number)")
    _HeaderUnpickler(f).load()  # protocol version
    _HeaderUnpickler(f).load()  # sys info
    storages: dict[str, _Storage] = {}
    obj = _Unpickler(f, storages).load()
    keys = _HeaderUnpickler(f).load()
    for key in keys:
        storage = storages[key]
        (numel,) = struct.unpack("<q", f.read(8))
        nbytes = numel * storage.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise ValueError("the checkpoint is truncated")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return _tensors_to_numpy(obj)


class _HeaderUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint header")


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return the tensors of a ``torch.save``'d state dict as NumPy arrays, keyed as in the file."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    with open(path, "rb") as f:
        return _load_legacy(f)
