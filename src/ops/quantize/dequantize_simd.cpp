// The CPU SIMD dequantize kernel: Highway, dispatched at run time (once per call) to the
// best target the CPU supports (AVX3, AVX2, SSE4), OpenMP across chunks / rows. Every
// non-GGUF scheme and GGUF Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K and Q6_K, to f32, f16 or
// bf16. Bit-identical to dequantize_reference (tests/cpp/test_quantize_backends.cpp).
//
// Each value is the reference's f32 expression in its order (docs/formats.md,
// docs/formats/gguf.md): float(q - zero) * scale; fp8(code) * scale; (e2m1 * block scale)
// * global; elem * 2^e; GGUF: ggml's dequantize_row_* (d * q, q * d + m, (d * sc) * q,
// d1 * q - m1), with no FMA contraction (pragma below). Narrow codes widen exactly
// (integer-only decoders of cpu/convert_simd-inl.h), and f16 / bf16 destinations round
// once with numeric.hpp's rule, vectorised. Large f32 outputs go out with streaming stores.

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#ifndef LOWBIT_OPS_DEQUANTIZE_SIMD_SHARED_
#define LOWBIT_OPS_DEQUANTIZE_SIMD_SHARED_

#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SSSE3 | HWY_AVX3_DL)
#endif

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "cpu/convert_simd.hpp"
#include "cpu/quant_simd.hpp"
#include "formats/gguf_block_codecs.hpp"
#include "lowbit/gguf_blocks.hpp"
#include "ops/quantize/quantize_kernels.hpp"

namespace lowbit::quant_simd {

/// The code kinds dequantize distinguishes.
enum class Code : uint8_t { i8, u8, i4, u4, e4m3, e5m2, nvfp4, mxfp4, mx8e4m3, mx8e5m2 };

using DeqFn = void (*)(const DCall&, int64_t, int64_t);

}  // namespace lowbit::quant_simd

#endif  // LOWBIT_OPS_DEQUANTIZE_SIMD_SHARED_

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/quantize/dequantize_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// foreach_target must come first.
#include <hwy/highway.h>

#include "cpu/quant_simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace quant_simd {

using lowbit::quant_simd::Code;
using lowbit::quant_simd::DCall;
using lowbit::quant_simd::DeqFn;

#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

constexpr int64_t kTmp = 4096;

template <Code C>
constexpr bool kPacked = C == Code::i4 || C == Code::u4 || C == Code::nvfp4 || C == Code::mxfp4;

/// N values from N code bytes (4-bit codes: one byte each, already unpacked). `s` is the
/// scale (nvfp4: the block scale's value), `z` the zero point, `g` nvfp4's global scale.
template <Code C>
HWY_INLINE VF Decode(const uint8_t* p, VF s, VI z, VF g) {
  const DF df;
  const DI di;
  const DU du;
  if constexpr (C == Code::i8) {
    const VI q = hn::PromoteTo(di, hn::LoadU(DI8(), reinterpret_cast<const int8_t*>(p)));
    return hn::Mul(hn::ConvertTo(df, hn::Sub(q, z)), s);
  } else if constexpr (C == Code::u8 || C == Code::u4) {
    const VI q = hn::BitCast(di, hn::PromoteTo(du, hn::LoadU(DU8(), p)));
    return hn::Mul(hn::ConvertTo(df, hn::Sub(q, z)), s);
  } else if constexpr (C == Code::i4) {
    const VI u = hn::BitCast(di, hn::PromoteTo(du, hn::LoadU(DU8(), p)));
    const VI q = hn::Sub(hn::Xor(u, hn::Set(di, 8)), hn::Set(di, 8));  // sign-extend
    return hn::Mul(hn::ConvertTo(df, hn::Sub(q, z)), s);
  } else {
    const VU c = hn::PromoteTo(du, hn::LoadU(DU8(), p));
    VU bits;
    if constexpr (C == Code::e4m3 || C == Code::mx8e4m3) {
      bits = simd_convert::DecodeMiniFloat<nd::kF8E4M3FN>(du, c);
    } else if constexpr (C == Code::e5m2 || C == Code::mx8e5m2) {
      bits = simd_convert::DecodeMiniFloat<nd::kF8E5M2>(du, c);
    } else {
      bits = simd_convert::DecodeMiniFloat<nd::kF4E2M1>(du, c);
    }
    const VF e = hn::BitCast(df, bits);
    if constexpr (C == Code::nvfp4) return hn::Mul(hn::Mul(e, s), g);
    return hn::Mul(e, s);
  }
}

