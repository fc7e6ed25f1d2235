// The op's autograd and autocast, written once in C++ and registered under the
// Autograd and Autocast dispatch keys, so that Python, LibTorch programs,
// torch.compile and torch.export all get the same gradients and casting.
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "recurrent_lif.h"

namespace torch_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Saved tensors come back undefined where the optional input was absent.
OptionalTensor optional(const at::Tensor& t) {
  return t.defined() ? OptionalTensor(t) : std::nullopt;
}

BackwardResult call_backward(const OptionalTensor& grad_spikes,
                             const OptionalTensor& grad_membrane, const at::Tensor& x,
                             const OptionalTensor& w_in, const OptionalTensor& w_rec,
                             const at::Tensor& alpha, const at::Tensor& theta,
                             const OptionalTensor& u0, const OptionalTensor& s0,
                             const at::Tensor& spikes, const OptionalTensor& membrane,
                             c10::string_view reset, bool detach_reset, c10::string_view surrogate,
                             std::optional<double> slope, std::array<bool, 8> needs_grad,
                             const OptionalTensor& bias, const OptionalTensor& lengths) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("torch_ext::_recurrent_lif_backward", "")
                             .typed<decltype(backward_kernel<nullptr, nullptr>)>();
  return op.call(grad_spikes, grad_membrane, x, w_in, w_rec, alpha, theta, u0, s0, spikes, membrane,
                 reset, detach_reset, surrogate, slope, needs_grad, bias, lengths);
}

// Which inputs autograd wants gradients for, from which were given: absent
// optional tensors are not autograd inputs, so needs_input_grad counts the
// given ones only.
template <size_t N>
std::array<bool, N> needed_grads(AutogradContext* ctx, const std::array<bool, N>& given) {
  std::array<bool, N> needs{};
  for (size_t i = 0, edge = 0; i < N; ++i) {
    if (given[i]) needs[i] = ctx->needs_input_grad(edge++);
  }
  return needs;
}

// What a backward returns: the gradient of each needed tensor input,
// undefined for the others and for the `arguments` - N non-tensor arguments.
template <size_t N>
variable_list returned_grads(variable_list grads, const std::array<bool, N>& needs,
                             size_t arguments) {
  for (size_t i = 0; i < N; ++i) {
    if (!needs[i]) grads[i] = at::Tensor();
  }
  grads.resize(arguments);
  return grads;
}

// Forward-mode AD has no rule here; without this check the tangent would be
// rejected by a generic message that does not name the op.
template <typename... Tensors>
void reject_forward_ad(const Tensors&... inputs) {
  for (const OptionalTensor& t : {OptionalTensor(inputs)...}) {
    TORCH_CHECK_NOT_IMPLEMENTED(!t || !t->defined() || !t->_fw_grad(/*level=*/0).defined(),
                                "recurrent_lif: forward-mode AD (torch.autograd.forward_ad, "
                                "torch.func.jvp) is not supported; use reverse mode "
                                "(backward() or torch.autograd.grad)");
  }
}

}  // namespace

