"""lowbit.load / load_metadata / save: safetensors and GGUF files through lowbit's io layer
(include/lowbit/io.hpp; the layouts are docs/formats.md's "Files" section).

load maps the file and validates all of it (with the GIL released) before anything is
returned; tensors are views of the mapping (zero-copy, copy-on-write: writes stay in this
process). save writes atomically (temporary file, fsync, rename) with the GIL released.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _arrays, _lowbit
from ._lowbit import Array, QuantizedTensor

# ---- dtypes lowbit has no Dtype for --------------------------------------------------------------

# safetensors dtypes that lowbit reads and writes as raw bytes, and their NumPy / torch types.
_RAW_NUMPY = {
    "BOOL": np.dtype(np.bool_),
    "U16": np.dtype(np.uint16),
    "I64": np.dtype(np.int64),
    "U64": np.dtype(np.uint64),
    "C64": np.dtype(np.complex64),
}
_NUMPY_RAW = {v: k for k, v in _RAW_NUMPY.items()}
_RAW_TORCH = {"BOOL": "bool", "U16": "uint16", "I64": "int64", "U64": "uint64",
              "C64": "complex64"}
_TORCH_RAW = {v: k for k, v in _RAW_TORCH.items()}

_FRAMEWORKS = {"numpy": "numpy", "np": "numpy", "torch": "torch", "pt": "torch"}


def _path(path: Any) -> str:
    try:
        return os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError(f"a path is a str or an os.PathLike, got {type(path).__name__}") from None


def _format(format: str | None, path: str | None = None) -> str | None:
    if format is None:
        if path is None:
            return None
        return "gguf" if path.lower().endswith(".gguf") else "safetensors"
    if format not in ("safetensors", "gguf"):
        raise ValueError(f'format must be "safetensors" or "gguf", got {format!r}')
    return format


def _framework(framework: str) -> str:
    try:
        return _FRAMEWORKS[framework]
    except (KeyError, TypeError):
        raise ValueError(f'framework must be "numpy" or "torch", got {framework!r}') from None


# ---- load -----------------------------------------------------------------------------------------


def _plain(a: Array, st: str, shape: tuple, kind: str) -> Any:
    """A loaded plain tensor (a view of the mapping) in the caller's framework."""
    if kind == "torch":
        import torch

        if st in _RAW_TORCH:  # raw bytes, re-viewed (zero-copy)
            t = torch.from_dlpack(a)
            return t.view(getattr(torch, _RAW_TORCH[st])).reshape(shape)
        return _arrays.array_torch(a)  # F4: packed uint8 bytes, as convert gives torch
    if st in _RAW_NUMPY:
        return _arrays.array_numpy(a).view(_RAW_NUMPY[st]).reshape(shape)
    if st == "F4":  # ml_dtypes' float4_e2m1fn, one per byte: unpacked (a copy)
        return _arrays.wrap(a, "numpy", "f4e2m1", shape)
    return _arrays.array_numpy(a)  # F6_*: their bytes, uint8 [nbytes]


def load(path: Any, *, framework: str = "numpy", format: str | None = None) -> dict[str, Any]:
    """Reads a safetensors or GGUF file: {name: array or QuantizedTensor}, in file order.

    Plain tensors are NumPy arrays (ml_dtypes for bf16 / fp8 / e8m0), or torch tensors with
    framework="torch"; lowbit's quantized tensors (docs/formats.md, "Quantized tensors") and
    GGUF block tensors (q4_K, ...) are QuantizedTensors. Both are views of the file's
    memory mapping (no copy; the mapping lives as long as any of them); writing to them is
    copy-on-write and never changes the file. The format comes from the file's first bytes
    ("GGUF" or not) unless `format` is given. Errors: OSError (FileNotFoundError, ...) for
    the file system, lowbit.CorruptFileError (a ValueError) naming the defect for a
    malformed file, NotImplementedError for GGUF types lowbit does not implement.
    """
    kind = _framework(framework)
    if kind == "torch":
        import torch  # noqa: F401  (fail early, before the file is read)
    fmt, entries, _ = _lowbit._load(_path(path), _format(format), True, False)
    out: dict[str, Any] = {}
    for name, obj, st, shape in entries:
        if isinstance(obj, QuantizedTensor):
            obj._origin = kind
            out[name] = obj
        elif st in _RAW_NUMPY or st.startswith(("F4", "F6")):
            out[name] = _plain(obj, st, shape, kind)
        else:
            out[name] = _arrays.wrap(obj, kind)
    return out


