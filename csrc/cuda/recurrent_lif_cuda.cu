// CUDA time loops of the recurrent LIF op: one launch per time step in each
// direction (the backward's recurrent term is one cuBLAS product per step
// before it).
//
// - Forward: a block owns a tile of kThreads neurons of one batch row b. It
//   compacts the indices of row b's sources that fired at t-1 into shared
//   memory, ascending (a block-wide exclusive scan of their flags, in chunks of
//   kListCapacity sources, so any N works), then each thread adds w_out[j][n]
//   over that list. Why: spikes are sparse, and with the list each thread
//   reads only the weights it adds (along n: coalesced), the N spike flags are
//   read once per block instead of once per thread, and no warp walks the
//   zeros. A source whose w_rec column holds inf/NaN is always listed, so they
//   spread as in the dense product (0 * inf = NaN). The summation order
//   (ascending j, plain float sums of weights) is the CPU op's, so the
//   recurrence is exact float32 whatever the TF32 setting, and deterministic.
// - Backward: gU[t+1] is dense, so its recurrent term gU[t+1] @ w_rec is one
//   cuBLAS product per step for the whole batch (each weight read once per
//   step, not once per row), following the TF32 setting like the other
//   products; the element-wise launch then reads it.
//
// The input projection and the weight gradients are single cuBLAS products over
// all T*B rows, done by the shared driver (recurrent_lif.cpp).
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_scan.cuh>

#include "../recurrent_lif.h"

