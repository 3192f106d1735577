#!/usr/bin/env python3
"""Peer for bench_matmul_cuda: PyTorch's linear layers on the same GPU, in the same device call.

y[M, N] = x[M, K] @ W[N, K]^T with bf16 x and y, N x K = 8192x8192, 14336x4096, 4096x14336 and
M = 1, 16, 64, 256, 2048:

  F.linear        torch.nn.functional.linear(x, W) with bf16 W (cuBLAS)
  tinygemm        torch.ops.aten._weight_int4pack_mm(x, W4, 128, scales_and_zeros) (int4, g128)
  _int_mm         torch._int_mm(xq, Wq.t()) on int8 codes (M > 16 only), "+scale" adds the
                  per-token x per-channel scaling in torch, "dyn" also quantizes x per token
  _scaled_mm      torch._scaled_mm on fp8 e4m3 codes, row-wise (per-token x per-channel scales)
                  and tensor-wise; "dyn" also quantizes x in torch

Timing as bench_matmul_cuda: a 256 MiB buffer is written before each repetition (every call
reads its weights from HBM, as triton.testing.do_bench does), CUDA events around the call
alone, median. JSON lines (name, n, k, m, ms, gbps), the copy ceiling first; rows marked "key"
go to scripts/gpu-check's summary. When bench_matmul_cuda's JSON lies beside the output
(bench_matmul_cuda.jsonl, as gpu-check writes it) or is named with --lowbit, the joined table
(lowbit vs F.linear, tinygemm, _int_mm, _scaled_mm) is printed last.

Usage: bench_matmul_torch.py [--json PATH] [--lowbit PATH] [--quick]
"""
import json
import os
import sys

import torch
import torch.nn.functional as F

SHAPES = [(8192, 8192), (14336, 4096), (4096, 14336)]
MS = [1, 16, 64, 256, 2048]
REPS = 15

_flush = None


