// The interface between the device-independent driver (driver.cpp) and the
// time loops each backend supplies (cpu/loops.cpp, cuda/loops.cu): what a
// loop reads and what it returns, the same for every neuron model.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "options.h"

namespace torch_ext {

// Everything a time loop reads, contiguous and in the compute dtype.
// The longest delay whose taps fit in one 64-bit word per neuron.
inline constexpr int64_t kMaxBitDelay = 64;

struct LoopInputs {
  at::Tensor w_rec;  // [N, N] (all-to-all), [N] (one-to-one), or undefined: none
  std::vector<at::Tensor> params;   // the model's parameters, each 0-dim or [N]
  std::vector<at::Tensor> initial;  // the model's states at t = 0, each [B, N]
  at::Tensor s0;                    // [B, N]
  Reset reset;
  // [B] int64, or undefined: row b takes steps t < lengths[b] only; later steps
  // output 0 and take no part in the backward.
  at::Tensor lengths;
  // The delayed recurrent input (README, "Recurrent delays"), where defined:
  //   rec[t] = m * sum_{k=1..D} (K_k * S[t-k]) @ w_rec.T      delay_taps [D, N] (per source)
  //   rec[t] = m * sum_{k=1..D} S[t-k] @ W_k.T                 delay_taps [D, N, N]: W_k.T
  // (per synapse: row j of W_k.T holds w_rec[i, j] K_k[i, j] over i); S[t-k]
  // for t-k < 0 from history [D, B, N] = S[1-D..0]; m = rec_mask [B, N], or
  // 1 where undefined. A mask without delays is D = 1 with K_1 = 1.
  at::Tensor delay_taps, history, rec_mask;
  // Per source, where the history is binary (the spikes are), D <= 64 and
  // the driver finds that they pay (use_spike_events): a loop may sum over
  // the taps by events at the spikes, with the taps a neuron uses as the
  // bits of one word (cpu/loops.cpp).
  bool spike_events = false;
  // Optional (CPU, float32, all-to-all, no delays or mask): w_rec.T (bfloat16
  // values) packed for bfloat16_rows_product. The forward then steps blocks
  // of rows together and takes a block's recurrent input at step t >= 1 as
  // one product S[t-1] @ w_rec.T on the CPU's bfloat16 matrix instructions
  // (the spikes exact in bfloat16, float32 sums: the gather's sum up to
  // order) where at least this share of the block's S[t-1] are ones.
  at::Tensor w_out_packed;
  double w_out_packed_density = 0;

