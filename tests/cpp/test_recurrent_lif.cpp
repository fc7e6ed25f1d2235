// GoogleTest checks of the C++ ops, called through the dispatcher (as Python and
// any C++ user would), against a reference written with LibTorch's autograd.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <array>
#include <cmath>
#include <string>
#include <tuple>

namespace {

using torch::Tensor;
using OptTensor = c10::optional<Tensor>;
using ForwardFn = std::tuple<Tensor, Tensor>(const Tensor&, const OptTensor&, const OptTensor&,
                                             const OptTensor&, const Tensor&, const Tensor&,
                                             const OptTensor&, const OptTensor&, c10::string_view,
                                             bool, c10::string_view, double);
using BackwardFn = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const OptTensor&, const OptTensor&, const Tensor&, const OptTensor&, const OptTensor&,
    const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, const Tensor&, const Tensor&,
    c10::string_view, bool, c10::string_view, double, std::array<bool, 8>);

c10::TypedOperatorHandle<ForwardFn> forward_op() {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow("torch_ext::recurrent_lif_forward", "")
      .typed<ForwardFn>();
}
c10::TypedOperatorHandle<BackwardFn> backward_op() {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow("torch_ext::recurrent_lif_backward", "")
      .typed<BackwardFn>();
}

Tensor surrogate_grad(const Tensor& v, const std::string& kind, double k) {
  if (kind == "sigmoid") {
    const Tensor e = torch::exp(-k * v.abs());
    return k * e / ((1 + e) * (1 + e));
  }
  if (kind == "fast_sigmoid") {
    const Tensor d = 1 + k * v.abs();
    return 1 / (d * d);
  }
  if (kind == "atan") {
    const Tensor z = (M_PI / 2) * k * v;
    return (k / 2) / (1 + z * z);
  }
  return k * torch::clamp(1 - k * v.abs(), 0);
}

// H(v) forward, sg(v) backward.
struct Heaviside : torch::autograd::Function<Heaviside> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& v,
                        const std::string& kind, double k) {
    ctx->save_for_backward({v});
    ctx->saved_data["kind"] = kind;
    ctx->saved_data["k"] = k;
    return (v > 0).to(v.dtype());
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const Tensor v = ctx->get_saved_variables()[0];
    const auto kind = ctx->saved_data["kind"].toStringRef();
    const double k = ctx->saved_data["k"].toDouble();
    return {grads[0] * surrogate_grad(v, kind, k), Tensor(), Tensor()};
  }
};

struct Inputs {
  Tensor x, w_in, w_rec, bias, alpha, theta, u0, s0;
  std::vector<Tensor> all() const { return {x, w_in, w_rec, bias, alpha, theta, u0, s0}; }
};

Inputs random_inputs(int64_t T, int64_t B, int64_t F, int64_t N) {
  torch::manual_seed(0);
  const auto opts = torch::dtype(torch::kFloat64).requires_grad(true);
  Inputs in;
  in.x = torch::randn({T, B, F}, opts);
  in.w_in = (torch::randn({N, F}, torch::kFloat64) * (1.2 / std::sqrt(F))).requires_grad_();
  in.w_rec = (torch::randn({N, N}, torch::kFloat64) * (0.6 / std::sqrt(N))).requires_grad_();
  in.bias = (torch::randn({N}, torch::kFloat64) * 0.4).requires_grad_();
  in.alpha = (torch::rand({N}, torch::kFloat64) * 0.35 + 0.6).requires_grad_();
  in.theta = (torch::rand({}, torch::kFloat64) * 0.4 + 0.8).requires_grad_();
  in.u0 = (torch::randn({B, N}, torch::kFloat64) * 0.8).requires_grad_();
  in.s0 = (torch::rand({B, N}, torch::kFloat64) > 0.5).to(torch::kFloat64).requires_grad_();
  return in;
}

std::tuple<Tensor, Tensor> reference(const Inputs& in, const std::string& reset, bool detach_reset,
                                     const std::string& surrogate, double slope) {
  const Tensor current = torch::matmul(in.x, in.w_in.t()) + in.bias;
  Tensor u = in.u0, s = in.s0;
  std::vector<Tensor> spikes, membrane;
  for (int64_t t = 0; t < in.x.size(0); ++t) {
    const Tensor r = detach_reset ? s.detach() : s;
    u = reset == "zero" ? in.alpha * u * (1 - r) : in.alpha * u;
    u = u + current[t] + torch::matmul(s, in.w_rec.t());
    if (reset == "subtract") u = u - in.theta * r;
    s = Heaviside::apply(u - in.theta, surrogate, slope);
    spikes.push_back(s);
    membrane.push_back(u);
  }
  return {torch::stack(spikes), torch::stack(membrane)};
}

using Options = std::tuple<std::string, bool, std::string>;  // reset, detach, surrogate

class MatchesAutograd : public ::testing::TestWithParam<Options> {};

