// Matrix products: BLAS on the calling thread for the CPU loops, and
// products split so that their results do not depend on the thread count.
#include "blas.h"
#include "buffers.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/record_function.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace torch_ext {

// MKL's C entry point (mkl_service.h maps mkl_set_num_threads_local to it) and
// the Fortran BLAS products, which torch's x86-64 wheels export from their
// statically linked MKL; weak, so builds on other BLAS libraries load without
// them (and use ATen's product instead).
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
extern "C" void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*,
                       const float*, const int*, const float*, const int*, const float*, float*,
                       const int*) __attribute__((weak));
extern "C" void dgemm_(const char*, const char*, const int*, const int*, const int*,
                       const double*, const double*, const int*, const double*, const int*,
                       const double*, double*, const int*) __attribute__((weak));

// MKL's products of bfloat16 / float16 operands into a float32 result with
// float32 accumulation (cblas, row-major), exported by the same wheels; weak
// like the above: without them low-precision inputs compute in float32.
extern "C" void cblas_gemm_bf16bf16f32(int layout, int trans_a, int trans_b, int m, int n, int k,
                                       float alpha, const uint16_t* a, int lda, const uint16_t* b,
                                       int ldb, float beta, float* c, int ldc)
    __attribute__((weak));
extern "C" void cblas_gemm_f16f16f32(int layout, int trans_a, int trans_b, int m, int n, int k,
                                     float alpha, const uint16_t* a, int lda, const uint16_t* b,
                                     int ldb, float beta, float* c, int ldc) __attribute__((weak));

namespace {

bool cpuid_has_low_precision_instructions(at::ScalarType dtype) {
#if defined(__x86_64__) && defined(__GNUC__)
  // CPUID leaf 7: sub-leaf 0 EDX bit 22 AMX-BF16, bit 23 AVX512-FP16;
  // sub-leaf 1 EAX bit 5 AVX512-BF16, bit 21 AMX-FP16.
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  const unsigned leaf0_edx = edx, max_subleaf = eax;
  unsigned leaf1_eax = 0;
  if (max_subleaf >= 1 && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) leaf1_eax = eax;
  if (dtype == at::kBFloat16) return (leaf0_edx >> 22 & 1u) || (leaf1_eax >> 5 & 1u);
  if (dtype == at::kHalf) return (leaf0_edx >> 23 & 1u) || (leaf1_eax >> 21 & 1u);
#else
  (void)dtype;
#endif
  return false;
}

}  // namespace

bool cpu_has_low_precision_instructions(at::ScalarType dtype) {
  // (CPUID traps to the hypervisor in a VM: asked once.)
  static const bool bf16 = cpuid_has_low_precision_instructions(at::kBFloat16);
  static const bool f16 = cpuid_has_low_precision_instructions(at::kHalf);
  return dtype == at::kBFloat16 ? bf16 : dtype == at::kHalf ? f16 : false;
}

bool low_precision_products_present(at::ScalarType dtype, at::DeviceType device) {
  if (device == at::kCUDA) {
#if defined(WITH_CUDA) && TORCH_EXT_HAS_MM_OUT_DTYPE
    return is_low_precision(dtype);
#else
    return false;
#endif
  }
  return device == at::kCPU && (dtype == at::kBFloat16 ? cblas_gemm_bf16bf16f32 != nullptr
                                : dtype == at::kHalf   ? cblas_gemm_f16f16f32 != nullptr
                                                       : false);
}

LowPrecisionPath low_precision_path(at::ScalarType dtype, at::DeviceType device) {
  const char* mode = std::getenv("TORCH_EXT_LOW_PRECISION_PRODUCTS");
  const std::string asked = mode == nullptr ? "" : mode;
  TORCH_CHECK_VALUE(asked.empty() || asked == "auto" || asked == "on" || asked == "off",
                    "TORCH_EXT_LOW_PRECISION_PRODUCTS must be auto, on or off, got '", asked,
                    "'");
  if (!low_precision_products_present(dtype, device) || asked == "off") {
    return LowPrecisionPath::kFloat32;
  }
  if (asked == "on") return LowPrecisionPath::kLowPrecision;
  // auto. CPU: MKL's products where the CPU has instructions for them.
  // Without them MKL converts the operands to float32 as it packs them, which
  // measured no faster than float32 products of the rounded operands (and
  // slower at T=200, B=32, F=N=512 on an AVX2 CPU), so those are taken.
  // CUDA: the float32 products until a GPU run has checked the tensor-core
  // path (benchmarks/gpu_check.sh runs the CUDA tests with it on).
  return device == at::kCPU && cpu_has_low_precision_instructions(dtype)
             ? LowPrecisionPath::kLowPrecision
             : LowPrecisionPath::kFloat32;
}

