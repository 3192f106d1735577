// The CUDA kernel of the fused op: picks the variant of a call (vector or strided), gets
// its cubin from the module cache (compiling it on a miss), loads it through the driver
// API and launches it.
//
// The driver library is opened with dlopen("libcuda.so.1") at the first launch, so lowbit
// loads, and NVRTC compiles, on machines without a GPU or driver. Modules are loaded into
// each device's primary context (the one the CUDA runtime uses) once per kernel and device.
#include <algorithm>

#include "jit/jit.hpp"

#if LOWBIT_HAS_CUDA

#include <cuda.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdlib>
#include <optional>

#include "core/check_report_impl.hpp"
#include "cuda/hand_off.hpp"

namespace lowbit {
namespace fusion {
namespace {

struct Driver {
  decltype(&::cuInit) init = nullptr;
  decltype(&::cuModuleLoadData) module_load_data = nullptr;
  decltype(&::cuModuleGetFunction) module_get_function = nullptr;
  decltype(&::cuLaunchKernel) launch_kernel = nullptr;
  decltype(&::cuGetErrorName) get_error_name = nullptr;
  decltype(&::cuOccupancyMaxActiveBlocksPerMultiprocessor) occupancy = nullptr;
  decltype(&::cuFuncSetAttribute) func_set_attribute = nullptr;
  decltype(&::cuCtxGetCurrent) ctx_get_current = nullptr;
  std::string error;  // why the driver is unusable ("" if it is)

  static const Driver& get() {
    static const Driver d = [] {
      Driver d;
      void* lib = ::dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
      if (!lib) {
        d.error = std::string("cannot load libcuda.so.1: ") + ::dlerror();
        return d;
      }
      auto sym = [&](auto& fn, const char* name) {
        fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(::dlsym(lib, name));
        if (!fn && d.error.empty()) d.error = std::string("libcuda.so.1 lacks ") + name;
      };
      sym(d.init, "cuInit");
      sym(d.module_load_data, "cuModuleLoadData");
      sym(d.module_get_function, "cuModuleGetFunction");
      sym(d.launch_kernel, "cuLaunchKernel");
      sym(d.get_error_name, "cuGetErrorName");
      sym(d.occupancy, "cuOccupancyMaxActiveBlocksPerMultiprocessor");
      sym(d.func_set_attribute, "cuFuncSetAttribute");
      sym(d.ctx_get_current, "cuCtxGetCurrent");
      if (d.error.empty() && d.init(0) != CUDA_SUCCESS) d.error = "cuInit failed";
      return d;
    }();
    return d;
  }

