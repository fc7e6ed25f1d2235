// Every neuron model's ops, registered from the registry: the schemas, the
// Meta and check kernels, and the autograd and autocast kernels, written once
// in C++ so that Python, LibTorch programs, torch.compile and torch.export all
// get the same gradients and casting. (The CPU and CUDA kernels are
// registered by their backends: cpu/loops.cpp, cuda/loops.cu.)
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "../neurons/registry.h"
#include "op.h"

namespace torch_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Saved tensors come back undefined where the optional input was absent.
OptionalTensor optional(const at::Tensor& t) {
  return t.defined() ? OptionalTensor(t) : std::nullopt;
}

// The driver's structure from the op's tensor arguments in the order of
// OpTensors::grad_inputs, then lengths (x, w_in, w_rec, bias, parameters,
// initial states, s0, delays, delay_sigma, rec_mask, lengths).
OpTensors op_tensors(const NeuronInfo& n, const std::vector<OptionalTensor>& flat) {
  const int s0 = 4 + n.num_params + n.num_states;
  OpTensors t{*flat[0], flat[1],      flat[2],      flat[3],     {},
              {},       flat[s0],     flat[s0 + 4], flat[s0 + 1], flat[s0 + 2],
              flat[s0 + 3]};
  for (int k = 0; k < n.num_params; ++k) t.params.push_back(*flat[4 + k]);
  for (int k = 0; k < n.num_states; ++k) t.initial.push_back(flat[4 + n.num_params + k]);
  return t;
}

// Forward-mode AD has no rule here; without this check the tangent would be
// rejected by a generic message that does not name the op.
void reject_forward_ad(const char* op, const std::vector<OptionalTensor>& inputs) {
  for (const OptionalTensor& t : inputs) {
    TORCH_CHECK_NOT_IMPLEMENTED(!t || !t->defined() || !t->_fw_grad(/*level=*/0).defined(), op,
                                ": forward-mode AD (torch.autograd.forward_ad, "
                                "torch.func.jvp) is not supported; use reverse mode "
                                "(backward() or torch.autograd.grad)");
  }
}

}  // namespace

// The op's autograd: forward runs the op below autograd and saves its inputs
// and outputs (nothing per step besides; without save_state only the
// spikes of the outputs: the backward replays the states); backward runs the
// backward op for the inputs that need a gradient. Named outside the
// anonymous namespace: autograd shows it as the outputs' grad_fn
// (torch_ext::RecurrentFunction<torch_ext::LIF>).
template <typename M>
class RecurrentFunction : public torch::autograd::Function<RecurrentFunction<M>> {
 public:
  // tensors: the op's tensor arguments in schema order (lengths last).
  template <typename... Tensors>
  static variable_list forward(AutogradContext* ctx, const OpSettings& settings,
                               const Tensors&... tensors) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const NeuronInfo n = neuron_info<M>();
    const std::vector<OptionalTensor> flat{OptionalTensor(tensors)...};
    const std::vector<at::Tensor> out = NeuronOp<M>::call_forward(op_tensors(n, flat), settings);
    std::vector<at::Tensor> saved;
    for (const OptionalTensor& t : flat) saved.push_back(t.value_or(at::Tensor()));
    saved.push_back(out[0]);
    for (int k = 0; k < n.num_states; ++k) {
      saved.push_back(settings.save_state ? out[1 + k] : at::Tensor());
    }
    ctx->save_for_backward(saved);
    ctx->saved_data["reset"] = settings.reset;
    ctx->saved_data["detach_reset"] = settings.detach_reset;
    ctx->saved_data["surrogate"] = settings.surrogate;
    ctx->saved_data["slope"] = settings.slope;
    ctx->saved_data["max_delay"] = settings.max_delay;
    // An output nobody used arrives as an undefined tensor, not as zeros.
    ctx->set_materialize_grads(false);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const NeuronInfo n = neuron_info<M>();
    const int inputs = num_grad_inputs(n), K = n.num_states;  // lengths is saved at `inputs`
    const variable_list saved = ctx->get_saved_variables();
    std::vector<OptionalTensor> flat;
    for (int i = 0; i <= inputs; ++i) flat.push_back(optional(saved[i]));
    BackwardTensors t{op_tensors(n, flat), saved[inputs + 1], {}, optional(grad_outputs[0]), {}};
    for (int k = 0; k < K; ++k) {
      t.states.push_back(optional(saved[inputs + 2 + k]));
      t.grad_states.push_back(optional(grad_outputs[1 + k]));
    }
    // Absent optional tensors are not autograd inputs: needs_input_grad
    // counts the given ones only.
    std::vector<bool> needs(inputs, false);
    for (int i = 0, edge = 0; i < inputs; ++i) {
      if (flat[i].has_value()) needs[i] = ctx->needs_input_grad(edge++);
    }
    const OpSettings settings{ctx->saved_data["reset"].toStringRef(),
                              ctx->saved_data["detach_reset"].toBool(),
                              ctx->saved_data["surrogate"].toStringRef(),
                              ctx->saved_data["slope"].toOptional<double>(), true,
                              ctx->saved_data["max_delay"].toOptional<int64_t>()};
    const std::vector<at::Tensor> grads = NeuronOp<M>::call_backward(t, settings, needs);
    // One per forward argument: none for the settings, the gradients of x ..
    // rec_mask where needed, none for lengths.
    variable_list result{at::Tensor()};
    for (int i = 0; i < inputs; ++i) result.push_back(needs[i] ? grads[i] : at::Tensor());
    result.emplace_back();
    return result;
  }
};

