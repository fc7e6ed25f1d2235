// The recurrent LIF op inside the library: argument checks and the
// device-independent parts of the forward and backward passes (input
// projection, weight gradients), shared by the CPU and CUDA registrations,
// which supply only their time loops. The public C++ API is
// include/torch_ext/torch_ext.h.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>
#include <utility>

#include "lif_math.h"

// The CPU forward's hot loop is compiled for these x86 targets (GCC
// target_clones; the build itself targets baseline x86-64); the loader picks
// the best one the CPU has.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TORCH_EXT_CPU_CLONE_TARGETS "avx512f", "avx2", "default"
#endif

namespace torch_ext {

// out = a @ b, or out += a @ b with `accumulate`. On CPU the rows of `out` are
// split into blocks fixed by the shape alone, computed in parallel, each by one
// single-threaded BLAS call, so the result is bitwise the same for any number
// of threads (a multi-threaded BLAS call splits the inner dimension according
// to its thread count). On other devices: one plain ATen product.
void deterministic_mm_out(at::Tensor out, const at::Tensor& a, const at::Tensor& b,
                          bool accumulate = false);
at::Tensor deterministic_mm(const at::Tensor& a, const at::Tensor& b);

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

// The options of a call, checked. Every check raises an error naming the
// argument (ValueError/TypeError in Python), the same for every caller.
struct Options {
  Reset reset;
  bool detach_reset;
  Surrogate surrogate;
  double slope;  // the surrogate's default when none was given
};
Options check_options(c10::string_view reset, bool detach_reset, c10::string_view surrogate,
                      std::optional<double> slope, at::ScalarType compute_dtype);

// x, alpha and theta must be given (defined tensors): checked before anything
// reads their devices (autograd does), so the error names the argument.
void check_required(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& theta);

// float64 for float64 inputs; float16/bfloat16/float32 compute in float32.
at::ScalarType compute_dtype(at::ScalarType input_dtype);

// Everything a time loop reads, contiguous and in the compute dtype.
struct LoopInputs {
  at::Tensor w_rec;         // [N, N] (all-to-all), [N] (one-to-one), or undefined: none
  at::Tensor alpha, theta;  // 0-dim or [N]
  at::Tensor u0, s0;        // [B, N]
  Reset reset;
  // [B] int64, or undefined: row b takes steps t < lengths[b] only; later steps
  // output 0 and take no part in the backward.
  at::Tensor lengths;