  void check(CUresult r, const char* what) const {
    if (r == CUDA_SUCCESS) return;
    const char* name = nullptr;
    if (get_error_name) get_error_name(r, &name);
    throw_error(ErrorCode::device_error,
                fmt::format("fusion: {}: {}", what, name ? name : std::to_string(r)));
  }
};

void check_rt(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw_error(ErrorCode::device_error,
                fmt::format("fusion: {}: {}", what, cudaGetErrorName(err)));
}

/// Each device's primary context, once a DeviceScope has made it current.
std::array<std::atomic<CUcontext>, 64> g_primary{};

class DeviceScope {
 public:
  /// cudaSetDevice also makes the device's primary context current on this thread (CUDA
  /// 12+), which the driver calls below need even on a thread that never used the runtime.
  /// When that context is current already (the usual case: one call of the driver, no
  /// runtime calls), nothing changes and nothing is restored.
  explicit DeviceScope(int device) {
    const Driver& drv = Driver::get();
    CUcontext current = nullptr;
    if (device >= 0 && device < static_cast<int>(g_primary.size()) &&
        drv.ctx_get_current(&current) == CUDA_SUCCESS && current != nullptr &&
        current == g_primary[device].load(std::memory_order_acquire))
      return;
    check_rt(cudaGetDevice(&previous_), "cudaGetDevice");
    check_rt(cudaSetDevice(device), "cudaSetDevice");
    restore_ = true;
    if (device >= 0 && device < static_cast<int>(g_primary.size()) &&
        drv.ctx_get_current(&current) == CUDA_SUCCESS && current != nullptr)
      g_primary[device].store(current, std::memory_order_release);
  }
  ~DeviceScope() {
    if (!restore_) return;
    int now = previous_;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = 0;
  bool restore_ = false;
};

/// The element-wise vector kernels' largest grid, in grids of resident blocks.
constexpr uint64_t kGridWaves = 64;
/// The quantize epilogue's largest grid, in grids of resident blocks.
constexpr uint64_t kQuantGridWaves = 16;
/// nvfp4's statistics kernel's largest grid, in grids of resident blocks.
constexpr uint64_t kStatsGridWaves = 4;

/// A kernel loaded on one device.
struct Loaded {
  CUmodule module = nullptr;
  CUfunction function = nullptr;
  int blocks_per_sm = 1;
  uint64_t resident = 1;  ///< blocks of kThreads resident on the device (the largest grid)
};

/// Per-device facts read once.
struct DeviceInfo {
  int sms = 0;
  int smem_optin = 48 * 1024;  ///< dynamic shared memory a block may opt in to
  std::string arch;
};

const DeviceInfo& device_info(int device) {
  static std::mutex mutex;
  static std::array<DeviceInfo, 64> info;
  if (device < 0 || device >= 64)
    throw_error(ErrorCode::invalid_argument, fmt::format("cuda:{} is out of range", device));
  std::lock_guard<std::mutex> lock(mutex);
  if (info[device].sms == 0) {
    const CudaDeviceProperties p = cuda_device_properties(device);
    info[device].sms = p.multiprocessors;
    info[device].arch = fmt::format("sm_{}{}", p.sm_major, p.sm_minor);
    int optin = 0;
    if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) ==
            cudaSuccess &&
        optin > 0)
      info[device].smem_optin = optin;
    else
      cudaGetLastError();
  }
  return info[device];
}

/// The arch to compile for: $LOWBIT_JIT_ARCH if set (e.g. "sm_90a"), else the device's. Read
/// once per device and process: every new descriptor's first launch asks twice (its SKU and
/// prepare_launch), and getenv plus device_info's lock were 0.1-0.2 us of the H100 host's
/// per-call budget.
std::string arch_for(int device) {
  static std::array<std::atomic<const std::string*>, 64> known{};
  const bool cached = device >= 0 && device < static_cast<int>(known.size());
  if (cached)
    if (const std::string* a = known[device].load(std::memory_order_acquire)) return *a;
  const char* env = std::getenv("LOWBIT_JIT_ARCH");
  std::string arch = env && *env ? std::string(env) : device_info(device).arch;
  if (cached) {
    auto* fresh = new std::string(arch);  // kept for the life of the process
    const std::string* none = nullptr;
    if (!known[device].compare_exchange_strong(none, fresh, std::memory_order_acq_rel))
      delete fresh;
  }
  return arch;
}

const Loaded& load(const Compiled& c, int device) {
  if (device < 0 || device >= static_cast<int>(c.loaded.size()))
    throw_error(ErrorCode::unsupported,
                fmt::format("fusion: cuda:{} is beyond the {} devices the JIT supports", device,
                            c.loaded.size()));
  if (void* p = c.loaded[device].load(std::memory_order_acquire))
    return *static_cast<const Loaded*>(p);
  std::lock_guard<std::mutex> lock(c.load_mutex);
  if (void* p = c.loaded[device].load(std::memory_order_acquire))
    return *static_cast<const Loaded*>(p);
  const Driver& drv = Driver::get();
  auto l = std::make_unique<Loaded>();
  drv.check(drv.module_load_data(&l->module, c.cubin.data()), "cuModuleLoadData");
  drv.check(drv.module_get_function(&l->function, l->module, c.entry.c_str()),
            "cuModuleGetFunction");
  int blocks = 0;
  if (drv.occupancy(&blocks, l->function, kThreads, 0) != CUDA_SUCCESS || blocks < 1) blocks = 1;
  l->blocks_per_sm = blocks;
  l->resident = std::max<uint64_t>(
      1, static_cast<uint64_t>(device_info(device).sms) * static_cast<uint64_t>(blocks));
  // The module stays loaded for the life of the process (as the Compiled entry may).
  const Loaded* raw = l.release();
  c.loaded[device].store(const_cast<Loaded*>(raw), std::memory_order_release);
  return *raw;
}

}  // namespace

/// The quantize epilogue's kernel: a block of `threads` per row, `smem` bytes of dynamic
/// shared memory (the row's values and the groups' parameters).
void launch_quant(const Compiled& compiled, const std::vector<unsigned char>& params, int64_t rows,
                  unsigned threads, unsigned smem, int device, void* stream, int* blocks_per_sm) {
  const Driver& drv = Driver::get();
  if (!drv.error.empty()) throw_error(ErrorCode::device_error, "fusion: " + drv.error);
  DeviceScope scope(device);
  const Loaded& l = load(compiled, device);
  const DeviceInfo& info = device_info(device);
  if (smem > static_cast<unsigned>(info.smem_optin))
    throw_error(ErrorCode::unsupported,
                fmt::format("fused: quantize epilogue: a row needs {} bytes of shared memory, "
                            "cuda:{} allows {} (rows of at most about {} elements)",
                            smem, device, info.smem_optin, info.smem_optin / 4 - 64));
  if (*blocks_per_sm == 0) {
    if (smem > 48 * 1024)
      drv.check(drv.func_set_attribute(l.function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                       static_cast<int>(smem)),
                "cuFuncSetAttribute");
    int blocks = 0;
    if (drv.occupancy(&blocks, l.function, static_cast<int>(threads), smem) != CUDA_SUCCESS ||
        blocks < 1)
      blocks = 1;
    *blocks_per_sm = blocks;
  }
  // Up to kQuantGridWaves grids of resident blocks, a few rows each, rather than one
  // resident grid (as the vector kernels, launch_cuda): measured on the H100 (fp8 per-token
  // rows of 8192 bf16, exact, unchecked), the register-row kernel ran at 86% of copy with one
  // grid, 89 / 92 / 93 / 93 / 92% with 2 / 4 / 8 / 16 / 32, the shared-memory kernel at 86%
  // with one and 97% with 16 or more (docs/jit.md, "Costs").
  const uint64_t resident = static_cast<uint64_t>(info.sms) * static_cast<uint64_t>(*blocks_per_sm);
  const unsigned grid = static_cast<unsigned>(std::max<uint64_t>(
      1, std::min<uint64_t>(static_cast<uint64_t>(rows), resident * kQuantGridWaves)));
  void* args[] = {const_cast<unsigned char*>(params.data())};
  drv.check(drv.launch_kernel(l.function, grid, 1, 1, threads, 1, 1, smem,
                              static_cast<CUstream>(stream), args, nullptr),
            "cuLaunchKernel");
}

namespace {

/// Launches `compiled` in blocks of kThreads threads, enough for `items` (one per thread),
/// at most `waves` grids of resident blocks (each thread then takes several).
void launch_items(const Compiled& compiled, uint64_t items, uint64_t waves,
                  const std::vector<unsigned char>& params, int device, void* stream) {
  const Driver& drv = Driver::get();
  if (!drv.error.empty()) throw_error(ErrorCode::device_error, "fusion: " + drv.error);
  DeviceScope scope(device);
  const Loaded& l = load(compiled, device);
  const uint64_t wanted = std::max<uint64_t>(1, (items + kThreads - 1) / kThreads);
  const unsigned grid = static_cast<unsigned>(std::min(wanted, l.resident * waves));
  void* args[] = {const_cast<unsigned char*>(params.data())};
  drv.check(drv.launch_kernel(l.function, grid, 1, 1, kThreads, 1, 1, 0,
                              static_cast<CUstream>(stream), args, nullptr),
            "cuLaunchKernel");
}

}  // namespace

void launch_lanes(const Compiled& compiled, const KernelSource& shape,
                  const std::vector<unsigned char>& params, const Layout& layout, int device,
                  void* stream) {
  // A unit per thread, up to kGridWaves grids of resident blocks (as the vector kernels).
  launch_items(compiled, static_cast<uint64_t>(layout.numel) / static_cast<uint64_t>(shape.group),
               kGridWaves, params, device, stream);
}

void launch_stats(const Compiled& compiled, const KernelSource& shape, const Variant& variant,
                  const std::vector<unsigned char>& params, const Layout& layout, int device,
                  void* stream) {
  const uint64_t n = static_cast<uint64_t>(layout.numel);
  // A few grids of resident blocks: each block ends in one atomic on the same word.
  launch_items(compiled, variant.vec ? n / static_cast<uint64_t>(shape.group) + 1 : n,
               kStatsGridWaves, params, device, stream);
}

void launch_cuda(const Compiled& compiled, const KernelSource& shape, const Variant& variant,
                 const std::vector<unsigned char>& params, const Layout& layout, int device,
                 void* stream) {
  const uint64_t n = static_cast<uint64_t>(layout.numel);
  uint64_t items;
  if (variant.vec) {
    const uint64_t groups = n / static_cast<uint64_t>(shape.group);
    items = (groups + shape.unroll - 1) / shape.unroll;
  } else {
    items = variant.pair ? (n + 1) / 2 : n;
  }
  // Up to kGridWaves grids of resident blocks, each thread taking a few items, rather than
  // one resident grid striding over everything: measured on the H100 (chain8 exact, 2^28
  // bf16), the resident grid ran at 91-92% of copy, 8 / 16 / 32 / 64 waves at 94 / 96 / 97
  // / 99%, one item per thread at 97% (docs/jit.md, "Costs").
  launch_items(compiled, items, variant.vec ? kGridWaves : 1, params, device, stream);
}

const ResolvedKernel& prepare_launch(const FusedDesc& d, const FusedArgs& a, const Layout& L,
                                     std::vector<unsigned char>& params) {
  PlanState& st = *d.state;
  // The vector path needs every full operand (and broadcast row input) 16-byte aligned.
  const BroadcastInputs bc = broadcast_inputs(d, L);
  bool vec = L.vec_ok || bc.rows != 0 || bc.cols != 0;
  for (size_t k = 0; vec && k < L.cls.size(); ++k) {
    if (L.cls[k] != Layout::Class::full && !(k < 32 && ((bc.rows >> k) & 1u) != 0)) continue;
    const void* p =
        k < a.inputs.size() ? a.inputs[k].data() : a.outputs[k - a.inputs.size()].data();
    vec = reinterpret_cast<uintptr_t>(p) % 16 == 0;
  }
  const int which = (vec ? 0 : 1) + (d.fast_math ? PlanState::kSlots : 0);
  const ResolvedKernel* k;
  {
    std::lock_guard<std::mutex> lock(st.mutex);
    if (!st.kernels[which]) {
      Variant v;
      v.vec = vec;
      v.idx32 = L.idx32;
      v.nd = L.nd;
      v.cls = L.cls;
      v.pair = !vec && L.packed_out;
      v.rows = vec ? bc.rows : 0;
      v.cols = vec ? bc.cols : 0;
      v.fast = d.fast_math;
      if (st.arch.empty()) st.arch = arch_for(d.device.index);
      st.kernels[which] = resolve_kernel(d.program, v, st.arch);
    }
    k = st.kernels[which].get();
  }
  // Set once under the lock, read-only since: no copies on this path.
  pack_params(*d.program, k->variant, L, a, nullptr, nullptr, params);
  return *k;
}

}  // namespace fusion