/// Values of `len` elements from e whose codes are `p` (bytes), with uniform parameters.
template <Code C, Dtype D>
HWY_INLINE void DecodeRun(const DCall& c, const uint8_t* p, int64_t e, int64_t len, VF s, VI z,
                          VF g) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(DF()));
  int64_t i = 0;
  bool stream = false;
  if constexpr (D == Dtype::f32) {
    stream = c.stream &&
             reinterpret_cast<uintptr_t>(static_cast<float*>(c.dst) + e) % (N * sizeof(float)) == 0;
  }
  for (; i + N <= len; i += N) StoreDst<D>(Decode<C>(p + i, s, z, g), c.dst, e + i, stream);
  if (i < len) {
    HWY_ALIGN uint8_t buf[kMaxLanes] = {};
    std::memcpy(buf, p + i, static_cast<size_t>(len - i));
    StoreDstPartial<D>(Decode<C>(buf, s, z, g), c.dst, e + i, len - i);
  }
}

/// Per-column parameters (columns mode: integer and fp8 schemes).
template <Code C, Dtype D>
HWY_INLINE void DecodeCols(const DCall& c, const uint8_t* p, int64_t e, int64_t len, int64_t col) {
  const DF df;
  const DI di;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const VF g = hn::Zero(df);
  int64_t i = 0;
  for (; i + N <= len; i += N) {
    const VF s = hn::LoadU(df, c.col_scale + col + i);
    const VI z = hn::LoadU(di, c.col_zero + col + i);
    StoreDst<D>(Decode<C>(p + i, s, z, g), c.dst, e + i, false);
  }
  if (i < len) {
    HWY_ALIGN uint8_t buf[kMaxLanes] = {};
    HWY_ALIGN float sb[kMaxLanes] = {};
    HWY_ALIGN int32_t zb[kMaxLanes] = {};
    const size_t m = static_cast<size_t>(len - i);
    std::memcpy(buf, p + i, m);
    std::memcpy(sb, c.col_scale + col + i, m * sizeof(float));
    std::memcpy(zb, c.col_zero + col + i, m * sizeof(int32_t));
    StoreDstPartial<D>(Decode<C>(buf, hn::Load(df, sb), hn::Load(di, zb), g), c.dst, e + i,
                       len - i);
  }
}

/// The scale values of groups g0 .. g0 + ng - 1 as f32 (nvfp4: the e4m3 block scale;
/// MX: 2^e; integer and fp8: the stored scale), decoded exactly, N at a time.
template <Code C>
HWY_INLINE void DecodeScales(const DCall& c, int64_t g0, int64_t ng, float* out) {
  const DF df;
  const DU du;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  for (int64_t i = 0; i < ng; i += N) {
    const int64_t m = std::min(N, ng - i);
    VF v;
    if constexpr (C == Code::nvfp4 || C == Code::mxfp4 || C == Code::mx8e4m3 ||
                  C == Code::mx8e5m2) {
      HWY_ALIGN uint8_t buf[kMaxLanes] = {};
      std::memcpy(buf, static_cast<const uint8_t*>(c.scale) + g0 + i, static_cast<size_t>(m));
      const VU code = hn::PromoteTo(du, hn::Load(DU8(), buf));
      if constexpr (C == Code::nvfp4) {
        v = hn::BitCast(df, simd_convert::DecodeMiniFloat<nd::kF8E4M3FN>(du, code));
      } else {
        v = hn::BitCast(df, simd_convert::DecodeE8M0(du, code));
      }
    } else if (c.scale_dtype == Dtype::f32) {
      HWY_ALIGN float buf[kMaxLanes] = {};
      std::memcpy(buf, static_cast<const float*>(c.scale) + g0 + i, static_cast<size_t>(m) * 4);
      v = hn::Load(df, buf);
    } else {
      HWY_ALIGN uint16_t buf[kMaxLanes] = {};
      std::memcpy(buf, static_cast<const uint16_t*>(c.scale) + g0 + i, static_cast<size_t>(m) * 2);
      const VU w = hn::PromoteTo(du, hn::Load(DU16(), buf));
      v = c.scale_dtype == Dtype::bf16
              ? hn::BitCast(df, hn::ShiftLeft<16>(w))
              : hn::BitCast(df, simd_convert::DecodeMiniFloat<nd::kF16, true>(du, w));
    }
    hn::Store(v, df, out + i);
  }
}

