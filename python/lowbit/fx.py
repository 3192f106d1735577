"""lowbit.fx: element-wise expressions over tensors, evaluated in one pass by lowbit.fuse.

    import lowbit
    from lowbit import fx
    a, b = fx.input(x), fx.input(y)          # NumPy arrays / torch tensors: read in place
    out = lowbit.fuse(fx.silu(a * 1.25 + b) * b)                  # a new array
    q = lowbit.fuse(fx.silu(a) * b, scheme="fp8e4m3:token")       # quantize epilogue

Operators: + - * / (also with Python / NumPy scalars and arrays on either side), unary -,
abs(), < <= > >= (comparisons give 0 / 1), ``e ** p`` for a constant p. ``==`` and ``!=``
keep Python's meaning: use fx.eq / fx.ne. Types follow PyTorch's promotion, math runs in
f32 for dtypes narrower than f32 (include/lowbit/fusion.hpp, docs/jit.md).
"""

from __future__ import annotations

from typing import Any

from . import _arrays
from ._lowbit import fx as _fx

Expr = _fx.Expr

__all__ = [
    "Expr", "input", "constant", "add", "sub", "mul", "div", "neg", "abs", "minimum", "maximum",
    "clamp", "where", "lt", "le", "gt", "ge", "eq", "ne", "exp", "log", "sqrt", "rsqrt", "tanh",
    "sigmoid", "relu", "leaky_relu", "gelu", "silu", "softplus", "pow", "scale", "cast",
]


def input(x: Any) -> Expr:  # noqa: A001 - the name fusion.hpp uses
    """An input tensor: a NumPy array (ml_dtypes' bf16 / fp8 included), a torch tensor or a
    DLPack producer, read in place when the expression is evaluated (it stays referenced).
    Any float dtype or i8 u8 i16 i32 u32; any strides; its shape broadcasts against the
    others'."""
    if isinstance(x, Expr):
        return x
    return _fx.input(_arrays.as_array(x), _arrays.framework(x))


def constant(value: float | int) -> Expr:
    """A scalar: a float takes the dtype of the tensors it meets, an int is i32."""
    return _fx.constant(value)


def cast(x: Any, dtype: Any) -> Expr:
    """x rounded to `dtype` (to integers: truncated, saturated)."""
    return _fx.cast(x, _arrays.dtype_name(dtype))


add, sub, mul, div = _fx.add, _fx.sub, _fx.mul, _fx.div
neg, abs = _fx.neg, _fx.abs  # noqa: A001
minimum, maximum, clamp, where = _fx.minimum, _fx.maximum, _fx.clamp, _fx.where
lt, le, gt, ge, eq, ne = _fx.lt, _fx.le, _fx.gt, _fx.ge, _fx.eq, _fx.ne
exp, log, sqrt, rsqrt, tanh = _fx.exp, _fx.log, _fx.sqrt, _fx.rsqrt, _fx.tanh
sigmoid, relu, leaky_relu, gelu, silu, softplus = (
    _fx.sigmoid, _fx.relu, _fx.leaky_relu, _fx.gelu, _fx.silu, _fx.softplus)
pow, scale = _fx.pow, _fx.scale  # noqa: A001
