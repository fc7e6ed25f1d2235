// The device-independent part of every neuron op, written once: the checks
// (shared by the real, Meta and check kernels), the input projection, the
// states for the backward (saved or replayed), and the input and weight
// gradients around the backend's time loops (loop.h).
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "blas.h"
#include "loop.h"
#include "neuron.h"

namespace torch_ext {

using OptionalTensor = std::optional<at::Tensor>;

// The options of a call, checked. Every check raises an error naming the op
// and the argument (ValueError/TypeError in Python), the same for every caller.
struct Options {
  Reset reset;
  bool detach_reset;
  Surrogate surrogate;
  double slope;  // the surrogate's default when none was given
};
Options check_options(const char* op, c10::string_view reset, bool detach_reset,
                      c10::string_view surrogate, std::optional<double> slope,
                      at::ScalarType compute_dtype);

// x and the neuron parameters must be given (defined tensors): checked
// before anything reads their devices (autograd and the dispatcher do), so
// the error names the argument.
void check_required(const NeuronInfo& neuron, const at::Tensor& x,
                    const std::vector<at::Tensor>& params);

// float64 for float64 inputs; float16/bfloat16/float32 compute in float32.
at::ScalarType compute_dtype(at::ScalarType input_dtype);

// The tensors of a neuron op's call, in the op's order (its schema:
// x, w_in, w_rec, bias, the model's parameters, its initial states, s0,
// ..., lengths).
struct OpTensors {
  at::Tensor x;
  OptionalTensor w_in, w_rec, bias;
  std::vector<at::Tensor> params;
  std::vector<OptionalTensor> initial;
  OptionalTensor s0, lengths;
  // Recurrent delays (README, "Recurrent delays"): [N] per source or [N, N]
  // per synapse; the kernel's spread sigma, 0-dim or [N] (absent: 0); the
  // recurrent mask [B, N] (also without delays). With delays s0 may be the
  // spike history [max_delay, B, N].
  OptionalTensor delays, delay_sigma, rec_mask;

  // The differentiable ones, x .. s0, delays, delay_sigma, rec_mask, in the
  // op's order (lengths has no gradient).
  std::vector<OptionalTensor> grad_inputs() const {
    std::vector<OptionalTensor> flat{x, w_in, w_rec, bias};
    flat.insert(flat.end(), params.begin(), params.end());
    flat.insert(flat.end(), initial.begin(), initial.end());
    flat.insert(flat.end(), {s0, delays, delay_sigma, rec_mask});
    return flat;
  }
  // Whether the recurrent input takes the delayed path (delays or a mask).
  bool delayed() const { return delays.has_value() || rec_mask.has_value(); }
};

// Its other arguments.
struct OpSettings {
  std::string reset;
  bool detach_reset;
  std::string surrogate;
  std::optional<double> slope;
  bool save_state;  // false: the low-memory mode (the backward replays the states)
  std::optional<int64_t> max_delay = std::nullopt;  // D, with delays
};

// A backward call: the forward's inputs and outputs (states absent in the
// low-memory mode) and the incoming gradients (absent: zero).
struct BackwardTensors {
  OpTensors inputs;
  at::Tensor spikes;
  std::vector<OptionalTensor> states;
  OptionalTensor grad_spikes;
  std::vector<OptionalTensor> grad_states;
};

// The number of a model's differentiable inputs, x .. s0 and the three of
// the delays (lengths has none).
inline int num_grad_inputs(const NeuronInfo& neuron) {
  return 8 + neuron.num_params + neuron.num_states;
}

// Forward: (spikes in x's dtype, the states in the compute dtype, each
// [T, B, N]): the input current by one product, then the loop.
std::vector<at::Tensor> neuron_forward(const NeuronInfo& neuron, const OpTensors& t,
                                       const OpSettings& s, ForwardLoop loop);
// Backward: the gradient of each differentiable input (num_grad_inputs, in
// the op's order) that `needs` asks for; the others are empty tensors (numel
// 0) and never computed. Without the saved states (the low-memory mode) they
// are recomputed from the inputs and the spikes: one product and a replay of
// the forward loop.
std::vector<at::Tensor> neuron_backward(const NeuronInfo& neuron, const BackwardTensors& t,
                                        const OpSettings& s, const std::vector<bool>& needs,
                                        ForwardLoop forward_loop, BackwardLoop loop);
// Whether a call with this x may gather its binary inputs (the switch
// TORCH_EXT_BINARY_INPUTS and the device; driver.cpp).
bool may_gather(const at::Tensor& x);
// x's active inputs if the op multiplies w_in by gathering them: it may, x is
// binary (0 and 1 only), w_in finite, and at most the crossover density of
// ones (driver.cpp); nullopt: dense products. A backward call reuses the
// index its forward built where x is unchanged.
std::optional<BinaryRows> binary_input(const at::Tensor& x, const at::Tensor& w_in,
                                       bool backward = false);

// The Meta kernels: the same checks, then outputs of the right shapes and
// dtypes, nothing computed (torch.compile, torch.export and opcheck run them
// on fake tensors with symbolic shapes).
std::vector<at::Tensor> neuron_forward_meta(const NeuronInfo& neuron, const OpTensors& t,
                                            const OpSettings& s);
std::vector<at::Tensor> neuron_backward_meta(const NeuronInfo& neuron, const BackwardTensors& t,
                                             const OpSettings& s, const std::vector<bool>& needs);
// The forward's checks alone (the `_<op>_check` op the Python reference calls,
// so that it accepts and rejects exactly what the op does).
void neuron_check(const NeuronInfo& neuron, const OpTensors& t, const OpSettings& s);

// Test hook for two paths of MKL's bfloat16 products: "w_rec_grad", the
// spikes' share of grad_w_rec as one bfloat16 product; "recurrence", the
// reverse loop's per-step product on the bfloat16 matrix instructions;
// "forward_recurrence", the forward's recurrent input on them.
// forced: 1 wherever the path can run (the forward's at every step), 0
// never, -1 by the op's rules (the default: the spikes' density; N).
void set_low_precision_path_forced(const std::string& path, int forced);

}  // namespace torch_ext