/// Whole blocks [p0, p1) of a 1-D block scheme whose blocks divide the last axis (group
/// of element e = e / block); `bytes` holds the codes of p0.. one per byte.
template <Code C, Dtype D>
HWY_INLINE void DeqBlocks(const DCall& c, int64_t p0, int64_t p1, const uint8_t* bytes) {
  const DF df;
  const DI di;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const int64_t blk = c.L.gm.block;
  const int64_t g0 = p0 / blk, ng = (p1 - p0) / blk;
  HWY_ALIGN float s_l[kTmp / 16 + kMaxLanes];
  DecodeScales<C>(c, g0, ng, s_l);
  const VF g = hn::Set(df, c.global);
  const bool stream = D == Dtype::f32 && c.stream;  // blocks of >= 16 f32: whole vectors
  for (int64_t b = 0; b < ng; ++b) {
    const VF vs = hn::Set(df, s_l[b]);
    const VI vz = hn::Set(di, c.zero ? c.zero[g0 + b] : 0);
    const int64_t e = p0 + b * blk;
    for (int64_t i = 0; i < blk; i += N)
      StoreDst<D>(Decode<C>(bytes + b * blk + i, vs, vz, g), c.dst, e + i, stream);
  }
}

template <Code C, Dtype D>
void DeqChunk(const DCall& c, int64_t e0, int64_t e1) {
  const DF df;
  const DI di;
  const VF g = hn::Set(df, c.global);
  HWY_ALIGN uint8_t tmp[kTmp];
  // 1-D blocks that divide the last axis (nvfp4, MX, integer and fp8 blocks): blocks in
  // order, scales decoded per piece. Chunk and piece bounds are multiples of every block.
  const formats::GroupMap& m = c.L.gm;
  if (m.granularity == Granularity::block && m.k % m.block == 0 && m.block <= 256 &&
      m.block % static_cast<int64_t>(hn::Lanes(df)) == 0) {
    for (int64_t p0 = e0; p0 < e1; p0 += kTmp) {
      const int64_t p1 = std::min(e1, p0 + kTmp);
      if constexpr (kPacked<C>) {
        UnpackNibbles(c.codes, p0, p1 - p0, tmp);
        DeqBlocks<C, D>(c, p0, p1, tmp);
      } else {
        DeqBlocks<C, D>(c, p0, p1, c.codes + p0);
      }
    }
    if (c.stream) hwy::FlushStream();
    return;
  }
  // 4-bit codes: unpacked to bytes a piece of kTmp elements at a time.
  const int64_t piece = kPacked<C> ? kTmp : e1 - e0;
  for (int64_t p0 = e0; p0 < e1; p0 += piece) {
    const int64_t p1 = std::min(e1, p0 + piece);
    if constexpr (kPacked<C>) UnpackNibbles(c.codes, p0, p1 - p0, tmp);
    auto bytes = [&](int64_t e) { return kPacked<C> ? tmp + (e - p0) : c.codes + e; };
    if (c.L.columns) {
      ForEachRowPiece(c.L.period, p0, p1, [&](int64_t e, int64_t len, int64_t col) {
        DecodeCols<C, D>(c, bytes(e), e, len, col);
      });
      continue;
    }
    ForEachRun(c.L, p0, p1, [&](int64_t e, int64_t len, int64_t grp) {
      float s;
      int32_t z = 0;
      if constexpr (C == Code::nvfp4) {
        s = f8e4m3fn_to_f32(static_cast<const uint8_t*>(c.scale)[grp]);
      } else if constexpr (C == Code::mxfp4 || C == Code::mx8e4m3 || C == Code::mx8e5m2) {
        s = e8m0_to_f32(static_cast<const uint8_t*>(c.scale)[grp]);
      } else {
        s = convert_detail::load_f32(c.scale, c.scale_dtype, grp);
        if (c.zero) z = c.zero[grp];
      }
      DecodeRun<C, D>(c, bytes(e), e, len, hn::Set(df, s), hn::Set(di, z), g);
    });
  }
  if (c.stream) hwy::FlushStream();
}

