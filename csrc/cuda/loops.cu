// CUDA time loops of every neuron op, in two designs, each written once for
// all models: the model's per-element step and its adjoint (csrc/neurons/)
// are template arguments. Both give the same
// forward bitwise (the recurrent input of binary spikes is a plain sum of
// weights, added in ascending source order, as on the CPU), so the recurrence
// is exact float32 whatever the TF32 setting, and deterministic. (Not with
// recurrent delays: their recurrent input is a cuBLAS product, TF32 where
// torch allows it, like the weight gradients.)
//
// Per-step design (the default, and the fallback of the other for every size
// and option): one launch per time step in each direction.
//
// - Forward: a block owns a tile of kThreads neurons of one batch row b. It
//   compacts the indices of row b's sources that fired at t-1 into shared
//   memory, ascending (a block-wide exclusive scan of their flags, in chunks of
//   kListCapacity sources, so any N works), then each thread adds w_out[j][n]
//   over that list. Why: spikes are sparse, and with the list each thread
//   reads only the weights it adds (along n: coalesced), the N spike flags are
//   read once per block instead of once per thread, and no warp walks the
//   zeros. A source whose w_rec column holds inf/NaN is always listed, so they
//   spread as in the dense product (0 * inf = NaN).
// - Backward: gU[t+1] (the gradient of the model's input state) is dense, so
//   its recurrent term gU[t+1] @ w_rec_adjoint (w_rec, its rows scaled by
//   the model's input gain) is one
//   cuBLAS product per step for the whole batch (each weight read once per
//   step, not once per row), following the TF32 setting like the other
//   products; the element-wise launch then reads it.
//
// Persistent design (TORCH_EXT_CUDA_PERSISTENT=1, read at every call; off by
// default because it has never run on a GPU): one cooperative launch per
// direction runs every step, with one grid barrier (cooperative_groups
// grid.sync(), no -rdc needed since CUDA 11) between steps. A block owns a
// tile of kWarp neurons (one per lane) and a group of batch rows, one row per
// warp at a time; its slice of W_rec (every source x its kWarp neurons) is
// loaded into shared memory once and read from there at every step.
//
// - Forward: the spikes of each step are exchanged as bitmasks in global
//   memory, [2][B][N/32] words, double buffered: step t reads buffer (t-1)&1
//   and writes buffer t&1. Step t+1 overwrites (t-1)&1 only after the barrier
//   that ends step t, when every read of it is done. Each word is one warp's
//   ballot, so it needs no atomics and no clearing. A warp walks the set bits
//   in ascending order, adding the same terms in the same order as the
//   per-step design: the same sums, bitwise. Step 0 (which reads s0, of any
//   values) runs as a per-step launch first, so the persistent kernel sees
//   only the binary spikes it computes.
// - Backward: each warp sums gU[t+1][b][n] * w_rec_adjoint[n][j] over ascending n for
//   its kWarp sources j, gU[t+1] read back from the grad_input output that every
//   block wrote in the step before. Its summation order differs from
//   cuBLAS's: the gradients agree with the per-step design's to rounding.
// - Per-neuron state (the model's states at t-1, S[t-1], the gradient
//   accumulators, the adaptive model's carried gA) stays in the outputs or
//   [B, N] buffers that the same thread wrote a step before, read back from
//   global memory: a few loads per neuron-step against rate*N (forward) or N
//   (backward) shared-memory loads for the sum, not worth shared memory that
//   W's slice needs.
// - Routed to the per-step design, always: a one-to-one w_rec or none (no
//   weights to keep on chip: each row is independent), the forward's replay
//   (its spikes are given, not necessarily binary), T = 1. And whenever it
//   does not fit: W's slice (N * 32 * sizeof(scalar) bytes + N/8) beyond the
//   shared memory a block may opt in to (float32 up to N of about 1800 on
//   H100/H200, float64 about 900), more blocks than the device co-schedules
//   (cudaOccupancyMaxActiveBlocksPerMultiprocessor x SMs), no cooperative
//   launch on the device, or a launch refused as too large. Half inputs
//   compute in float32 and are covered.
//
// What a GPU session must verify first (none of it has run):
//   1. both designs' forward bitwise equal (spikes and membrane), and their
//      gradients within tests/test_cuda.py's tolerances, incl. lengths and a
//      size with a partial last tile (N % 32 != 0) and B not a multiple of the
//      batch groups;
//   2. cuda_design_for() answers "persistent" where expected (float32 N=1024
//      on H200) and the launch is not refused (compute-sanitizer --tool
//      racecheck and synccheck on a small case);
//   3. no stale reads across the barrier: the masks and gU[t+1] are read with
//      __ldcg (L2, not the SM's L1, which is not coherent across SMs);
//   4. a side stream, and the time per step against the per-step design;
//   5. every model's op (the same kernels with each model) against the CPU
//      op in both designs (tests/test_cuda.py), including zero-length rows,
//      several tiles and batch groups, and 0-dim parameters;
//   6. recurrent delays and masks (TORCH_EXT_CUDA_DELAYS=1, per-step design
//      only) against the CPU op: test_cuda_delays_match_the_cpu_op, every
//      model and kind, with lengths.
//
// The input projection and the weight gradients are single cuBLAS products over
// all T*B rows, done by the shared driver (core/driver.cpp).
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cooperative_groups.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <cub/block/block_scan.cuh>
#include <string>
#include <utility>

#include "../core/op.h"
#include "../neurons/registry.h"