# GGUF value types (gguf_type) and their NumPy dtypes.
_GGUF_U8, _GGUF_I8, _GGUF_U16, _GGUF_I16, _GGUF_U32, _GGUF_I32, _GGUF_F32 = range(7)
_GGUF_BOOL, _GGUF_STRING, _GGUF_ARRAY, _GGUF_U64, _GGUF_I64, _GGUF_F64 = range(7, 13)
_GGUF_NUMPY = {
    _GGUF_U8: np.dtype("<u1"), _GGUF_I8: np.dtype("<i1"), _GGUF_U16: np.dtype("<u2"),
    _GGUF_I16: np.dtype("<i2"), _GGUF_U32: np.dtype("<u4"), _GGUF_I32: np.dtype("<i4"),
    _GGUF_F32: np.dtype("<f4"), _GGUF_U64: np.dtype("<u8"), _GGUF_I64: np.dtype("<i8"),
    _GGUF_F64: np.dtype("<f8"),
}
_NUMPY_GGUF = {v.newbyteorder("="): k for k, v in _GGUF_NUMPY.items()}
_NUMPY_GGUF[np.dtype(np.bool_)] = _GGUF_BOOL


def _decode_strings(raw: bytes, count: int) -> list[str]:
    out, pos = [], 0
    for _ in range(count):
        (n,) = struct.unpack_from("<Q", raw, pos)
        out.append(raw[pos + 8: pos + 8 + n].decode("utf-8"))
        pos += 8 + n
    return out


def _decode_gguf(type_: int, elem: int, count: int, raw: bytes) -> Any:
    if type_ == _GGUF_STRING:
        return raw[8:].decode("utf-8")
    if type_ == _GGUF_BOOL:
        return raw[0] == 1
    if type_ != _GGUF_ARRAY:
        dt = _GGUF_NUMPY[type_]
        return np.frombuffer(raw, dt).astype(dt.newbyteorder("="))[0]
    if elem == _GGUF_STRING:
        return _decode_strings(raw, count)
    if elem == _GGUF_BOOL:
        return np.frombuffer(raw, np.uint8).astype(np.bool_)
    return np.frombuffer(raw, _GGUF_NUMPY[elem]).astype(_GGUF_NUMPY[elem].newbyteorder("="))


def load_metadata(path: Any, *, format: str | None = None) -> dict[str, Any]:
    """A file's metadata, validated like load.

    safetensors: the `__metadata__` strings, without lowbit's own `lowbit.scheme.*` /
    `lowbit.shape.*` entries (load turns those into QuantizedTensors, and save writes them
    again), so save(p2, load(p), load_metadata(p)) copies a file.

    GGUF: every entry with its exact type, so that saving it again writes the same types:
    strings as str, booleans as bool, numbers as NumPy scalars (np.uint32, np.float32, ...),
    arrays as 1-D NumPy arrays (strings: list[str]).
    """
    fmt, _, meta = _lowbit._load(_path(path), _format(format), False, True)
    if fmt == "safetensors":
        return dict(meta)
    return {key: _decode_gguf(t, e, n, raw) for key, t, e, n, raw in meta}


# ---- save -----------------------------------------------------------------------------------------


