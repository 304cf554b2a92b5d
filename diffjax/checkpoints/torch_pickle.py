"""PyTorch weight files (``torch.save``) read without torch and without trusting the file.

``read_torch_bin`` / ``load_torch_pickle`` (for nested objects such as ``{"state_dict": ...}``): the zip
format (torch >= 1.6) and the legacy stream format. A restricted unpickler accepts only
``OrderedDict``, torch's tensor / parameter rebuild functions and the storage types; tensors are
rebuilt after the pickle is read, each checked (offset, sizes and strides non-negative ints, extent
within its storage) before its view is built. Zip records must be stored uncompressed, as
``torch.save`` writes them (no decompression bombs); a tensor never has more elements than its
storage. Every problem ends in ONE ``CheckpointFormatError`` naming the file (``weight_files``'s
contract; ``weight_files`` re-exports both readers).
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import pickletools
import struct
import zipfile
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from diffjax.checkpoints.errors import CheckpointFormatError, is_int as _is_int


_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _Refused(Exception):
    """Something in the pickle the restricted unpickler does not rebuild (a message for the user)."""


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_TORCH_STORAGE_DTYPES[name])


class _Storage:
    """One storage record: dtype, element count and (once read) its data as a 1-D array."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data: np.ndarray | None = None


class _TensorRef:
    """A tensor as the pickle describes it; built into an array only after validation (``_build``)."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    del requires_grad, backward_hooks, metadata
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    del requires_grad, backward_hooks
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    del requires_grad, backward_hooks, state
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds a torch pickle into dicts / lists / ``_TensorRef``s; refuses every global it does not know."""

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    }

    def __init__(self, fileobj, storage_for):
        super().__init__(fileobj)
        self._storage_for = storage_for  # (stype, key, numel) -> _Storage
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return _StorageType(name)
        raise _Refused(f"the pickle asks for {module}.{name}")

    def persistent_load(self, pid):
        # zip: ('storage', type, key, location, numel); legacy: (..., numel, view_metadata)
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and _is_int(pid[4]) and pid[4] >= 0):
            raise _Refused(f"unrecognised storage reference {pid!r:.100}")
        if len(pid) == 6 and pid[5] is not None:
            raise _Refused("a legacy storage view (pre-0.4 torch), which diffjax does not rebuild")
        stype, key, numel = pid[1], pid[2], pid[4]
        st = self.storages.get(key)
        if st is None:
            st = self.storages[key] = self._storage_for(stype, key, numel)
        elif st.dtype != stype.dtype or st.numel != numel:
            raise _Refused(f"storage {key!r} is referenced with two different types / sizes")
        return st


def _build(ref: _TensorRef, where: str) -> np.ndarray:
    """Validated numpy copy of one tensor view: every index it touches lies inside its storage."""
    st, off, size, stride = ref.storage, ref.offset, ref.size, ref.stride
    if not isinstance(st, _Storage) or st.data is None:
        raise _Refused(f"tensor {where}: its storage is not a storage record of the file")
    if not (_is_int(off) and isinstance(size, tuple) and isinstance(stride, tuple)
            and all(_is_int(s) for s in size) and all(_is_int(s) for s in stride) and len(size) == len(stride)):
        raise _Refused(f"tensor {where}: offset / size / stride are not integers of matching rank "
                       f"(offset {off!r:.40}, size {size!r:.80}, stride {stride!r:.80})")
    if off < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise _Refused(f"tensor {where}: negative offset, size or stride (offset {off}, size {list(size)}, stride {list(stride)})")
    numel = math.prod(size)
    if numel == 0:
        if off > st.numel:
            raise _Refused(f"tensor {where}: offset {off} beyond its storage of {st.numel} elements")
        return np.empty(size, st.dtype)
    last = off + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= st.numel:
        raise _Refused(f"tensor {where}: size {list(size)}, stride {list(stride)} at offset {off} reaches element "
                       f"{last}, beyond its storage of {st.numel} elements")
    if numel > st.numel:
        raise _Refused(f"tensor {where}: {numel} elements from a storage of {st.numel} (an expanded / broadcast "
                       "view); re-save the tensor with .contiguous()")
    item = st.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(st.data[off:], shape=size, strides=tuple(s * item for s in stride),
                                           writeable=False)
    return np.array(view)  # contiguous copy


