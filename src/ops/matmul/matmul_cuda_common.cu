// Host helpers of the CUDA matmul kernels: preparing the tc16x128 layout, device checks, and
// the cuBLASLt calls (one handle per device, algorithms cached per problem).
#include <algorithm>
#include <array>
#include <map>
#include <mutex>
#include <vector>

#include "core/cuda_runtime.hpp"
#include "ops/matmul/matmul_cuda_common.cuh"
#include "ops/quantize/quantize_kernels.hpp"

namespace lowbit::mm_cuda {
namespace {

void check_lt(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw_error(ErrorCode::device_error, std::string("cuBLASLt ") + what + ": status " +
                                             std::to_string(static_cast<int>(st)));
}

cublasLtHandle_t lt_handle(int device) {
  static std::mutex mutex;
  static std::array<cublasLtHandle_t, 64> handles{};
  std::lock_guard<std::mutex> lock(mutex);
  if (!handles[device]) {
    DeviceScope scope(device);
    check_lt(cublasLtCreate(&handles[device]), "cublasLtCreate");
  }
  return handles[device];
}

/// Descriptors of one call, destroyed with it.
struct LtDescs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  LtDescs() = default;
  LtDescs(const LtDescs&) = delete;
  LtDescs& operator=(const LtDescs&) = delete;
  ~LtDescs() {
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

void make_descs(const LtGemm& g, LtDescs& s) {
  check_lt(cublasLtMatmulDescCreate(&s.op, g.compute, g.scale_type), "MatmulDescCreate");
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  check_lt(cublasLtMatmulDescSetAttribute(s.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta),
           "TRANSA");
  check_lt(cublasLtMatmulDescSetAttribute(s.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb),
           "TRANSB");
  if (g.a_scale_mode >= 0) {
    const int32_t mode = g.a_scale_mode;
    check_lt(
        cublasLtMatmulDescSetAttribute(s.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof mode),
        "A_SCALE_MODE");
  }
  if (g.b_scale_mode >= 0) {
    const int32_t mode = g.b_scale_mode;
    check_lt(
        cublasLtMatmulDescSetAttribute(s.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof mode),
        "B_SCALE_MODE");
  }
  if (g.bias) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    check_lt(cublasLtMatmulDescSetAttribute(s.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi),
             "EPILOGUE");
    const int32_t bt = g.bias_type;
    check_lt(
        cublasLtMatmulDescSetAttribute(s.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt),
        "BIAS_DATA_TYPE");
  }
  // A = w: k x n column-major (rows of w are contiguous), used transposed.
  check_lt(cublasLtMatrixLayoutCreate(&s.a, g.a_type, static_cast<uint64_t>(g.k),
                                      static_cast<uint64_t>(g.n), g.lda),
           "layout A");
  check_lt(cublasLtMatrixLayoutCreate(&s.b, g.b_type, static_cast<uint64_t>(g.k),
                                      static_cast<uint64_t>(g.m), g.ldb),
           "layout B");
  check_lt(cublasLtMatrixLayoutCreate(&s.d, g.d_type, static_cast<uint64_t>(g.n),
                                      static_cast<uint64_t>(g.m), g.ldd),
           "layout D");
}

struct AlgoEntry {
  bool ok = false;
  std::string why;
  cublasLtMatmulAlgo_t algo{};
};

const AlgoEntry& algo_for(const LtGemm& g) {
  static std::mutex mutex;
  static std::map<std::string, AlgoEntry> cache;
  const std::string key = g.key();
  {
    std::lock_guard<std::mutex> lock(mutex);
    const auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  AlgoEntry e;
  try {
    DeviceScope scope(g.device);
    LtDescs s;
    make_descs(g, s);
    cublasLtMatmulPreference_t pref = nullptr;
    check_lt(cublasLtMatmulPreferenceCreate(&pref), "PreferenceCreate");
    const uint64_t ws = kLtWorkspace;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                         sizeof ws);
    const uint32_t align = static_cast<uint32_t>(g.align);
    for (const auto attr :
         {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
          CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
      cublasLtMatmulPreferenceSetAttribute(pref, attr, &align, sizeof align);
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt_handle(g.device), s.op, s.a, s.b,
                                                             s.d, s.d, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
      e.why = "cuBLASLt has no algorithm for it on this device (heuristic status " +
              std::to_string(static_cast<int>(st)) + ", " + std::to_string(found) + " found)";
    } else {
      e.ok = true;
      e.algo = result.algo;
    }
  } catch (const Error& err) {
    e.why = err.what();
  }
  std::lock_guard<std::mutex> lock(mutex);
  return cache.emplace(key, e).first->second;
}

}  // namespace

std::string LtGemm::key() const {
  return std::to_string(device) + ":" + std::to_string(a_type) + "," + std::to_string(b_type) +
         "," + std::to_string(d_type) + "," + std::to_string(compute) + "," +
         std::to_string(scale_type) + ":" + std::to_string(n) + "x" + std::to_string(m) + "x" +
         std::to_string(k) + ":" + std::to_string(lda) + "," + std::to_string(ldb) + "," +
         std::to_string(ldd) + ":" + std::to_string(a_scale_mode) + "," +
         std::to_string(b_scale_mode) + ":" + (bias ? std::to_string(bias_type) : "-") + ":" +
         std::to_string(align);
}

bool lt_available(const LtGemm& g, std::string* why) {
  const AlgoEntry& e = algo_for(g);
  if (!e.ok && why) *why = e.why;
  return e.ok;
}

namespace {
int pointer_align(const void* p) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  int a = 256;
  while (a > 1 && v % static_cast<uintptr_t>(a) != 0) a /= 2;
  return a;
}
}  // namespace

void lt_run(const LtGemm& g0, const void* a, const void* b, void* d, const void* bias,
            const void* a_scale, const void* b_scale, const void* alpha, void* workspace,
            size_t workspace_bytes, cudaStream_t stream) {
  LtGemm g = g0;
  for (const void* p : {a, b, static_cast<const void*>(d)})
    g.align = std::min(g.align, pointer_align(p));
  if (g.bias) g.align = std::min(g.align, pointer_align(bias));
  const AlgoEntry& e = algo_for(g);
  if (!e.ok) throw_error(ErrorCode::unsupported, "matmul: " + e.why);
  LtDescs s;
  make_descs(g, s);
  if (g.bias)
    check_lt(
        cublasLtMatmulDescSetAttribute(s.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias),
        "BIAS_POINTER");
  if (a_scale)
    check_lt(cublasLtMatmulDescSetAttribute(s.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale,
                                            sizeof a_scale),
             "A_SCALE_POINTER");
  if (b_scale)
    check_lt(cublasLtMatmulDescSetAttribute(s.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scale,
                                            sizeof b_scale),
             "B_SCALE_POINTER");
  const int32_t zero_i = 0;
  const float zero_f = 0.0f;
  const void* beta = g.scale_type == CUDA_R_32I ? static_cast<const void*>(&zero_i)
                                                : static_cast<const void*>(&zero_f);
  DeviceScope scope(g.device);
  check_lt(cublasLtMatmul(lt_handle(g.device), s.op, alpha, a, s.a, b, s.b, beta, d, s.d, d, s.d,
                          &e.algo, workspace, workspace_bytes, stream),
           "Matmul");
}

cudaDataType_t cuda_type(Dtype d) {
  switch (d) {
    case Dtype::f32:
      return CUDA_R_32F;
    case Dtype::f16:
      return CUDA_R_16F;
    case Dtype::bf16:
      return CUDA_R_16BF;
    case Dtype::i8:
      return CUDA_R_8I;
    case Dtype::i32:
      return CUDA_R_32I;
    case Dtype::f8e4m3fn:
      return CUDA_R_8F_E4M3;
    case Dtype::f8e5m2:
      return CUDA_R_8F_E5M2;
    default:
      throw_error(ErrorCode::internal,
                  "matmul: no CUDA data type for " + std::string(dtype_name(d)));
  }
}

// ---- prepared layout ---------------------------------------------------------------------------

TcPlan tc_plan(const MatmulDesc& d) {
  std::string why;
  const auto f = tc::format_of(d.w, d.n, d.k, &why);
  if (!f) throw_error(ErrorCode::internal, "matmul: " + why);
  return {*f, tc::layout_of(*f, d.n, d.k)};
}

void tc_prepare(const MatmulDesc& d, const QuantizedView& w, const TensorView& packed,
                const Stream& stream) {
  const TcPlan p = tc_plan(d);
  auto to_host = [&](const TensorView& v) {
    std::vector<uint8_t> h;
    if (!v.data() || v.numel() == 0) return h;
    h.resize(static_cast<size_t>(storage_bytes(v.dtype(), v.numel())));
    cuda_rt::copy(d.device.index, h.data(), v.data(), h.size(), stream.native_handle(), true);
    return h;
  };
  const std::vector<uint8_t> codes = to_host(w.codes);
  const std::vector<uint8_t> scale = to_host(w.scale);
  const std::vector<uint8_t> zero = to_host(w.zero);
  const std::vector<uint8_t> global = to_host(w.global_scale);
  std::vector<uint8_t> out(static_cast<size_t>(p.layout.bytes));
  tc::prepare_host(d.w, p.format, p.layout, codes.data(), scale.empty() ? nullptr : scale.data(),
                   zero.empty() ? nullptr : reinterpret_cast<const int32_t*>(zero.data()),
                   global.empty() ? nullptr : reinterpret_cast<const float*>(global.data()),
                   out.data());
  cuda_rt::copy(d.device.index, packed.data(), out.data(), out.size(), stream.native_handle(),
                true);
}

size_t x_quant_bytes(const MatmulDesc& d) {
  if (!d.x_scheme || d.x_quantized()) return 0;
  const Shape xs{d.m, d.k};
  return align_up(static_cast<size_t>(storage_bytes(d.x_scheme->code_dtype(), d.m * d.k)), 256) +
         align_up(static_cast<size_t>(numel(scale_shape(*d.x_scheme, xs))) * 4 + 4, 256);
}

QuantizedView activations(const MatmulDesc& d, const MatmulArgs& a, void* ws,
                          const Stream& stream) {
  if (d.x_quantized()) return a.xq;
  const QuantScheme& s = *d.x_scheme;
  const Shape shape{d.m, d.k};
  auto* p = static_cast<uint8_t*>(ws);
  QuantizedView q;
  q.scheme = s;
  q.shape = shape;
  q.codes = TensorView(p, s.code_dtype(), shape, d.device);
  p += align_up(static_cast<size_t>(storage_bytes(s.code_dtype(), d.m * d.k)), 256);
  q.scale =
      TensorView(p, s.is_integer() ? s.scale_dtype : Dtype::f32, scale_shape(s, shape), d.device);
  const TensorView xv(a.x.data(), d.x, shape, Strides{d.x_stride(), 1}, d.device);
  QuantizeDesc qd = QuantizeDesc::for_views(q, xv);
  qd.check_finite = false;
  quantize_cuda_kernel().run(qd, QuantizeArgs{xv, q}, stream, {});
  return q;
}

int sm_count(int device) {
  static std::mutex mutex;
  static std::array<int, 64> sms{};
  std::lock_guard<std::mutex> lock(mutex);
  if (sms[device] == 0) {
    int v = 0;
    check_cuda(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device),
               "cudaDeviceGetAttribute");
    sms[device] = v;
  }
  return sms[device];
}