namespace torch_ext {
namespace {

constexpr int kThreads = 256;
// Per-step forward: each thread flags this many consecutive sources per chunk.
constexpr int kSourcesPerThread = 4;
constexpr int kListCapacity = kThreads * kSourcesPerThread;

constexpr int kWarp = 32;
constexpr unsigned kAllLanes = 0xffffffffu;
constexpr int kPersistentWarps = 16;
constexpr int kPersistentThreads = kWarp * kPersistentWarps;

// The model's per-neuron parameters (LoopInputs::params), each 0-dim or [N].
template <typename scalar_t>
struct DeviceParams {
  const scalar_t* values[kMaxParams];
  int64_t stride[kMaxParams];  // 0 for a shared scalar, 1 per neuron
  __device__ scalar_t get(int k, int64_t n) const { return values[k][n * stride[k]]; }
};

template <typename scalar_t>
DeviceParams<scalar_t> device_params(const LoopInputs& in) {
  DeviceParams<scalar_t> p{};
  for (size_t k = 0; k < in.params.size(); ++k) {
    p.values[k] = in.params[k].data_ptr<scalar_t>();
    p.stride[k] = in.params[k].dim() == 0 ? 0 : 1;
  }
  return p;
}

// The states of one forward step: `now` at t (now[0] holds I[t] on entry),
// `prev` at t-1 (the initial state at t = 0), [B, N] each.
template <typename scalar_t>
struct StepStates {
  scalar_t* now[kMaxStates];
  const scalar_t* prev[kMaxStates];
};

// One forward step of neuron (b, n) at flat index i = b * N + n of a [B, N]
// step: the model's states at t (x.now, whose input state holds I[t] on
// entry) from those at t-1, R[t-1] and the recurrent input; S[t] unless
// replaying (then s holds it).
template <typename scalar_t, typename M, Reset R>
__device__ void forward_neuron(const DeviceParams<scalar_t>& p, int64_t n, int64_t i,
                               const StepStates<scalar_t>& x, const scalar_t* r_prev, scalar_t rec,
                               scalar_t* s, bool replay) {
  constexpr int P = num_params_of<M>, K = num_states_of<M>, kIn = M::kTraits.input_state;
  scalar_t pv[kMaxParams], prev[kMaxStates], now[kMaxStates];
#pragma unroll
  for (int k = 0; k < P; ++k) pv[k] = p.get(k, n);
#pragma unroll
  for (int k = 0; k < K; ++k) prev[k] = x.prev[k][i];
  const scalar_t input = x.now[kIn][i];
  scalar_t spike = replay ? s[i] : scalar_t(0);
  if (replay) {
    M::template forward<scalar_t, R, true>(pv, prev, r_prev[i], input, rec, now, spike);
  } else {
    M::template forward<scalar_t, R, false>(pv, prev, r_prev[i], input, rec, now, spike);
    s[i] = spike;
  }
#pragma unroll
  for (int k = 0; k < K; ++k) x.now[k][i] = now[k];
}

unsigned int blocks_for(int64_t elements) {
  return static_cast<unsigned int>((elements + kThreads - 1) / kThreads);
}

__host__ __device__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------- per-step design

// One forward step for a tile of kThreads neurons of batch row b = blockIdx.x:
// the model's states at t from those at t-1, R[t-1] and the input
// I[t] + sum_j R[t-1][j] * w_out[j][n].
// w_out = w_rec.T (row j: what a spike of neuron j adds), or null.
// rec_in: the step's recurrent input [B, N] computed before the launch
// (recurrent delays), which replaces the sum; then w_out and w_self are null.
template <typename scalar_t, typename M, Reset R>
__global__ void __launch_bounds__(kThreads)
    forward_step_kernel(int64_t N, const scalar_t* __restrict__ w_out,
                        const bool* __restrict__ nonfinite_source,
                        const scalar_t* __restrict__ w_self, DeviceParams<scalar_t> p,
                        StepStates<scalar_t> x, const scalar_t* __restrict__ r_prev,
                        scalar_t* __restrict__ s, bool replay, int64_t t,
                        const int64_t* __restrict__ lengths,
                        const scalar_t* __restrict__ rec_in) {
  constexpr int kStates = num_states_of<M>;
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int listed[kListCapacity];         // the chunk's sources that take part, ascending
  __shared__ scalar_t listed_r[kListCapacity];  // and their R[t-1]
  const int64_t b = blockIdx.x;
  const int64_t n = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  const bool owner = n < N;  // the last tile may stick out
  const int64_t i = b * N + n;
  if (lengths != nullptr && t >= lengths[b]) {  // past the row's length: spikes and states 0
    if (owner) {
      for (int k = 0; k < kStates; ++k) x.now[k][i] = scalar_t(0);
      if (!replay) s[i] = scalar_t(0);
    }
    return;  // the whole block: b is the block's
  }
  scalar_t rec = owner && w_self != nullptr ? w_self[n] * r_prev[i] : scalar_t(0);  // one-to-one
  if (owner && rec_in != nullptr) rec = rec_in[i];
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
  forward_neuron<scalar_t, M, R>(p, n, i, x, r_prev, rec, s, replay);
}

template <typename scalar_t>
struct BackwardPointers {
  const scalar_t* X[kMaxStates];       // the states [T, B, N]
  const scalar_t* X0[kMaxStates];      // the initial states [B, N]
  const scalar_t* gX_out[kMaxStates];  // their incoming gradients [T, B, N], or null (= zero)
  const scalar_t *S, *gS_out, *s0;
  const scalar_t* rec;     // per-step, all-to-all: gU[t+1] @ w_rec_adjoint [B, N] of this step (cuBLAS)
  const scalar_t* w_self;  // one-to-one w_rec_adjoint [N], or null
  scalar_t* gU;            // [T, B, N]: the gradient of the model's input state
  // [B, N]: the gradient of the other state (if any), gX[t+1] on entry to
  // step t and gX[t] on exit; each element is read and written by the thread
  // owning it.
  scalar_t* carried;
  unsigned grad_states_given;  // bit k: gX_out[k] is given
  scalar_t* g_initial[kMaxStates];
  scalar_t* g_s0;
  scalar_t* acc[kMaxParams];  // [B, N] per parameter, or null where not needed
  scalar_t *acc_bias, *acc_w_self;
  const int64_t* lengths;  // [B], or null: every row takes all T steps
  bool all_to_all;         // w_rec is [N, N]
};

// Row b takes the steps t < steps_taken(lengths, b, T).
__device__ int64_t steps_taken(const int64_t* lengths, int64_t b, int64_t T) {
  return lengths == nullptr ? T : min(max(lengths[b], int64_t(0)), T);
}

// One reverse step of neuron (b, n) at time t (flat index k = t * BN + i,
// i = b * N + n): the gradients of the model's states at t, the parameters'
// terms and gX's added to the [B, N] sums, and at t = 0 what reaches the
// initial state. rec_grad: what reaches S[t] through the recurrence.
template <typename scalar_t, typename M, Reset R, Surrogate SG>
__device__ void backward_element(int64_t t, int64_t k, int64_t i, int64_t n, int64_t BN,
                                 bool has_next, bool detach_reset, scalar_t slope,
                                 const DeviceParams<scalar_t>& p,
                                 const BackwardPointers<scalar_t>& q, scalar_t rec_grad) {
  constexpr int P = num_params_of<M>, K = num_states_of<M>, kIn = M::kTraits.input_state;
  scalar_t pv[kMaxParams], now[kMaxStates], prev[kMaxStates], g_out[kMaxStates];
  scalar_t g_next[kMaxStates], g_now[kMaxStates];
#pragma unroll
  for (int c = 0; c < P; ++c) pv[c] = p.get(c, n);
#pragma unroll
  for (int c = 0; c < K; ++c) {
    now[c] = q.X[c][k];
    prev[c] = t > 0 ? q.X[c][k - BN] : q.X0[c][i];
    g_out[c] = q.gX_out[c] ? q.gX_out[c][k] : scalar_t(0);
  }
  g_next[kIn] = has_next ? q.gU[k + BN] : scalar_t(0);
  if constexpr (K > 1) g_next[1 - kIn] = q.carried[i];
  const scalar_t s = q.S[k];
  const scalar_t r_prev = t > 0 ? q.S[k - BN] : q.s0[i];
  const bool recurrent = q.w_self != nullptr || q.all_to_all;
  const bool spike_has_grad = M::spike_gets_grad(q.gS_out != nullptr, q.grad_states_given,
                                                 has_next, recurrent, R, detach_reset);
  const scalar_t grad_s_sg = M::template backward<scalar_t, R, SG>(
      pv, slope, detach_reset, spike_has_grad, has_next, now, s,
      q.gS_out ? q.gS_out[k] : scalar_t(0), g_out, g_next, rec_grad, g_now);
  q.gU[k] = g_now[kIn];
  if constexpr (K > 1) q.carried[i] = g_now[1 - kIn];
  scalar_t terms[kMaxParams];
  M::template param_terms<scalar_t, R>(pv, now, s, prev, r_prev, g_now, grad_s_sg, terms);
#pragma unroll
  for (int c = 0; c < P; ++c) {
    if (q.acc[c]) q.acc[c][i] += terms[c];
  }
  if (q.acc_bias) q.acc_bias[i] += g_now[kIn];
  if (t == 0) {
    scalar_t g_initial[kMaxStates];
    q.g_s0[i] = M::template initial_grads<scalar_t, R>(detach_reset, pv, prev, r_prev, g_now,
                                                        g_initial);
#pragma unroll
    for (int c = 0; c < K; ++c) q.g_initial[c][i] = g_initial[c];
  }
}

// One reverse step at time t for neuron (b, n) of a row that takes `steps`
// steps; the element-wise work both designs share. all_to_all_grad:
// (gU[t+1] @ w_rec_adjoint)[b][n] for an all-to-all w_rec when t is not the
// row's last step, else 0.
template <typename scalar_t, typename M, Reset R, Surrogate SG>
__device__ void backward_neuron(int64_t t, int64_t steps, int64_t B, int64_t N, int64_t b,
                                int64_t n, bool detach_reset, scalar_t slope,
                                const DeviceParams<scalar_t>& p,
                                const BackwardPointers<scalar_t>& q, scalar_t all_to_all_grad) {
  constexpr int K = num_states_of<M>;
  const int64_t BN = B * N, i = b * N + n, k = t * BN + i;
  if (t >= steps) {  // a step the row does not take: nothing flows through it
    q.gU[k] = scalar_t(0);
    if (K > 1) q.carried[i] = scalar_t(0);
    if (t == 0) {
      for (int c = 0; c < K; ++c) q.g_initial[c][i] = scalar_t(0);
      q.g_s0[i] = scalar_t(0);
    }
    return;
  }
  const bool has_next = t < steps - 1;
  // The recurrent term: all_to_all_grad, or one-to-one gU[t+1][b][n] * w_rec_adjoint[n].
  const scalar_t rec_grad =
      has_next && q.w_self != nullptr ? q.gU[k + BN] * q.w_self[n] : all_to_all_grad;
  backward_element<scalar_t, M, R, SG>(t, k, i, n, BN, has_next, detach_reset, slope, p, q,
                                       rec_grad);
  if (q.acc_w_self) q.acc_w_self[i] += q.gU[k] * (t > 0 ? q.S[k - BN] : q.s0[i]);
}

// One reverse step at time t for element i = (b, n).
template <typename scalar_t, typename M, Reset R, Surrogate SG>
__global__ void backward_step_kernel(int64_t t, int64_t T, int64_t B, int64_t N, bool detach_reset,
                                     scalar_t slope, DeviceParams<scalar_t> p,
                                     BackwardPointers<scalar_t> q) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * N) return;
  const int64_t b = i / N, n = i % N;
  const int64_t steps = steps_taken(q.lengths, b, T);
  const scalar_t all_to_all_grad = q.rec != nullptr && t < steps - 1 ? q.rec[i] : scalar_t(0);
  backward_neuron<scalar_t, M, R, SG>(t, steps, B, N, b, n, detach_reset, slope, p, q,
                                           all_to_all_grad);
}

