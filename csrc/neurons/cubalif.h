// The current-based LIF neuron (CUBA; NIR's CubaLIF, snnTorch's RSynaptic,
// Norse's LIF cell; README "The current-based layer"): two states, the
// membrane U and the synaptic current J, which filters everything that
// reaches the neuron; the membrane takes the current of the same step.
//
//   J[t] = alpha_syn J[t-1] + I[t] + rec[t]
//   U[t] = alpha U[t-1] + J[t] - theta R[t-1]        reset "subtract"
//   U[t] = alpha U[t-1] (1 - R[t-1]) + J[t]          reset "zero"
//   U[t] = alpha U[t-1] + J[t]                       reset "none"
//   S[t] = H(U[t] - theta)
//
// Reverse step at t, with gU' = gU[t+1], gJ' = gJ[t+1] (terms of t+1 left
// out at a row's last step):
//   gS[t] = gS_out[t] + gJ' @ w_rec + c_R gU' dU[t+1]/dR[t]
//   gU[t] = gU_out[t] + gS[t] sg[t] + gU' dU[t+1]/dU[t]      (the LIF step's)
//   gJ[t] = gJ_out[t] + gU[t] + alpha_syn gJ'
#pragma once

#include "lif.h"

namespace torch_ext {

// U[t] from U[t-1], R[t-1] and J[t], summed in the order written above.
template <typename T>
C10_HOST_DEVICE inline T cuba_membrane(Reset reset, T alpha, T theta, T u_prev, T r_prev, T j) {
  switch (reset) {
    case Reset::Subtract:
      return alpha * u_prev + j - theta * r_prev;
    case Reset::Zero:
      return alpha * u_prev * (T(1) - r_prev) + j;
    case Reset::None:
      return alpha * u_prev + j;
  }
  return T(0);
}

// S[t] reaches only step t+1's recurrence and reset, as in the LIF neuron.
struct CubaLIF : SpikeFeedsTheNextStep {
  enum { kAlpha, kAlphaSyn, kTheta };
  enum { kU, kJ };
  static constexpr std::array<ParamSpec, 3> kParams{
      {{"alpha", 0.9, true}, {"alpha_syn", 0.8, true}, {"theta", 1.0, false}}};
  static constexpr std::array<StateSpec, 2> kStates{{{"u0", "membrane"}, {"j0", "current"}}};
  static constexpr NeuronTraits kTraits{"recurrent_cubalif", "save_state", "subtract", false,
                                        /*input_state=*/kJ, /*gain_param=*/-1};
  // CPU loops: GCC 12 vectorises this step only with has_next a compile-time constant.
  static constexpr bool kUnrollHasNext = true;

  template <typename T, Reset R, bool Replay>
  C10_HOST_DEVICE static void forward(const T* p, const T* prev, T r_prev, T input, T rec, T* now,
                                      T& s) {
    now[kJ] = p[kAlphaSyn] * prev[kJ] + input + rec;
    now[kU] = cuba_membrane(R, p[kAlpha], p[kTheta], prev[kU], r_prev, now[kJ]);
    if (!Replay) s = spike(now[kU], p[kTheta]);
  }

  template <typename T, Reset R, Surrogate SG>
  C10_HOST_DEVICE static T backward(const T* p, T slope, bool detach_reset, bool spike_has_grad,
                                    bool has_next, const T* now, T s, T gs_out, const T* g_out,
                                    const T* g_next, T rec_grad, T* g_now) {
    // The membrane's step is the LIF neuron's (U[t+1] depends on U[t] and
    // R[t] as there; the recurrence reaches S[t] through J[t+1]).
    const auto terms = backward_step(R, detach_reset, SG, slope, p[kAlpha], p[kTheta], now[kU], s,
                                     gs_out, g_out[kU], has_next, g_next[kU], rec_grad,
                                     spike_has_grad);
    g_now[kU] = terms.grad_u;
    const T grad_j_now = g_out[kJ] + terms.grad_u;
    g_now[kJ] = has_next ? grad_j_now + p[kAlphaSyn] * g_next[kJ] : grad_j_now;
    return terms.grad_s_sg;
  }

  template <typename T, Reset R>
  C10_HOST_DEVICE static void param_terms(const T* /*p*/, const T* /*now*/, T /*s*/,
                                          const T* prev, T r_prev, const T* g_now, T grad_s_sg,
                                          T* terms) {
    terms[kAlpha] = alpha_grad_term(R, g_now[kU], prev[kU], r_prev);
    terms[kAlphaSyn] = g_now[kJ] * prev[kJ];
    terms[kTheta] = theta_grad_term(R, grad_s_sg, g_now[kU], r_prev);
  }

  template <typename T, Reset R>
  C10_HOST_DEVICE static T initial_grads(bool detach_reset, const T* p, const T* initial, T s0,
                                         const T* g_first, T* g_initial) {
    g_initial[kU] = g_first[kU] * dnext_du(R, p[kAlpha], s0);
    g_initial[kJ] = p[kAlphaSyn] * g_first[kJ];
    return reset_grad(R, detach_reset, p[kAlpha], p[kTheta], initial[kU], g_first[kU]);
  }
};

}  // namespace torch_ext
