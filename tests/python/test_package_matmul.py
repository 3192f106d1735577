"""lowbit.matmul and lowbit.QuantizedLinear (python/src/matmul.cpp, docs/python.md).

* Weight-only, every scheme family, f32 / f16 / bf16 activations: y agrees with NumPy's f64
  product x @ dequantize(q).T (+ bias) within tests/cpp/test_matmul.cpp's tolerance:
  |y - ref| <= tol * (|ref| + sqrt(sum_k (x_k w_k)^2)), tol 1e-5 for an f32 y, 1e-2 for
  f16 / bf16.
* W8A8: x_scheme quantizes x in the plan (the reference is dequantize(quantize(x)) @ w^T),
  and an x quantized beforehand gives the same result.
* Leading dimensions, bias (converted to y's dtype), out_dtype, row-strided x.
* QuantizedLinear: the same bits as matmul, plan introspection (.sku, .precision,
  .weight_layout), prepared weights kept.
* Bad shapes / dtypes / types raise ValueError / TypeError with useful messages.
* torch CPU and CUDA tensors (skipped, visibly, where torch or a GPU is missing).
"""

from __future__ import annotations

import os
import zlib

import ml_dtypes
import numpy as np
import pytest

try:
    import lowbit
except ImportError as e:  # pragma: no cover - depends on how the suite is run
    if os.environ.get("LOWBIT_REQUIRE_PACKAGE") == "1":
        raise
    pytest.skip(f"the lowbit package is not importable ({e}): see test_package.py",
                allow_module_level=True)

F32 = np.float32
NP_DTYPES = {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16}

# One or two schemes of each family; K = 256 fits every block size (q4_K needs 256).
WEIGHT_SCHEMES = [
    "int8:channel", "int8:tensor", "int8:block32:asym", "int4:block32:asym", "int4:block128",
    "uint4:block64", "fp8e4m3:channel", "fp8e4m3:block128x128", "fp8e5m2:tensor", "nvfp4",
    "mxfp4", "mxfp8e4m3", "q8_0", "q4_0", "q4_K", "q6_K",
]


def rng_for(*parts) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(parts).encode()))


def data(shape, *parts) -> np.ndarray:
    return rng_for(shape, *parts).standard_normal(shape).astype(F32)


def reference(x, w, bias=None):
    """f64 x @ w.T (+ bias) and the scale sqrt(sum_k (x_k w_k)^2) of each element."""
    x64 = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
    w64 = np.asarray(w, np.float64)
    ref = x64 @ w64.T
    if bias is not None:
        ref = ref + np.asarray(bias, np.float64)
    s = np.sqrt((x64 * x64) @ (w64 * w64).T)
    lead = tuple(np.shape(x)[:-1])
    return ref.reshape(lead + (w.shape[0],)), s.reshape(lead + (w.shape[0],))


def assert_close(y, ref, s, dtype_name):
    tol = 1e-5 if dtype_name == "f32" else 1e-2
    got = np.asarray(y, np.float64)
    assert got.shape == ref.shape
    err = np.abs(got - ref)
    bound = tol * (np.abs(ref) + s) + 1e-30
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert np.all(err <= bound), (
        f"|y - ref| = {err[worst]:.3g} > {bound[worst]:.3g} at {worst} "
        f"(y {got[worst]!r}, ref {ref[worst]!r})"
    )


