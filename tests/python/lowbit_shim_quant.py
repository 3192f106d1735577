"""A small ctypes wrapper over tests/python/shim/quantize_shim.cpp: numpy in, numpy out.

    from lowbit_shim_quant import QuantShim
    qs = QuantShim(shim)                       # shim: the conftest fixture's ctypes.CDLL
    q = qs.quantize("int4:block32:asym", x)     # x: a float32 / float16 / bfloat16 array
    y = qs.dequantize(q)                        # float32, like x's shape
    q = qs.quantize("int8:channel:asym", x, scale=s, zero=z)   # static: given scales

Parts come back as raw numpy arrays (docs/formats.md has their layouts):

* codes: int8 for int8, uint8 otherwise: fp8 bit patterns, packed 4-bit bytes (flat,
  ceil(n / 2) bytes), or GGUF rows [rows, row bytes]; Quantized.nibbles() unpacks 4-bit
  codes to one uint8 a element and Quantized.int_codes() gives integer codes as int32
  (i4 sign-extended);
* scale: float32 / float16 / bfloat16 values for int and fp8 schemes, uint8 bit patterns for
  NVFP4's e4m3 and MX's e8m0 scales; shaped like lowbit::scale_shape;
* zero: int32 (affine integer schemes), global_scale: float32 [1] (NVFP4).
"""

from __future__ import annotations

import ctypes
import dataclasses

import ml_dtypes
import numpy as np

_FLOAT_CODES = {
    np.dtype(np.float32): 0,
    np.dtype(np.float16): 1,
    np.dtype(ml_dtypes.bfloat16): 2,
    np.dtype(np.float64): 3,
}

# lowbit dtype name -> the numpy dtype the wrapper uses for a part's raw bytes.
_PART_DTYPES = {
    "f64": np.float64,
    "f32": np.float32,
    "f16": np.float16,
    "bf16": ml_dtypes.bfloat16,
    "i32": np.int32,
    "i8": np.int8,
    "u8": np.uint8,
    "i4": np.uint8,
    "u4": np.uint8,
    "f8e4m3fn": np.uint8,
    "f8e5m2": np.uint8,
    "f4e2m1": np.uint8,
    "e8m0": np.uint8,
}
_PACKED = {"i4", "u4", "f4e2m1"}


class LowbitError(RuntimeError):
    """A lowbit::Error (or other exception) raised inside the shim; str() is its what()."""


@dataclasses.dataclass
class PartInfo:
    sizes: tuple  # bytes of codes, scale, zero, global_scale (0 if absent)
    dtypes: tuple  # lowbit dtype names, or None if absent
    scale_shape: tuple


@dataclasses.dataclass
class Quantized:
    scheme: str
    shape: tuple
    info: PartInfo
    codes: np.ndarray
    scale: np.ndarray | None
    zero: np.ndarray | None
    global_scale: np.ndarray | None

    @property
    def code_dtype(self) -> str:
        return self.info.dtypes[0]

    def nibbles(self) -> np.ndarray:
        """4-bit codes, one uint8 per element (low nibble first), in the logical shape."""
        assert self.code_dtype in _PACKED, self.code_dtype
        n = int(np.prod(self.shape, dtype=np.int64))
        b = self.codes.reshape(-1)
        out = np.empty(2 * b.size, np.uint8)
        out[0::2] = b & 0xF
        out[1::2] = b >> 4
        return out[:n].reshape(self.shape)

    def int_codes(self) -> np.ndarray:
        """Integer codes as int32 in the logical shape (i4 sign-extended)."""
        cd = self.code_dtype
        if cd == "i4":
            return ((self.nibbles().astype(np.int32) ^ 8) - 8).astype(np.int32)
        if cd == "u4":
            return self.nibbles().astype(np.int32)
        return self.codes.reshape(self.shape).astype(np.int32)


def pack_nibbles(nibbles: np.ndarray) -> np.ndarray:
    """Packs 4-bit codes (any shape, row-major) low nibble first; an odd count leaves the
    last byte's high nibble 0."""
    flat = np.asarray(nibbles, np.uint8).reshape(-1) & 0xF
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


