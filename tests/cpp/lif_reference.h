// The recurrent LIF, adaptive (SE-adLIF) and current-based (CUBA) layers
// written with LibTorch's own autograd, step by step: the oracles of the C++
// tests and of the downstream example. Same math as the fused ops (README
// "The model", "The adaptive layer", "The current-based layer"), one product
// for all input currents.
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace lif_reference {

inline torch::Tensor surrogate_grad(const torch::Tensor& v, const std::string& kind, double k) {
  if (kind == "sigmoid") {
    const torch::Tensor e = torch::exp(-k * v.abs());
    return k * e / ((1 + e) * (1 + e));
  }
  if (kind == "fast_sigmoid") {
    const torch::Tensor d = 1 + k * v.abs();
    return 1 / (d * d);
  }
  if (kind == "atan") {
    const torch::Tensor z = (M_PI / 2) * k * v;
    return (k / 2) / (1 + z * z);
  }
  return k * torch::clamp(1 - k * v.abs(), 0);  // triangle
}

// H(v) forward, sg(v) backward.
struct Heaviside : torch::autograd::Function<Heaviside> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& v,
                               const std::string& kind, double k) {
    ctx->save_for_backward({v});
    ctx->saved_data["kind"] = kind;
    ctx->saved_data["k"] = k;
    return (v > 0).to(v.dtype());
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const torch::Tensor v = ctx->get_saved_variables()[0];
    const auto kind = ctx->saved_data["kind"].toStringRef();
    const double k = ctx->saved_data["k"].toDouble();
    return {grads[0] * surrogate_grad(v, kind, k), torch::Tensor(), torch::Tensor()};
  }
};

// (spikes, membrane), each [T, B, N]; u0/s0 undefined = zeros.
inline std::tuple<torch::Tensor, torch::Tensor> recurrent_lif(
    const torch::Tensor& x, const torch::Tensor& w_in, const torch::Tensor& w_rec,
    const torch::Tensor& bias, const torch::Tensor& alpha, const torch::Tensor& theta,
    torch::Tensor u, torch::Tensor s, const std::string& reset, bool detach_reset,
    const std::string& surrogate, double slope) {
  const int64_t B = x.size(1), N = w_in.size(0);
  if (!u.defined()) u = torch::zeros({B, N}, x.options().requires_grad(false));
  if (!s.defined()) s = torch::zeros({B, N}, x.options().requires_grad(false));
  const torch::Tensor current = torch::matmul(x, w_in.t()) + bias;
  std::vector<torch::Tensor> spikes, membrane;
  for (const torch::Tensor& input : current.unbind(0)) {
    const torch::Tensor r = detach_reset ? s.detach() : s;
    // Summed in the order the equations are written, like the fused op.
    u = reset == "zero" ? alpha * u * (1 - r) : alpha * u;
    u = u + input + torch::matmul(s, w_rec.t());
    if (reset == "subtract") u = u - theta * r;
    s = Heaviside::apply(u - theta, surrogate, slope);
    spikes.push_back(s);
    membrane.push_back(u);
  }
  return {torch::stack(spikes), torch::stack(membrane)};
}

