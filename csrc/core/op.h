// The op template: from a neuron model's description (neuron.h) it produces
// the typed kernels every backend registers (the op's schema, spelled as a C++
// signature with one argument per parameter and state), the calls through
// the dispatcher that the C++ API and autograd make, and the schema strings.
// Each kernel turns its arguments into the driver's OpTensors / OpSettings
// at once; everything after that is written once for every model.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "driver.h"

namespace torch_ext {

// A backend's forward / backward: the driver with that backend's loops (or the Meta kernels).
using ForwardFn = std::vector<at::Tensor> (*)(const NeuronInfo&, const OpTensors&,
                                              const OpSettings&);
using BackwardFn = std::vector<at::Tensor> (*)(const NeuronInfo&, const BackwardTensors&,
                                               const OpSettings&, const std::vector<bool>&);

template <ForwardLoop Loop>
std::vector<at::Tensor> forward_with_loop(const NeuronInfo& n, const OpTensors& t,
                                          const OpSettings& s) {
  return neuron_forward(n, t, s, Loop);
}
template <ForwardLoop Forward, BackwardLoop Loop>
std::vector<at::Tensor> backward_with_loops(const NeuronInfo& n, const BackwardTensors& t,
                                            const OpSettings& s, const std::vector<bool>& needs) {
  return neuron_backward(n, t, s, needs, Forward, Loop);
}

// T for each index of a pack (a dependent type, so that `Each<I, T>::type...`
// expands over I; nvcc rejects an alias template that drops its parameter).
template <size_t, typename T>
struct Each {
  using type = T;
};

template <typename M, typename P = std::make_index_sequence<num_params_of<M>>,
          typename K = std::make_index_sequence<num_states_of<M>>>
struct NeuronOp;

template <typename M, size_t... P, size_t... K>
struct NeuronOp<M, std::index_sequence<P...>, std::index_sequence<K...>> {
  // One C++ argument or result per parameter / state.
  template <size_t I>
  using Param = typename Each<I, const at::Tensor&>::type;
  template <size_t I>
  using State = typename Each<I, const OptionalTensor&>::type;
  template <size_t I>
  using Output = typename Each<I, at::Tensor>::type;
  static constexpr size_t kGradInputs = 8 + sizeof...(P) + sizeof...(K);  // x .. rec_mask
  using ForwardResult = std::tuple<at::Tensor, Output<K>...>;
  using Needs = std::array<bool, kGradInputs>;

  // The kernels, in the schemas' argument order (forward_schema below).
  template <ForwardFn Run>
  static ForwardResult forward(const at::Tensor& x, const OptionalTensor& w_in,
                               const OptionalTensor& w_rec, const OptionalTensor& bias,
                               Param<P>... params, State<K>... initial, const OptionalTensor& s0,
                               c10::string_view reset, bool detach_reset,
                               c10::string_view surrogate, std::optional<double> slope,
                               bool save_state, const OptionalTensor& lengths,
                               const OptionalTensor& delays, std::optional<int64_t> max_delay,
                               const OptionalTensor& delay_sigma, const OptionalTensor& rec_mask) {
    const std::vector<at::Tensor> out =
        Run(neuron_info<M>(),
            {x, w_in, w_rec, bias, {params...}, {initial...}, s0, lengths, delays, delay_sigma,
             rec_mask},
            {std::string(reset), detach_reset, std::string(surrogate), slope, save_state,
             max_delay});
    return {out[0], out[K + 1]...};
  }

  template <BackwardFn Run>
  static std::vector<at::Tensor> backward(
      const OptionalTensor& grad_spikes, State<K>... grad_states, const at::Tensor& x,
      const OptionalTensor& w_in, const OptionalTensor& w_rec, const OptionalTensor& bias,
      Param<P>... params, State<K>... initial, const OptionalTensor& s0, const at::Tensor& spikes,
      State<K>... states, c10::string_view reset, bool detach_reset, c10::string_view surrogate,
      std::optional<double> slope, Needs needs_grad, const OptionalTensor& lengths,
      const OptionalTensor& delays, std::optional<int64_t> max_delay,
      const OptionalTensor& delay_sigma, const OptionalTensor& rec_mask) {
    return Run(neuron_info<M>(),
               {{x, w_in, w_rec, bias, {params...}, {initial...}, s0, lengths, delays,
                 delay_sigma, rec_mask},
                spikes,
                {states...},
                grad_spikes,
                {grad_states...}},
               {std::string(reset), detach_reset, std::string(surrogate), slope,
                /*save_state: not used*/ true, max_delay},
               std::vector<bool>(needs_grad.begin(), needs_grad.end()));
  }

  static void check(const at::Tensor& x, const OptionalTensor& w_in, const OptionalTensor& w_rec,
                    const OptionalTensor& bias, Param<P>... params, State<K>... initial,
                    const OptionalTensor& s0, c10::string_view reset, bool detach_reset,
                    c10::string_view surrogate, std::optional<double> slope,
                    const OptionalTensor& lengths, const OptionalTensor& delays,
                    std::optional<int64_t> max_delay, const OptionalTensor& delay_sigma,
                    const OptionalTensor& rec_mask) {
    neuron_check(neuron_info<M>(),
                 {x, w_in, w_rec, bias, {params...}, {initial...}, s0, lengths, delays,
                  delay_sigma, rec_mask},
                 {std::string(reset), detach_reset, std::string(surrogate), slope, true,
                  max_delay});
  }

