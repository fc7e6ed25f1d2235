// The LIF neuron (README "The model", "The gradients"): one state, the
// membrane U.
//
//   U[t] = alpha U[t-1] + I[t] + rec[t] - theta R[t-1]      reset "subtract"
//   U[t] = alpha U[t-1] (1 - R[t-1]) + I[t] + rec[t]        reset "zero"
//   U[t] = alpha U[t-1] + I[t] + rec[t]                     reset "none"
//   S[t] = H(U[t] - theta)
#pragma once

#include "../core/neuron.h"

namespace torch_ext {

// U[t] from the previous state; `rec` is the recurrent input S[t-1] @ w_rec.T.
// Summed in the order the equations are written, like the reference.
template <typename T>
C10_HOST_DEVICE inline T membrane_step(Reset reset, T alpha, T theta, T u_prev, T r_prev, T input,
                                       T rec) {
  switch (reset) {
    case Reset::Subtract:
      return alpha * u_prev + input + rec - theta * r_prev;
    case Reset::Zero:
      return alpha * u_prev * (T(1) - r_prev) + input + rec;
    case Reset::None:
      return alpha * u_prev + input + rec;
  }
  return T(0);
}

// dU[t+1]/dU[t] and dU[t+1]/dR[t], given U[t] and R[t] (= S[t]).
template <typename T>
C10_HOST_DEVICE inline T dnext_du(Reset reset, T alpha, T r) {
  return reset == Reset::Zero ? alpha * (T(1) - r) : alpha;
}
template <typename T>
C10_HOST_DEVICE inline T dnext_dr(Reset reset, T alpha, T theta, T u) {
  return reset == Reset::Subtract ? -theta : (reset == Reset::Zero ? -alpha * u : T(0));
}

// c_R * g * dU[t+1]/dR[t]: what reaches the reset signal R[t] from g = gU[t+1]
// (nothing with detach_reset, or without a reset).
template <typename T>
C10_HOST_DEVICE inline T reset_grad(Reset reset, bool detach_reset, T alpha, T theta, T u, T g) {
  return (detach_reset || reset == Reset::None) ? T(0) : g * dnext_dr(reset, alpha, theta, u);
}

// Whether any gradient reaches the spikes S[t] of a LIF neuron (or of any
// neuron whose spike feeds only the next step's reset and recurrence): an
// incoming gradient of the spike output, or a step t+1 that reads S[t]
// through w_rec or a reset that is not detached.
C10_HOST_DEVICE inline bool spike_gets_grad(bool grad_spikes_given, bool has_next,
                                            bool recurrent, Reset reset, bool detach_reset) {
  return grad_spikes_given || (has_next && (recurrent || (reset != Reset::None && !detach_reset)));
}

// Per-neuron terms of one reverse step at time t (README "The gradients").
template <typename T>
struct BackwardTerms {
  T grad_u;     // gU[t]
  T grad_s_sg;  // gS[t] * sg[t]
};

// gS[t] = gS_out[t] + (gU[t+1] @ w_rec) + c_R * gU[t+1] * dU[t+1]/dR[t]
// gU[t] = gU_out[t] + gS[t] * sg[t] + gU[t+1] * dU[t+1]/dU[t]
// The options are selected, not branched on, so that CPU loops vectorise.
template <typename T>
C10_HOST_DEVICE inline BackwardTerms<T> backward_step(Reset reset, bool detach_reset,
                                                      Surrogate kind, T slope, T alpha, T theta,
                                                      T u, T s, T grad_s_out, T grad_u_out,
                                                      bool has_next, T grad_u_next, T rec_grad,
                                                      bool spike_has_grad) {
  const T reset_term = reset_grad(reset, detach_reset, alpha, theta, u, grad_u_next);
  const T grad_s = has_next ? grad_s_out + rec_grad + reset_term : grad_s_out;
  const T grad_s_sg = spike_has_grad ? grad_s * surrogate_grad(kind, u - theta, slope) : T(0);
  const T grad_u_now = grad_u_out + grad_s_sg;
  const T grad_u = has_next ? grad_u_now + grad_u_next * dnext_du(reset, alpha, s) : grad_u_now;
  return {grad_u, grad_s_sg};
}

// Contributions of gU[t] to grad_alpha and grad_theta, given U[t-1] and R[t-1].
template <typename T>
C10_HOST_DEVICE inline T alpha_grad_term(Reset reset, T grad_u, T u_prev, T r_prev) {
  return reset == Reset::Zero ? grad_u * u_prev * (T(1) - r_prev) : grad_u * u_prev;
}
template <typename T>
C10_HOST_DEVICE inline T theta_grad_term(Reset reset, T grad_s_sg, T grad_u, T r_prev) {
  return reset == Reset::Subtract ? -grad_s_sg - grad_u * r_prev : -grad_s_sg;
}

// The models whose spike reaches only step t+1's recurrence and reset (LIF, CUBA).
struct SpikeFeedsTheNextStep {
  C10_HOST_DEVICE static bool spike_gets_grad(bool grad_spikes_given, unsigned /*grad_states*/,
                                              bool has_next, bool recurrent, Reset reset,
                                              bool detach_reset) {
    return torch_ext::spike_gets_grad(grad_spikes_given, has_next, recurrent, reset, detach_reset);
  }
};

struct LIF : SpikeFeedsTheNextStep {
  enum { kAlpha, kTheta };
  static constexpr std::array<ParamSpec, 2> kParams{{{"alpha", 0.9, true}, {"theta", 1.0, false}}};
  static constexpr std::array<StateSpec, 1> kStates{{{"u0", "membrane"}}};
  static constexpr NeuronTraits kTraits{"recurrent_lif", "save_membrane", "subtract", false,
                                        /*input_state=*/0, /*gain_param=*/-1};

