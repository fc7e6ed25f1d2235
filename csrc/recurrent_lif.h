// The recurrent LIF and adaptive (SE-adLIF) ops inside the library: argument
// checks and the device-independent parts of the forward and backward passes
// (input projection, weight gradients), shared by both ops and by the CPU and
// CUDA registrations, which supply only their time loops. The public C++ API is
// include/torch_ext/torch_ext.h.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <initializer_list>
#include <vector>
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

// The options of a call, checked. Every check raises an error naming the op
// and the argument (ValueError/TypeError in Python), the same for every caller.
struct Options {
  Reset reset;
  bool detach_reset;
  Surrogate surrogate;
  double slope;  // the surrogate's default when none was given
};
Options check_options(c10::string_view reset, bool detach_reset, c10::string_view surrogate,
                      std::optional<double> slope, at::ScalarType compute_dtype,
                      const char* op = "recurrent_lif");

// x and the neuron parameters must be given (defined tensors): checked
// before anything reads their devices (autograd does), so the error names
// the argument.
void check_required(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& theta);
void check_required(const char* op, const at::Tensor& x,
                    std::initializer_list<std::pair<const at::Tensor*, const char*>> params);

// float64 for float64 inputs; float16/bfloat16/float32 compute in float32.
at::ScalarType compute_dtype(at::ScalarType input_dtype);

// The neuron models the time loops run. Each has per-neuron parameters
// (0-dim or [N]) and states ([B, N] per step) besides its spikes:
//   LIF:      parameters alpha, theta;                states U (membrane)
//   Adaptive: parameters alpha, beta, a, b, theta;    states V (membrane), A (adaptation)
// The loops' skeleton (spike gather, lengths, replay, reverse loop, sparse
// w_rec gradient) is written once; the per-step update and its adjoint come
// from the model (lif_math.h, adlif_math.h).
enum class Model { LIF, Adaptive };
constexpr int num_params(Model m) { return m == Model::LIF ? 2 : 5; }
constexpr int num_states(Model m) { return m == Model::LIF ? 1 : 2; }
constexpr int kMaxParams = 5, kMaxStates = 2;

// Everything a time loop reads, contiguous and in the compute dtype.
struct LoopInputs {
  Model model;
  at::Tensor w_rec;  // [N, N] (all-to-all), [N] (one-to-one), or undefined: none
  std::vector<at::Tensor> params;   // num_params(model), each 0-dim or [N]
  std::vector<at::Tensor> initial;  // num_states(model), each [B, N]: the state at t = 0
  at::Tensor s0;                    // [B, N]
  Reset reset;
  // [B] int64, or undefined: row b takes steps t < lengths[b] only; later steps
  // output 0 and take no part in the backward.
  at::Tensor lengths;

  bool one_to_one() const { return w_rec.defined() && w_rec.dim() == 1; }
};

// Runs t = 1..T. `states` are num_states [T, B, N] tensors; on entry states[0]
// holds the input current I[t], on exit every state holds its values.
// `spikes` [T, B, N] receives S[t]; with `replay` it holds them already (a
// forward's output) and is only read: the states are recomputed with the same
// arithmetic as that forward, bitwise, and no threshold decided.
using ForwardLoop = void (*)(const LoopInputs& in, std::vector<at::Tensor>& states,
                             at::Tensor& spikes, bool replay);

struct BackwardLoopInputs {
  LoopInputs state;
  at::Tensor spikes;                     // [T, B, N], compute dtype
  std::vector<at::Tensor> states;        // num_states [T, B, N]
  at::Tensor grad_spikes;                // [T, B, N], or undefined (= zero)
  std::vector<at::Tensor> grad_states;   // num_states, each [T, B, N] or undefined (= zero)
  // What the recurrent term of the reverse step multiplies: gU[t+1] @ w_rec_adjoint
  // (or gU[t+1] * w_rec_adjoint one-to-one). LIF: w_rec; adaptive: the rows of
  // w_rec scaled by the input gain 1 - alpha. Undefined without w_rec.
  at::Tensor w_rec_adjoint;
  bool detach_reset;
  Surrogate surrogate;
  double slope;
  std::vector<bool> need_params;  // which per-neuron parameter sums to produce
  bool need_bias;                 // the sum of gU
  bool need_w_rec_sum;            // one-to-one w_rec: sum of gU[t] * S[t-1] per neuron
  // All-to-all w_rec: a loop may return sum_t gU[t].T @ S[t-1] (w_rec_grad);
  // where it does not, the driver computes it with matrix products.
  bool need_w_rec_grad;
};

struct BackwardLoopOutputs {
  // [T, B, N]: gU[t], the gradient of the first state (LIF: U, = dL/dI[t];
  // adaptive: V, and dL/dI[t] = (1 - alpha) gV[t]).
  at::Tensor grad_u;
  std::vector<at::Tensor> grad_initial;  // num_states [B, N]: what reaches the initial state
  at::Tensor grad_s0_reset;  // [B, N]: through R[0] only (the w_rec part is added later)
  // [N] sums over t and b of each parameter's terms, of gU, and of gU[t] *
  // S[t-1] (a one-to-one w_rec); undefined if not asked for.
  std::vector<at::Tensor> param_sums;
  at::Tensor bias_sum, w_rec_sum;
  // [N, N]: sum over t of gU[t].T @ S[t-1] (S[0] = s0) for an all-to-all
  // w_rec, if the loop computed it; otherwise undefined.
  at::Tensor w_rec_grad;
};