std::string cuda_arch(int device) {
  const CudaDeviceProperties p = cuda_device_properties(device);
  return "sm_" + std::to_string(p.sm_major) + std::to_string(p.sm_minor);
}

std::string cuda_device_decline(const MatmulDesc& d, const void* probe_kernel) {
  if (!d.device.is_cuda()) return "runs on CUDA devices only";
  static std::mutex mutex;
  static std::map<std::pair<int, const void*>, std::string> cache;
  const std::pair<int, const void*> key{d.device.index, probe_kernel};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it == cache.end()) {
    std::string why;
    const CudaDeviceProperties p = cuda_device_properties(d.device.index);
    if (p.sm_major < 9) {
      why = "needs sm_90 or newer (this is sm_" + std::to_string(p.sm_major) +
            std::to_string(p.sm_minor) + ")";
    } else {
      DeviceScope scope(d.device.index);
      cudaFuncAttributes attr{};
      const cudaError_t err = cudaFuncGetAttributes(&attr, probe_kernel);
      if (err != cudaSuccess) {
        cudaGetLastError();
        why = std::string("this build has no kernel image for this device (") +
              cudaGetErrorName(err) + "; add it to LOWBIT_CUDA_ARCHS)";
      }
    }
    it = cache.emplace(key, why).first;
  }
  return it->second;
}

}  // namespace lowbit::mm_cuda