// ---- GGUF ---------------------------------------------------------------------------------------

using gguf::GgmlType;
using gguf::detail::load_f16;
using gguf::detail::load_u32;

/// Stores N values at element e; f32 outputs stream when the call asks for it (rows of
/// whole cache lines; the kernel checks the alignment).
template <Dtype D>
HWY_INLINE void Out(const DCall& c, VF v, int64_t e) {
  StoreDst<D>(v, c.dst, e, D == Dtype::f32 && c.stream);
}

template <GgmlType T>
constexpr int64_t kBlockElems = T == GgmlType::q4_K || T == GgmlType::q6_K ? 256 : 32;

/// One block of type T at `y` into elements e .. e + block.
template <GgmlType T, Dtype D>
HWY_INLINE void GgufBlock(const DCall& c, const uint8_t* y, int64_t e) {
  const DF df;
  const DI di;
  const DU du;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  if constexpr (T == GgmlType::q8_0) {
    const VF d = hn::Set(df, load_f16(y));
    for (int64_t v = 0; v < 32; v += N) {
      const VI q = hn::PromoteTo(di, hn::LoadU(DI8(), reinterpret_cast<const int8_t*>(y + 2 + v)));
      Out<D>(c, hn::Mul(hn::ConvertTo(df, q), d), e + v);
    }
  } else if constexpr (T == GgmlType::q4_0 || T == GgmlType::q4_1) {
    const VF d = hn::Set(df, load_f16(y));
    const VF m = hn::Set(df, T == GgmlType::q4_1 ? load_f16(y + 2) : 0.0f);
    const uint8_t* qs = y + (T == GgmlType::q4_0 ? 2 : 4);
    for (int64_t v = 0; v < 16; v += N) {
      const VI b = hn::BitCast(di, hn::PromoteTo(du, hn::LoadU(DU8(), qs + v)));
      VI lo = hn::And(b, hn::Set(di, 0x0f));
      VI hi = hn::ShiftRight<4>(b);
      if constexpr (T == GgmlType::q4_0) {
        lo = hn::Sub(lo, hn::Set(di, 8));
        hi = hn::Sub(hi, hn::Set(di, 8));
        Out<D>(c, hn::Mul(hn::ConvertTo(df, lo), d), e + v);
        Out<D>(c, hn::Mul(hn::ConvertTo(df, hi), d), e + 16 + v);
      } else {
        Out<D>(c, hn::Add(hn::Mul(hn::ConvertTo(df, lo), d), m), e + v);
        Out<D>(c, hn::Add(hn::Mul(hn::ConvertTo(df, hi), d), m), e + 16 + v);
      }
    }
  } else if constexpr (T == GgmlType::q5_0 || T == GgmlType::q5_1) {
    constexpr bool k51 = T == GgmlType::q5_1;
    const VF d = hn::Set(df, load_f16(y));
    const VF m = hn::Set(df, k51 ? load_f16(y + 2) : 0.0f);
    const VU qh = hn::Set(du, load_u32(y + (k51 ? 4 : 2)));
    const uint8_t* qs = y + (k51 ? 8 : 6);
    const VU one = hn::Set(du, 1u);
    for (int64_t v = 0; v < 16; v += N) {
      const VU j = hn::Iota(du, static_cast<uint32_t>(v));
      const VU b = hn::PromoteTo(du, hn::LoadU(DU8(), qs + v));
      // Fifth bits: bit j of qh for element j, bit j + 16 for element j + 16.
      const VU h0 = hn::ShiftLeft<4>(hn::And(hn::Shr(qh, j), one));
      const VU h1 = hn::ShiftLeft<4>(hn::And(hn::Shr(qh, hn::Add(j, hn::Set(du, 16u))), one));
      VI q0 = hn::BitCast(di, hn::Or(hn::And(b, hn::Set(du, 0x0fu)), h0));
      VI q1 = hn::BitCast(di, hn::Or(hn::ShiftRight<4>(b), h1));
      if constexpr (k51) {
        Out<D>(c, hn::Add(hn::Mul(hn::ConvertTo(df, q0), d), m), e + v);
        Out<D>(c, hn::Add(hn::Mul(hn::ConvertTo(df, q1), d), m), e + 16 + v);
      } else {
        q0 = hn::Sub(q0, hn::Set(di, 16));
        q1 = hn::Sub(q1, hn::Set(di, 16));
        Out<D>(c, hn::Mul(hn::ConvertTo(df, q0), d), e + v);
        Out<D>(c, hn::Mul(hn::ConvertTo(df, q1), d), e + 16 + v);
      }
    }
  } else if constexpr (T == GgmlType::q4_K) {
    const float d = load_f16(y);
    const float dmin = load_f16(y + 2);
    const uint8_t* sc = y + 4;
    const uint8_t* q = y + 16;
    auto scale_min = [&](int j, float* dd, float* mm) {
      uint8_t s, mn;
      if (j < 4) {
        s = sc[j] & 63;
        mn = sc[j + 4] & 63;
      } else {
        s = static_cast<uint8_t>((sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4));
        mn = static_cast<uint8_t>((sc[j + 4] >> 4) | ((sc[j] >> 6) << 4));
      }
      *dd = d * static_cast<float>(s);
      *mm = dmin * static_cast<float>(mn);
    };
    for (int is = 0; is < 8; is += 2, q += 32, e += 64) {
      float d1, m1, d2, m2;
      scale_min(is, &d1, &m1);
      scale_min(is + 1, &d2, &m2);
      const VF vd1 = hn::Set(df, d1), vm1 = hn::Set(df, m1);
      const VF vd2 = hn::Set(df, d2), vm2 = hn::Set(df, m2);
      for (int64_t l = 0; l < 32; l += N) {
        const VI b = hn::BitCast(di, hn::PromoteTo(du, hn::LoadU(DU8(), q + l)));
        const VF lo = hn::ConvertTo(df, hn::And(b, hn::Set(di, 0x0f)));
        const VF hi = hn::ConvertTo(df, hn::ShiftRight<4>(b));
        Out<D>(c, hn::Sub(hn::Mul(vd1, lo), vm1), e + l);
        Out<D>(c, hn::Sub(hn::Mul(vd2, hi), vm2), e + 32 + l);
      }
    }
  } else {  // q6_K
    const uint8_t* ql = y;
    const uint8_t* qh = y + 128;
    const auto* sc = reinterpret_cast<const int8_t*>(y + 192);
    const float d = load_f16(y + 208);
    for (int n = 0; n < 256; n += 128, e += 128, ql += 64, qh += 32, sc += 8) {
      for (int64_t l = 0; l < 32; l += N) {
        const int is = static_cast<int>(l / 16);
        const VI a = hn::BitCast(di, hn::PromoteTo(du, hn::LoadU(DU8(), ql + l)));
        const VI b = hn::BitCast(di, hn::PromoteTo(du, hn::LoadU(DU8(), ql + l + 32)));
        const VI h = hn::BitCast(di, hn::PromoteTo(du, hn::LoadU(DU8(), qh + l)));
        const VI three = hn::Set(di, 3), low = hn::Set(di, 0x0f), off = hn::Set(di, 32);
        const VI q1 = hn::Sub(hn::Or(hn::And(a, low), hn::ShiftLeft<4>(hn::And(h, three))), off);
        const VI q2 = hn::Sub(
            hn::Or(hn::And(b, low), hn::ShiftLeft<4>(hn::And(hn::ShiftRight<2>(h), three))), off);
        const VI q3 = hn::Sub(
            hn::Or(hn::ShiftRight<4>(a), hn::ShiftLeft<4>(hn::And(hn::ShiftRight<4>(h), three))),
            off);
        const VI q4 = hn::Sub(
            hn::Or(hn::ShiftRight<4>(b), hn::ShiftLeft<4>(hn::And(hn::ShiftRight<6>(h), three))),
            off);
        // ggml: d * sc[is] * q, left to right.
        Out<D>(c, hn::Mul(hn::Set(df, d * static_cast<float>(sc[is + 0])), hn::ConvertTo(df, q1)),
               e + l);
        Out<D>(c, hn::Mul(hn::Set(df, d * static_cast<float>(sc[is + 2])), hn::ConvertTo(df, q2)),
               e + 32 + l);
        Out<D>(c, hn::Mul(hn::Set(df, d * static_cast<float>(sc[is + 4])), hn::ConvertTo(df, q3)),
               e + 64 + l);
        Out<D>(c, hn::Mul(hn::Set(df, d * static_cast<float>(sc[is + 6])), hn::ConvertTo(df, q4)),
               e + 96 + l);
      }
    }
  }
}