// Named outside the anonymous namespace: autograd shows this name as the
// outputs' grad_fn (torch_ext::RecurrentLIFFunction).
class RecurrentLIFFunction : public torch::autograd::Function<RecurrentLIFFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const OptionalTensor& w_in, const OptionalTensor& w_rec,
                               const OptionalTensor& bias, const at::Tensor& alpha,
                               const at::Tensor& theta, const OptionalTensor& u0,
                               const OptionalTensor& s0, c10::string_view reset, bool detach_reset,
                               c10::string_view surrogate, std::optional<double> slope,
                               bool save_membrane, const OptionalTensor& lengths) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [spikes, membrane] = call_recurrent_lif(x, w_in, w_rec, bias, alpha, theta, u0, s0, reset,
                                                 detach_reset, surrogate, slope, save_membrane,
                                                 lengths);
    // Saved: the inputs and the outputs, nothing per step besides; in the
    // low-memory mode not the membrane (the backward recomputes it, and needs
    // the bias for that).
    const at::Tensor none;
    ctx->save_for_backward({x, w_in.value_or(none), w_rec.value_or(none), alpha, theta,
                            u0.value_or(none), s0.value_or(none), spikes,
                            save_membrane ? membrane : none,
                            save_membrane ? none : bias.value_or(none), lengths.value_or(none)});
    // Autograd counts an optional as an input when it holds a defined tensor.
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["reset"] = std::string(reset);
    ctx->saved_data["detach_reset"] = detach_reset;
    ctx->saved_data["surrogate"] = std::string(surrogate);
    ctx->saved_data["slope"] = slope;
    // An output nobody used arrives as an undefined tensor, not as zeros.
    ctx->set_materialize_grads(false);
    return {spikes, membrane};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const std::array<bool, 8> given{true,
                                    saved[1].defined(),
                                    saved[2].defined(),
                                    ctx->saved_data["has_bias"].toBool(),
                                    true,
                                    true,
                                    saved[5].defined(),
                                    saved[6].defined()};
    const std::array<bool, 8> needs = needed_grads(ctx, given);
    const std::optional<double> slope = ctx->saved_data["slope"].toOptional<double>();
    const auto grads = call_backward(
        optional(grad_outputs[0]), optional(grad_outputs[1]), saved[0], optional(saved[1]),
        optional(saved[2]), saved[3], saved[4], optional(saved[5]), optional(saved[6]), saved[7],
        optional(saved[8]), ctx->saved_data["reset"].toStringRef(),
        ctx->saved_data["detach_reset"].toBool(), ctx->saved_data["surrogate"].toStringRef(), slope,
        needs, optional(saved[9]), optional(saved[10]));
    const auto [g_x, g_w_in, g_w_rec, g_bias, g_alpha, g_theta, g_u0, g_s0] = grads;
    // 14 arguments: reset, detach_reset, surrogate, slope, save_membrane, lengths get none.
    return returned_grads({g_x, g_w_in, g_w_rec, g_bias, g_alpha, g_theta, g_u0, g_s0}, needs, 14);
  }
};

// The backward op is differentiable once: its own backward only raises.
class RecurrentLIFBackwardFunction
    : public torch::autograd::Function<RecurrentLIFBackwardFunction> {
 public:
  static variable_list forward(AutogradContext*, const OptionalTensor& grad_spikes,
                               const OptionalTensor& grad_membrane, const at::Tensor& x,
                               const OptionalTensor& w_in, const OptionalTensor& w_rec,
                               const at::Tensor& alpha, const at::Tensor& theta,
                               const OptionalTensor& u0, const OptionalTensor& s0,
                               const at::Tensor& spikes, const OptionalTensor& membrane,
                               c10::string_view reset, bool detach_reset,
                               c10::string_view surrogate, std::optional<double> slope,
                               std::array<bool, 8> needs_grad, const OptionalTensor& bias,
                               const OptionalTensor& lengths) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const auto [a, b, c, d, e, f, g, h] =
        call_backward(grad_spikes, grad_membrane, x, w_in, w_rec, alpha, theta, u0, s0, spikes,
                      membrane, reset, detach_reset, surrogate, slope, needs_grad, bias, lengths);
    return {a, b, c, d, e, f, g, h};
  }

  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false,
                "recurrent_lif: the backward pass is once-differentiable; second derivatives "
                "(differentiating a gradient of this op) are not supported");
  }
};

namespace {

ForwardResult recurrent_lif_autograd(const at::Tensor& x, const OptionalTensor& w_in,
                                     const OptionalTensor& w_rec, const OptionalTensor& bias,
                                     const at::Tensor& alpha, const at::Tensor& theta,
                                     const OptionalTensor& u0, const OptionalTensor& s0,
                                     c10::string_view reset, bool detach_reset,
                                     c10::string_view surrogate, std::optional<double> slope,
                                     bool save_membrane, const OptionalTensor& lengths) {
  // Before autograd reads the inputs' devices ("tensor does not have a device").
  check_required(x, alpha, theta);
  reject_forward_ad(x, w_in, w_rec, bias, alpha, theta, u0, s0);
  const auto out = RecurrentLIFFunction::apply(x, w_in, w_rec, bias, alpha, theta, u0, s0, reset,
                                               detach_reset, surrogate, slope, save_membrane,
                                               lengths);
  return {out[0], out[1]};
}

BackwardResult backward_autograd(const OptionalTensor& grad_spikes,
                                 const OptionalTensor& grad_membrane, const at::Tensor& x,
                                 const OptionalTensor& w_in, const OptionalTensor& w_rec,
                                 const at::Tensor& alpha, const at::Tensor& theta,
                                 const OptionalTensor& u0, const OptionalTensor& s0,
                                 const at::Tensor& spikes, const OptionalTensor& membrane,
                                 c10::string_view reset, bool detach_reset,
                                 c10::string_view surrogate, std::optional<double> slope,
                                 std::array<bool, 8> needs_grad, const OptionalTensor& bias,
                                 const OptionalTensor& lengths) {
  const auto out = RecurrentLIFBackwardFunction::apply(grad_spikes, grad_membrane, x, w_in, w_rec,
                                                       alpha, theta, u0, s0, spikes, membrane,
                                                       reset, detach_reset, surrogate, slope,
                                                       needs_grad, bias, lengths);
  return {out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7]};
}