namespace {

// float32 -> bfloat16 -> float32 in registers: round to nearest even on the
// bits (what c10::BFloat16 does, written so that the compiler vectorises
// it), NaN to bfloat16's canonical quiet NaN.
TORCH_EXT_CPU_CLONES void round_to_bfloat16(const float* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, &src[i], sizeof(u));
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    const uint32_t out = (u & 0x7fffffffu) > 0x7f800000u ? 0x7fc00000u : rounded;
    std::memcpy(&dst[i], &out, sizeof(out));
  }
}

}  // namespace

void round_through_into(const at::Tensor& x, at::ScalarType dtype, at::Tensor& out) {
  TORCH_INTERNAL_ASSERT(x.is_cpu() && x.scalar_type() == at::kFloat && out.is_contiguous() &&
                        (out.scalar_type() == at::kFloat || out.scalar_type() == dtype) &&
                        out.numel() == x.numel() && is_low_precision(dtype));
  // A dtype conversion, named for profiles (benchmarks/mixed_precision.py).
  RECORD_FUNCTION("torch_ext::rounded_through", std::vector<c10::IValue>{});
  if (out.scalar_type() == dtype) {  // a conversion: ATen's (vectorised, bound by memory)
    out.view(x.sizes()).copy_(x);
    return;
  }
  if (dtype == at::kHalf) {  // ATen's vectorised conversions
    out.view(x.sizes()).copy_(x.to(dtype));
    return;
  }
  const at::Tensor in = x.contiguous();
  const float* src = in.const_data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, in.numel(), int64_t{1} << 16, [&](int64_t begin, int64_t end) {
    round_to_bfloat16(src + begin, dst + begin, end - begin);
  });
}

at::Tensor rounded_to(const at::Tensor& x, at::ScalarType dtype) {
  if (!(x.is_cpu() && x.scalar_type() == at::kFloat && is_low_precision(dtype))) {
    return x.to(dtype);
  }
  at::Tensor out = empty_buffer(x.sizes(), x.options().dtype(dtype));
  round_through_into(x, dtype, out);
  return out;
}

at::Tensor empty_rows_aligned_as_whole(int64_t rows, int64_t cols, int64_t first,
                                       const at::TensorOptions& options) {
  // Elements per 64 bytes, the CPU allocator's alignment.
  const int64_t per_line = 64 / static_cast<int64_t>(c10::elementSize(options.dtype().toScalarType()));
  const int64_t offset = (first * cols) % per_line;
  return empty_buffer({rows * cols + per_line}, options).narrow(0, offset, rows * cols).view({rows, cols});
}

bool low_precision_products(at::ScalarType dtype, const at::Device& device) {
  return low_precision_path(dtype, device.type()) == LowPrecisionPath::kLowPrecision;
}