template <GgmlType T, Dtype D>
void GgufRows(const DCall& c, int64_t r0, int64_t r1) {
  constexpr int64_t kB = kBlockElems<T>;
  const int64_t nb = c.K / kB;
  const int64_t bb = c.row_bytes / std::max<int64_t>(1, nb);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* y = c.codes + r * c.row_bytes;
    for (int64_t b = 0; b < nb; ++b, y += bb) GgufBlock<T, D>(c, y, r * c.K + b * kB);
  }
  if (c.stream) hwy::FlushStream();
}

// ---- selection ------------------------------------------------------------------------------

template <Dtype D>
DeqFn ChunkFor(Code code) {
  switch (code) {
    case Code::i8:
      return &DeqChunk<Code::i8, D>;
    case Code::u8:
      return &DeqChunk<Code::u8, D>;
    case Code::i4:
      return &DeqChunk<Code::i4, D>;
    case Code::u4:
      return &DeqChunk<Code::u4, D>;
    case Code::e4m3:
      return &DeqChunk<Code::e4m3, D>;
    case Code::e5m2:
      return &DeqChunk<Code::e5m2, D>;
    case Code::nvfp4:
      return &DeqChunk<Code::nvfp4, D>;
    case Code::mxfp4:
      return &DeqChunk<Code::mxfp4, D>;
    case Code::mx8e4m3:
      return &DeqChunk<Code::mx8e4m3, D>;
    case Code::mx8e5m2:
      return &DeqChunk<Code::mx8e5m2, D>;
  }
  return nullptr;
}

