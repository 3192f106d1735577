"""fake_quantize and its backward (include/lowbit/fake_quantize.hpp) against numpy and torch,
through the ctypes shim tests/python/shim/shim_fake_quantize.cpp.

Always (numpy only):
* the forward equals lowbit's quantize then dequantize (the quantize shim), values, scales
  and zero points, dynamic and static, every integer and fp8 granularity;
* the backward equals a numpy restatement of docs/formats.md: dx bit for bit (dy inside the
  code range, a zero of dy's sign outside), dscale / dzero within 2^-40 of the sum of the
  terms' magnitudes plus one f32 ulp (lowbit's sums are exact, then rounded once), LSQ's
  factor 1 / sqrt(n_group * qmax).

With torch (skipped visibly where `import torch` fails; the GPU machine has it), on torch's
CPU and CUDA devices:
* torch.fake_quantize_per_tensor_affine / _per_channel_affine: forward bit for bit, and the
  gradient for a random upstream dy bit for bit (torch's dx = dy * mask);
* torch._fake_quantize_learnable_per_tensor_affine / _per_channel_affine (LSQ, with the
  grad_factor lowbit uses): dx bit for bit, dscale and dzero within a tolerance (torch sums
  rounded f32 terms in its own order: 1e-4 of the sum of |terms|). torch rounds
  rne(zero + x * inv) where lowbit (and torch's non-learnable ops) round rne(x * inv) + zero;
  the two differ at rare near-ties when zero != 0, so the data avoids those elements.
Where lowbit has a CUDA device too, its CUDA kernels are run through the same checks.
"""

from __future__ import annotations

import ctypes
import math
import zlib

import ml_dtypes
import numpy as np
import pytest

from lowbit_shim_quant import QuantShim

F32 = np.float32
BF16 = ml_dtypes.bfloat16
CODES = {np.dtype(F32): 0, np.dtype(np.float16): 1, np.dtype(BF16): 2, np.dtype(np.float64): 3}
PART_NP = {"f32": F32, "f16": np.float16, "bf16": BF16}


class LowbitError(RuntimeError):
    pass


class FqShim:
    def __init__(self, lib: ctypes.CDLL, qs: QuantShim):
        self.lib, self.qs = lib, qs
        p, i64p, c_int = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64), ctypes.c_int
        lib.lowbit_shim_fq_forward.argtypes = [
            ctypes.c_char_p, c_int, c_int, p, i64p, c_int, c_int, p, c_int, p, p]
        lib.lowbit_shim_fq_forward.restype = c_int
        lib.lowbit_shim_fq_backward.argtypes = [
            ctypes.c_char_p, c_int, c_int, p, c_int, p, i64p, c_int, p, p, p, p, p, c_int]
        lib.lowbit_shim_fq_backward.restype = c_int
        lib.lowbit_shim_fq_cuda_devices.argtypes = []
        lib.lowbit_shim_fq_cuda_devices.restype = c_int
        lib.lowbit_shim_fq_last_error.argtypes = []
        lib.lowbit_shim_fq_last_error.restype = ctypes.c_char_p

    def _check(self, rc):
        if rc != 0:
            raise LowbitError(self.lib.lowbit_shim_fq_last_error().decode())

    @staticmethod
    def _ptr(a):
        return None if a is None else a.ctypes.data_as(ctypes.c_void_p)

    def cuda_devices(self) -> int:
        return self.lib.lowbit_shim_fq_cuda_devices()

    def scale_layout(self, scheme, shape):
        info = self.qs.info(scheme, shape)
        return tuple(info.scale_shape), PART_NP[info.dtypes[1]], info.dtypes[2] == "i32"

    def forward(self, scheme, x, dst=F32, scale=None, zero=None, device=0):
        """(y, scale, zero): static when scale is given, else dynamic (scales returned)."""
        x = np.ascontiguousarray(x)
        sshape, sdt, affine = self.scale_layout(scheme, x.shape)
        given = scale is not None
        sc = (np.ascontiguousarray(np.asarray(scale, sdt).reshape(sshape)) if given
              else np.zeros(sshape, sdt))
        z = None
        if affine:
            z = (np.ascontiguousarray(np.asarray(zero, np.int32).reshape(sshape)) if given
                 else np.zeros(sshape, np.int32))
        y = np.empty(x.shape, dst)
        shp = (ctypes.c_int64 * max(1, x.ndim))(*x.shape)
        self._check(self.lib.lowbit_shim_fq_forward(
            scheme.encode(), device, CODES[x.dtype], self._ptr(x), shp, x.ndim,
            CODES[np.dtype(dst)], self._ptr(y), int(given), self._ptr(sc), self._ptr(z)))
        return y, sc, z

    def backward(self, scheme, x, dy, scale, zero=None, scale_grad=False, zero_grad=False,
                 lsq=False, device=0):
        x, dy = np.ascontiguousarray(x), np.ascontiguousarray(dy)
        sshape, sdt, affine = self.scale_layout(scheme, x.shape)
        sc = np.ascontiguousarray(np.asarray(scale, sdt).reshape(sshape))
        z = np.ascontiguousarray(np.asarray(zero, np.int32).reshape(sshape)) if affine else None
        dx = np.empty(x.shape, dy.dtype)
        ds = np.empty(sshape, F32) if scale_grad else None
        dz = np.empty(sshape, F32) if zero_grad else None
        shp = (ctypes.c_int64 * max(1, x.ndim))(*x.shape)
        self._check(self.lib.lowbit_shim_fq_backward(
            scheme.encode(), device, CODES[x.dtype], self._ptr(x), CODES[dy.dtype], self._ptr(dy),
            shp, x.ndim, self._ptr(sc), self._ptr(z), self._ptr(dx), self._ptr(ds),
            self._ptr(dz), int(lsq)))
        return dx, ds, dz