# ---- weight-only ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", WEIGHT_SCHEMES)
@pytest.mark.parametrize("dt", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("m", [1, 5])
def test_weight_only_matches_numpy(scheme, dt, m):
    n, k = 128, 256
    w = data((n, k), "w", scheme)
    q = lowbit.quantize(w, scheme)
    x = data((m, k), "x", m).astype(NP_DTYPES[dt])
    y = lowbit.matmul(x, q)
    assert isinstance(y, np.ndarray) and y.dtype == np.dtype(NP_DTYPES[dt]) and y.shape == (m, n)
    ref, s = reference(x, lowbit.dequantize(q))
    assert_close(y, ref, s, dt)


def test_leading_dims_bias_and_out_dtype():
    n, k = 64, 256
    w = data((n, k), "w")
    q = lowbit.quantize(w, "int4:block32:asym")
    x = data((2, 3, k), "x")
    bias = data((n,), "b")
    w_hat = lowbit.dequantize(q)
    ref, s = reference(x, w_hat, bias)
    y = lowbit.matmul(x, q, bias)
    assert y.shape == (2, 3, n) and y.dtype == F32
    assert_close(y, ref, s, "f32")
    # bf16 y: the f32 bias is converted to bf16 first (one rounding), as the op takes it.
    yb = lowbit.matmul(x, q, bias, out_dtype="bf16")
    assert yb.dtype == np.dtype(ml_dtypes.bfloat16)
    ref_b, s_b = reference(x, w_hat, bias.astype(ml_dtypes.bfloat16))
    assert_close(yb, ref_b, s_b, "bf16")
    # bf16 x -> f32 y
    xb = x.astype(ml_dtypes.bfloat16)
    yf = lowbit.matmul(xb, q, out_dtype=np.float32)
    assert yf.dtype == F32
    assert_close(yf, *reference(xb, w_hat), "f32")


def test_row_strided_x_is_read_in_place():
    n, k = 32, 128
    q = lowbit.quantize(data((n, k), "w"), "int8:channel")
    wide = data((6, 3 * k), "wide")
    x = wide[:, k:2 * k]  # rows 3k apart
    assert not x.flags.c_contiguous
    y = lowbit.matmul(x, q)
    assert np.array_equal(y, lowbit.matmul(np.ascontiguousarray(x), q))
    with pytest.raises(ValueError, match="not contiguous"):
        lowbit.matmul(np.asfortranarray(data((6, k), "f")), q)


# ---- W8A8 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "w_scheme,x_scheme",
    [("int8:channel", "int8:token"), ("fp8e4m3:channel", "fp8e4m3:token"),
     ("fp8e4m3:block128x128", "fp8e4m3:block128"), ("fp8e4m3:tensor", "fp8e4m3:tensor")],
)
@pytest.mark.parametrize("dt", ["f32", "bf16"])
def test_w8a8_quantizes_x_in_the_plan(w_scheme, x_scheme, dt):
    n, k, m = 128, 256, 7
    q = lowbit.quantize(data((n, k), "w", w_scheme), w_scheme)
    x = data((m, k), "x", x_scheme).astype(NP_DTYPES[dt])
    y = lowbit.matmul(x, q, x_scheme=x_scheme, out_dtype="f32")
    x_hat = lowbit.dequantize(lowbit.quantize(x, x_scheme))  # what the plan multiplies
    assert_close(y, *reference(x_hat, lowbit.dequantize(q)), "f32")
    # An x quantized beforehand: the same product.
    xq = lowbit.quantize(x, x_scheme)
    y2 = lowbit.matmul(xq, q)
    assert y2.dtype == F32
    assert_close(y2, *reference(x_hat, lowbit.dequantize(q)), "f32")
    # A layer with x_scheme does the same as the one-liner.
    layer = lowbit.QuantizedLinear(q, x_scheme=x_scheme)
    assert layer.x_scheme == x_scheme
    assert np.array_equal(layer(x, out_dtype="f32"), y)
    assert x_scheme in layer.plan_for(m, dt).description


def test_w8a8_mismatched_schemes_are_refused():
    q = lowbit.quantize(data((32, 128), "w"), "int8:channel")
    xq = lowbit.quantize(data((4, 128), "x"), "int8:token")
    with pytest.raises(ValueError, match="x_scheme"):
        lowbit.matmul(xq, q, x_scheme="fp8e4m3:token")
    with pytest.raises(ValueError, match="2-D"):
        lowbit.matmul(lowbit.quantize(data((2, 2, 128), "x3"), "int8:token"), q)