  bool one_to_one() const { return w_rec.defined() && w_rec.dim() == 1; }
  bool delayed() const { return delay_taps.defined(); }
};

// Runs t = 1..T. `states` are the model's [T, B, N] state tensors; on entry
// the model's input state (NeuronTraits::input_state) holds the input current
// I[t], on exit every state holds its values. `spikes` [T, B, N] receives
// S[t]; with `replay` it holds them already (a forward's output) and is only
// read: the states are recomputed with the same arithmetic as that forward,
// bitwise, and no threshold decided.
using ForwardLoop = void (*)(const LoopInputs& in, std::vector<at::Tensor>& states,
                             at::Tensor& spikes, bool replay);

struct BackwardLoopInputs {
  LoopInputs state;
  at::Tensor spikes;                     // [T, B, N], compute dtype
  std::vector<at::Tensor> states;        // the model's states, [T, B, N] each
  // The incoming gradients, [T, B, N] or undefined (= zero). Unlike the
  // other tensors they are contiguous along N only: their strides along T
  // and B may be anything, 0 included (a broadcast, such as the gradient of
  // spikes.sum()).
  at::Tensor grad_spikes;
  std::vector<at::Tensor> grad_states;  // per state
  // What the recurrent term of the reverse step multiplies: gX[t+1] @
  // w_rec_adjoint (or gX[t+1] * w_rec_adjoint one-to-one), gX the gradient
  // of the input state: w_rec, its rows scaled by the model's input gain.
  // Undefined without w_rec.
  at::Tensor w_rec_adjoint;
  // With delays (state.delayed()): what the recurrent term of the reverse
  // step reads instead, gS[t] += sum_{k=1..D} of, per source,
  // K_k * ((m * gX[t+k]) @ w_rec_adjoint) (delay_adjoint = K [D, N]) or, per
  // synapse, (m * gX[t+k]) @ (w_rec_adjoint * K_k) (delay_adjoint [D, N, N]).
  at::Tensor delay_adjoint;
  // Per source, with need_delay_sums: [D, N], non-zero at the taps where the
  // kernel's derivatives are not both 0; E[k][n] elsewhere is only ever
  // multiplied by 0, so a loop may leave it 0.
  at::Tensor delay_sum_taps;
  bool detach_reset;
  Surrogate surrogate;
  double slope;
  std::vector<bool> need_params;  // which per-neuron parameter sums to produce
  bool need_bias;                 // the sum of gX
  bool need_w_rec_sum;            // one-to-one w_rec: sum of gX[t] * S[t-1] per neuron
  // All-to-all w_rec: a loop may return sum_t gX[t].T @ S[t-1] (w_rec_grad);
  // where it does not, the driver computes it with matrix products.
  // (Neither this nor need_w_rec_sum with delays: the driver computes those.)
  bool need_w_rec_grad;
  // Per-source delays: a loop may return the delays' sums and the history's
  // gradient (BackwardLoopOutputs); where it does not, the driver computes them.
  bool need_delay_sums = false, need_history_grad = false, need_delayed_spikes = false;
  // Per source, all-to-all: a loop may return sum_t (m * gX[t]).T @ P[t],
  // from P's non-zeros where at most this share of P is non-zero (< 0: never).
  bool need_delayed_w_rec_grad = false;
  double max_delayed_spike_density = -1;
  // Optional (CPU, float32, all-to-all, no delays): w_rec (bfloat16 values)
  // packed for bfloat16_rows_product, which then computes the recurrent term
  // as (gain * gX[t+1]) rounded to bfloat16 @ w_rec, with w_rec_packed_gain
  // the model's input gain ([N]; undefined: 1), the same term as gX[t+1] @
  // w_rec_adjoint up to that rounding.
  at::Tensor w_rec_packed, w_rec_packed_gain;
  // With w_rec_packed and no gain: also return gX rounded to bfloat16
  // (BackwardLoopOutputs::grad_input_rounded), the rows the per-step product
  // rounds anyway, for the driver's products that round gX.
  bool need_grad_input_rounded = false;
};

struct BackwardLoopOutputs {
  // [T, B, N]: gX[t], the gradient of the input state; dL/dI[t] is gX[t]
  // times the model's input gain.
  at::Tensor grad_input;
  // [T, B, N] bfloat16: gX rounded to it, if asked for (need_grad_input_rounded)
  // and computed; otherwise undefined.
  at::Tensor grad_input_rounded;
  std::vector<at::Tensor> grad_initial;  // per state [B, N]: what reaches the initial state
  at::Tensor grad_s0_reset;  // [B, N]: through R[0] only (the w_rec part is added later)
  // [N] sums over t and b of each parameter's terms, of gX, and of gX[t] *
  // S[t-1] (a one-to-one w_rec); undefined if not asked for.
  std::vector<at::Tensor> param_sums;
  at::Tensor bias_sum, w_rec_sum;
  // [N, N]: sum over t of gX[t].T @ S[t-1] (S[0] = s0) for an all-to-all
  // w_rec, if the loop computed it; otherwise undefined.
  at::Tensor w_rec_grad;
  // Per-source delays, if asked for and computed: [D, N] E[k] = sum over t
  // and b of gP[t] * S[t-k], gP = (m * gX) @ w_rec_adjoint (S before step 1
  // from the history); [D, B, N] the history's gradient through the delayed
  // recurrence, sum_k K_k * gP[t+k] at the history's step t.
  at::Tensor delay_sums, history_grad;
  // Per-source delays, if asked for: [T, B, N] P[t] = sum_k K_k * S[t-k];
  // and [N, N] sum_t (m * gX[t]).T @ P[t], if computed.
  at::Tensor delayed_spikes, delayed_w_rec_grad;
};

// Runs the reverse recurrence t = T..1; called only when T, B and N are all > 0.
using BackwardLoop = BackwardLoopOutputs (*)(const BackwardLoopInputs& in);

}  // namespace torch_ext

#ifdef WITH_CUDA
#include <array>
#include <string>
#include <utility>

namespace torch_ext {

// The CUDA designs compiled in, and which one a LIF forward call with an
// all-to-all w_rec of this size and compute dtype (float32 or float64) would
// use on the current device now, with the reason (planned with the LIF
// kernel; the other models' kernels may fit fewer blocks per SM): {"per_step"
// or "persistent", why}. The persistent design is used only when the
// environment variable TORCH_EXT_CUDA_PERSISTENT is "1" at the call.
inline constexpr std::array<const char*, 2> kCudaDesigns{"per_step", "persistent"};
bool cuda_persistent_requested();  // TORCH_EXT_CUDA_PERSISTENT is "1" now
std::pair<std::string, std::string> cuda_design_for(int64_t T, int64_t B, int64_t N,
                                                    at::ScalarType compute_dtype);

}  // namespace torch_ext
#endif