namespace {

// out (float32, row-major) = a @ b (+ out with accumulate), a and b bfloat16
// or float16 2-d views, by one MKL call on this thread.
void low_precision_mm_on_this_thread(at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                                     bool accumulate) {
  static constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
  const int64_t m = out.size(0), n = out.size(1), k = a.size(1);
  if (m == 0 || n == 0) return;
  if (k == 0) {  // an empty sum (MKL would reject the leading dimensions)
    if (!accumulate) out.zero_();
    return;
  }
  // (trans, leading dimension) of a view MKL can read as it is: row-major
  // (unit stride along a row, rows at least a row apart) or column-major; a
  // dimension of size 1 has stride 1 in either reading, so the other stride
  // decides. Other views are copied.
  auto layout = [](const at::Tensor& t) -> std::optional<std::pair<int, int64_t>> {
    const int64_t rows = t.size(0), cols = t.size(1);
    if (t.stride(1) == 1 && (rows == 1 || t.stride(0) >= cols)) {
      return std::make_pair(kNoTrans, std::max<int64_t>(rows == 1 ? cols : t.stride(0), 1));
    }
    if (t.stride(0) == 1 && (cols == 1 || t.stride(1) >= rows)) {
      return std::make_pair(kTrans, std::max<int64_t>(cols == 1 ? rows : t.stride(1), 1));
    }
    return std::nullopt;
  };
  auto readable = [&](const at::Tensor& t) { return layout(t) ? t : t.contiguous(); };
  const at::Tensor a_c = readable(a), b_c = readable(b);
  const auto [trans_a, lda] = *layout(a_c);
  const auto [trans_b, ldb] = *layout(b_c);
  const int64_t ldc = m == 1 ? n : out.stride(0);
  const int64_t largest = std::max({m, n, k, lda, ldb, ldc});
  TORCH_INTERNAL_ASSERT((n == 1 || out.stride(1) == 1) && ldc >= n &&
                        largest <= std::numeric_limits<int>::max());
  const auto gemm =
      a.scalar_type() == at::kBFloat16 ? cblas_gemm_bf16bf16f32 : cblas_gemm_f16f16f32;
  gemm(kRowMajor, trans_a, trans_b, static_cast<int>(m), static_cast<int>(n),
       static_cast<int>(k), 1.0f, reinterpret_cast<const uint16_t*>(a_c.data_ptr()),
       static_cast<int>(lda), reinterpret_cast<const uint16_t*>(b_c.data_ptr()),
       static_cast<int>(ldb), accumulate ? 1.0f : 0.0f, out.data_ptr<float>(),
       static_cast<int>(ldc));
}

// One piece of deterministic_mm_out: ATen's product, or MKL's for
// low-precision operands (then out is float32).
void product_piece(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  if (is_low_precision(a.scalar_type())) {
    low_precision_mm_on_this_thread(out, a, b, accumulate);
  } else if (accumulate) {
    out.addmm_(a, b);
  } else {
    at::mm_out(out, a, b);
  }
}

}  // namespace

SingleThreadedBlas::SingleThreadedBlas()
    : previous_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0) {}
SingleThreadedBlas::~SingleThreadedBlas() {
  if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous_);
}

template <typename T>
void gemm_on_this_thread(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                         int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  constexpr bool is_float = std::is_same_v<T, float>;
  const bool have_blas = is_float ? sgemm_ != nullptr : dgemm_ != nullptr;
  const int64_t largest = std::max({m, n, k, lda, ldb, ldc});
  if (have_blas && largest <= std::numeric_limits<int>::max()) {
    // Row-major c = a @ b is column-major c.T = b.T @ a.T: swap the operands.
    const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
    const int LDA = static_cast<int>(ldb), LDB = static_cast<int>(lda), LDC = static_cast<int>(ldc);
    const T one = 1;
    if constexpr (is_float) {
      sgemm_("N", "N", &M, &N, &K, &one, b, &LDA, a, &LDB, &beta, c, &LDC);
    } else {
      dgemm_("N", "N", &M, &N, &K, &one, b, &LDA, a, &LDB, &beta, c, &LDC);
    }
    return;
  }
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  const at::Tensor a_t = at::from_blob(const_cast<T*>(a), {m, k}, {lda, 1}, opts);
  const at::Tensor b_t = at::from_blob(const_cast<T*>(b), {k, n}, {ldb, 1}, opts);
  at::Tensor c_t = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  if (beta == T(0)) {
    at::mm_out(c_t, a_t, b_t);
  } else {
    c_t.mul_(beta).addmm_(a_t, b_t);
  }
}
template void gemm_on_this_thread<float>(int64_t, int64_t, int64_t, const float*, int64_t,
                                         const float*, int64_t, float, float*, int64_t);
template void gemm_on_this_thread<double>(int64_t, int64_t, int64_t, const double*, int64_t,
                                          const double*, int64_t, double, double*, int64_t);

// ATen's bfloat16 brgemm and its packing (the macro is defined from torch 2.9 on).
#if defined(CPUBLAS_BRGEMM_BF16BF16F32)
#define TORCH_EXT_HAS_BRGEMM 1
#else
#define TORCH_EXT_HAS_BRGEMM 0
#endif
// Columns per packed block of W (oneDNN's packing of B refused wider blocks
// when tried at N = 512 on an AMX Xeon).
constexpr int64_t kPackedColumns = 64;

