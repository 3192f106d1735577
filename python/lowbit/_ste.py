"""The straight-through estimator's mask: which elements of x quantize inside the
representable range (gradient passes) and which saturate (gradient 0).

    integer schemes:  qmin <= rne(x * inv_scale) + zero <= qmax
    fp8 schemes:      |x * inv_scale| <= max finite (448 for e4m3, 57344 for e5m2)
    nvfp4:            |x / (global_scale * block_scale)| <= 6
    mxfp4 / mxfp8:    |x * 2^-e| <= the element format's max (6, 448, 57344)
    GGUF blocks:      1 everywhere (their per-block searches have no single clamp)

with the f32 arithmetic of src/formats/quant_math.hpp (inv_scale = 1 / scale in f32, 0 for
a zero scale), evaluated on q's own scales, so that the mask agrees with q's codes: where
the mask is 1 the code is the unclamped value, where it is 0 the code is saturated. Works
on NumPy arrays and torch tensors (CPU or CUDA) alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _arrays

_FP_MAX = {"fp8e4m3": 448.0, "fp8e5m2": 57344.0}
_MX_ELEMENT_MAX = {"mxfp4": 6.0, "mxfp8e4m3": 448.0, "mxfp8e5m2": 57344.0}


class _NumpyOps:
    def __init__(self):
        self.xp = np

    def f32(self, a):
        return np.asarray(a).astype(np.float32)

    def part(self, arr):
        return _arrays.array_numpy(arr)

    def repeat(self, a, n, axis):
        return np.repeat(a, n, axis=axis)

    def rint(self, a):
        return np.rint(a)

    def inv(self, s):
        with np.errstate(divide="ignore"):
            return np.where(s == 0, np.float32(0), np.float32(1) / s).astype(np.float32)

    def bits_to_f32(self, bits):
        return bits.astype(np.uint32).view(np.float32)

    def int32(self, a):
        return np.asarray(a).astype(np.int32)

    def ones(self, shape, like):
        return np.ones(shape, bool)


class _TorchOps:
    def __init__(self, torch):
        self.xp = torch
        self.torch = torch

    def f32(self, a):
        return a.detach().to(self.torch.float32)

    def part(self, arr):
        return _arrays.array_torch(arr)

    def repeat(self, a, n, axis):
        return a.repeat_interleave(n, dim=axis)

    def rint(self, a):
        return self.torch.round(a)  # half to even

    def inv(self, s):
        return self.torch.where(s == 0, self.torch.zeros_like(s), 1.0 / s)

    def bits_to_f32(self, bits):
        return bits.to(self.torch.int32).view(self.torch.float32)

    def int32(self, a):
        return a.to(self.torch.int32)

    def ones(self, shape, like):
        return self.torch.ones(shape, dtype=self.torch.bool, device=like.device)


def _expand(ops, s, scheme, shape):
    """Per-group values `s` (shaped like scheme.scale_shape(shape)) -> broadcastable to the
    elements' `shape`."""
    nd = len(shape)
    g = scheme.granularity
    if g == "tensor":
        return s.reshape(())
    if g == "token":
        return s.reshape(tuple(shape[:-1]) + (1,))
    if g == "channel":
        axis = scheme.axis % nd
        return s.reshape((shape[axis],) + (1,) * (nd - axis - 1))
    b = scheme.block
    e = ops.repeat(s, b, nd - 1)[..., : shape[-1]]
    if g == "block":
        return e
    return ops.repeat(e, b, nd - 2)[..., : shape[-2], :]  # block2d


def _mx_factor(ops, codes):
    """2^(127 - code) in f32, exactly as mx_unscale: codes 0..253 normal, 254 (and the NaN
    code 255) 2^-127."""
    c = ops.int32(codes)
    e = 127 - c  # exponent of the factor
    normal = ops.xp.where(e >= -126, (e + 127) * (1 << 23), 0x00400000)
    return ops.bits_to_f32(normal)


def ste_mask(x: Any, q) -> Any:
    """A bool array (in x's framework, on x's device, x's shape): True where the element
    quantizes without saturating under `q`, which must be quantize(x, scheme)'s result."""
    kind = _arrays.framework(x)
    if kind == "torch":
        import torch

        ops = _TorchOps(torch)
    else:
        ops = _NumpyOps()
        if kind == "array":
            x = _arrays.array_numpy(_arrays.as_array(x))
    shape = tuple(q.shape)
    if tuple(x.shape) != shape:
        raise ValueError(f"ste_mask: x has shape {tuple(x.shape)}, q has {shape}")
    scheme = q.scheme
    fmt = scheme.format
    xf = ops.f32(x)
    if fmt == "gguf":
        return ops.ones(shape, xf)
    if scheme.is_integer:
        s = _expand(ops, ops.f32(ops.part(q.scale)), scheme, shape)
        r = ops.rint(xf * ops.inv(s))
        if q.zero is not None:
            r = r + _expand(ops, ops.f32(ops.part(q.zero)), scheme, shape)
        return (r >= scheme.qmin) & (r <= scheme.qmax)
    if fmt in _FP_MAX:
        s = _expand(ops, ops.f32(ops.part(q.scale)), scheme, shape)
        return ops.xp.abs(xf * ops.inv(s)) <= _FP_MAX[fmt]
    if fmt == "nvfp4":
        g = ops.f32(ops.part(q.global_scale)).reshape(())
        if float(g) == 0.0:
            return ops.ones(shape, xf)
        block = _expand(ops, ops.f32(ops.part(q.scale)), scheme, shape)
        return ops.xp.abs(xf / (g * block)) <= 6.0
    if fmt in _MX_ELEMENT_MAX:
        f = _expand(ops, _mx_factor(ops, ops.part(q.scale.raw())), scheme, shape)
        return ops.xp.abs(xf * f) <= _MX_ELEMENT_MAX[fmt]
    raise NotImplementedError(f"ste_mask: no rule for scheme {scheme}")
