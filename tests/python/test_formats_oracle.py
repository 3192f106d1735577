"""lowbit's quantized formats (docs/formats.md) against the ecosystem and an independent
numpy implementation, through the ctypes shim tests/python/shim/quantize_shim.cpp
(wrapper: tests/python/lowbit_shim_quant.py).

What is checked, against what:

* PyTorch (skipped where `import torch` fails; the GPU machine has it): static int8 / uint8
  quantization with given scales and zero points equals torch.quantize_per_tensor and
  torch.quantize_per_channel (axis 0, 1, and a middle axis of a 3-d tensor) code for code
  (int_repr), on random data, exact ties (k + 1/2) * scale, far out-of-range values and
  scales 0.1 / 0.02 / 1e-3 / random; dequantize equals torch's dequantize bit for bit.
  On CPU torch bit for bit. CUDA torch divides in f64 (nearbyint(x / double(scale))) where
  CPU torch and lowbit multiply by the f32 reciprocal: there the test checks CUDA torch
  against that f64 rule exactly, lowbit against CUDA torch on every element where the two
  rules agree, and reports how many near-tie elements differ (docs/formats.md).
  Fake quantization: torch.fake_quantize_per_tensor_affine / _per_channel_affine forward
  equals our quantize-then-dequantize with the same scale and zero point for every integer
  width (8 and 4 bits, signed, restricted and unsigned ranges), and torch's gradient equals
  the straight-through indicator qmin <= rne(x * inv_scale) + zero <= qmax. lowbit has no
  backward entry point yet: the indicator is computed in numpy from the docs' rule and
  checked to agree with our codes (the unclamped value where it is 1, a saturated code
  where it is 0).
* torchao's NVFP4 (skipped where torchao is missing): codes, e4m3 block scales and the
  global scale equal nvfp4_quantize(x, 16, per_tensor_amax_to_scale(amax)) on f32 and bf16
  data. Always, and independently of torchao: a numpy restatement of torchao's arithmetic
  (f32 ops in torchao's order, ml_dtypes for the e4m3 and e2m1 roundings) gives our bytes.
* gguf's MXFP4 (gguf.quants, the numpy port of ggml's quantize_row_mxfp4_ref): ggml's
  rules differ from OCP MX's on purpose-built inputs (ties round toward zero, -0 becomes
  +0, an f32 log2 rounds up just below powers of two); the test asserts the exact relation
  docs/formats.md states, on random rows and on rows built to hit every difference, and
  that dequantizing ggml's blocks gives ggml's floats bit for bit.
* ml_dtypes: FP8 and MX element codes equal ml_dtypes' conversion of the scaled values
  (clipped to +-max first: our element conversion saturates), and dequantize equals
  ml_dtypes' decode times the scale.
* Every scheme of tests/cpp/test_quantize.cpp (and a few more): dynamic quantize and
  dequantize equal a pure-numpy implementation of docs/formats.md's rules bit for bit
  (scale rules, zero points, packing, scale layouts; FP8/FP4 encoders written here from the
  format definitions, not taken from ml_dtypes); GGUF schemes equal the gguf package.
* The QuantScheme grammar, the error rules (non-finite inputs, bad given scales) and the
  worked examples printed in docs/formats.md.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
import zlib

import gguf
import ml_dtypes
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from lowbit_shim_quant import LowbitError, QuantShim, pack_nibbles

REPO = pathlib.Path(__file__).resolve().parents[2]
F32 = np.float32
BF16 = ml_dtypes.bfloat16


@pytest.fixture(scope="module")
def qs(shim) -> QuantShim:
    return QuantShim(shim)


def seed(*parts) -> int:
    """A stable seed from test parameters (Python's hash() of str varies per process)."""
    return zlib.crc32(repr(parts).encode())


def bits32(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, F32)).view(np.uint32)