at::Tensor bfloat16_packed_columns(const at::Tensor& W) {
#if TORCH_EXT_HAS_BRGEMM
  const int64_t N = W.size(0);
  const bool bf16 = W.scalar_type() == at::kBFloat16;
  if (!W.is_cpu() || !(W.scalar_type() == at::kFloat || bf16) || W.dim() != 2 ||
      W.size(1) != N || N % kPackedColumns != 0 ||
      !at::native::cpublas::could_pack(at::kBFloat16)) {
    return at::Tensor();
  }
  const at::Tensor w16 = bf16 ? W.contiguous() : W.contiguous().to(at::kBFloat16);
  // (No NaN: a float32 W with one is never equal to its rounding.)
  if (bf16 ? w16.isnan().any().item<bool>() : !at::equal(w16.to(at::kFloat), W)) {
    return at::Tensor();
  }
  const int64_t blocks = N / kPackedColumns;
  at::Tensor packed = at::empty({blocks, N * kPackedColumns}, w16.options());
  try {  // (oneDNN throws where it cannot pack a shape: then the float32 product)
    for (int64_t j = 0; j < blocks; ++j) {
      at::native::cpublas::pack(N, kPackedColumns, N, kPackedColumns, at::kBFloat16,
                                at::kBFloat16, w16.const_data_ptr<c10::BFloat16>() + j * kPackedColumns,
                                packed[j].data_ptr());
    }
    // One product through it, so that a kernel oneDNN cannot make shows here
    // rather than inside the loop.
    std::vector<c10::BFloat16> row(N, c10::BFloat16(0.0f));
    std::vector<float> out(N);
    for (int64_t j = 0; j < blocks; ++j) {
      at::native::cpublas::brgemm(1, kPackedColumns, N, N, kPackedColumns, N, false, row.data(),
                                  packed[j].const_data_ptr<c10::BFloat16>(),
                                  out.data() + j * kPackedColumns, true);
    }
    at::native::cpublas::brgemm_release(true);
  } catch (const std::exception&) {
    return at::Tensor();
  }
  return packed;
#else
  (void)W;
  return at::Tensor();
#endif
}

void bfloat16_rows_product(const float* g, int64_t rows, int64_t N, const at::Tensor& packed,
                           const float* column_scale, c10::BFloat16* scratch, float* out) {
#if TORCH_EXT_HAS_BRGEMM
  if (column_scale == nullptr) {
    for (int64_t i = 0; i < rows * N; ++i) scratch[i] = c10::BFloat16(g[i]);  // round to nearest even
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t n = 0; n < N; ++n) {
        scratch[r * N + n] = c10::BFloat16(g[r * N + n] * column_scale[n]);
      }
    }
  }
  const c10::BFloat16* blocks = packed.const_data_ptr<c10::BFloat16>();
  for (int64_t j = 0; j < N / kPackedColumns; ++j) {
    at::native::cpublas::brgemm(rows, kPackedColumns, N, N, kPackedColumns, N, /*add_C=*/false,
                                scratch, blocks + j * N * kPackedColumns, out + j * kPackedColumns,
                                /*is_vnni=*/true);
  }
#else
  (void)g, (void)rows, (void)N, (void)packed, (void)column_scale, (void)scratch, (void)out;
  TORCH_INTERNAL_ASSERT(false, "bfloat16_rows_product without ATen's brgemm");
#endif
}

void release_matrix_instructions() {
#if TORCH_EXT_HAS_BRGEMM
  at::native::cpublas::brgemm_release(/*is_vnni=*/true);
#endif
}

