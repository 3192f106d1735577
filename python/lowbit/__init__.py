"""lowbit: exact low-precision formats and kernels for ML, from Python.

    import numpy as np, lowbit
    w = np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32)
    q = lowbit.quantize(w, "int4:block32:asym")    # QuantizedTensor
    w2 = lowbit.dequantize(q)                       # float32, like w
    codes = np.asarray(q.data)                      # zero-copy views of the parts
    y = lowbit.fake_quantize(x_torch, "fp8e4m3:token")   # autograd: straight-through
    y = lowbit.matmul(x, q)                         # x @ dequantize(q).T, from the codes
    out = lowbit.fuse(lowbit.fx.silu(lowbit.fx.input(a)) * b)   # one fused pass

Inputs are NumPy arrays (ml_dtypes' bfloat16 / float8 types included), PyTorch tensors (CPU,
and CUDA where lowbit was built with CUDA) or any object with __dlpack__; they are read in
place, without copies. Results come back in the input's framework. lowbit.load / save read
and write safetensors and GGUF files (memory-mapped, zero-copy); lowbit.matmul /
QuantizedLinear run the quantized matmul; lowbit.fx and lowbit.fuse evaluate element-wise
expressions in one pass. docs/python.md has the
tutorial.
"""

from __future__ import annotations

from typing import Any

from . import _arrays, _lowbit, fx
from ._arrays import as_array, dtype_name
from ._files import load, load_metadata, save
from ._lowbit import Array, CorruptFileError, PlanInfo, QuantizedTensor, Scheme
from ._ste import ste_mask

__version__: str = _lowbit.__version__

__all__ = [
    "Array",
    "CorruptFileError",
    "PlanInfo",
    "QuantizedLinear",
    "QuantizedTensor",
    "Scheme",
    "__version__",
    "asarray",
    "convert",
    "cuda_device_count",
    "dequantize",
    "dtype_name",
    "fake_quantize",
    "fuse",
    "info",
    "load",
    "load_metadata",
    "matmul",
    "plan_info",
    "quantize",
    "save",
    "ste_mask",
]

# Array's NumPy / PyTorch conveniences live in Python (they import those frameworks).
Array.numpy = _arrays.array_numpy
Array.torch = _arrays.array_torch
Array.__array__ = _arrays.array_dunder_array


def asarray(x: Any) -> Array:
    """`x` as a lowbit.Array over the same memory (zero-copy for NumPy arrays, PyTorch
    tensors and DLPack producers; see docs/python.md for the few inputs that are copied)."""
    return as_array(x)


def quantize(
    x: Any,
    scheme: Scheme | str,
    *,
    scale: Any = None,
    zero: Any = None,
    global_scale: Any = None,
) -> QuantizedTensor:
    """Quantizes `x` (f32, f16, bf16 or f64) with `scheme`, on x's device.

    Dynamic by default: scales (and zero points) come from the data, by the rules of
    docs/formats.md. Static: give `scale` (+ `zero` for affine integer schemes), or
    `global_scale` for nvfp4, and only the codes are computed.
    """
    a = as_array(x)
    parts = [None if p is None else as_array(p) for p in (scale, zero, global_scale)]
    q = _lowbit.quantize(a, scheme, *parts)
    q._origin = _arrays.framework(x)
    return q


def dequantize(q: QuantizedTensor, dtype: Any = "f32") -> Any:
    """Dequantizes `q` to `dtype` (f32, f16, bf16 or f64), in the framework `q` came from
    (NumPy for quantize(numpy_array), torch for quantize(tensor))."""
    if not isinstance(q, QuantizedTensor):
        raise TypeError(f"dequantize takes a lowbit.QuantizedTensor, got {type(q).__name__}")
    return _arrays.wrap(_lowbit.dequantize(q, dtype_name(dtype)), q._origin)