template <Dtype D>
DeqFn GgufFor(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::q8_0:
      return &GgufRows<GgmlType::q8_0, D>;
    case GgmlType::q4_0:
      return &GgufRows<GgmlType::q4_0, D>;
    case GgmlType::q4_1:
      return &GgufRows<GgmlType::q4_1, D>;
    case GgmlType::q5_0:
      return &GgufRows<GgmlType::q5_0, D>;
    case GgmlType::q5_1:
      return &GgufRows<GgmlType::q5_1, D>;
    case GgmlType::q4_K:
      return &GgufRows<GgmlType::q4_K, D>;
    case GgmlType::q6_K:
      return &GgufRows<GgmlType::q6_K, D>;
    default:
      return nullptr;
  }
}

#endif  // HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128

}  // namespace quant_simd

/// This target's range function: flat chunks for `code` (gguf_type 0), or GGUF rows.
lowbit::quant_simd::DeqFn SelectDeqFn(lowbit::quant_simd::Code code, uint32_t gguf_type,
                                      Dtype dst) {
#if HWY_TARGET == HWY_SCALAR || HWY_TARGET == HWY_EMU128
  (void)code;
  (void)gguf_type;
  (void)dst;
  return nullptr;
#else
  switch (dst) {
    case Dtype::f32:
      return gguf_type ? quant_simd::GgufFor<Dtype::f32>(gguf_type)
                       : quant_simd::ChunkFor<Dtype::f32>(code);
    case Dtype::f16:
      return gguf_type ? quant_simd::GgufFor<Dtype::f16>(gguf_type)
                       : quant_simd::ChunkFor<Dtype::f16>(code);
    case Dtype::bf16:
      return gguf_type ? quant_simd::GgufFor<Dtype::bf16>(gguf_type)
                       : quant_simd::ChunkFor<Dtype::bf16>(code);
    default:
      return nullptr;
  }
#endif
}