// ---------------------------------------------------------------- persistent design

// What a block of a persistent kernel owns: neurons tile * kWarp + lane (the
// tile's last may stick out past N) of the batch rows [row_begin, row_end),
// row b handled by warp (b - row_begin) % kPersistentWarps at every step.
struct BlockShare {
  int64_t tile, row_begin, row_end;
  int lane, warp;
};

__device__ BlockShare block_share(int64_t B, int64_t tiles, int64_t rows_per_group) {
  const int64_t tile = blockIdx.x % tiles, row_begin = blockIdx.x / tiles * rows_per_group;
  return {tile, row_begin, min(B, row_begin + rows_per_group),
          static_cast<int>(threadIdx.x) % kWarp, static_cast<int>(threadIdx.x) / kWarp};
}

// Shared memory of a persistent kernel: its W slice, [sources][kWarp] scalars,
// then (forward) the non-finite-source bits, one word per kWarp sources.
template <typename scalar_t>
size_t forward_shared_bytes(int64_t N) {
  return static_cast<size_t>(N) * kWarp * sizeof(scalar_t) +
         static_cast<size_t>(ceil_div(N, kWarp)) * sizeof(uint32_t);
}
template <typename scalar_t>
size_t backward_shared_bytes(int64_t N) {
  return static_cast<size_t>(N) * kWarp * sizeof(scalar_t);
}

