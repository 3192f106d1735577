#!/usr/bin/env python3
"""Peer for bench_fusion_cuda: the same element-wise chains in PyTorch, eager and
torch.compile, on the same GPU in the same run.

  chain8: y = clamp(silu(a * 1.25 + b) * b - a * 0.5, -8, 8)   (bf16, 2^28 elements)
  gated:  y = silu(a) * b
  gated + fp8: silu(a) * b quantized per row of 8192 to fp8 e4m3 (scale = amax / 448)
  residual + fp8: h = a + b kept (bf16) and silu(h) quantized as above

Rows (JSON lines: name, n, ms, gbps), the first one the device-to-device copy ceiling;
bandwidth counts the fused pass's bytes (two inputs read, one output written; for the
quantized rows the codes and row scales) for every row, so that rows compare as speeds. Run by scripts/gpu-check after bench_fusion_cuda.
"""
import json
import sys
import time

import torch
import torch.nn.functional as F

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


def chain8(a, b):
    return torch.clamp(F.silu(a * 1.25 + b) * b - a * 0.5, -8.0, 8.0)


def gated(a, b):
    return F.silu(a) * b


def gated_fp8(a, b):
    """silu(a) * b, then per-row fp8 e4m3 quantization with the scale computed over the
    row (lowbit's rule: scale = amax / 448, codes = fp8(y * (1 / scale)), saturating)."""
    y = F.silu(a) * b
    amax = y.abs().amax(dim=-1, keepdim=True).float()
    scale = amax / 448.0
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    q = (y.float() * inv).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return q, scale


def residual_fp8(a, b):
    """h = a + b kept (bf16), and silu(h) quantized per row to fp8 e4m3 as gated_fp8: a
    residual sum and the next matmul's activation codes, two outputs."""
    h = a + b
    y = F.silu(h)
    amax = y.abs().amax(dim=-1, keepdim=True).float()
    scale = amax / 448.0
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    q = (y.float() * inv).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return h, q, scale


def main():
    if not torch.cuda.is_available():
        print("SKIPPED: no CUDA device (bench_fusion_torch)")
        return
    dev = torch.device("cuda")
    src = torch.empty(1 << 29, dtype=torch.uint8, device=dev).random_()
    dst = torch.empty_like(src)
    copy_ms = bench(lambda: dst.copy_(src))
    copy_gbs = 2 * src.numel() / copy_ms / 1e6
    del src, dst
    rows = [("copy (d2d, 512 MiB)", 1 << 29, copy_ms, copy_gbs)]

    a = torch.randn(N, device=dev, dtype=torch.float32).to(torch.bfloat16)
    b = torch.randn(N, device=dev, dtype=torch.float32).to(torch.bfloat16)
    nbytes = 3 * 2 * N  # two bf16 inputs, one bf16 output
    notes = []
    for name, fn in (("chain8", chain8), ("silu(a) * b", gated)):
        ms = bench(lambda: fn(a, b))
        rows.append((f"torch eager {name}", N, ms, nbytes / ms / 1e6))
        compiled = torch.compile(fn)
        t0 = time.perf_counter()
        compiled(a, b)
        torch.cuda.synchronize()
        notes.append(f"torch.compile {name}: first call (compile) {time.perf_counter() - t0:.1f} s")
        ms = bench(lambda: compiled(a, b))
        rows.append((f"torch.compile {name}", N, ms, nbytes / ms / 1e6))

    # silu(a) * b with a per-token fp8 quantization, rows of 8192 (bytes: two bf16 inputs,
    # fp8 codes, f32 row scales).
    a2, b2 = a.view(-1, 8192), b.view(-1, 8192)
    qbytes = 2 * 2 * N + N + 4 * (N // 8192)
    # The same with h = a + b kept beside the codes (bytes: h's bf16 written too).
    hbytes = qbytes + 2 * N
    for name, fn, nb in (("silu(a) * b -> fp8e4m3:token", gated_fp8, qbytes),
                         ("h = a + b, silu(h) -> fp8e4m3:token", residual_fp8, hbytes)):
        compiled = torch.compile(fn)
        for label, f in ((f"torch eager {name}", fn), (f"torch.compile {name}", compiled)):
            t0 = time.perf_counter()
            f(a2, b2)
            torch.cuda.synchronize()
            if label.startswith("torch.compile"):
                notes.append(f"{label}: first call (compile) {time.perf_counter() - t0:.1f} s")
            ms = bench(lambda: f(a2, b2))
            rows.append((label, N, ms, nb / ms / 1e6))

    print(f"\nPyTorch {torch.__version__} element-wise chains on {torch.cuda.get_device_name()}, "
          f"{N} bf16 elements")
    print("| what | elements | ms | GB/s | % of copy |")
    print("| --- | --- | --- | --- | --- |")
    for name, n, ms, gbs in rows:
        print(f"| {name} | {n} | {ms:.4f} | {gbs:.0f} | {100 * gbs / copy_gbs:.1f}% |")
    for note in notes:
        print(note)
    if len(sys.argv) > 2 and sys.argv[1] == "--json":
        with open(sys.argv[2], "w") as f:
            for name, n, ms, gbs in rows:
                f.write(json.dumps({"name": name, "n": n, "ms": ms, "gbps": gbs}) + "\n")


if __name__ == "__main__":
    main()
