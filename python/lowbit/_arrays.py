"""Crossing the boundary: dtypes of NumPy (with ml_dtypes) and PyTorch <-> lowbit's dtype
names, callers' arrays -> lowbit.Array (zero-copy, through DLPack), and lowbit.Array ->
the caller's framework (zero-copy where the framework has the dtype)."""

from __future__ import annotations

import sys
from typing import Any

import ml_dtypes
import numpy as np

from . import _lowbit

Array = _lowbit.Array

# ---- dtypes -----------------------------------------------------------------------------------

# NumPy dtype -> lowbit dtype name, for the dtypes NumPy exports through DLPack itself.
_NUMPY_NATIVE = {
    np.dtype(np.float64): "f64",
    np.dtype(np.float32): "f32",
    np.dtype(np.float16): "f16",
    np.dtype(np.int32): "i32",
    np.dtype(np.uint32): "u32",
    np.dtype(np.int16): "i16",
    np.dtype(np.int8): "i8",
    np.dtype(np.uint8): "u8",
}
# ml_dtypes' types, which NumPy cannot export through DLPack: they cross as integers of the
# same width (zero-copy) with the lowbit dtype named beside them.
_NUMPY_ML = {
    np.dtype(ml_dtypes.bfloat16): "bf16",
    np.dtype(ml_dtypes.float8_e4m3fn): "f8e4m3fn",
    np.dtype(ml_dtypes.float8_e5m2): "f8e5m2",
    np.dtype(ml_dtypes.float8_e8m0fnu): "e8m0",
}
# ml_dtypes' 4-bit types hold one element per byte; lowbit packs two per byte (low nibble
# first), so these cross as a packed copy.
_NUMPY_4BIT = {
    np.dtype(ml_dtypes.float4_e2m1fn): "f4e2m1",
    np.dtype(ml_dtypes.int4): "i4",
    np.dtype(ml_dtypes.uint4): "u4",
}
_NAME_TO_NUMPY = {v: k for d in (_NUMPY_NATIVE, _NUMPY_ML, _NUMPY_4BIT) for k, v in d.items()}
_RAW_NUMPY = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}

# PyTorch dtype names (torch.<name>) -> lowbit names; torch is imported only if the caller
# already did.
_TORCH_NAMES = {
    "float64": "f64",
    "float32": "f32",
    "float16": "f16",
    "bfloat16": "bf16",
    "int32": "i32",
    "uint32": "u32",
    "int16": "i16",
    "int8": "i8",
    "uint8": "u8",
    "float8_e4m3fn": "f8e4m3fn",
    "float8_e5m2": "f8e5m2",
    "float8_e8m0fnu": "e8m0",
}
_NAME_TO_TORCH = {v: k for k, v in _TORCH_NAMES.items()}
# Crossed as uint8 bits and re-viewed: PyTorch's DLPack support for these varies by version.
_TORCH_BITS_ONLY = {"f8e4m3fn", "f8e5m2", "e8m0"}


def _torch():
    return sys.modules.get("torch")


def dtype_name(dtype: Any) -> str:
    """lowbit's name of a dtype given as a lowbit name or alias ("bf16", "float32"), a NumPy /
    ml_dtypes dtype or type, or a torch.dtype."""
    if isinstance(dtype, str):
        # lowbit's own names first: NumPy reads "i8" as int64 and "f8" as float64.
        name = _lowbit.canonical_dtype(dtype)
        if name is not None:
            return name
        try:
            d = np.dtype(dtype)  # "<f4", "float8_e4m3fn" (ml_dtypes registers its names)
        except TypeError:
            return dtype  # lowbit reports it with the list of names it takes
        return _NAME_TO_NUMPY_NAME.get(d, dtype)
    torch = _torch()
    if torch is not None and isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
        if name in _TORCH_NAMES:
            return _TORCH_NAMES[name]
        raise TypeError(f"{dtype} has no lowbit equivalent")
    try:
        d = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"not a dtype: {dtype!r}") from None
    name = _NAME_TO_NUMPY_NAME.get(d)
    if name is None:
        raise TypeError(f"NumPy dtype {d} has no lowbit equivalent")
    return name