namespace {

using fusion::Layout;

// codegen_cuda.cpp's hand_off writes a CheckReport's record with these constants.
static_assert(check_report::kCallsOffset == 15 * 8);
static_assert(static_cast<uint32_t>(check_report::Op::fused) == 3 &&
              static_cast<uint32_t>(check_report::Kind::non_finite) == 1);
static_assert(offsetof(check_report::CheckRecord, op) == 8 &&
              offsetof(check_report::CheckRecord, kind) == 12 &&
              offsetof(check_report::CheckRecord, word) == 16);

/// This thread's parameter block, reused by every launch from it.
std::vector<unsigned char>& param_buffer() {
  thread_local std::vector<unsigned char> buf;
  return buf;
}

/// The quantize epilogue's check words, per thread and device: on the device the flag (the
/// first bad element's complement; only a NaN / Inf writes it) and the count of finished
/// blocks, both zero between calls (the kernel's last block zeroes them: codegen_cuda.cpp's
/// hand_off; a call interrupted by an error leaves them marked unclean, and the next one
/// zeroes them); in pinned, mapped host memory the flag and `done`, which the last block
/// writes. A checked call then costs the launch and a spin on `done` (no copy, no stream
/// synchronisation), as the quantize op's checked paths do.
struct QuantCheck {
  void* device = nullptr;
  volatile unsigned long long* host = nullptr;  ///< pinned, mapped: flag, done
  void* host_on_device = nullptr;
  bool clean = false;
  bool failed = false;  ///< allocation failed: per-call words
};

QuantCheck* quant_check(int device) {
  thread_local std::array<QuantCheck, 64> states;
  if (device < 0 || device >= 64) return nullptr;
  QuantCheck& st = states[static_cast<size_t>(device)];
  if (st.failed) return nullptr;
  if (!st.device) {
    fusion::DeviceScope scope(device);
    hand_off::Words w;
    if (!hand_off::allocate(16, w)) {
      st.failed = true;
      return nullptr;
    }
    st.device = w.device;
    st.host = static_cast<volatile unsigned long long*>(w.host);
    st.host_on_device = w.host_on_device;
  }
  return &st;
}

class FusedCuda final : public Kernel<FusedOp> {
 public:
  std::string_view name() const override { return "fused_cuda"; }