def fake_quantize(
    x: Any,
    scheme: Scheme | str,
    *,
    scale: Any = None,
    zero: Any = None,
    global_scale: Any = None,
) -> Any:
    """quantize then dequantize, in x's dtype: what `scheme` does to the values. Dynamic,
    or static with given scale / zero / global_scale (as in quantize).

    A torch tensor that requires grad goes through a torch.autograd.Function whose backward
    is the straight-through estimator: dx = dy * ste_mask(x, q), 1 where x quantizes inside
    the representable range and 0 where it saturates.
    """
    kind = _arrays.framework(x)
    given = (scale, zero, global_scale)
    if kind == "torch" and x.requires_grad:
        import torch

        if torch.is_grad_enabled():
            from ._torch import FakeQuantize

            return FakeQuantize.apply(x, scheme, *given)
    a = as_array(x)
    if all(p is None for p in given):
        return _arrays.wrap(_lowbit.fake_quantize(a, scheme), kind)
    q = _lowbit.quantize(a, scheme, *[None if p is None else as_array(p) for p in given])
    return _arrays.wrap(_lowbit.dequantize(q, a.dtype), kind)


def convert(x: Any, dtype: Any, *, saturation: str = "none") -> Any:
    """Casts `x` between float dtypes (f64, f32, f16, bf16, f8e4m3fn, f8e5m2, f4e2m1, e8m0)
    with one round-to-nearest-even per element. saturation="finite" clamps overflow to the
    largest finite value; "none" gives Inf or NaN like ml_dtypes.

    f4e2m1 results are packed two per byte in lowbit; NumPy callers get ml_dtypes'
    float4_e2m1fn (one per byte, a copy), torch and Array callers the packed uint8 bytes.
    """
    a = as_array(x)
    name = dtype_name(dtype)
    out = _lowbit.convert(a, name, saturation)
    packed = name if name in ("f4e2m1", "i4", "u4") else None
    return _arrays.wrap(out, _arrays.framework(x), packed, a.shape if packed else None)


def plan_info(op: str, *args: Any, **kwargs: Any) -> PlanInfo:
    """The kernel lowbit would select for one call, without running it:

        plan_info("quantize", x, scheme, given_scales=False)
        plan_info("dequantize", q, dtype="f32")
        plan_info("convert", x, dtype, saturation="none")
        plan_info("matmul", x, q, bias=False, out_dtype=None, x_scheme=None)

    .sku names the kernel, .precision states what it promises, .declined lists the kernels
    tried before it with their reasons; matmul plans also give .weight_layout ("plain" or the
kernel's own) and .prepared_bytes. Raises NotImplementedError (with every kernel's
    reason) when none fits.
    """
    if op == "quantize":
        return _plan_quantize(*args, **kwargs)
    if op == "dequantize":
        return _plan_dequantize(*args, **kwargs)
    if op == "convert":
        return _plan_convert(*args, **kwargs)
    if op == "matmul":
        return _plan_matmul(*args, **kwargs)
    raise ValueError(
        f'plan_info: op must be "quantize", "dequantize", "convert" or "matmul", got {op!r}'
    )


def _plan_quantize(x: Any, scheme: Scheme | str, given_scales: bool = False) -> PlanInfo:
    return _lowbit.plan_quantize(as_array(x), scheme, given_scales)


def _plan_dequantize(q: QuantizedTensor, dtype: Any = "f32") -> PlanInfo:
    return _lowbit.plan_dequantize(q, dtype_name(dtype))


def _plan_convert(x: Any, dtype: Any, saturation: str = "none") -> PlanInfo:
    return _lowbit.plan_convert(as_array(x), dtype_name(dtype), saturation)


def _plan_matmul(
    x: Any,
    q: QuantizedTensor,
    bias: bool = False,
    out_dtype: Any = None,
    x_scheme: Scheme | str | None = None,
) -> PlanInfo:
    _check_weight("plan_info", q)
    return _lowbit.plan_matmul(
        as_array(x), q, bool(bias), None if out_dtype is None else dtype_name(out_dtype), x_scheme
    )


# ---- matmul -------------------------------------------------------------------------------------


def _check_weight(who: str, q: Any) -> None:
    if not isinstance(q, QuantizedTensor):
        raise TypeError(
            f"{who}: the weight must be a lowbit.QuantizedTensor (lowbit.quantize(w, scheme)), "
            f"got {type(q).__name__}"
        )


