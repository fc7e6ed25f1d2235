// The adaptive neuron (SE-adLIF, README "The adaptive layer"): two states,
// the membrane V and the adaptation A.
//
//   Q[t] = reset(V[t-1], R[t-1])          zero: V (1 - R), subtract: V - theta R, none: V
//   V[t] = alpha Q[t] + (1 - alpha) (I[t] + rec[t] - A[t-1])
//   S[t] = H(V[t] - theta)
//   A[t] = beta A[t-1] + (1 - beta) (a reset(V[t], R[t]) + b S[t])
#pragma once

#include "../core/neuron.h"

namespace torch_ext {

// Whether any gradient reaches S[t]: S[t] reaches A[t] through b S[t], never
// detached, so wherever A[t] gets one (an incoming gradient of the adaptation,
// or a step t+1), and through the incoming spike gradient.
C10_HOST_DEVICE inline bool adaptive_spike_gets_grad(bool grad_spikes_given,
                                                     bool grad_adaptation_given, bool has_next) {
  return grad_spikes_given || grad_adaptation_given || has_next;
}

// The per-neuron parameters of one adaptive neuron.
template <typename T>
struct AdaptiveParams {
  T alpha, beta, a, b, theta;
};

// V[t] from the previous state, the input current and the recurrent input,
// summed in the order the equations are written, like the reference.
template <typename T>
C10_HOST_DEVICE inline T adaptive_membrane(Reset reset, const AdaptiveParams<T>& p, T v_prev,
                                           T a_prev, T r_prev, T input, T rec) {
  const T q = reset_value(reset, p.theta, v_prev, r_prev);
  return p.alpha * q + (T(1) - p.alpha) * ((input + rec) - a_prev);
}

// A[t] from A[t-1], V[t] and S[t].
template <typename T>
C10_HOST_DEVICE inline T adaptation_step(Reset reset, const AdaptiveParams<T>& p, T a_prev, T v,
                                         T s) {
  return p.beta * a_prev + (T(1) - p.beta) * (p.a * reset_value(reset, p.theta, v, s) + p.b * s);
}

// One reverse step at t (README "The adaptive layer"). With gV' = gV[t+1],
// gA' = gA[t+1] and P[t] = reset(V[t], R[t]) (which is Q[t+1]):
//   gA[t] = gA_out[t] + beta gA' - (1 - alpha) gV'
//   gP[t] = alpha gV' + (1 - beta) a gA[t]
//   gS[t] = gS_out[t] + (1 - alpha) gV' @ w_rec + (1 - beta) b gA[t] + c_R gP[t] dP/dR
//   gV[t] = gV_out[t] + gS[t] sg[t] + gP[t] dP/dV
// Terms of step t+1 are left out at a row's last step (has_next false).
// rec_grad is the recurrent term (1 - alpha) gV' @ w_rec. Which per-neuron
// sums the step adds to are in adaptive_sums below.
template <typename T>
struct AdaptiveBackwardTerms {
  T grad_v;     // gV[t]
  T grad_a;     // gA[t]
  T grad_s_sg;  // gS[t] sg[t]
};

template <typename T>
C10_HOST_DEVICE inline AdaptiveBackwardTerms<T> adaptive_backward_step(
    Reset reset, bool detach_reset, Surrogate kind, T slope, const AdaptiveParams<T>& p, T v, T s,
    T grad_s_out, T grad_v_out, T grad_a_out, bool has_next, T grad_v_next, T grad_a_next,
    T rec_grad, bool spike_has_grad) {
  const T grad_a =
      has_next ? grad_a_out + p.beta * grad_a_next - (T(1) - p.alpha) * grad_v_next : grad_a_out;
  const T from_a = (T(1) - p.beta) * grad_a;
  const T grad_p = has_next ? p.alpha * grad_v_next + p.a * from_a : p.a * from_a;
  const T reset_term = (detach_reset || reset == Reset::None)
                           ? T(0)
                           : grad_p * reset_dr(reset, p.theta, v);
  const T grad_s_now = grad_s_out + p.b * from_a + reset_term;
  const T grad_s = has_next ? grad_s_now + rec_grad : grad_s_now;
  const T grad_s_sg =
      spike_has_grad ? grad_s * surrogate_grad(kind, v - p.theta, slope) : T(0);
  const T grad_v = grad_v_out + grad_s_sg + grad_p * reset_dv(reset, s);
  return {grad_v, grad_a, grad_s_sg};
}

// The per-(b, n) terms of the parameter gradients at step t, given V[t],
// S[t], the previous state (V[t-1], A[t-1], R[t-1]) and the step's gradients.
// alpha's term leaves out - gV[t] (I[t] + rec[t]): the driver subtracts those
// sums with matrix products (the loops do not keep I and rec).
template <typename T>
struct AdaptiveSums {
  T alpha, beta, a, b, theta;
};

template <typename T>
C10_HOST_DEVICE inline AdaptiveSums<T> adaptive_sums(Reset reset, const AdaptiveParams<T>& p,
                                                     T v, T s, T v_prev, T a_prev, T r_prev,
                                                     const AdaptiveBackwardTerms<T>& g) {
  const T q = reset_value(reset, p.theta, v_prev, r_prev);
  const T reset_now = reset_value(reset, p.theta, v, s);
  const T from_a = (T(1) - p.beta) * g.grad_a;
  const T theta_term =
      reset == Reset::Subtract
          ? -g.grad_s_sg - (p.alpha * g.grad_v * r_prev + p.a * from_a * s)
          : -g.grad_s_sg;
  return {g.grad_v * (q + a_prev), g.grad_a * (a_prev - (p.a * reset_now + p.b * s)),
          from_a * reset_now, from_a * s, theta_term};
}

// What reaches the initial state (v0, a0, s0) from step 1's gV[1] and gA[1].
template <typename T>
struct AdaptiveInitialGrads {
  T v0, a0, s0_reset;  // s0_reset: through R[0] only (the w_rec part is added by the driver)
};

template <typename T>
C10_HOST_DEVICE inline AdaptiveInitialGrads<T> adaptive_initial_grads(
    Reset reset, bool detach_reset, const AdaptiveParams<T>& p, T v0, T s0, T grad_v1,
    T grad_a1) {
  const T grad_q = p.alpha * grad_v1;
  const T s0_reset = (detach_reset || reset == Reset::None)
                         ? T(0)
                         : grad_q * reset_dr(reset, p.theta, v0);
  return {grad_q * reset_dv(reset, s0), p.beta * grad_a1 - (T(1) - p.alpha) * grad_v1, s0_reset};
}

struct AdLIF {
  enum { kAlpha, kBeta, kA, kB, kTheta };
  static constexpr std::array<ParamSpec, 5> kParams{{{"alpha", 0.95, true},
                                                     {"beta", 0.99, true},
                                                     {"a", 0.5, false},
                                                     {"b", 1.0, false},
                                                     {"theta", 1.0, false}}};
  static constexpr std::array<StateSpec, 2> kStates{{{"v0", "membrane"}, {"a0", "adaptation"}}};
  // The input enters V with the gain 1 - alpha, and alpha's derivative holds
  // -(I + rec), which the driver subtracts (adaptive_sums).
  static constexpr NeuronTraits kTraits{"recurrent_adlif", "save_state", "zero", true,
                                        /*input_state=*/0, /*gain_param=*/kAlpha};
  // CPU loops: GCC 12 vectorises this step only with has_next a compile-time constant.
  static constexpr bool kUnrollHasNext = true;

