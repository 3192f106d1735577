#include "support/testing.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <sstream>

#include "lowbit/numeric.hpp"

namespace lowbit::testing {

std::vector<Device> test_devices() {
  std::vector<Device> d{Device::cpu()};
  if (cuda_device_count() > 0) d.push_back(Device::cuda(0));
  return d;
}

namespace {

uint32_t special_f32(std::mt19937_64& rng) {
  static const uint32_t specials[] = {
      0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00000u, 0x7f800001u,
      0x7fbfffffu, 0x00000001u, 0x007fffffu, 0x00800000u, 0x7f7fffffu, 0xff7fffffu,
      0x43e00000u,  // 448, f8e4m3fn max
      0x43e80000u,  // 464, e4m3fn overflow tie
      0x47600000u,  // 57344, e5m2 max
      0x40c00000u,  // 6, e2m1 max
      0x477fe000u,  // 65504, f16 max
      0x3f808000u,  // 1 + 2^-8, bf16 tie
      0x3f804000u,  // 1 + 2^-9
      0x3fc00000u,  // 1.5 (e8m0 tie)
      0x3e800000u,  // 0.25 (e2m1 tie at zero)
      0x3b000000u,  // 2^-9, e4m3fn subnormal unit
      0x3a800000u,  // 2^-10, half of it
      0x37800000u,  // 2^-16, e5m2 subnormal unit
      0x33800000u,  // 2^-24, f16 subnormal unit
      0x00400000u,  // 2^-127
  };
  const uint32_t s = specials[rng() % std::size(specials)];
  return (rng() & 1) ? (s ^ 0x80000000u) : s;
}

float ordinary_f32(std::mt19937_64& rng) {
  // Magnitudes spread over 2^-20 .. 2^20 with random mantissas.
  std::uniform_real_distribution<float> m(1.0f, 2.0f);
  std::uniform_int_distribution<int> e(-20, 20);
  const float v = std::ldexp(m(rng), e(rng));
  return (rng() & 1) ? -v : v;
}

}  // namespace

void fill_random(void* data, Dtype dtype, int64_t numel, std::mt19937_64& rng) {
  const int64_t bytes = storage_bytes(dtype, numel);
  auto* p = static_cast<uint8_t*>(data);
  if (dtype == Dtype::f32 || dtype == Dtype::f64) {
    for (int64_t i = 0; i < numel; ++i) {
      const uint64_t pick = rng() % 8;
      uint32_t bits;
      if (pick == 0) {
        bits = static_cast<uint32_t>(rng());
      } else if (pick == 1) {
        bits = special_f32(rng);
      } else {
        bits = std::bit_cast<uint32_t>(ordinary_f32(rng));
      }
      if (dtype == Dtype::f32) {
        std::memcpy(p + 4 * i, &bits, 4);
      } else {
        // f64: the f32 value plus random low bits, so f64 -> f32 rounding is exercised.
        uint64_t d = std::bit_cast<uint64_t>(f32_to_f64(std::bit_cast<float>(bits)));
        if ((d & 0x7ff0000000000000ull) != 0x7ff0000000000000ull) d ^= (rng() & 0x1fffffffull);
        if (pick == 0) d = rng();
        std::memcpy(p + 8 * i, &d, 8);
      }
    }
    return;
  }
  if (dtype == Dtype::f16 || dtype == Dtype::bf16) {
    for (int64_t i = 0; i < numel; ++i) {
      uint16_t h;
      if (rng() % 4 == 0) {
        h = static_cast<uint16_t>(rng());
      } else {
        const float v =
            (rng() % 8 == 0) ? std::bit_cast<float>(special_f32(rng)) : ordinary_f32(rng);
        h = dtype == Dtype::f16 ? f32_to_f16(v) : f32_to_bf16(v);
      }
      std::memcpy(p + 2 * i, &h, 2);
    }
    return;
  }
  // 8-bit and packed formats, and integers: uniformly random bytes cover every code.
  for (int64_t i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(rng());
}

Tensor random_tensor(const Shape& shape, Dtype dtype, std::mt19937_64& rng) {
  Tensor t = Tensor::empty(shape, dtype);
  fill_random(t.data(), dtype, t.numel(), rng);
  if (is_packed(dtype) && (t.numel() & 1)) static_cast<uint8_t*>(t.data())[t.numel() / 2] &= 0x0f;
  return t;
}

Tensor to_device(const Tensor& host, Device device) {
  Tensor t = Tensor::empty(host.shape(), host.dtype(), device);
  copy(t, host);
  return t;
}

Tensor to_host(const TensorView& view) {
  Tensor t = Tensor::empty(view.shape(), view.dtype());
  copy(t, view);
  return t;
}

std::string compare_bytes(const TensorView& expected, const TensorView& actual) {
  if (expected.dtype() != actual.dtype() || !(expected.shape() == actual.shape()))
    return fmt::format("expected {} but got {}", expected.str(), actual.str());
  const int64_t bytes = storage_bytes(expected.dtype(), expected.numel());
  const auto* a = static_cast<const uint8_t*>(expected.data());
  const auto* b = static_cast<const uint8_t*>(actual.data());
  if (std::memcmp(a, b, static_cast<size_t>(bytes)) == 0) return {};
  const int64_t esize = std::max<int64_t>(1, bit_width(expected.dtype()) / 8);
  int64_t mismatches = 0, first = -1;
  for (int64_t i = 0; i < bytes; ++i)
    if (a[i] != b[i]) {
      ++mismatches;
      if (first < 0) first = i;
    }
  std::string ex, ac;
  const int64_t start = first / esize * esize;
  for (int64_t k = esize - 1; k >= 0; --k) {
    ex += fmt::format("{:02x}", a[start + k]);
    ac += fmt::format("{:02x}", b[start + k]);
  }
  return fmt::format("{} of {} bytes differ; first at element {} (byte {}): expected 0x{} got 0x{}",
                     mismatches, bytes, is_packed(expected.dtype()) ? first * 2 : first / esize,
                     first, ex, ac);
}

Shape parse_shape(const std::string& text) {
  Shape s;
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, 'x')) s.push_back(std::stoll(part));
  return s;
}

std::mt19937_64 make_rng(uint64_t salt) { return std::mt19937_64(0x10b17ull * 1000003ull + salt); }

}  // namespace lowbit::testing
