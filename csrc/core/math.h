// Per-element math that no neuron model owns: the surrogate gradients, the
// spike, and the reset function with its derivatives. Host and device code
// (the CPU and CUDA loops compute exactly the same expressions).
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "options.h"

namespace torch_ext {

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

template <typename T>
C10_HOST_DEVICE inline T spike(T u, T theta) {
  return u > theta ? T(1) : T(0);  // strict: U == theta does not fire
}

// reset(v, r): v (1 - r) ("zero"), v - theta r ("subtract"), v ("none"), and
// its partial derivatives in v and in r.
template <typename T>
C10_HOST_DEVICE inline T reset_value(Reset reset, T theta, T v, T r) {
  return reset == Reset::Zero ? v * (T(1) - r) : (reset == Reset::Subtract ? v - theta * r : v);
}
template <typename T>
C10_HOST_DEVICE inline T reset_dv(Reset reset, T r) {
  return reset == Reset::Zero ? T(1) - r : T(1);
}
template <typename T>
C10_HOST_DEVICE inline T reset_dr(Reset reset, T theta, T v) {
  return reset == Reset::Zero ? -v : (reset == Reset::Subtract ? -theta : T(0));
}

}  // namespace torch_ext
