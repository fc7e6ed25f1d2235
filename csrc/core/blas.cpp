// Matrix products: BLAS on the calling thread for the CPU loops, and
// products split so that their results do not depend on the thread count.
#include "blas.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <utility>

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

bool low_precision_products(const at::Tensor& x) {
  if (!x.device().is_cpu()) return false;  // CUDA: not yet (no GPU has checked it)
  if (x.scalar_type() == at::kBFloat16) return cblas_gemm_bf16bf16f32 != nullptr;
  if (x.scalar_type() == at::kHalf) return cblas_gemm_f16f16f32 != nullptr;
  return false;
}

namespace {

// out (float32, row-major) = a @ b (+ out with accumulate), a and b bfloat16
// or float16 2-d views with one unit stride each, by one MKL call on this thread.
void low_precision_mm_on_this_thread(at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                                     bool accumulate) {
  constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
  const int64_t m = out.size(0), n = out.size(1), k = a.size(1);
  if (m == 0 || n == 0) return;
  auto layout = [&](const at::Tensor& t) {  // (trans, leading dimension)
    return t.stride(1) == 1 ? std::make_pair(kNoTrans, t.stride(0))
                            : std::make_pair(kTrans, t.stride(1));
  };
  const at::Tensor a_c = a.stride(1) == 1 || a.stride(0) == 1 ? a : a.contiguous();
  const at::Tensor b_c = b.stride(1) == 1 || b.stride(0) == 1 ? b : b.contiguous();
  const auto [trans_a, lda] = layout(a_c);
  const auto [trans_b, ldb] = layout(b_c);
  const int64_t largest = std::max({m, n, k, lda, ldb, out.stride(0)});
  TORCH_INTERNAL_ASSERT(out.stride(1) == 1 && largest <= std::numeric_limits<int>::max());
  const auto gemm =
      a.scalar_type() == at::kBFloat16 ? cblas_gemm_bf16bf16f32 : cblas_gemm_f16f16f32;
  gemm(kRowMajor, trans_a, trans_b, static_cast<int>(m), static_cast<int>(n),
       static_cast<int>(k), 1.0f, reinterpret_cast<const uint16_t*>(a_c.data_ptr()),
       static_cast<int>(std::max<int64_t>(lda, 1)),
       reinterpret_cast<const uint16_t*>(b_c.data_ptr()),
       static_cast<int>(std::max<int64_t>(ldb, 1)), accumulate ? 1.0f : 0.0f,
       out.data_ptr<float>(), static_cast<int>(out.stride(0)));
}

// One piece of deterministic_mm_out: ATen's product, or MKL's for
// low-precision operands (then out is float32).
void product_piece(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  if (a.scalar_type() == at::kBFloat16 || a.scalar_type() == at::kHalf) {
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

void deterministic_mm_out(at::Tensor out, const at::Tensor& a, const at::Tensor& b,
                          bool accumulate) {
  if (!out.device().is_cpu()) {
    if (accumulate) {
      out.addmm_(a, b);
    } else {
      at::mm_out(out, a, b);
    }
    return;
  }
  TORCH_INTERNAL_ASSERT(out.is_contiguous());
  const int64_t rows = out.size(0), cols = out.size(1), inner = a.size(1);
  // Every split below is fixed by the shape alone, and every piece is one
  // single-threaded BLAS call, so the result does not depend on the thread
  // count. Pieces are few and large: each call packs its operands anew.
  const int64_t out_bytes = rows * cols * static_cast<int64_t>(out.element_size());
  const int64_t inner_chunks = std::min<int64_t>(
      {8, inner / 512, std::max<int64_t>(1, (int64_t{64} << 20) / std::max<int64_t>(out_bytes, 1))});
  if (inner >= 4 * rows && inner_chunks >= 2) {
    // A long reduction into a small output (the weight gradients): split the
    // inner dimension into chunks, one partial product each, summed in order.
    const int64_t chunk = (inner + inner_chunks - 1) / inner_chunks;
    const int64_t chunks = (inner + chunk - 1) / chunk;
    at::Tensor partial = at::empty({chunks, rows, cols}, out.options());
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      // Worker threads do not inherit the caller's dispatch state: stay below autograd.
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      const SingleThreadedBlas single_threaded;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t first = i * chunk, count = std::min(chunk, inner - first);
        at::Tensor partial_i = partial[i];
        product_piece(partial_i, a.narrow(1, first, count), b.narrow(0, first, count), false);
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
  const int64_t block = std::max<int64_t>(64, (rows + 7) / 8);
  const int64_t blocks = (rows + block - 1) / block;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const SingleThreadedBlas single_threaded;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t first = i * block, count = std::min(block, rows - first);
      at::Tensor out_rows = out.narrow(0, first, count);
      product_piece(out_rows, a.narrow(0, first, count), b, accumulate);
    }
  });
}

at::Tensor deterministic_mm(const at::Tensor& a, const at::Tensor& b) {
  const bool low = a.scalar_type() == at::kBFloat16 || a.scalar_type() == at::kHalf;
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options().dtype(low ? at::kFloat : a.scalar_type()));
  deterministic_mm_out(out, a, b);
  return out;
}

}  // namespace torch_ext
