// What a neuron model is to the machinery around it: its description (the
// op's name, its parameters and states, for the schemas, the checks, the
// Python tables and the messages) and, per model, the per-element math the
// CPU and CUDA loops call. Each model is one header in csrc/neurons/ and one
// line of csrc/neurons/registry.h; nothing else is written per model.
//
// A model `M` (see neurons/lif.h, the smallest) provides:
//
//   static constexpr std::array<ParamSpec, P> kParams;   the per-neuron parameters, in the op's order
//   static constexpr std::array<StateSpec, K> kStates;   the states besides the spikes, in the op's order
//   static constexpr NeuronTraits kTraits;               op name, defaults, the input state, ...
//
// and, for T float or double (host and device), with p[P] the neuron's
// parameters, prev[K] / now[K] its states at t-1 / t:
//
//   forward<T, Reset R, bool Replay>(p, prev, r_prev, input, rec, now, s)
//       the states at t from those at t-1, R[t-1] (= S[t-1]), the input
//       current I[t] and the recurrent input; s = S[t] (with Replay, s holds
//       S[t] already and is only read).
//   spike_gets_grad(grad_spikes_given, grad_states_given, has_next, recurrent, reset, detach)
//       whether any gradient reaches S[t] (else the surrogate term is left
//       out, as autograd never evaluates it: 0 * sg is NaN for a NaN state).
//   backward<T, R, Surrogate SG>(p, slope, detach_reset, spike_has_grad, has_next,
//           now, s, gs_out, g_out, g_next, rec_grad, g_now) -> gS[t] sg[t]
//       one reverse step: g_now[k] = dL/dstate_k[t] from the incoming
//       gradients at t (gs_out, g_out[K]) and those of step t+1 (g_next[K];
//       rec_grad = what reaches S[t] through the recurrence at t+1). Without
//       has_next (a row's last step) the terms of step t+1 are left out rather
//       than added as zeros (0 * inf is NaN). The CPU loops pass the three
//       bools as compile-time constants where they can (see cpu/loops.cpp);
//       a model whose step GCC vectorises only with has_next constant says
//       so with `static constexpr bool kUnrollHasNext = true;`.
//   param_terms<T, R>(p, now, s, prev, r_prev, g_now, grad_s_sg, terms)
//       each parameter's term of its gradient at (t, b, n), summed by the loops.
//   initial_grads<T, R>(detach_reset, p, initial, s0, g_first, g_initial) -> s0's gradient through R[0]
//       what reaches the initial state from step 1 (the w_rec part of s0's
//       gradient is added by the driver).
#pragma once

#include <array>
#include <cstdint>

#include "math.h"

namespace torch_ext {

// A per-neuron parameter: a float, a 0-dim or an [N] tensor in the op.
struct ParamSpec {
  const char* name;
  double default_value;  // the op's default for a Python/C++ number
  bool decay;            // its values must lie in [0, 1] (else: finite)
};

// A state besides the spikes: its initial value's argument name ([B, N])
// and its output's name ([T, B, N]).
struct StateSpec {
  const char* initial;
  const char* output;
};

struct NeuronTraits {
  const char* op;             // the op's name: torch.ops.torch_ext.<op>
  const char* save_flag;      // the low-memory flag's name (False: keep only the spikes)
  const char* default_reset;  // reset's default
  bool default_detach_reset;
  // The state the input current I[t] and the recurrent input enter (its
  // gradient is what the weight gradients multiply), and the parameter p
  // whose 1 - p scales them on the way in (-1: no scale). p's derivative
  // then holds -(I[t] + rec[t]), which the loops do not keep: the driver
  // subtracts that sum, sum gX (I + rec), from the loop's.
  int input_state;
  int gain_param;
};

// The largest counts any model has (the fixed-size arrays of the loops).
constexpr int kMaxParams = 5, kMaxStates = 2;

// A model's description at run time, for the code that is not a template.
struct NeuronInfo {
  NeuronTraits traits;
  const ParamSpec* params;
  int num_params;
  const StateSpec* states;
  int num_states;
  const char* op() const { return traits.op; }
};

template <typename M>
constexpr int num_params_of = static_cast<int>(M::kParams.size());
template <typename M>
constexpr int num_states_of = static_cast<int>(M::kStates.size());

template <typename M>
NeuronInfo neuron_info() {
  static_assert(num_params_of<M> <= kMaxParams && num_states_of<M> <= kMaxStates,
                "raise kMaxParams / kMaxStates for this model");
  return {M::kTraits, M::kParams.data(), num_params_of<M>, M::kStates.data(), num_states_of<M>};
}

}  // namespace torch_ext