// sum over the sources j that fired at t-1 (bits of `fired_words`, row b's
// words of the mask) or have a non-finite weight, in ascending j, of
// R[t-1][j] * w_out[j][n] for this lane's neuron n: the per-step design's
// terms in its order. The mask was written by other blocks during this launch:
// read through L2 (__ldcg), never a stale L1 line.
template <typename scalar_t>
__device__ scalar_t recurrent_input(const uint32_t* fired_words, const uint32_t* nonfinite_words,
                                    int words, const scalar_t* w_slice, int lane) {
  scalar_t rec = scalar_t(0);
  for (int first = 0; first < words; first += kWarp) {
    // Lane k loads word first + k (coalesced), then the warp walks the words in order.
    const bool has_word = first + lane < words;
    const uint32_t fired_mine = has_word ? __ldcg(fired_words + first + lane) : 0u;
    const uint32_t nonfinite_mine = has_word ? nonfinite_words[first + lane] : 0u;
    const int count = min(kWarp, words - first);
    for (int k = 0; k < count; ++k) {
      const uint32_t fired = __shfl_sync(kAllLanes, fired_mine, k);
      uint32_t taking_part = fired | __shfl_sync(kAllLanes, nonfinite_mine, k);
      while (taking_part != 0u) {
        const int bit = __ffs(static_cast<int>(taking_part)) - 1;
        taking_part &= taking_part - 1u;
        const scalar_t r = (fired >> bit) & 1u ? scalar_t(1) : scalar_t(0);
        rec += r * w_slice[((first + k) * kWarp + bit) * kWarp + lane];
      }
    }
  }
  return rec;
}

// Steps 1..T-1 of the forward (step 0 done by a per-step launch before), for
// an all-to-all w_out = w_rec.T, without replay. X: the states [T, B, N]
// (X[0] holds I[t] on entry); masks: [2][B][words] spike bits, any content on
// entry.
template <typename scalar_t>
struct StateArrays {
  scalar_t* x[kMaxStates];
};

template <typename scalar_t, typename M, Reset R>
__global__ void __launch_bounds__(kPersistentThreads)
    forward_persistent_kernel(int64_t T, int64_t B, int64_t N, int64_t rows_per_group,
                              const scalar_t* __restrict__ w_out,
                              const bool* __restrict__ nonfinite_source, DeviceParams<scalar_t> p,
                              StateArrays<scalar_t> X, scalar_t* S, uint32_t* masks,
                              const int64_t* __restrict__ lengths) {
  constexpr int kStates = num_states_of<M>;
  extern __shared__ __align__(16) unsigned char shared[];
  // N is small enough for its slice to fit in shared memory: int indexes.
  const int words = static_cast<int>(ceil_div(N, kWarp));   // = tiles
  scalar_t* w_slice = reinterpret_cast<scalar_t*>(shared);  // [N][kWarp]: w_out[j][tile's n]
  uint32_t* nonfinite_words = reinterpret_cast<uint32_t*>(w_slice + N * kWarp);  // [words]
  const BlockShare share = block_share(B, words, rows_per_group);
  const int64_t n = share.tile * kWarp + share.lane, BN = B * N;
  const bool owner = n < N;
  const int64_t mask_size = B * words;

  for (int64_t k = threadIdx.x; k < N * kWarp; k += kPersistentThreads) {
    const int64_t m = share.tile * kWarp + k % kWarp;
    w_slice[k] = m < N ? w_out[k / kWarp * N + m] : scalar_t(0);
  }
  for (int w = share.warp; w < words; w += kPersistentWarps) {
    const int64_t j = static_cast<int64_t>(w) * kWarp + share.lane;
    const uint32_t bits = __ballot_sync(kAllLanes, j < N && nonfinite_source[j]);
    if (share.lane == 0) nonfinite_words[w] = bits;
  }
  // The bits of S[0] (binary: a forward step computed it), in buffer 0.
  for (int64_t b = share.row_begin + share.warp; b < share.row_end; b += kPersistentWarps) {
    const uint32_t bits = __ballot_sync(kAllLanes, owner && S[b * N + n] != scalar_t(0));
    if (share.lane == 0) masks[b * words + share.tile] = bits;
  }
  const auto grid = cooperative_groups::this_grid();
  grid.sync();  // S[0]'s bits everywhere; also a block barrier: the shared slice is complete

  for (int64_t t = 1; t < T; ++t) {
    const uint32_t* fired_before = masks + ((t - 1) & 1) * mask_size;  // S[t-1]
    uint32_t* fired_now = masks + (t & 1) * mask_size;                 // S[t]
    for (int64_t b = share.row_begin + share.warp; b < share.row_end; b += kPersistentWarps) {
      const int64_t i = b * N + n;  // in the [B, N] step
      StepStates<scalar_t> step{};
      for (int k = 0; k < kStates; ++k) {
        step.now[k] = X.x[k] + t * BN;
        step.prev[k] = X.x[k] + (t - 1) * BN;
      }
      scalar_t* s_now = S + t * BN;
      bool fired = false;
      if (lengths != nullptr && t >= lengths[b]) {  // the warp's row: past its length, 0
        if (owner) {
          for (int k = 0; k < kStates; ++k) step.now[k][i] = scalar_t(0);
          s_now[i] = scalar_t(0);
        }
      } else {
        const scalar_t rec =
            recurrent_input(fired_before + b * words, nonfinite_words, words, w_slice, share.lane);
        if (owner) {
          forward_neuron<scalar_t, M, R>(p, n, i, step, S + (t - 1) * BN, rec, s_now,
                                         /*replay=*/false);
          fired = s_now[i] != scalar_t(0);
        }
      }
      const uint32_t bits = __ballot_sync(kAllLanes, fired);
      if (share.lane == 0) fired_now[b * words + share.tile] = bits;
    }
    // S[t]'s bits everywhere before step t+1 reads them, and every read of
    // buffer (t-1)&1 done before step t+1 overwrites it.
    if (t + 1 < T) grid.sync();
  }
}

