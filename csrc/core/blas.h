// Matrix products for the time loops and the driver (blas.cpp).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace torch_ext {

// out = a @ b, or out += a @ b with `accumulate`. On CPU the rows of `out` are
// split into blocks fixed by the shape alone, computed in parallel, each by one
// single-threaded BLAS call, so the result is bitwise the same for any number
// of threads (a multi-threaded BLAS call splits the inner dimension according
// to its thread count). On other devices: one plain ATen product.
void deterministic_mm_out(at::Tensor out, const at::Tensor& a, const at::Tensor& b,
                          bool accumulate = false);
// a and b may also be bfloat16 or float16 (CPU, where low_precision_products
// says so): then each piece is MKL's product with float32 accumulation and
// `out` (deterministic_mm's result) is float32.
at::Tensor deterministic_mm(const at::Tensor& a, const at::Tensor& b);

// Whether the dense products of a call with this x (bfloat16 or float16 on
// CPU, with MKL's low-precision products present) run in x's dtype with
// float32 accumulation; otherwise they run in the compute dtype.
bool low_precision_products(const at::Tensor& x);

// Makes BLAS calls on this thread single-threaded while alive. MKL picks how to
// split a product from the thread count it may use, even inside a parallel
// region, so a fixed count of one is what makes its results reproducible.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas();
  ~SingleThreadedBlas();
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int previous_;
};

// c[m, n] = a[m, k] @ b[k, n] + beta * c, row-major with leading dimensions,
// computed by BLAS on the calling thread without going through the dispatcher
// (for the CPU time loops: one small product per step). Call it under a
// SingleThreadedBlas guard.
template <typename T>
void gemm_on_this_thread(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                         int64_t ldb, T beta, T* c, int64_t ldc);

}  // namespace torch_ext
