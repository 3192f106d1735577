"""lowbit.fx and lowbit.fuse (python/src/fuse.cpp, python/lowbit/fx.py, docs/python.md).

* Expressions evaluated by fuse agree with NumPy's f64 evaluation of the same formula on the
  same input values: f32 results within 1e-5 relative (+ 1e-6 absolute: the f32 opmath's
  roundings and transcendental functions within a few ulp, docs/jit.md), bf16 / f16 results
  within one rounding of their dtype.
* Operators with Python / NumPy scalars and arrays on either side, broadcasting, type
  promotion, comparisons, several outputs in one pass, outputs written in place (also of
  another dtype: one conversion, the bits of lowbit.convert).
* The quantize epilogue gives the bits of lowbit.quantize(the unfused result).
* Inputs stay referenced by the expression; errors are ValueError / TypeError /
  NotImplementedError with lowbit's message.
* torch CPU / CUDA tensors (skipped, visibly, where torch or a GPU is missing).
"""

from __future__ import annotations

import gc
import math
import os
import zlib

import ml_dtypes
import numpy as np
import pytest

try:
    import lowbit
    from lowbit import fx
except ImportError as e:  # pragma: no cover - depends on how the suite is run
    if os.environ.get("LOWBIT_REQUIRE_PACKAGE") == "1":
        raise
    pytest.skip(f"the lowbit package is not importable ({e}): see test_package.py",
                allow_module_level=True)

F32 = np.float32
BF16 = ml_dtypes.bfloat16


def data(shape, *parts, dtype=F32) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(repr((shape,) + parts).encode()))
    return (rng.standard_normal(shape) * 2).astype(F32).astype(dtype)


def f64(a) -> np.ndarray:
    return np.asarray(a).astype(np.float64)


def erf(v):
    return np.vectorize(math.erf)(v)


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def softplus(v):
    return np.where(v > 20, v, np.log1p(np.exp(np.minimum(v, 20))))