  std::string decline(const FusedDesc& d) const override {
    if (!d.device.is_cuda()) return "runs on CUDA devices only";
    const fusion::Driver& drv = fusion::Driver::get();
    if (!drv.error.empty()) return drv.error;
    return {};
  }

  KernelSku sku(const FusedDesc& d) const override {
    return {"fused",         Backend::cuda, fused_dtypes(d), "", fusion::arch_for(d.device.index),
            "fused_cuda_jit"};
  }

  PrecisionGuarantee precision(const FusedDesc& d) const override {
    if (d.fast_math)
      return {
          "fast math (opt-in): exp by the hardware's exp2 (relative error <= 2^-16), "
          "division with 2 ulp, multiply-adds contracted; other functions as the exact "
          "kernel; not bit-identical to fused_cpu",
          std::nullopt, true, false};
    return fused_cpu_kernel().precision(d);
  }

  /// nvfp4's epilogue: the word of the tensor's absmax bits (its statistics kernel).
  std::size_t workspace_size(const FusedDesc& d) const override {
    return nvfp4_epilogue(d) ? kAmaxBytes : 0;
  }

  void run(const FusedDesc& d, const FusedArgs& a, const Stream& stream,
           Workspace ws) const override {
    fusion::PlanState& st = *d.state;
    const Layout& L = st.get_layout(d);
    if (L.numel == 0) {
      if (nvfp4_epilogue(d))  // as quantize(): an empty tensor's global scale is global(0) = 0
        fusion::check_rt(cudaMemsetAsync(a.quantized.global_scale.data(), 0, 4,
                                         static_cast<cudaStream_t>(stream.native_handle())),
                         "cudaMemsetAsync");
      return;
    }
    if (d.quantized_output >= 0) return run_quantized(d, a, stream, L, ws);
    std::vector<unsigned char>& params = param_buffer();
    const fusion::ResolvedKernel& k = fusion::prepare_launch(d, a, L, params);
    fusion::launch_cuda(*k.compiled, k.shape, k.variant, params, L, d.device.index,
                        stream.native_handle());
  }