# ---- QuantizedLinear ----------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["int4:block32:asym", "int8:channel", "q4_K", "nvfp4"])
def test_quantized_linear_is_matmul(scheme):
    n, k = 96, 256
    q = lowbit.quantize(data((n, k), "w", scheme), scheme)
    bias = data((n,), "b")
    layer = lowbit.QuantizedLinear(q, bias)
    assert (layer.in_features, layer.out_features) == (k, n)
    assert layer.weight.scheme == scheme and layer.bias is bias
    assert "QuantizedLinear(in_features=256" in repr(layer)
    for m in (1, 3, 33):
        for dt in ("f32", "bf16"):
            x = data((m, k), "x", m).astype(NP_DTYPES[dt])
            y = layer(x)
            assert y.dtype == np.dtype(NP_DTYPES[dt])
            assert np.array_equal(np.asarray(y).view(np.uint8),
                                  np.asarray(lowbit.matmul(x, q, bias)).view(np.uint8))
            p = layer.plan_for(m, dt)
            assert isinstance(p, lowbit.PlanInfo) and p.op == "matmul"
            assert p.sku.startswith("matmul/cpu/") and p.kernel in p.sku
            assert "deterministic" in p.precision
            assert isinstance(p.weight_layout, str) and p.weight_layout
            assert (p.weight_layout == "plain") == (p.prepared_bytes == 0)
            if p.prepared_bytes:
                assert p.weight_layout in layer.prepared_layouts
    # A second call with the same shapes reuses the prepared weights.
    before = list(layer.prepared_layouts)
    layer(data((3, k), "again"))
    assert layer.prepared_layouts == before


def test_plan_info_matmul():
    q = lowbit.quantize(data((64, 256), "w"), "int4:block32")
    x = data((4, 256), "x")
    p = lowbit.plan_info("matmul", x, q)
    assert p.op == "matmul" and "y[4,64]:f32" in p.description and p.weight_layout
    assert p.accumulator in ("f32", "f64", "i32")
    p8 = lowbit.plan_info("matmul", x, lowbit.quantize(data((64, 256), "w8"), "int8:channel"),
                          x_scheme="int8:token")
    assert "int8:token" in p8.description
    # Every kernel tried before the chosen one says why it declined.
    assert all(isinstance(k, str) and isinstance(r, str) and r for k, r in p.declined)


# ---- errors ---------------------------------------------------------------------------------------


def test_bad_arguments_raise_with_useful_messages():
    q = lowbit.quantize(data((64, 256), "w"), "int4:block32")
    x = data((4, 256), "x")
    with pytest.raises(ValueError, match=r"K = 200.*K = 256"):
        lowbit.matmul(data((4, 200), "k"), q)
    with pytest.raises(ValueError, match="dtype f64.*f32, f16 or bf16"):
        lowbit.matmul(x.astype(np.float64), q)
    with pytest.raises(ValueError, match="dtype i32"):
        lowbit.matmul(x.astype(np.int32), q)
    with pytest.raises(ValueError, match="out_dtype i8"):
        lowbit.matmul(x, q, out_dtype="i8")
    with pytest.raises(ValueError, match=r"bias has shape \[63\].*\[64\]"):
        lowbit.matmul(x, q, data((63,), "b"))
    with pytest.raises(ValueError, match="bias has dtype i32"):
        lowbit.matmul(x, q, np.zeros(64, np.int32))
    with pytest.raises(ValueError, match="scalar"):
        lowbit.matmul(np.float32(1.0), q)
    with pytest.raises(ValueError, match="2-D"):
        lowbit.matmul(x, lowbit.quantize(data((256,), "v"), "int8:tensor"))
    with pytest.raises(TypeError, match="QuantizedTensor"):
        lowbit.matmul(x, data((64, 256), "w"))
    with pytest.raises(TypeError, match="QuantizedTensor"):
        lowbit.QuantizedLinear(np.zeros((4, 4), F32))
    with pytest.raises(ValueError, match="bias has shape"):
        lowbit.QuantizedLinear(q, np.zeros(3, F32))
    with pytest.raises(ValueError):  # not a scheme's text: lowbit's parse error
        lowbit.matmul(x, q, x_scheme="int7:token")
    with pytest.raises(TypeError, match="scheme"):
        lowbit.matmul(x, q, x_scheme=8)
    with pytest.raises(TypeError):
        lowbit.matmul(["not", "numbers"], q)
    layer = lowbit.QuantizedLinear(q)
    with pytest.raises(ValueError, match="QuantizedLinear: x has shape"):
        layer(data((2, 100), "k"))
    with pytest.raises(ValueError, match="f32, f16 or bf16"):
        layer.plan_for(4, "f64")