  // The ops through the dispatcher (so autocast, autograd and the device's
  // kernel all apply), from the driver's structures.
  static std::vector<at::Tensor> call_forward(const OpTensors& t, const OpSettings& s) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow(("torch_ext::" + forward_name()).c_str(), "")
                               .typed<decltype(forward<nullptr>)>();
    const ForwardResult out =
        op.call(t.x, t.w_in, t.w_rec, t.bias, t.params[P]..., t.initial[K]..., t.s0, s.reset,
                s.detach_reset, s.surrogate, s.slope, s.save_state, t.lengths, t.delays,
                s.max_delay, t.delay_sigma, t.rec_mask);
    return std::apply([](const auto&... outputs) { return std::vector<at::Tensor>{outputs...}; },
                      out);
  }

  static std::vector<at::Tensor> call_backward(const BackwardTensors& t, const OpSettings& s,
                                               const std::vector<bool>& needs) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow(("torch_ext::" + backward_name()).c_str(), "")
                               .typed<decltype(backward<nullptr>)>();
    Needs needs_grad{};
    std::copy(needs.begin(), needs.end(), needs_grad.begin());
    const OpTensors& in = t.inputs;
    return op.call(t.grad_spikes, t.grad_states[K]..., in.x, in.w_in, in.w_rec, in.bias,
                   in.params[P]..., in.initial[K]..., in.s0, t.spikes, t.states[K]..., s.reset,
                   s.detach_reset, s.surrogate, s.slope, needs_grad, in.lengths, in.delays,
                   s.max_delay, in.delay_sigma, in.rec_mask);
  }

  static std::string forward_name() { return M::kTraits.op; }
  static std::string backward_name() { return "_" + forward_name() + "_backward"; }
  static std::string check_name() { return "_" + forward_name() + "_check"; }

  // The recurrent delays' arguments, last in every schema.
  static constexpr const char* kDelayArguments =
      "Tensor? delays=None, int? max_delay=None, Tensor? delay_sigma=None, "
      "Tensor? rec_mask=None";

  // The schemas: x, w_in, w_rec, bias, the parameters, the initial states, s0,
  // the options, lengths, the delays' arguments; the backward takes the incoming gradients first and
  // the forward's outputs after its inputs, and returns the gradients of x ..
  // s0 as a list.
  static std::string forward_schema() {
    const NeuronTraits& tr = M::kTraits;
    std::string outputs = "Tensor spikes";
    for (const StateSpec& s : M::kStates) outputs += std::string(", Tensor ") + s.output;
    return forward_name() + "(" + tensor_arguments(/*defaults=*/true) + ", str reset=\"" +
           tr.default_reset + "\", bool detach_reset=" + (tr.default_detach_reset ? "True" : "False") +
           ", str surrogate=\"sigmoid\", float? slope=None, bool " + tr.save_flag +
           "=True, Tensor? lengths=None, " + kDelayArguments + ") -> (" + outputs + ")";
  }
  static std::string backward_schema() {
    std::string grads = "Tensor? grad_spikes", outputs = "Tensor spikes";
    for (const StateSpec& s : M::kStates) {
      grads += std::string(", Tensor? grad_") + s.output;
      outputs += std::string(", Tensor? ") + s.output;
    }
    return backward_name() + "(" + grads + ", " + tensor_arguments(/*defaults=*/false) + ", " +
           outputs + ", str reset, bool detach_reset, str surrogate, float? slope, bool[" +
           std::to_string(kGradInputs) + "] needs_grad, Tensor? lengths=None, " +
           kDelayArguments + ") -> Tensor[]";
  }
  static std::string check_schema() {
    return check_name() + "(" + tensor_arguments(/*defaults=*/false) +
           ", str reset, bool detach_reset, str surrogate, float? slope, Tensor? lengths, " +
           kDelayArguments + ") -> ()";
  }

 private:
  static std::string tensor_arguments(bool defaults) {
    std::string text = "Tensor x, Tensor? w_in, Tensor? w_rec, Tensor? bias";
    for (const ParamSpec& p : M::kParams) text += std::string(", Tensor ") + p.name;
    const char* none = defaults ? "=None" : "";
    for (const StateSpec& s : M::kStates) text += std::string(", Tensor? ") + s.initial + none;
    return text + ", Tensor? s0" + none;
  }
};

// A backend's kernels of model M: the driver with that backend's time loops.
template <typename M, ForwardLoop Forward, BackwardLoop Backward>
void register_backend(torch::Library& m) {
  using Op = NeuronOp<M>;
  m.impl(Op::forward_name().c_str(), &Op::template forward<forward_with_loop<Forward>>);
  m.impl(Op::backward_name().c_str(),
         &Op::template backward<backward_with_loops<Forward, Backward>>);
}

}  // namespace torch_ext
