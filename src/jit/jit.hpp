// Internals of the element-wise fusion JIT, shared by src/jit/*.cpp.
//
//   expr.cpp          Expr nodes, the Program (evaluation order, casts made explicit), the
//                     canonical key, and the Layout (collapsed dims, operand classes)
//   promote.cpp       PyTorch's type promotion
//   fused_op.cpp      FusedDesc / FusedOp checks, the kernel list, fuse()
//   cpu_eval.cpp      the CPU kernel: tiled interpreter
//   codegen_cpu.cpp, cpu_compile.cpp, cpu_jit_kernel.cpp
//                     the CPU JIT: Program -> C++ -> shared object (cpu_jit.hpp)
//   codegen_cuda.cpp  Program + Layout -> CUDA source
//   nvrtc.cpp         CUDA source -> cubin (and PTX), with the NVRTC log on failure
//   module_cache.cpp  in-memory LRU + on-disk cache of cubins
//   kernel_table.cpp  the process's resolved kernels by program structure, variant, arch
//   launch.cpp        the CUDA kernel: driver API (dlopen'ed), module load, launch
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "lowbit/fusion.hpp"
#include "lowbit/quantize.hpp"

namespace lowbit::fusion {

// ---- types (promote.cpp) -------------------------------------------------------------

/// The static type of a value: a dtype, plus whether it is a comparison result (bool,
/// held as u8 in memory) and whether it is a scalar constant ("weak": it does not decide
/// the dtype of tensors it meets, as Python scalars in PyTorch).
struct Type {
  Dtype dtype = Dtype::f32;
  bool boolean = false;
  bool weak = false;
  friend bool operator==(const Type&, const Type&) = default;
};

/// The arithmetic type values of a dtype are computed in.
enum class Num : uint8_t { f32, f64 };

/// Whether `d` can be an operand dtype of an expression (every float, i8 u8 i16 i32 u32).
bool supported_dtype(Dtype d);
bool is_int(Dtype d);
/// f64 for f64 and integer dtypes (and scalars), f32 otherwise.
Num num_of(const Type& t);
/// The result type of a binary arithmetic op on a and b (PyTorch's rules).
Type promote(const Type& a, const Type& b);
/// The type of a floating-point op (exp, div, ...) on t: t if float, else f32.
Type to_float(const Type& t);
/// Smallest / largest value of an integer dtype.
double int_min(Dtype d);
double int_max(Dtype d);

// ---- the graph (expr.cpp) -------------------------------------------------------------

/// A node's operands (at most three), held in the node itself: building an expression
/// costs one allocation per op (this runs for every op of every expression a caller builds).
struct NodeArgs {
  std::array<std::shared_ptr<const Node>, 3> v;
  uint8_t n = 0;
  size_t size() const { return n; }
  const std::shared_ptr<const Node>& operator[](size_t i) const { return v[i]; }
  void push_back(std::shared_ptr<const Node> p) { v[n++] = std::move(p); }
  auto begin() const { return v.begin(); }
  auto end() const { return v.begin() + n; }
};

struct Node {
  Op op = Op::constant;
  Type type;
  NodeArgs args;
  double value = 0;                  ///< constant: the value; leaky_relu: slope; pow: exponent
  const TensorView* view = nullptr;  ///< input: the tensor (held by its InputNode)
};

/// An input's node: the tensor beside the node (ops' nodes, made per op of every expression,
/// stay small: 80 bytes instead of 248 to construct).
struct InputNode : Node {
  TensorView tensor;
};

/// One step of a Program. Operands are indices of earlier steps; every operand already
/// has the Num the step computes in (Op::cast steps are inserted where it changes).
struct Instr {
  Op op = Op::constant;
  Num num = Num::f32;        ///< the result's arithmetic type
  Num arg_num = Num::f32;    ///< the operands' (differs for compares, where's condition, casts)
  Dtype dtype = Dtype::f32;  ///< input: the tensor's dtype; cast: the target dtype
  int a = -1, b = -1, c = -1;
  int slot = -1;     ///< input: the input's index; constant: its index in constants
  double param = 0;  ///< pow: the exponent
};

struct Program {
  std::vector<Instr> code;
  std::vector<double> constants;  ///< constant values, f64 (kernel arguments)
  std::vector<int> outputs;       ///< per output: the step whose value it stores
  std::vector<Dtype> input_dtypes;
  std::vector<Dtype> output_dtypes;
  std::vector<TensorView> bound_inputs;
  std::vector<TensorView> bound_outputs;
  /// The DAG as text: steps with ops, dtypes and the pow exponents (constants' values are
  /// kernel arguments, so expressions that differ only in constants share a kernel). Made
  /// on first use: the launch path finds kernels it has resolved by structure_hash and
  /// same_structure, and needs the text only for a new kernel's cache key.
  const std::string& canonical() const;
  /// A hash of everything the canonical form is made from (code, outputs, the quantize
  /// epilogue), computed by build_program.
  size_t structure_hash = 0;
  /// True if `other` has the same steps (every field), outputs and epilogue: then their
  /// canonical forms are equal (a stricter test than the text: dtypes of arithmetic steps
  /// are compared too).
  bool same_structure(const Program& other) const;
  /// A step runs an f64 transcendental function (libm vs CUDA may differ in the last bit).
  bool f64_transcendental = false;
  /// The quantize epilogue (FusedOutput with a QuantizedView): the output whose value is
  /// quantized (its output dtype is the expression's dtype, f64 as f32), else -1.
  int quantized_output = -1;
  QuantScheme scheme;
  bool check_finite = true;
  QuantizedView bound_quantized;

