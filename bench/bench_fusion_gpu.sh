#!/bin/bash
# The fusion JIT's GPU run (BENCHMARKS.md, "element-wise fusion JIT"): the fusion GPU tests,
# bench_fusion_cuda, then bench_fusion_torch.py, in one run. Binaries come from a build folder
# ($1, default build-gpu), or from a folder of prebuilt, carried binaries with their shared
# libraries in lib/ (test_fusion, test_fusion_quant, bench_fusion_cuda, bench_fusion_nvrtc
# built elsewhere and copied there). Logs and JSON lines go to $OUT. Generated kernels need
# no headers on disk (numeric.hpp is embedded in the library).
#   bench/bench_fusion_gpu.sh [BIN_DIR] [all|tests|bench]
set -u
R=$(cd "$(dirname "$0")/.." && pwd)
B=${1:-$R/build-gpu}
M=${2:-all}
find_bin() { for c in "$B/$1" "$B/tests/$1" "$B/bench/$1"; do [ -x "$c" ] && { echo "$c"; return; }; done; }
NV=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda-13*/lib64; do
  [ -e "$d/libnvrtc.so.13" ] && { NV=$d; break; }
done
export LD_LIBRARY_PATH=$B/lib:$NV:${LD_LIBRARY_PATH:-}
LOG=${OUT:-/tmp}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
if [ "$M" = all ] || [ "$M" = tests ]; then
  timeout 150 "$(find_bin test_fusion)" --gtest_filter='FusionCuda*' > "$LOG/t1.log" 2>&1
  grep -vE "^\[ +(RUN|OK) +\]" "$LOG/t1.log" | head -40 | cut -c1-400
  timeout 100 "$(find_bin test_fusion_quant)" --gtest_filter='FusionQuantCuda*' > "$LOG/t2.log" 2>&1
  grep -vE "^\[ +(RUN|OK) +\]" "$LOG/t2.log" | head -30 | cut -c1-400
fi
if [ "$M" = all ] || [ "$M" = bench ]; then
  # NVRTC's compile time of the benchmark's kernels on this machine's CPU (no GPU needed).
  [ -n "$(find_bin bench_fusion_nvrtc)" ] && timeout 60 "$(find_bin bench_fusion_nvrtc)" --reps 5 2>&1 | tail -8
  timeout 120 "$(find_bin bench_fusion_cuda)" --json "$LOG/bench_fusion_cuda.jsonl" 2>&1 | tail -45
  timeout 200 python3 "$R/bench/bench_fusion_torch.py" --json "$LOG/bench_fusion_torch.jsonl" 2>&1 | tail -25
fi