void deterministic_mm_out(at::Tensor out, const at::Tensor& a_given, const at::Tensor& b_given,
                          bool accumulate, const OperandRows& a_rows, const OperandRows& b_rows,
                          const at::Tensor& bias) {
  auto whole = [](const OperandRows& rows, const at::Tensor& t) {
    return rows ? rows(t, 0) : t;
  };
  TORCH_INTERNAL_ASSERT(!(bias.defined() && accumulate));
  if (!out.device().is_cpu()) {
    const at::Tensor a = whole(a_rows, a_given), b = whole(b_rows, b_given);
    if (bias.defined()) {
      out.copy_(bias.expand_as(out));
      accumulate = true;
    }
    if (is_low_precision(a.scalar_type()) && out.scalar_type() == at::kFloat) {
#if TORCH_EXT_HAS_MM_OUT_DTYPE
      // Low-precision operands, float32 accumulation and result (tensor
      // cores). Not aten::addmm.dtype with out=: its out variant has had bugs
      // (pytorch#154086), and no GPU run has checked this path yet.
      const at::Tensor product = at::mm(a, b, at::kFloat);
      accumulate ? out.add_(product) : out.copy_(product);
      return;
#else
      TORCH_INTERNAL_ASSERT(false, "low-precision CUDA products need torch >= 2.8");
#endif
    }
    if (accumulate) {
      out.addmm_(a, b);
    } else {
      at::mm_out(out, a, b);
    }
    return;
  }
  TORCH_INTERNAL_ASSERT(out.is_contiguous());
  const int64_t rows = out.size(0), cols = out.size(1), inner = a_given.size(1);
  // Every split below is fixed by the shape alone, and every piece is one
  // single-threaded BLAS call, so the result does not depend on the thread
  // count. Pieces are few and large: each call packs its operands anew.
  const int64_t out_bytes = rows * cols * static_cast<int64_t>(out.element_size());
  const int64_t inner_chunks = std::min<int64_t>(
      {8, inner / 512, std::max<int64_t>(1, (int64_t{64} << 20) / std::max<int64_t>(out_bytes, 1))});
  if (inner >= 4 * rows && inner_chunks >= 2 && !bias.defined()) {
    // A long reduction into a small output (the weight gradients): split the
    // inner dimension into chunks, one partial product each, summed in order.
    // (Each chunk reads a slice of b's rows, converted there.)
    const at::Tensor a = whole(a_rows, a_given);
    const at::Tensor& b = b_given;
    const int64_t chunk = (inner + inner_chunks - 1) / inner_chunks;
    const int64_t chunks = (inner + chunk - 1) / chunk;
    at::Tensor partial = empty_buffer({chunks, rows, cols}, out.options());
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      // Worker threads do not inherit the caller's dispatch state: stay below autograd.
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      const SingleThreadedBlas single_threaded;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t first = i * chunk, count = std::min(chunk, inner - first);
        at::Tensor partial_i = partial[i];
        const at::Tensor b_piece = b.narrow(0, first, count);
        product_piece(partial_i, a.narrow(1, first, count),
                      b_rows ? b_rows(b_piece, first) : b_piece, false);
      }
    });
    for (int64_t i = 0; i < chunks; ++i) {
      if (i == 0 && !accumulate) {
        out.copy_(partial[0]);
      } else {
        out.add_(partial[i]);
      }
    }
    return;
  }
  // (Each block reads a slice of a's rows, converted there.)
  const at::Tensor& a = a_given;
  const at::Tensor b = whole(b_rows, b_given);
  const int64_t block = std::max<int64_t>(64, (rows + 7) / 8);
  const int64_t blocks = (rows + block - 1) / block;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const SingleThreadedBlas single_threaded;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t first = i * block, count = std::min(block, rows - first);
      at::Tensor out_rows = out.narrow(0, first, count);
      if (bias.defined()) out_rows.copy_(bias.expand_as(out_rows));
      const at::Tensor a_piece = a.narrow(0, first, count);
      product_piece(out_rows, a_rows ? a_rows(a_piece, first) : a_piece, b,
                    accumulate || bias.defined());
    }
  });
}

at::Tensor deterministic_mm(const at::Tensor& a, const at::Tensor& b) {
  const bool low = is_low_precision(a.scalar_type());
  at::Tensor out = empty_buffer({a.size(0), b.size(1)}, a.options().dtype(low ? at::kFloat : a.scalar_type()));
  deterministic_mm_out(out, a, b);
  return out;
}