// The backward op is differentiable once: its own backward only raises.
template <typename M>
class RecurrentBackwardFunction
    : public torch::autograd::Function<RecurrentBackwardFunction<M>> {
 public:
  // `differentiable`: t's tensors again, as the node's inputs (autograd's edges).
  static variable_list forward(AutogradContext*, const BackwardTensors& t,
                               const OpSettings& settings, const std::vector<bool>& needs,
                               at::TensorList /*differentiable*/) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return NeuronOp<M>::call_backward(t, settings, needs);
  }

  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false, M::kTraits.op,
                ": the backward pass is once-differentiable; second derivatives "
                "(differentiating a gradient of this op) are not supported");
  }
};

namespace {

// The kernels registered under the Autograd and Autocast keys, for each
// model: the same typed signatures as the backends' (NeuronOp).
template <typename M>
struct Registration {
  using Op = NeuronOp<M>;

  // Autograd: the checks autograd would otherwise pre-empt, then the Function.
  static std::vector<at::Tensor> autograd_forward(const NeuronInfo& n, const OpTensors& t,
                                                  const OpSettings& s) {
    // Before autograd reads the inputs' devices ("tensor does not have a device").
    check_required(n, t.x, t.params);
    std::vector<OptionalTensor> flat = t.grad_inputs();
    reject_forward_ad(n.op(), flat);
    flat.push_back(t.lengths);
    return apply_flat(s, flat, std::make_index_sequence<Op::kGradInputs + 1>{});
  }

  template <size_t... I>
  static std::vector<at::Tensor> apply_flat(const OpSettings& s,
                                            const std::vector<OptionalTensor>& flat,
                                            std::index_sequence<I...>) {
    return RecurrentFunction<M>::apply(s, flat[I]...);
  }

  static std::vector<at::Tensor> autograd_backward(const NeuronInfo&, const BackwardTensors& t,
                                                   const OpSettings& s,
                                                   const std::vector<bool>& needs) {
    // Every tensor of the call is an input of the (non-differentiable) node,
    // so that a second derivative reaches its backward and raises.
    std::vector<at::Tensor> differentiable;
    auto add = [&](const OptionalTensor& o) {
      if (o.has_value() && o->defined()) differentiable.push_back(*o);
    };
    for (const OptionalTensor& o : t.inputs.grad_inputs()) add(o);
    add(t.spikes);
    for (const OptionalTensor& o : t.states) add(o);
    add(t.grad_spikes);
    for (const OptionalTensor& o : t.grad_states) add(o);
    return RecurrentBackwardFunction<M>::apply(t, s, needs, at::TensorList(differentiable));
  }

