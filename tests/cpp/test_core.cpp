// Dtypes, errors, devices, buffers, tensor views and copies.
#include <gtest/gtest.h>

#include <cstring>

#include "lowbit/convert.hpp"
#include "lowbit/device.hpp"
#include "lowbit/dtype.hpp"
#include "lowbit/error.hpp"
#include "lowbit/tensor.hpp"
#include "support/testing.hpp"

namespace lowbit {
namespace {

using testing::expect_error;

TEST(Dtype, TableAndParsing) {
  for (const DtypeTraits& t : kDtypeTraits) {
    EXPECT_EQ(parse_dtype(t.name), t.dtype);
    if (!t.alias.empty()) EXPECT_EQ(parse_dtype(t.alias), t.dtype);
    EXPECT_EQ(dtype_name(t.dtype), t.name);
  }
  EXPECT_EQ(parse_dtype("f8e4m3"), Dtype::f8e4m3fn);
  EXPECT_EQ(parse_dtype("bfloat16"), Dtype::bf16);
  EXPECT_EQ(bit_width(Dtype::i4), 4);
  EXPECT_TRUE(is_packed(Dtype::f4e2m1));
  EXPECT_FALSE(is_float(Dtype::u8));
  EXPECT_TRUE(is_float(Dtype::e8m0));
  EXPECT_FALSE(traits(Dtype::e8m0).is_signed);
  EXPECT_EQ(storage_bytes(Dtype::i4, 7), 4);
  EXPECT_EQ(storage_bytes(Dtype::bf16, 7), 14);
  EXPECT_FALSE(try_parse_dtype("float8").has_value());
  expect_error([] { parse_dtype("fp9"); }, ErrorCode::invalid_argument,
               "dtype 'fp9' is not known (known: f64");
}

TEST(Error, CodeAndMessage) {
  const Error e(ErrorCode::corrupt_file, "header length 12 exceeds file size 8");
  EXPECT_EQ(e.code(), ErrorCode::corrupt_file);
  EXPECT_STREQ(e.what(), "corrupt_file: header length 12 exceeds file size 8");
  EXPECT_EQ(e.message(), "header length 12 exceeds file size 8");
  EXPECT_EQ(to_string(ErrorCode::out_of_memory), "out_of_memory");
}

TEST(Device, ParseAndCheck) {
  EXPECT_EQ(parse_device("cpu"), Device::cpu());
  EXPECT_EQ(parse_device("cuda"), Device::cuda(0));
  EXPECT_EQ(parse_device("cuda:3"), Device::cuda(3));
  EXPECT_EQ(Device::cuda(2).str(), "cuda:2");
  expect_error([] { parse_device("gpu"); }, ErrorCode::invalid_argument,
               "device 'gpu' is not valid");
  expect_error([] { parse_device("cuda:-1"); }, ErrorCode::invalid_argument, "cuda:-1");
  expect_error([] { parse_device("cuda:1x"); }, ErrorCode::invalid_argument, "cuda:1x");
  const int n = cuda_device_count();
  expect_error([n] { check_device(Device::cuda(n)); }, ErrorCode::invalid_argument,
               "does not exist");
  expect_error([n] { Buffer b(16, Device::cuda(n + 3)); }, ErrorCode::invalid_argument,
               "does not exist");
  expect_error([n] { cuda_device_properties(n); }, ErrorCode::invalid_argument, "does not exist");
  EXPECT_FALSE(cpu_features().str().empty());
}

TEST(Buffer, CpuAlignmentAndMoves) {
  for (int64_t size : {0, 1, 63, 64, 1000}) {
    Buffer b(size, Device::cpu());
    ASSERT_NE(b.data(), nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % 64, 0u);
    EXPECT_EQ(b.size(), size);
    Buffer moved = std::move(b);
    EXPECT_EQ(b.data(), nullptr);
    EXPECT_EQ(moved.size(), size);
  }
  expect_error([] { Buffer b(-1, Device::cpu()); }, ErrorCode::invalid_argument, "negative size");
  expect_error([] { Buffer b(int64_t(1) << 62, Device::cpu()); }, ErrorCode::out_of_memory,
               "allocating");
}

TEST(TensorView, ContiguitySliceTranspose) {
  std::vector<float> data(6 * 4);
  TensorView v(data.data(), Dtype::f32, {6, 4});
  EXPECT_TRUE(v.is_contiguous());
  EXPECT_EQ(v.numel(), 24);
  EXPECT_EQ(v.span_bytes(), 96);
  TensorView t = v.transpose(0, 1);
  EXPECT_FALSE(t.is_contiguous());
  EXPECT_EQ(t.shape(), (Shape{4, 6}));
  EXPECT_EQ(t.strides(), (Strides{1, 4}));
  TensorView s = v.slice(0, 1, 6, 2);  // rows 1, 3, 5
  EXPECT_EQ(s.shape(), (Shape{3, 4}));
  EXPECT_EQ(s.strides(), (Strides{8, 1}));
  EXPECT_EQ(s.data(), data.data() + 4);
  EXPECT_EQ(s.span_bytes(), (2 * 8 + 3 + 1) * 4);
  EXPECT_TRUE(v.slice(0, 2, 3).is_contiguous());
  // Extent-1 dims may carry any stride and still be contiguous.
  EXPECT_TRUE(TensorView(data.data(), Dtype::f32, {1, 4}, {99, 1}).is_contiguous());
  expect_error([&] { v.slice(2, 0, 1); }, ErrorCode::invalid_argument, "dim 2 out of range");
  expect_error([&] { v.slice(0, 3, 9); }, ErrorCode::invalid_argument, "[3:9:1] out of range");
  expect_error(
      [&] {
        TensorView(data.data(), Dtype::f32, {2, 2}, {1});
      },
      ErrorCode::invalid_argument, "do not match shape");
  expect_error([&] { TensorView(data.data(), Dtype::f32, {-2}); }, ErrorCode::invalid_argument,
               "negative extent");
  expect_error([&] { TensorView(nullptr, Dtype::f32, {2}); }, ErrorCode::invalid_argument,
               "null data");
  expect_error(
      [&] {
        TensorView(data.data(), Dtype::i4, {4, 2}, {1, 4});
      },
      ErrorCode::invalid_argument, "packed dtype i4 needs a contiguous view");
  expect_error(
      [&] {
        numel(Shape{int64_t(1) << 40, int64_t(1) << 40});
      },
      ErrorCode::invalid_argument, "overflows int64");
  expect_error([&] { Shape{1, 2, 3, 4, 5, 6, 7, 8, 9}; }, ErrorCode::invalid_argument, "at most 8");
  EXPECT_EQ(TensorView(data.data(), Dtype::f32, {0, 5}).span_bytes(), 0);
}

TEST(Copy, StridedOnCpuAndRoundTripThroughEveryDevice) {
  auto rng = testing::make_rng(3);
  const Tensor src = testing::random_tensor({37, 19}, Dtype::bf16, rng);
  // Strided -> contiguous on the CPU gives the transpose.
  Tensor t = Tensor::empty({19, 37}, Dtype::bf16);
  copy(t, src.view().transpose(0, 1));
  const auto* s = src.data_as<uint16_t>();
  const auto* d = t.data_as<uint16_t>();
  for (int i = 0; i < 37; ++i)
    for (int j = 0; j < 19; ++j) ASSERT_EQ(d[j * 37 + i], s[i * 19 + j]);
  for (Device device : testing::test_devices()) {
    const Tensor on_device = testing::to_device(src, device);
    EXPECT_EQ(on_device.device(), device);
    EXPECT_EQ(testing::compare_bytes(src, testing::to_host(on_device)), "");
    // Strided views cross devices too: a transposed device view to a host tensor, and a
    // host transpose into every other column of a device tensor (the gaps keep their bytes).
    Tensor back = Tensor::empty({19, 37}, Dtype::bf16);
    copy(back, on_device.view().transpose(0, 1));
    EXPECT_EQ(testing::compare_bytes(t, back), "") << device.str();
    Tensor wide_host = testing::random_tensor({19, 74}, Dtype::bf16, rng);
    const Tensor wide = testing::to_device(wide_host, device);
    copy(wide.view().slice(1, 0, 74, 2), src.view().transpose(0, 1));
    const Tensor wide_back = testing::to_host(wide);
    const auto* w = wide_back.data_as<uint16_t>();
    const auto* w0 = wide_host.data_as<uint16_t>();
    for (int j = 0; j < 19; ++j)
      for (int i = 0; i < 37; ++i) {
        ASSERT_EQ(w[j * 74 + 2 * i], s[i * 19 + j]) << device.str();
        ASSERT_EQ(w[j * 74 + 2 * i + 1], w0[j * 74 + 2 * i + 1]) << device.str();
      }
  }
  expect_error(
      [&] {
        copy(Tensor::empty({37, 19}, Dtype::f32), src);
      },
      ErrorCode::invalid_argument, "use convert");
  expect_error(
      [&] {
        copy(Tensor::empty({19, 37}, Dtype::bf16), src);
      },
      ErrorCode::invalid_argument, "dst shape [19, 37] != src shape [37, 19]");
}

TEST(Cuda, StreamsBuffersAndOutOfMemory) {
  LOWBIT_REQUIRE_CUDA();
  const Device gpu = Device::cuda(0);
  const CudaDeviceProperties p = cuda_device_properties(0);
  EXPECT_GT(p.multiprocessors, 0);
  std::printf("  %s\n", p.str().c_str());
  Stream stream = Stream::create(gpu);
  EXPECT_NE(stream.native_handle(), nullptr);
  // Repeated allocations come from the caching pool; each must be usable.
  for (int i = 0; i < 100; ++i) {
    Buffer b(1 << 20, gpu, &stream);
    fill_bytes(TensorView(b.data(), Dtype::u8, {1 << 20}, gpu), static_cast<uint8_t>(i), &stream);
  }
  stream.synchronize();
  // Far more than any GPU has: a clean out_of_memory error, and the device still works.
  expect_error([&] { Buffer huge(int64_t(1) << 50, gpu); }, ErrorCode::out_of_memory, "allocating");
  Tensor after = Tensor::empty({16}, Dtype::f32, gpu);
  fill_bytes(after, 0);
  Tensor host = testing::to_host(after);
  EXPECT_EQ(host.data_as<float>()[15], 0.0f);
  // Copies ordered on a stream.
  auto rng = testing::make_rng(4);
  const Tensor src = testing::random_tensor({4099}, Dtype::f32, rng);
  Tensor dev = Tensor::empty({4099}, Dtype::f32, gpu, &stream);
  copy(dev, src, &stream);
  Tensor back = Tensor::empty({4099}, Dtype::f32);
  copy(back, dev, &stream);
  stream.synchronize();
  EXPECT_EQ(testing::compare_bytes(src, back), "");
}

}  // namespace
}  // namespace lowbit