  template <typename T, Reset R, bool Replay>
  C10_HOST_DEVICE static void forward(const T* p, const T* prev, T r_prev, T input, T rec, T* now,
                                      T& s) {
    now[0] = membrane_step(R, p[kAlpha], p[kTheta], prev[0], r_prev, input, rec);
    if (!Replay) s = spike(now[0], p[kTheta]);
  }

  template <typename T, Reset R, Surrogate SG>
  C10_HOST_DEVICE static T backward(const T* p, T slope, bool detach_reset, bool spike_has_grad,
                                    bool has_next, const T* now, T s, T gs_out, const T* g_out,
                                    const T* g_next, T rec_grad, T* g_now) {
    const auto terms = backward_step(R, detach_reset, SG, slope, p[kAlpha], p[kTheta], now[0], s,
                                     gs_out, g_out[0], has_next, g_next[0], rec_grad, spike_has_grad);
    g_now[0] = terms.grad_u;
    return terms.grad_s_sg;
  }

  template <typename T, Reset R>
  C10_HOST_DEVICE static void param_terms(const T* /*p*/, const T* /*now*/, T /*s*/,
                                          const T* prev, T r_prev, const T* g_now, T grad_s_sg,
                                          T* terms) {
    terms[kAlpha] = alpha_grad_term(R, g_now[0], prev[0], r_prev);
    terms[kTheta] = theta_grad_term(R, grad_s_sg, g_now[0], r_prev);
  }

  // u0: gU[1] dU[1]/dU[0]; returns c_R gU[1] dU[1]/dR[0].
  template <typename T, Reset R>
  C10_HOST_DEVICE static T initial_grads(bool detach_reset, const T* p, const T* initial, T s0,
                                         const T* g_first, T* g_initial) {
    g_initial[0] = g_first[0] * dnext_du(R, p[kAlpha], s0);
    return reset_grad(R, detach_reset, p[kAlpha], p[kTheta], initial[0], g_first[0]);
  }
};

}  // namespace torch_ext