namespace {

// Rows per task of the binary-input scan and forward gather: fixed, so that
// the work split does not depend on the thread count.
constexpr int64_t kBinaryRowsPerTask = 256;

// The gathers work on tiles of kTile columns of N, 8 vectors of 32 bytes (8
// AVX2 registers): a tile of the row being summed stays in registers while
// the selected rows add into it, and a tile of all rows of the other operand
// (rows * 256 bytes) stays in L2 while a task's rows use it. Every element
// still sums its terms in their order, so the tiling does not change the
// result. GCC's vector extensions spell the registers out: left to the
// auto-vectoriser, -O3 jams pairs of selected rows into a scalar loop.
template <typename scalar_t>
struct TileOf {
  typedef scalar_t Vec __attribute__((vector_size(32)));
  static constexpr int64_t kLanes = 32 / sizeof(scalar_t), kVecs = 8, kTile = kLanes * kVecs;
};
template <typename scalar_t>
constexpr int64_t kTile = TileOf<scalar_t>::kTile;

template <typename Vec, typename scalar_t>
inline Vec load_vec(const scalar_t* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}
template <typename Vec, typename scalar_t>
inline void store_vec(scalar_t* p, const Vec& v) {
  std::memcpy(p, &v, sizeof(Vec));
}

template <typename Mask>
inline bool any_lane(const Mask& m) {
  uint64_t words[sizeof(Mask) / 8];
  std::memcpy(words, &m, sizeof(Mask));
  uint64_t any = 0;
  for (uint64_t w : words) any |= w;
  return any != 0;
}

// Writes the columns of row's values that are not 0 (NaN included) to
// `found`, in order, and returns their count; -1 if a value is neither 0 nor
// 1. float and double compare a vector at a time (8 floats, 4 doubles), and
// only a vector holding a nonzero is read value by value: the scan costs
// about a load per vector at spike rates.
template <typename scalar_t>
TORCH_EXT_CPU_CLONES int64_t scan_binary_row(const scalar_t* __restrict__ row, int64_t cols,
                                             int32_t* __restrict__ found) {
  using value_t = at::opmath_type<scalar_t>;  // bfloat16/float16 compare as float
  int64_t count = 0, c = 0;
  bool other = false;
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
    using Vec = typename TileOf<scalar_t>::Vec;
    constexpr int64_t kLanes = TileOf<scalar_t>::kLanes;
    const Vec zero{};
    const Vec one = zero + 1;
    decltype(zero != zero) others{};
    for (; c + kLanes <= cols; c += kLanes) {
      const Vec v = load_vec<Vec>(row + c);
      const auto nonzero = v != zero;
      others |= nonzero & (v != one);
      if (any_lane(nonzero)) {
        for (int64_t j = c; j < c + kLanes; ++j) {
          if (row[j] != scalar_t(0)) found[count++] = static_cast<int32_t>(j);
        }
      }
    }
    other = any_lane(others);
  }
  for (; c < cols; ++c) {
    const value_t v = static_cast<value_t>(row[c]);
    if (v != value_t(0)) {
      other |= v != value_t(1);
      found[count++] = static_cast<int32_t>(c);
    }
  }
  return other ? -1 : count;
}

template <typename scalar_t>
std::optional<BinaryRows> binary_rows_of(const scalar_t* x, int64_t rows, int64_t cols,
                                         double max_density) {
  const double limit = max_density * static_cast<double>(rows) * static_cast<double>(cols);
  const int64_t tasks = (rows + kBinaryRowsPerTask - 1) / kBinaryRowsPerTask;
  BinaryRows out;
  out.rows = rows;
  out.cols = cols;
  out.offsets = at::zeros({rows + 1}, at::kLong);
  int64_t* offsets = out.offsets.data_ptr<int64_t>();
  std::vector<std::vector<int32_t>> task_active(tasks);
  // Set by the first task to meet a value that is neither 0 nor 1, or to push
  // the count of ones past the limit; the others then stop too.
  std::atomic<bool> give_up{false};
  std::atomic<int64_t> ones{0};
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> found(cols);
    for (int64_t task = begin; task < end && !give_up.load(std::memory_order_relaxed); ++task) {
      std::vector<int32_t>& active = task_active[task];
      const int64_t first = task * kBinaryRowsPerTask;
      const int64_t last = std::min(rows, first + kBinaryRowsPerTask);
      bool binary = true;
      for (int64_t r = first; r < last && binary; ++r) {
        const int64_t count = scan_binary_row(x + r * cols, cols, found.data());
        binary = count >= 0;
        if (binary) active.insert(active.end(), found.begin(), found.begin() + count);
        offsets[r + 1] = std::max<int64_t>(count, 0);
      }
      const int64_t total = ones.fetch_add(static_cast<int64_t>(active.size())) +
                            static_cast<int64_t>(active.size());
      if (!binary || static_cast<double>(total) > limit) give_up.store(true);
    }
  });
  if (give_up.load()) return std::nullopt;
  for (int64_t r = 0; r < rows; ++r) offsets[r + 1] += offsets[r];
  out.active = at::empty({offsets[rows]}, at::kInt);
  int32_t* next = out.active.data_ptr<int32_t>();
  for (const std::vector<int32_t>& active : task_active) {
    next = std::copy(active.begin(), active.end(), next);
  }
  return out;
}

