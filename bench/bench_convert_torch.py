#!/usr/bin/env python3
"""Peer for bench_convert_cuda: the same casts in PyTorch on the same GPU, same run.

Prints a markdown table (pair, GB/s, % of copy) with the device-to-device copy ceiling
measured here too. Run by scripts/gpu-check after bench_convert_cuda.
"""
import json
import sys

import torch

N = 1 << 28


def bench(fn, reps=30):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    return times[len(times) // 2]


def main():
    if not torch.cuda.is_available():
        print("SKIPPED: no CUDA device (bench_convert_torch)")
        return
    dev = torch.device("cuda")
    src = torch.empty(1 << 29, dtype=torch.uint8, device=dev).random_()
    dst = torch.empty_like(src)
    copy_ms = bench(lambda: dst.copy_(src))
    copy_gbs = 2 * src.numel() / copy_ms / 1e6
    del src, dst
    rows = [("copy (d2d, 512 MiB)", 1 << 29, copy_ms, copy_gbs)]
    pairs = [
        (torch.float32, torch.bfloat16),
        (torch.bfloat16, torch.float8_e4m3fn),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.bfloat16),
        (torch.float32, torch.float8_e4m3fn),
    ]
    for s, d in pairs:
        x = torch.randn(N, device=dev, dtype=torch.float32).to(s)
        y = torch.empty(N, device=dev, dtype=d)
        ms = bench(lambda: y.copy_(x))
        nbytes = N * (x.element_size() + y.element_size())
        rows.append((f"torch {str(s)[6:]}->{str(d)[6:]}", N, ms, nbytes / ms / 1e6))
        del x, y
    print(f"\nPyTorch {torch.__version__} casts on {torch.cuda.get_device_name()} (copy_ into a preallocated tensor)")
    print("| pair | elements | ms | GB/s | % of copy |")
    print("| --- | --- | --- | --- | --- |")
    for name, n, ms, gbs in rows:
        print(f"| {name} | {n} | {ms:.4f} | {gbs:.0f} | {100 * gbs / copy_gbs:.1f}% |")
    if len(sys.argv) > 2 and sys.argv[1] == "--json":
        with open(sys.argv[2], "w") as f:
            for name, n, ms, gbs in rows:
                f.write(json.dumps({"name": name, "n": n, "ms": ms, "gbps": gbs}) + "\n")


if __name__ == "__main__":
    main()