def matmul(
    x: Any,
    q: QuantizedTensor,
    bias: Any = None,
    out_dtype: Any = None,
    *,
    x_scheme: Scheme | str | None = None,
) -> Any:
    """y = x @ dequantize(q).T (+ bias), computed from q's codes: x of shape [..., K] (f32,
    f16 or bf16), q of logical shape [N, K] (any scheme), y of shape [..., N] in
    `out_dtype` (default: x's dtype), in x's framework and on x's device.

    W8A8: `x_scheme` (e.g. "int8:token", "fp8e4m3:token") quantizes x dynamically inside the
    plan and multiplies codes by codes; or pass an already quantized 2-D x (a
    QuantizedTensor; y then defaults to f32). `bias` is [N], converted to y's dtype if it
    has another. The weight is prepared per call when the kernel wants its own layout: use
    QuantizedLinear to prepare it once.
    """
    _check_weight("matmul", q)
    b = None if bias is None else as_array(bias)
    od = None if out_dtype is None else dtype_name(out_dtype)
    if isinstance(x, QuantizedTensor):
        return _arrays.wrap(_lowbit.matmul(x, q, b, od, x_scheme), x._origin)
    return _arrays.wrap(_lowbit.matmul(as_array(x), q, b, od, x_scheme), _arrays.framework(x))


class QuantizedLinear:
    """A linear layer over a quantized weight: ``layer(x) == matmul(x, q, bias)``, with the
    plan chosen per (rows, dtype) and the weight prepared once per layout the kernels want,
    then kept (thread-safe). `q` (and `bias`) stay referenced, not copied.

        layer = lowbit.QuantizedLinear(lowbit.quantize(w, "int4:block32"), bias)
        y = layer(x)                                   # x [..., K] -> y [..., N]
        layer.plan_for(1, "bf16").sku                  # the kernel a 1-row bf16 call uses
    """

    def __init__(
        self, q: QuantizedTensor, bias: Any = None, *, x_scheme: Scheme | str | None = None
    ) -> None:
        _check_weight("QuantizedLinear", q)
        self._impl = _lowbit._Linear(q, None if bias is None else as_array(bias), x_scheme)
        self._bias = bias

    def __call__(self, x: Any, out_dtype: Any = None) -> Any:
        od = None if out_dtype is None else dtype_name(out_dtype)
        return _arrays.wrap(self._impl.call(as_array(x), od), _arrays.framework(x))

    def plan_for(self, m: int, dtype: Any = "f32", out_dtype: Any = None) -> PlanInfo:
        """The plan a call with `m` rows of `dtype` uses: .sku, .precision, .weight_layout."""
        od = None if out_dtype is None else dtype_name(out_dtype)
        return self._impl.plan_for(int(m), dtype_name(dtype), od)

    @property
    def weight(self) -> QuantizedTensor:
        return self._impl.weight

    @property
    def bias(self) -> Any:
        return self._bias

    @property
    def x_scheme(self) -> Scheme | None:
        return self._impl.x_scheme

    @property
    def in_features(self) -> int:
        return self._impl.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self._impl.weight.shape[0]

    @property
    def prepared_layouts(self) -> list[str]:
        """The prepared weights kept so far, by layout name."""
        return self._impl.prepared_layouts

    def __repr__(self) -> str:
        w = self._impl.weight
        xs = f", x_scheme={self.x_scheme}" if self.x_scheme is not None else ""
        return (
            f"lowbit.QuantizedLinear(in_features={w.shape[1]}, out_features={w.shape[0]}, "
            f"{w.scheme}, bias={self._bias is not None}{xs}, {w.device})"
        )


# ---- fuse ---------------------------------------------------------------------------------------


def _output(out: Any) -> Any:
    """An output of fuse: a QuantizedTensor, or an array written in place (never a copy)."""
    if isinstance(out, QuantizedTensor):
        return out
    a = as_array(out)
    ptr = None
    if isinstance(out, _arrays.np.ndarray):
        ptr = out.__array_interface__["data"][0]
        if not out.flags.writeable:
            raise ValueError("fuse: the output NumPy array is read-only")
    if ptr is not None and a.data_ptr != ptr:
        raise ValueError(
            f"fuse: the output ({out.dtype}, strides {out.strides}) cannot be written in place "
            "by lowbit (it would be a copy); pass a native-endian array with non-negative strides"
        )
    return a