@pytest.fixture(scope="module")
def qs(shim) -> QuantShim:
    return QuantShim(shim)


@pytest.fixture(scope="module")
def fq(shim, qs) -> FqShim:
    return FqShim(shim, qs)


def seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


def bits(a) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_bits(ours, theirs, what):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
    bad = np.flatnonzero((bits(ours) != bits(theirs)).reshape(-1))
    assert bad.size == 0, (f"{what}: {bad.size} of {ours.size} differ, first at {bad[:5]}: "
                           f"ours {ours.reshape(-1)[bad[:5]]}, theirs {theirs.reshape(-1)[bad[:5]]}")


# ---- the definition in numpy -----------------------------------------------------------------


def parse(text):
    parts = text.split(":")
    fmt, gran, axis, block, sym = parts[0], "tensor", 0, 0, not parts[0].startswith("uint")
    for p in parts[1:]:
        if p in ("tensor", "channel", "token"):
            gran = p
        elif p.startswith("block"):
            gran, block = "block", int(p[5:])
        elif p.startswith("axis="):
            axis = int(p[5:])
        elif p == "asym":
            sym = False
    return fmt, gran, axis, block, sym


def groups(text, shape):
    """Group index of every element (row-major) and the group count."""
    _, gran, axis, block, _ = parse(text)
    n = int(np.prod(shape))
    i = np.arange(n)
    k = shape[-1]
    if gran == "tensor":
        return np.zeros(n, np.int64), 1
    if gran == "token":
        return i // k, n // k
    if gran == "channel":
        a = axis % len(shape)
        inner = int(np.prod(shape[a + 1:]))
        return (i // inner) % shape[a], shape[a]
    nb = -(-k // block)
    return (i // k) * nb + (i % k) // block, (n // k) * nb


def fp8_round(v, fmt):
    m = 448.0 if fmt == "fp8e4m3" else 57344.0
    dt = ml_dtypes.float8_e4m3fn if fmt == "fp8e4m3" else ml_dtypes.float8_e5m2
    return np.clip(v, -m, m).astype(dt).astype(F32), m


def reference_backward(text, qmin, qmax, x, dy, scale, zero, lsq):
    """dx (dy's dtype), dscale and dzero in float64 (before the final f32 rounding), and the
    sum of |terms| per group."""
    fmt = parse(text)[0]
    g, count = groups(text, x.shape)
    xf = x.astype(F32).reshape(-1)
    dyf = dy.astype(F32).reshape(-1)
    s = np.asarray(scale, F32).reshape(-1).astype(F32)
    inv = np.where(s == 0, F32(0), F32(1) / np.where(s == 0, F32(1), s)).astype(F32)
    v = (xf * inv[g]).astype(F32)
    if fmt.startswith("fp8"):
        f, m = fp8_round(v, fmt)
        inside = np.abs(v) <= m
        c = np.where(inside, f - v, np.where(v < 0, -m, m)).astype(F32)
        qtop = m
    else:
        z = (np.zeros(count, F32) if zero is None else np.asarray(zero).reshape(-1).astype(F32))[g]
        r = np.rint(v)
        q = (r + z).astype(F32)
        inside = (q >= qmin) & (q <= qmax)
        c = np.where(inside, r - v, np.where(q < qmin, F32(qmin) - z, F32(qmax) - z)).astype(F32)
        qtop = qmax
    dx = np.where(inside.reshape(x.shape), dy, np.copysign(np.zeros_like(dy), dy)).astype(dy.dtype)
    t = dyf.astype(np.float64) * c.astype(np.float64)
    ds = np.bincount(g, weights=t, minlength=count)
    mag = np.bincount(g, weights=np.abs(t), minlength=count)
    dzsum = np.bincount(g, weights=np.where(inside, 0.0, dyf.astype(np.float64)), minlength=count)
    dz = -(dzsum * s.astype(np.float64))
    n_g = np.bincount(g, minlength=count)
    gf = np.where(n_g > 0, (1.0 / np.sqrt(n_g.astype(np.float64) * qtop)).astype(F32), F32(1))
    return dx, ds, dz, mag, gf


SCHEMES = ["int8:tensor", "int8:tensor:asym", "uint8:token", "int4:block32:asym", "uint4:block64",
           "int8:channel", "int8:channel:axis=1:asym", "int4:channel:axis=-1", "fp8e4m3:token",
           "fp8e5m2:tensor", "fp8e4m3:channel:axis=1", "int8:token:scale=bf16"]


def make_x(rng, shape, spread=3.0):
    x = (rng.standard_normal(shape) * spread).astype(F32)
    x.reshape(-1)[:: 17] = 0
    return x


@pytest.mark.parametrize("text", SCHEMES)
@pytest.mark.parametrize("dtype", [F32, BF16, np.float16])
def test_forward_equals_quantize_then_dequantize(fq, qs, text, dtype):
    rng = np.random.default_rng(seed(text, "fwd"))
    x = make_x(rng, (6, 128)).astype(dtype)
    y, sc, z = fq.forward(text, x, dst=dtype)
    q = qs.quantize(text, x)
    assert_bits(y, qs.dequantize(q, dtype=dtype), f"{text} dynamic values")
    assert_bits(sc.reshape(-1), q.scale.reshape(-1), f"{text} dynamic scales")
    if z is not None:
        assert_bits(z.reshape(-1), q.zero.reshape(-1), f"{text} dynamic zero points")
    # static: half the dynamic scales (more clipping)
    sc2 = (sc.astype(F32) * F32(0.5)).astype(sc.dtype)
    kw = {"scale": sc2} if z is None else {"scale": sc2, "zero": z}
    y2, _, _ = fq.forward(text, x, dst=dtype, **kw)
    q2 = qs.quantize(text, x, **kw)
    assert_bits(y2, qs.dequantize(q2, dtype=dtype), f"{text} static values")


@pytest.mark.parametrize("text", SCHEMES)
@pytest.mark.parametrize("lsq", [False, True])
def test_backward_matches_the_definition(fq, qs, text, lsq):
    rng = np.random.default_rng(seed(text, "bwd", lsq))
    shape = (6, 128)
    x = make_x(rng, shape)
    _, sc, z = fq.forward(text, x)
    sc = (sc.astype(F32) * F32(0.6)).astype(sc.dtype)  # some clipping
    dy = (rng.standard_normal(shape) * 2.0 ** rng.integers(-8, 8)).astype(F32)
    _, qmin, qmax = qs.scheme_info(text)
    affine = z is not None
    dx, ds, dz = fq.backward(text, x, dy, sc, z, scale_grad=True, zero_grad=affine, lsq=lsq)
    rdx, rds, rdz, mag, gf = reference_backward(text, qmin, qmax, x, dy, sc.astype(F32), z, lsq)
    assert_bits(dx, rdx, f"{text} dx")
    ds_plain = rds.astype(F32)
    tol = np.abs(ds_plain).astype(np.float64) * 2.0**-23 + mag * 2.0**-40
    if lsq:
        ok = np.abs(ds.reshape(-1) / gf - rds) <= 2 * tol + 1e-30
    else:
        ok = np.abs(ds.reshape(-1) - rds) <= tol + 1e-30
    assert ok.all(), f"{text} dscale {ds.reshape(-1)[~ok]} vs {rds[~ok]}"
    if affine:
        want = rdz * (gf if lsq else 1.0)
        assert np.allclose(dz.reshape(-1), want, rtol=4 * 2.0**-23, atol=1e-30), \
            f"{text} dzero {dz.reshape(-1)} vs {want}"


def test_errors_name_the_first_bad_element(fq):
    x = np.zeros((3, 5), F32)
    x[1, 2] = np.nan
    x[2, 0] = np.inf
    with pytest.raises(LowbitError, match=r"src element \[1, 2\] \(flat index 7\) is NaN"):
        fq.forward("int8:token", x)
    with pytest.raises(LowbitError, match=r"x element \[1, 2\] \(flat index 7\) is NaN"):
        fq.backward("int8:token", x, np.ones_like(x), np.ones(3, F32), scale_grad=True)
    with pytest.raises(LowbitError, match=r"given scale -1 of group 1"):
        fq.forward("int8:token", np.ones((3, 5), F32), scale=np.array([1, -1, 1], F32))


# ---- torch ----------------------------------------------------------------------------------


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


@pytest.fixture(params=[0, 1], ids=["lowbit-cpu", "lowbit-cuda"])
def ldev(request, fq):
    if request.param == 1 and fq.cuda_devices() == 0:
        pytest.skip("lowbit has no CUDA device here")
    return request.param


INT_SCHEMES = ["int8:tensor", "int8:tensor:asym", "uint8:tensor", "int4:tensor",
               "int4:tensor:asym", "uint4:tensor"]


def static_data(rng, n, s, qmin, qmax, zp):
    """Values over the code range and 30% past it, plus exact ties of the scale."""
    lo, hi = (qmin - zp) * s * 1.3, (qmax - zp) * s * 1.3
    x = rng.uniform(lo, hi, n).astype(F32)
    x[: n // 8] = ((rng.integers(qmin, qmax + 1, n // 8) - zp) + 0.5).astype(F32) * F32(s)
    return x


@pytest.mark.parametrize("text", INT_SCHEMES)
def test_per_tensor_forward_and_gradient_match_torch(fq, qs, torch, tdev, ldev, text):
    rng = np.random.default_rng(seed(text, "torch-pt"))
    _, qmin, qmax = qs.scheme_info(text)
    sym = parse(text)[4]
    for s in [0.1, 0.02, 1e-3, float(F32(rng.uniform(1e-3, 1)))]:
        for zp in ([0] if sym else [qmin, (qmin + qmax) // 2 + 1, qmax]):
            x = static_data(rng, 3000, s, qmin, qmax, zp)
            dy = rng.standard_normal(x.shape).astype(F32)
            what = f"{text} scale {s} zp {zp} torch {tdev} lowbit {ldev}"
            xt = torch.from_numpy(x).to(tdev).requires_grad_(True)
            yt = torch.fake_quantize_per_tensor_affine(xt, float(F32(s)), zp, qmin, qmax)
            yt.backward(torch.from_numpy(dy).to(tdev))
            kw = {"scale": [F32(s)]} if sym else {"scale": [F32(s)], "zero": [zp]}
            y, _, _ = fq.forward(text, x, device=ldev, **kw)
            assert_bits(y, yt.detach().cpu().numpy(), f"{what} forward")
            dx, _, _ = fq.backward(text, x, dy, [F32(s)], None if sym else [zp], device=ldev)
            assert_bits(dx, xt.grad.cpu().numpy(), f"{what} dx")


@pytest.mark.parametrize("text,shape,axis", [("int8:channel:asym", (5, 400), 0),
                                             ("uint8:channel:axis=1", (400, 5), 1),
                                             ("int4:channel:axis=1:asym", (40, 5, 10), 1),
                                             ("int8:channel", (7, 300), 0)])
def test_per_channel_forward_and_gradient_match_torch(fq, qs, torch, tdev, ldev, text, shape,
                                                      axis):
    rng = np.random.default_rng(seed(text, "torch-pc"))
    _, qmin, qmax = qs.scheme_info(text)
    sym = parse(text)[4]
    C = shape[axis]
    sc = np.array([[0.1, 0.02, 1e-3][i % 3] for i in range(C)], F32)
    zp = np.zeros(C, np.int32) if sym else rng.integers(qmin, qmax + 1, C).astype(np.int32)
    x = (rng.standard_normal(shape) * 0.5).astype(F32)
    dy = rng.standard_normal(shape).astype(F32)
    xt = torch.from_numpy(x).to(tdev).requires_grad_(True)
    yt = torch.fake_quantize_per_channel_affine(
        xt, torch.from_numpy(sc).to(tdev), torch.from_numpy(zp).to(tdev), axis, qmin, qmax)
    yt.backward(torch.from_numpy(dy).to(tdev))
    what = f"{text} torch {tdev} lowbit {ldev}"
    y, _, _ = fq.forward(text, x, scale=sc, zero=None if sym else zp, device=ldev)
    assert_bits(y, yt.detach().cpu().numpy(), f"{what} forward")
    dx, _, _ = fq.backward(text, x, dy, sc, None if sym else zp, device=ldev)
    assert_bits(dx, xt.grad.cpu().numpy(), f"{what} dx")


def avoid_rounding_order_ties(x, inv_b, zp_b):
    """Zeroes the elements where rne(zp + v) (torch's learnable ops) differs from rne(v) + zp."""
    v = (x * inv_b).astype(F32)
    theirs = np.rint((F32(1) * zp_b).astype(F32) + v)
    ours = np.rint(v) + zp_b
    x = x.copy()
    x[theirs != ours] = 0
    return x


def check_sums(ours, theirs, mag, what):
    tol = 1e-4 * mag + 1e-6 * np.abs(theirs) + 1e-30
    assert np.all(np.abs(ours - theirs) <= tol), f"{what}: ours {ours} theirs {theirs} tol {tol}"


@pytest.mark.parametrize("text", ["int8:tensor", "uint8:tensor", "int4:tensor", "uint4:tensor",
                                  "int8:tensor:asym"])
def test_learnable_per_tensor_matches_torch(fq, qs, torch, tdev, ldev, text):
    """LSQ: torch._fake_quantize_learnable_per_tensor_affine with grad_factor = lowbit's
    1 / sqrt(numel * qmax)."""
    rng = np.random.default_rng(seed(text, "lsq-pt"))
    _, qmin, qmax = qs.scheme_info(text)
    sym = parse(text)[4]
    # torch's learnable backward truncates zero_point + 0.5: negative zero points are off by
    # one there, so they stay >= 0.
    for s, zp in [(0.05, 0 if sym else max(qmin, 0)), (0.013, 0 if sym else max(qmin, 0) + 3)]:
        n = 4000
        x = static_data(rng, n, s, qmin, qmax, zp)
        inv = F32(1) / F32(s)
        x = avoid_rounding_order_ties(x, inv, F32(zp))
        dy = rng.standard_normal(n).astype(F32)
        g = float(F32(1.0 / math.sqrt(n * qmax)))
        xt = torch.from_numpy(x).to(tdev).requires_grad_(True)
        st = torch.tensor([float(F32(s))], device=tdev, requires_grad=True)
        zt = torch.tensor([float(zp)], device=tdev, requires_grad=True)
        yt = torch._fake_quantize_learnable_per_tensor_affine(xt, st, zt, qmin, qmax, g)
        yt.backward(torch.from_numpy(dy).to(tdev))
        what = f"{text} s {s} zp {zp} torch {tdev} lowbit {ldev}"
        kw = {"scale": [F32(s)]} if sym else {"scale": [F32(s)], "zero": [zp]}
        y, _, _ = fq.forward(text, x, device=ldev, **kw)
        assert_bits(y, yt.detach().cpu().numpy(), f"{what} forward")
        dx, ds, dz = fq.backward(text, x, dy, [F32(s)], None if sym else [zp], scale_grad=True,
                                 zero_grad=not sym, lsq=True, device=ldev)
        assert_bits(dx, xt.grad.cpu().numpy(), f"{what} dx")
        _, rds, rdz, mag, gf = reference_backward(text, qmin, qmax, x, dy, [F32(s)],
                                                   None if sym else [zp], True)
        check_sums(ds.astype(np.float64), st.grad.cpu().numpy().astype(np.float64), mag * g,
                   f"{what} dscale")
        if not sym:
            dzmag = float(F32(s)) * g * np.abs(dy).sum()
            check_sums(dz.astype(np.float64), zt.grad.cpu().numpy().astype(np.float64), dzmag,
                       f"{what} dzero")


@pytest.mark.parametrize("text,shape,axis", [("int8:channel", (6, 500), 0),
                                             ("uint8:channel:axis=1", (300, 4), 1)])
def test_learnable_per_channel_matches_torch(fq, qs, torch, tdev, ldev, text, shape, axis):
    rng = np.random.default_rng(seed(text, "lsq-pc"))
    _, qmin, qmax = qs.scheme_info(text)
    sym = parse(text)[4]
    C = shape[axis]
    sc = np.array([[0.05, 0.013, 0.2][i % 3] for i in range(C)], F32)
    zp = np.zeros(C, np.int32) if sym else rng.integers(0, qmax + 1, C).astype(np.int32)
    bshape = [1] * len(shape)
    bshape[axis] = C
    x = (rng.standard_normal(shape) * 0.05 * qmax * 0.5).astype(F32)
    x = avoid_rounding_order_ties(x, (F32(1) / sc).reshape(bshape), zp.astype(F32).reshape(bshape))
    dy = rng.standard_normal(shape).astype(F32)
    n_g = int(np.prod(shape)) // C
    g = float(F32(1.0 / math.sqrt(n_g * qmax)))
    xt = torch.from_numpy(x).to(tdev).requires_grad_(True)
    st = torch.from_numpy(sc.copy()).to(tdev).requires_grad_(True)
    zt = torch.from_numpy(zp.astype(F32)).to(tdev).requires_grad_(True)
    yt = torch._fake_quantize_learnable_per_channel_affine(xt, st, zt, axis, qmin, qmax, g)
    yt.backward(torch.from_numpy(dy).to(tdev))
    what = f"{text} torch {tdev} lowbit {ldev}"
    y, _, _ = fq.forward(text, x, scale=sc, zero=None if sym else zp, device=ldev)
    assert_bits(y, yt.detach().cpu().numpy(), f"{what} forward")
    dx, ds, dz = fq.backward(text, x, dy, sc, None if sym else zp, scale_grad=True,
                             zero_grad=not sym, lsq=True, device=ldev)
    assert_bits(dx, xt.grad.cpu().numpy(), f"{what} dx")
    _, _, rdz, mag, _ = reference_backward(text, qmin, qmax, x, dy, sc, None if sym else zp, True)
    check_sums(ds.astype(np.float64), st.grad.cpu().numpy().astype(np.float64), mag * g,
               f"{what} dscale")
    if not sym:
        dzmag = sc.astype(np.float64) * g * n_g
        check_sums(dz.astype(np.float64), zt.grad.cpu().numpy().astype(np.float64), dzmag,
                   f"{what} dzero")
