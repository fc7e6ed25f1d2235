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