// [n + 1] int64 offsets of a sorted index's groups: 0, then the running count
// of each value 0 .. n-1 of `index` (int32 or int64).
at::Tensor group_offsets(const at::Tensor& index, int64_t n) {
  at::Tensor offsets = at::zeros({n + 1}, index.options().dtype(at::kLong));
  offsets.narrow(0, 1, n).copy_(at::bincount(index, {}, n).cumsum(0));
  return offsets;
}

// CUDA: the same index from ATen passes (never reached on a GPU so far: the
// op gathers on CUDA only when asked to, driver.cpp).
std::optional<BinaryRows> binary_rows_cuda(const at::Tensor& x, double max_density) {
  const int64_t cols = x.size(-1), rows = x.numel() / cols;
  const at::Tensor x_2d = x.reshape({rows, cols});
  const at::Tensor nonzero = x_2d != 0;  // NaN included
  if (at::logical_and(nonzero, x_2d != 1).any().item<bool>()) return std::nullopt;
  const at::Tensor where = nonzero.nonzero();  // [ones, 2], row-major order
  const int64_t count = where.size(0);
  if (static_cast<double>(count) > max_density * static_cast<double>(rows) * cols) {
    return std::nullopt;
  }
  BinaryRows out;
  out.rows = rows;
  out.cols = cols;
  out.offsets = group_offsets(where.select(1, 0), rows);
  out.active = where.select(1, 1).to(at::kInt).contiguous();
  return out;
}

// o[0, width) += the rows `columns` of w (leading dimension ld), in order.
template <typename scalar_t>
TORCH_EXT_CPU_CLONES void add_selected_rows(scalar_t* __restrict__ o, const scalar_t* __restrict__ w,
                                            int64_t ld, const int32_t* __restrict__ columns,
                                            int64_t count, int64_t width) {
  using T = TileOf<scalar_t>;
  using Vec = typename T::Vec;
  if (width == T::kTile) {
    Vec acc[T::kVecs];
    for (int64_t v = 0; v < T::kVecs; ++v) acc[v] = load_vec<Vec>(o + v * T::kLanes);
    for (int64_t k = 0; k < count; ++k) {
      const scalar_t* row = w + static_cast<int64_t>(columns[k]) * ld;
      for (int64_t v = 0; v < T::kVecs; ++v) acc[v] += load_vec<Vec>(row + v * T::kLanes);
    }
    for (int64_t v = 0; v < T::kVecs; ++v) store_vec(o + v * T::kLanes, acc[v]);
    return;
  }
  for (int64_t k = 0; k < count; ++k) {  // the last, partial tile
    const scalar_t* __restrict__ row = w + static_cast<int64_t>(columns[k]) * ld;
    for (int64_t i = 0; i < width; ++i) o[i] += row[i];
  }
}

// The rows `targets` of out (leading dimension ld), [0, width) each, += g.
template <typename scalar_t>
TORCH_EXT_CPU_CLONES void add_to_selected_rows(scalar_t* __restrict__ out, int64_t ld,
                                               const scalar_t* __restrict__ g,
                                               const int32_t* __restrict__ targets, int64_t count,
                                               int64_t width) {
  using T = TileOf<scalar_t>;
  using Vec = typename T::Vec;
  if (width == T::kTile) {
    Vec add[T::kVecs];
    for (int64_t v = 0; v < T::kVecs; ++v) add[v] = load_vec<Vec>(g + v * T::kLanes);
    for (int64_t k = 0; k < count; ++k) {
      scalar_t* o = out + static_cast<int64_t>(targets[k]) * ld;
      for (int64_t v = 0; v < T::kVecs; ++v) {
        store_vec(o + v * T::kLanes, load_vec<Vec>(o + v * T::kLanes) + add[v]);
      }
    }
    return;
  }
  for (int64_t k = 0; k < count; ++k) {  // the last, partial tile
    scalar_t* __restrict__ o = out + static_cast<int64_t>(targets[k]) * ld;
    for (int64_t i = 0; i < width; ++i) o[i] += g[i];
  }
}

}  // namespace