def _raw_entry(name: str, value: Any) -> tuple | None:
    """(name, uint8 Array of the bytes, safetensors dtype, shape) for arrays of a dtype that
    lowbit has no Dtype for (bool, int64, uint16, uint64, complex64); None otherwise."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        st = _TORCH_RAW.get(str(value.dtype).removeprefix("torch."))
        if st is None:
            return None
        t = value.detach().contiguous()
        return (name, _lowbit.from_dlpack(t.reshape(-1).view(torch.uint8)), st, list(t.shape))
    if isinstance(value, (Array, QuantizedTensor)) or (
            not isinstance(value, np.ndarray) and hasattr(value, "__dlpack__")):
        return None
    a = np.asarray(value)
    st = _NUMPY_RAW.get(a.dtype.newbyteorder("=")) if a.dtype.kind in "buic" else None
    if st is None:
        return None
    a = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False))
    return (name, _lowbit.from_dlpack(a.reshape(-1).view(np.uint8)), st, list(a.shape))


def _encode_scalar(key: str, v: Any) -> tuple[int, bytes]:
    if isinstance(v, (bool, np.bool_)):
        return _GGUF_BOOL, bytes([1 if v else 0])
    if isinstance(v, str):
        b = v.encode("utf-8")
        return _GGUF_STRING, struct.pack("<Q", len(b)) + b
    if isinstance(v, np.generic):
        t = _NUMPY_GGUF.get(v.dtype)
        if t is None:
            raise TypeError(f"GGUF metadata {key!r}: NumPy type {v.dtype} has no GGUF type")
        return t, np.asarray(v, _GGUF_NUMPY[t]).tobytes()
    if isinstance(v, int):
        for t, lo, hi in ((_GGUF_I32, -(2**31), 2**31), (_GGUF_I64, -(2**63), 2**63),
                          (_GGUF_U64, 0, 2**64)):
            if lo <= v < hi:
                return t, np.asarray(v, _GGUF_NUMPY[t]).tobytes()
        raise ValueError(f"GGUF metadata {key!r}: {v} does not fit 64 bits")
    if isinstance(v, float):
        return _GGUF_F32, struct.pack("<f", v)  # gguf-py's choice; np.float64(v) for f64
    raise TypeError(f"GGUF metadata {key!r}: a value is a str, bool, int, float, NumPy scalar, "
                    f"list or 1-D NumPy array, got {type(v).__name__}")


def _encode_gguf(key: str, v: Any) -> tuple:
    """(key, type, elem type, count, value bytes) as GgufKV holds them."""
    if not isinstance(key, str):
        raise TypeError(f"metadata keys are str, got {type(key).__name__}")
    if isinstance(v, np.ndarray):
        if v.ndim != 1:
            raise ValueError(f"GGUF metadata {key!r}: arrays are 1-D, got shape {v.shape}")
        t = _NUMPY_GGUF.get(v.dtype.newbyteorder("=") if v.dtype.kind != "b" else v.dtype)
        if t is None:
            raise TypeError(f"GGUF metadata {key!r}: NumPy dtype {v.dtype} has no GGUF type")
        wire = np.dtype(np.uint8) if t == _GGUF_BOOL else _GGUF_NUMPY[t]
        return key, _GGUF_ARRAY, t, v.size, np.ascontiguousarray(v.astype(wire)).tobytes()
    if isinstance(v, (list, tuple)):
        if not v:
            raise ValueError(f"GGUF metadata {key!r}: an empty list has no element type; give "
                             "an empty NumPy array of the type (np.array([], np.int32))")
        if all(isinstance(e, str) for e in v):
            raw = b"".join(_encode_scalar(key, e)[1] for e in v)
            return key, _GGUF_ARRAY, _GGUF_STRING, len(v), raw
        if all(isinstance(e, (bool, np.bool_)) for e in v):
            return key, _GGUF_ARRAY, _GGUF_BOOL, len(v), bytes(int(bool(e)) for e in v)
        if all(isinstance(e, (int, float, np.integer, np.floating)) and
               not isinstance(e, (bool, np.bool_)) for e in v):
            if all(isinstance(e, (int, np.integer)) for e in v):
                t = _GGUF_I32 if all(-(2**31) <= int(e) < 2**31 for e in v) else _GGUF_I64
            else:
                t = _GGUF_F32
            return key, _GGUF_ARRAY, t, len(v), np.asarray(v, _GGUF_NUMPY[t]).tobytes()
        raise TypeError(f"GGUF metadata {key!r}: a list holds str, bool or numbers of one kind "
                        "(no nested lists)")
    t, raw = _encode_scalar(key, v)
    return key, t, 0, 0, raw


def save(
    path: Any,
    tensors: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
    *,
    format: str | None = None,
    overwrite: bool = True,
) -> None:
    """Writes `tensors` ({name: NumPy array, torch tensor, lowbit.Array or QuantizedTensor})
    to a safetensors file, or a GGUF file when `path` ends in .gguf (or format="gguf").

    Atomic: everything goes to a temporary file next to `path`, which is fsynced and renamed
    into place; on any error nothing is left behind and an existing file is untouched.
    overwrite=False refuses an existing `path` (OSError).

    safetensors: the layout is the reference writer's (safetensors.numpy.save writes the
    same bytes for the same tensors and at most one metadata entry); QuantizedTensors are
    stored as plain tensors plus `lowbit.scheme.NAME` / `lowbit.shape.NAME` metadata, which
    any safetensors reader loads; metadata values are str. GGUF: plain F32 F16 BF16 F64 I8
    I16 I32 I64 tensors of at most 4 dims and GGUF-scheme QuantizedTensors (q4_K, ...);
    metadata values are str, bool, int (i32, or i64 if it needs it), float (f32), NumPy
    scalars (their own type), lists and 1-D NumPy arrays. CUDA tensors are copied to the
    host first.
    """
    path = _path(path)
    fmt = _format(format, path)
    if not isinstance(tensors, Mapping):
        raise TypeError(f"save takes a dict of tensors, got {type(tensors).__name__}")
    entries = []
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names are str, got {type(name).__name__} {name!r}")
        if isinstance(value, QuantizedTensor):
            entries.append((name, value, None, None))
            continue
        raw = _raw_entry(name, value)
        if raw is not None:
            entries.append(raw)
            continue
        try:
            entries.append((name, _arrays.as_array(value), None, None))
        except (TypeError, ValueError) as e:
            raise type(e)(f"save: tensor {name!r}: {e}") from None
    st_meta: list[tuple[str, str]] = []
    gguf_meta: list[tuple] = []
    for key, value in (metadata or {}).items():
        if not isinstance(key, str):
            raise TypeError(f"metadata keys are str, got {type(key).__name__} {key!r}")
        if key.startswith(("lowbit.scheme.", "lowbit.shape.")):
            raise ValueError(f"metadata key {key!r} is lowbit's own: save writes it for each "
                             "QuantizedTensor")
        if fmt == "gguf":
            gguf_meta.append(_encode_gguf(key, value))
        elif not isinstance(value, str):
            raise TypeError(f"safetensors metadata values are str; {key!r} is "
                            f"{type(value).__name__}")
        else:
            st_meta.append((key, value))
    _lowbit._save(path, fmt, entries, st_meta, gguf_meta, bool(overwrite))
