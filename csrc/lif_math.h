// Per-neuron, per-step math of the recurrent LIF layer, shared by the CPU and
// CUDA kernels so that both compute exactly the same expressions.
// Equations: README.md, "The model" and "The gradients".
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

namespace torch_ext {

// The options, written once. Each table drives the enums below, the parsing of
// the names, the error messages listing them, the default slopes, and (through
// torch_ext._C) the Python checks and the tests' option grid.
//   reset:     X(enumerator, name)
//   surrogate: X(enumerator, name, default slope k)
#define TORCH_EXT_FOR_EACH_RESET(X) \
  X(Subtract, "subtract")           \
  X(Zero, "zero")                   \
  X(None, "none")
#define TORCH_EXT_FOR_EACH_SURROGATE(X) \
  X(Sigmoid, "sigmoid", 25.0)           \
  X(FastSigmoid, "fast_sigmoid", 25.0)  \
  X(Atan, "atan", 2.0)                  \
  X(Triangle, "triangle", 1.0)

#define TORCH_EXT_ENUMERATOR(name, ...) name,
enum class Reset : int { TORCH_EXT_FOR_EACH_RESET(TORCH_EXT_ENUMERATOR) };
enum class Surrogate : int { TORCH_EXT_FOR_EACH_SURROGATE(TORCH_EXT_ENUMERATOR) };
#undef TORCH_EXT_ENUMERATOR

// Switches over these enums list every case and have no `default:`, so the
// compiler flags a case a new table entry forgot; the line after such a switch
// is unreachable.

// -log of the smallest normal number of T, rounded down: exp(-x) is normal for x below it.
template <typename T>
C10_HOST_DEVICE constexpr T exp_cutoff() {
  return sizeof(T) == sizeof(float) ? T(87) : T(708);
}

// min(a, cutoff) for a >= 0 (a NaN a with its sign bit clear gives cutoff), so that exp never
// underflows: vector exp (glibc's libmvec, which CPU loops use) sends such
// lanes to a slow scalar path. On the CPU it is taken on the bit patterns
// (non-negative floats order like their bits) because the compiler rewrites a
// floating-point select inside exp into exp of the unclamped value.
template <typename T>
C10_HOST_DEVICE inline T clamp_exponent(T a, T cutoff) {
#ifdef __CUDA_ARCH__
  return a > cutoff ? cutoff : a;
#else
  using Bits = std::conditional_t<sizeof(T) == sizeof(int32_t), int32_t, int64_t>;
  const Bits a_bits = __builtin_bit_cast(Bits, a), cutoff_bits = __builtin_bit_cast(Bits, cutoff);
  return __builtin_bit_cast(T, a_bits < cutoff_bits ? a_bits : cutoff_bits);
#endif
}

// sg(v) = d spike / d v used by the backward pass. Every branch stays finite for
// finite v: terms that overflow land in a denominator (-> 0) or in exp(-inf).
template <typename T>
C10_HOST_DEVICE inline T surrogate_grad(Surrogate kind, T v, T k) {
  switch (kind) {
    case Surrogate::Sigmoid: {
      // k * s * (1 - s) with s = sigmoid(k v), written with e = exp(-k|v|) <= 1.
      // Past the cutoff e would be subnormal, where the arithmetic runs ~10x
      // slower on x86, and the result (below k * 1.6e-38 for float) is
      // returned as 0.
      // Written so that CPU loops vectorise it (see clamp_exponent). A NaN v
      // stays NaN.
      const T cutoff = exp_cutoff<T>();
      const T a = k * std::abs(v);
      const T e = std::exp(-clamp_exponent(a, cutoff));
      const T d = T(1) + e;
      const T value = a > cutoff ? T(0) : k * e / (d * d);
      return a != a ? a : value;
    }
    case Surrogate::FastSigmoid: {
      const T d = T(1) + k * std::abs(v);
      return T(1) / (d * d);
    }
    case Surrogate::Atan: {
      const T z = T(1.5707963267948966) * k * v;
      return (k / T(2)) / (T(1) + z * z);
    }
    case Surrogate::Triangle: {
      const T r = T(1) - k * std::abs(v);
      return r <= T(0) ? T(0) : k * r;  // NaN falls through to k * NaN
    }
  }
  return T(0);
}

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

template <typename T>
C10_HOST_DEVICE inline T spike(T u, T theta) {
  return u > theta ? T(1) : T(0);  // strict: U == theta does not fire
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

// Whether any gradient reaches the spikes S[t]: an incoming gradient of the
// spike output, or a step t+1 that reads S[t] through w_rec or a reset that
// is not detached.
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
// At t = T there is no step t+1: its terms are left out rather than added as
// zeros, because 0 * dU[t+1]/dR[t] is NaN for an infinite U[t] (reset "zero").
// Likewise without spike_has_grad (see spike_gets_grad) no gradient reaches
// S[t] and the surrogate term is left out: autograd never evaluates it, and
// 0 * sg[t] is NaN for a NaN membrane.
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

// What reaches the initial state from gU[1]: {gU[1] dU[1]/dU[0], c_R gU[1]
// dU[1]/dR[0]} (the w_rec part of s0's gradient is added by the driver).
template <typename T>
struct InitialGrads {
  T u0, s0_reset;
};
template <typename T>
C10_HOST_DEVICE inline InitialGrads<T> lif_initial_grads(Reset reset, bool detach_reset, T alpha,
                                                         T theta, T u0, T s0, T grad_u1) {
  return {grad_u1 * dnext_du(reset, alpha, s0),
          reset_grad(reset, detach_reset, alpha, theta, u0, grad_u1)};
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

// Host-side switches that turn a runtime option into a compile-time constant
// (`decltype(tag)::value`), so the hot loops carry no per-element branches.
// The switches are generated from the tables, so they cover every option.
template <typename F>
decltype(auto) dispatch_reset(Reset reset, F&& f) {
#define TORCH_EXT_CASE(name, ...) \
  case Reset::name:               \
    return f(std::integral_constant<Reset, Reset::name>{});
  switch (reset) { TORCH_EXT_FOR_EACH_RESET(TORCH_EXT_CASE) }
#undef TORCH_EXT_CASE
  return f(std::integral_constant<Reset, Reset::Subtract>{});  // unreachable
}

template <typename F>
decltype(auto) dispatch_surrogate(Surrogate kind, F&& f) {
#define TORCH_EXT_CASE(name, ...) \
  case Surrogate::name:           \
    return f(std::integral_constant<Surrogate, Surrogate::name>{});
  switch (kind) { TORCH_EXT_FOR_EACH_SURROGATE(TORCH_EXT_CASE) }
#undef TORCH_EXT_CASE
  return f(std::integral_constant<Surrogate, Surrogate::Sigmoid>{});  // unreachable
}

// Both switches at once, for kernels templated on the reset and the surrogate.
template <typename F>
decltype(auto) dispatch_options(Reset reset, Surrogate kind, F&& f) {
  return dispatch_reset(reset, [&](auto reset_tag) {
    return dispatch_surrogate(kind,
                              [&](auto surrogate_tag) { return f(reset_tag, surrogate_tag); });
  });
}

}  // namespace torch_ext