// Under torch.autocast the matrix-product operands (x, w_in, w_rec, bias) take
// the autocast dtype; alpha, theta and the state stay as given. float64 is
// never cast (autocast leaves float64 alone everywhere).
template <c10::DeviceType device>
ForwardResult recurrent_lif_autocast(const at::Tensor& x, const OptionalTensor& w_in,
                                     const OptionalTensor& w_rec, const OptionalTensor& bias,
                                     const at::Tensor& alpha, const at::Tensor& theta,
                                     const OptionalTensor& u0, const OptionalTensor& s0,
                                     c10::string_view reset, bool detach_reset,
                                     c10::string_view surrogate, std::optional<double> slope,
                                     bool save_membrane, const OptionalTensor& lengths) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(device);
  auto cast = [&](const auto& t) { return at::autocast::cached_cast(dtype, t, device); };
  return call_recurrent_lif(cast(x), cast(w_in), cast(w_rec), cast(bias), alpha, theta, u0, s0,
                            reset, detach_reset, surrogate, slope, save_membrane, lengths);
}

}  // namespace

ForwardResult call_recurrent_lif(const at::Tensor& x, const OptionalTensor& w_in,
                                 const OptionalTensor& w_rec, const OptionalTensor& bias,
                                 const at::Tensor& alpha, const at::Tensor& theta,
                                 const OptionalTensor& u0, const OptionalTensor& s0,
                                 c10::string_view reset, bool detach_reset,
                                 c10::string_view surrogate, std::optional<double> slope,
                                 bool save_membrane, const OptionalTensor& lengths) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("torch_ext::recurrent_lif", "")
                             .typed<decltype(forward_kernel<nullptr>)>();
  return op.call(x, w_in, w_rec, bias, alpha, theta, u0, s0, reset, detach_reset, surrogate, slope,
                 save_membrane, lengths);
}

// ---------------------------------------------------------------- the adaptive op

namespace {

std::vector<at::Tensor> call_adaptive_backward(
    const OptionalTensor& grad_spikes, const OptionalTensor& grad_membrane,
    const OptionalTensor& grad_adaptation, const at::Tensor& x, const OptionalTensor& w_in,
    const OptionalTensor& w_rec, const OptionalTensor& bias, const at::Tensor& alpha,
    const at::Tensor& beta, const at::Tensor& a, const at::Tensor& b, const at::Tensor& theta,
    const OptionalTensor& v0, const OptionalTensor& a0, const OptionalTensor& s0,
    const at::Tensor& spikes, const OptionalTensor& membrane, const OptionalTensor& adaptation,
    c10::string_view reset, bool detach_reset, c10::string_view surrogate,
    std::optional<double> slope, std::array<bool, kAdaptiveInputs> needs_grad,
    const OptionalTensor& lengths) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("torch_ext::_recurrent_adlif_backward", "")
                             .typed<decltype(adaptive_backward_kernel<nullptr, nullptr>)>();
  return op.call(grad_spikes, grad_membrane, grad_adaptation, x, w_in, w_rec, bias, alpha, beta,
                 a, b, theta, v0, a0, s0, spikes, membrane, adaptation, reset, detach_reset,
                 surrogate, slope, needs_grad, lengths);
}

}  // namespace