def _materialise(obj, where: str):
    """Replaces every ``_TensorRef`` in dicts / lists / tuples by its validated array."""
    if isinstance(obj, _TensorRef):
        return _build(obj, where)
    if isinstance(obj, Mapping):
        return {k: _materialise(v, f"{where}.{k}" if where else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, (_Storage, _StorageType)):
        raise _Refused(f"{where or 'the top level'} is a bare storage, not a tensor")
    return obj


def _storage_array(raw: bytes | memoryview, dtype: np.dtype, little: bool, numel: int, what: str) -> np.ndarray:
    if len(raw) != numel * dtype.itemsize:
        raise _Refused(f"{what} holds {len(raw)} bytes but its reference says {numel} x {dtype} = "
                       f"{numel * dtype.itemsize} bytes")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<" if little else ">")).astype(dtype, copy=False)


def _load_zip(file: str, zf: zipfile.ZipFile):
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
        raise _Refused(f"a zip file with {len(pkl)} data.pkl records (a torch.save zip has one)")
    prefix = pkl[0][: -len("data.pkl")]
    little = True
    if prefix + "byteorder" in names:
        bo = zf.read(prefix + "byteorder").strip()
        if bo not in (b"little", b"big"):
            raise _Refused(f"byteorder record {bo[:20]!r} is neither 'little' nor 'big'")
        little = bo == b"little"
    size = os.path.getsize(file)
    for info in zf.infolist():
        if info.compress_type != zipfile.ZIP_STORED or info.file_size > size:
            raise _Refused(f"zip record {info.filename!r} is compressed or larger than the file "
                           "(torch.save stores records uncompressed)")

    def storage_for(stype, key, numel):
        name = f"{prefix}data/{key}"
        if name not in names:
            raise _Refused(f"the pickle references storage {key!r}, which has no record {name!r}")
        st = _Storage(key, stype.dtype, numel)
        st.data = _storage_array(zf.read(name), stype.dtype, little, numel, f"storage record {name!r}")
        return st

    raw = zf.read(pkl[0])
    _scan_pickle(io.BytesIO(raw))
    return _RestrictedUnpickler(io.BytesIO(raw), storage_for).load()


def _load_legacy(f) -> Any:
    """torch's pre-1.6 stream format: magic, protocol, sys_info, the object, storage keys, raw storages."""

    def plain(what):
        try:
            return _PlainUnpickler(f.scanned()).load()
        except _Refused:
            raise
        except Exception as e:  # noqa: BLE001  (truncated / garbage pickle)
            raise _Refused(f"its {what} is not a valid pickle ({type(e).__name__}: {e})") from None

    try:
        magic = plain("magic number")
    except _Refused:
        magic = None
    if magic != _LEGACY_MAGIC:
        raise _Refused("neither a zip archive (torch >= 1.6) nor a legacy torch file (wrong magic number)")
    if plain("protocol version") != _LEGACY_PROTOCOL:
        raise _Refused("a legacy torch file with an unknown protocol version")
    if not isinstance(plain("system info"), dict):
        raise _Refused("a legacy torch file whose system info is not a dict")
    little = True  # torch writes legacy storages (and their sizes) little-endian on every host
    unpickler = _RestrictedUnpickler(f.scanned(), lambda stype, key, numel: _Storage(key, stype.dtype, numel))
    obj = unpickler.load()
    keys = plain("storage key list")
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)
            and sorted(keys) == sorted(unpickler.storages) and len(set(keys)) == len(keys)):
        raise _Refused("the storage key list does not match the storages the pickle references")
    for key in keys:
        st = unpickler.storages[key]
        head = f.read(8)
        if len(head) != 8:
            raise _Refused(f"the file ends before storage {key!r} (truncated)")
        (numel,) = struct.unpack("<q" if little else ">q", head)
        if numel != st.numel:
            raise _Refused(f"storage {key!r} records {numel} elements, the pickle says {st.numel}")
        raw = f.read(numel * st.dtype.itemsize)
        st.data = _storage_array(raw, st.dtype, little, numel, f"storage {key!r} (truncated?)")
    return obj


_MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"}


