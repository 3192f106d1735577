"""lowbit: exact low-precision formats and kernels for ML, from Python.

    import numpy as np, lowbit
    w = np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32)
    q = lowbit.quantize(w, "int4:block32:asym")    # QuantizedTensor
    w2 = lowbit.dequantize(q)                       # float32, like w
    codes = np.asarray(q.data)                      # zero-copy views of the parts
    y = lowbit.fake_quantize(x_torch, "fp8e4m3:token")   # autograd: straight-through

Inputs are NumPy arrays (ml_dtypes' bfloat16 / float8 types included), PyTorch tensors (CPU,
and CUDA where lowbit was built with CUDA) or any object with __dlpack__; they are read in
place, without copies. Results come back in the input's framework. lowbit.load / save read
and write safetensors and GGUF files (memory-mapped, zero-copy). docs/python.md has the
tutorial.
"""

from __future__ import annotations

from typing import Any

from . import _arrays, _lowbit
from ._arrays import as_array, dtype_name
from ._files import load, load_metadata, save
from ._lowbit import Array, CorruptFileError, PlanInfo, QuantizedTensor, Scheme
from ._ste import ste_mask

__version__: str = _lowbit.__version__

__all__ = [
    "Array",
    "CorruptFileError",
    "PlanInfo",
    "QuantizedTensor",
    "Scheme",
    "__version__",
    "asarray",
    "convert",
    "cuda_device_count",
    "dequantize",
    "dtype_name",
    "fake_quantize",
    "info",
    "load",
    "load_metadata",
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

    .sku names the kernel, .precision states what it promises, .declined lists the kernels
    tried before it with their reasons. Raises NotImplementedError (with every kernel's
    reason) when none fits.
    """
    if op == "quantize":
        return _plan_quantize(*args, **kwargs)
    if op == "dequantize":
        return _plan_dequantize(*args, **kwargs)
    if op == "convert":
        return _plan_convert(*args, **kwargs)
    raise ValueError(f'plan_info: op must be "quantize", "dequantize" or "convert", got {op!r}')


def _plan_quantize(x: Any, scheme: Scheme | str, given_scales: bool = False) -> PlanInfo:
    return _lowbit.plan_quantize(as_array(x), scheme, given_scales)


def _plan_dequantize(q: QuantizedTensor, dtype: Any = "f32") -> PlanInfo:
    return _lowbit.plan_dequantize(q, dtype_name(dtype))


def _plan_convert(x: Any, dtype: Any, saturation: str = "none") -> PlanInfo:
    return _lowbit.plan_convert(as_array(x), dtype_name(dtype), saturation)


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