class RecurrentAdLIFFunction : public torch::autograd::Function<RecurrentAdLIFFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const OptionalTensor& w_in, const OptionalTensor& w_rec,
                               const OptionalTensor& bias, const at::Tensor& alpha,
                               const at::Tensor& beta, const at::Tensor& a, const at::Tensor& b,
                               const at::Tensor& theta, const OptionalTensor& v0,
                               const OptionalTensor& a0, const OptionalTensor& s0,
                               c10::string_view reset, bool detach_reset,
                               c10::string_view surrogate, std::optional<double> slope,
                               bool save_state, const OptionalTensor& lengths) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [spikes, membrane, adaptation] =
        call_recurrent_adlif(x, w_in, w_rec, bias, alpha, beta, a, b, theta, v0, a0, s0, reset,
                             detach_reset, surrogate, slope, save_state, lengths);
    // As for the LIF op: the inputs and the outputs, nothing per step besides;
    // without save_state not the states (the backward recomputes them). The
    // bias always: alpha's gradient reads it.
    const at::Tensor none;
    ctx->save_for_backward({x, w_in.value_or(none), w_rec.value_or(none), bias.value_or(none),
                            alpha, beta, a, b, theta,
                            v0.value_or(none), a0.value_or(none), s0.value_or(none), spikes,
                            save_state ? membrane : none, save_state ? adaptation : none,
                            lengths.value_or(none)});
    ctx->saved_data["reset"] = std::string(reset);
    ctx->saved_data["detach_reset"] = detach_reset;
    ctx->saved_data["surrogate"] = std::string(surrogate);
    ctx->saved_data["slope"] = slope;
    ctx->set_materialize_grads(false);
    return {spikes, membrane, adaptation};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    // Inputs 0..11 are saved at 0..11 (absent optionals undefined).
    std::array<bool, kAdaptiveInputs> given{};
    for (int i = 0; i < kAdaptiveInputs; ++i) given[i] = saved[i].defined();
    const std::array<bool, kAdaptiveInputs> needs = needed_grads(ctx, given);
    const std::vector<at::Tensor> grads = call_adaptive_backward(
        optional(grad_outputs[0]), optional(grad_outputs[1]), optional(grad_outputs[2]), saved[0],
        optional(saved[1]), optional(saved[2]), optional(saved[3]), saved[4], saved[5], saved[6],
        saved[7], saved[8], optional(saved[9]), optional(saved[10]), optional(saved[11]),
        saved[12], optional(saved[13]), optional(saved[14]),
        ctx->saved_data["reset"].toStringRef(), ctx->saved_data["detach_reset"].toBool(),
        ctx->saved_data["surrogate"].toStringRef(),
        ctx->saved_data["slope"].toOptional<double>(), needs, optional(saved[15]));
    // 18 arguments: reset, detach_reset, surrogate, slope, save_state, lengths get none.
    return returned_grads(variable_list(grads.begin(), grads.end()), needs, 18);
  }
};

class RecurrentAdLIFBackwardFunction
    : public torch::autograd::Function<RecurrentAdLIFBackwardFunction> {
 public:
  static variable_list forward(
      AutogradContext*, const OptionalTensor& grad_spikes, const OptionalTensor& grad_membrane,
      const OptionalTensor& grad_adaptation, const at::Tensor& x, const OptionalTensor& w_in,
      const OptionalTensor& w_rec, const OptionalTensor& bias, const at::Tensor& alpha,
      const at::Tensor& beta, const at::Tensor& a, const at::Tensor& b, const at::Tensor& theta,
      const OptionalTensor& v0, const OptionalTensor& a0, const OptionalTensor& s0,
      const at::Tensor& spikes, const OptionalTensor& membrane, const OptionalTensor& adaptation,
      c10::string_view reset, bool detach_reset, c10::string_view surrogate,
      std::optional<double> slope, std::array<bool, kAdaptiveInputs> needs_grad,
      const OptionalTensor& lengths) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_adaptive_backward(grad_spikes, grad_membrane, grad_adaptation, x, w_in, w_rec,
                                  bias, alpha, beta, a, b, theta, v0, a0, s0, spikes, membrane,
                                  adaptation, reset, detach_reset, surrogate, slope, needs_grad,
                                  lengths);
  }

  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false,
                "recurrent_adlif: the backward pass is once-differentiable; second derivatives "
                "(differentiating a gradient of this op) are not supported");
  }
};