// (spikes, membrane V, adaptation A), each [T, B, N]; v/a/s undefined = zeros.
inline std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> recurrent_adlif(
    const torch::Tensor& x, const torch::Tensor& w_in, const torch::Tensor& w_rec,
    const torch::Tensor& bias, const torch::Tensor& alpha, const torch::Tensor& beta,
    const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& theta, torch::Tensor v,
    torch::Tensor adapt, torch::Tensor s, const std::string& reset, bool detach_reset,
    const std::string& surrogate, double slope) {
  const int64_t B = x.size(1), N = w_in.size(0);
  for (torch::Tensor* state : {&v, &adapt, &s}) {
    if (!state->defined()) *state = torch::zeros({B, N}, x.options().requires_grad(false));
  }
  auto reset_of = [&](const torch::Tensor& value, const torch::Tensor& r) {
    if (reset == "zero") return value * (1 - r);
    if (reset == "subtract") return value - theta * r;
    return value;
  };
  const torch::Tensor current = torch::matmul(x, w_in.t()) + bias;
  std::vector<torch::Tensor> spikes, membrane, adaptation;
  for (const torch::Tensor& input : current.unbind(0)) {
    const torch::Tensor r = detach_reset ? s.detach() : s;
    v = alpha * reset_of(v, r) + (1 - alpha) * ((input + torch::matmul(s, w_rec.t())) - adapt);
    s = Heaviside::apply(v - theta, surrogate, slope);
    const torch::Tensor r_now = detach_reset ? s.detach() : s;
    adapt = beta * adapt + (1 - beta) * (a * reset_of(v, r_now) + b * s);
    spikes.push_back(s);
    membrane.push_back(v);
    adaptation.push_back(adapt);
  }
  return {torch::stack(spikes), torch::stack(membrane), torch::stack(adaptation)};
}

// (spikes, membrane U, current J), each [T, B, N]; u/j/s undefined = zeros.
inline std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> recurrent_cubalif(
    const torch::Tensor& x, const torch::Tensor& w_in, const torch::Tensor& w_rec,
    const torch::Tensor& bias, const torch::Tensor& alpha, const torch::Tensor& alpha_syn,
    const torch::Tensor& theta, torch::Tensor u, torch::Tensor j, torch::Tensor s,
    const std::string& reset, bool detach_reset, const std::string& surrogate, double slope) {
  const int64_t B = x.size(1), N = w_in.size(0);
  for (torch::Tensor* state : {&u, &j, &s}) {
    if (!state->defined()) *state = torch::zeros({B, N}, x.options().requires_grad(false));
  }
  const torch::Tensor current = torch::matmul(x, w_in.t()) + bias;
  std::vector<torch::Tensor> spikes, membrane, currents;
  for (const torch::Tensor& input : current.unbind(0)) {
    const torch::Tensor r = detach_reset ? s.detach() : s;
    // Summed in the order the equations are written, like the fused op.
    j = alpha_syn * j + input + torch::matmul(s, w_rec.t());
    u = reset == "zero" ? alpha * u * (1 - r) : alpha * u;
    u = u + j;
    if (reset == "subtract") u = u - theta * r;
    s = Heaviside::apply(u - theta, surrogate, slope);
    spikes.push_back(s);
    membrane.push_back(u);
    currents.push_back(j);
  }
  return {torch::stack(spikes), torch::stack(membrane), torch::stack(currents)};
}

// Any model's reference by its op's name: (spikes, states...). params and
// initial (the states, then s0) in the op's order.
inline std::vector<torch::Tensor> by_op(const std::string& op, const torch::Tensor& x,
                                        const torch::Tensor& w_in, const torch::Tensor& w_rec,
                                        const torch::Tensor& bias,
                                        const std::vector<torch::Tensor>& p,
                                        const std::vector<torch::Tensor>& init,
                                        const std::string& reset, bool detach_reset,
                                        const std::string& surrogate, double slope) {
  auto list = [](const auto& tuple) {
    return std::apply([](const auto&... t) { return std::vector<torch::Tensor>{t...}; }, tuple);
  };
  if (op == "recurrent_lif") {
    return list(recurrent_lif(x, w_in, w_rec, bias, p[0], p[1], init[0], init[1], reset,
                              detach_reset, surrogate, slope));
  }
  if (op == "recurrent_adlif") {
    return list(recurrent_adlif(x, w_in, w_rec, bias, p[0], p[1], p[2], p[3], p[4], init[0],
                                init[1], init[2], reset, detach_reset, surrogate, slope));
  }
  if (op == "recurrent_cubalif") {
    return list(recurrent_cubalif(x, w_in, w_rec, bias, p[0], p[1], p[2], init[0], init[1],
                                  init[2], reset, detach_reset, surrogate, slope));
  }
  throw std::invalid_argument("lif_reference::by_op: no reference for " + op);
}

}  // namespace lif_reference