 private:
  static constexpr std::size_t kAmaxBytes = 16;
  static bool nvfp4_epilogue(const FusedDesc& d) {
    return d.quantized_output >= 0 && d.scheme.format == QuantFormat::nvfp4;
  }

  /// The quantize epilogue: one block per row (codegen's quant_kernel); for nvfp4 after the
  /// statistics kernel (the tensor's absmax, for the global scale: a second read of the
  /// inputs).
  static void run_quantized(const FusedDesc& d, const FusedArgs& a, const Stream& stream,
                            const Layout& L, Workspace ws) {
    fusion::PlanState& st = *d.state;
    const QuantizedView& q = a.quantized;
    const int64_t K = fusion::quant_row(L, *d.program, q);
    const int64_t rows = K > 0 ? L.numel / K : 0;
    if (rows == 0) return;
    bool vec = L.vec_ok;
    for (size_t k = 0; vec && k < a.inputs.size(); ++k)
      if (L.cls[k] == Layout::Class::full)
        vec = reinterpret_cast<uintptr_t>(a.inputs[k].data()) % 16 == 0;
    for (size_t o = 0; vec && o < a.outputs.size(); ++o)  // the outputs stored beside the codes
      if (static_cast<int>(o) != d.quantized_output)
        vec = reinterpret_cast<uintptr_t>(a.outputs[o].data()) % 16 == 0;
    const bool block = d.scheme.granularity == Granularity::block;
    const bool qstore = K % 4 == 0 && (!block || d.scheme.block % 4 == 0) &&
                        reinterpret_cast<uintptr_t>(q.codes.data()) % 4 == 0;
    int which = -1;
    const fusion::ResolvedKernel* k;
    unsigned threads = 0;
    {
      std::lock_guard<std::mutex> lock(st.mutex);
      fusion::Variant v;
      v.idx32 = L.idx32;
      v.nd = L.nd;
      v.cls = L.cls;
      v.quant = true;
      v.qstore = qstore;
      v.vec = vec;
      v.fast = d.fast_math;
      // Pass 1 in vectors needs rows of whole groups.
      const int group = v.vec ? fusion::generate_cuda(*d.program, v, false).group : 1;
      if (v.vec && K % group != 0) v.vec = false;
      which = (v.vec ? 0 : 1) + (qstore ? 2 : 0);
      // The register-row, lane and recomputing kernels store a unit's G codes at once: the
      // codes' pointer must allow that store.
      const int code_bytes = is_packed(d.scheme.code_dtype()) ? group / 2 : group;
      const bool unit_stores =
          v.vec && code_bytes >= 2 &&
          reinterpret_cast<uintptr_t>(q.codes.data()) % static_cast<uintptr_t>(code_bytes) == 0;
      // Per-row scales on whole groups with fast math: the row in registers when it fits (at
      // most g_quant_reg_units groups of G elements per thread) and the codes' pointer allows
      // one store per group. Exact programs take the shared-memory row kernel: measured on
      // the H100 with the grids of launch_quant (session 24, BENCHMARKS.md), exact fp8
      // per-token rows of 8192 bf16 ran at 97.3% of copy unchecked and 93.8% checked there,
      // 92.6% and 89.6% in registers (4 groups per thread, 3 blocks per SM); fast math 99.0%
      // there and 101.1% in registers. (With one resident grid, session 21, the register
      // rows had been the faster exact: 86.5% against 86.1%.)
      if (unit_stores && !block &&
          (d.fast_math || fusion::g_quant_reg_exact.load(std::memory_order_relaxed))) {
        const int64_t units = K / group;
        const int64_t r = (units + fusion::kThreads - 1) / fusion::kThreads;
        if (r <= fusion::g_quant_reg_units.load(std::memory_order_relaxed)) {
          v.qreg = static_cast<int>(r);
          threads = static_cast<unsigned>((units + r - 1) / r + 31) / 32 * 32;
          which = 4;
        }
      }
      // Per-block groups of at most a warp's units: the element-wise lane kernel (no rows, no
      // shared memory).
      if (unit_stores && block && fusion::g_quant_lane.load(std::memory_order_relaxed)) {
        const int b = d.scheme.block;
        if (b % group == 0 && b / group <= 32 && 32 % (b / group) == 0) {
          v.qlane = true;
          v.qstore = false;
          which = 5;
        }
      }
      // Per-row groups over rows longer than shared memory holds (4 bytes per value): the
      // recomputing row kernel, whose second pass evaluates the row again.
      if (unit_stores && !block && v.qreg == 0) {
        const bool long_rows = 4 * K > fusion::device_info(d.device.index).smem_optin - 1024;
        if (long_rows || fusion::g_quant_recompute_always.load(std::memory_order_relaxed)) {
          v.qrecompute = true;
          v.qstore = false;
          which = 6;
        }
      }
      if (d.fast_math) which += fusion::PlanState::kSlots;
      if (!st.kernels[which]) {
        if (st.arch.empty()) st.arch = fusion::arch_for(d.device.index);
        st.kernels[which] = fusion::resolve_kernel(d.program, v, st.arch);
      }
      k = st.kernels[which].get();
    }
    const fusion::Variant& variant = k->variant;
    const int group = variant.vec ? k->shape.group : 1;
    const int64_t units = K / group;
    if (variant.qreg == 0)
      threads =
          static_cast<unsigned>(std::clamp<int64_t>((units + 31) / 32 * 32, 32, fusion::kThreads));
    const int64_t nb = block ? K / d.scheme.block : 0;
    const unsigned smem =
        variant.qreg > 0 || variant.qrecompute ? 0u : static_cast<unsigned>(4 * K + 8 * nb);
    auto s = static_cast<cudaStream_t>(stream.native_handle());
    std::optional<Buffer> flag;  // per call, where the thread's persistent words are missing
    // With a CheckReport: the report's flag word (zero between calls: the kernel's last block
    // moves a refusal into the report's record and zeroes it), no wait.
    const CheckReport::Impl* report = check_report::for_call(a.report, d.check_finite);
    QuantCheck* qc = d.check_finite && !report ? quant_check(d.device.index) : nullptr;
    void* flag_ptr = nullptr;
    void* host_ptr = nullptr;
    if (report) {
      // The kernel's last block writes the record itself (codegen's hand_off): qhost is the
      // record with its low bit set, which tells the kernel so.
      flag_ptr = report->region(check_report::Op::fused);
      host_ptr = reinterpret_cast<unsigned char*>(report->host_on_device) + 1;
    } else if (qc) {
      if (!qc->clean) fusion::check_rt(cudaMemsetAsync(qc->device, 0, 16, s), "cudaMemsetAsync");
      qc->clean = false;
      qc->host[0] = 0;
      qc->host[1] = 0;
      flag_ptr = qc->device;
      host_ptr = qc->host_on_device;
    } else if (d.check_finite) {
      flag.emplace(16, d.device, &stream);
      fusion::check_rt(cudaMemsetAsync(flag->data(), 0, 16, s), "cudaMemsetAsync");
      flag_ptr = flag->data();
    }
    std::vector<unsigned char>& params = param_buffer();
    void* amax = nullptr;
    if (nvfp4_epilogue(d)) {
      amax = ws.data;
      fusion::check_rt(cudaMemsetAsync(amax, 0, 4, s), "cudaMemsetAsync");
      const fusion::ResolvedKernel* sk;
      {
        std::lock_guard<std::mutex> lock(st.mutex);
        const int slot = (d.fast_math ? 2 : 0) + (variant.vec ? 0 : 1);
        if (!st.stats_kernels[slot])
          st.stats_kernels[slot] =
              fusion::resolve_kernel(d.program, variant.stats_variant(), st.arch);
        sk = st.stats_kernels[slot].get();
      }
      fusion::pack_params(*d.program, sk->variant, L, a, nullptr, nullptr, params, amax);
      fusion::launch_stats(*sk->compiled, sk->shape, sk->variant, params, L, d.device.index, s);
    }
    fusion::pack_params(*d.program, variant, L, a, flag_ptr, host_ptr, params, amax);
    if (variant.qlane) {
      fusion::launch_lanes(*k->compiled, k->shape, params, L, d.device.index, s);
    } else {
      int blocks_per_sm = st.quant_blocks_per_sm[which];
      fusion::launch_quant(*k->compiled, params, rows, threads, smem, d.device.index, s,
                           &blocks_per_sm);
      st.quant_blocks_per_sm[which] = blocks_per_sm;
    }
    if (report) return;  // the kernel records a refusal: no wait
    if (!flag_ptr) return;
    uint64_t word = 0;
    bool handed_off = false;
    if (qc) {
      const cudaError_t q = hand_off::wait(&qc->host[1], s);
      if (q != cudaErrorNotReady && q != cudaSuccess) fusion::check_rt(q, "cudaStreamQuery");
      handed_off = qc->host[1] != 0;
      word = qc->host[0];
    }
    if (!handed_off) {  // per-call words, or a finished stream without the hand-off
      fusion::check_rt(cudaMemcpyAsync(&word, flag_ptr, 8, cudaMemcpyDeviceToHost, s),
                       "cudaMemcpyAsync");
      fusion::check_rt(cudaStreamSynchronize(s), "cudaStreamSynchronize");
    } else if (word != 0) {
      fusion::check_rt(cudaStreamSynchronize(s), "cudaStreamSynchronize");
    }
    if (qc) qc->clean = handed_off;  // otherwise the next call zeroes the device words
    if (word != 0) {
      const uint64_t v = ~word;
      fusion::throw_non_finite(d, static_cast<int64_t>(v >> 1), (v & 1) != 0);
    }
  }
};

}  // namespace