namespace torch_ext {
namespace {

constexpr int kThreads = 256;
// Per-step forward: each thread flags this many consecutive sources per chunk.
constexpr int kSourcesPerThread = 4;
constexpr int kListCapacity = kThreads * kSourcesPerThread;

template <typename scalar_t>
struct DeviceParams {
  const scalar_t* alpha;
  const scalar_t* theta;
  int64_t alpha_stride, theta_stride;  // 0 for a shared scalar, 1 per neuron
  __device__ scalar_t a(int64_t n) const { return alpha[n * alpha_stride]; }
  __device__ scalar_t th(int64_t n) const { return theta[n * theta_stride]; }
};

template <typename scalar_t>
DeviceParams<scalar_t> device_params(const LoopInputs& in) {
  return {in.alpha.data_ptr<scalar_t>(), in.theta.data_ptr<scalar_t>(), in.alpha.dim() == 0 ? 0 : 1,
          in.theta.dim() == 0 ? 0 : 1};
}

unsigned int blocks_for(int64_t elements) {
  return static_cast<unsigned int>((elements + kThreads - 1) / kThreads);
}

__host__ __device__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// One forward step for a tile of kThreads neurons of batch row b = blockIdx.x:
// U[t] = f(U[t-1], R[t-1], I[t] + sum_j R[t-1][j] * w_out[j][n]).
// w_out = w_rec.T (row j: what a spike of neuron j adds), or null.
template <typename scalar_t, Reset R>
__global__ void __launch_bounds__(kThreads)
    forward_step_kernel(int64_t N, const scalar_t* __restrict__ w_out,
                        const bool* __restrict__ nonfinite_source,
                        const scalar_t* __restrict__ w_self, DeviceParams<scalar_t> p,
                        const scalar_t* __restrict__ u_prev, const scalar_t* __restrict__ r_prev,
                        scalar_t* __restrict__ u, scalar_t* __restrict__ s, bool replay, int64_t t,
                        const int64_t* __restrict__ lengths) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int listed[kListCapacity];         // the chunk's sources that take part, ascending
  __shared__ scalar_t listed_r[kListCapacity];  // and their R[t-1]
  const int64_t b = blockIdx.x;
  const int64_t n = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  const bool owner = n < N;  // the last tile may stick out
  const int64_t i = b * N + n;
  if (lengths != nullptr && t >= lengths[b]) {  // past the row's length: spikes and membrane 0
    if (owner) {
      u[i] = scalar_t(0);
      if (!replay) s[i] = scalar_t(0);
    }
    return;  // the whole block: b is the block's
  }
  scalar_t rec = owner && w_self != nullptr ? w_self[n] * r_prev[i] : scalar_t(0);  // one-to-one
  if (w_out != nullptr) {
    const scalar_t* r_row = r_prev + b * N;
    for (int64_t first = 0; first < N; first += kListCapacity) {
      // Thread k flags sources first + k * kSourcesPerThread + q (a blocked
      // arrangement, so the exclusive scan lists them in ascending order): a
      // zero spike is skipped unless a weight of its source is not finite.
      const int offset = threadIdx.x * kSourcesPerThread;
      int flags[kSourcesPerThread], slots[kSourcesPerThread];
      scalar_t values[kSourcesPerThread];
#pragma unroll
      for (int q = 0; q < kSourcesPerThread; ++q) {
        const int64_t j = first + offset + q;
        values[q] = j < N ? r_row[j] : scalar_t(0);
        flags[q] = j < N && (values[q] != scalar_t(0) || nonfinite_source[j]);
      }
      int count;
      Scan(scan_storage).ExclusiveSum(flags, slots, count);
#pragma unroll
      for (int q = 0; q < kSourcesPerThread; ++q) {
        if (flags[q]) {
          listed[slots[q]] = offset + q;
          listed_r[slots[q]] = values[q];
        }
      }
      __syncthreads();
      if (owner) {
        for (int k = 0; k < count; ++k) rec += listed_r[k] * w_out[(first + listed[k]) * N + n];
      }
      __syncthreads();  // the next chunk rewrites the list and the scan's storage
    }
  }
  if (!owner) return;
  const scalar_t theta = p.th(n);
  const scalar_t value = membrane_step(R, p.a(n), theta, u_prev[i], r_prev[i], u[i], rec);
  u[i] = value;
  if (!replay) s[i] = spike(value, theta);  // with replay, s holds S[t] already
}

template <typename scalar_t, Reset R>
void forward_steps(const LoopInputs& in, at::Tensor& membrane, at::Tensor& spikes, bool replay) {
  const int64_t T = membrane.size(0), B = membrane.size(1), N = membrane.size(2);
  const int64_t BN = B * N;
  // All-to-all: w_out = w_rec.T (row j: what a spike of neuron j adds).
  // One-to-one: w_self = w_rec, neuron n's weight onto itself.
  const bool one_to_one = in.one_to_one();
  const at::Tensor w_out =
      in.w_rec.defined() && !one_to_one ? in.w_rec.t().contiguous() : at::Tensor();
  const scalar_t* W = w_out.defined() ? w_out.data_ptr<scalar_t>() : nullptr;
  const scalar_t* W_self = one_to_one ? in.w_rec.data_ptr<scalar_t>() : nullptr;
  const at::Tensor nonfinite =
      w_out.defined() ? at::isfinite(w_out).logical_not().any(1) : at::Tensor();
  const bool* nonfinite_source = nonfinite.defined() ? nonfinite.data_ptr<bool>() : nullptr;
  const auto p = device_params<scalar_t>(in);
  const int64_t* lengths = in.lengths.defined() ? in.lengths.data_ptr<int64_t>() : nullptr;
  scalar_t* U = membrane.data_ptr<scalar_t>();
  scalar_t* S = spikes.data_ptr<scalar_t>();
  const auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned int>(B), static_cast<unsigned int>(ceil_div(N, kThreads)));
  for (int64_t t = 0; t < T; ++t) {
    const scalar_t* u_prev = t > 0 ? U + (t - 1) * BN : in.u0.data_ptr<scalar_t>();
    const scalar_t* r_prev = t > 0 ? S + (t - 1) * BN : in.s0.data_ptr<scalar_t>();
    forward_step_kernel<scalar_t, R>
        <<<grid, kThreads, 0, stream>>>(N, W, nonfinite_source, W_self, p, u_prev, r_prev,
                                        U + t * BN, S + t * BN, replay, t, lengths);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

void forward_loop_cuda(const LoopInputs& in, at::Tensor& membrane, at::Tensor& spikes,
                       bool replay) {
  const c10::cuda::CUDAGuard device_guard(membrane.device());
  AT_DISPATCH_FLOATING_TYPES(membrane.scalar_type(), "recurrent_lif_forward_cuda", [&] {
    dispatch_reset(in.reset, [&](auto reset) {
      forward_steps<scalar_t, decltype(reset)::value>(in, membrane, spikes, replay);
    });
  });
}

template <typename scalar_t>
struct BackwardPointers {
  const scalar_t *U, *S, *gS_out, *gU_out, *u0, *s0;
  const scalar_t* rec;     // all-to-all: gU[t+1] @ w_rec [B, N] of this step (cuBLAS), or null
  const scalar_t* w_self;  // one-to-one [N], or null
  scalar_t *gU, *g_u0, *g_s0, *acc_alpha, *acc_theta, *acc_bias, *acc_w_self;
  const int64_t* lengths;  // [B], or null: every row takes all T steps
};

// One reverse step at time t for element i = (b, n); see lif_math.h.
template <typename scalar_t, Reset R, Surrogate SG>
__global__ void backward_step_kernel(int64_t t, int64_t T, int64_t B, int64_t N, bool detach_reset,
                                     scalar_t slope, DeviceParams<scalar_t> p,
                                     BackwardPointers<scalar_t> q) {
  const int64_t BN = B * N;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= BN) return;
  const int64_t b = i / N, n = i % N, k = t * BN + i;
  const int64_t steps = q.lengths == nullptr ? T : min(max(q.lengths[b], int64_t(0)), T);
  if (t >= steps) {  // a step the row does not take: nothing flows through it
    q.gU[k] = scalar_t(0);
    if (t == 0) q.g_u0[i] = q.g_s0[i] = scalar_t(0);
    return;
  }
  const bool has_next = t < steps - 1;
  // The recurrent term: gU[t+1] @ w_rec, one product for all rows computed
  // before this launch; one-to-one: gU[t+1][b][n] * w_rec[n].
  scalar_t rec_grad = scalar_t(0);
  if (has_next && q.w_self != nullptr) rec_grad = q.gU[k + BN] * q.w_self[n];
  if (has_next && q.rec != nullptr) rec_grad = q.rec[i];
  const scalar_t alpha = p.a(n), theta = p.th(n);
  const scalar_t u_prev = t > 0 ? q.U[k - BN] : q.u0[i];
  const scalar_t r_prev = t > 0 ? q.S[k - BN] : q.s0[i];
  const auto terms =
      backward_step(R, detach_reset, SG, slope, alpha, theta, q.U[k], q.S[k],
                    q.gS_out ? q.gS_out[k] : scalar_t(0), q.gU_out ? q.gU_out[k] : scalar_t(0),
                    has_next, has_next ? q.gU[k + BN] : scalar_t(0), rec_grad);
  q.gU[k] = terms.grad_u;
  if (q.acc_alpha) q.acc_alpha[i] += alpha_grad_term(R, terms.grad_u, u_prev, r_prev);
  if (q.acc_theta) q.acc_theta[i] += theta_grad_term(R, terms.grad_s_sg, terms.grad_u, r_prev);
  if (q.acc_bias) q.acc_bias[i] += terms.grad_u;
  if (q.acc_w_self) q.acc_w_self[i] += terms.grad_u * r_prev;
  if (t == 0) {
    q.g_u0[i] = terms.grad_u * dnext_du(R, alpha, r_prev);
    q.g_s0[i] = reset_grad(R, detach_reset, alpha, theta, u_prev, terms.grad_u);
  }
}

template <typename scalar_t, Reset R, Surrogate SG>
BackwardLoopOutputs backward_steps(const BackwardLoopInputs& in) {
  const int64_t T = in.membrane.size(0), B = in.membrane.size(1), N = in.membrane.size(2);
  const auto opts = in.membrane.options();
  const LoopInputs& st = in.state;
  auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };

