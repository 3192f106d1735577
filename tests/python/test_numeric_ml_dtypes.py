"""lowbit's scalar conversions (include/lowbit/numeric.hpp) against ml_dtypes 0.6 (numpy
for f16), bit for bit, through the ctypes shim tests/python/shim/numeric_shim.cpp.

* every code of every format decodes to the same f32 bits (NaNs included);
* encoding every f32 bit pattern (all 2^32, in chunks of 2^24) gives the same code as
  ml_dtypes for bf16, f8e4m3fn, f8e5m2, f4e2m1 and e8m0;
* f16 (numpy's conversion is ~15x slower) is checked on a dense structured sample: every
  f32 exponent and sign with the low mantissa bits at, next to and away from every f16
  rounding boundary, plus random patterns.

Saturation::finite has no ml_dtypes counterpart; tests/cpp/test_numeric.cpp covers it
against an independent reference (as well as repeating everything here exhaustively).
"""

import ctypes
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import ml_dtypes
import numpy as np
import pytest

# name -> (oracle dtype, code dtype, number of codes)
FORMATS = {
    "f16": (np.float16, np.uint16, 1 << 16),
    "bf16": (ml_dtypes.bfloat16, np.uint16, 1 << 16),
    "f8e4m3fn": (ml_dtypes.float8_e4m3fn, np.uint8, 1 << 8),
    "f8e5m2": (ml_dtypes.float8_e5m2, np.uint8, 1 << 8),
    "f4e2m1": (ml_dtypes.float4_e2m1fn, np.uint8, 1 << 4),
    "e8m0": (ml_dtypes.float8_e8m0fnu, np.uint8, 1 << 8),
}
EXHAUSTIVE = ["bf16", "f8e4m3fn", "f8e5m2", "f4e2m1", "e8m0"]
CHUNK = 1 << 24