 private:
  mutable std::mutex canonical_mutex_;
  mutable std::atomic<bool> canonical_ready_{false};
  mutable std::string canonical_;
};

/// Builds the program of writing each output's expression into a tensor of its dtype.
std::shared_ptr<const Program> build_program(const std::vector<FusedOutput>& outputs);
/// The same into `p`, a default-constructed Program (its lists may hold capacity: a
/// recycled descriptor's, fused_op.cpp).
void build_program(const std::vector<FusedOutput>& outputs, Program& p);
/// A new Program with `p`'s structure and constants (no bound tensors): what the table of
/// resolved kernels keeps (a descriptor's own program shares its allocation with the
/// descriptor's PlanState, which holds the table's kernels).
std::shared_ptr<const Program> structure_copy(const Program& p);

/// The iteration space of one call, collapsed: extent-1 dims dropped, dims that nest in
/// every operand merged. Operands are the inputs, then the outputs.
struct Layout {
  enum class Class : uint8_t { full, scalar, strided };
  int nd = 0;
  std::array<int64_t, kMaxDims> extent{};
  std::vector<std::array<int64_t, kMaxDims>> strides;  ///< per operand, in elements (0: broadcast)
  std::vector<Class> cls;  ///< full: row-major over the whole space; scalar: one element
  int64_t numel = 0;
  bool idx32 = true;    ///< every element index and operand offset fits in 31 bits
  bool packed = false;  ///< an operand is packed (f4e2m1)
  bool packed_out = false;
  /// Every operand is full or scalar (so nd <= 1) and none is packed: the vector path
  /// applies when the pointers are aligned.
  bool vec_ok = false;
};
Layout make_layout(const FusedDesc& desc);
/// The same into `layout`, reusing its lists' memory.
void make_layout(const FusedDesc& desc, Layout& layout);

// ---- the quantize epilogue (fused_op.cpp) ----------------------------------------------

/// Why the epilogue cannot quantize with `scheme` ("" if it can).
std::string quantize_epilogue_unsupported(const QuantScheme& scheme);
/// The quantize op's descriptor for the epilogue's values over `shape` (contiguous, the
/// program's output dtype), and a data-less source view of them.
QuantizeDesc quantize_desc(const FusedDesc& d, const Shape& shape);
TensorView quantize_src(const FusedDesc& d);
/// The message of a non-finite value at flat index `e` of the iteration space.
[[noreturn]] void throw_non_finite(const FusedDesc& d, int64_t e, bool nan);

// ---- CUDA (codegen_cuda.cpp, nvrtc.cpp, module_cache.cpp, launch.cpp) ------------------

/// Which kernel shape a call needs, beyond the program.
struct Variant {
  bool vec = false;  ///< 16-byte vector path (else strided)
  bool idx32 = true;
  int nd = 1;  ///< strided: collapsed dims
  std::vector<Layout::Class> cls;
  bool pair = false;  ///< strided: a thread computes element pairs (a packed output)
  /// The quantize epilogue: a block per row (vec: pass 1 in 16-byte vectors); qstore: codes
  /// of 4 elements per store (rows and blocks multiples of 4, codes 4-byte aligned).
  bool quant = false;
  bool qstore = false;
  /// The quantize epilogue with per-row groups held in registers: units of G elements per
  /// thread (codegen's quant_reg_kernel), 0 for the shared-memory kernel.
  int qreg = 0;
  /// nvfp4's first pass (with quant): the tensor's absmax of the quantized output's values
  /// into the word at Params::qamax (codegen's quant_stats_kernel); the row kernel then
  /// derives the global scale from it.
  bool qstats = false;
  /// The quantize epilogue with per-block groups of at most a warp's units, element-wise:
  /// a unit of G elements per thread, a group's lanes meet by shuffles (codegen's
  /// quant_lane_kernel; launched as the vector kernels are, launch_lanes).
  bool qlane = false;
  /// The quantize epilogue with per-row groups over rows longer than shared memory holds
  /// (vec only): the shared-memory kernel's shape, with the row's values not kept; its
  /// second pass evaluates the row again (codegen's quant_kernel).
  bool qrecompute = false;
  /// vec: inputs (bit k) of class strided read as 16-byte vectors of a contiguous last
  /// dimension broadcast over the others (a bias[N] over [M, N]): a group's offset from the
  /// collapsed extents and strides (Params ext / st), its vectors by plain cached loads.
  uint32_t rows = 0;
  /// vec: inputs (bit k) of class strided constant along the last dimension (a per-row
  /// scale [M, 1] over [M, N]): one element per group, at the group's offset.
  uint32_t cols = 0;
  /// FusedDesc::fast_math: approximate exp / division and contraction (other NVRTC flags).
  bool fast = false;
  std::string key() const;
  /// The statistics kernel (qstats) of the same path (vec / strided) as this epilogue kernel.
  Variant stats_variant() const {
    Variant s = *this;
    s.qstore = false;
    s.qreg = 0;
    s.qlane = false;
    s.qrecompute = false;
    s.qstats = true;
    return s;
  }
  friend bool operator==(const Variant&, const Variant&) = default;
};

/// Generated CUDA source and what launching it needs.
struct KernelSource {
  std::string name;  ///< "lowbit_fused" (the entry point)
  std::string code;
  int group = 1;        ///< vec: elements per thread step
  int unroll = 1;       ///< vec: groups in flight per thread
  int param_bytes = 0;  ///< size of the kernel's Params struct
  bool fast = false;    ///< compile with the fast-math flags (kFastFlags in nvrtc.cpp)
};
/// 4: mxfp4 epilogue codes by FP32 operations (lbq_mxfp4_code); bf16r's NaN case written out;
/// bf16q; JM_MINC. 5: the epilogue's finiteness check folded into the row's absmax (symmetric
/// per-row groups, shared-memory kernel); 6: the same in the register-row kernel; 7: the
/// row's check through the absmax reduction's own barrier, the check's host hand-off; (8: a
/// change measured and reverted); 9: the register-row kernel at 3 blocks per SM for rows of
/// up to 4 units per thread. 10: the epilogue records a deferred check's refusal itself;
/// 11: the vector kernel's stores with the evict-first hint (lbrt::stcs). 12: nvfp4
/// epilogues (the statistics kernel; Params::qamax / qglobal in every quantize epilogue).
/// 13: other outputs beside the quantized one; the lane and recomputing epilogue kernels.
inline constexpr int kCodegenVersion = 13;
inline constexpr int kThreads = 256;
/// The kernel of `program` for `variant` (with with_code false: only its shape fields).
KernelSource generate_cuda(const Program& program, const Variant& variant, bool with_code = true);
/// Fills the kernel's Params struct for one call into `buf` (resized; a buffer reused
/// across calls costs no allocation). The quantize epilogue's check: `flag` two device
/// words (the first bad element's complement, blocks done), `host` null or two words of
/// mapped host memory for the hand-off (codegen_cuda.cpp's hand_off). nvfp4: `amax` the
/// device word of the tensor's absmax bits (zero before the statistics kernel).
void pack_params(const Program& program, const Variant& variant, const Layout& layout,
                 const FusedArgs& args, void* flag, void* host, std::vector<unsigned char>& buf,
                 void* amax = nullptr);
inline std::vector<unsigned char> pack_params(const Program& program, const Variant& variant,
                                              const Layout& layout, const FusedArgs& args,
                                              void* flag = nullptr, void* host = nullptr,
                                              void* amax = nullptr) {
  std::vector<unsigned char> buf;
  pack_params(program, variant, layout, args, flag, host, buf, amax);
  return buf;
}
/// The quantize epilogue's row length (the last extent of the quantized shape).
int64_t quant_row(const Layout& layout, const Program& program, const QuantizedView& q);

/// The text of the headers generated code includes (numeric.hpp, the shared math, stubs).
struct HeaderSet {
  std::vector<std::string> names;
  std::vector<std::string> contents;
  uint64_t hash = 0;  ///< FNV-1a over all of them: part of every cache key
};
const HeaderSet& jit_headers();

/// NVRTC's version as "13.0", or "" when this build has no NVRTC.
std::string nvrtc_version();
/// The flags every compile uses (part of the cache key).
std::string nvrtc_flags();

struct Compiled {
  std::string key;        ///< the full cache key
  std::string hash;       ///< 16 hex digits of the key's FNV-1a (file names)
  std::string cubin;      ///< the binary
  std::string entry;      ///< the kernel's name in it
  double compile_ms = 0;  ///< 0 if it came from the disk cache
  std::string origin;     ///< "compiled", "disk" or "memory"
  /// Per-device loaded module (launch.cpp), filled lazily.
  mutable std::mutex load_mutex;
  mutable std::array<std::atomic<void*>, 16> loaded{};
};

/// Compiles `source` for `arch` ("sm_90a") to a cubin; throws Error(internal) with the
/// NVRTC log and where the source was written when it does not compile, and
/// Error(unsupported) without NVRTC. Writes source and PTX to $LOWBIT_JIT_DUMP if set.
std::string compile_cuda(const KernelSource& source, const std::string& arch,
                         const std::string& hash, double* milliseconds);

uint64_t fnv1a64(const void* data, std::size_t size, uint64_t seed = 0xcbf29ce484222325ull);
std::string hex64(uint64_t v);
/// True if LOWBIT_VERBOSE asks for jit logging.
bool jit_verbose();

/// Creates `dir` and its missing parents with mode 0700; "" if it cannot be used safely
/// (not a directory, another user's, writable by group or others: the caches load code
/// from it), with the reason in `why` (module_cache.cpp).
std::string prepare_dir(const std::string& dir, std::string& why);
/// Writes `bytes` to `path` (in `dir`) through a fresh private temporary file and a rename:
/// readers see the old file or the whole new one (module_cache.cpp).
bool write_entry(const std::string& dir, const std::string& path, const std::string& bytes,
                 std::string& why);
/// A HeaderSet of these headers, with its hash (codegen_cuda.cpp).
HeaderSet make_header_set(std::vector<std::string> names, std::vector<std::string> contents);

/// In-memory LRU of compiled kernels, in front of an on-disk cache.
class ModuleCache {
 public:
  struct Options {
    std::string dir;  ///< "" = $LOWBIT_CACHE_DIR, else $XDG_CACHE_HOME/lowbit, else ~/.cache/lowbit
    bool disk = true;
    std::size_t capacity = 256;  ///< kernels kept in memory
  };
  struct Stats {
    uint64_t memory_hits = 0;
    uint64_t disk_hits = 0;
    uint64_t compiles = 0;
    uint64_t corrupt = 0;  ///< disk entries that failed verification (recompiled)
    uint64_t disk_writes = 0;
    uint64_t evictions = 0;
  };
  explicit ModuleCache(Options options);
  ~ModuleCache();
  ModuleCache(const ModuleCache&) = delete;
  ModuleCache& operator=(const ModuleCache&) = delete;
  /// The process-wide cache.
  static ModuleCache& global();