  BackwardLoopOutputs out;
  out.grad_u = at::empty({T, B, N}, opts);
  out.grad_u0 = at::empty({B, N}, opts);
  out.grad_s0_reset = at::empty({B, N}, opts);
  const at::Tensor acc_alpha = in.need_alpha ? at::zeros({B, N}, opts) : at::Tensor();
  const at::Tensor acc_theta = in.need_theta ? at::zeros({B, N}, opts) : at::Tensor();
  const at::Tensor acc_bias = in.need_bias ? at::zeros({B, N}, opts) : at::Tensor();
  const at::Tensor acc_w_self = in.need_w_rec_sum ? at::zeros({B, N}, opts) : at::Tensor();
  const bool one_to_one = st.one_to_one();
  const bool all_to_all = st.w_rec.defined() && !one_to_one;
  // gU[t+1] @ w_rec for all rows: one cuBLAS product per step (each W tile
  // read once for the whole batch), then the element-wise launch reads it.
  at::Tensor rec_grad = all_to_all ? at::empty({B, N}, opts) : at::Tensor();
  const BackwardPointers<scalar_t> q{ptr(in.membrane),
                                     ptr(in.spikes),
                                     ptr(in.grad_spikes),
                                     ptr(in.grad_membrane),
                                     ptr(st.u0),
                                     ptr(st.s0),
                                     ptr(rec_grad),
                                     one_to_one ? ptr(st.w_rec) : nullptr,
                                     ptr(out.grad_u),
                                     ptr(out.grad_u0),
                                     ptr(out.grad_s0_reset),
                                     ptr(acc_alpha),
                                     ptr(acc_theta),
                                     ptr(acc_bias),
                                     ptr(acc_w_self),
                                     st.lengths.defined() ? st.lengths.data_ptr<int64_t>() : nullptr};
  const auto p = device_params<scalar_t>(st);
  const auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t t = T - 1; t >= 0; --t) {
    if (all_to_all && t < T - 1) at::mm_out(rec_grad, out.grad_u[t + 1], st.w_rec);
    backward_step_kernel<scalar_t, R, SG><<<blocks_for(B * N), kThreads, 0, stream>>>(
        t, T, B, N, in.detach_reset, static_cast<scalar_t>(in.slope), p, q);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  // Reductions over the batch; ATen's CUDA sum uses no atomics (deterministic).
  if (in.need_alpha) out.alpha_sum = acc_alpha.sum(0);
  if (in.need_theta) out.theta_sum = acc_theta.sum(0);
  if (in.need_bias) out.bias_sum = acc_bias.sum(0);
  if (in.need_w_rec_sum) out.w_rec_sum = acc_w_self.sum(0);
  return out;
}

BackwardLoopOutputs backward_loop_cuda(const BackwardLoopInputs& in) {
  const c10::cuda::CUDAGuard device_guard(in.membrane.device());
  return AT_DISPATCH_FLOATING_TYPES(in.membrane.scalar_type(), "recurrent_lif_backward_cuda", [&] {
    return dispatch_options(in.state.reset, in.surrogate, [&](auto reset, auto surrogate) {
      return backward_steps<scalar_t, decltype(reset)::value, decltype(surrogate)::value>(in);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_ext, CUDA, m) {
  m.impl("recurrent_lif", &forward_kernel<forward_loop_cuda>);
  m.impl("_recurrent_lif_backward", &backward_kernel<forward_loop_cuda, backward_loop_cuda>);
}

}  // namespace torch_ext