def test_memory_and_refcounts_stay_flat():
    import gc
    import sys

    q = lowbit.quantize(data((16, 64), "w"), "int8:channel")
    x = data((2, 64), "x")
    layer = lowbit.QuantizedLinear(q)
    refs = (sys.getrefcount(x), sys.getrefcount(q))
    for _ in range(2000):
        lowbit.matmul(x, q)
        layer(x)
    gc.collect()
    assert (sys.getrefcount(x), sys.getrefcount(q)) == refs


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


def to_device(q, torch, dev):
    """q's parts copied to `dev` as torch tensors, as a QuantizedTensor over them."""
    parts = {name: getattr(q, name).torch().to(dev)
             for name in ("data", "scale", "zero", "global_scale") if getattr(q, name) is not None}
    return lowbit.QuantizedTensor.from_parts(q.scheme, q.shape, parts.pop("data"), **parts)


# m = 9: the skinny kernel on CUDA; m = 70: the medium tensor-core GEMM (32 < M <= 128).
@pytest.mark.parametrize("m", [9, 70])
@pytest.mark.parametrize("scheme", ["int4:block32:asym", "int8:channel", "fp8e4m3:block128x128",
                                    "q4_K"])
def test_torch_tensors(torch, tdev, scheme, m):
    n, k = 128, 256
    w = data((n, k), "w", scheme)
    q_cpu = lowbit.quantize(w, scheme)
    q = to_device(q_cpu, torch, tdev)
    for dt, name in ((torch.float32, "f32"), (torch.bfloat16, "bf16"), (torch.float16, "f16")):
        x = torch.from_numpy(data((m, k), "x")).to(tdev).to(dt)
        ref, s = reference(x.float().cpu().numpy(), lowbit.dequantize(q_cpu))
        y = lowbit.matmul(x, q)
        assert isinstance(y, torch.Tensor) and y.device == x.device and y.dtype == dt
        assert_close(y.float().cpu().numpy(), ref, s, name)
        layer = lowbit.QuantizedLinear(q)
        assert torch.equal(layer(x), y)
        assert layer.plan_for(m, dt).sku.startswith(f"matmul/{'cpu' if tdev == 'cpu' else 'cuda'}")


def test_torch_w8a8(torch, tdev):
    n, k, m = 128, 256, 16
    q_cpu = lowbit.quantize(data((n, k), "w"), "fp8e4m3:channel")
    q = to_device(q_cpu, torch, tdev)
    x_np = data((m, k), "x")
    x = torch.from_numpy(x_np).to(tdev).to(torch.bfloat16)
    y = lowbit.matmul(x, q, x_scheme="fp8e4m3:token", out_dtype=torch.float32)
    assert y.dtype == torch.float32 and y.device == x.device
    x_hat = lowbit.dequantize(lowbit.quantize(x.cpu(), "fp8e4m3:token")).float().numpy()
    assert_close(y.cpu().numpy(), *reference(x_hat, lowbit.dequantize(q_cpu)), "f32")