// Runs the reverse recurrence t = T..1 (README "The gradients", "The adaptive
// layer"); called only when T, B and N are all > 0.
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
// The CUDA designs compiled in, and which one a LIF forward call with an
// all-to-all w_rec of this size and compute dtype (float32 or float64) would
// use on the current device now, with the reason (planned with the LIF
// kernel; the adaptive kernels may fit fewer blocks per SM): {"per_step" or
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

// The adaptive (SE-adLIF) op: the same skeleton with the adaptive neuron.
// Outputs (spikes, membrane V, adaptation A); the backward returns the
// gradients of x, w_in, w_rec, bias, alpha, beta, a, b, theta, v0, a0, s0
// (needs_grad in that order; one not needed is an empty tensor). Without the
// saved states (save_state=False) the backward recomputes them.
using AdaptiveForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
constexpr int kAdaptiveInputs = 12;

AdaptiveForwardResult recurrent_adlif_forward(
    const at::Tensor& x, const OptionalTensor& w_in, const OptionalTensor& w_rec,
    const OptionalTensor& bias, const at::Tensor& alpha, const at::Tensor& beta,
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& theta, const OptionalTensor& v0,
    const OptionalTensor& a0, const OptionalTensor& s0, c10::string_view reset,
    bool detach_reset, c10::string_view surrogate, std::optional<double> slope, bool save_state,
    const OptionalTensor& lengths, ForwardLoop loop);

std::vector<at::Tensor> recurrent_adlif_backward(
    const OptionalTensor& grad_spikes, const OptionalTensor& grad_membrane,
    const OptionalTensor& grad_adaptation, const at::Tensor& x, const OptionalTensor& w_in,
    const OptionalTensor& w_rec, const OptionalTensor& bias, const at::Tensor& alpha,
    const at::Tensor& beta, const at::Tensor& a, const at::Tensor& b, const at::Tensor& theta,
    const OptionalTensor& v0, const OptionalTensor& a0, const OptionalTensor& s0,
    const at::Tensor& spikes, const OptionalTensor& membrane, const OptionalTensor& adaptation,
    c10::string_view reset, bool detach_reset, c10::string_view surrogate,
    std::optional<double> slope, std::array<bool, kAdaptiveInputs> needs_grad,
    const OptionalTensor& lengths, ForwardLoop forward_loop, BackwardLoop loop);

AdaptiveForwardResult call_recurrent_adlif(
    const at::Tensor& x, const OptionalTensor& w_in, const OptionalTensor& w_rec,
    const OptionalTensor& bias, const at::Tensor& alpha, const at::Tensor& beta,
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& theta, const OptionalTensor& v0,
    const OptionalTensor& a0, const OptionalTensor& s0, c10::string_view reset,
    bool detach_reset, c10::string_view surrogate, std::optional<double> slope, bool save_state,
    const OptionalTensor& lengths);

template <ForwardLoop Loop>
AdaptiveForwardResult adaptive_forward_kernel(
    const at::Tensor& x, const OptionalTensor& w_in, const OptionalTensor& w_rec,
    const OptionalTensor& bias, const at::Tensor& alpha, const at::Tensor& beta,
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& theta, const OptionalTensor& v0,
    const OptionalTensor& a0, const OptionalTensor& s0, c10::string_view reset,
    bool detach_reset, c10::string_view surrogate, std::optional<double> slope, bool save_state,
    const OptionalTensor& lengths) {
  return recurrent_adlif_forward(x, w_in, w_rec, bias, alpha, beta, a, b, theta, v0, a0, s0,
                                 reset, detach_reset, surrogate, slope, save_state, lengths, Loop);
}

template <ForwardLoop Forward, BackwardLoop Loop>
std::vector<at::Tensor> adaptive_backward_kernel(
    const OptionalTensor& grad_spikes, const OptionalTensor& grad_membrane,
    const OptionalTensor& grad_adaptation, const at::Tensor& x, const OptionalTensor& w_in,
    const OptionalTensor& w_rec, const OptionalTensor& bias, const at::Tensor& alpha,
    const at::Tensor& beta, const at::Tensor& a, const at::Tensor& b, const at::Tensor& theta,
    const OptionalTensor& v0, const OptionalTensor& a0, const OptionalTensor& s0,
    const at::Tensor& spikes, const OptionalTensor& membrane, const OptionalTensor& adaptation,
    c10::string_view reset, bool detach_reset, c10::string_view surrogate,
    std::optional<double> slope, std::array<bool, kAdaptiveInputs> needs_grad,
    const OptionalTensor& lengths) {
  return recurrent_adlif_backward(grad_spikes, grad_membrane, grad_adaptation, x, w_in, w_rec,
                                  bias, alpha, beta, a, b, theta, v0, a0, s0, spikes, membrane,
                                  adaptation, reset, detach_reset, surrogate, slope, needs_grad,
                                  lengths, Forward, Loop);
}

}  // namespace torch_ext
