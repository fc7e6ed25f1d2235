// The neuron models. Each is one header (its description and its per-element
// math, csrc/core/neuron.h says what a model provides) and one line below:
// the ops, their checks, autograd, autocast and Meta kernels, the CPU and CUDA
// loops, the Python tables and the tests all come from this list.
#pragma once

#include "adlif.h"
#include "cubalif.h"
#include "lif.h"

#define TORCH_EXT_FOR_EACH_NEURON(X) \
  X(LIF)                             \
  X(AdLIF)                           \
  X(CubaLIF)

namespace torch_ext {

// f.template operator()<M>() for every model M of the list, in its order:
// for_each_neuron([&]<typename M>() { ... });
template <typename F>
void for_each_neuron(F&& f) {
#define TORCH_EXT_CALL(M) f.template operator()<M>();
  TORCH_EXT_FOR_EACH_NEURON(TORCH_EXT_CALL)
#undef TORCH_EXT_CALL
}

}  // namespace torch_ext
