"""The `lowbit` Python package (python/lowbit, docs/python.md): the real API, not the ctypes
shim the other files use.

* Every scheme: quantize / dequantize / fake_quantize through the package give the same
  bytes and bits as the C++ reference through the shim (when the shim is built), and the
  docs' rules restated in numpy for two schemes (always).
* convert is bit-exact with ml_dtypes (and with torch where it is installed).
* Zero-copy, proven by pointers and np.shares_memory: inputs are read in place (NumPy,
  ml_dtypes, strided views, torch CPU / CUDA tensors), parts exported twice share memory,
  writes through an exported part reach lowbit, results outlive their QuantizedTensor.
* Round trips through safetensors and GGUF files read by the `safetensors` and `gguf`
  packages (parts saved by those packages; lowbit.load / save: test_package_files.py).
* Errors: each lowbit error code becomes its Python exception with lowbit's message.
* 10^5 small calls keep the process's resident memory flat and the inputs' refcounts.
* torch (skipped, visibly, where `import torch` fails; the GPU machine has it): CPU and
  CUDA tensors in and out, fp8 dtypes, and fake_quantize's autograd (straight-through
  estimator) against torch.fake_quantize_per_tensor_affine's gradient.

The package comes from PYTHONPATH=<build>/python (scripts/test builds it with
-DLOWBIT_BUILD_PYTHON=ON) or from `pip install .`. Without it these tests skip, unless
LOWBIT_REQUIRE_PACKAGE=1 (scripts/test sets it), where a missing package is an error.
"""

from __future__ import annotations

import ctypes
import gc
import os
import pickle
import sys
import zlib

import ml_dtypes
import numpy as np
import pytest

try:
    import lowbit
except ImportError as e:  # pragma: no cover - depends on how the suite is run
    if os.environ.get("LOWBIT_REQUIRE_PACKAGE") == "1":
        raise
    pytest.skip(
        f"the lowbit package is not importable ({e}): build with -DLOWBIT_BUILD_PYTHON=ON and "
        "put <build>/python on PYTHONPATH, or pip install . (docs/python.md)",
        allow_module_level=True,
    )

from lowbit_shim_quant import QuantShim

F32 = np.float32
BF16 = ml_dtypes.bfloat16

NON_GGUF_SCHEMES = [
    "int8:tensor", "int8:channel", "int8:channel:axis=1", "int8:channel:asym", "int8:token",
    "int8:token:asym", "int8:block16:scale=f16", "int4:block32:asym", "int4:block128",
    "int4:tensor", "int4:channel:axis=1:asym", "uint8:tensor", "uint8:channel",
    "uint8:token:scale=f16", "uint4:tensor", "uint4:block64:scale=bf16", "int8:token:scale=bf16",
    "fp8e4m3:tensor", "fp8e4m3:token", "fp8e5m2:channel", "fp8e4m3:block128", "fp8e5m2:block128",
    "fp8e4m3:block128x128", "fp8e4m3:channel:axis=1", "nvfp4", "mxfp4", "mxfp8e4m3", "mxfp8e5m2",
]
GGUF_SCHEMES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K",
                "q8_K"]
ALL_SCHEMES = NON_GGUF_SCHEMES + GGUF_SCHEMES


def seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