const Kernel<FusedOp>& fused_cuda_kernel() {
  static const FusedCuda kernel;
  return kernel;
}

}  // namespace lowbit

#endif  // LOWBIT_HAS_CUDA

// Host-only layout logic, built without CUDA too (the codegen tests run it on the host
// emulator).
namespace lowbit::fusion {

/// The inputs the vector kernel can read as broadcast rows or columns (Variant::rows / cols)
/// when the layout rules it out only through them; the outputs are full, and the last
/// collapsed dimension's extent is a multiple of the group (so a group lies in one row). A
/// row input (bias[N] over [M, N]) has that dimension contiguous and its other strides whole
/// 16-byte vectors; a column input (rstd[M, 1] over [M, N]) has stride 0 there: one element
/// per group. Other strides non-negative. Both masks 0 otherwise. (A bias[N] added to [M, N]
/// had run on the strided kernel at 29% of copy: an integer division chain and a 2-byte
/// load per element.)
BroadcastInputs broadcast_inputs(const FusedDesc& d, const Layout& L) {
  const size_t ni = d.inputs.size();
  if (L.vec_ok || L.packed || L.nd < 2 || ni > 32) return {};
  int min_bytes = 16;
  BroadcastInputs b;
  for (size_t k = 0; k < L.cls.size(); ++k) {
    const Dtype dt = k < ni ? d.inputs[k].dtype : d.outputs[k - ni].dtype;
    if (k >= ni && L.cls[k] != Layout::Class::full) return {};
    if (L.cls[k] == Layout::Class::scalar) continue;
    const int64_t last = L.strides[k][L.nd - 1];
    if (L.cls[k] == Layout::Class::full || last == 1)  // vectors of this operand
      min_bytes = std::min(min_bytes, elem_bytes(dt));
    if (L.cls[k] == Layout::Class::full) continue;
    if (last == 1)
      b.rows |= 1u << k;
    else if (last == 0)
      b.cols |= 1u << k;
    else
      return {};
  }
  const int64_t group = 16 / min_bytes;
  if (L.extent[L.nd - 1] % group != 0) return {};
  for (size_t k = 0; k < ni; ++k) {
    const bool row = ((b.rows >> k) & 1u) != 0, col = ((b.cols >> k) & 1u) != 0;
    if (!row && !col) continue;
    const int64_t per = row ? 16 / elem_bytes(d.inputs[k].dtype) : 1;
    for (int i = 0; i + 1 < L.nd; ++i)
      if (L.strides[k][i] < 0 || L.strides[k][i] % per != 0) return {};
  }
  return b;
}

}  // namespace lowbit::fusion