  bool one_to_one() const { return w_rec.defined() && w_rec.dim() == 1; }
};

// Runs t = 1..T. On entry `membrane` [T, B, N] holds the input current I[t]; on
// exit U[t]. `spikes` [T, B, N] receives S[t]; with `replay` it holds them
// already (a forward's output) and is only read: the membrane is recomputed
// with the same arithmetic as that forward, bitwise, and no threshold decided.
using ForwardLoop = void (*)(const LoopInputs& in, at::Tensor& membrane, at::Tensor& spikes,
                             bool replay);

struct BackwardLoopInputs {
  LoopInputs state;
  at::Tensor spikes, membrane;            // [T, B, N], compute dtype
  at::Tensor grad_spikes, grad_membrane;  // [T, B, N], or undefined (= zero)
  bool detach_reset;
  Surrogate surrogate;
  double slope;
  bool need_alpha, need_theta, need_bias;  // which per-neuron sums to produce
  bool need_w_rec_sum;                     // one-to-one w_rec: its gradient, a per-neuron sum
  // All-to-all w_rec: a loop may return its gradient (w_rec_grad); where it
  // does not, the driver computes it with matrix products.
  bool need_w_rec_grad;
};

struct BackwardLoopOutputs {
  at::Tensor grad_u;         // [T, B, N]: gU[t] = dL/dI[t]
  at::Tensor grad_u0;        // [B, N]: gU[1] * dU[1]/dU[0]
  at::Tensor grad_s0_reset;  // [B, N]: c_R * gU[1] * dU[1]/dR[0] (the w_rec part is added later)
  // [N] sums over t and b of the grad_alpha, grad_theta and gU terms, and of
  // gU[t] * S[t-1] (a one-to-one w_rec's gradient); undefined if not asked for.
  at::Tensor alpha_sum, theta_sum, bias_sum, w_rec_sum;
  // [N, N]: sum over t of gU[t].T @ S[t-1] (S[0] = s0), an all-to-all w_rec's
  // gradient, if the loop computed it; otherwise undefined.
  at::Tensor w_rec_grad;
};

// Runs the reverse recurrence t = T..1 (README "The gradients"); called only
// when T, B and N are all > 0.
using BackwardLoop = BackwardLoopOutputs (*)(const BackwardLoopInputs& in);

using ForwardResult = std::tuple<at::Tensor, at::Tensor>;
using BackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                  at::Tensor, at::Tensor, at::Tensor>;
using OptionalTensor = std::optional<at::Tensor>;

// The kernels' drivers. The public op `torch_ext::recurrent_lif` takes the
// backward's options too (detach_reset, surrogate, slope) because its autograd
// kernel needs them; the forward checks them before any work.
ForwardResult recurrent_lif_forward(const at::Tensor& x, const OptionalTensor& w_in,
                                    const OptionalTensor& w_rec, const OptionalTensor& bias,
                                    const at::Tensor& alpha, const at::Tensor& theta,
                                    const OptionalTensor& u0, const OptionalTensor& s0,
                                    c10::string_view reset, bool detach_reset,
                                    c10::string_view surrogate, std::optional<double> slope,
                                    bool save_membrane, const OptionalTensor& lengths,
                                    ForwardLoop loop);

// needs_grad: x, w_in, w_rec, bias, alpha, theta, u0, s0. Gradients not needed
// come back as empty tensors (numel 0) and are never computed. Without the
// membrane (the low-memory mode) it is recomputed from the inputs, bias
// included, and the spikes: one product and a replay of the forward loop.
BackwardResult recurrent_lif_backward(const OptionalTensor& grad_spikes,
                                      const OptionalTensor& grad_membrane, const at::Tensor& x,
                                      const OptionalTensor& w_in, const OptionalTensor& w_rec,
                                      const at::Tensor& alpha, const at::Tensor& theta,
                                      const OptionalTensor& u0, const OptionalTensor& s0,
                                      const at::Tensor& spikes, const OptionalTensor& membrane,
                                      c10::string_view reset, bool detach_reset,
                                      c10::string_view surrogate, std::optional<double> slope,
                                      std::array<bool, 8> needs_grad, const OptionalTensor& bias,
                                      const OptionalTensor& lengths, ForwardLoop forward_loop,
                                      BackwardLoop loop);

#ifdef WITH_CUDA
// The CUDA designs compiled in, and which one a forward call with an
// all-to-all w_rec of this size and compute dtype (float32 or float64) would
// use on the current device now, with the reason: {"per_step" or
// "persistent", why}. The persistent design is used only when the
// environment variable TORCH_EXT_CUDA_PERSISTENT is "1" at the call.
inline constexpr std::array<const char*, 2> kCudaDesigns{"per_step", "persistent"};
bool cuda_persistent_requested();  // TORCH_EXT_CUDA_PERSISTENT is "1" now
std::pair<std::string, std::string> cuda_design_for(int64_t T, int64_t B, int64_t N,
                                                    at::ScalarType compute_dtype);
#endif

// The ops, called through the dispatcher (so autocast, autograd and the
// device's kernel all apply): what the C++ API and the autograd kernels call.
ForwardResult call_recurrent_lif(const at::Tensor& x, const OptionalTensor& w_in,
                                 const OptionalTensor& w_rec, const OptionalTensor& bias,
                                 const at::Tensor& alpha, const at::Tensor& theta,
                                 const OptionalTensor& u0, const OptionalTensor& s0,
                                 c10::string_view reset, bool detach_reset,
                                 c10::string_view surrogate, std::optional<double> slope,
                                 bool save_membrane, const OptionalTensor& lengths);

// The kernels each backend registers: the shared driver with that backend's loops.
template <ForwardLoop Loop>
ForwardResult forward_kernel(const at::Tensor& x, const OptionalTensor& w_in,
                             const OptionalTensor& w_rec, const OptionalTensor& bias,
                             const at::Tensor& alpha, const at::Tensor& theta,
                             const OptionalTensor& u0, const OptionalTensor& s0,
                             c10::string_view reset, bool detach_reset, c10::string_view surrogate,
                             std::optional<double> slope, bool save_membrane,
                             const OptionalTensor& lengths) {
  return recurrent_lif_forward(x, w_in, w_rec, bias, alpha, theta, u0, s0, reset, detach_reset,
                               surrogate, slope, save_membrane, lengths, Loop);
}

template <ForwardLoop Forward, BackwardLoop Loop>
BackwardResult backward_kernel(const OptionalTensor& grad_spikes,
                               const OptionalTensor& grad_membrane, const at::Tensor& x,
                               const OptionalTensor& w_in, const OptionalTensor& w_rec,
                               const at::Tensor& alpha, const at::Tensor& theta,
                               const OptionalTensor& u0, const OptionalTensor& s0,
                               const at::Tensor& spikes, const OptionalTensor& membrane,
                               c10::string_view reset, bool detach_reset,
                               c10::string_view surrogate, std::optional<double> slope,
                               std::array<bool, 8> needs_grad, const OptionalTensor& bias,
                               const OptionalTensor& lengths) {
  return recurrent_lif_backward(grad_spikes, grad_membrane, x, w_in, w_rec, alpha, theta, u0, s0,
                                spikes, membrane, reset, detach_reset, surrogate, slope, needs_grad,
                                bias, lengths, Forward, Loop);
}

}  // namespace torch_ext