const char* DeqTargetName() { return hwy::TargetName(HWY_TARGET); }
bool DeqTargetIsSimd() { return HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128; }

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lowbit {

HWY_EXPORT(SelectDeqFn);
HWY_EXPORT(DeqTargetName);
HWY_EXPORT(DeqTargetIsSimd);

namespace {

using quant_simd::Code;
using quant_simd::DCall;
using quant_simd::DeqFn;
using quant_simd::Layout;

constexpr int64_t kChunk = int64_t{1} << 16;

template <class Fn>
void parallel_for(int64_t count, Fn&& fn) {
  if (count > 1 && omp_get_max_threads() > 1) {
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < count; ++c) fn(c);
  } else {
    for (int64_t c = 0; c < count; ++c) fn(c);
  }
}

bool supported_gguf(uint32_t type) {
  using gguf::GgmlType;
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::q8_0:
    case GgmlType::q4_0:
    case GgmlType::q4_1:
    case GgmlType::q5_0:
    case GgmlType::q5_1:
    case GgmlType::q4_K:
    case GgmlType::q6_K:
      return true;
    default:
      return false;
  }
}

Code code_of(const QuantScheme& s) {
  switch (s.format) {
    case QuantFormat::int8:
      return Code::i8;
    case QuantFormat::uint8:
      return Code::u8;
    case QuantFormat::int4:
      return Code::i4;
    case QuantFormat::uint4:
      return Code::u4;
    case QuantFormat::fp8e4m3:
      return Code::e4m3;
    case QuantFormat::fp8e5m2:
      return Code::e5m2;
    case QuantFormat::nvfp4:
      return Code::nvfp4;
    case QuantFormat::mxfp4:
      return Code::mxfp4;
    case QuantFormat::mxfp8e4m3:
      return Code::mx8e4m3;
    default:
      return Code::mx8e5m2;
  }
}

class DequantizeSimd final : public Kernel<DequantizeOp> {
 public:
  std::string_view name() const override { return "dequantize_simd"; }

  std::string decline(const DequantizeDesc& d) const override {
    if (!d.device.is_cpu()) return "runs on the cpu only";
    if (!HWY_DYNAMIC_DISPATCH(DeqTargetIsSimd)())
      return "no SIMD target on this CPU (Highway chose SCALAR)";
    if (d.dst == Dtype::f64) return "f64 destinations: the reference serves them";
    if (d.scheme.format == QuantFormat::gguf && !supported_gguf(d.scheme.gguf_type))
      return fmt::format(
          "GGUF {}: vectorised dequantizers exist for q8_0, q4_0, q4_1, q5_0, q5_1, q4_K and "
          "q6_K only",
          d.scheme.str());
    return {};
  }