namespace {

AdaptiveForwardResult adaptive_autograd(
    const at::Tensor& x, const OptionalTensor& w_in, const OptionalTensor& w_rec,
    const OptionalTensor& bias, const at::Tensor& alpha, const at::Tensor& beta,
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& theta, const OptionalTensor& v0,
    const OptionalTensor& a0, const OptionalTensor& s0, c10::string_view reset,
    bool detach_reset, c10::string_view surrogate, std::optional<double> slope, bool save_state,
    const OptionalTensor& lengths) {
  check_required("recurrent_adlif", x,
                 {{&alpha, "alpha"}, {&beta, "beta"}, {&a, "a"}, {&b, "b"}, {&theta, "theta"}});
  reject_forward_ad(x, w_in, w_rec, bias, alpha, beta, a, b, theta, v0, a0, s0);
  const auto out = RecurrentAdLIFFunction::apply(x, w_in, w_rec, bias, alpha, beta, a, b, theta,
                                                 v0, a0, s0, reset, detach_reset, surrogate,
                                                 slope, save_state, lengths);
  return {out[0], out[1], out[2]};
}

std::vector<at::Tensor> adaptive_backward_autograd(
    const OptionalTensor& grad_spikes, const OptionalTensor& grad_membrane,
    const OptionalTensor& grad_adaptation, const at::Tensor& x, const OptionalTensor& w_in,
    const OptionalTensor& w_rec, const OptionalTensor& bias, const at::Tensor& alpha,
    const at::Tensor& beta, const at::Tensor& a, const at::Tensor& b, const at::Tensor& theta,
    const OptionalTensor& v0, const OptionalTensor& a0, const OptionalTensor& s0,
    const at::Tensor& spikes, const OptionalTensor& membrane, const OptionalTensor& adaptation,
    c10::string_view reset, bool detach_reset, c10::string_view surrogate,
    std::optional<double> slope, std::array<bool, kAdaptiveInputs> needs_grad,
    const OptionalTensor& lengths) {
  return RecurrentAdLIFBackwardFunction::apply(grad_spikes, grad_membrane, grad_adaptation, x,
                                               w_in, w_rec, bias, alpha, beta, a, b, theta, v0,
                                               a0, s0, spikes, membrane, adaptation, reset,
                                               detach_reset, surrogate, slope, needs_grad,
                                               lengths);
}

// Autocast as for the LIF op: the matrix-product operands take the autocast
// dtype; the neuron parameters and the state stay as given.
template <c10::DeviceType device>
AdaptiveForwardResult adaptive_autocast(
    const at::Tensor& x, const OptionalTensor& w_in, const OptionalTensor& w_rec,
    const OptionalTensor& bias, const at::Tensor& alpha, const at::Tensor& beta,
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& theta, const OptionalTensor& v0,
    const OptionalTensor& a0, const OptionalTensor& s0, c10::string_view reset,
    bool detach_reset, c10::string_view surrogate, std::optional<double> slope, bool save_state,
    const OptionalTensor& lengths) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(device);
  auto cast = [&](const auto& t) { return at::autocast::cached_cast(dtype, t, device); };
  return call_recurrent_adlif(cast(x), cast(w_in), cast(w_rec), cast(bias), alpha, beta, a, b,
                              theta, v0, a0, s0, reset, detach_reset, surrogate, slope,
                              save_state, lengths);
}

}  // namespace

AdaptiveForwardResult call_recurrent_adlif(
    const at::Tensor& x, const OptionalTensor& w_in, const OptionalTensor& w_rec,
    const OptionalTensor& bias, const at::Tensor& alpha, const at::Tensor& beta,
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& theta, const OptionalTensor& v0,
    const OptionalTensor& a0, const OptionalTensor& s0, c10::string_view reset,
    bool detach_reset, c10::string_view surrogate, std::optional<double> slope, bool save_state,
    const OptionalTensor& lengths) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("torch_ext::recurrent_adlif", "")
                             .typed<decltype(adaptive_forward_kernel<nullptr>)>();
  return op.call(x, w_in, w_rec, bias, alpha, beta, a, b, theta, v0, a0, s0, reset, detach_reset,
                 surrogate, slope, save_state, lengths);
}

TORCH_LIBRARY_IMPL(torch_ext, Autograd, m) {
  m.impl("recurrent_lif", &recurrent_lif_autograd);
  m.impl("_recurrent_lif_backward", &backward_autograd);
  m.impl("recurrent_adlif", &adaptive_autograd);
  m.impl("_recurrent_adlif_backward", &adaptive_backward_autograd);
}

TORCH_LIBRARY_IMPL(torch_ext, AutocastCPU, m) {
  m.impl("recurrent_lif", &recurrent_lif_autocast<c10::DeviceType::CPU>);
  m.impl("recurrent_adlif", &adaptive_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(torch_ext, AutocastCUDA, m) {
  m.impl("recurrent_lif", &recurrent_lif_autocast<c10::DeviceType::CUDA>);
  m.impl("recurrent_adlif", &adaptive_autocast<c10::DeviceType::CUDA>);
}

}  // namespace torch_ext