def assert_same(ours, theirs, what: str, inputs=None, limit: int = 8):
    """Exact equality (bit patterns for floats), with the first mismatches in the message."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
    if ours.dtype.kind == "f" or theirs.dtype.kind == "f":
        a = np.ascontiguousarray(ours.astype(F32)).view(np.uint32)
        b = np.ascontiguousarray(theirs.astype(F32)).view(np.uint32)
    else:
        a, b = ours.astype(np.int64), theirs.astype(np.int64)
    bad = np.flatnonzero((a != b).reshape(-1))
    if bad.size:
        lines = []
        for i in bad[:limit]:
            src = "" if inputs is None else f" input {np.asarray(inputs).reshape(-1)[i]!r}"
            lines.append(
                f"  [{i}]{src}: ours {ours.reshape(-1)[i]!r}, theirs {theirs.reshape(-1)[i]!r}"
            )
        raise AssertionError(f"{what}: {bad.size} of {a.size} differ\n" + "\n".join(lines))


# ---- narrow float formats, written from their definitions (docs/numerics.md) -----------------


@dataclasses.dataclass(frozen=True)
class MiniFloat:
    name: str
    exp_bits: int
    man_bits: int
    bias: int
    max_code: int  # largest finite magnitude code

    @property
    def sign_bit(self) -> int:
        return 1 << (self.exp_bits + self.man_bits)

    @property
    def magnitudes(self) -> np.ndarray:
        c = np.arange(self.max_code + 1)
        e, m = c >> self.man_bits, c & ((1 << self.man_bits) - 1)
        sub = m * 2.0 ** (1 - self.bias - self.man_bits)
        nrm = (1 + m / 2.0**self.man_bits) * 2.0 ** (e.astype(np.float64) - self.bias)
        return np.where(e == 0, sub, nrm)

    @property
    def max(self) -> float:
        return float(self.magnitudes[-1])

    def encode(self, y) -> np.ndarray:
        """f32 -> code: round to nearest, ties to the even code, saturating to +-max; the
        sign is kept (-0 and tiny negatives give the negative zero)."""
        y = np.asarray(y, F32)
        assert not np.isnan(y).any()
        a = np.abs(y.astype(np.float64))
        v = self.magnitudes
        hi = np.minimum(np.searchsorted(v, a, side="left"), v.size - 1)
        lo = np.maximum(hi - 1, 0)
        dlo, dhi = a - v[lo], v[hi] - a
        pick = np.where(dlo < dhi, lo, np.where(dhi < dlo, hi, np.where(lo % 2 == 0, lo, hi)))
        pick = np.where(a >= v[-1], v.size - 1, pick)
        return (pick | np.where(np.signbit(y), self.sign_bit, 0)).astype(np.uint8)

    def decode(self, codes) -> np.ndarray:
        codes = np.asarray(codes).astype(np.int64)
        mag = self.magnitudes[codes & (self.sign_bit - 1)]
        return np.where(codes & self.sign_bit, -mag, mag).astype(F32)


E4M3 = MiniFloat("f8e4m3fn", 4, 3, 7, 0x7E)
E5M2 = MiniFloat("f8e5m2", 5, 2, 15, 0x7B)
E2M1 = MiniFloat("f4e2m1", 2, 1, 1, 0x7)
ML_DTYPE = {"f8e4m3fn": ml_dtypes.float8_e4m3fn, "f8e5m2": ml_dtypes.float8_e5m2,
            "f4e2m1": ml_dtypes.float4_e2m1fn}


def test_minifloat_tables_match_ml_dtypes():
    """The tables the oracle uses decode like ml_dtypes (a self-check of this file)."""
    for f in (E4M3, E5M2, E2M1):
        codes = np.arange(2 * f.sign_bit, dtype=np.uint8)
        finite = (codes & (f.sign_bit - 1)) <= f.max_code
        ref = codes.view(ML_DTYPE[f.name]).astype(F32)
        assert_same(f.decode(codes[finite]), ref[finite], f.name)


# ---- the scheme grammar, restated (docs/formats.md "Scheme text") ---------------------------

INT_RANGE = {  # (format, symmetric) -> (qmin, qmax)
    ("int8", True): (-127, 127), ("int8", False): (-128, 127), ("uint8", False): (0, 255),
    ("int4", True): (-7, 7), ("int4", False): (-8, 7), ("uint4", False): (0, 15),
}
FP8 = {"fp8e4m3": E4M3, "fp8e5m2": E5M2}
MX = {"mxfp4": (E2M1, 2), "mxfp8e4m3": (E4M3, 8), "mxfp8e5m2": (E5M2, 15)}


@dataclasses.dataclass
class Scheme:
    fmt: str
    gran: str = "tensor"
    block: int = 0
    axis: int = 0
    symmetric: bool = True
    scale_dtype: str = "f32"

    @property
    def is_int(self) -> bool:
        return self.fmt in ("int8", "uint8", "int4", "uint4")

    @property
    def qrange(self):
        return INT_RANGE[(self.fmt, self.symmetric)]


def parse_scheme(text: str) -> Scheme:
    head, *opts = text.split(":")
    head = {"fp8": "fp8e4m3", "mxfp8": "mxfp8e4m3"}.get(head, head)
    if head == "nvfp4":
        return Scheme("nvfp4", "block", 16)
    if head in MX:
        return Scheme(head, "block", 32)
    s = Scheme(head, symmetric=head not in ("uint8", "uint4"))
    for o in opts:
        if o in ("tensor", "channel", "token"):
            s.gran = o
        elif m := re.fullmatch(r"block(\d+)x(\d+)", o):
            s.gran, s.block = "block2d", int(m[1])
        elif m := re.fullmatch(r"block(\d+)", o):
            s.gran, s.block = "block", int(m[1])
        elif o in ("sym", "asym"):
            s.symmetric = o == "sym"
        elif o.startswith("axis="):
            s.axis = int(o[5:])
        elif o.startswith("scale="):
            s.scale_dtype = o[6:]
        else:
            raise ValueError(o)
    return s


def group_index(s: Scheme, shape) -> tuple[np.ndarray, tuple]:
    """(group of every element in row-major order, scale shape)."""
    shape = tuple(shape)
    n = int(np.prod(shape))
    i = np.arange(n)
    k = shape[-1]
    if s.gran == "tensor":
        return np.zeros(n, np.int64), (1,)
    if s.gran == "token":
        return i // k, shape[:-1] or (1,)
    if s.gran == "channel":
        a = s.axis % len(shape)
        return np.indices(shape)[a].reshape(-1), (shape[a],)
    bk = -(-k // s.block)
    if s.gran == "block":
        return (i // k) * bk + (i % k) // s.block, shape[:-1] + (bk,)
    rows = shape[-2]
    br = -(-rows // s.block)
    batch, r = i // (k * rows), (i // k) % rows
    return (batch * br + r // s.block) * bk + (i % k) // s.block, shape[:-2] + (br, bk)


def round_scale(v: np.ndarray, dtype: str) -> np.ndarray:
    """Stored scale: RNE to the scale dtype, saturating to its max finite."""
    if dtype == "f16":
        return np.clip(v, -65504.0, 65504.0).astype(np.float16).astype(F32)
    if dtype == "bf16":
        m = float(ml_dtypes.finfo(BF16).max)
        return np.clip(v, -m, m).astype(BF16).astype(F32)
    return v.astype(F32)


def recip(s: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(s == 0, F32(0), F32(1) / np.where(s == 0, F32(1), s)).astype(F32)


MIN_SCALE = F32(2.0**-126)  # docs/formats.md: computed scales under f32's smallest normal flush to 0


def flush(s: np.ndarray) -> np.ndarray:
    s = np.asarray(s, F32)
    return np.where(s < MIN_SCALE, F32(0), s).astype(F32)


def floor_log2(a: np.ndarray) -> np.ndarray:
    """floor(log2(a)) of positive floats, exactly (frexp)."""
    return np.frexp(a.astype(np.float64))[1] - 1


@dataclasses.dataclass
class Oracle:
    codes: np.ndarray  # per element: int32 integer codes, or uint8 float codes
    scale: np.ndarray | None  # f32 values (int, fp8) or uint8 codes (nvfp4, mx); scale shape
    zero: np.ndarray | None
    global_scale: np.ndarray | None
    y: np.ndarray  # dequantized, f32


def oracle(text: str, x: np.ndarray, scale=None, zero=None, global_scale=None) -> Oracle:
    """docs/formats.md's rules in numpy (f32 ops in the documented order). With scale /
    zero / global_scale given, the static path."""
    s = parse_scheme(text)
    x = np.asarray(x).astype(F32)
    shape = x.shape
    xf = x.reshape(-1)
    g, sshape = group_index(s, shape)
    G = int(np.prod(sshape))
    amax = np.zeros(G, F32)
    np.maximum.at(amax, g, np.abs(xf))
    lo, hi = np.zeros(G, F32), np.zeros(G, F32)
    np.minimum.at(lo, g, xf)
    np.maximum.at(hi, g, xf)
    given = scale is not None or global_scale is not None

    if s.is_int:
        qmin, qmax = s.qrange
        if given:
            sc = np.asarray(scale).astype(F32).reshape(-1)
            z = np.zeros(G, np.int32) if s.symmetric else np.asarray(zero, np.int32).reshape(-1)
            inv = recip(sc)
        elif s.symmetric:
            sc = flush(round_scale(amax / F32(qmax), s.scale_dtype))
            inv, z = recip(sc), np.zeros(G, np.int32)
        else:
            sc = flush(round_scale((hi - lo) / F32(qmax - qmin), s.scale_dtype))
            inv = recip(sc)
            z = np.clip(F32(qmin) - np.rint(lo * inv), qmin, qmax).astype(np.int32)
        c = np.clip(np.rint(xf * inv[g]) + z[g].astype(F32), qmin, qmax).astype(np.int32)
        y = (c - z[g]).astype(F32) * sc[g]
        return Oracle(c.reshape(shape), sc.reshape(sshape), None if s.symmetric else
                      z.reshape(sshape), None, y.reshape(shape))

    if s.fmt in FP8:
        f = FP8[s.fmt]
        sc = np.asarray(scale, F32).reshape(-1) if given else flush(amax / F32(f.max))
        c = f.encode(xf * recip(sc)[g])
        y = f.decode(c) * sc[g]
        return Oracle(c.reshape(shape), sc.reshape(sshape), None, None, y.reshape(shape))

    if s.fmt == "nvfp4":
        gs = F32(np.asarray(global_scale, F32).reshape(-1)[0]) if given else \
            F32(flush(np.max(amax, initial=F32(0)) / F32(2688)))
        if gs == 0:
            bs = np.zeros(G, np.uint8)
            c = np.zeros(xf.size, np.uint8)
        else:
            bsv = np.clip(amax / F32(6) / gs, F32(2.0**-6), F32(448)).astype(F32)
            bs = E4M3.encode(bsv)
            total = (gs * E4M3.decode(bs)).astype(F32)
            c = E2M1.encode(np.clip(xf / total[g], F32(-6), F32(6)))
        y = (E2M1.decode(c) * E4M3.decode(bs)[g]) * gs
        return Oracle(c.reshape(shape), bs.reshape(sshape), None, np.array([gs], F32),
                      y.astype(F32).reshape(shape))

    f, emax = MX[s.fmt]
    e = np.where(amax > 0, np.clip(floor_log2(np.where(amax > 0, amax, 1)) - emax, -127, 127)
                 + 127, 0).astype(np.uint8)
    unscale = np.ldexp(F32(1), 127 - e.astype(np.int32)).astype(F32)
    c = f.encode(xf * unscale[g])
    y = f.decode(c) * np.ldexp(F32(1), e.astype(np.int32) - 127).astype(F32)[g]
    return Oracle(c.reshape(shape), e.reshape(sshape), None, None, y.reshape(shape))


def our_codes(q) -> np.ndarray:
    """Our codes per element: int32 for integer schemes, uint8 bit patterns otherwise."""
    cd = q.code_dtype
    if cd in ("i8", "u8", "i4", "u4"):
        return q.int_codes()
    if cd == "f4e2m1":
        return q.nibbles()
    return q.codes.reshape(q.shape)


def assert_matches_oracle(q, o: Oracle, x, what: str):
    assert_same(our_codes(q), o.codes, f"{what} codes", x)
    if q.code_dtype in ("i4", "u4", "f4e2m1"):  # packing: low nibble first, pad high nibble 0
        assert_same(q.codes, pack_nibbles(o.codes & 0xF), f"{what} packed bytes")
    if q.info.dtypes[1] in ("f8e4m3fn", "e8m0"):
        assert_same(q.scale, o.scale, f"{what} scale codes")
    else:
        assert_same(q.scale.astype(F32), o.scale, f"{what} scale")
    if o.zero is not None:
        assert_same(q.zero, o.zero, f"{what} zero points")
    if o.global_scale is not None:
        assert_same(q.global_scale, o.global_scale, f"{what} global scale")


# ---- data -----------------------------------------------------------------------------------


def data_normal(rng, shape):
    x = rng.standard_normal(shape)
    rows = 10.0 ** rng.uniform(-3, 3, shape[:-1] + (1,))  # row magnitudes 1e-3 .. 1e3
    return (x * rows).astype(F32)


def data_bf16(rng, shape):
    """bf16-representable values: coarse, so exact ties in the narrow formats are common."""
    return data_normal(rng, shape).astype(BF16).astype(F32)


def data_outliers(rng, shape):
    x = rng.standard_normal(shape).astype(F32)
    m = rng.random(shape) < 0.01
    x[m] *= F32(1000)
    return x


def data_zero_groups(rng, shape):
    x = data_normal(rng, shape)
    x.reshape(-1, shape[-1])[0] = 0  # a zero row (every granularity but tensor has zero groups)
    x.reshape(-1)[: min(x.size, 64)] = 0
    x.reshape(-1)[1] = -0.0
    return x


def data_grid(rng, shape, text):
    """Half-integer multiples of a power of two, with each group's extremes pinned so that
    the dynamic scale is that power of two: every x * inv_scale is exact, half of them ties.
    (Integer schemes; other schemes get bf16 data.)"""
    s = parse_scheme(text)
    if not s.is_int:
        return data_bf16(rng, shape)
    qmin, qmax = s.qrange
    g, sshape = group_index(s, shape)
    G = int(np.prod(sshape))
    c = F32(2.0 ** rng.integers(-8, 8))
    if s.symmetric:
        lo_i, hi_i = np.full(G, -qmax), np.full(G, qmax)
    else:
        a = rng.integers(0, qmax - qmin + 1, G)  # range [-a, span - a] * c
        lo_i, hi_i = -a, (qmax - qmin) - a
    n = int(np.prod(shape))
    v = (rng.integers(2 * lo_i[g], 2 * hi_i[g] + 1) / 2).astype(F32)
    first = {}
    for i, gi in enumerate(g):  # pin each group's two first elements to its extremes
        k = first.get(gi, 0)
        if k < 2:
            v[i] = lo_i[gi] if k == 0 else hi_i[gi]
            first[gi] = k + 1
    return (v * c).reshape(shape).astype(F32) if n else v.reshape(shape)


DATASETS = ["normal", "bf16", "outliers", "zero_groups", "grid"]


def make_data(kind, rng, shape, text):
    if kind == "grid":
        return data_grid(rng, shape, text)
    return {"normal": data_normal, "bf16": data_bf16, "outliers": data_outliers,
            "zero_groups": data_zero_groups}[kind](rng, shape)


# ---- every scheme against the numpy restatement of docs/formats.md --------------------------


def schemes_in_cpp_tests() -> set[str]:
    text = (REPO / "tests/cpp/test_quantize.cpp").read_text()
    pat = r'"((?:u?int[48]|fp8e[45]m[23]|fp8|nvfp4|mxfp4|mxfp8e[45]m[23]|q\d_[01K])(?::[a-z0-9=x]+)*)"'
    return set(re.findall(pat, text))


NON_GGUF_SCHEMES = [
    "int8:tensor", "int8:channel", "int8:channel:axis=1", "int8:channel:axis=-1",
    "int8:channel:asym", "int8:token", "int8:token:asym", "int8:block16:scale=f16",
    "int4:block32:asym", "int4:block128", "int4:tensor", "int4:channel:axis=1:asym",
    "uint8:tensor", "uint8:channel", "uint8:token:scale=f16", "uint4:tensor",
    "uint4:block64:scale=bf16", "int8:token:scale=bf16",
    "fp8e4m3:tensor", "fp8e4m3:token", "fp8e5m2:channel", "fp8e5m2:token", "fp8e4m3:block128",
    "fp8e5m2:block128", "fp8e4m3:block128x128", "fp8e4m3:channel:axis=1",
    "nvfp4", "mxfp4", "mxfp8e4m3", "mxfp8e5m2",
]
GGUF_SCHEMES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_K", "q3_K", "q4_K", "q5_K",
                "q6_K", "q8_K"]


def test_oracle_covers_every_scheme_of_the_cpp_tests():
    missing = schemes_in_cpp_tests() - set(NON_GGUF_SCHEMES) - set(GGUF_SCHEMES) - {
        "int8", "fp8", "int4:block48", "nvfp4:block32", "uint8:sym", "fp8e4m3:asym",
        "int8:token:axis=1", "int8:scale=i8", "int5", "int4:block32", "uint4:block32",
        "int8:channel:axis=2", "int8:channel:axis=-1"}
    assert not missing, f"schemes of test_quantize.cpp without an oracle test: {missing}"


def shapes_for(text: str):
    s = parse_scheme(text)
    if s.gran == "block2d":
        return [(2, 130, 256), (128, 128)]
    if s.gran == "block" and s.fmt in FP8:
        return [(5, 300), (3, 128)]  # a partial last block, and an exact one
    if s.gran == "tensor" and s.fmt in ("int4", "uint4"):
        return [(5, 7), (4, 256)]  # an odd count: the last byte's high nibble stays 0
    if s.gran == "token":
        return [(2, 3, 256)]
    if s.gran == "channel":
        return [(6, 256), (3, 5, 64)]
    return [(6, 256)]


@pytest.mark.parametrize("kind", DATASETS)
@pytest.mark.parametrize("text", NON_GGUF_SCHEMES)
def test_dynamic_quantize_matches_numpy_rules(qs, text, kind):
    rng = np.random.default_rng(seed(text, kind))
    for shape in shapes_for(text):
        x = make_data(kind, rng, shape, text)
        q = qs.quantize(text, x)
        o = oracle(text, x)
        what = f"{text} {kind} {shape}"
        assert_matches_oracle(q, o, x, what)
        assert_same(qs.dequantize(q), o.y, f"{what} dequantized", x)


@pytest.mark.parametrize("text", ["int8:token", "uint4:block64:scale=bf16", "fp8e5m2:token",
                                  "nvfp4", "mxfp4", "mxfp8e4m3"])
def test_sources_and_destinations_of_every_float_dtype(qs, text):
    """f16 / bf16 sources are read exactly; f16 / bf16 destinations round the f32 result
    once (RNE, overflow to Inf)."""
    rng = np.random.default_rng(3)
    x = data_normal(rng, (4, 256))
    for src in (np.float16, BF16):
        xs = x.astype(src)
        q = qs.quantize(text, xs)
        o = oracle(text, xs.astype(F32))
        assert_matches_oracle(q, o, xs, f"{text} from {np.dtype(src).name}")
        y32 = qs.dequantize(q)
        for dst in (np.float16, BF16):
            assert_same(qs.dequantize(q, dst).astype(F32), y32.astype(dst).astype(F32),
                        f"{text} to {np.dtype(dst).name}")
        assert_same(qs.dequantize(q, np.float64), y32.astype(np.float64), f"{text} to f64")


@pytest.mark.parametrize("text", ["int8:channel", "int8:token:asym", "uint4:tensor",
                                  "int4:block32:asym", "fp8e4m3:token", "fp8e5m2:block128"])
def test_static_quantize_matches_numpy_rules(qs, text):
    """Given (static) scales and zero points are used as is: codes follow the same
    arithmetic; scales of 0 give codes = zero point."""
    rng = np.random.default_rng(11)
    s = parse_scheme(text)
    shape = (4, 256)
    x = data_outliers(rng, shape)
    _, sshape = group_index(s, shape)
    sc = (10.0 ** rng.uniform(-3, 0, sshape)).astype(F32)
    sc.reshape(-1)[0] = 0.0  # a zero scale: inv_scale 0, every code the zero point
    kw = {"scale": sc}
    if s.is_int and not s.symmetric:
        qmin, qmax = s.qrange
        kw["zero"] = rng.integers(qmin, qmax + 1, sshape).astype(np.int32)
    q = qs.quantize(text, x, **kw)
    o = oracle(text, x, **kw)
    assert_same(our_codes(q), o.codes, f"static {text} codes", x)
    q.scale, q.zero = kw["scale"], kw.get("zero")
    assert_same(qs.dequantize(q), o.y, f"static {text} dequantized", x)


def test_static_nvfp4_global_scale(qs):
    rng = np.random.default_rng(12)
    x = data_normal(rng, (4, 64))
    for gs in (F32(1e-3), F32(np.abs(x).max() / 2688), F32(0.0)):
        q = qs.quantize("nvfp4", x, global_scale=[gs])
        o = oracle("nvfp4", x, global_scale=[gs])
        assert_same(q.scale, o.scale, f"nvfp4 global {gs} block scales")
        assert_same(q.nibbles(), o.codes, f"nvfp4 global {gs} codes", x)


# ---- GGUF schemes through the quantize op: the gguf package ----------------------------------


@pytest.mark.parametrize("text", GGUF_SCHEMES)
def test_gguf_schemes_match_the_gguf_package(qs, text):
    """The op path (codes = GGUF rows) equals gguf.quants: quantize bytes for the types
    gguf can quantize (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1), and for all types gguf's dequantize
    of our bytes equals our dequantize. docs/formats/gguf.md has the block layouts."""
    rng = np.random.default_rng(7)
    x = data_normal(rng, (3, 512))
    q = qs.quantize(text, x)
    qt = QT[text.upper()]
    assert q.codes.shape == (3, gguf.quants.quant_shape_to_byte_shape((512,), qt)[0])
    if text in ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1"):
        assert_same(q.codes, gguf.quants.quantize(x, qt), f"{text} blocks")
    if text != "q8_K":  # gguf does not decode Q8_K
        assert_same(qs.dequantize(q), gguf.quants.dequantize(q.codes, qt), f"{text} values")


# ---- NVFP4: torchao's arithmetic restated in numpy (always) and torchao itself ---------------


def torchao_nvfp4_numpy(x: np.ndarray):
    """torchao's nvfp4_quantize with per_tensor_scale = per_tensor_amax_to_scale(amax),
    restated: f32 ops in torchao's order, ml_dtypes for the e4m3 / e2m1 roundings.
    Returns (element codes, e4m3 block scale codes, per-tensor scale)."""
    x = x.astype(F32)
    rows = x.reshape(x.shape[0], -1, 16)
    amax = np.max(np.abs(x))
    pts = F32(amax) / F32(448.0 * 6.0)
    block_scale = np.max(np.abs(rows), axis=-1) / F32(6.0)
    scaled = block_scale / pts
    scaled = np.clip(scaled, F32(2.0**-6), F32(448.0))  # E4M3_EPS = finfo(e4m3fn).tiny
    s8 = scaled.astype(ml_dtypes.float8_e4m3fn)
    total = pts * s8.astype(F32)
    data = np.clip(rows / total[..., None], F32(-6.0), F32(6.0))
    codes = data.astype(ml_dtypes.float4_e2m1fn).view(np.uint8).reshape(x.shape)
    return codes, s8.view(np.uint8), F32(pts)


@pytest.mark.parametrize("src", ["f32", "bf16"])
@pytest.mark.parametrize("kind", ["normal", "bf16", "outliers", "zero_groups"])
def test_nvfp4_matches_torchaos_arithmetic_in_numpy(qs, src, kind):
    rng = np.random.default_rng(seed(src, kind))
    x = make_data(kind, rng, (8, 256), "nvfp4")
    if src == "bf16":
        x = x.astype(BF16)
    q = qs.quantize("nvfp4", x)
    codes, scales, pts = torchao_nvfp4_numpy(x.astype(F32))
    assert_same(q.global_scale, [pts], "nvfp4 global scale")
    assert_same(q.scale, scales, "nvfp4 block scales")
    assert_same(q.nibbles(), codes, "nvfp4 codes", x)


def test_nvfp4_all_zero_tensor_is_handled(qs):
    """torchao divides by a zero per-tensor scale (NaN scales); lowbit stores global 0,
    block scale codes 0 and codes 0, which dequantize to exact zeros."""
    x = np.zeros((2, 32), F32)
    q = qs.quantize("nvfp4", x)
    assert q.global_scale[0] == 0 and not q.scale.any() and not q.codes.any()
    assert not qs.dequantize(q).any()


# ---- torch fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch():
    try:
        import torch as t
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"torch is not importable here ({type(e).__name__}: {e}); "
                    "these oracle tests run where torch is installed (the GPU machine)")
    return t


@pytest.fixture(params=["cpu", "cuda"])
def tdev(request, torch):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device here")
    return request.param


def torchao_nvfp4_model(x: np.ndarray, scalar: str, elem: str):
    """torchao's nvfp4_quantize(x, 16, per_tensor_amax_to_scale(amax)) in numpy, in one of
    the arithmetics seen in its versions and on its devices:
      scalar "div": amax / 2688 and block_amax / 6 divide (torch on the CPU);
      scalar "recip": they multiply by f32(1 / c) (torch on CUDA turns a division by a CPU
        scalar into a multiplication by its reciprocal);
      elem "div": x / (global * block_scale) (torchao's sources before 0.18; lowbit);
      elem "recip": x * ((1 / global) / block_scale) (torchao 0.18.0).
    Returns (element codes, e4m3 block scale codes, global scale)."""
    x = x.astype(F32)
    rows = x.reshape(x.shape[0], -1, 16)

    def by(a, c):
        return (a / F32(c)) if scalar == "div" else (a * (F32(1) / F32(c)))

    pts = F32(by(F32(np.max(np.abs(x))), 448.0 * 6.0))
    scaled = by(np.max(np.abs(rows), axis=-1), 6.0) / pts
    s8 = np.clip(scaled, F32(2.0**-6), F32(448.0)).astype(ml_dtypes.float8_e4m3fn)
    s8f = s8.astype(F32)
    if elem == "div":
        data = rows / (pts * s8f)[..., None]
    else:
        data = rows * ((F32(1) / pts) / s8f)[..., None]
    data = np.clip(data, F32(-6.0), F32(6.0))
    codes = data.astype(ml_dtypes.float4_e2m1fn).view(np.uint8).reshape(x.shape)
    return codes, s8.view(np.uint8), pts


def test_torchao_models_differ_only_at_near_ties():
    """The four arithmetics of torchao_nvfp4_model agree on most elements (a self-check)."""
    rng = np.random.default_rng(22)
    x = data_normal(rng, (64, 256))
    base = torchao_nvfp4_model(x, "div", "div")
    assert_same(base[0], torchao_nvfp4_numpy(x)[0], "model vs restatement")
    for scalar in ("div", "recip"):
        for elem in ("div", "recip"):
            m = torchao_nvfp4_model(x, scalar, elem)
            assert np.mean(m[0] == base[0]) > 0.98, (scalar, elem)


@pytest.mark.parametrize("src", ["f32", "bf16"])
def test_nvfp4_matches_torchao(qs, torch, tdev, src):
    """torchao's output equals one of torchao_nvfp4_model's arithmetics exactly (which one
    depends on torchao's version and the device); lowbit equals the ("div", "div") one, and
    so torchao wherever that model and torchao's agree: everywhere for torchao's division
    form on the CPU. The count of elements where they do not is printed (docs/formats.md)."""
    try:
        from torchao.prototype.mx_formats.kernels import unpack_uint4
        from torchao.prototype.mx_formats.nvfp4_tensor import (
            nvfp4_quantize,
            per_tensor_amax_to_scale,
        )
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"torchao's NVFP4 is not importable ({type(e).__name__}: {e}); "
                    "test_nvfp4_matches_torchaos_arithmetic_in_numpy checks its rules")
    import torchao

    rng = np.random.default_rng(21)
    seen = {}
    for kind in ("normal", "bf16", "outliers", "zero_groups"):
        x = make_data(kind, rng, (16, 128), "nvfp4")
        if src == "bf16":
            x = x.astype(BF16).astype(F32)
        xt = torch.from_numpy(x).to(tdev)
        if src == "bf16":
            xt = xt.to(torch.bfloat16)
        amax = torch.max(torch.abs(xt))
        pts = per_tensor_amax_to_scale(amax)
        scales, packed = nvfp4_quantize(xt, 16, pts)
        ta_codes = unpack_uint4(packed.contiguous().view(torch.uint8)).cpu().numpy()
        ta_codes = ta_codes.reshape(16, 128)
        ta_scales = scales.view(torch.uint8).cpu().numpy().reshape(16, 8)
        ta_pts = F32(pts.float().cpu().item())
        models = {(sc, el): torchao_nvfp4_model(x, sc, el)
                  for sc in ("div", "recip") for el in ("div", "recip")}
        match = [k for k, (c, s8, p) in models.items()
                 if bits32(p)[0] == bits32(ta_pts)[0] and np.array_equal(s8, ta_scales)
                 and np.array_equal(c, ta_codes)]
        what = f"torchao {torchao.__version__} nvfp4 {src} {kind} on {tdev}"
        assert match, f"{what}: torchao's output matches none of the modelled arithmetics"
        q = qs.quantize("nvfp4", x if src == "f32" else x.astype(BF16))
        mine = models[("div", "div")]
        assert_same(q.nibbles(), mine[0], f"{what}: ours vs the division model", x)
        assert_same(q.scale, mine[1], f"{what}: ours vs the division model, block scales")
        if ("div", "div") in match:
            assert_same(q.global_scale, [ta_pts], f"{what} global")
            assert_same(q.scale, ta_scales, f"{what} block scales")
            assert_same(q.nibbles(), ta_codes, f"{what} codes", x)
            probe = unpack_uint4(torch.tensor([[0x21]], dtype=torch.uint8)).reshape(-1).tolist()
            if probe == [1, 2]:  # torchao packs low nibble first too: the bytes agree
                assert_same(q.codes, packed.contiguous().view(torch.uint8).cpu().numpy()
                            .reshape(-1), f"{what} packed bytes")
        else:
            agree = (mine[0] == ta_codes)
            assert_same(q.nibbles()[agree], ta_codes[agree], f"{what} (where they agree)")
        key = " or ".join("/".join(m) for m in match)  # every arithmetic torchao matched
        d = seen.setdefault(key, [0, 0, 0])
        d[0] += int((q.nibbles() != ta_codes).sum())
        d[1] += int((q.scale != ta_scales).sum())
        d[2] += int(bits32(q.global_scale)[0] != bits32(ta_pts)[0])
    print(f"\n  {what.rsplit(' ', 4)[0]}: arithmetic (scalar/elem) -> "
          f"[codes, block scales, global scales] differing from ours: {seen}")


# ---- PyTorch's affine int8 / uint8 quantization ---------------------------------------------

TORCH_SCALES = [0.1, 0.02, 1e-3]


def static_int_data(rng, n, s, qmin, qmax, zp):
    """Random values over the code range, exact ties (k + 1/2) * s (rounded to f32, and as
    f32 computes them), far out-of-range values and signed zeros."""
    s = F32(s)
    k = rng.integers(qmin - zp - 4, qmax - zp + 4, n)
    ties_exact = ((k + 0.5) * np.float64(s)).astype(F32)
    ties_f32 = (k.astype(F32) + F32(0.5)) * s
    spread = (rng.standard_normal(n) * (qmax - qmin) / 4 * s).astype(F32)
    far = (rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(0, 4, n) * (qmax - qmin) * s)
    x = np.concatenate([ties_exact, ties_f32, spread, far.astype(F32), [0.0, -0.0]]).astype(F32)
    return x[rng.permutation(x.size)]


def torch_qdtype(torch, fmt):
    return {"int8": torch.qint8, "uint8": torch.quint8}[fmt]


def cuda_rule(x, s, zp, qmin, qmax):
    """CUDA torch's quantize: nearbyint(x / double(scale)) + zero_point, clamped."""
    s64 = np.float64(F32(s))  # the f32 scale torch was given, widened exactly
    return np.clip(np.rint(x.astype(np.float64) / s64) + zp, qmin, qmax).astype(np.int64)


def cpu_rule(x, s, zp, qmin, qmax):
    """lowbit's (and CPU torch's) rule: rne(x * f32(1 / scale)) + zero_point, clamped."""
    inv = F32(1) / F32(s)
    return np.clip(np.rint(x.astype(F32) * inv) + zp, qmin, qmax).astype(np.int64)


def check_against_torch_codes(ours, theirs, x, s, zp, qmin, qmax, tdev, what):
    """CPU: equal. CUDA: torch follows its f64 rule exactly, and ours equals torch wherever
    the f64 and f32-reciprocal rules agree; returns the number of elements where they differ."""
    if tdev == "cpu":
        assert_same(ours, theirs, what, x)
        return 0
    assert_same(theirs, cuda_rule(x, s, zp, qmin, qmax), f"{what}: CUDA torch vs its f64 rule", x)
    agree = cpu_rule(x, s, zp, qmin, qmax) == cuda_rule(x, s, zp, qmin, qmax)
    assert_same(ours[agree], theirs[agree], f"{what} (where the rules agree)", x[agree])
    d = ~agree
    if d.any():  # where they differ: one step apart, at a near-tie (|x / s - (k + 1/2)| tiny)
        assert np.all(np.abs(ours[d] - theirs[d]) == 1)
        t = x[d].astype(np.float64) / np.float64(F32(s))
        assert np.all(np.abs(t - np.floor(t) - 0.5) <= np.abs(t) * 2.0**-20)
    return int(d.sum())


@pytest.mark.parametrize("fmt,sym", [("int8", False), ("uint8", False), ("int8", True)])
def test_quantize_per_tensor_matches_torch(qs, torch, tdev, fmt, sym):
    rng = np.random.default_rng(31)
    text = f"{fmt}:tensor" + ("" if sym or fmt == "uint8" else ":asym")
    _, qmin, qmax = qs.scheme_info(text)
    tq = torch_qdtype(torch, fmt)
    tmin, tmax = (-128, 127) if fmt == "int8" else (0, 255)
    diffs = 0
    for s in TORCH_SCALES + [float(F32(rng.uniform(1e-4, 1)))]:
        zps = [0] if sym else ([0, 1, -77, 127, -128, 37] if fmt == "int8" else [0, 1, 128, 255, 93])
        for zp in zps:
            x = static_int_data(rng, 4000, s, tmin, tmax, zp)
            kw = {"scale": [s]} if sym else {"scale": [s], "zero": [zp]}
            q = qs.quantize(text, x, **kw)
            tqx = torch.quantize_per_tensor(torch.from_numpy(x).to(tdev), float(F32(s)), zp, tq)
            theirs = tqx.int_repr().cpu().numpy().astype(np.int64)
            what = f"quantize_per_tensor {text} scale {s} zp {zp} on {tdev}"
            if sym:  # our restricted range [-127, 127]: torch's -128 becomes -127
                theirs = np.maximum(theirs, qmin)
            diffs += check_against_torch_codes(q.int_codes().astype(np.int64), theirs, x, s, zp,
                                               qmin, qmax, tdev, what)
            # dequantize: torch's codes through our dequantizer == torch's dequantize
            codes = tqx.int_repr().cpu().numpy()
            if not sym:
                ours_y = qs.dequantize(qs.make(text, x.shape, codes.astype(q.codes.dtype), **kw))
                assert_same(ours_y, tqx.dequantize().cpu().numpy(), f"{what} dequantized")
    if tdev == "cuda":
        print(f"\n  {text}: {diffs} near-tie elements where CUDA torch's f64 division differs")


@pytest.mark.parametrize("shape,axis", [((6, 300), 0), ((300, 6), 1), ((4, 5, 60), 1)])
@pytest.mark.parametrize("fmt", ["int8", "uint8"])
def test_quantize_per_channel_matches_torch(qs, torch, tdev, fmt, shape, axis):
    rng = np.random.default_rng(32)
    text = f"{fmt}:channel" + (f":axis={axis}" if axis else "") + (":asym" if fmt == "int8" else "")
    _, qmin, qmax = qs.scheme_info(text)
    C = shape[axis]
    sc = np.array([TORCH_SCALES[i % 3] if i < 3 else rng.uniform(1e-4, 1) for i in range(C)], F32)
    zp = rng.integers(qmin, qmax + 1, C).astype(np.int32)
    zp[0] = qmin
    x = np.empty(shape, F32)
    xm = np.moveaxis(x, axis, 0)
    n = int(np.prod(shape)) // C
    for c in range(C):
        xm[c] = static_int_data(rng, n, sc[c], qmin, qmax, int(zp[c]))[:n].reshape(xm[c].shape)
    q = qs.quantize(text, x, scale=sc, zero=zp)
    tqx = torch.quantize_per_channel(
        torch.from_numpy(x).to(tdev), torch.from_numpy(sc.astype(np.float64)).to(tdev),
        torch.from_numpy(zp.astype(np.int64)).to(tdev), axis, torch_qdtype(torch, fmt))
    theirs = tqx.int_repr().cpu().numpy().astype(np.int64)
    what = f"quantize_per_channel {text} {shape} on {tdev}"
    ours = q.int_codes().astype(np.int64)
    if tdev == "cpu":
        assert_same(ours, theirs, what, x)
    else:  # per channel, the same f64 division rule as per tensor
        bshape = [1] * len(shape)
        bshape[axis] = C
        s_b, z_b = sc.reshape(bshape), zp.reshape(bshape)
        cuda = np.clip(np.rint(x.astype(np.float64) / s_b.astype(np.float64)) + z_b, qmin, qmax)
        assert_same(theirs, cuda.astype(np.int64), f"{what}: CUDA torch vs its f64 rule", x)
        inv = (F32(1) / s_b).astype(F32)
        cpu = np.clip(np.rint(x * inv) + z_b, qmin, qmax)
        agree = cpu == cuda
        assert_same(ours[agree], theirs[agree], f"{what} (where the rules agree)", x[agree])
    ours_y = qs.dequantize(qs.make(text, shape, tqx.int_repr().cpu().numpy().astype(
        q.codes.dtype), scale=sc, zero=zp))
    assert_same(ours_y, tqx.dequantize().cpu().numpy(), f"{what} dequantized")


FAKE_SCHEMES = ["int8:tensor", "int8:tensor:asym", "uint8:tensor", "int4:tensor",
                "int4:tensor:asym", "uint4:tensor"]


def indicator(x, s, zp, qmin, qmax):
    """The straight-through gradient: 1 where qmin <= rne(x * f32(1/s)) + zp <= qmax."""
    u = np.rint(x.astype(F32) * (F32(1) / F32(s))) + F32(zp)
    return u, ((u >= qmin) & (u <= qmax)).astype(F32)


@pytest.mark.parametrize("text", FAKE_SCHEMES)
def test_fake_quantize_per_tensor_matches_torch(qs, torch, tdev, text):
    """Forward: torch.fake_quantize_per_tensor_affine == our quantize-then-dequantize with the
    same scale and zero point. Backward: torch's gradient == the indicator, which agrees with
    our codes. (lowbit has no backward entry point: the indicator is the docs' rule in numpy.)"""
    rng = np.random.default_rng(41)
    s_ = parse_scheme(text)
    _, qmin, qmax = qs.scheme_info(text)
    for s in TORCH_SCALES:
        for zp in ([0] if s_.symmetric else [qmin, (qmin + qmax) // 2 + 1, qmax]):
            x = static_int_data(rng, 3000, s, qmin, qmax, zp)
            x = x[np.abs(x) < F32(1e5 * s)]  # |x / s| < 2^63 (torch casts to int64 unchecked)
            kw = {"scale": [s]} if s_.symmetric else {"scale": [s], "zero": [zp]}
            q = qs.quantize(text, x, **kw)
            ours = qs.dequantize(q)
            xt = torch.from_numpy(x).to(tdev).requires_grad_(True)
            yt = torch.fake_quantize_per_tensor_affine(xt, float(F32(s)), zp, qmin, qmax)
            yt.backward(torch.ones_like(yt))
            what = f"fake_quantize_per_tensor {text} scale {s} zp {zp} on {tdev}"
            assert_same(ours, yt.detach().cpu().numpy(), f"{what} forward", x)
            u, ind = indicator(x, s, zp, qmin, qmax)
            assert_same(xt.grad.cpu().numpy(), ind, f"{what} gradient", x)
            codes = q.int_codes()
            inside = ind == 1
            assert_same(codes[inside], u[inside].astype(np.int32), f"{what} codes inside", x)
            assert np.all((codes[~inside] == qmin) | (codes[~inside] == qmax))


@pytest.mark.parametrize("text,shape,axis", [("int8:channel:asym", (5, 400), 0),
                                             ("uint8:channel:axis=1", (400, 5), 1),
                                             ("int4:channel:axis=1:asym", (400, 5), 1)])
def test_fake_quantize_per_channel_matches_torch(qs, torch, tdev, text, shape, axis):
    rng = np.random.default_rng(42)
    _, qmin, qmax = qs.scheme_info(text)
    C = shape[axis]
    sc = np.array([[0.1, 0.02, 1e-3][i % 3] for i in range(C)], F32)
    zp = rng.integers(qmin, qmax + 1, C).astype(np.int32)
    n = int(np.prod(shape)) // C
    x = np.empty(shape, F32)
    xm = np.moveaxis(x, axis, 0)
    for c in range(C):
        d = static_int_data(rng, 3 * n, sc[c], qmin, qmax, int(zp[c]))
        d = d[np.abs(d) < F32(1e5 * sc[c])]
        xm[c] = d[:n].reshape(xm[c].shape)
    q = qs.quantize(text, x, scale=sc, zero=zp)
    xt = torch.from_numpy(x).to(tdev).requires_grad_(True)
    yt = torch.fake_quantize_per_channel_affine(
        xt, torch.from_numpy(sc).to(tdev), torch.from_numpy(zp).to(tdev), axis, qmin, qmax)
    yt.backward(torch.ones_like(yt))
    what = f"fake_quantize_per_channel {text} on {tdev}"
    assert_same(qs.dequantize(q), yt.detach().cpu().numpy(), f"{what} forward", x)
    bshape = [1] * len(shape)
    bshape[axis] = C
    u = np.rint(x * (F32(1) / sc.reshape(bshape))) + zp.reshape(bshape).astype(F32)
    ind = ((u >= qmin) & (u <= qmax)).astype(F32)
    assert_same(xt.grad.cpu().numpy(), ind, f"{what} gradient", x)


# ---- ml_dtypes: element codes and decodes ----------------------------------------------------


@pytest.mark.parametrize("text", ["fp8e4m3:token", "fp8e5m2:channel", "fp8e4m3:block128x128",
                                  "mxfp4", "mxfp8e4m3", "mxfp8e5m2", "nvfp4"])
@pytest.mark.parametrize("kind", ["normal", "bf16", "outliers"])
def test_element_codes_match_ml_dtypes(qs, text, kind):
    """codes == ml_dtypes(clip(x * scale_factor, +-max)); dequantized == ml_dtypes decode *
    scale. The scale factor is the one lowbit stored: f32(1 / scale) for FP8, 2^(127 - e)
    for MX, 1 / (global * e4m3 block scale) (a division) for NVFP4."""
    rng = np.random.default_rng(seed(text, kind, "ml"))
    shape = (256, 256) if "x128" in text else (8, 256)
    x = make_data(kind, rng, shape, text)
    q = qs.quantize(text, x)
    s = parse_scheme(text)
    g, _ = group_index(s, shape)
    xf = x.reshape(-1)
    if s.fmt in FP8:
        elem = FP8[s.fmt]
        y = xf * recip(q.scale.reshape(-1))[g]
        scale_f = q.scale.reshape(-1)[g]
    elif s.fmt in MX:
        elem = MX[s.fmt][0]
        e = q.scale.reshape(-1).astype(np.int32)[g]
        y = xf * np.ldexp(F32(1), 127 - e).astype(F32)
        scale_f = q.scale.reshape(-1)[g].view(ml_dtypes.float8_e8m0fnu).astype(F32)
    else:
        elem = E2M1
        bs = q.scale.reshape(-1).view(ml_dtypes.float8_e4m3fn).astype(F32)[g]
        total = (q.global_scale[0] * bs).astype(F32)
        y = xf / total
        scale_f = None
    mt = ML_DTYPE[elem.name]
    ref = np.clip(y, -elem.max, elem.max).astype(F32).astype(mt).view(np.uint8)
    ours = our_codes(q).reshape(-1)
    assert_same(ours, ref, f"{text} {kind} codes vs ml_dtypes", x)
    dec = ours.view(mt).astype(F32)
    if scale_f is None:
        want = (dec * bs) * q.global_scale[0]
    else:
        want = dec * scale_f
    assert_same(qs.dequantize(q).reshape(-1), want.astype(F32), f"{text} {kind} dequantized", x)


# ---- gguf's MXFP4 (ggml's rules) against ours --------------------------------------------------


def ggml_blocks_to_ours(blocks: np.ndarray):
    """gguf MXFP4 blocks (17 bytes: e8m0, then byte j = element j | element j + 16 << 4) ->
    our (scale codes, element nibbles)."""
    b = blocks.reshape(-1, 17)
    e = b[:, 0].copy()
    qs_ = b[:, 1:]
    nib = np.concatenate([qs_ & 0xF, qs_ >> 4], axis=1)  # elements 0..15, then 16..31
    return e, nib


def mxfp4_rows(rng):
    """Rows built to exercise every rule difference, plus random ones (32-element blocks)."""
    blocks = []
    for _ in range(200):  # random normal / bf16 blocks of varied magnitude
        b = rng.standard_normal(32) * 10.0 ** rng.uniform(-6, 6)
        blocks.append(b.astype(F32) if rng.random() < 0.5 else b.astype(BF16).astype(F32))
    ties = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], F32)
    for _ in range(100):  # every e2m1 midpoint, both signs, with amax pinned to 6 * 2^e
        e = int(rng.integers(-100, 100))
        v = rng.choice(ties, 32) * rng.choice([-1, 1], 32)
        v[0] = 6 * rng.choice([-1, 1])
        blocks.append((v * F32(2.0**e)).astype(F32))
    for k in list(range(-20, 21)) + [-100, 60, 100]:  # amax one ulp below a power of two
        b = (rng.standard_normal(32) * 2.0 ** (k - 2)).astype(F32)
        b = np.clip(b, -F32(2.0**k) * F32(0.99), F32(2.0**k) * F32(0.99))
        b[int(rng.integers(32))] = np.nextafter(F32(2.0**k), F32(0)) * rng.choice([-1, 1])
        blocks.append(b.astype(F32))
    for _ in range(20):  # small negatives that round to zero
        b = (rng.standard_normal(32)).astype(F32)
        b[:8] = -rng.uniform(0, 0.2, 8)
        blocks.append(b)
    return np.stack(blocks).astype(F32)


def test_mxfp4_relation_to_ggml(qs):
    """ggml (gguf.quants.MXFP4) and lowbit agree except, exactly, where docs/formats.md says:
    (a) scale: ggml's e = floor(log2f(amax)) - 2 + 127 with an f32 log2, which rounds up to
        the next integer for amax just below 2^k (|k| >= 2): there ggml's e is ours + 1;
    (b) elements, where the scales agree: ggml picks the nearest value with ties toward
        zero and never the negative zero, so ours == ggml except our -0 (code 8) is ggml's
        +0 and at |x| / 2^(e - 127) in {0.75, 1.75, 3.5} ggml's magnitude code is ours - 1."""
    rng = np.random.default_rng(51)
    x = mxfp4_rows(rng)
    ours = qs.quantize("mxfp4", x)
    gb = gguf.quants.quantize(x, QT.MXFP4)
    ge, gn = ggml_blocks_to_ours(gb)
    oe = ours.scale.reshape(-1)
    on = ours.nibbles().reshape(-1, 32)
    amax = np.abs(x).max(axis=1)
    counts = {"blocks": len(x), "scale+1": 0, "neg_zero": 0, "tie_down": 0, "elements": x.size}
    for i in range(len(x)):
        if ge[i] != oe[i]:
            # (a): only one up, only just below a power of two
            assert ge[i] == oe[i] + 1, (i, ge[i], oe[i], amax[i])
            assert int(np.floor(np.log2(amax[i]))) == floor_log2(amax[i : i + 1])[0] + 1
            assert amax[i] >= F32(2.0 ** (int(oe[i]) - 127 + 3)) * F32(1 - 2.0**-20)
            counts["scale+1"] += 1
            continue
        want = on[i].copy()
        neg_zero = want == 8
        want[neg_zero] = 0
        t = np.abs(x[i].astype(np.float64)) / 2.0 ** (int(oe[i]) - 127)
        tie = np.isin(t, [0.75, 1.75, 3.5])
        want[tie] -= 1  # same sign bit, magnitude code one lower
        assert_same(gn[i], want, f"block {i} (e {oe[i]}) ggml vs ours mapped", x[i])
        counts["neg_zero"] += int(neg_zero.sum())
        counts["tie_down"] += int(tie.sum())
    print(f"\n  mxfp4 vs ggml: {counts}")
    assert counts["scale+1"] > 0 and counts["neg_zero"] > 0 and counts["tie_down"] > 0


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_mxfp4_dequantizes_ggml_blocks_like_ggml(qs):
    """Same bytes, same floats: ggml's value d/2 * doubled-e2m1 is e2m1 * 2^(e - 127), except
    that ggml decodes code 8 (-0) as +0 where we give -0 (e 0xff, NaN for us, is left out)."""
    rng = np.random.default_rng(52)
    gb = gguf.quants.quantize(mxfp4_rows(rng), QT.MXFP4).reshape(-1, 17)
    raw = rng.integers(0, 256, (300, 17), dtype=np.uint8)
    raw[:, 0] = rng.integers(0, 255, 300)  # e8m0 0xff is NaN for us, 2^127 for ggml
    for blocks in (gb, raw):
        e, nib = ggml_blocks_to_ours(blocks)
        q = qs.make("mxfp4", (len(blocks), 32), pack_nibbles(nib), scale=e.reshape(-1, 1))
        want = gguf.quants.dequantize(blocks.reshape(len(blocks), 17), QT.MXFP4)
        want = want.reshape(len(blocks), 32).astype(F32)
        assert not np.signbit(want[nib == 8]).any()
        want[nib == 8] = -0.0
        assert_same(qs.dequantize(q), want, "mxfp4 decode vs ggml")


# ---- the grammar, errors, and the reference's tiny-scale cases --------------------------------


def test_scheme_text_forms(qs):
    canon = {
        "int8": "int8:tensor", "fp8": "fp8e4m3:tensor", "mxfp8": "mxfp8e4m3",
        "uint8": "uint8:tensor", "uint4:block32": "uint4:block32",
        "int8:asym:block32": "int8:block32:asym", "int4:sym:block64": "int4:block64",
        "int8:channel:axis=1": "int8:channel:axis=1", "int8:channel:axis=0": "int8:channel",
        "int8:token:scale=bf16": "int8:token:scale=bf16", "int8:scale=f32": "int8:tensor",
        "fp8e5m2:block128x128": "fp8e5m2:block128x128", "fp8e4m3:sym": "fp8e4m3:tensor",
        "Q4_K": "q4_K", "q8_0": "q8_0", "nvfp4": "nvfp4",
    }
    for text, want in canon.items():
        got, _, _ = qs.scheme_info(text)
        assert got == want, (text, got, want)
        assert qs.scheme_info(got)[0] == got
    for text, needle in {
        "int5": "unknown format", "int4:block48": "block size", "int4:block64x32": "square",
        "nvfp4:block32": "fixed layout", "uint8:sym": "unsigned formats are affine",
        "fp8e4m3:asym": "symmetric", "fp8e4m3:scale=bf16": "fp8 scales are f32",
        "int8:block32x32": "1-d blocks", "int8:token:axis=1": "per-channel",
        "int8:scale=i8": "scale dtype", "int8:axis=x": "not an integer", "int8:foo": "unknown option",
    }.items():
        with pytest.raises(LowbitError, match=needle):
            qs.scheme_info(text)
    assert qs.scheme_info("int4:block32")[1:] == (-7, 7)
    assert qs.scheme_info("int4:block32:asym")[1:] == (-8, 7)
    assert qs.scheme_info("uint8")[1:] == (0, 255)


def test_layouts_and_shape_rules(qs):
    info = qs.info("int4:block32:asym", (5, 64))
    assert info.sizes == (160, 40, 40, 0) and info.scale_shape == (5, 2)
    assert qs.info("int4:tensor", (5, 7)).sizes[0] == 18  # ceil(35 / 2)
    assert qs.info("fp8e4m3:block128", (5, 300)).scale_shape == (5, 3)
    assert qs.info("fp8e4m3:block128x128", (3, 300, 200)).scale_shape == (3, 3, 2)
    assert qs.info("nvfp4", (3, 32)).dtypes == ("f4e2m1", "f8e4m3fn", None, "f32")
    assert qs.info("mxfp8e5m2", (3, 64)).dtypes == ("f8e5m2", "e8m0", None, None)
    assert qs.info("int8:token", (7,)).scale_shape == (1,)
    assert qs.info("q4_K", (3, 512)).sizes == (3 * 288, 0, 0, 0)
    with pytest.raises(LowbitError, match="not a multiple of the block size 32"):
        qs.info("int4:block32", (5, 33))
    with pytest.raises(LowbitError, match="not a multiple"):
        qs.info("mxfp4", (2, 48))
    with pytest.raises(LowbitError, match="axis 2 out of range"):
        qs.info("int8:channel:axis=2", (5, 33))


def test_errors(qs):
    x = np.ones((3, 32), F32)
    x[1, 8] = np.nan
    x[2, 6] = np.inf
    for text in ("int8", "fp8e4m3:token", "nvfp4", "mxfp4", "q8_0"):
        with pytest.raises(LowbitError, match=r"src element \[1, 8\] \(flat index 40\) is NaN"):
            qs.quantize(text, x)
    x[1, 8] = 1
    with pytest.raises(LowbitError, match=r"\[2, 6\] \(flat index 70\) is Inf"):
        qs.quantize("int8:token", x)
    x[2, 6] = 1
    for bad in (-1.0, np.nan, np.inf):
        with pytest.raises(LowbitError, match="must be finite and >= 0"):
            qs.quantize("int8", x, scale=[bad])
    with pytest.raises(LowbitError, match="zero point 300"):
        qs.quantize("int8:tensor:asym", x, scale=[0.1], zero=[300])
    with pytest.raises(LowbitError, match="computes its scales from the data"):
        qs.quantize("mxfp4", x, scale=[[1]] * 3)
    with pytest.raises(LowbitError, match="must be finite and >= 0"):
        qs.quantize("nvfp4", x, global_scale=[-1.0])


TINY_SCHEMES = ["int8:tensor", "uint8:tensor", "int8:tensor:asym", "fp8e4m3:tensor",
                "fp8e5m2:tensor"]


@pytest.mark.parametrize("text", TINY_SCHEMES)
def test_groups_of_tiny_values(qs, text):
    """docs/formats.md: a computed scale under 2^-126 (f32's smallest normal) is flushed to
    0, so a group of tiny values quantizes to exact zeros: finite results, zeros stay zeros,
    and the error is at most the group's amax. (Before the rule, 1/scale overflowed to Inf
    and 0 * Inf gave NaN codes.) Groups just above the threshold keep a one-step error."""
    for values in ([1e-38, 2e-38, -1e-38], [1e-38, 2e-38, 3e-38]):  # with and without lo < 0
        x = np.zeros(64, F32)
        x[1:4] = values
        q = qs.quantize(text, x)
        y = qs.dequantize(q)
        assert np.isfinite(y).all()
        assert not y[x == 0].any()
        assert float(np.asarray(q.scale, np.float64).max()) == 0.0
        assert not y.any()
    for values in ([1e-30, 2e-30, -1e-30], [1e-30, 2e-30, 3e-30]):
        x = np.zeros(64, F32)
        x[1:4] = values
        q = qs.quantize(text, x)
        y = qs.dequantize(q)
        step = float(np.asarray(q.scale, np.float64).max())
        assert step > 0 and np.isfinite(y).all() and not y[x == 0].any()
        # integers: one step (the scale); fp8: half a spacing at the top of the range
        # (e4m3: 32 / 448 of amax, e5m2: 8192 / 57344), well under 1/8 of amax.
        bound = step if text.startswith(("int", "uint")) else 0.125 * float(np.abs(x).max())
        assert np.all(np.abs(y.astype(np.float64) - x) <= bound)


# ---- the worked examples of docs/formats.md ----------------------------------------------------


def test_worked_examples_of_the_docs(qs):
    """The numbers printed in docs/formats.md's worked examples."""
    # int8 symmetric per tensor
    x = np.array([2.54, -1.0, 0.01, 0.03, 1.27, -0.635], F32)
    q = qs.quantize("int8", x)
    assert bits32(q.scale)[0] == 0x3CA3D70A  # 0.02 = f32(2.54 / 127)
    assert q.int_codes().tolist() == [127, -50, 0, 2, 64, -32]
    assert qs.dequantize(q).tolist() == [float(F32(c) * q.scale[0]) for c in q.int_codes()]
    # int4 asymmetric, one block of 32 (the first 8 values shown; the rest 0)
    x = np.zeros((1, 32), F32)
    x[0, :8] = [-1.0, 3.0, 0.0, 1.0, 2.0, 0.5, -0.2, 2.9]
    q = qs.quantize("int4:block32:asym", x)
    assert bits32(q.scale)[0] == 0x3E888889 and q.zero.tolist() == [[-4]]
    assert bits32(F32(1) / q.scale[0, 0])[0] == 0x406FFFFF  # 3.7499998, not 3.75
    assert q.int_codes()[0, :8].tolist() == [-8, 7, -4, 0, 3, -2, -5, 7]
    assert q.codes[:4].tolist() == [0x78, 0x0C, 0xE3, 0x7B]
    assert qs.dequantize(q)[0, :8].tolist() == [
        float(F32(c + 4) * q.scale[0, 0]) for c in q.int_codes()[0, :8]]
    # fp8 e4m3 per token
    x = np.array([[448.0, 1.0, -0.3, 100.0], [0.5, 0.25, -0.125, 0.0]], F32)
    q = qs.quantize("fp8e4m3:token", x)
    assert q.scale.tolist() == [1.0, float(F32(0.5) / F32(448))]
    assert q.codes.tolist() == [[0x7E, 0x38, 0xAA, 0x6C], [0x7E, 0x76, 0xEE, 0x00]]
    assert qs.dequantize(q)[0].tolist() == [448.0, 1.0, -0.3125, 96.0]
    # nvfp4, one row of two blocks (the second is the first times 0.01)
    x = np.array([6.0, -3.0, 0.5, 1.2, 0.0, 2.9, -6.0, 4.4, 1.0, 0.7, -0.26, 5.0, 3.5, 0.1,
                  -1.75, 2.0], F32)[None]
    x = np.concatenate([x, x * F32(0.01)], axis=1)
    q = qs.quantize("nvfp4", x)
    assert bits32(q.global_scale)[0] == 0x3B124925  # f32(6 / 2688)
    assert q.scale.tolist() == [[0x7E, 0x49]]  # 448 and 4.5
    assert q.nibbles()[0].tolist() == [7, 13, 1, 2, 0, 5, 15, 6, 2, 1, 9, 6, 6, 0, 12, 4,
                                       7, 13, 1, 2, 0, 5, 15, 6, 2, 1, 9, 6, 5, 0, 11, 4]
    assert q.codes[:2].tolist() == [0xD7, 0x21]
    assert bits32(qs.dequantize(q)[0, 0])[0] == 0x40C00001  # (6 * 448) * global = 6.0000005
    # mxfp4, one block of 32
    x = np.zeros((1, 32), F32)
    x[0, :8] = [5.0, -0.75, 0.3, 1.75, -7.9, 3.5, 0.0, -0.1]
    q = qs.quantize("mxfp4", x)
    assert q.scale.tolist() == [[127]]  # floor(log2 7.9) - 2 = 0 -> 2^0
    assert q.nibbles()[0, :8].tolist() == [6, 10, 1, 4, 15, 6, 0, 8]
    assert q.codes[:4].tolist() == [0xA6, 0x41, 0x6F, 0x80]
    assert qs.dequantize(q)[0, :8].tolist() == [4.0, -1.0, 0.5, 2.0, -6.0, 4.0, 0.0, -0.0]
    ge, gn = ggml_blocks_to_ours(gguf.quants.quantize(x, QT.MXFP4))  # ggml's rules
    assert ge.tolist() == [127] and gn[0, :8].tolist() == [6, 9, 1, 3, 15, 5, 0, 0]
