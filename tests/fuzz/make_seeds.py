#!/usr/bin/env python3
"""Regenerates the libFuzzer seed corpus kept in the repository (tests/fuzz/corpus/<target>/).

    .venv/bin/python tests/fuzz/make_seeds.py build/lowbit

Seeds are small valid files of every kind the parsers accept: safetensors files written by
the official `safetensors` package (every dtype, metadata, empty and 0-d tensors) and by
`lowbit quantize` (one file per quantized layout family), GGUF files written by the `gguf`
package (every metadata value type, arrays, plain and block tensors) and by lowbit. The
fuzzer starts from these and mutates; scripts/fuzz grows its own corpus in the build folder
and leaves these files alone. The output is deterministic (fixed seeds, at most one
safetensors metadata entry), so a rerun changes nothing unless a writer changed.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tempfile

import ml_dtypes
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent


def safetensors_seeds(d: pathlib.Path, cli: pathlib.Path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    save_file({"w": rng.standard_normal((4, 64)).astype(np.float32),
               "b": np.arange(4, dtype=np.int64), "e": np.zeros((0, 3), np.float16)},
              d / "plain.safetensors", metadata={"format": "pt"})
    save_file({"a": np.zeros(1, np.uint8)}, d / "tiny.safetensors")
    save_file({}, d / "empty.safetensors")
    dtypes = [np.float64, np.float32, np.float16, ml_dtypes.bfloat16, np.int64, np.int32,
              np.int16, np.int8, np.uint64, np.uint32, np.uint16, np.uint8, np.bool_,
              ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2]
    every = {}
    for i, dt in enumerate(dtypes):
        shape = [(3,), (2, 3), (0, 2), (), (1, 2, 1)][i % 5]
        every[f"t{i}"] = np.asarray(rng.standard_normal(shape) * 4, np.float32).astype(dt)
    save_file(every, d / "dtypes.safetensors")
    # lowbit's quantized layouts: codes + scale / zero / global_scale parts and metadata.
    with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp) / "w.safetensors"
        save_file({"w": rng.standard_normal((4, 256)).astype(np.float32),
                   "o": rng.standard_normal((3, 5)).astype(np.float32)}, src)
        for scheme, include in [("int8:channel", "w"), ("int4:block32:asym", "w"),
                                ("uint4:block64:scale=bf16", "w"), ("int4:tensor", "o"),
                                ("fp8e4m3:block128x128", "w"), ("nvfp4", "w"), ("mxfp4", "w"),
                                ("q4_0", "w"), ("q4_K", "w")]:
            out = d / f"q-{scheme.replace(':', '_').replace('=', '_')}.safetensors"
            out.unlink(missing_ok=True)
            subprocess.run([str(cli), "quantize", str(src), str(out), "--scheme", scheme,
                            "--include", include], check=True, stdout=subprocess.DEVNULL)


def gguf_seeds(d: pathlib.Path, cli: pathlib.Path) -> None:
    import gguf

    rng = np.random.default_rng(1)
    path = d / "plain.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_uint8("u8", 1)
    w.add_int8("i8", -1)
    w.add_uint16("u16", 2)
    w.add_int16("i16", -2)
    w.add_uint32("u32", 3)
    w.add_int32("i32", -3)
    w.add_uint64("u64", 4)
    w.add_int64("i64", -4)
    w.add_float32("f32", 0.5)
    w.add_float64("f64", 0.25)
    w.add_bool("b", True)
    w.add_string("s", "v\u00e9")
    w.add_array("arr", [1, 2, 3])
    w.add_array("sarr", ["a", "bb"])
    x = rng.standard_normal((4, 256)).astype(np.float32)
    w.add_tensor("w", x)
    w.add_tensor("h", x[:2, :32].astype(np.float16))
    w.add_tensor("n", np.arange(6, dtype=np.int32).reshape(1, 2, 3))
    for t in (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0,
              gguf.GGMLQuantizationType.Q5_1):
        w.add_tensor(f"q.{t.name}", gguf.quants.quantize(x, t), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for scheme in ("q4_K", "q6_K", "q2_K"):
        out = d / f"{scheme}.gguf"
        out.unlink(missing_ok=True)
        subprocess.run([str(cli), "quantize", str(path), str(out), "--scheme", scheme,
                        "--include", "w"], check=True, stdout=subprocess.DEVNULL)
    # GGUF v2 (the reader accepts it): the same header with version 2.
    data = bytearray((d / "q4_K.gguf").read_bytes())
    data[4:8] = (2).to_bytes(4, "little")
    (d / "q4_K-v2.gguf").write_bytes(bytes(data))


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    cli = pathlib.Path(sys.argv[1]).resolve()
    for target, make in (("fuzz_safetensors", safetensors_seeds), ("fuzz_gguf", gguf_seeds)):
        d = HERE / "corpus" / target
        d.mkdir(parents=True, exist_ok=True)
        make(d, cli)
        files = sorted(d.iterdir())
        print(f"{d.relative_to(HERE.parents[1])}: {len(files)} seeds, "
              f"{sum(f.stat().st_size for f in files)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