# name -> (expression builder over fx Exprs a, b; the same formula in NumPy f64)
CASES = {
    "silu_gate": (lambda a, b: fx.silu(a * 1.25 + b) * b, lambda a, b: (a * 1.25 + b) * sigmoid(a * 1.25 + b) * b),
    "gelu": (lambda a, b: fx.gelu(a), lambda a, b: a / 2 * (1 + erf(a / np.sqrt(2)))),
    "gelu_tanh": (lambda a, b: fx.gelu(a, approximate="tanh"),
                  lambda a, b: a / 2 * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a**3)))),
    "exp_clamp": (lambda a, b: fx.exp(fx.clamp(a, -10.0, 3.0)), lambda a, b: np.exp(np.clip(a, -10, 3))),
    "log_abs": (lambda a, b: fx.log(abs(a) + 1), lambda a, b: np.log(np.abs(a) + 1)),
    "sqrt_rsqrt": (lambda a, b: fx.sqrt(abs(a)) + fx.rsqrt(b * b + 0.5),
                   lambda a, b: np.sqrt(np.abs(a)) + 1 / np.sqrt(b * b + 0.5)),
    "tanh_sigmoid": (lambda a, b: fx.tanh(a) - fx.sigmoid(b), lambda a, b: np.tanh(a) - sigmoid(b)),
    "relus": (lambda a, b: fx.relu(a) + fx.leaky_relu(b, 0.2),
              lambda a, b: np.maximum(a, 0) + np.where(b > 0, b, 0.2 * b)),
    "softplus": (lambda a, b: fx.softplus(a * 12), lambda a, b: softplus(a * 12)),
    "min_max_where": (lambda a, b: fx.where(a > b, fx.minimum(a, 1.0), fx.maximum(b, -1.0)),
                      lambda a, b: np.where(a > b, np.minimum(a, 1), np.maximum(b, -1))),
    "div_pow": (lambda a, b: a / (b * b + 1) + abs(a) ** 1.5 - 2 / (a * a + 1),
                lambda a, b: a / (b * b + 1) + np.abs(a) ** 1.5 - 2 / (a * a + 1)),
    "neg_scale_sub": (lambda a, b: -fx.scale(a, 0.5) - (3 - b), lambda a, b: -(a * 0.5) - (3 - b)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_f32_expressions_match_numpy(name):
    build, ref_fn = CASES[name]
    x, y = data((33, 70), "x", name), data((33, 70), "y", name)
    got = lowbit.fuse(build(fx.input(x), fx.input(y)))
    assert isinstance(got, np.ndarray) and got.dtype == F32 and got.shape == x.shape
    ref = ref_fn(f64(x), f64(y))
    np.testing.assert_allclose(f64(got), ref, rtol=1e-5, atol=1e-6)


def test_fast_math_is_close_and_reaches_every_form():
    # 2^20 elements: the compiled CPU kernel's default size (where the host can compile),
    # which honours fast_math; the interpreter ignores it. Either way the values stay
    # within fast math's bound of the real-number result.
    build, ref_fn = CASES["silu_gate"]
    x, y = data((1024, 1024), "x", "fast"), data((1024, 1024), "y", "fast")
    ref = ref_fn(f64(x), f64(y))
    exact = lowbit.fuse(build(fx.input(x), fx.input(y)))
    fast = lowbit.fuse(build(fx.input(x), fx.input(y)), fast_math=True)
    np.testing.assert_allclose(f64(fast), ref, rtol=3e-5, atol=1e-6)
    np.testing.assert_allclose(f64(exact), ref, rtol=1e-5, atol=1e-6)
    out = np.empty_like(x)
    assert lowbit.fuse(build(fx.input(x), fx.input(y)), out=out, fast_math=True) is out
    np.testing.assert_array_equal(out, fast)
    (a,) = lowbit.fuse([build(fx.input(x), fx.input(y))], fast_math=True)
    np.testing.assert_array_equal(a, fast)
    q = lowbit.fuse(build(fx.input(x), fx.input(y)), scheme="int8:token", fast_math=True)
    assert isinstance(q, lowbit.QuantizedTensor)


@pytest.mark.parametrize("name", ["silu_gate", "gelu", "div_pow", "relus"])
@pytest.mark.parametrize("dtype,eps", [(BF16, 2.0**-8), (np.float16, 2.0**-11)])
def test_narrow_dtypes_round_once(name, dtype, eps):
    build, ref_fn = CASES[name]
    x, y = data((16, 48), "x", dtype=dtype), data((16, 48), "y", dtype=dtype)
    got = lowbit.fuse(build(fx.input(x), fx.input(y)))
    assert got.dtype == np.dtype(dtype)  # a float scalar keeps the tensors' dtype
    ref = ref_fn(f64(x), f64(y))  # math on the inputs' values, in opmath (not re-rounded)
    np.testing.assert_allclose(f64(got), ref, rtol=eps, atol=1e-5)


def test_broadcasting_promotion_and_scalars():
    x = data((4, 1, 8), "x")
    bias = data((8,), "bias")
    col = data((5, 1), "col", dtype=BF16)
    e = fx.input(x) * col + bias  # numpy arrays on the right become inputs
    assert e.shape == (4, 5, 8) and e.dtype == "f32"  # bf16 * f32 -> f32
    got = lowbit.fuse(e)
    np.testing.assert_allclose(f64(got), f64(x) * f64(col) + f64(bias), rtol=1e-6, atol=1e-6)
    # NumPy arrays and scalars on the left hand over to Expr's reflected operators.
    a = fx.input(x)
    for e, ref in ((bias * a, f64(bias) * f64(x)), (np.float32(2) - a, 2 - f64(x)),
                   (np.int64(3) / (a * a + 1), 3 / (f64(x) ** 2 + 1)), (2.5 + a, 2.5 + f64(x))):
        assert isinstance(e, fx.Expr)
        np.testing.assert_allclose(f64(lowbit.fuse(e)), np.broadcast_to(ref, e.shape),
                                   rtol=1e-6, atol=1e-6)
    # dtypes: float scalars keep a float tensor's dtype, make ints f32; comparisons are u8.
    i = fx.input(np.arange(6, dtype=np.int32))
    assert (i * 0.5).dtype == "f32" and (i + 1).dtype == "i32"
    assert (fx.input(x.astype(BF16)) * 0.5).dtype == "bf16"
    assert (a > 0).dtype == "u8" and (a > 0).is_bool
    np.testing.assert_array_equal(lowbit.fuse(i * 0.5), np.arange(6) * 0.5)
    np.testing.assert_array_equal(lowbit.fuse(fx.eq(i, 3) + fx.ne(i, 1)),
                                  (np.arange(6) == 3).astype(np.int32) + (np.arange(6) != 1))
    assert str(a * 2) == "mul(in0:f32, 2):f32" and "Expr(" in repr(a)
    assert fx.constant(2.0).is_scalar and fx.constant(2.0).device is None
    assert a.device == "cpu" and a.origin == "numpy"


def test_outputs_in_place_and_several_outputs():
    x, y = data((6, 40), "x"), data((6, 40), "y")
    a, b = fx.input(x), fx.input(y)
    out = np.full((6, 40), np.nan, F32)
    assert lowbit.fuse(a * b + 1, out=out) is out
    np.testing.assert_allclose(f64(out), f64(x) * f64(y) + 1, rtol=1e-5, atol=1e-6)
    # Several outputs in one pass; an output of another dtype gets convert()'s bits.
    o1, o2, o3 = (np.empty((6, 40), F32), np.empty((6, 40), BF16),
                  np.empty((6, 40), ml_dtypes.float8_e4m3fn))
    assert lowbit.fuse([(o1, fx.silu(a)), (o2, fx.silu(a)), (o3, a * 0.25)]) is None
    assert np.array_equal(o2.view(np.uint16), lowbit.convert(o1, "bf16").view(np.uint16))
    assert np.array_equal(o3.view(np.uint8),
                          lowbit.convert(lowbit.fuse(a * 0.25), "f8e4m3fn").view(np.uint8))
    # A strided output (every other column) is written through its strides.
    wide = np.zeros((6, 80), F32)
    lowbit.fuse(a - b, out=wide[:, ::2])
    assert np.array_equal(wide[:, ::2], lowbit.fuse(a - b)) and not wide[:, 1::2].any()
    # New outputs for several expressions; dtype= for all of them.
    r1, r2 = lowbit.fuse([a + b, a > b])
    assert r1.dtype == F32 and r2.dtype == np.uint8
    np.testing.assert_array_equal(r2, (x > y).astype(np.uint8))
    (r3,) = lowbit.fuse([a + b], dtype="bf16")
    assert r3.dtype == np.dtype(BF16)


EPILOGUE_SCHEMES = ["fp8e4m3:token", "fp8e5m2:token", "int8:token", "int8:token:asym",
                    "uint8:token", "int4:block32", "int4:block32:asym", "fp8e4m3:block128",
                    "int8:block64:scale=bf16", "mxfp4", "mxfp8e4m3", "mxfp8e5m2", "nvfp4"]


def same_parts(q1, q2):
    assert q1.scheme == q2.scheme and q1.shape == q2.shape
    for part in ("data", "scale", "zero", "global_scale"):
        p1, p2 = getattr(q1, part), getattr(q2, part)
        assert (p1 is None) == (p2 is None), part
        if p1 is not None:
            assert np.array_equal(np.asarray(p1.raw()), np.asarray(p2.raw())), part


@pytest.mark.parametrize("scheme", EPILOGUE_SCHEMES)
@pytest.mark.parametrize("dtype", [F32, BF16])
def test_quantize_epilogue_is_bit_identical_to_quantize(scheme, dtype):
    x, g = data((9, 256), "x", scheme, dtype=dtype), data((9, 256), "g", scheme, dtype=dtype)
    e = fx.silu(fx.input(g)) * fx.input(x)
    q = lowbit.fuse(e, scheme=scheme)
    assert isinstance(q, lowbit.QuantizedTensor) and q.scheme == scheme and q.shape == (9, 256)
    same_parts(q, lowbit.quantize(lowbit.fuse(e), scheme))
    # Into an existing QuantizedTensor (out=): the same bits.
    q2 = lowbit.quantize(np.zeros((9, 256), F32), scheme)
    assert lowbit.fuse(e, out=q2) is q2
    same_parts(q2, q)
    # Its dequantize answers in the input's framework.
    assert isinstance(lowbit.dequantize(q), np.ndarray)


@pytest.mark.parametrize("scheme", ["fp8e4m3:token", "int4:block32:asym", "nvfp4"])
def test_quantize_epilogue_beside_other_outputs(scheme):
    x, g = data((9, 256), "x", scheme), data((9, 256), "g", scheme)
    h = fx.input(g) + fx.input(x)  # e.g. a residual sum kept, and its activation quantized
    q = lowbit.quantize(np.zeros((9, 256), F32), scheme)
    kept = np.full((9, 256), np.nan, F32)
    act = np.full((9, 256), np.nan, BF16)
    assert lowbit.fuse([(kept, h), (q, fx.silu(h)), (act, fx.silu(h))]) is None
    assert np.array_equal(kept, lowbit.fuse(h))
    want_act = lowbit.fuse(fx.silu(h), dtype="bf16")
    assert np.array_equal(act.view(np.uint16), want_act.view(np.uint16))
    same_parts(q, lowbit.quantize(lowbit.fuse(fx.silu(h)), scheme))
    q2 = lowbit.quantize(np.zeros((9, 256), F32), "int8:token")
    with pytest.raises(NotImplementedError, match="at most one quantized output"):
        lowbit.fuse([(q, h), (q2, h)])


def test_quantize_epilogue_refusals():
    a = fx.input(data((4, 64), "x"))
    with pytest.raises(ValueError, match="NaN"):
        lowbit.fuse(fx.log(a), scheme="int8:token")  # log of negatives
    q = lowbit.fuse(fx.log(abs(a) + 1), scheme="int8:token", check_finite=False)
    same_parts(q, lowbit.quantize(lowbit.fuse(fx.log(abs(a) + 1)), "int8:token"))
    with pytest.raises(NotImplementedError, match="per row"):
        lowbit.fuse(a, scheme="int8:channel")  # groups across rows: not an epilogue
    with pytest.raises(NotImplementedError, match="GGUF"):
        lowbit.fuse(a, scheme="q8_0")
    with pytest.raises(ValueError, match="one expression"):
        lowbit.fuse([a, a + 1], scheme="int8:token")


def test_inputs_stay_referenced_by_the_expression():
    e = fx.exp(fx.input(data((3, 10), "tmp")) * 0.5)  # the array has no other reference
    gc.collect()
    _ = [np.full((3, 10), 99.0, F32) for _ in range(50)]  # reuse freed memory, if any
    np.testing.assert_allclose(f64(lowbit.fuse(e)), np.exp(f64(data((3, 10), "tmp")) * 0.5),
                               rtol=1e-6)


def test_bad_arguments_raise_with_useful_messages():
    a = fx.input(data((4, 64), "x"))
    with pytest.raises(ValueError, match=r"do not broadcast: \[4, 64\] against \[3, 64\]"):
        lowbit.fuse(a + fx.input(data((3, 64), "y")))
    with pytest.raises(TypeError, match="truth value"):
        bool(a > 0)
    with pytest.raises(TypeError, match="numeric arrays"):
        a + "text"
    with pytest.raises(ValueError, match="reads no tensor"):
        lowbit.fuse(fx.constant(1.0) + 2)
    with pytest.raises(ValueError, match="int32"):
        a + 2**40
    with pytest.raises(ValueError, match="approximate"):
        fx.gelu(a, approximate="fast")
    with pytest.raises(TypeError, match="constant"):
        a ** a
    ro = np.zeros((4, 64), F32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        lowbit.fuse(a, out=ro)
    with pytest.raises(ValueError):  # an output of the wrong shape: lowbit's message
        lowbit.fuse(a, out=np.zeros((4, 63), F32))
    with pytest.raises(ValueError, match="in place"):
        lowbit.fuse(a, out=np.zeros((4, 64), F32)[:, ::-1])  # would be a copy
    with pytest.raises(TypeError, match="pairs"):
        lowbit.fuse([a, (np.zeros(3), a)])
    with pytest.raises(ValueError):
        fx.cast(a, "f128")


# ---- torch -----------------------------------------------------------------------------------------


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


def test_torch_tensors(torch, tdev):
    x = torch.from_numpy(data((8, 256), "x")).to(tdev).to(torch.bfloat16)
    g = torch.from_numpy(data((8, 256), "g")).to(tdev).to(torch.bfloat16)
    e = fx.silu(fx.input(g)) * x
    y = lowbit.fuse(e)
    assert isinstance(y, torch.Tensor) and y.device == x.device and y.dtype == torch.bfloat16
    ref = torch.nn.functional.silu(g.double()) * x.double()
    torch.testing.assert_close(y.double(), ref, rtol=2**-8, atol=1e-5)
    out = torch.empty_like(x)
    assert lowbit.fuse({out: e}) is None  # torch tensors are hashable: a dict works
    assert torch.equal(out, y)
    q = lowbit.fuse(e, scheme="fp8e4m3:token")
    ref_q = lowbit.quantize(y, "fp8e4m3:token")
    assert torch.equal(q.data.torch(), ref_q.data.torch())
    assert torch.equal(q.scale.torch(), ref_q.scale.torch())
    assert isinstance(lowbit.dequantize(q), torch.Tensor)
    # nvfp4: two passes (the global scale from the whole tensor's absmax), the same bits.
    q4 = lowbit.fuse(e, scheme="nvfp4")
    ref_4 = lowbit.quantize(y, "nvfp4")
    for part in ("data", "scale", "global_scale"):
        assert torch.equal(getattr(q4, part).torch(), getattr(ref_4, part).torch()), part
    # Beside another output: the value kept in bf16 and its nvfp4 codes in one call.
    kept = torch.full_like(x, float("nan"))
    assert lowbit.fuse([(kept, e), (q4, e)]) is None
    assert torch.equal(kept, y)
    for part in ("data", "scale", "global_scale"):
        assert torch.equal(getattr(q4, part).torch(), getattr(ref_4, part).torch()), part