class QuantShim:
    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        p, i64p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64)
        lib.lowbit_shim_quantize.argtypes = [
            ctypes.c_char_p, ctypes.c_int, p, i64p, ctypes.c_int, ctypes.c_int, p, p, p, p
        ]
        lib.lowbit_shim_quantize.restype = ctypes.c_int
        lib.lowbit_shim_dequantize.argtypes = [
            ctypes.c_char_p, i64p, ctypes.c_int, p, p, p, p, ctypes.c_int, p
        ]
        lib.lowbit_shim_dequantize.restype = ctypes.c_int
        lib.lowbit_shim_fake_quantize.argtypes = [
            ctypes.c_char_p, ctypes.c_int, p, i64p, ctypes.c_int, p
        ]
        lib.lowbit_shim_fake_quantize.restype = ctypes.c_int
        lib.lowbit_shim_part_sizes.argtypes = [ctypes.c_char_p, i64p, ctypes.c_int, i64p]
        lib.lowbit_shim_part_sizes.restype = ctypes.c_int
        lib.lowbit_shim_part_info.argtypes = [
            ctypes.c_char_p, i64p, ctypes.c_int, i64p, ctypes.c_char_p, ctypes.c_int64, i64p,
            ctypes.POINTER(ctypes.c_int),
        ]
        lib.lowbit_shim_part_info.restype = ctypes.c_int
        lib.lowbit_shim_scheme_info.argtypes = [
            ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_int)
        ]
        lib.lowbit_shim_scheme_info.restype = ctypes.c_int
        lib.lowbit_shim_quantize_last_error.argtypes = []
        lib.lowbit_shim_quantize_last_error.restype = ctypes.c_char_p

    # ---- helpers ------------------------------------------------------------------------

    def _check(self, rc: int):
        if rc != 0:
            raise LowbitError(self.lib.lowbit_shim_quantize_last_error().decode())

    @staticmethod
    def _shape(shape):
        shape = tuple(int(d) for d in shape)
        arr = (ctypes.c_int64 * max(1, len(shape)))(*shape)
        return shape, arr

    @staticmethod
    def _ptr(a: np.ndarray | None):
        return None if a is None else a.ctypes.data_as(ctypes.c_void_p)

    # ---- API ----------------------------------------------------------------------------

    def scheme_info(self, scheme: str) -> tuple[str, int, int]:
        """(canonical text form, qmin, qmax) of a scheme; raises LowbitError if it does not
        parse."""
        buf = ctypes.create_string_buffer(256)
        q = (ctypes.c_int * 2)()
        self._check(self.lib.lowbit_shim_scheme_info(scheme.encode(), buf, 256, q))
        return buf.value.decode(), q[0], q[1]

    def part_sizes(self, scheme: str, shape) -> tuple:
        shape, arr = self._shape(shape)
        sizes = (ctypes.c_int64 * 4)()
        self._check(self.lib.lowbit_shim_part_sizes(scheme.encode(), arr, len(shape), sizes))
        return tuple(sizes)

    def info(self, scheme: str, shape) -> PartInfo:
        shape, arr = self._shape(shape)
        sizes = (ctypes.c_int64 * 4)()
        names = ctypes.create_string_buffer(128)
        ss = (ctypes.c_int64 * 8)()
        nd = ctypes.c_int()
        self._check(
            self.lib.lowbit_shim_part_info(
                scheme.encode(), arr, len(shape), sizes, names, 128, ss, ctypes.byref(nd)
            )
        )
        dtypes = tuple(None if n == "-" else n for n in names.value.decode().split(","))
        return PartInfo(tuple(sizes), dtypes, tuple(ss[i] for i in range(nd.value)))

    def _empty_parts(self, scheme: str, shape: tuple, info: PartInfo):
        n = int(np.prod(shape, dtype=np.int64))
        parts = []
        for k, (size, dt) in enumerate(zip(info.sizes, info.dtypes)):
            if dt is None or size == 0:
                parts.append(None)
                continue
            a = np.zeros(size // np.dtype(_PART_DTYPES[dt]).itemsize, _PART_DTYPES[dt])
            if k == 0 and dt not in _PACKED and not scheme_is_gguf(info):
                a = a.reshape(shape) if n == a.size else a
            elif k in (1, 2):
                a = a.reshape(info.scale_shape)
            parts.append(a)
        if scheme_is_gguf(info) and parts[0] is not None:
            rows = n // shape[-1] if shape and shape[-1] else 0
            parts[0] = parts[0].reshape(rows, -1) if rows else parts[0]
        return parts

    def _given(self, a, dt: str, shape: tuple) -> np.ndarray:
        a = np.ascontiguousarray(np.asarray(a), dtype=_PART_DTYPES[dt])
        return a.reshape(shape)

    def quantize(
        self, scheme: str, x: np.ndarray, scale=None, zero=None, global_scale=None
    ) -> Quantized:
        """Quantizes x (float32, float16, bfloat16 or float64) with `scheme`: dynamic, or
        static when any of scale / zero / global_scale is given (then every part the scheme
        has must be given; NVFP4 takes global_scale alone)."""
        x = np.ascontiguousarray(x)
        code = _FLOAT_CODES[x.dtype]
        shape, arr = self._shape(x.shape)
        info = self.info(scheme, shape)
        codes, sc, zp, gs = self._empty_parts(scheme, shape, info)
        given = scale is not None or zero is not None or global_scale is not None
        if given:
            if scale is not None:
                sc = self._given(scale, info.dtypes[1], info.scale_shape)
            if zero is not None:
                zp = self._given(zero, "i32", info.scale_shape)
            if global_scale is not None:
                gs = self._given(global_scale, "f32", (1,))
        self._check(
            self.lib.lowbit_shim_quantize(
                scheme.encode(), code, self._ptr(x), arr, len(shape), int(given),
                self._ptr(codes), self._ptr(sc), self._ptr(zp), self._ptr(gs),
            )
        )
        return Quantized(scheme, shape, info, codes, sc, zp, gs)

    def dequantize(self, q: Quantized, dtype=np.float32) -> np.ndarray:
        """Dequantizes q's parts (any contents: they need not come from quantize)."""
        shape, arr = self._shape(q.shape)
        out = np.empty(shape, dtype)
        parts = [
            None if a is None else np.ascontiguousarray(a)
            for a in (q.codes, q.scale, q.zero, q.global_scale)
        ]
        self._check(
            self.lib.lowbit_shim_dequantize(
                q.scheme.encode(), arr, len(shape), *[self._ptr(a) for a in parts],
                _FLOAT_CODES[np.dtype(dtype)], self._ptr(out),
            )
        )
        return out

    def make(self, scheme: str, shape, codes, scale=None, zero=None, global_scale=None):
        """A Quantized from given parts (for dequantizing foreign codes)."""
        shape = tuple(int(d) for d in shape)
        info = self.info(scheme, shape)
        codes = np.ascontiguousarray(codes)
        sc = None if scale is None else self._given(scale, info.dtypes[1], info.scale_shape)
        zp = None if zero is None else self._given(zero, "i32", info.scale_shape)
        gs = None if global_scale is None else self._given(global_scale, "f32", (1,))
        assert codes.nbytes == info.sizes[0], (codes.nbytes, info.sizes)
        return Quantized(scheme, shape, info, codes, sc, zp, gs)

    def fake_quantize(self, scheme: str, x: np.ndarray) -> np.ndarray:
        """lowbit::fake_quantize: dynamic quantize then dequantize, in x's dtype."""
        x = np.ascontiguousarray(x)
        shape, arr = self._shape(x.shape)
        out = np.empty_like(x)
        self._check(
            self.lib.lowbit_shim_fake_quantize(
                scheme.encode(), _FLOAT_CODES[x.dtype], self._ptr(x), arr, len(shape),
                self._ptr(out),
            )
        )
        return out


def scheme_is_gguf(info: PartInfo) -> bool:
    """GGUF schemes have codes only (u8 rows; the scales live inside the blocks)."""
    return info.dtypes[1] is None and info.dtypes[0] == "u8" and not info.scale_shape
