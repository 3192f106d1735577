#!/usr/bin/env python3
"""`lowbit quantize` on a synthetic safetensors file larger than RAM (issue 6): peak memory
against the largest tensor and the file size.

    .venv/bin/python bench/bench_cli_bigfile.py --dir /big/scratch [--gib 30 4] \
        [--largest-mib 1024] [--tensor-mib 256] [--scheme q4_K] [--threads 2] [--keep]

For each size in --gib, writes DIR/big-<N>GiB.safetensors: 2-D BF16 weights ("layers.<i>.
mlp.weight", --tensor-mib each, [rows, 16384]) plus one larger "lm_head.weight" (--largest-mib)
and a small 1-D norm, values ~ N(0, 0.02) (a 64 MiB random pool, rotated per tensor, so that
no two tensors are equal), streamed to disk in 8 MiB writes (the generator's own memory stays
near the pool). Then runs `/usr/bin/time -v lowbit quantize FILE OUT -s SCHEME -j THREADS
--report json`, sampling /proc/<pid>/status (VmRSS = RssAnon + RssFile) every 0.2 s, and
prints one Markdown row per file: file size, largest tensor, peak RSS (getrusage, = time -v's
maximum resident set size), the peak of the sampled anonymous (heap) and file-backed (mapped
input pages) parts, wall time, output size. The files are deleted afterwards unless --keep
(an existing file of the right size is reused).

The point: quantize maps the input and streams tensor by tensor, releasing each tensor's pages
(madvise MADV_DONTNEED) once it is written, and writes its output with pwrite into the temp
file (page cache, not the process), so the peak RSS is about the largest tensor's source pages
plus its quantized parts, whatever the file size. A file larger than the machine's RAM could
not be held even if the process wanted to.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
COLS = 16384  # row length of every weight (a multiple of 256: K-quants fit)
POOL_BYTES = 64 << 20
CHUNK = 8 << 20


def layout(gib: float, largest_mib: int, tensor_mib: int) -> list[tuple[str, str, list[int]]]:
    """(name, dtype, shape) of the file's tensors; the sizes add up to about `gib` GiB."""
    row_bytes = COLS * 2
    tensors = [("final_norm.weight", "BF16", [COLS]),
               ("lm_head.weight", "BF16", [(largest_mib << 20) // row_bytes, COLS])]
    rest = int(gib * (1 << 30)) - (largest_mib << 20)
    rows = (tensor_mib << 20) // row_bytes
    for i in range(max(0, rest // (tensor_mib << 20))):
        tensors.append((f"layers.{i}.mlp.weight", "BF16", [rows, COLS]))
    return tensors


def header_bytes(tensors) -> tuple[bytes, list[int]]:
    off, h, sizes = 0, {"__metadata__": {"format": "pt", "generator": "bench_cli_bigfile.py"}}, []
    for name, dt, shape in tensors:
        n = int(np.prod(shape)) * 2
        h[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        sizes.append(n)
        off += n
    text = json.dumps(h, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return len(text).to_bytes(8, "little") + text, sizes


def generate(path: pathlib.Path, tensors) -> None:
    head, sizes = header_bytes(tensors)
    total = len(head) + sum(sizes)
    if path.exists() and path.stat().st_size == total:
        print(f"reusing {path} ({total / 2**30:.2f} GiB)", file=sys.stderr)
        return
    rng = np.random.default_rng(6)
    pool = (rng.standard_normal(POOL_BYTES // 2, dtype=np.float32) * 0.02)
    pool = (pool.view(np.uint32) >> 16).astype(np.uint16)  # f32 -> bf16 by truncation: finite
    pool = np.concatenate([pool, pool[: CHUNK // 2]]).tobytes()  # wrap-around reads
    t0 = time.time()
    tmp = path.with_suffix(".partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, head)
        mv = memoryview(pool)
        for i, n in enumerate(sizes):
            pos = (i * 7919 * 4096) % POOL_BYTES
            while n > 0:
                k = min(n, CHUNK)
                os.write(fd, mv[pos : pos + k])
                pos = (pos + k) % POOL_BYTES
                n -= k
            # Written pages leave the page cache as they are flushed, so the generator does not
            # fill the machine's memory with dirty pages.
            os.fsync(fd)
            print(f"\r  {path.name}: {i + 1}/{len(sizes)} tensors", end="", file=sys.stderr)
    finally:
        os.close(fd)
    tmp.rename(path)
    dt = time.time() - t0
    print(f"\rwrote {path} ({total / 2**30:.2f} GiB) in {dt:.0f} s ({total / dt / 1e6:.0f} MB/s)",
          file=sys.stderr)


def sample(pid: int, peaks: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            status = pathlib.Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return
        for key in ("VmRSS", "RssAnon", "RssFile"):
            m = re.search(rf"^{key}:\s+(\d+) kB", status, re.M)
            if m:
                peaks[key] = max(peaks.get(key, 0), int(m.group(1)) * 1024)
        stop.wait(0.2)


def quantize(lowbit: str, src: pathlib.Path, out: pathlib.Path, scheme: str, threads: int):
    cmd = ["/usr/bin/time", "-v", lowbit, "quantize", str(src), str(out), "-s", scheme, "-j",
           str(threads), "--force", "--report", "json"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # /usr/bin/time's child is lowbit: sample it.
    peaks: dict = {}
    stop = threading.Event()
    child = None
    for _ in range(100):
        try:
            kids = pathlib.Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
        except OSError:
            kids = []
        if kids:
            child = int(kids[0])
            break
        time.sleep(0.01)
    th = threading.Thread(target=sample, args=(child, peaks, stop)) if child else None
    if th:
        th.start()
    stdout, stderr = p.communicate()
    stop.set()
    if th:
        th.join()
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{stderr}")
    rep = json.loads(stdout)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1)) * 1024
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", stderr).group(1)
    secs = 0.0
    for part in wall.split(":"):
        secs = secs * 60 + float(part)
    return rep, rss, secs, peaks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, help="scratch folder (needs file + output space)")
    ap.add_argument("--gib", nargs="+", type=float, default=[30, 4])
    ap.add_argument("--largest-mib", type=int, default=1024)
    ap.add_argument("--tensor-mib", type=int, default=256)
    ap.add_argument("--scheme", default="q4_K")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lowbit",
                    default=str(REPO / os.environ.get("LOWBIT_BUILD_DIR", "build") / "lowbit"))
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    a = ap.parse_args()
    d = pathlib.Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    rows = []
    for gib in a.gib:
        tensors = layout(gib, a.largest_mib, a.tensor_mib)
        src = d / f"big-{gib:g}GiB.safetensors"
        out = d / f"big-{gib:g}GiB-{a.scheme.replace(':', '_')}.safetensors"
        generate(src, tensors)
        try:
            rep, rss, secs, peaks = quantize(a.lowbit, src, out, a.scheme, a.threads)
            s = rep["summary"]
            largest = max(t["bytes_before"] for t in rep["tensors"])
            big = max((t for t in rep["tensors"]), key=lambda t: t["bytes_before"])
            rows.append(
                f"| {src.stat().st_size / 2**30:.2f} GiB ({len(tensors)} tensors) "
                f"| {largest / 2**20:.0f} MiB ({big['bytes_after'] / 2**20:.0f} MiB quantized) "
                f"| **{rss / 2**20:.0f} MiB** | {peaks.get('RssAnon', 0) / 2**20:.0f} "
                f"| {peaks.get('RssFile', 0) / 2**20:.0f} | {secs:.0f} "
                f"| {src.stat().st_size / secs / 1e6:.0f} | {s['file_bytes_after'] / 2**30:.2f} GiB "
                f"| {s['nmse']:.2e} |")
            print(rows[-1], flush=True)
        finally:
            out.unlink(missing_ok=True)
            if not a.keep:
                src.unlink(missing_ok=True)
    print(f"\nRAM {ram / 2**30:.1f} GiB; scheme {a.scheme}; {a.threads} threads; {a.lowbit}")
    print("| input file | largest tensor | peak RSS | peak RssAnon MiB | peak RssFile MiB "
          "| wall s | input MB/s | output | NMSE |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