def data(shape, *parts, outliers=True) -> np.ndarray:
    rng = np.random.default_rng(seed(shape, *parts))
    x = rng.standard_normal(shape).astype(F32)
    if outliers:
        flat = x.reshape(-1)
        idx = rng.choice(flat.size, max(1, flat.size // 97), replace=False)
        flat[idx] *= 30
    return x


def shape_for(text: str) -> tuple:
    return (136, 256) if "x128" in text else (8, 256)


def as_bytes(a) -> np.ndarray:
    """Any part (lowbit.Array, numpy array) as its flat bytes."""
    if isinstance(a, lowbit.Array):
        a = a.numpy()
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def assert_bits(ours, theirs, what=""):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    a, b = as_bytes(ours), as_bytes(theirs)
    bad = np.flatnonzero(a != b)
    assert bad.size == 0, f"{what}: {bad.size} bytes differ, first at byte {bad[:8]}"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def qs(shim) -> QuantShim:
    return QuantShim(shim)


# ---- Scheme -----------------------------------------------------------------------------------


def test_scheme_text_forms_and_properties():
    s = lowbit.Scheme("int4:block32:asym")
    assert str(s) == "int4:block32:asym" and repr(s) == "lowbit.Scheme('int4:block32:asym')"
    assert s == lowbit.Scheme("int4:block32:asym") == "int4:block32:asym"
    assert s != lowbit.Scheme("int4:block32") and s != 3 and s != "not a scheme"
    assert hash(s) == hash(lowbit.Scheme(str(s)))
    assert (s.format, s.granularity, s.block, s.axis, s.symmetric, s.is_integer) == (
        "int4", "block", 32, None, False, True)
    assert (s.code_dtype, s.scale_dtype, s.qmin, s.qmax, s.gguf_type) == ("i4", "f32", -8, 7, None)
    assert s.scale_shape((4, 64)) == (4, 2) and s.code_shape((4, 64)) == (4, 64)
    assert pickle.loads(pickle.dumps(s)) == s
    assert lowbit.Scheme(s) == s

    c = lowbit.Scheme("int8:channel:axis=1")
    assert (c.granularity, c.axis, c.symmetric, c.qmin, c.qmax) == ("channel", 1, True, -127, 127)
    assert c.scale_shape((3, 5)) == (5,)
    f = lowbit.Scheme("fp8e4m3:token")
    assert (f.qmin, f.qmax, f.is_integer, f.code_dtype, f.scale_dtype) == (
        None, None, False, "f8e4m3fn", "f32")
    assert lowbit.Scheme("nvfp4").scale_dtype == "f8e4m3fn"
    assert lowbit.Scheme("mxfp4").scale_dtype == "e8m0"
    assert lowbit.Scheme("uint4:block64:scale=bf16").scale_dtype == "bf16"
    k = lowbit.Scheme("q4_K")
    assert (k.format, k.gguf_type, k.scale_dtype, k.code_dtype) == ("gguf", 12, None, "u8")
    assert k.scale_shape((2, 256)) is None and k.code_shape((2, 256)) == (2, 144)


def test_scheme_errors_carry_lowbits_message():
    with pytest.raises(ValueError, match="block size '33' must be") as e:
        lowbit.Scheme("int4:block33")
    assert e.value.code == "invalid_argument"
    with pytest.raises(ValueError, match="not a multiple of the block"):
        lowbit.Scheme("int4:block32").scale_shape((4, 48))
    with pytest.raises(TypeError, match="a scheme is a lowbit.Scheme or its text form"):
        lowbit.quantize(np.zeros(32, F32), 8)


# ---- quantize / dequantize against the reference --------------------------------------------


@pytest.mark.parametrize("text", ALL_SCHEMES)
@pytest.mark.parametrize("src", ["f32", "bf16"])
def test_round_trip_matches_the_reference(qs, text, src):
    """Package and shim run the same C++ reference; equality proves the package's path
    (DLPack in, parts out, packing, dtypes) adds and loses nothing."""
    x = data(shape_for(text), text)
    if src == "bf16":
        x = x.astype(BF16)
    q = lowbit.quantize(x, text)
    ref = qs.quantize(text, x)
    assert q.shape == x.shape and q.scheme == text and q.device == "cpu"
    assert_bits(as_bytes(q.data), as_bytes(ref.codes), f"{text} codes")
    for name, theirs in (("scale", ref.scale), ("zero", ref.zero),
                         ("global_scale", ref.global_scale)):
        ours = getattr(q, name)
        assert (ours is None) == (theirs is None), name
        if ours is not None:
            assert_bits(as_bytes(ours), as_bytes(theirs), f"{text} {name}")
    for dt, npdt in (("f32", F32), ("bf16", BF16), ("f16", np.float16)):
        y = lowbit.dequantize(q, dt)
        assert isinstance(y, np.ndarray) and y.dtype == npdt and y.shape == x.shape
        assert_bits(y, qs.dequantize(ref, npdt), f"{text} dequantize to {dt}")
    fq = lowbit.fake_quantize(x, text)
    assert fq.dtype == x.dtype
    assert_bits(fq, qs.fake_quantize(text, x), f"{text} fake_quantize")


@pytest.mark.parametrize("text", ["int8:channel:asym", "uint4:tensor", "fp8e4m3:token",
                                  "int4:block32:asym"])
def test_static_quantization_matches_the_reference(qs, text):
    x = data((6, 128), text, "static")
    s = lowbit.Scheme(text)
    ss = s.scale_shape(x.shape)
    rng = np.random.default_rng(seed(text))
    scale = (rng.uniform(0.01, 0.2, ss)).astype(F32)
    zero = None if s.symmetric else rng.integers(s.qmin, s.qmax + 1, ss).astype(np.int32)
    q = lowbit.quantize(x, s, scale=scale, zero=zero)
    ref = qs.quantize(text, x, scale=scale, zero=zero)
    assert_bits(as_bytes(q.data), as_bytes(ref.codes), "codes")
    assert_bits(q.scale.numpy(), scale, "given scale kept")
    fq = lowbit.fake_quantize(x, s, scale=scale, zero=zero)
    assert_bits(fq, qs.dequantize(ref), "static fake_quantize")


def test_static_nvfp4_global_scale(qs):
    x = data((4, 64), "nvfp4-static")
    g = np.array([0.01], F32)
    q = lowbit.quantize(x, "nvfp4", global_scale=g)
    ref = qs.quantize("nvfp4", x, global_scale=g)
    assert_bits(as_bytes(q.data), as_bytes(ref.codes), "codes")
    assert_bits(as_bytes(q.scale), as_bytes(ref.scale), "block scales")
    assert q.global_scale.numpy()[0] == g[0]


def test_docs_rules_restated_in_numpy():
    """Independent of the shim: int8:channel and int4:block32:asym by docs/formats.md."""
    x = data((16, 64), "rules")
    q = lowbit.quantize(x, "int8:channel")
    scale = (np.max(np.abs(x), axis=1) / F32(127)).astype(F32)
    inv = (F32(1) / scale).astype(F32)
    codes = np.clip(np.rint(x * inv[:, None]), -127, 127).astype(np.int8)
    assert_bits(q.scale.numpy(), scale, "int8 scale")
    assert_bits(q.data.numpy(), codes, "int8 codes")
    assert_bits(lowbit.dequantize(q), (codes.astype(F32) * scale[:, None]).astype(F32), "int8 deq")

    q = lowbit.quantize(x, "int4:block32:asym")
    g = x.reshape(16, 2, 32)
    lo, hi = np.minimum(g.min(-1), 0), np.maximum(g.max(-1), 0)
    scale = ((hi - lo) / F32(15)).astype(F32)
    inv = (F32(1) / scale).astype(F32)
    zero = np.clip(F32(-8) - np.rint(lo * inv), -8, 7).astype(np.int32)
    codes = np.clip(np.rint(g * inv[..., None]) + zero[..., None], -8, 7).astype(np.int8)
    assert_bits(q.scale.numpy(), scale, "int4 scale")
    assert_bits(q.zero.numpy(), zero, "int4 zero")
    packed = lowbit._arrays.pack_nibbles(codes.reshape(16, 64))
    assert q.data.shape == (16, 32) and q.data.dtype == "u8" and q.code_dtype == "i4"
    assert_bits(as_bytes(q.data), packed, "int4 packed codes")
    unpacked = lowbit._arrays.unpack_nibbles(q.data.numpy(), (16, 64), ml_dtypes.int4)
    assert_bits(unpacked.astype(np.int8), codes.reshape(16, 64), "unpack_nibbles")


# ---- the straight-through mask ---------------------------------------------------------------


@pytest.mark.parametrize("text", NON_GGUF_SCHEMES)
def test_ste_mask_agrees_with_the_codes(text):
    """ste_mask recomputes the kernel's scaled values from q's own scales; the codes must be
    exactly those values clamped, so the mask (1 inside the range, 0 where clamped) uses the
    kernel's arithmetic."""
    s = lowbit.Scheme(text)
    x = data(shape_for(text), text, "ste")
    given = {}
    if s.is_integer:  # static scales small enough that some elements saturate
        ss = s.scale_shape(x.shape)
        given["scale"] = np.full(ss, 0.05, F32)
        if not s.symmetric:
            given["zero"] = np.zeros(ss, np.int32)
    elif s.format == "nvfp4":
        given["global_scale"] = np.array([0.002], F32)
    q = lowbit.quantize(x, s, **given)
    mask = lowbit.ste_mask(x, q)
    assert mask.dtype == bool and mask.shape == x.shape
    if s.is_integer:
        assert 0 < mask.sum() < mask.size
        codes = lowbit._arrays.unpack_nibbles(q.data.numpy(), x.shape, np.uint8) \
            if s.code_dtype in ("i4", "u4") else q.data.numpy()
        codes = codes.astype(np.int32)
        if s.code_dtype == "i4":
            codes = (codes ^ 8) - 8
        stored = F32(q.scale.numpy().astype(F32).reshape(-1)[0])  # 0.05 in the scale dtype
        r = np.rint(x * (F32(1) / stored))
        assert np.array_equal(np.clip(r, s.qmin, s.qmax).astype(np.int32), codes)
        assert np.array_equal(mask, (r >= s.qmin) & (r <= s.qmax))
    elif s.format.startswith("fp8"):
        # Codes are the saturated conversion of x * inv_scale: where the mask is 0 they are
        # +-max finite.
        codes = q.data.numpy().astype(F32)
        fmax = 448.0 if s.format == "fp8e4m3" else 57344.0
        assert np.all(np.abs(codes[~mask]) == fmax)
    elif s.format == "nvfp4":
        codes = lowbit._arrays.unpack_nibbles(q.data.numpy(), x.shape, ml_dtypes.float4_e2m1fn)
        assert 0 < mask.sum() < mask.size
        assert np.all(np.abs(codes[~mask].astype(F32)) == 6.0)
    else:  # mx
        codes = q.data.numpy() if s.format != "mxfp4" else lowbit._arrays.unpack_nibbles(
            q.data.numpy(), x.shape, ml_dtypes.float4_e2m1fn)
        emax = {"mxfp4": 6.0, "mxfp8e4m3": 448.0, "mxfp8e5m2": 57344.0}[s.format]
        assert np.all(np.abs(codes[~mask].astype(F32)) == emax)


# ---- convert vs ml_dtypes -----------------------------------------------------------------------

CONVERT_TARGETS = {"bf16": BF16, "f16": np.float16, "f8e4m3fn": ml_dtypes.float8_e4m3fn,
                   "f8e5m2": ml_dtypes.float8_e5m2, "f4e2m1": ml_dtypes.float4_e2m1fn,
                   "e8m0": ml_dtypes.float8_e8m0fnu}


def same_float_bits(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Equal bit patterns, or both NaN (NaN payloads are not part of the contract)."""
    a, b = ours.view(f"u{ours.itemsize}"), theirs.view(f"u{theirs.itemsize}")
    nan = np.isnan(ours.astype(F32)) & np.isnan(theirs.astype(F32))
    return (a == b) | nan


@pytest.mark.parametrize("dst", list(CONVERT_TARGETS))
def test_convert_from_f32_is_bit_exact_with_ml_dtypes(dst):
    rng = np.random.default_rng(seed("convert", dst))
    bits = rng.integers(0, 2**32, 1 << 18, dtype=np.uint64).astype(np.uint32)
    x = np.concatenate([bits.view(F32), np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 448.0,
                                                  464.0, 57344.0, 6.0, 7.0, 1e-45], F32)])
    if dst == "e8m0":
        x = np.abs(x)  # e8m0 has no sign
    # f32 sources in the range of each target, so most elements are ordinary values
    x = np.concatenate([x, rng.standard_normal(1 << 16).astype(F32) * F32(4)])
    ours = lowbit.convert(x, dst)
    with np.errstate(over="ignore", invalid="ignore"):
        theirs = x.astype(CONVERT_TARGETS[dst])
    assert ours.dtype == theirs.dtype and ours.shape == x.shape
    ok = same_float_bits(ours, theirs)
    assert ok.all(), f"f32->{dst}: {np.sum(~ok)} differ, first inputs {x[~ok][:5]}"


@pytest.mark.parametrize("src", ["bf16", "f16", "f8e4m3fn", "f8e5m2", "e8m0"])
def test_convert_every_value_to_f32_is_bit_exact_with_ml_dtypes(src):
    dt = CONVERT_TARGETS[src]
    width = np.dtype(dt).itemsize
    x = np.arange(2 ** (8 * width), dtype=f"u{width}").view(dt)
    ours = lowbit.convert(x, "f32")
    assert ours.dtype == F32
    assert same_float_bits(ours, x.astype(F32)).all()
    # and f32 -> src again: the values survive exactly
    finite = np.isfinite(ours)
    assert same_float_bits(lowbit.convert(ours[finite], src), x[finite]).all()


def test_convert_f4e2m1_both_ways_and_saturation():
    codes = np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn).reshape(2, 8)
    ours = lowbit.convert(codes, "f32")  # NumPy's one-per-byte fp4 is packed on the way in
    assert_bits(ours, codes.astype(F32), "f4e2m1 -> f32")
    x = np.array([1e6, -1e6, np.inf], F32)
    assert np.all(np.isinf(lowbit.convert(x, "f8e5m2").astype(F32)))
    sat = lowbit.convert(x, "f8e4m3fn", saturation="finite").astype(F32)
    assert list(sat) == [448.0, -448.0, 448.0]
    a = lowbit.convert(lowbit.asarray(x[:2]), "f4e2m1")  # Array in -> packed Array out
    assert isinstance(a, lowbit.Array) and a.dtype == "u8" and a.shape == (1,)
    theirs = lowbit._arrays.pack_nibbles(x[:2].astype(ml_dtypes.float4_e2m1fn))
    assert_bits(a.numpy(), theirs, "packed f4e2m1 bytes")


# ---- zero-copy ----------------------------------------------------------------------------------


def test_inputs_are_read_in_place():
    x = data((8, 64), "in-place")
    a = lowbit.asarray(x)
    assert a.data_ptr == x.ctypes.data and a.shape == x.shape and a.dtype == "f32"
    assert a.strides == (64, 1) and a.is_contiguous
    v = x[:, ::2]  # strided: same memory, element strides
    av = lowbit.asarray(v)
    assert av.data_ptr == x.ctypes.data and av.strides == (64, 2) and not av.is_contiguous
    t = x.T
    at = lowbit.asarray(t)
    assert at.data_ptr == x.ctypes.data and at.strides == (1, 64)
    for dt, name in ((BF16, "bf16"), (ml_dtypes.float8_e4m3fn, "f8e4m3fn"),
                     (ml_dtypes.float8_e5m2, "f8e5m2"), (np.float16, "f16")):
        y = x.astype(dt)
        ay = lowbit.asarray(y)
        assert ay.data_ptr == y.ctypes.data and ay.dtype == name
    ro = x.copy()
    ro.flags.writeable = False
    assert lowbit.asarray(ro).readonly


@pytest.mark.parametrize("text", ["int8:channel", "int4:block32:asym", "fp8e4m3:token"])
def test_strided_inputs_are_honoured(text):
    base = data((32, 128), text, "strided")
    for view in (base[:, ::2], base.T[::2].T, base[::3]):
        if lowbit.Scheme(text).block and view.shape[-1] % lowbit.Scheme(text).block:
            continue
        assert not view.flags.c_contiguous
        q1, q2 = lowbit.quantize(view, text), lowbit.quantize(np.ascontiguousarray(view), text)
        assert_bits(as_bytes(q1.data), as_bytes(q2.data), "strided vs contiguous codes")
        assert_bits(lowbit.dequantize(q1), lowbit.dequantize(q2), "strided dequantize")
        assert_bits(lowbit.convert(view, "bf16"), view.astype(BF16), "strided convert")
    neg = base[:, ::-1]  # negative strides: lowbit copies first
    assert_bits(lowbit.fake_quantize(neg, text),
                lowbit.fake_quantize(np.ascontiguousarray(neg), text), "negative strides")


def capsule_name(capsule) -> bytes:
    f = ctypes.pythonapi.PyCapsule_GetName
    f.restype, f.argtypes = ctypes.c_char_p, [ctypes.py_object]
    return f(capsule)


def test_parts_are_views_of_lowbits_memory():
    x = data((8, 64), "parts")
    q = lowbit.quantize(x, "int8:channel:asym")
    d1, d2 = np.asarray(q.data), np.asarray(q.data)  # two exports of the same part
    assert d1.ctypes.data == d2.ctypes.data == q.data.data_ptr
    assert np.shares_memory(d1, d2)
    dl = np.from_dlpack(q.data)  # DLPack, versioned capsule (NumPy asks for max_version)
    assert dl.ctypes.data == q.data.data_ptr and dl.dtype == np.int8 and np.shares_memory(dl, d1)
    assert q.scale.__array_interface__["data"][0] == q.scale.data_ptr
    assert capsule_name(q.data.__dlpack__()) == b"dltensor"
    assert capsule_name(q.data.__dlpack__(max_version=(1, 0))) == b"dltensor_versioned"
    assert q.data.__dlpack_device__() == (1, 0)
    copied = np.from_dlpack(q.data, copy=True)
    assert copied.ctypes.data != q.data.data_ptr and np.array_equal(copied, d1)
    # Writing through an export reaches lowbit: scale x2 doubles the dequantized values.
    y = lowbit.dequantize(q)
    np.asarray(q.scale)[...] *= 2
    assert_bits(lowbit.dequantize(q), (y * 2).astype(F32), "after writing the scale")
    # Exports keep the memory alive after the QuantizedTensor is gone.
    before = d1.copy()
    zero = q.zero.numpy()
    del q
    gc.collect()
    _ = [np.ones(1000) for _ in range(100)]
    assert np.array_equal(d1, before) and zero.shape == (8,)


def test_ml_dtypes_parts_cross_as_ml_dtypes():
    x = data((4, 64), "ml-parts")
    q = lowbit.quantize(x, "nvfp4")
    assert q.scale.dtype == "f8e4m3fn" and not hasattr(q.scale, "__array_interface__")
    s1, s2 = np.asarray(q.scale), q.scale.numpy()
    assert s1.dtype == ml_dtypes.float8_e4m3fn and s1.ctypes.data == s2.ctypes.data == q.scale.data_ptr
    raw = np.from_dlpack(q.scale.raw())
    assert raw.dtype == np.uint8 and raw.ctypes.data == q.scale.data_ptr
    y = lowbit.dequantize(q, "bf16")
    assert y.dtype == BF16
    assert lowbit.asarray(y).data_ptr == y.ctypes.data  # and straight back in, in place


# ---- files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["int8:channel", "int4:block32:asym", "uint4:block64:scale=bf16",
                                  "fp8e4m3:token", "nvfp4", "mxfp4", "q4_K"])
def test_safetensors_round_trip(tmp_path, text):
    """Parts saved with safetensors (ml_dtypes parts as their bits), read back with
    safetensors, wrapped again with QuantizedTensor.from_parts: dequantize is unchanged."""
    from safetensors.numpy import load_file, save_file

    x = data((16, 256), text, "safetensors")
    q = lowbit.quantize(x, text)
    parts = {}
    for name in ("data", "scale", "zero", "global_scale"):
        p = getattr(q, name)
        if p is not None:
            parts[name] = np.ascontiguousarray(p.raw().numpy())
    save_file(parts, tmp_path / "q.safetensors", metadata={"scheme": str(q.scheme)})
    back = load_file(tmp_path / "q.safetensors")
    q2 = lowbit.QuantizedTensor.from_parts(text, x.shape, **back)
    assert q2.scheme == text and q2.shape == x.shape
    assert q2.data.data_ptr == back["data"].ctypes.data  # zero-copy over the loaded arrays
    assert_bits(lowbit.dequantize(q2), lowbit.dequantize(q), f"{text} after safetensors")


@pytest.mark.parametrize("text", ["q8_0", "q4_0", "q5_1", "q4_K", "q6_K"])
def test_gguf_file_round_trip(tmp_path, text):
    """Our GGUF blocks written into a GGUF file with gguf's writer, read with its reader and
    decoded with gguf.quants: the same floats as our dequantize."""
    import gguf

    x = data((8, 512), text, "gguf")
    q = lowbit.quantize(x, text)
    qt = gguf.GGMLQuantizationType[text.upper()]
    path = tmp_path / "w.gguf"
    w = gguf.GGUFWriter(path, "lowbit-test")
    w.add_tensor("w", q.data.numpy(), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    t = gguf.GGUFReader(path).tensors[0]
    assert t.tensor_type == qt
    theirs = gguf.quants.dequantize(np.asarray(t.data), qt).reshape(x.shape)
    assert_bits(lowbit.dequantize(q), theirs, f"{text} via a GGUF file")
    q2 = lowbit.QuantizedTensor.from_parts(text, x.shape, np.asarray(t.data))
    assert_bits(lowbit.dequantize(q2), theirs, f"{text} from the file's bytes")


# ---- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("code,exc", [
    ("invalid_argument", ValueError), ("unsupported", NotImplementedError),
    ("out_of_memory", MemoryError), ("device_error", RuntimeError), ("io_error", OSError),
    ("corrupt_file", lowbit.CorruptFileError), ("internal", RuntimeError)])
def test_every_error_code_maps_to_its_exception(code, exc):
    with pytest.raises(exc) as e:
        lowbit._lowbit._raise_error(code, f"a message for {code}")
    assert str(e.value) == f"a message for {code}" and e.value.code == code
    assert issubclass(lowbit.CorruptFileError, ValueError)


def test_bad_arguments_raise_with_lowbits_message():
    x = data((4, 64), "errors")
    cases = [
        (lambda: lowbit.quantize(x, "int4:block48"), ValueError, "block size '48' must be"),
        (lambda: lowbit.quantize(x[:, :40], "int4:block32"), ValueError,
         r"last axis \(40\) of shape \[4, 40\] is not a multiple of the block size 32"),
        (lambda: lowbit.quantize(x.astype(np.int32), "int8"), ValueError,
         "quantize: src dtype i32 is not f32, f16, bf16 or f64"),
        (lambda: lowbit.quantize(np.array([1.0, np.nan, 2.0], F32), "int8"), ValueError, "NaN"),
        (lambda: lowbit.quantize(x.astype(np.int64), "int8"), ValueError,
         "dtype int64 has no lowbit equivalent"),
        (lambda: lowbit.quantize(np.zeros((2,) * 9, F32), "int8"), ValueError, "at most 8"),
        (lambda: lowbit.quantize(["a", "b"], "int8"), TypeError, "numeric arrays"),
        (lambda: lowbit.quantize(x, "int8", scale=np.ones(3, F32)), ValueError,
         r"scale: wrong number of elements \(the scheme needs f32\[1\]"),
        (lambda: lowbit.quantize(x, "int8:asym", scale=np.ones(1, F32)), ValueError,
         "needs a zero point"),
        (lambda: lowbit.quantize(x, "mxfp4", scale=np.ones(8, np.uint8)), ValueError,
         "computes its scales from the data"),
        (lambda: lowbit.convert(x, "i8"), ValueError, "convert: dst dtype i8 is not a float dtype"),
        (lambda: lowbit.convert(x, "f33"), ValueError, "f33"),
        (lambda: lowbit.convert(x, "bf16", saturation="clamp"), ValueError,
         'saturation must be "none" or "finite"'),
        (lambda: lowbit.dequantize(lowbit.quantize(x, "int8"), "i8"), ValueError,
         "dequantize: dst dtype i8 is not f32, f16, bf16 or f64"),
        (lambda: lowbit.dequantize(x), TypeError, "takes a lowbit.QuantizedTensor"),
        (lambda: lowbit.QuantizedTensor.from_parts("int8:channel", (4, 64), np.zeros(256, np.int8)),
         ValueError, "scale: scheme int8:channel has this part"),
        (lambda: lowbit.QuantizedTensor.from_parts("int4:tensor", (4, 64), np.zeros(100, np.uint8),
                                                   scale=np.ones(1, F32)),
         ValueError, "data: wrong number of bytes"),
        (lambda: lowbit.plan_info("softmax", x), ValueError, "op must be"),
        (lambda: lowbit.asarray(np.ones(3, np.complex64)), ValueError, "complex64"),
    ]
    for fn, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            fn()


# ---- plans, info -----------------------------------------------------------------------------


def test_plan_introspection():
    x = data((4, 64), "plans")
    p = lowbit.plan_info("quantize", x, "int4:block32:asym")
    assert p.op == "quantize" and p.sku.startswith("quantize/cpu/f32/int4:block32:asym/")
    assert p.kernel in p.sku and p.backend == "cpu" and p.scheme == "int4:block32:asym"
    assert p.precision and p.math and p.deterministic in (True, False)
    assert all(isinstance(k, str) and isinstance(r, str) and r for k, r in p.declined)
    assert "dynamic f32[4, 64]" in p.description and p.workspace_size >= 0
    assert "strided" in lowbit.plan_info("quantize", x[:, ::2], "int8").description
    c = lowbit.plan_info("convert", x, "bf16")
    assert c.sku.startswith("convert/cpu/f32->bf16/") and c.bit_stable
    d = lowbit.plan_info("dequantize", lowbit.quantize(x, "nvfp4"), "bf16")
    assert d.op == "dequantize" and "nvfp4" in d.description and "bf16" in d.description
    assert repr(p).startswith("lowbit.PlanInfo(quantize:")


def test_info_and_devices():
    info = lowbit.info()
    assert info["version"] == lowbit.__version__
    assert isinstance(info["cuda_built"], bool) and info["cpu"]["threads"] >= 1
    assert lowbit.cuda_device_count() == len(info["cuda_devices"]) >= 0


# ---- memory --------------------------------------------------------------------------------------


def test_many_small_calls_keep_memory_flat():
    x = data((8, 32), "rss")
    xb = x.astype(BF16)
    q = lowbit.quantize(x, "int4:block32:asym")
    refs = (sys.getrefcount(x), sys.getrefcount(xb), sys.getrefcount(q))

    def call(i):
        k = i % 6
        if k == 0:
            lowbit.quantize(x, "int4:block32:asym")
        elif k == 1:
            lowbit.dequantize(q, "bf16")
        elif k == 2:
            np.asarray(q.data)
            np.from_dlpack(q.scale)
        elif k == 3:
            lowbit.convert(xb, "f32")
        elif k == 4:
            lowbit.fake_quantize(xb, "fp8e4m3:token")
        else:
            try:
                lowbit.quantize(x, "int4:block33")
            except ValueError:
                pass

    for i in range(3000):  # warm-up: allocator pools, caches
        call(i)
    gc.collect()
    before = rss_bytes()
    for i in range(100_000):
        call(i)
    gc.collect()
    grown = rss_bytes() - before
    assert grown < 8 << 20, f"resident memory grew {grown / 2**20:.1f} MiB over 10^5 calls"
    assert (sys.getrefcount(x), sys.getrefcount(xb), sys.getrefcount(q)) == refs


def test_gil_is_released_around_kernels():
    """With a 5 s switch interval nothing preempts the worker thread: the main thread can
    run while the kernel does only if the kernel released the GIL."""
    import threading

    x = data((512, 4096), "gil", outliers=False)
    started, done, seen = threading.Event(), threading.Event(), []

    def worker():
        started.set()
        lowbit.quantize(x, "q2_K")  # tens to hundreds of ms
        done.set()

    old = sys.getswitchinterval()
    sys.setswitchinterval(5.0)
    try:
        t = threading.Thread(target=worker)
        t.start()
        started.wait()
        seen.append(done.is_set())  # reached while the worker is inside lowbit?
        t.join()
    finally:
        sys.setswitchinterval(old)
    assert seen == [False], "the main thread could not run while lowbit.quantize ran"


# ---- torch ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch():
    try:
        import torch as t
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"torch is not importable here ({type(e).__name__}: {e}); "
                    "these tests run where torch is installed (the GPU machine)")
    return t


@pytest.fixture(params=["cpu", "cuda"])
def tdev(request, torch):
    if request.param == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("torch has no CUDA device here")
        if lowbit.cuda_device_count() == 0:
            pytest.skip("lowbit sees no CUDA device (built without CUDA?)")
    return request.param


def test_torch_tensors_in_and_out(torch, tdev):
    x = torch.from_numpy(data((8, 64), "torch")).to(tdev)
    a = lowbit.asarray(x)
    assert a.data_ptr == x.data_ptr() and a.device == ("cpu" if tdev == "cpu" else "cuda:0")
    xb = x.to(torch.bfloat16)
    y = lowbit.convert(x, "bf16")
    assert isinstance(y, torch.Tensor) and y.device == x.device and y.dtype == torch.bfloat16
    assert torch.equal(y.view(torch.int16), xb.view(torch.int16))
    assert lowbit.asarray(y).data_ptr == y.data_ptr()  # the result is lowbit's memory, shared
    for dt, name in ((torch.float8_e4m3fn, "f8e4m3fn"), (torch.float8_e5m2, "f8e5m2"),
                     (torch.float16, "f16")):
        xs = (x * 4).clamp(-400, 400)
        ours = lowbit.convert(xs, name)
        assert ours.dtype == dt
        assert torch.equal(ours.view(torch.uint8), xs.to(dt).view(torch.uint8)), name
        back = lowbit.convert(ours, "f32")
        assert torch.equal(back, ours.to(torch.float32))
    if tdev == "cuda":
        try:
            q = lowbit.quantize(x, "int8:channel")
        except NotImplementedError as e:
            pytest.skip(f"no CUDA quantize kernel in this build yet: {e}")
    else:
        q = lowbit.quantize(x, "int8:channel")
    ref = lowbit.quantize(x.cpu().numpy(), "int8:channel")
    codes = torch.from_dlpack(q.data)
    assert codes.data_ptr() == q.data.data_ptr and codes.dtype == torch.int8
    assert np.array_equal(codes.cpu().numpy(), ref.data.numpy())
    y = lowbit.dequantize(q)
    assert isinstance(y, torch.Tensor) and y.device == x.device
    assert np.array_equal(y.cpu().numpy(), lowbit.dequantize(ref))


def test_torch_fp8_parts(torch):
    x = torch.from_numpy(data((4, 64), "torch-fp8"))
    q = lowbit.quantize(x, "nvfp4")
    s = q.scale.torch()
    assert s.dtype == torch.float8_e4m3fn and s.data_ptr() == q.scale.data_ptr
    q8 = lowbit.quantize(x.to(torch.bfloat16), "fp8e4m3:token")
    c = q8.data.torch()
    assert c.dtype == torch.float8_e4m3fn and c.shape == (4, 64)
    assert lowbit.dequantize(q8, torch.bfloat16).dtype == torch.bfloat16
    # fp8 tensors go back in as fp8
    assert torch.equal(lowbit.convert(c, "f32"), c.to(torch.float32))


@pytest.mark.parametrize("text,qmin,qmax", [("int8:tensor", -127, 127),
                                            ("uint8:tensor", 0, 255),
                                            ("int4:tensor:asym", -8, 7)])
def test_torch_autograd_matches_torch_fake_quantize(torch, text, qmin, qmax):
    """Forward and straight-through backward against torch.fake_quantize_per_tensor_affine
    on the CPU (same f32 reciprocal arithmetic), with a scale small enough to saturate."""
    x = torch.from_numpy(data((16, 64), text, "autograd") * F32(2)).requires_grad_()
    scale, zp = 0.03, (5 if text.startswith("uint") else -2)
    s = lowbit.Scheme(text)
    given = {"scale": np.array([scale], F32)}
    if not s.symmetric:
        given["zero"] = np.array([zp], np.int32)
    else:
        zp = 0
    y = lowbit.fake_quantize(x, text, **given)
    g = torch.randn_like(x)
    (y * g).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    yt = torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax)
    (yt * g).sum().backward()
    assert torch.equal(y.detach(), yt.detach())
    assert torch.equal(ours, x.grad)
    assert 0 < (ours == 0).sum() < ours.numel()  # some elements saturated


def test_torch_autograd_dynamic_schemes(torch, tdev):
    x = torch.from_numpy(data((8, 64), "dyn", outliers=True)).to(tdev).requires_grad_()
    try:
        y = lowbit.fake_quantize(x, "mxfp4")
    except NotImplementedError as e:
        pytest.skip(f"no {tdev} quantize kernel in this build yet: {e}")
    y.backward(torch.ones_like(y))
    q = lowbit.quantize(x.detach(), "mxfp4")
    mask = lowbit.ste_mask(x.detach(), q)
    assert mask.dtype == torch.bool and mask.device == x.device
    assert torch.equal(x.grad, mask.to(x.dtype))
    assert torch.equal(y.detach(), lowbit.dequantize(q))
    with torch.no_grad():  # no autograd: plain call
        assert not lowbit.fake_quantize(x, "mxfp4").requires_grad