class Numeric:
    """Typed wrappers over lowbit_shim_encode / lowbit_shim_decode."""

    def __init__(self, lib: ctypes.CDLL):
        self._enc = lib.lowbit_shim_encode
        self._enc.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                              ctypes.c_int64]
        self._enc.restype = ctypes.c_int
        self._dec = lib.lowbit_shim_decode
        self._dec.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        self._dec.restype = ctypes.c_int

    def encode(self, fmt: str, x: np.ndarray, saturate: bool = False,
               out: np.ndarray | None = None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if out is None:
            out = np.empty(x.shape, dtype=FORMATS[fmt][1])
        assert out.dtype == FORMATS[fmt][1] and out.size == x.size and out.flags.c_contiguous
        rc = self._enc(fmt.encode(), int(saturate), x.ctypes.data, out.ctypes.data, x.size)
        assert rc == 0, f"lowbit_shim_encode({fmt}) failed"
        return out

    def decode(self, fmt: str, codes: np.ndarray) -> np.ndarray:
        codes = np.ascontiguousarray(codes, dtype=FORMATS[fmt][1])
        out = np.empty(codes.shape, dtype=np.float32)
        rc = self._dec(fmt.encode(), codes.ctypes.data, out.ctypes.data, codes.size)
        assert rc == 0, f"lowbit_shim_decode({fmt}) failed"
        return out


@pytest.fixture(scope="module")
def numeric(shim) -> Numeric:
    return Numeric(shim)


def oracle_encode(fmt: str, x: np.ndarray) -> np.ndarray:
    dtype, code_dtype, _ = FORMATS[fmt]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # "invalid value encountered in cast"
        return x.astype(dtype).view(code_dtype)


def oracle_decode(fmt: str, codes: np.ndarray) -> np.ndarray:
    dtype, code_dtype, _ = FORMATS[fmt]
    return codes.astype(code_dtype).view(dtype).astype(np.float32)


def describe_mismatches(fmt, x_bits, ours, theirs, limit=10) -> str:
    bad = np.flatnonzero(ours != theirs)
    lines = [f"{fmt}: {bad.size} mismatches, e.g.:"]
    for i in bad[:limit]:
        lines.append(f"  f32 0x{int(x_bits[i]):08x}: lowbit 0x{int(ours[i]):x}, "
                     f"oracle 0x{int(theirs[i]):x}")
    return "\n".join(lines)


def check_encode(numeric, fmt, x_bits: np.ndarray) -> str | None:
    x = x_bits.view(np.float32)
    ours = numeric.encode(fmt, x)
    theirs = oracle_encode(fmt, x)
    if np.array_equal(ours, theirs):
        return None
    return describe_mismatches(fmt, x_bits, ours, theirs)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_code_decodes_like_the_oracle(numeric, fmt):
    codes = np.arange(FORMATS[fmt][2], dtype=FORMATS[fmt][1])
    ours = numeric.decode(fmt, codes).view(np.uint32)
    theirs = oracle_decode(fmt, codes).view(np.uint32)
    # Bit for bit, NaNs included (fp8/e8m0 NaN -> 0x7fc00000 with the code's sign;
    # f16/bf16 NaN keep their payload).
    assert np.array_equal(ours, theirs), describe_mismatches(fmt, codes, ours, theirs)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_code_round_trips_like_the_oracle(numeric, fmt):
    codes = np.arange(FORMATS[fmt][2], dtype=FORMATS[fmt][1])
    values = oracle_decode(fmt, codes)
    ours = numeric.encode(fmt, values)
    theirs = oracle_encode(fmt, values)
    assert np.array_equal(ours, theirs), describe_mismatches(
        fmt, values.view(np.uint32), ours, theirs)
    # Every non-NaN code comes back as itself.
    finite_or_inf = ~np.isnan(values)
    assert np.array_equal(ours[finite_or_inf], codes[finite_or_inf])


class ChunkChecker:
    """Checks one 2^24 slice of the f32 patterns at a time, in buffers allocated once
    (fresh 64 MiB arrays would cost more in page faults than the conversions)."""

    def __init__(self, numeric: Numeric, fmt: str):
        self.numeric, self.fmt = numeric, fmt
        dtype, code_dtype, _ = FORMATS[fmt]
        self.base = np.arange(CHUNK, dtype=np.uint32)
        self.x_bits = np.empty(CHUNK, np.uint32)
        self.ours = np.empty(CHUNK, code_dtype)
        self.theirs = np.empty(CHUNK, dtype)
        self.differ = np.empty(CHUNK, bool)

    def __call__(self, k: int) -> str | None:
        np.add(self.base, np.uint32(k * CHUNK), out=self.x_bits)
        x = self.x_bits.view(np.float32)
        self.numeric.encode(self.fmt, x, out=self.ours)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            np.copyto(self.theirs, x, casting="unsafe")  # ml_dtypes' cast, in place
        theirs = self.theirs.view(self.ours.dtype)
        np.not_equal(self.ours, theirs, out=self.differ)
        if not self.differ.any():
            return None
        return describe_mismatches(self.fmt, self.x_bits, self.ours, theirs)


@pytest.mark.parametrize("fmt", EXHAUSTIVE)
def test_encode_every_f32_like_ml_dtypes(numeric, fmt):
    start = time.perf_counter()
    # Two workers, each with its own buffers, on interleaved chunks: the shim call and
    # parts of the numpy casts run without the GIL.
    workers = [ChunkChecker(numeric, fmt) for _ in range(2)]
    chunks = (1 << 32) // CHUNK

    def run(w: int) -> list[str]:
        return [f for k in range(w, chunks, len(workers)) if (f := workers[w](k))]

    with ThreadPoolExecutor(max_workers=len(workers)) as pool:
        failures = [f for fs in pool.map(run, range(len(workers))) for f in fs]
    assert not failures, f"{len(failures)} chunks differ; first:\n{failures[0]}"
    print(f"{fmt}: all 2^32 f32 patterns match ml_dtypes ({time.perf_counter() - start:.1f} s)")


def f16_structured_sample() -> np.ndarray:
    """f32 patterns around every f16 rounding boundary, for every exponent and sign."""
    rng = np.random.default_rng(20240607)
    parts = []
    # Normal f16 results (and overflow): f16 keeps the top 10 of 23 mantissa bits, so the
    # boundaries sit in the low 13 bits. Every sign/exponent/top-10-bit prefix (2^19) with
    # the low bits at 0, just past 0, just under/at/over the tie, and all ones.
    low13 = np.array([0x0, 0x1, 0x2, 0xfff, 0x1000, 0x1001, 0x1fff, 0x0800, 0x17ff], np.uint32)
    prefix = np.arange(1 << 19, dtype=np.uint32) << np.uint32(13)
    parts.append((prefix[:, None] | low13[None, :]).ravel())
    # Subnormal f16 results (f32 exponents 102..112): s = 14..24 bits are dropped.
    for e in range(101, 114):
        for s in range(14, 25):
            half = 1 << (s - 1)
            low = np.array([0, 1, half - 1, half, half + 1, (1 << s) - 1], np.uint32)
            low &= np.uint32(0x7FFFFF)
            top = np.arange(1 << max(0, 23 - s), dtype=np.uint32) << np.uint32(s) if s < 23 \
                else np.zeros(1, np.uint32)
            mant = ((top[:, None] | low[None, :]).ravel()) & np.uint32(0x7FFFFF)
            for sign in (0, 0x80000000):
                parts.append(np.uint32(sign) | np.uint32(e << 23) | mant)
    # NaN payloads: every position of a single payload bit, and random payloads.
    nan_payload = np.concatenate([np.uint32(1) << np.arange(23, dtype=np.uint32),
                                  rng.integers(1, 1 << 23, 4096, dtype=np.uint32)])
    for sign in (0, 0x80000000):
        parts.append(np.uint32(sign | 0x7F800000) | nan_payload)
    # Uniformly random patterns.
    parts.append(rng.integers(0, 1 << 32, 1 << 22, dtype=np.uint32))
    return np.unique(np.concatenate(parts))


def test_encode_f16_structured_sample_like_numpy(numeric):
    x_bits = f16_structured_sample()
    assert x_bits.size > 4_000_000
    failure = check_encode(numeric, "f16", x_bits)
    assert failure is None, failure


@pytest.mark.parametrize("fmt", ["f16", "bf16", "f8e4m3fn", "f8e5m2", "e8m0"])
def test_saturate_flag_only_changes_overflow(numeric, fmt):
    # Saturation::finite is checked exhaustively in C++; here only that the shim passes
    # the flag through: it must agree with the oracle except where the oracle overflows
    # (a finite or infinite input giving Inf or NaN), which must clamp to +-max finite.
    rng = np.random.default_rng(7)
    x_bits = np.concatenate([rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint32),
                             np.array([0x7F800000, 0xFF800000], np.uint32)])
    x = x_bits.view(np.float32)
    ours = numeric.encode(fmt, x, saturate=True)
    theirs = oracle_encode(fmt, x)
    theirs_f = oracle_decode(fmt, theirs)
    overflow = ~np.isnan(x) & ~np.isfinite(theirs_f)
    if fmt == "e8m0":  # unsigned, no zero: 0, negatives and NaN are NaN in both modes
        overflow &= x > 0
    assert np.array_equal(ours[~overflow], theirs[~overflow])
    max_finite = np.float32(ml_dtypes.finfo(FORMATS[fmt][0]).max)
    sat = oracle_decode(fmt, ours[overflow])
    expected = np.where(np.signbit(x[overflow]), -max_finite, max_finite).astype(np.float32)
    assert overflow.sum() > 0
    assert np.array_equal(sat, expected)