def bench(fn, reps=REPS):
    global _flush
    if _flush is None:
        _flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for s, e in ev:
        _flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    t = sorted(s.elapsed_time(e) for s, e in ev)
    return t[len(t) // 2] if reps % 2 else 0.5 * (t[reps // 2 - 1] + t[reps // 2])


def quant_int8_token(x):
    s = x.abs().amax(-1, keepdim=True).float().clamp_min(1e-12) / 127
    return torch.round(x.float() / s).clamp(-127, 127).to(torch.int8), s


def quant_fp8_token(x):
    s = x.abs().amax(-1, keepdim=True).float().clamp_min(1e-12) / 448
    return (x.float() / s).clamp(-448, 448).to(torch.float8_e4m3fn), s


def quant_fp8_tensor(x):
    s = x.abs().amax().float().clamp_min(1e-12) / 448
    return (x.float() / s).clamp(-448, 448).to(torch.float8_e4m3fn), s


def run(quick):
    dev = torch.device("cuda")
    rows = []
    src = torch.empty(1 << 30, dtype=torch.uint8, device=dev).random_()
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    copy_gbs = 2 * src.numel() / ms / 1e6
    rows.append({"name": "copy (d2d, 1 GiB)", "n": 0, "k": 0, "m": 0, "ms": ms, "gbps": copy_gbs})
    del src, dst
    ms_list = [1, 16, 256] if quick else MS
    notes = []
    for n, k in SHAPES:
        w = (torch.randn(n, k, device=dev) * 0.02).to(torch.bfloat16)
        xs = torch.randn(max(ms_list), k, device=dev).to(torch.bfloat16)
        # tinygemm: random 4-bit codes, bf16 scales and zeros per 128.
        codes = torch.randint(0, 16, (n, k), dtype=torch.int32, device=dev)
        w_u8 = ((codes[:, ::2] << 4) | codes[:, 1::2]).to(torch.uint8)
        try:
            w4 = torch.ops.aten._convert_weight_to_int4pack(w_u8, 8)
            sz = (torch.rand(k // 128, n, 2, device=dev) * 0.01).to(torch.bfloat16)
        except Exception as e:  # noqa: BLE001
            w4 = None
            notes.append(f"tinygemm unavailable: {type(e).__name__}: {str(e)[:160]}")
        wq8 = torch.randint(-127, 128, (n, k), dtype=torch.int8, device=dev)
        sw8 = torch.rand(1, n, device=dev) * 1e-3
        wf8 = (torch.randn(n, k, device=dev) * 0.02 / (0.02 / 448 * 4)).clamp(-448, 448).to(torch.float8_e4m3fn)
        swf = torch.rand(1, n, device=dev) * 1e-3
        swt = torch.tensor(1e-3, device=dev)
        for m in ms_list:
            x = xs[:m].contiguous()
            io = m * k * 2 + m * n * 2

            def add(name, fn, wbytes, key=False):
                try:
                    t = bench(fn)
                except Exception as e:  # noqa: BLE001
                    notes.append(f"{name} {n}x{k} M={m}: {type(e).__name__}: {str(e)[:160]}")
                    return
                rows.append({"name": name, "n": n, "k": k, "m": m, "ms": t,
                             "gbps": (wbytes + io) / t / 1e6, "key": key})

            add("F.linear bf16", lambda: F.linear(x, w), n * k * 2, key=(n, k) == (8192, 8192) and m in (1, 16, 2048))
            if w4 is not None:
                add("tinygemm int4 g128", lambda: torch.ops.aten._weight_int4pack_mm(x, w4, 128, sz),
                    n * k // 2 + (k // 128) * n * 4, key=(n, k) == (8192, 8192) and m in (1, 16))
            if m > 16:
                xq, sx = quant_int8_token(x)
                add("_int_mm int8", lambda: torch._int_mm(xq, wq8.t()), n * k)
                add("_int_mm int8 +scale",
                    lambda: (torch._int_mm(xq, wq8.t()).float() * sx * sw8).to(torch.bfloat16), n * k)

                def int8_dyn():
                    q, s = quant_int8_token(x)
                    return (torch._int_mm(q, wq8.t()).float() * s * sw8).to(torch.bfloat16)

                add("_int_mm int8 dyn", int8_dyn, n * k, key=(n, k) == (8192, 8192) and m == 2048)
            xf8, sxf = quant_fp8_token(x)
            add("_scaled_mm fp8 rowwise",
                lambda: torch._scaled_mm(xf8, wf8.t(), scale_a=sxf, scale_b=swf, out_dtype=torch.bfloat16),
                n * k, key=(n, k) == (8192, 8192) and m in (1, 2048))

            def fp8_dyn():
                q, s = quant_fp8_token(x)
                return torch._scaled_mm(q, wf8.t(), scale_a=s, scale_b=swf, out_dtype=torch.bfloat16)

            add("_scaled_mm fp8 rowwise dyn", fp8_dyn, n * k)
            xt8, sxt = quant_fp8_tensor(x)
            add("_scaled_mm fp8 tensorwise",
                lambda: torch._scaled_mm(xt8, wf8.t(), scale_a=sxt, scale_b=swt, out_dtype=torch.bfloat16),
                n * k)
        del w, xs, codes, w_u8, wq8, wf8
        torch.cuda.empty_cache()
    return rows, notes, copy_gbs


def joined(rows, lowbit_path):
    """Markdown tables of lowbit beside the peers, ratios to F.linear of this run."""
    lb = [json.loads(l) for l in open(lowbit_path) if l.strip()]
    peer = {(r["name"], r["n"], r["k"], r["m"]): r["ms"] for r in rows}
    mine = {(r["scheme"], r["n"], r["k"], r["m"]): r for r in lb if r.get("group") in ("weight-only", "w8a8")}
    copy = next((r["gbps"] for r in lb if r.get("group") == "copy"), 0)
    out = []
    wo = ["int4:block32", "int4:block128", "nvfp4", "mxfp4", "int8:channel", "fp8e4m3:channel"]
    out.append("\n### Weight-only: time in ms (x F.linear bf16 of this run)\n")
    out.append("| N x K | M | F.linear bf16 | tinygemm int4 g128 | " + " | ".join(wo) + " |")
    out.append("| --- | --- | --- | --- | " + " | ".join("---" for _ in wo) + " |")
    ms_all = sorted({r["m"] for r in lb if r.get("group") == "weight-only"})
    for n, k in SHAPES:
        for m in ms_all:
            base = peer.get(("F.linear bf16", n, k, m))
            if base is None:
                continue
            cells = [f"{base:.4f}"]
            tg = peer.get(("tinygemm int4 g128", n, k, m))
            cells.append(f"{tg:.4f} ({base / tg:.2f}x)" if tg else "-")
            for s in wo:
                r = mine.get((s, n, k, m))
                cells.append(f"{r['ms']:.4f} ({base / r['ms']:.2f}x)" if r and r["ms"] > 0 else "-")
            out.append(f"| {n}x{k} | {m} | " + " | ".join(cells) + " |")
    alt = {(r["scheme"], r["n"], r["k"], r["m"]): r for r in lb if r.get("group") == "weight-only"}
    big = [r for r in lb if r.get("group") == "weight-only" and r["m"] >= 64 and r["scheme"] in wo]
    if big:
        out.append("\n### Weight-only, M >= 64: the selected kernel beside the other M > 32 kernels "
                   "(ms, x F.linear bf16 of this run)\n")
        out.append("| scheme | N x K | M | F.linear bf16 | selected | kernel | medium tc | wgmma tc | "
                   "dequant+GEMM |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in big:
            base = peer.get(("F.linear bf16", r["n"], r["k"], r["m"]))

            def cell(x):
                if not x or x["ms"] <= 0:
                    return "-"
                return f"{x['ms']:.4f} ({base / x['ms']:.2f}x)" if base else f"{x['ms']:.4f}"

            key = (r["n"], r["k"], r["m"])
            med = alt.get((r["scheme"] + " (medium tc)",) + key)
            wgm = alt.get((r["scheme"] + " (wgmma tc)",) + key)
            deq = alt.get((r["scheme"] + " (dequant+GEMM)",) + key)
            if r["kernel"] == "matmul_cuda_medium_tc":
                med = r
            if r["kernel"] == "matmul_cuda_wgmma_tc":
                wgm = r
            if r["kernel"] == "matmul_cuda_dequant_tc_lt":
                deq = r
            out.append(f"| {r['scheme']} | {r['n']}x{r['k']} | {r['m']} | "
                       f"{base:.4f} | {cell(r)} | {r['kernel']} | {cell(med)} | {cell(wgm)} | {cell(deq)} |"
                       if base else f"| {r['scheme']} | {r['n']}x{r['k']} | {r['m']} | - | {cell(r)} | "
                       f"{r['kernel']} | {cell(med)} | {cell(wgm)} | {cell(deq)} |")
    gemv = [r for r in lb if r.get("group") == "weight-only" and r["m"] in (1, 16)]
    # bench_matmul_cuda's read-floor rows: a kernel that only reads the weight bytes.
    floor = {(r["scheme"], r["n"], r["k"]): r["ms"] for r in lb if r.get("group") == "read-floor"}
    if gemv and copy:
        out.append("\n### GEMV rows: weight bytes / time as a share of the copy ceiling "
                   f"({copy:.0f} GB/s, same run), and the read floor (a kernel that only reads "
                   "the weight bytes, same flush: the most any kernel could give)\n")
        out.append("| scheme | N x K | M | ms | x F.linear | weight GB/s | % of copy | read floor ms "
                   "(x F.linear) | floor / ms | kernel |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in gemv:
            base = peer.get(("F.linear bf16", r["n"], r["k"], r["m"]))
            wg = r["weight_bytes"] / r["ms"] / 1e6 if r["ms"] > 0 else 0
            ratio = f"{base / r['ms']:.2f}x" if base and r["ms"] > 0 else "-"
            f = floor.get((r["scheme"], r["n"], r["k"]))
            fc = (f"{f:.4f} ({base / f:.2f}x)" if base else f"{f:.4f}") if f else "-"
            share = f"{100 * f / r['ms']:.0f}%" if f and r["ms"] > 0 else "-"
            out.append(f"| {r['scheme']} | {r['n']}x{r['k']} | {r['m']} | {r['ms']:.4f} | {ratio} | "
                       f"{wg:.0f} | {100 * wg / copy:.1f}% | {fc} | {share} | {r['kernel']} |")
    out.append("\n### W8A8: time in ms (x F.linear bf16; peers of this run)\n")
    out.append("| N x K | M | F.linear | _int_mm +scale | _int_mm dyn | lowbit int8 pre | lowbit int8 dyn | "
               "_scaled_mm rowwise | _scaled_mm rowwise dyn | lowbit fp8 row pre | lowbit fp8 row dyn | "
               "_scaled_mm tensor | lowbit fp8 tensor pre |")
    out.append("| --- " * 13 + "|")
    for n, k in SHAPES:
        for m in sorted({r["m"] for r in lb if r.get("group") == "w8a8"}):
            base = peer.get(("F.linear bf16", n, k, m))
            if base is None:
                continue

            def p(name):
                t = peer.get((name, n, k, m))
                return f"{t:.4f} ({base / t:.2f}x)" if t else "-"

            def l(s):
                r = mine.get((s, n, k, m))
                return f"{r['ms']:.4f} ({base / r['ms']:.2f}x)" if r and r["ms"] > 0 else "-"

            out.append(f"| {n}x{k} | {m} | {base:.4f} | {p('_int_mm int8 +scale')} | {p('_int_mm int8 dyn')} | "
                       f"{l('int8:tokenxint8:channel pre')} | {l('int8:tokenxint8:channel dyn')} | "
                       f"{p('_scaled_mm fp8 rowwise')} | {p('_scaled_mm fp8 rowwise dyn')} | "
                       f"{l('fp8e4m3:tokenxfp8e4m3:channel pre')} | {l('fp8e4m3:tokenxfp8e4m3:channel dyn')} | "
                       f"{p('_scaled_mm fp8 tensorwise')} | {l('fp8e4m3:tensorxfp8e4m3:tensor pre')} |")
    return "\n".join(out)


def main():
    args = sys.argv[1:]
    json_path = args[args.index("--json") + 1] if "--json" in args else None
    lowbit_path = args[args.index("--lowbit") + 1] if "--lowbit" in args else None
    if lowbit_path is None and json_path:
        cand = os.path.join(os.path.dirname(os.path.abspath(json_path)), "bench_matmul_cuda.jsonl")
        lowbit_path = cand if os.path.exists(cand) else None
    if not torch.cuda.is_available():
        print("SKIPPED: no CUDA device (bench_matmul_torch)")
        return
    rows, notes, copy_gbs = run("--quick" in args)
    print(f"\nPyTorch {torch.__version__} linear layers on {torch.cuda.get_device_name()}, bf16 x, "
          f"median of {REPS} after an L2 flush; copy ceiling {copy_gbs:.0f} GB/s")
    print("| what | N x K | M | ms | GB/s (weights + x + y) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows[1:]:
        print(f"| {r['name']} | {r['n']}x{r['k']} | {r['m']} | {r['ms']:.4f} | {r['gbps']:.0f} |")
    for note in notes:
        print(note)
    if json_path:
        with open(json_path, "w") as f:
            for r in rows:
                name = r["name"] if r["m"] == 0 else f"{r['name']} {r['n']}x{r['k']} M={r['m']}"
                f.write(json.dumps({**r, "name": name, "peer": r["name"]}) + "\n")
    if lowbit_path:
        print(joined(rows, lowbit_path))


if __name__ == "__main__":
    main()