// (gU[t+1] @ w_rec)[b][j] for this lane's source j: sum over ascending n of
// gU[t+1][b][n] * w_rec_adjoint[n][j]. grad_next: row b of gU[t+1], written by every
// block during the step before: read through L2 (__ldcg).
template <typename scalar_t>
__device__ scalar_t gradient_through_w_rec(const scalar_t* grad_next, int N,
                                           const scalar_t* w_slice, int lane) {
  scalar_t sum = scalar_t(0);
  for (int first = 0; first < N; first += kWarp) {
    const scalar_t mine = first + lane < N ? __ldcg(grad_next + first + lane) : scalar_t(0);
    const int count = min(kWarp, N - first);
    for (int k = 0; k < count; ++k) {
      sum += __shfl_sync(kAllLanes, mine, k) * w_slice[(first + k) * kWarp + lane];
    }
  }
  return sum;
}

// The whole reverse recurrence t = T-1..0 for an all-to-all w_rec [N, N];
// w_rec_adjoint: what gU[t+1] multiplies (BackwardLoopInputs).
template <typename scalar_t, typename M, Reset R, Surrogate SG>
__global__ void __launch_bounds__(kPersistentThreads)
    backward_persistent_kernel(int64_t T, int64_t B, int64_t N, int64_t rows_per_group,
                               const scalar_t* __restrict__ w_rec_adjoint, bool detach_reset,
                               scalar_t slope, DeviceParams<scalar_t> p,
                               BackwardPointers<scalar_t> q) {
  extern __shared__ __align__(16) unsigned char shared[];
  scalar_t* w_slice = reinterpret_cast<scalar_t*>(shared);  // [N][kWarp]: w_rec_adjoint[n][tile's j]
  const BlockShare share = block_share(B, ceil_div(N, kWarp), rows_per_group);
  const int64_t j = share.tile * kWarp + share.lane, BN = B * N;
  for (int64_t k = threadIdx.x; k < N * kWarp; k += kPersistentThreads) {
    const int64_t m = share.tile * kWarp + k % kWarp;
    w_slice[k] = m < N ? w_rec_adjoint[k / kWarp * N + m] : scalar_t(0);
  }
  __syncthreads();
  const auto grid = cooperative_groups::this_grid();
  for (int64_t t = T - 1; t >= 0; --t) {
    for (int64_t b = share.row_begin + share.warp; b < share.row_end; b += kPersistentWarps) {
      const int64_t steps = steps_taken(q.lengths, b, T);
      // The warp's row: the sum is taken or skipped by all its lanes together.
      const scalar_t all_to_all_grad =
          t < steps - 1 ? gradient_through_w_rec(q.gU + (t + 1) * BN + b * N, static_cast<int>(N),
                                                 w_slice, share.lane)
                        : scalar_t(0);
      if (j < N) {
        backward_neuron<scalar_t, M, R, SG>(t, steps, B, N, b, j, detach_reset, slope, p,
                                                 q, all_to_all_grad);
      }
    }
    if (t > 0) grid.sync();  // gU[t] everywhere before step t-1 reads it
  }
}

// How a persistent kernel is launched, or why it is not (blocks == 0).
struct PersistentPlan {
  unsigned int blocks = 0;  // tiles x batch groups, all co-resident
  int64_t rows_per_group = 0;
  size_t shared_bytes = 0;
  std::string why_not;
};

template <typename Kernel>
PersistentPlan persistent_plan(Kernel kernel, int64_t B, int64_t N, size_t shared_bytes) {
  PersistentPlan plan;
  plan.shared_bytes = shared_bytes;
  const int device = c10::cuda::current_device();
  int cooperative = 0, shared_optin = 0, sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device));
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&shared_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  if (cooperative == 0) {
    plan.why_not = "the device has no cooperative launch";
    return plan;
  }
  if (shared_bytes > static_cast<size_t>(shared_optin)) {
    plan.why_not = "W_rec's slice needs " + std::to_string(shared_bytes) +
                   " bytes of shared memory per block; the device allows " +
                   std::to_string(shared_optin);
    return plan;
  }
  // The device's limit, not this call's size: a host thread planning another
  // size cannot then lower it under a launch of this one.
  C10_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, shared_optin));
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kPersistentThreads,
                                                               shared_bytes));
  const int64_t tiles = ceil_div(N, kWarp), co_resident = static_cast<int64_t>(per_sm) * sms;
  if (co_resident < tiles) {
    plan.why_not = std::to_string(tiles) + " blocks needed; the device co-schedules " +
                   std::to_string(co_resident);
    return plan;
  }
  plan.rows_per_group = ceil_div(B, std::min(B, co_resident / tiles));
  plan.blocks = static_cast<unsigned int>(tiles * ceil_div(B, plan.rows_per_group));
  return plan;
}

