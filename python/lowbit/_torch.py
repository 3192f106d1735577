"""PyTorch autograd for lowbit.fake_quantize (imported only when torch is in use)."""

from __future__ import annotations

import torch

from . import _arrays, _lowbit
from ._ste import ste_mask


class FakeQuantize(torch.autograd.Function):
    """y = dequantize(quantize(x, scheme)) in x's dtype; dx = dy * ste_mask(x, q) (the
    straight-through estimator: the gradient passes where x quantizes without saturating)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scheme, scale=None, zero=None, global_scale=None):
        given = [None if p is None else _arrays.as_array(p) for p in (scale, zero, global_scale)]
        q = _lowbit.quantize(_arrays.as_array(x), scheme, *given)
        y = _arrays.array_torch(_lowbit.dequantize(q, _arrays.dtype_name(x.dtype)))
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(ste_mask(x, q))
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return dy * mask.to(dy.dtype), None, None, None, None