def fuse(
    what: Any,
    *,
    out: Any = None,
    dtype: Any = None,
    scheme: Scheme | str | None = None,
    check_finite: bool = True,
    fast_math: bool = False,
) -> Any:
    """Evaluates element-wise expressions (lowbit.fx) in one pass over memory.

        fuse(expr)                          -> a new array of the inputs' broadcast shape,
                                               expr's dtype (or `dtype`), in the first
                                               input's framework
        fuse(expr, scheme="fp8e4m3:token")  -> a new QuantizedTensor: the quantize epilogue
                                               (the bits of quantize(fuse(expr), scheme))
        fuse(expr, out=arr)                 -> writes into arr (an array, or a
                                               QuantizedTensor: the epilogue), returns it
        fuse([(out1, e1), (out2, e2)])      -> several outputs in one pass, in place (one of
                                               them may be a QuantizedTensor: the epilogue
                                               beside the others)
        fuse({out1: e1, out2: e2})          -> the same, for hashable outputs (torch
                                               tensors, QuantizedTensors; not NumPy arrays)
        fuse([e1, e2])                      -> a tuple of new arrays

    `check_finite=False` skips the epilogue's refusal of NaN / Inf (their codes are then
    unspecified). `fast_math=True` allows approximate exp / sigmoid / silu (relative error
    below 1e-5) and contracted multiply-adds where the kernel has them (CUDA; the CPU's
    compiled kernels on AVX-512): faster, no longer bit-identical across backends.
    """
    if not isinstance(what, (list, tuple, dict)):
        what = fx.input(what)  # an Expr stays itself; an array becomes its copy's expression
        if out is not None:
            if dtype is not None or scheme is not None:
                raise ValueError("fuse: out= takes its dtype / scheme from the output")
            _lowbit._fuse_into([(_output(out), what)], check_finite, fast_math)
            return out
        res = _lowbit._fuse_new(
            [what], None if dtype is None else dtype_name(dtype), scheme, check_finite, fast_math
        )
        if scheme is not None:
            return res
        return _arrays.wrap(res[0], what.origin)
    if out is not None or scheme is not None:
        raise ValueError(
            "fuse: out= and scheme= go with one expression; several outputs are given as "
            "pairs (out, expression)"
        )
    items = list(what.items()) if isinstance(what, dict) else list(what)
    if items and all(isinstance(e, fx.Expr) for e in items):
        res = _lowbit._fuse_new(items, None if dtype is None else dtype_name(dtype), None,
                                check_finite, fast_math)
        return tuple(_arrays.wrap(r, e.origin) for r, e in zip(res, items))
    if dtype is not None:
        raise ValueError("fuse: outputs given in place take their dtypes from themselves")
    pairs = []
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2:
            raise TypeError(
                "fuse: give expressions, or pairs (out, expression); got "
                f"{type(item).__name__}"
            )
        pairs.append((_output(item[0]), item[1]))
    _lowbit._fuse_into(pairs, check_finite, fast_math)
    return None


def _from_parts(
    scheme: Scheme | str,
    shape: Any,
    data: Any,
    scale: Any = None,
    zero: Any = None,
    global_scale: Any = None,
) -> QuantizedTensor:
    """A QuantizedTensor over existing parts (zero-copy; they stay referenced): e.g. parts
    read back from a safetensors file. Each part must be contiguous with the scheme's dtype
    for it, or integers of the same width holding its bits (uint8 bytes for packed 4-bit
    codes), and the scheme's number of elements."""
    parts = [None if p is None else as_array(p) for p in (scale, zero, global_scale)]
    q = QuantizedTensor._from_parts(scheme, [int(d) for d in shape], as_array(data), *parts)
    q._origin = _arrays.framework(data)
    return q


def _parts(q: QuantizedTensor) -> dict[str, Any]:
    """The parts that exist, by name ("data", "scale", "zero", "global_scale"), as NumPy
    arrays (CPU) or torch tensors over the same memory, in q's framework."""
    out = {}
    for name in ("data", "scale", "zero", "global_scale"):
        part = getattr(q, name)
        if part is not None:
            out[name] = _arrays.wrap(part, q._origin)
    return out


QuantizedTensor.from_parts = staticmethod(_from_parts)
QuantizedTensor.parts = _parts
QuantizedTensor.dequantize = dequantize


def cuda_device_count() -> int:
    """CUDA devices lowbit can use now: 0 when built without CUDA, with no driver or no GPU."""
    return _lowbit.cuda_device_count()


def info() -> dict[str, Any]:
    """lowbit's version, whether CUDA is built in, the CUDA devices and the CPU's features."""
    return _lowbit.info()