// Launches a planned persistent kernel on the current stream; false if the
// device refuses it as too large to co-schedule now (then nothing ran).
template <typename... Params, typename... Args>
bool launch_cooperative(void (*kernel)(Params...), const PersistentPlan& plan, Args&&... args) {
  cudaLaunchAttribute cooperative{};
  cooperative.id = cudaLaunchAttributeCooperative;
  cooperative.val.cooperative = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(plan.blocks);
  config.blockDim = dim3(kPersistentThreads);
  config.dynamicSmemBytes = plan.shared_bytes;
  config.stream = at::cuda::getCurrentCUDAStream();
  config.attrs = &cooperative;
  config.numAttrs = 1;
  const cudaError_t error = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  if (error == cudaErrorCooperativeLaunchTooLarge) {
    (void)cudaGetLastError();  // clear it: the caller falls back to the per-step design
    return false;
  }
  C10_CUDA_CHECK(error);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

// ---------------------------------------------------------------- time loops

template <typename scalar_t, typename M, Reset R>
void forward_steps(const LoopInputs& in, std::vector<at::Tensor>& states, at::Tensor& spikes,
                   bool replay) {
  constexpr int kStates = num_states_of<M>;
  const int64_t T = spikes.size(0), B = spikes.size(1), N = spikes.size(2);
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
  StateArrays<scalar_t> X{};
  for (int k = 0; k < kStates; ++k) X.x[k] = states[k].data_ptr<scalar_t>();
  scalar_t* S = spikes.data_ptr<scalar_t>();
  const auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned int>(B), static_cast<unsigned int>(ceil_div(N, kThreads)));
  // Recurrent delays (loop.h): each step's recurrent input from the spikes of
  // the D steps before, by ATen on the same stream before the step's launch
  // (dense products: the CPU loop's sums up to their order).
  const bool delayed = in.delayed();
  const at::Tensor rec_step = delayed ? at::empty({B, N}, spikes.options()) : at::Tensor();
  auto delayed_input = [&](int64_t t) {
    const int64_t D = in.delay_taps.size(0);
    auto spikes_at = [&](int64_t step) { return step >= 0 ? spikes[step] : in.history[D + step]; };
    at::Tensor rec = rec_step;
    if (in.delay_taps.dim() == 3) {  // per synapse: sum_k S[t-k] @ W_k.T
      rec.zero_();
      for (int64_t k = 1; k <= D; ++k) rec.addmm_(spikes_at(t - k), in.delay_taps[k - 1]);
    } else {  // per source: P[t] = sum_k K_k * S[t-k], then P[t] @ w_rec.T
      at::Tensor P = at::zeros({B, N}, spikes.options());
      for (int64_t k = D; k >= 1; --k) P.addcmul_(spikes_at(t - k), in.delay_taps[k - 1]);
      if (one_to_one) {
        at::mul_out(rec, P, in.w_rec);
      } else {
        at::mm_out(rec, P, w_out);
      }
    }
    if (in.rec_mask.defined()) rec.mul_(in.rec_mask);
  };
  auto per_step = [&](int64_t first, int64_t end) {
    for (int64_t t = first; t < end; ++t) {
      StepStates<scalar_t> step{};
      for (int k = 0; k < kStates; ++k) {
        step.now[k] = X.x[k] + t * BN;
        step.prev[k] = t > 0 ? X.x[k] + (t - 1) * BN : in.initial[k].data_ptr<scalar_t>();
      }
      const scalar_t* r_prev = t > 0 ? S + (t - 1) * BN : in.s0.data_ptr<scalar_t>();
      if (delayed) delayed_input(t);
      forward_step_kernel<scalar_t, M, R><<<grid, kThreads, 0, stream>>>(
          N, delayed ? nullptr : W, nonfinite_source, delayed ? nullptr : W_self, p, step, r_prev,
          S + t * BN, replay, t, lengths, delayed ? rec_step.data_ptr<scalar_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  };
  if (T > 1 && W != nullptr && !replay && !delayed && cuda_persistent_requested()) {
    const auto kernel = forward_persistent_kernel<scalar_t, M, R>;
    const PersistentPlan plan = persistent_plan(kernel, B, N, forward_shared_bytes<scalar_t>(N));
    if (plan.blocks > 0) {
      per_step(0, 1);  // reads s0, whose values may be anything
      at::Tensor masks = at::empty({2, B, ceil_div(N, kWarp)}, spikes.options().dtype(at::kInt));
      if (launch_cooperative(kernel, plan, T, B, N, plan.rows_per_group, W, nonfinite_source, p, X,
                             S, reinterpret_cast<uint32_t*>(masks.data_ptr<int32_t>()), lengths)) {
        return;
      }
      per_step(1, T);
      return;
    }
  }
  per_step(0, T);
}

template <typename M>
void forward_loop_cuda(const LoopInputs& in, std::vector<at::Tensor>& states, at::Tensor& spikes,
                       bool replay) {
  const c10::cuda::CUDAGuard device_guard(spikes.device());
  AT_DISPATCH_FLOATING_TYPES(spikes.scalar_type(), "recurrent_forward_cuda", [&] {
    dispatch_reset(in.reset, [&](auto reset) {
      forward_steps<scalar_t, M, decltype(reset)::value>(in, states, spikes, replay);
    });
  });
}

template <typename scalar_t, typename M, Reset R, Surrogate SG>
BackwardLoopOutputs backward_steps(const BackwardLoopInputs& in) {
  constexpr int kStates = num_states_of<M>, kParams = num_params_of<M>;
  const int64_t T = in.spikes.size(0), B = in.spikes.size(1), N = in.spikes.size(2);
  const auto opts = in.spikes.options();
  const LoopInputs& st = in.state;
  auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };

  BackwardLoopOutputs out;
  out.grad_input = at::empty({T, B, N}, opts);
  for (int k = 0; k < kStates; ++k) out.grad_initial.push_back(at::empty({B, N}, opts));
  out.grad_s0_reset = at::empty({B, N}, opts);
  std::vector<at::Tensor> acc(kParams);
  for (int k = 0; k < kParams; ++k) {
    if (in.need_params[k]) acc[k] = at::zeros({B, N}, opts);
  }
  const at::Tensor acc_bias = in.need_bias ? at::zeros({B, N}, opts) : at::Tensor();
  const at::Tensor acc_w_self = in.need_w_rec_sum ? at::zeros({B, N}, opts) : at::Tensor();
  // The gradient of the state other than the input state, from step to step.
  const at::Tensor carried = kStates > 1 ? at::zeros({B, N}, opts) : at::Tensor();
  const bool one_to_one = st.one_to_one();
  const bool all_to_all = st.w_rec.defined() && !one_to_one;
  // Per-step: gU[t+1] @ w_rec_adjoint for all rows, one cuBLAS product per
  // step (each W tile read once for the whole batch), then the element-wise
  // launch reads it.
  at::Tensor rec_grad = all_to_all && !st.delayed() ? at::empty({B, N}, opts) : at::Tensor();
  BackwardPointers<scalar_t> q{};
  for (int k = 0; k < kStates; ++k) {
    q.X[k] = ptr(in.states[k]);
    q.X0[k] = ptr(st.initial[k]);
    q.gX_out[k] = ptr(in.grad_states[k]);
    q.g_initial[k] = ptr(out.grad_initial[k]);
    if (q.gX_out[k] != nullptr) q.grad_states_given |= 1u << k;
  }
  q.carried = ptr(carried);
  q.S = ptr(in.spikes);
  q.gS_out = ptr(in.grad_spikes);
  q.s0 = ptr(st.s0);
  q.rec = ptr(rec_grad);
  q.w_self = one_to_one ? ptr(in.w_rec_adjoint) : nullptr;
  q.gU = ptr(out.grad_input);
  q.g_s0 = ptr(out.grad_s0_reset);
  for (int k = 0; k < kParams; ++k) q.acc[k] = ptr(acc[k]);
  q.acc_bias = ptr(acc_bias);
  q.acc_w_self = ptr(acc_w_self);
  q.lengths = st.lengths.defined() ? st.lengths.data_ptr<int64_t>() : nullptr;
  q.all_to_all = all_to_all;
  // Recurrent delays (loop.h): what reaches S[t] through the recurrence sums
  // the next D steps' g~ = m * gU (per source through gP[t] = g~[t] @
  // w_rec_adjoint, kept for every step), by ATen before each launch, which
  // reads it as an all-to-all step's (the driver adds the weights' and the
  // delays' gradients after the loop).
  const bool delayed = st.delayed();
  const bool per_synapse = delayed && in.delay_adjoint.dim() == 3;
  const at::Tensor delayed_grad = delayed ? at::empty({B, N}, opts) : at::Tensor();
  const at::Tensor gP = delayed && !per_synapse ? at::empty({T, B, N}, opts) : at::Tensor();
  auto g_tilde = [&](int64_t t) {
    const at::Tensor g = out.grad_input[t];
    return st.rec_mask.defined() ? g * st.rec_mask : g;
  };
  if (delayed) {
    q.rec = ptr(delayed_grad);
    q.w_self = nullptr;
    q.all_to_all = true;
  }
  const auto p = device_params<scalar_t>(st);
  const auto slope = static_cast<scalar_t>(in.slope);
  bool done = false;
  if (T > 1 && all_to_all && !delayed && cuda_persistent_requested()) {
    const auto kernel = backward_persistent_kernel<scalar_t, M, R, SG>;
    const PersistentPlan plan = persistent_plan(kernel, B, N, backward_shared_bytes<scalar_t>(N));
    done = plan.blocks > 0 && launch_cooperative(kernel, plan, T, B, N, plan.rows_per_group,
                                                 ptr(in.w_rec_adjoint), in.detach_reset, slope, p,
                                                 q);
  }
  const auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t t = T - 1; t >= 0 && !done; --t) {
    if (delayed) {
      at::Tensor rec = delayed_grad;
      rec.zero_();
      for (int64_t k = 1; k <= in.delay_adjoint.size(0) && t + k < T; ++k) {
        if (per_synapse) {
          rec.addmm_(g_tilde(t + k), in.delay_adjoint[k - 1]);
        } else {
          rec.addcmul_(gP[t + k], in.delay_adjoint[k - 1]);
        }
      }
    } else if (all_to_all && t < T - 1) {
      at::mm_out(rec_grad, out.grad_input[t + 1], in.w_rec_adjoint);
    }
    backward_step_kernel<scalar_t, M, R, SG><<<blocks_for(B * N), kThreads, 0, stream>>>(
        t, T, B, N, in.detach_reset, slope, p, q);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (gP.defined()) {  // gP[t] = g~[t] @ w_rec_adjoint, for the steps before
      at::Tensor row = gP[t];
      if (one_to_one) {
        at::mul_out(row, g_tilde(t), in.w_rec_adjoint);
      } else {
        at::mm_out(row, g_tilde(t), in.w_rec_adjoint);
      }
    }
  }
  // Per source, from the gP kept for every step (loop.h): the delays' sums
  // E[k] = sum_{t,b} gP[t] * S[t-k] and the history's gradient, sum_k K_k *
  // gP[t+k] at its steps t < 0, so that the driver need not multiply m * gX
  // by w_rec once more.
  if (gP.defined() && (in.need_delay_sums || in.need_history_grad)) {
    const int64_t D = in.delay_adjoint.size(0);
    if (in.need_delay_sums) {
      const at::Tensor spikes_all = at::cat({st.history, in.spikes});  // S[1-D..T]
      out.delay_sums = at::empty({D, N}, opts);
      for (int64_t k = 1; k <= D; ++k) {
        out.delay_sums[k - 1] = (gP * spikes_all.narrow(0, D - k, T)).sum({0, 1});
      }
    }
    if (in.need_history_grad) {
      out.history_grad = at::zeros({D, B, N}, opts);
      for (int64_t h = 0; h < D; ++h) {  // history step h is t = h - D; tap k reads it from t + k
        for (int64_t k = D - h; k <= D && h - D + k < T; ++k) {
          out.history_grad[h].addcmul_(gP[h - D + k], in.delay_adjoint[k - 1]);
        }
      }
    }
  }
  // Reductions over the batch; ATen's CUDA sum uses no atomics (deterministic).
  out.param_sums.resize(kParams);
  for (int k = 0; k < kParams; ++k) {
    if (in.need_params[k]) out.param_sums[k] = acc[k].sum(0);
  }
  if (in.need_bias) out.bias_sum = acc_bias.sum(0);
  if (in.need_w_rec_sum) out.w_rec_sum = acc_w_self.sum(0);
  return out;
}