_NAME_TO_NUMPY_NAME = {**_NUMPY_NATIVE, **_NUMPY_ML, **_NUMPY_4BIT}


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy (or ml_dtypes) dtype of a lowbit dtype name."""
    try:
        return _NAME_TO_NUMPY[name]
    except KeyError:
        raise TypeError(f"lowbit dtype {name} has no NumPy equivalent") from None


# ---- packing 4-bit elements ---------------------------------------------------------------------


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """One 4-bit code per byte (any shape, row-major) -> lowbit's packing: element 2k in the
    low nibble of byte k; an odd count leaves the last high nibble 0."""
    flat = np.ascontiguousarray(codes).view(np.uint8).reshape(-1) & 0xF
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, shape: tuple, dtype=np.uint8) -> np.ndarray:
    """lowbit's packed bytes -> one code per byte in `shape`, viewed as `dtype` (a 1-byte
    dtype: uint8, or ml_dtypes' float4_e2m1fn / int4 / uint4, which keep the code in the low
    nibble)."""
    b = np.asarray(packed, np.uint8).reshape(-1)
    n = int(np.prod(shape, dtype=np.int64))
    out = np.empty(2 * b.size, np.uint8)
    out[0::2] = b & 0xF
    out[1::2] = b >> 4
    out = out[:n]
    if np.dtype(dtype) == np.dtype(ml_dtypes.int4):  # two's complement in the byte
        out = ((out.astype(np.int8) ^ 8) - 8).astype(np.int8)
    return out.view(dtype).reshape(shape)


# ---- in ---------------------------------------------------------------------------------------


def framework(x: Any) -> str:
    """"numpy", "torch" or "array": which kind of object a result should come back as."""
    if isinstance(x, np.ndarray):
        return "numpy"
    torch = _torch()
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    if isinstance(x, Array) or hasattr(x, "__dlpack__"):
        return "array"
    return "numpy"  # lists, scalars, objects with __array__ / __array_interface__


def as_array(x: Any) -> Array:
    """A lowbit.Array over `x`'s memory (NumPy arrays with negative strides, big-endian
    arrays, ml_dtypes' 4-bit types and non-array inputs are copied first)."""
    if isinstance(x, Array):
        return x
    torch = _torch()
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach()
        name = _TORCH_NAMES.get(str(x.dtype).removeprefix("torch."))
        if name in _TORCH_BITS_ONLY:
            return _lowbit.from_dlpack(x.view(torch.uint8), name)
        return _lowbit.from_dlpack(x)
    if not isinstance(x, np.ndarray) and hasattr(x, "__dlpack__"):
        return _lowbit.from_dlpack(x)
    x = np.asarray(x)
    if not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    if any(s < 0 for s in x.strides):
        x = np.ascontiguousarray(x)
    name = _NUMPY_ML.get(x.dtype)
    if name is not None:
        return _lowbit.from_dlpack(x.view(_RAW_NUMPY[x.dtype.itemsize]), name)
    name = _NUMPY_4BIT.get(x.dtype)
    if name is not None:
        return _lowbit.from_dlpack(pack_nibbles(x), name, list(x.shape))
    if x.dtype.hasobject or x.dtype.kind in "USVmM":
        raise TypeError(
            f"lowbit takes numeric arrays (NumPy, PyTorch, DLPack); got {type(x).__name__} "
            f"of dtype {x.dtype}"
        )
    return _lowbit.from_dlpack(x)


# ---- out --------------------------------------------------------------------------------------


def array_numpy(self: Array) -> np.ndarray:
    """This array as a NumPy array over the same memory (bf16 / fp8 / e8m0 as ml_dtypes
    types). CPU arrays only."""
    if self.device != "cpu":
        raise TypeError(
            f"{self!r} lives on {self.device}: NumPy reads host memory; take it with "
            ".torch() or torch.from_dlpack(), or copy it to the host"
        )
    ml = _NAME_TO_NUMPY.get(self.dtype)
    if ml is not None and ml in _NUMPY_ML:
        return np.asarray(self.raw()).view(ml)
    return np.asarray(self)  # __array_interface__: the array keeps `self` alive


def array_dunder_array(self: Array, dtype=None, copy=None) -> np.ndarray:
    a = array_numpy(self)
    if dtype is not None and np.dtype(dtype) != a.dtype:
        if copy is False:
            raise ValueError(f"converting {self!r} to {np.dtype(dtype)} needs a copy")
        return a.astype(dtype)
    return a.copy() if copy else a


def array_torch(self: Array):
    """This array as a torch.Tensor over the same memory (CPU or CUDA)."""
    import torch

    if self.dtype in _TORCH_BITS_ONLY:
        return torch.from_dlpack(self.raw()).view(getattr(torch, _NAME_TO_TORCH[self.dtype]))
    return torch.from_dlpack(self)


def wrap(a: Array, kind: str, packed_as: str | None = None, shape: tuple | None = None):
    """A result Array in the caller's framework. `packed_as` names the packed 4-bit dtype
    whose bytes `a` holds (NumPy then gets ml_dtypes' one-element-per-byte type: a copy)."""
    if kind == "numpy":
        if packed_as is not None:
            return unpack_nibbles(array_numpy(a), shape, numpy_dtype(packed_as))
        return array_numpy(a)
    if kind == "torch":
        return array_torch(a)
    return a