  /// The full cache key of `source` for `arch`.
  static std::string key_for(const std::string& canonical, const std::string& arch);
  /// The kernel for `key`: from memory, else from disk (verified), else compiled by
  /// generating `source()` (then stored in both).
  std::shared_ptr<const Compiled> get(const std::string& key, const std::string& arch,
                                      const std::function<KernelSource()>& source) {
    if (auto hit = lookup(key)) return hit;
    return load_or_compile(key, arch, source);
  }
  std::shared_ptr<const Compiled> lookup(const std::string& key);
  /// The disk entry of `key`, else a compile of `source()` (called only then).
  std::shared_ptr<const Compiled> load_or_compile(const std::string& key, const std::string& arch,
                                                  const std::function<KernelSource()>& source);
  Stats stats() const;
  /// The directory entries live in ("" if the disk cache is off or unusable).
  const std::string& dir() const;
  /// The file of `key`'s entry.
  std::string entry_path(const std::string& key) const;
  void clear_memory();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- CPU helpers (cpu_eval.cpp) ----------------------------------------------------------

/// Output bytes from which the CPU kernels store with non-temporal stores.
int64_t nontemporal_bytes();
/// Per step of `p`: uniform (one value for every element: constants, scalar inputs, and
/// steps of uniform operands only).
std::vector<uint8_t> uniform_steps(const Program& p, const Layout& L);
/// The uniform steps' values for one call, computed as the CPU interpreter computes them
/// (the same bits): per step 8 bytes, a double for f64 steps, else a float in the first 4
/// bytes; 0 for the others.
void uniform_values(const Program& p, const FusedArgs& a, const std::vector<uint8_t>& uniform,
                    std::vector<double>& values);

/// The register-row quantize epilogue's limit in groups of G elements per thread (rows of
/// at most 256 * G * this many elements; 0: always the shared-memory row kernel). A knob
/// for benchmarks and tests, read when a plan first runs.
inline std::atomic<int> g_quant_reg_units{8};
/// Register-row kernels of at most this many groups per thread are compiled for 3 blocks
/// per SM (80 registers, no spills; codegen_cuda.cpp).
inline constexpr int kQuantRegCappedUnits = 4;
/// Whether exact programs take the register-row kernel (up to g_quant_reg_units) too; by
/// default they take the shared-memory row kernel, measured faster (launch.cpp). Tests turn
/// it on to check the register-row kernel's bits.
inline std::atomic<bool> g_quant_reg_exact{false};
/// Whether per-block epilogues whose groups span at most a warp's units take the
/// element-wise lane kernel (Variant::qlane; else the shared-memory row kernel). A knob for
/// benchmarks and tests.
inline std::atomic<bool> g_quant_lane{true};
/// Whether per-row epilogues take the recomputing row kernel (Variant::qrecompute) at any
/// row length, not only where a row outgrows shared memory. A knob for tests and benchmarks.
inline std::atomic<bool> g_quant_recompute_always{false};

/// A kernel resolved for one program structure, variant and arch: its binary, what
/// launching it needs, and (quantize epilogue) its occupancy once measured. Shared by every
/// descriptor of the same expression structure (kernel_table.cpp).
struct ResolvedKernel {
  std::shared_ptr<const Compiled> compiled;
  Variant variant;
  KernelSource shape;  ///< without code
  std::string arch;
  /// The program it was resolved for (compared by structure on lookup; its bound tensors
  /// are never used).
  std::shared_ptr<const Program> program;
  size_t hash = 0;
};

/// The kernel of `program` for `variant` and `arch`: from the process's table of resolved
/// kernels (a hash of the canonical form and the variant, then a full comparison: no cache
/// key string is built), else from the ModuleCache (memory, disk, or a compile), then
/// remembered. The table holds at most kResolvedCapacity kernels (it is emptied when full;
/// the ModuleCache stays the cache).
std::shared_ptr<const ResolvedKernel> resolve_kernel(const std::shared_ptr<const Program>& program,
                                                     const Variant& variant,
                                                     const std::string& arch);
inline constexpr size_t kResolvedCapacity = 1024;
/// Forgets every resolved kernel (ModuleCache::clear_memory() of the global cache calls it).
void clear_resolved_kernels();

/// Per-descriptor memory of the CUDA path: the layout and the kernel of each variant.
struct PlanState {
  // The layout, made by the first run: a flag and the mutex below rather than
  // std::call_once, whose first call on a fresh flag costs a futex system call (glibc's
  // pthread_once wakes waiters unconditionally), and every new descriptor has a fresh one.
  std::atomic<bool> layout_ready{false};
  Layout layout;
  std::mutex mutex;
  /// [vec, strided] (+ 2: the quantize epilogue's codes in vectors; 4: its register-row
  /// kernel; 5: its lane kernel; 6: its recomputing row kernel), + kSlots with fast math;
  /// set once, then read-only
  static constexpr int kSlots = 7;
  std::shared_ptr<const ResolvedKernel> kernels[2 * kSlots];
  /// nvfp4 epilogues' statistics kernels: vec / strided, + 2 with fast math.
  std::shared_ptr<const ResolvedKernel> stats_kernels[4];
  /// The quantize epilogue's blocks per SM (they depend on the row length: per descriptor).
  int quant_blocks_per_sm[2 * kSlots] = {};
  std::string arch;
  /// The CPU kernel's schedule (cpu_eval.cpp), made on first use.
  std::once_flag cpu_once;
  std::shared_ptr<const void> cpu_schedule;
  /// The compiled CPU kernel (cpu_jit_kernel.cpp): resolved once per descriptor.
  std::once_flag cpu_jit_once;
  std::shared_ptr<const void> cpu_jit;
  const Layout& get_layout(const FusedDesc& desc) {
    if (!layout_ready.load(std::memory_order_acquire)) {
      std::lock_guard<std::mutex> lock(mutex);
      if (!layout_ready.load(std::memory_order_relaxed)) {
        make_layout(desc, layout);
        layout_ready.store(true, std::memory_order_release);
      }
    }
    return layout;
  }
};

/// Bytes of one element of an operand of dtype `d` (codegen_cuda.cpp; the kernels' loads and
/// the vector path's group are sized by it).
int elem_bytes(Dtype d);

/// The inputs of class strided the vector kernel reads as broadcast rows and columns
/// (Variant::rows / cols), both 0 where the layout does not allow it (launch.cpp).
struct BroadcastInputs {
  uint32_t rows = 0, cols = 0;
};
BroadcastInputs broadcast_inputs(const FusedDesc& d, const Layout& L);

/// The host side of launching the element-wise kernel (not the quantize epilogue) of
/// `d` on `a`: the variant (vector path if every full operand is 16-byte aligned), its
/// kernel (resolved once per descriptor and slot, through resolve_kernel), and the
/// parameter block packed into `params`. No driver call: benchmarks time it without a GPU
/// (with $LOWBIT_JIT_ARCH set, the arch needs no device either). launch.cpp.
const ResolvedKernel& prepare_launch(const FusedDesc& d, const FusedArgs& a, const Layout& L,
                                     std::vector<unsigned char>& params);

/// Launches the lane epilogue kernel (Variant::qlane) over the layout's units (launch.cpp).
void launch_lanes(const Compiled& compiled, const KernelSource& shape,
                  const std::vector<unsigned char>& params, const Layout& layout, int device,
                  void* stream);

/// Launches nvfp4's statistics kernel (Variant::qstats) over the layout (launch.cpp).
void launch_stats(const Compiled& compiled, const KernelSource& shape, const Variant& variant,
                  const std::vector<unsigned char>& params, const Layout& layout, int device,
                  void* stream);

/// Launches `compiled` on desc's device (launch.cpp).
void launch_cuda(const Compiled& compiled, const KernelSource& shape, const Variant& variant,
                 const std::vector<unsigned char>& params, const Layout& layout, int device,
                 void* stream);

/// Starts NVRTC on a background thread, once per process: a compile of an empty kernel
/// with the JIT's headers, so that NVRTC's first-use start-up (loading its builtins and
/// initialising its compiler: about 95 ms of the first compile) is paid before the first
/// real compile. fusion::warm_up() (fusion.hpp) is the public entry point.
void start_nvrtc_warm_up();

}  // namespace lowbit::fusion

namespace lowbit {
/// "bf16,bf16->bf16": a descriptor's dtypes, for KernelSku (fused_op.cpp).
std::string fused_dtypes(const FusedDesc& desc);
// The kernels of the fused op (fused_op.cpp lists them).
const Kernel<FusedOp>& fused_cpu_kernel();      // cpu_eval.cpp
const Kernel<FusedOp>& fused_cpu_jit_kernel();  // cpu_jit_kernel.cpp
#if LOWBIT_HAS_CUDA
const Kernel<FusedOp>& fused_cuda_kernel();  // launch.cpp
#endif
}  // namespace lowbit