template <typename M>
BackwardLoopOutputs backward_loop_cuda(const BackwardLoopInputs& given) {
  const c10::cuda::CUDAGuard device_guard(given.spikes.device());
  // The kernels index the incoming gradients as contiguous [T, B, N]; the
  // driver hands them on broadcast where they are (loop.h).
  BackwardLoopInputs in = given;
  auto contiguous = [](const at::Tensor& g) { return g.defined() ? g.contiguous() : g; };
  in.grad_spikes = contiguous(in.grad_spikes);
  for (at::Tensor& g : in.grad_states) g = contiguous(g);
  return AT_DISPATCH_FLOATING_TYPES(in.spikes.scalar_type(), "recurrent_backward_cuda", [&] {
    return dispatch_options(in.state.reset, in.surrogate, [&](auto reset, auto surrogate) {
      return backward_steps<scalar_t, M, decltype(reset)::value, decltype(surrogate)::value>(
          in);
    });
  });
}

// Binary inputs (blas.h): out[r, n] += the sum of source[index[k], n] over
// k in [offsets[r], offsets[r+1]), in order. A block of kThreads columns of
// one output row per (blockIdx.y, blockIdx.x): each thread sums its column
// alone, in a fixed order, so the result is deterministic. The input
// projection of a binary x (source w_in.T, index its ones' columns per row)
// and grad_w_in.T (source gU, index the rows of each column's ones).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    gather_rows_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ source,
                       const int64_t* __restrict__ offsets, const int32_t* __restrict__ index,
                       int64_t N) {
  const int64_t r = blockIdx.x;
  const int64_t n = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  if (n >= N) return;
  scalar_t acc = out[r * N + n];
  for (int64_t k = offsets[r]; k < offsets[r + 1]; ++k) {
    acc += source[static_cast<int64_t>(index[k]) * N + n];
  }
  out[r * N + n] = acc;
}

}  // namespace