  KernelSku sku(const DequantizeDesc& d) const override {
    return {"dequantize",
            Backend::cpu,
            std::string(dtype_name(d.dst)),
            d.scheme.str(),
            HWY_DYNAMIC_DISPATCH(DeqTargetName)(),
            std::string(name())};
  }

  PrecisionGuarantee precision(const DequantizeDesc&) const override {
    return {
        "the rules of docs/formats.md (GGUF: ggml's dequantize_row_*) in f32, one rounding "
        "to the destination; bit-identical to dequantize_reference",
        std::nullopt, true, true};
  }

  void run(const DequantizeDesc& d, const DequantizeArgs& a, const Stream&,
           Workspace) const override {
    const QuantScheme& s = d.scheme;
    DCall c;
    c.codes = static_cast<const uint8_t*>(a.src.codes.data());
    c.L = Layout::make(s, d.shape);
    c.dst = a.dst.data();
    const int64_t n = c.L.n;
    if (n == 0) return;
    const bool gguf = s.format == QuantFormat::gguf;
    const DeqFn fn = HWY_DYNAMIC_DISPATCH(SelectDeqFn)(gguf ? Code::i8 : code_of(s),
                                                       gguf ? s.gguf_type : 0u, d.dst);
    if (!fn)
      throw_error(ErrorCode::internal, "dequantize_simd: no function for " + s.str() + " -> " +
                                           std::string(dtype_name(d.dst)));
    const int64_t vec_bytes = 64;  // whole cache lines: every target's vectors divide them
    c.stream = d.dst == Dtype::f32 &&
               storage_bytes(d.dst, n) >= convert_simd_detail::stream_threshold_bytes() &&
               reinterpret_cast<uintptr_t>(c.dst) % vec_bytes == 0;
    if (gguf) {
      c.K = c.L.gm.k;
      c.row_bytes = gguf::row_bytes(static_cast<gguf::GgmlType>(s.gguf_type), c.K);
      // Streaming needs every block's output aligned: rows of whole cache lines.
      c.stream = c.stream && (c.K * 4) % vec_bytes == 0;
      const int64_t rows = c.K > 0 ? n / c.K : 0;
      const int64_t per = std::max<int64_t>(1, kChunk / std::max<int64_t>(1, c.K));
      parallel_for((rows + per - 1) / per,
                   [&](int64_t k) { fn(c, k * per, std::min(rows, (k + 1) * per)); });
      return;
    }
    c.code_dtype = s.code_dtype();
    c.scale = a.src.scale.data();
    c.scale_dtype = a.src.scale.dtype();
    c.zero = s.is_integer() && !s.symmetric ? a.src.zero.data_as<const int32_t>() : nullptr;
    if (s.format == QuantFormat::nvfp4) c.global = a.src.global_scale.data_as<const float>()[0];
    std::vector<float> cs;
    std::vector<int32_t> cz;
    if (c.L.columns) {
      const int64_t P = c.L.period;
      cs.resize(static_cast<size_t>(P));
      cz.assign(static_cast<size_t>(P), 0);
      for (int64_t col = 0; col < P; ++col) {
        const int64_t g = col / c.L.gm.inner;
        cs[static_cast<size_t>(col)] = convert_detail::load_f32(c.scale, c.scale_dtype, g);
        if (c.zero) cz[static_cast<size_t>(col)] = c.zero[g];
      }
      c.col_scale = cs.data();
      c.col_zero = cz.data();
    }
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    parallel_for(chunks, [&](int64_t k) { fn(c, k * kChunk, std::min(n, (k + 1) * kChunk)); });
  }
};

}  // namespace

const Kernel<DequantizeOp>& dequantize_simd_kernel() {
  static const DequantizeSimd kernel;
  return kernel;
}

}  // namespace lowbit
#endif  // HWY_ONCE