TEST_P(MatchesAutograd, ForwardAndAllGradients) {
  const auto& [reset, detach, surrogate] = GetParam();
  const double slope = surrogate == "atan" ? 2.0 : (surrogate == "triangle" ? 1.0 : 25.0);
  const Inputs in = random_inputs(15, 3, 5, 6);

  const auto [spikes, membrane] =
      forward_op().call(in.x, in.w_in, in.w_rec, in.bias, in.alpha.detach(), in.theta.detach(),
                        in.u0, in.s0, reset, detach, surrogate, slope);
  const auto [spikes_ref, membrane_ref] = reference(in, reset, detach, surrogate, slope);
  ASSERT_TRUE(torch::equal(spikes, spikes_ref));
  ASSERT_TRUE(torch::allclose(membrane, membrane_ref, 1e-10, 1e-10));
  const double rate = spikes.mean().item<double>();
  ASSERT_GT(rate, 0.05);
  ASSERT_LT(rate, 0.95);

  const Tensor grad_spikes = torch::randn_like(spikes);
  const Tensor grad_membrane = torch::randn_like(membrane);
  const auto grads =
      backward_op().call(grad_spikes, grad_membrane, in.x, in.w_in, in.w_rec, in.alpha.detach(),
                         in.theta.detach(), in.u0, in.s0, spikes, membrane, reset, detach,
                         surrogate, slope, {true, true, true, true, true, true, true, true});
  const std::vector<Tensor> got = {std::get<0>(grads), std::get<1>(grads), std::get<2>(grads),
                                   std::get<3>(grads), std::get<4>(grads), std::get<5>(grads),
                                   std::get<6>(grads), std::get<7>(grads)};
  const auto want = torch::autograd::grad(
      {(spikes_ref * grad_spikes).sum() + (membrane_ref * grad_membrane).sum()}, in.all());
  const char* names[] = {"x", "w_in", "w_rec", "bias", "alpha", "theta", "u0", "s0"};
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_TRUE(torch::allclose(got[i], want[i], 1e-9, 1e-9))
        << "grad_" << names[i] << " differs by " << (got[i] - want[i]).abs().max().item<double>();
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllOptions, MatchesAutograd,
    ::testing::Combine(::testing::Values("subtract", "zero", "none"), ::testing::Bool(),
                       ::testing::Values("sigmoid", "fast_sigmoid", "atan", "triangle")));

TEST(RecurrentLIF, UnneededGradientsAreEmpty) {
  const Inputs in = random_inputs(6, 2, 3, 4);
  const auto [spikes, membrane] =
      forward_op().call(in.x, in.w_in, in.w_rec, in.bias, in.alpha.detach(), in.theta.detach(),
                        in.u0, in.s0, "subtract", false, "sigmoid", 25.0);
  const auto grads = backward_op().call(torch::ones_like(spikes), c10::nullopt, in.x, in.w_in,
                                        in.w_rec, in.alpha.detach(), in.theta.detach(), in.u0,
                                        in.s0, spikes, membrane, "subtract", false, "sigmoid", 25.0,
                                        {false, true, false, false, false, false, false, false});
  EXPECT_EQ(std::get<0>(grads).numel(), 0);
  EXPECT_EQ(std::get<1>(grads).sizes(), in.w_in.sizes());
  EXPECT_EQ(std::get<2>(grads).numel(), 0);
}

// Runs the forward op with one argument replaced and expects an error naming it.
template <typename Error>
void expect_error(const char* argument, Inputs in, const std::string& reset = "subtract",
                  const std::string& surrogate = "sigmoid", double slope = 25.0) {
  try {
    forward_op().call(in.x, in.w_in, in.w_rec, in.bias, in.alpha.detach(), in.theta.detach(), in.u0,
                      in.s0, reset, false, surrogate, slope);
    ADD_FAILURE() << "no error for a bad '" << argument << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(std::string("'") + argument + "'"), std::string::npos)
        << e.what();
  }
}

TEST(RecurrentLIF, BadInputsNameTheArgument) {
  const Inputs good = random_inputs(4, 2, 3, 5);
  auto with = [&](auto change) {
    Inputs in = good;
    change(in);
    return in;
  };
  expect_error<c10::ValueError>("x", with([](Inputs& in) { in.x = in.x[0]; }));
  expect_error<c10::TypeError>("x", with([](Inputs& in) { in.x = in.x.to(torch::kInt32); }));
  expect_error<c10::ValueError>("w_in", with([](Inputs& in) { in.w_in = in.w_in.t(); }));
  expect_error<c10::TypeError>("w_in",
                               with([](Inputs& in) { in.w_in = in.w_in.to(torch::kFloat32); }));
  expect_error<c10::ValueError>("w_rec", with([](Inputs& in) { in.w_rec = in.w_rec[0]; }));
  expect_error<c10::ValueError>("bias",
                                with([](Inputs& in) { in.bias = in.bias.narrow(0, 0, 2); }));
  expect_error<c10::ValueError>("alpha", with([](Inputs& in) { in.alpha = in.alpha * 3; }));
  expect_error<c10::ValueError>("alpha", with([](Inputs& in) {
                                  in.alpha = in.alpha.view({1, -1});
                                }));
  expect_error<c10::ValueError>(
      "theta", with([](Inputs& in) { in.theta = torch::ones({2}, torch::kFloat64); }));
  expect_error<c10::ValueError>("u0", with([](Inputs& in) { in.u0 = in.u0.t(); }));
  expect_error<c10::ValueError>("s0", with([](Inputs& in) { in.s0 = in.s0[0]; }));
  expect_error<c10::ValueError>("reset", good, "hard");
  expect_error<c10::ValueError>("surrogate", good, "subtract", "relu");
  expect_error<c10::ValueError>("slope", good, "subtract", "sigmoid", 0.0);
}

}  // namespace