void gather_rows_cuda(at::Tensor& out, const at::Tensor& offsets, const at::Tensor& index,
                      const at::Tensor& source) {
  const int64_t rows = out.size(0), N = out.size(1);
  if (rows == 0 || N == 0) return;
  TORCH_INTERNAL_ASSERT(out.is_contiguous() && source.is_contiguous() &&
                        offsets.scalar_type() == at::kLong && index.scalar_type() == at::kInt &&
                        rows <= std::numeric_limits<int32_t>::max() &&
                        (N + kThreads - 1) / kThreads <= 65535);
  const c10::cuda::CUDAGuard guard(out.device());
  const dim3 grid(static_cast<unsigned int>(rows), static_cast<unsigned int>(blocks_for(N)));
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "gather_rows_cuda", [&] {
    gather_rows_kernel<scalar_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        out.data_ptr<scalar_t>(), source.data_ptr<scalar_t>(), offsets.data_ptr<int64_t>(),
        index.data_ptr<int32_t>(), N);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

bool cuda_persistent_requested() {
  const char* value = std::getenv("TORCH_EXT_CUDA_PERSISTENT");
  return value != nullptr && std::string(value) == "1";
}

std::pair<std::string, std::string> cuda_design_for(int64_t T, int64_t B, int64_t N,
                                                    at::ScalarType compute_dtype) {
  if (!cuda_persistent_requested()) return {"per_step", "TORCH_EXT_CUDA_PERSISTENT is not 1"};
  if (T < 2 || B < 1 || N < 1)
    return {"per_step", "T < 2 or no rows or neurons: no steps to keep on chip"};
  PersistentPlan plan;
  AT_DISPATCH_FLOATING_TYPES(compute_dtype, "cuda_design_for", [&] {
    plan = persistent_plan(forward_persistent_kernel<scalar_t, LIF, Reset::Subtract>, B, N,
                           forward_shared_bytes<scalar_t>(N));
  });
  if (plan.blocks == 0) return {"per_step", plan.why_not};
  return {"persistent", std::to_string(plan.blocks) + " blocks of " +
                            std::to_string(kPersistentThreads) + " threads, " +
                            std::to_string(plan.rows_per_group) + " batch rows per block, " +
                            std::to_string(plan.shared_bytes) + " bytes of shared memory each"};
}

TORCH_LIBRARY_IMPL(torch_ext, CUDA, m) {
  for_each_neuron([&]<typename M>() {
    register_backend<M, forward_loop_cuda<M>, backward_loop_cuda<M>>(m);
  });
}

}  // namespace torch_ext