std::optional<BinaryRows> binary_rows(const at::Tensor& x, double max_density) {
  if (!(x.is_cpu() || x.is_cuda()) || x.dim() == 0 || x.numel() == 0 ||
      x.size(-1) > std::numeric_limits<int32_t>::max() ||
      x.numel() / x.size(-1) > std::numeric_limits<int32_t>::max()) {
    return std::nullopt;
  }
#ifdef WITH_CUDA
  if (x.is_cuda()) return binary_rows_cuda(x, max_density);
#else
  if (!x.is_cpu()) return std::nullopt;
#endif
  const at::Tensor x_c = x.contiguous();
  const int64_t cols = x.size(-1), rows = x.numel() / cols;
  std::optional<BinaryRows> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "binary_rows", [&] {
    out = binary_rows_of(x_c.const_data_ptr<scalar_t>(), rows, cols, max_density);
  });
  return out;
}

void binary_mm_out(at::Tensor& out, const BinaryRows& x, const at::Tensor& w_t, bool accumulate) {
  const int64_t N = w_t.size(1);
  TORCH_INTERNAL_ASSERT(out.is_contiguous() && w_t.is_contiguous() && out.size(0) == x.rows &&
                        out.size(1) == N && w_t.size(0) == x.cols &&
                        w_t.scalar_type() == out.scalar_type());
  if (!accumulate) out.zero_();
#ifdef WITH_CUDA
  if (out.is_cuda()) return gather_rows_cuda(out, x.offsets, x.active, w_t);
#endif
  const int64_t* offsets = x.offsets.data_ptr<int64_t>();
  const int32_t* active = x.active.data_ptr<int32_t>();
  const int64_t tasks = (x.rows + kBinaryRowsPerTask - 1) / kBinaryRowsPerTask;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "binary_mm_out", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t* w = w_t.data_ptr<scalar_t>();
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      const int64_t first = begin * kBinaryRowsPerTask;
      const int64_t last = std::min(x.rows, end * kBinaryRowsPerTask);
      for (int64_t n0 = 0; n0 < N; n0 += kTile<scalar_t>) {
        const int64_t width = std::min(kTile<scalar_t>, N - n0);
        for (int64_t r = first; r < last; ++r) {
          add_selected_rows(o + r * N + n0, w + n0, N, active + offsets[r],
                            offsets[r + 1] - offsets[r], width);
        }
      }
    });
  });
}

BinaryRows BinaryRows::slice(int64_t first, int64_t count) const {
  TORCH_INTERNAL_ASSERT(first >= 0 && count >= 0 && first + count <= rows);
  const at::Tensor bounds = offsets.narrow(0, first, count + 1);
  const int64_t begin = offsets[first].item<int64_t>();
  const int64_t end = offsets[first + count].item<int64_t>();
  return {count, cols, bounds - begin, active.narrow(0, begin, end - begin)};
}

at::Tensor binary_t_mm(const BinaryRows& x, const at::Tensor& g) {
  const at::Tensor g_c = g.contiguous();
  const int64_t N = g.size(1);
  TORCH_INTERNAL_ASSERT(g.size(0) == x.rows);
  at::Tensor out = at::zeros({x.cols, N}, g.options());
#ifdef WITH_CUDA
  if (g.is_cuda()) {
    // The transposed index: the rows of each column's ones, in increasing
    // row order (a sort of the ones by column, then row).
    const at::Tensor row_of_one = at::repeat_interleave(
        at::arange(x.rows, x.offsets.options()), x.offsets.diff());
    const at::Tensor order = at::argsort(x.active.to(at::kLong) * x.rows + row_of_one);
    const at::Tensor rows_of = row_of_one.index_select(0, order).to(at::kInt).contiguous();
    gather_rows_cuda(out, group_offsets(x.active, x.cols), rows_of, g_c);
    return out;
  }
#endif
  const int64_t* offsets = x.offsets.data_ptr<int64_t>();
  const int32_t* active = x.active.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "binary_t_mm", [&] {
    constexpr int64_t tile = kTile<scalar_t>;
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t* rows = g_c.data_ptr<scalar_t>();
    // Each task owns a tile of columns of N and goes through the rows of g in
    // order, adding each to the output rows of its ones: every element sums
    // over r in increasing order, whatever the thread count.
    at::parallel_for(0, (N + tile - 1) / tile, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n0 = begin * tile; n0 < std::min(N, end * tile); n0 += tile) {
        const int64_t width = std::min(tile, N - n0);
        for (int64_t r = 0; r < x.rows; ++r) {
          add_to_selected_rows(o + n0, N, rows + r * N + n0, active + offsets[r],
                               offsets[r + 1] - offsets[r], width);
        }
      }
    });
  });
  return out;
}

}  // namespace torch_ext
