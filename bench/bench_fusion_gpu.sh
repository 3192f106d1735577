#!/bin/bash
# The fusion JIT's GPU run (BENCHMARKS.md, "element-wise fusion JIT"): the fusion GPU tests,
# bench_fusion_cuda, then bench_fusion_torch.py, in one run. Binaries come from a build folder
# ($1, default build-gpu), or from a folder of prebuilt, carried binaries with their shared
# libraries in lib/ (how the table was made: test_fusion, test_fusion_quant,
# bench_fusion_cuda built elsewhere and copied there). Logs and JSON lines go to $OUT.
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
export LOWBIT_INCLUDE_DIR=$R/include  # generated code includes lowbit/numeric.hpp from here
LOG=${OUT:-/tmp}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
if [ "$M" = all ] || [ "$M" = tests ]; then
  timeout 150 "$(find_bin test_fusion)" --gtest_filter='FusionCuda*' > "$LOG/t1.log" 2>&1
  grep -vE "^\[ +(RUN|OK) +\]" "$LOG/t1.log" | head -40 | cut -c1-400
  timeout 100 "$(find_bin test_fusion_quant)" --gtest_filter='FusionQuantCuda*' > "$LOG/t2.log" 2>&1
  grep -vE "^\[ +(RUN|OK) +\]" "$LOG/t2.log" | head -30 | cut -c1-400
fi
if [ "$M" = all ] || [ "$M" = bench ]; then
  timeout 90 "$(find_bin bench_fusion_cuda)" --json "$LOG/bench_fusion_cuda.jsonl" 2>&1 | tail -40
  timeout 200 python3 "$R/bench/bench_fusion_torch.py" --json "$LOG/bench_fusion_torch.jsonl" 2>&1 | tail -25
fi
