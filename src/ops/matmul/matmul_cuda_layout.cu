// Host side of the "cuda_tc16x128" prepared weight layout: which schemes it covers, where its
// parts live, and the repacking (done once, on the host, from host copies of the parts).
#include <algorithm>
#include <cstring>
#include <vector>

#include "lowbit/error.hpp"
#include "lowbit/gguf_blocks.hpp"
#include "ops/matmul/matmul_cuda_layout.cuh"

namespace lowbit::tc {
namespace {

int64_t align256(int64_t v) { return (v + 255) / 256 * 256; }

int log2_exact(int64_t v) {
  int l = 0;
  while ((int64_t{1} << l) < v) ++l;
  return (int64_t{1} << l) == v ? l : -1;
}

uint16_t rd16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

/// ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j (0..7) of a q4_K block.
void scale_min_k4(int j, const uint8_t* q, uint8_t& sc, uint8_t& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

constexpr uint32_t kQ4_0 = 2, kQ8_0 = 8, kQ4_K = 12, kQ6_K = 14;

}  // namespace

std::optional<Format> format_of(const QuantScheme& s, int64_t n, int64_t k, std::string* why) {
  auto no = [&](std::string reason) -> std::optional<Format> {
    if (why) *why = std::move(reason);
    return std::nullopt;
  };
  if (k % 128 != 0)
    return no("K = " + std::to_string(k) + " is not a multiple of 128 (the layout's segment)");
  Format f;
  const bool integer = s.format == QuantFormat::int8 || s.format == QuantFormat::uint8 ||
                       s.format == QuantFormat::int4 || s.format == QuantFormat::uint4;
  const bool fp8 = s.format == QuantFormat::fp8e4m3 || s.format == QuantFormat::fp8e5m2;
  if (integer || fp8) {
    if (integer) {
      const bool four = s.format == QuantFormat::int4 || s.format == QuantFormat::uint4;
      const bool unsigned_codes = s.format == QuantFormat::uint8 || s.format == QuantFormat::uint4;
      f.code = four ? Code::u4 : Code::i8;
      f.scale = Scale::integer;
      f.scale_dtype = s.scale_dtype;
      f.zero = !s.symmetric;
      if (four) {
        f.code_xor = unsigned_codes ? 0 : 8;
        f.zero_shift = unsigned_codes ? 8 : 0;
      } else {
        f.code_xor = unsigned_codes ? 0x80 : 0;
        f.zero_shift = unsigned_codes ? 128 : 0;
      }
    } else {
      f.code = s.format == QuantFormat::fp8e4m3 ? Code::e4m3 : Code::e5m2;
      f.scale = Scale::f32;
    }
    switch (s.granularity) {
      case Granularity::tensor:
        f.per_tensor = true;
        f.group = k;
        break;
      case Granularity::token:
        f.group = k;
        break;
      case Granularity::channel:
        if (s.axis != 0 && s.axis != -2)
          return no("per-channel scales along axis " + std::to_string(s.axis) +
                    " (only the weight's rows, axis 0, fit the layout)");
        f.group = k;
        break;
      case Granularity::block:
        f.group = s.block;
        break;
      case Granularity::block2d:
        f.group = s.block;
        f.block_rows = s.block;
        break;
    }
  } else if (s.format == QuantFormat::nvfp4) {
    f.code = Code::fp4;
    f.scale = Scale::e4m3;
    f.group = 16;
  } else if (s.format == QuantFormat::mxfp4) {
    f.code = Code::fp4;
    f.scale = Scale::e8m0;
    f.group = 32;
  } else if (s.format == QuantFormat::gguf) {
    switch (s.gguf_type) {
      case kQ4_0:
        f.code = Code::u4;
        f.scale = Scale::f16d;
        f.group = 32;
        break;
      case kQ8_0:
        f.code = Code::i8;
        f.scale = Scale::f16d;
        f.group = 32;
        break;
      case kQ4_K:
        f.code = Code::u4;
        f.scale = Scale::q4k;
        f.group = 32;
        break;
      case kQ6_K:
        f.code = Code::i8;
        f.scale = Scale::q6k;
        f.group = 16;
        break;
      default:
        return no("GGUF " + s.str() + " is not in the layout (q4_0, q8_0, q4_K, q6_K are)");
    }
  } else {
    return no(s.str() + " is not in the layout (mxfp8 is served by the dequantize path)");
  }
  if (f.group < 16 || f.group % 16 != 0)
    return no("groups of " + std::to_string(f.group) + " elements are not a multiple of 16");
  if (f.group < 128 && 128 % f.group != 0)
    return no("groups of " + std::to_string(f.group) + " do not tile a 128-k segment");
  if (f.group >= 128 && f.group % 128 != 0 && f.group != k)
    return no("groups of " + std::to_string(f.group) + " straddle 128-k segments");
  const int lg = log2_exact(f.group);
  f.group_log2 = f.group >= k ? 31 : lg;
  if (f.group_log2 < 0) return no("groups of " + std::to_string(f.group) + " (not a power of 2)");
  f.steps_log2 = f.group >= 128 ? 3 : log2_exact(f.group / 16);
  (void)n;
  return f;
}

Layout layout_of(const Format& f, int64_t n, int64_t k) {
  Layout L;
  L.n = n;
  L.k = k;
  L.tiles = (n + 15) / 16;
  L.rows = L.tiles * 16;
  L.segments = k / 128;
  L.groups = f.group >= k ? 1 : (k + f.group - 1) / f.group;
  int64_t at = 0;
  L.codes = at;
  at = align256(at + L.tiles * L.segments * 2 * 32 * f.lane_bytes());
  L.scale = at;
  int64_t scale_bytes = 0;
  switch (f.scale) {
    case Scale::integer:  // stored as f32 whatever the scheme's scale dtype (exact)
    case Scale::f32:
      scale_bytes = L.rows * L.groups * 4;
      break;
    case Scale::e4m3:
    case Scale::e8m0:
      scale_bytes = L.rows * L.groups;
      break;
    case Scale::f16d:
      scale_bytes = L.rows * L.groups * 2;
      break;
    case Scale::q4k:
      scale_bytes = L.rows * (k / 256) * 4;  // (d, dmin) f16 per super-block
      break;
    case Scale::q6k:
      scale_bytes = L.rows * (k / 256) * 2;  // d f16 per super-block
      break;
  }
  at = align256(at + scale_bytes);
  L.zero = -1;
  if (f.zero) {
    L.zero = at;
    at = align256(at + L.rows * L.groups);
  }
  L.aux = -1;
  if (f.scale == Scale::q4k) {
    L.aux = at;
    at = align256(at + L.rows * (k / 32) * 2);
  } else if (f.scale == Scale::q6k) {
    L.aux = at;
    at = align256(at + L.rows * (k / 16));
  }
  L.global = -1;
  if (f.scale == Scale::e4m3) {
    L.global = at;
    at = align256(at + 4);
  }
  L.bytes = at;
  return L;
}

void prepare_host(const QuantScheme& s, const Format& f, const Layout& L, const uint8_t* codes,
                  const void* scale, const int32_t* zero, const float* global, uint8_t* out) {
  std::memset(out, 0, static_cast<size_t>(L.bytes));
  const int64_t n = L.n, k = L.k;
  const bool gguf = s.format == QuantFormat::gguf;

  // ---- codes: the stored code of every element (GGUF blocks decoded first) ---------------
  std::vector<uint8_t> gcodes;  // GGUF: stored code per element, row-major [n][k]
  if (gguf) {
    gcodes.resize(static_cast<size_t>(n * k));
    const auto type = static_cast<gguf::GgmlType>(s.gguf_type);
    const int64_t row_bytes = gguf::row_bytes(type, k);
    for (int64_t row = 0; row < n; ++row) {
      const uint8_t* src = codes + row * row_bytes;
      uint8_t* dst = gcodes.data() + row * k;
      if (s.gguf_type == kQ4_0) {
        for (int64_t b = 0; b < k / 32; ++b) {
          const uint8_t* blk = src + b * 18;
          for (int j = 0; j < 16; ++j) {
            dst[b * 32 + j] = blk[2 + j] & 0xF;
            dst[b * 32 + j + 16] = blk[2 + j] >> 4;
          }
        }
      } else if (s.gguf_type == kQ8_0) {
        for (int64_t b = 0; b < k / 32; ++b) std::memcpy(dst + b * 32, src + b * 34 + 2, 32);
      } else if (s.gguf_type == kQ4_K) {
        for (int64_t b = 0; b < k / 256; ++b) {
          const uint8_t* qs = src + b * 144 + 16;
          for (int v = 0; v < 256; ++v) {
            const int c = v / 64, l = v % 64;
            dst[b * 256 + v] = l < 32 ? (qs[32 * c + l] & 0xF) : (qs[32 * c + l - 32] >> 4);
          }
        }
      } else {  // q6_K: ql[128], qh[64], sc[16], d
        for (int64_t b = 0; b < k / 256; ++b) {
          const uint8_t* ql = src + b * 210;
          const uint8_t* qh = ql + 128;
          for (int v = 0; v < 256; ++v) {
            const int h = v / 128, w = v % 128, a = w / 32, l = w % 32;
            const uint8_t qlb = ql[64 * h + l + ((a & 1) ? 32 : 0)];
            const int nib = a < 2 ? (qlb & 0xF) : (qlb >> 4);
            const int hb = (qh[32 * h + l] >> (2 * a)) & 3;
            dst[b * 256 + v] = static_cast<uint8_t>((nib | (hb << 4)) - 32);
          }
        }
      }
    }
  }
  const bool four = f.code_bits() == 4;
  const uint32_t pad_code = f.code == Code::u4 ? 8u : 0u;  // the stored code of a 0
  auto stored = [&](int64_t row, int64_t kk) -> uint32_t {
    if (row >= n) return pad_code;
    const int64_t e = row * k + kk;
    if (gguf) return gcodes[static_cast<size_t>(e)];
    if (four) return ((codes[e >> 1] >> ((e & 1) * 4)) & 0xFu) ^ f.code_xor;
    return static_cast<uint32_t>(codes[e] ^ f.code_xor);
  };
  const int lb = f.lane_bytes();
  for (int64_t t = 0; t < L.tiles; ++t)
    for (int64_t sg = 0; sg < L.segments; ++sg)
      for (int h = 0; h < 2; ++h)
        for (int lane = 0; lane < 32; ++lane) {
          const int r = lane >> 2, q = lane & 3;
          const int64_t row = t * 16 + h * 8 + r;
          uint32_t words[8] = {};
          if (four) {
            for (int w = 0; w < 4; ++w)
              for (int m = 0; m < 8; ++m) {
                const int j = 2 * w + (m >> 2), i = m & 3;
                words[w] |= stored(row, step_k(sg, j, q) + i) << (4 * nibble_slot(m));
              }
          } else {
            for (int j = 0; j < 8; ++j)
              for (int i = 0; i < 4; ++i) words[j] |= stored(row, step_k(sg, j, q) + i) << (8 * i);
          }
          std::memcpy(out + L.codes + lane_code_offset(L.segments, lb, t, sg, h, lane), words,
                      static_cast<size_t>(lb));
        }

  // ---- scales ------------------------------------------------------------------------------
  uint8_t* sc = out + L.scale;
  if (f.scale == Scale::integer || f.scale == Scale::f32) {
    const int es = f.scale == Scale::f32 ? 4 : static_cast<int>(bit_width(f.scale_dtype) / 8);
    const auto* src = static_cast<const uint8_t*>(scale);
    auto as_f32 = [&](int64_t at) {
      if (es == 4) {
        float v;
        std::memcpy(&v, src + at * 4, 4);
        return v;
      }
      uint16_t h;
      std::memcpy(&h, src + at * 2, 2);
      return f.scale_dtype == Dtype::bf16 ? bf16_to_f32(h) : f16_to_f32(h);
    };
    const int64_t kblocks = f.group >= k ? 1 : (k + f.group - 1) / f.group;
    for (int64_t row = 0; row < n; ++row)
      for (int64_t g = 0; g < L.groups; ++g) {
        int64_t at;  // index into the plain scale tensor
        if (f.per_tensor) {
          at = 0;
        } else if (s.granularity == Granularity::block2d) {
          at = (row / f.block_rows) * kblocks + g;
        } else if (s.granularity == Granularity::block) {
          at = row * kblocks + g;
        } else {  // channel / token: one per row
          at = row;
        }
        const float v = as_f32(at);
        std::memcpy(sc + (row * L.groups + g) * 4, &v, 4);
        if (f.zero) {
          const int32_t z = zero[at] - f.zero_shift;
          out[L.zero + row * L.groups + g] = static_cast<uint8_t>(static_cast<int8_t>(z));
        }
      }
  } else if (f.scale == Scale::e4m3 || f.scale == Scale::e8m0) {
    const auto* src = static_cast<const uint8_t*>(scale);
    std::memcpy(sc, src, static_cast<size_t>(n * L.groups));
    if (f.scale == Scale::e4m3) std::memcpy(out + L.global, global, 4);
  } else {
    const auto type = static_cast<gguf::GgmlType>(s.gguf_type);
    const int64_t row_bytes = gguf::row_bytes(type, k);
    for (int64_t row = 0; row < n; ++row) {
      const uint8_t* src = codes + row * row_bytes;
      if (f.scale == Scale::f16d) {
        const int bb = s.gguf_type == kQ4_0 ? 18 : 34;
        for (int64_t b = 0; b < k / 32; ++b) {
          const uint16_t d = rd16(src + b * bb);
          std::memcpy(sc + (row * L.groups + b) * 2, &d, 2);
        }
      } else if (f.scale == Scale::q4k) {
        for (int64_t b = 0; b < k / 256; ++b) {
          const uint8_t* blk = src + b * 144;
          std::memcpy(sc + (row * (k / 256) + b) * 4, blk, 4);  // d, dmin
          for (int j = 0; j < 8; ++j) {
            uint8_t s6, m6;
            scale_min_k4(j, blk + 4, s6, m6);
            uint8_t* a = out + L.aux + (row * (k / 32) + b * 8 + j) * 2;
            a[0] = s6;
            a[1] = m6;
          }
        }
      } else {  // q6k
        for (int64_t b = 0; b < k / 256; ++b) {
          const uint8_t* blk = src + b * 210;
          std::memcpy(sc + (row * (k / 256) + b) * 2, blk + 208, 2);
          std::memcpy(out + L.aux + row * (k / 16) + b * 16, blk + 192, 16);
        }
      }
    }
  }
}

}  // namespace lowbit::tc