def _scan_pickle(f) -> None:
    """Walks one pickle's opcodes (pure Python, reads bounded by the file) before it is unpickled.

    CPython's unpickler sizes its memo table from the index in a PUT / GET opcode, so one corrupt index
    makes it allocate gigabytes; a pickler numbers its memo entries 0, 1, 2, ..., so an index larger than
    the number of opcodes read so far can only be corruption.
    """
    n = 0
    try:
        for op, arg, _ in pickletools.genops(f):
            n += 1
            if op.name in _MEMO_OPS and not (isinstance(arg, int) and 0 <= arg <= n):
                raise _Refused(f"a corrupt pickle: memo index {arg!r:.30} after {n} opcodes")
            if op.name == "STOP":
                return
    except _Refused:
        raise
    except Exception as e:  # noqa: BLE001  (unknown opcode, truncated argument, ...)
        raise _Refused(f"a corrupt pickle ({type(e).__name__}: {str(e)[:120]})") from None
    raise _Refused("a truncated pickle (no STOP opcode)")


class _BoundedReader:
    """A file view whose reads never exceed what is left of the file: a corrupt length in a pickle opcode
    (BINUNICODE, LONG4, ...) or a storage header then fails at once instead of allocating gigabytes."""

    def __init__(self, f, size: int):
        self._f, self._size = f, size

    def _check(self, n: int) -> None:
        left = self._size - self._f.tell()
        if n > left:
            raise EOFError(f"a length field asks for {n} bytes at offset {self._f.tell()} but only {left} remain "
                           "(truncated or corrupt)")

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return self._f.read()
        self._check(n)
        return self._f.read(n)

    def readinto(self, b) -> int:
        self._check(len(b))
        return self._f.readinto(b)

    def readline(self, n: int = -1) -> bytes:
        return self._f.readline(n)

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._f.seek(pos, whence)

    def scanned(self) -> "_BoundedReader":
        """Checks the pickle that starts here with ``_scan_pickle`` and rewinds to its start."""
        pos = self.tell()
        _scan_pickle(self)
        self.seek(pos)
        return self


class _PlainUnpickler(pickle.Unpickler):
    """For the legacy header pickles: plain data only, no globals at all."""

    def find_class(self, module, name):
        raise _Refused(f"the pickle header asks for {module}.{name}")

    def persistent_load(self, pid):
        raise _Refused("the pickle header references a storage")


def load_torch_pickle(file: str) -> Any:
    """The object a ``torch.save`` file holds, tensors as numpy arrays, read without torch and without trust.

    Handles the zip format (torch >= 1.6) and the legacy stream format. Raises ``CheckpointFormatError``
    naming the file and the problem for anything else.
    """
    file = os.fspath(file)
    size = os.path.getsize(file)
    if size == 0:
        raise CheckpointFormatError(file, "the file is empty (0 bytes); a torch weight file was expected.")
    try:
        with open(file, "rb") as f:
            head = f.read(4)
        if head == b"PK\x03\x04" and not zipfile.is_zipfile(file):
            raise _Refused("a damaged zip archive (the torch >= 1.6 format) without its central directory; the "
                           "file is truncated or corrupt")
        if zipfile.is_zipfile(file):
            with zipfile.ZipFile(file) as zf:
                obj = _load_zip(file, zf)
        else:
            with open(file, "rb") as f:
                obj = _load_legacy(_BoundedReader(f, size))
        return _materialise(obj, "")
    except _Refused as e:
        raise CheckpointFormatError(
            file, f"cannot read this PyTorch file: {e}. diffjax rebuilds only tensors in (nested) dicts and never "
            "runs code from a weight file; if the file is yours, re-save its state_dict (or save it as safetensors "
            "with transformers' save_pretrained / safetensors.torch.save_file).") from None
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, OverflowError, UnicodeDecodeError, RecursionError, struct.error, NotImplementedError,
            OSError) as e:  # not MemoryError: validation must make allocation bounded, and the fuzz tests check it
        if isinstance(e, CheckpointFormatError):
            raise
        raise CheckpointFormatError(
            file, f"corrupt or truncated PyTorch file ({type(e).__name__}: {str(e)[:200]}).") from None


def read_torch_bin(file: str) -> dict[str, np.ndarray]:
    """A ``torch.save``-d state_dict as ``{key: numpy array}``, without torch (zip and legacy formats)."""
    obj = load_torch_pickle(file)
    if not (isinstance(obj, Mapping) and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())):
        raise CheckpointFormatError(os.fspath(file), "the pickle is not a flat state_dict {name: tensor}; found "
                                    f"a {type(obj).__name__}.")
    return dict(obj)
