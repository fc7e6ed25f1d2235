// The options every neuron model takes (reset, surrogate), written once: the
// tables drive the enums, the parsing of the names, the error messages
// listing them, the default slopes, and (through torch_ext._C) the Python
// checks and the tests' option grid. Also the host-side switches that turn an
// option into a compile-time constant for the time loops.
#pragma once

#include <c10/macros/Macros.h>

#include <type_traits>

namespace torch_ext {

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

// A run-time bool as a compile-time one (std::bool_constant), for the flags
// GCC does not vectorise a select on.
template <typename F>
decltype(auto) dispatch_bool(bool value, F&& f) {
  return value ? f(std::true_type{}) : f(std::false_type{});
}

}  // namespace torch_ext
