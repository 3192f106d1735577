#!/usr/bin/env python3
"""Peer for bench_quantize_cuda: per-token int8 and fp8 quantization in PyTorch, same GPU, same run.

The same bf16 [16384, 8192] tensor of normal values, quantized per token (one f32 scale per
row) the way a PyTorch user writes it:

    int8: s = x.abs().amax(-1, keepdim=True) / 127;  q = round(x / s).clamp(-127, 127).to(int8)
    fp8:  s = x.abs().amax(-1, keepdim=True) / 448;  q = (x / s).clamp(-448, 448).to(float8_e4m3fn)

in eager mode and with torch.compile. Bandwidth counts the bytes read and written once
(bf16 source, 1-byte codes, f32 scales), as bench_quantize_cuda does, and is compared with
the device-to-device copy measured here. Prints a markdown table; --json PATH writes JSON
lines (name, n, ms, gbps), the copy first. Run by scripts/gpu-check after bench_quantize_cuda.
"""
import json
import sys

import torch

ROWS, COLS = 16384, 8192


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


def int8_token(x):
    s = x.abs().amax(-1, keepdim=True).float().clamp_min(1e-12) / 127
    q = torch.round(x / s).clamp(-127, 127).to(torch.int8)
    return q, s


def fp8_token(x):
    s = x.abs().amax(-1, keepdim=True).float().clamp_min(1e-12) / 448
    q = (x / s).clamp(-448, 448).to(torch.float8_e4m3fn)
    return q, s


def main():
    if not torch.cuda.is_available():
        print("SKIPPED: no CUDA device (bench_quantize_torch)")
        return
    dev = torch.device("cuda")
    src = torch.empty(1 << 29, dtype=torch.uint8, device=dev).random_()
    dst = torch.empty_like(src)
    copy_ms = bench(lambda: dst.copy_(src))
    copy_gbs = 2 * src.numel() / copy_ms / 1e6
    del src, dst
    rows = [("copy (d2d, 512 MiB)", 1 << 29, copy_ms, copy_gbs)]

    x = torch.randn(ROWS, COLS, device=dev, dtype=torch.float32).to(torch.bfloat16)
    n = x.numel()
    nbytes = n * 2 + n * 1 + ROWS * 4  # bf16 in, 1-byte codes out, f32 scales out
    notes = []
    for label, fn in (("int8:token", int8_token), ("fp8e4m3:token", fp8_token)):
        ms = bench(lambda: fn(x))
        rows.append((f"torch eager bf16->{label}", n, ms, nbytes / ms / 1e6))
        try:
            compiled = torch.compile(fn)
            compiled(x)  # compile outside the timing
            ms = bench(lambda: compiled(x))
            rows.append((f"torch.compile bf16->{label}", n, ms, nbytes / ms / 1e6))
        except Exception as e:  # no Triton / no compiler on the machine: say so, keep going
            notes.append(f"torch.compile {label} unavailable: {type(e).__name__}: {str(e)[:200]}")
        torch.cuda.empty_cache()

    print(f"\nPyTorch {torch.__version__} per-token quantization of bf16[{ROWS}, {COLS}] on {torch.cuda.get_device_name()}")
    print("| what | elements | ms | GB/s | % of copy |")
    print("| --- | --- | --- | --- | --- |")
    for name, cnt, ms, gbs in rows:
        print(f"| {name} | {cnt} | {ms:.4f} | {gbs:.0f} | {100 * gbs / copy_gbs:.1f}% |")
    for note in notes:
        print(note)
    if len(sys.argv) > 2 and sys.argv[1] == "--json":
        with open(sys.argv[2], "w") as f:
            for name, cnt, ms, gbs in rows:
                f.write(json.dumps({"name": name, "n": cnt, "ms": ms, "gbps": gbs}) + "\n")


if __name__ == "__main__":
    main()