  // Under torch.autocast the weights (w_in, w_rec, bias) take the autocast
  // dtype (cached, as autocast caches its casts of leaf weights); a float32
  // x stays float32, and the op rounds it for its products only, so that
  // the spikes, the incoming gradients and grad_x need no conversion (x of
  // another low-precision dtype is cast, as autocast casts it). The neuron
  // parameters and the state stay as given. float64 is never cast
  // (autocast leaves float64 alone everywhere).
  template <c10::DeviceType device>
  static std::vector<at::Tensor> autocast_forward(const NeuronInfo&, const OpTensors& t,
                                                  const OpSettings& s) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const at::ScalarType dtype = at::autocast::get_autocast_dtype(device);
    auto cast = [&](const auto& v) { return at::autocast::cached_cast(dtype, v, device); };
    OpTensors cast_t = t;
    if (t.x.scalar_type() != at::kFloat) cast_t.x = cast(t.x);
    cast_t.w_in = cast(t.w_in);
    cast_t.w_rec = cast(t.w_rec);
    cast_t.bias = cast(t.bias);
    return Op::call_forward(cast_t, s);
  }

  static void define(torch::Library& m) {
    m.def(Op::forward_schema().c_str());
    m.def(Op::backward_schema().c_str());
    // The forward's checks without the computation (for the reference).
    m.def(Op::check_schema().c_str());
  }
  // One check kernel for every device (Meta, and so fake tensors, included):
  // it reads values only where the checks do, on CPU.
  static void composite(torch::Library& m) { m.impl(Op::check_name().c_str(), &Op::check); }
  static void meta(torch::Library& m) {
    m.impl(Op::forward_name().c_str(), &Op::template forward<neuron_forward_meta>);
    m.impl(Op::backward_name().c_str(), &Op::template backward<neuron_backward_meta>);
  }
  static void autograd(torch::Library& m) {
    m.impl(Op::forward_name().c_str(), &Op::template forward<autograd_forward>);
    m.impl(Op::backward_name().c_str(), &Op::template backward<autograd_backward>);
  }
  template <c10::DeviceType device>
  static void autocast(torch::Library& m) {
    m.impl(Op::forward_name().c_str(), &Op::template forward<autocast_forward<device>>);
  }
};

}  // namespace

TORCH_LIBRARY(torch_ext, m) {
  for_each_neuron([&]<typename M>() { Registration<M>::define(m); });
  // Which product an op call with this x and w_in uses for the input
  // projection (for tests and benchmarks): the density of x's ones if it
  // gathers them, -1 if it multiplies densely.
  m.def("_binary_input_density(Tensor x, Tensor w_in) -> float",
        [](const at::Tensor& x, const at::Tensor& w_in) {
          const auto binary = binary_input(x, w_in);
          return binary ? binary->density() : -1.0;
        });
}

TORCH_LIBRARY_IMPL(torch_ext, CompositeExplicitAutograd, m) {
  for_each_neuron([&]<typename M>() { Registration<M>::composite(m); });
}

TORCH_LIBRARY_IMPL(torch_ext, Meta, m) {
  for_each_neuron([&]<typename M>() { Registration<M>::meta(m); });
}

TORCH_LIBRARY_IMPL(torch_ext, Autograd, m) {
  for_each_neuron([&]<typename M>() { Registration<M>::autograd(m); });
}

TORCH_LIBRARY_IMPL(torch_ext, AutocastCPU, m) {
  for_each_neuron([&]<typename M>() { Registration<M>::template autocast<c10::DeviceType::CPU>(m); });
}

TORCH_LIBRARY_IMPL(torch_ext, AutocastCUDA, m) {
  for_each_neuron([&]<typename M>() { Registration<M>::template autocast<c10::DeviceType::CUDA>(m); });
}

}  // namespace torch_ext
