// Matrix products for the time loops and the driver (blas.cpp).
#pragma once

#include <ATen/ATen.h>
#include <torch/version.h>

#include <cstdint>
#include <functional>
#include <optional>

// The extension is compiled for baseline x86-64 (SSE2); the CPU hot loops
// are cloned for these targets (GCC target_clones) and the loader picks the
// best one the CPU has.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TORCH_EXT_CPU_CLONE_TARGETS "avx512f", "avx2", "default"
#define TORCH_EXT_CPU_CLONES __attribute__((target_clones(TORCH_EXT_CPU_CLONE_TARGETS)))
#else
#define TORCH_EXT_CPU_CLONES
#endif

// torch >= 2.8 multiplies bfloat16/float16 CUDA operands into a float32
// result (aten::mm.dtype).
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8)
#define TORCH_EXT_HAS_MM_OUT_DTYPE 1
#else
#define TORCH_EXT_HAS_MM_OUT_DTYPE 0
#endif

namespace torch_ext {

// An operand given as rows, for a product that converts it piece by piece:
// rows(slice, first) returns the product's operand for the slice of rows
// [first, first + slice.size(0)) (a conversion or rounding, say), so that the
// converted operand is never written out whole (a pass and fresh memory).
using OperandRows = std::function<at::Tensor(const at::Tensor& slice, int64_t first)>;

// out = a @ b, or out += a @ b with `accumulate`. On CPU the rows of `out` are
// split into blocks fixed by the shape alone, computed in parallel, each by one
// single-threaded BLAS call, so the result is bitwise the same for any number
// of threads (a multi-threaded BLAS call splits the inner dimension according
// to its thread count). On other devices: one plain ATen product.
// a_rows / b_rows (optional) convert the pieces of a's / b's rows the
// products read; the result is the product of the converted operands as if
// converted whole into a fresh tensor, to the bit, where each converted piece
// lies as those rows would (the same pieces, layout and alignment:
// empty_rows_aligned_as_whole).
// bias ([cols], out's dtype; not with accumulate): out = bias + a @ b, the
// bias broadcast into each block of out's rows right before its product (in
// parallel, where the block is about to be written anyway), to the bit what
// filling out with it first and accumulating would give.
void deterministic_mm_out(at::Tensor out, const at::Tensor& a, const at::Tensor& b,
                          bool accumulate = false, const OperandRows& a_rows = {},
                          const OperandRows& b_rows = {}, const at::Tensor& bias = {});
// a and b may also be bfloat16 or float16 (CPU, where low_precision_products
// says so): then each piece is MKL's product with float32 accumulation and
// `out` (deterministic_mm's result) is float32.
at::Tensor deterministic_mm(const at::Tensor& a, const at::Tensor& b);

// How the dense products of bfloat16/float16 inputs run. Both give the
// float32 products of the rounded operands up to summation order (and the
// rounding of gU, which kLowPrecision rounds to the low-precision dtype as
// autocast's own products do): kLowPrecision multiplies the low-precision
// operands with float32 accumulation (CPU: MKL's bf16bf16f32 / f16f16f32
// products; CUDA: cuBLAS on tensor cores through aten::mm.dtype), kFloat32
// multiplies their float32 values (CUDA: TF32 where
// torch.backends.cuda.matmul.allow_tf32 says so, as every float32 product).
enum class LowPrecisionPath { kLowPrecision, kFloat32 };
inline bool is_low_precision(at::ScalarType dtype) {
  return dtype == at::kBFloat16 || dtype == at::kHalf;
}
// Whether this CPU has instructions for products of dtype's operands
// (bfloat16: AVX512-BF16 or AMX-BF16; float16: AVX512-FP16 or AMX-FP16),
// where MKL's low-precision products run several times faster than float32.
bool cpu_has_low_precision_instructions(at::ScalarType dtype);
// Whether the low-precision product for dtype's operands is present on this
// device type: CPU, MKL's (torch's x86-64 wheels); CUDA, aten::mm.dtype
// (torch >= 2.8) in a CUDA build.
bool low_precision_products_present(at::ScalarType dtype, at::DeviceType device = at::kCPU);
// The path for dtype on this device type, from the environment variable
// TORCH_EXT_LOW_PRECISION_PRODUCTS (read at every call) where the product is
// present: auto (or unset, the default) takes kLowPrecision on CPUs with
// instructions for it and, until a GPU run has checked it, never on CUDA;
// on takes it wherever it is present, off never.
LowPrecisionPath low_precision_path(at::ScalarType dtype, at::DeviceType device = at::kCPU);
// out (contiguous, x's numel, float32 or dtype) = the float32 CPU tensor x
// rounded to dtype (bfloat16 or float16), as x.to(dtype) rounds it, stored in
// out's dtype: for float32 x.to(dtype).to(float32), for bfloat16 in one pass.
void round_through_into(const at::Tensor& x, at::ScalarType dtype, at::Tensor& out);
// x.to(dtype), for a float32 CPU x and a low-precision dtype by
// round_through_into into a contiguous buffer of the op's cache.
at::Tensor rounded_to(const at::Tensor& x, at::ScalarType dtype);
// An empty contiguous [rows, cols] tensor whose data start where row `first`
// of a fresh contiguous [*, cols] tensor with these options would: at the same
// offset from a 64-byte boundary (the CPU allocator's alignment). MKL's
// results depend on its operands' alignment, so rows converted into it
// multiply to the bits of the same rows of the whole tensor converted at once.
at::Tensor empty_rows_aligned_as_whole(int64_t rows, int64_t cols, int64_t first,
                                       const at::TensorOptions& options);
// Whether the dense products of operands of this dtype on this device
// (bfloat16 or float16 on the kLowPrecision path) run in it with float32
// accumulation; otherwise they run in the compute dtype.
bool low_precision_products(at::ScalarType dtype, const at::Device& device);

// Binary inputs (spikes): x viewed as [rows, cols] holding only 0 and 1,
// stored as the columns of its ones, row by row in increasing order (CSR),
// on x's device. Products with it add the rows of the other operand it
// selects instead of multiplying by every zero: the cost follows the ones,
// not rows * cols.
struct BinaryRows {
  int64_t rows = 0, cols = 0;
  at::Tensor offsets;  // int64 [rows + 1]: row r's ones are active[offsets[r], offsets[r+1])
  at::Tensor active;   // int32 [ones]: their columns
  double density() const {
    return rows * cols == 0 ? 0.0 : static_cast<double>(active.numel()) / (rows * cols);
  }
  // Rows [first, first + count) as a BinaryRows of their own.
  BinaryRows slice(int64_t first, int64_t count) const;
};
// x (any floating dtype, at least 1 dim, CPU or CUDA) as [numel / x.size(-1),
// x.size(-1)] if every value is 0 or 1 (-0.0 counts as 0) and at most
// max_density of them are 1; otherwise nullopt. CPU: one pass over x,
// stopped at the first value that is neither. CUDA: a few ATen passes, each
// of several synchronising with the host (the check, nonzero, bincount).
std::optional<BinaryRows> binary_rows(const at::Tensor& x, double max_density);
// out [rows, N] = x @ w_t (+ out with accumulate) for binary x, w_t [cols, N]
// contiguous in out's dtype (float32 or float64), on x's device: each row
// the sum of the w_t rows of its ones, in increasing column order, so the
// result does not depend on the thread count.
void binary_mm_out(at::Tensor& out, const BinaryRows& x, const at::Tensor& w_t, bool accumulate);
// x.T @ g, [cols, N], for binary x and g [rows, N]: row f the sum of g's rows
// r where x[r, f] = 1, in increasing r (fixed for any thread count).
at::Tensor binary_t_mm(const BinaryRows& x, const at::Tensor& g);
#ifdef WITH_CUDA
// The CUDA kernel of both (cuda/loops.cu): out[r] += the sum of the rows
// index[offsets[r] .. offsets[r+1]) of source, in order. binary_mm_out gives
// it x's index and w_t; binary_t_mm the transposed index (for each column f,
// the rows of its ones in order) and g.
void gather_rows_cuda(at::Tensor& out, const at::Tensor& offsets, const at::Tensor& index,
                      const at::Tensor& source);
#endif

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

// The reverse loop's per-step product rec = g @ W (g [rows, N] float32, W
// [N, N]) with bfloat16 operands and float32 accumulation on the CPU's
// matrix instructions (oneDNN's brgemm through ATen: AMX), W packed once per
// backward in blocks of 64 columns, where each call repacks it with MKL.
// bfloat16_packed_columns(W): that packing, or an undefined tensor where the
// path is not there: a torch without ATen's bfloat16 brgemm, a CPU it cannot
// pack for, N not a multiple of 64, or a W not exactly bfloat16 values (W
// float32 or bfloat16; one holding a NaN is not packed either).
at::Tensor bfloat16_packed_columns(const at::Tensor& W);
// out[rows, N] = g rounded to bfloat16 @ W, by the packing above, where
// with column_scale ([N], or null for none) each g[r][n] is first multiplied
// by column_scale[n] (in float32) and that product rounded; scratch holds
// rows * N bfloat16 values (the rounding). On the calling thread;
// release_matrix_instructions() once the thread is done with them.
void bfloat16_rows_product(const float* g, int64_t rows, int64_t N, const at::Tensor& packed,
                           const float* column_scale, c10::BFloat16* scratch, float* out);
void release_matrix_instructions();

}  // namespace torch_ext