  template <typename T>
  C10_HOST_DEVICE static AdaptiveParams<T> params(const T* p) {
    return {p[kAlpha], p[kBeta], p[kA], p[kB], p[kTheta]};
  }

  template <typename T, Reset R, bool Replay>
  C10_HOST_DEVICE static void forward(const T* p, const T* prev, T r_prev, T input, T rec, T* now,
                                      T& s) {
    const AdaptiveParams<T> q = params(p);
    now[0] = adaptive_membrane(R, q, prev[0], prev[1], r_prev, input, rec);
    if (!Replay) s = spike(now[0], q.theta);
    now[1] = adaptation_step(R, q, prev[1], now[0], s);
  }

  C10_HOST_DEVICE static bool spike_gets_grad(bool grad_spikes_given, unsigned grad_states,
                                              bool has_next, bool /*recurrent*/, Reset /*reset*/,
                                              bool /*detach_reset*/) {
    return adaptive_spike_gets_grad(grad_spikes_given, (grad_states & 2u) != 0, has_next);
  }

  template <typename T, Reset R, Surrogate SG>
  C10_HOST_DEVICE static T backward(const T* p, T slope, bool detach_reset, bool spike_has_grad,
                                    bool has_next, const T* now, T s, T gs_out, const T* g_out,
                                    const T* g_next, T rec_grad, T* g_now) {
    const auto g = adaptive_backward_step(R, detach_reset, SG, slope, params(p), now[0], s, gs_out,
                                          g_out[0], g_out[1], has_next, g_next[0], g_next[1],
                                          rec_grad, spike_has_grad);
    g_now[0] = g.grad_v;
    g_now[1] = g.grad_a;
    return g.grad_s_sg;
  }

  template <typename T, Reset R>
  C10_HOST_DEVICE static void param_terms(const T* p, const T* now, T s, const T* prev, T r_prev,
                                          const T* g_now, T grad_s_sg, T* terms) {
    const auto sums = adaptive_sums(R, params(p), now[0], s, prev[0], prev[1], r_prev,
                                    AdaptiveBackwardTerms<T>{g_now[0], g_now[1], grad_s_sg});
    terms[kAlpha] = sums.alpha;
    terms[kBeta] = sums.beta;
    terms[kA] = sums.a;
    terms[kB] = sums.b;
    terms[kTheta] = sums.theta;
  }

  template <typename T, Reset R>
  C10_HOST_DEVICE static T initial_grads(bool detach_reset, const T* p, const T* initial, T s0,
                                         const T* g_first, T* g_initial) {
    const auto g =
        adaptive_initial_grads(R, detach_reset, params(p), initial[0], s0, g_first[0], g_first[1]);
    g_initial[0] = g.v0;
    g_initial[1] = g.a0;
    return g.s0_reset;
  }
};

}  // namespace torch_ext
