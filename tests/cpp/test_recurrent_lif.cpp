// GoogleTest checks of the LIF op through the public C++ API
// (torch_ext/torch_ext.h), the way a LibTorch user calls it: the per-element
// math of the kernels, the low-memory mode, the module, a short training run,
// errors. The op against a LibTorch autograd loop: test_neurons.cpp (every
// model).
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <torch_ext/torch_ext.h>

#include <array>
#include <cmath>
#include <string>
#include <tuple>

#include "neurons/lif.h"
#include "lif_reference.h"

namespace {

using torch::Tensor;

struct Inputs {
  Tensor x, w_in, w_rec, bias, alpha, theta, u0, s0;
  std::vector<Tensor> all() const { return {x, w_in, w_rec, bias, alpha, theta, u0, s0}; }
};

Inputs random_inputs(int64_t T, int64_t B, int64_t F, int64_t N) {
  torch::manual_seed(0);
  const auto f64 = torch::kFloat64;
  Inputs in;
  in.x = torch::randn({T, B, F}, f64).requires_grad_();
  in.w_in = (torch::randn({N, F}, f64) * (1.2 / std::sqrt(F))).requires_grad_();
  in.w_rec = (torch::randn({N, N}, f64) * (0.6 / std::sqrt(N))).requires_grad_();
  in.bias = (torch::randn({N}, f64) * 0.4).requires_grad_();
  in.alpha = (torch::rand({N}, f64) * 0.35 + 0.6).requires_grad_();
  in.theta = (torch::rand({}, f64) * 0.4 + 0.8).requires_grad_();
  in.u0 = (torch::randn({B, N}, f64) * 0.8).requires_grad_();
  in.s0 = (torch::rand({B, N}, f64) > 0.5).to(f64).requires_grad_();
  return in;
}

std::tuple<Tensor, Tensor> fused(const Inputs& in, const torch_ext::RecurrentLIFFuncOptions& o) {
  return torch_ext::recurrent_lif(in.x, in.w_in, in.w_rec, in.bias, in.alpha, in.theta,
                                  torch_ext::RecurrentLIFFuncOptions(o).u0(in.u0).s0(in.s0));
}

// The kernels' per-element math (csrc/core/math.h, csrc/neurons/lif.h) against the formulas.
TEST(PerElementMath, SurrogatesMatchTheirFormulasAndStayFinite) {
  using torch_ext::Surrogate;
  const std::pair<Surrogate, std::string> kinds[] = {{Surrogate::Sigmoid, "sigmoid"},
                                                     {Surrogate::FastSigmoid, "fast_sigmoid"},
                                                     {Surrogate::Atan, "atan"},
                                                     {Surrogate::Triangle, "triangle"}};
  for (const auto& [kind, name] : kinds) {
    for (double k : {0.5, 2.0, 25.0}) {
      for (double v : {-1e30, -3.0, -0.4, -1e-3, 0.0, 1e-3, 0.2, 1.0, 7.0, 1e30}) {
        const double got = torch_ext::surrogate_grad(kind, v, k);
        const double want =
            lif_reference::surrogate_grad(torch::tensor(v, torch::kFloat64), name, k).item<double>();
        EXPECT_TRUE(std::isfinite(got)) << name << " k=" << k << " v=" << v;
        EXPECT_NEAR(got, want, 1e-12 * std::max(1.0, std::abs(want))) << name << " v=" << v;
      }
    }
  }
}

TEST(PerElementMath, MembraneStepAndStrictThreshold) {
  using torch_ext::Reset;
  // alpha, theta, u_prev, r_prev, input, rec
  EXPECT_DOUBLE_EQ(torch_ext::membrane_step(Reset::Subtract, 0.5, 1.0, 2.0, 1.0, 0.25, 0.5),
                   0.5 * 2.0 + 0.25 + 0.5 - 1.0);
  EXPECT_DOUBLE_EQ(torch_ext::membrane_step(Reset::Zero, 0.5, 1.0, 2.0, 1.0, 0.25, 0.5), 0.75);
  EXPECT_DOUBLE_EQ(torch_ext::membrane_step(Reset::None, 0.5, 1.0, 2.0, 1.0, 0.25, 0.5), 1.75);
  EXPECT_EQ(torch_ext::spike(1.0, 1.0), 0.0);  // U == theta does not fire
  EXPECT_EQ(torch_ext::spike(std::nextafter(1.0, 2.0), 1.0), 1.0);
}

TEST(RecurrentLIF, LowMemoryModeGivesTheSameGradients) {
  const Inputs in = random_inputs(12, 3, 5, 6);
  const auto [s1, u1] = fused(in, {});
  const auto [s2, u2] = fused(in, torch_ext::RecurrentLIFFuncOptions().save_membrane(false));
  const auto g1 = torch::autograd::grad({s1.sum() + u1.square().sum()}, in.all());
  const auto g2 = torch::autograd::grad({s2.sum() + u2.square().sum()}, in.all());
  for (size_t i = 0; i < g1.size(); ++i) EXPECT_TRUE(torch::equal(g1[i], g2[i])) << i;
}

// The large buffers come from the cache: after the first steps of a training
// loop no call takes fresh memory, and the results stay those of the first.
TEST(RecurrentLIF, TrainingStepsReuseTheCachedBuffers) {
  const Inputs in = random_inputs(40, 8, 24, 64);  // [T, B, N] float64: 160 KiB buffers
  std::vector<Tensor> first;
  torch_ext::BufferCacheInfo start{};
  for (int step = 0; step < 5; ++step) {
    if (step == 2) start = torch_ext::buffer_cache_info();
    const auto [spikes, membrane] = fused(in, {});
    const auto grads = torch::autograd::grad({spikes.sum() + membrane.square().sum()}, in.all());
    if (step == 0) first = grads;
    for (size_t i = 0; i < grads.size(); ++i) EXPECT_TRUE(torch::equal(grads[i], first[i])) << i;
  }
  const torch_ext::BufferCacheInfo end = torch_ext::buffer_cache_info();
  EXPECT_EQ(end.allocated, start.allocated);
  EXPECT_GT(end.reused, start.reused);
  torch_ext::release_buffer_cache();
  EXPECT_EQ(torch_ext::buffer_cache_info().cached_bytes, 0);
}

TEST(RecurrentLIF, SecondDerivativeRaises) {
  const Inputs in = random_inputs(5, 2, 3, 4);
  const auto [spikes, membrane] = fused(in, {});
  const auto grads = torch::autograd::grad({spikes.sum()}, {in.w_in}, {}, true, true);
  EXPECT_THROW(grads[0].sum().backward(), c10::Error);
}

TEST(RecurrentLIF, FloatParametersAndNoRecurrence) {
  const Inputs in = random_inputs(6, 2, 3, 4);
  const auto [spikes, membrane] = torch_ext::recurrent_lif(in.x, in.w_in, std::nullopt, in.bias);
  const auto [s_ref, u_ref] = lif_reference::recurrent_lif(
      in.x, in.w_in, torch::zeros({4, 4}, torch::kFloat64), in.bias,
      torch::tensor(0.9, torch::kFloat64), torch::tensor(1.0, torch::kFloat64), {}, {}, "subtract",
      false, "sigmoid", 25.0);
  EXPECT_TRUE(torch::equal(spikes, s_ref));
  EXPECT_TRUE(torch::allclose(membrane, u_ref, 1e-12, 1e-12));
}

TEST(RecurrentLIF, UndefinedTensorsMeanAbsent) {
  const Inputs in = random_inputs(6, 2, 3, 4);
  const auto [s1, u1] = torch_ext::recurrent_lif(in.x, in.w_in, in.w_rec, std::nullopt);
  const auto [s2, u2] = torch_ext::recurrent_lif(
      in.x, in.w_in, in.w_rec, torch::Tensor(), 0.9, 1.0,
      torch_ext::RecurrentLIFFuncOptions().u0(torch::Tensor()).lengths(torch::Tensor()));
  EXPECT_TRUE(torch::equal(s1, s2));
  EXPECT_TRUE(torch::equal(u1, u2));
  const auto grads = torch::autograd::grad({u2.sum()}, {in.x, in.w_in, in.w_rec});
  EXPECT_EQ(grads[1].sizes(), in.w_in.sizes());
}

// Runs the op with one argument replaced and expects an error naming it.
template <typename Error>
void expect_error(const char* argument, const Inputs& in,
                  const torch_ext::RecurrentLIFFuncOptions& options = {}) {
  try {
    fused(in, options);
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
  using Opts = torch_ext::RecurrentLIFFuncOptions;
  expect_error<c10::ValueError>("x", with([](Inputs& in) { in.x = in.x[0]; }));
  expect_error<c10::TypeError>("x", with([](Inputs& in) { in.x = in.x.to(torch::kInt32); }));
  expect_error<c10::ValueError>("w_in", with([](Inputs& in) { in.w_in = in.w_in.t(); }));
  expect_error<c10::TypeError>("w_in",
                               with([](Inputs& in) { in.w_in = in.w_in.to(torch::kFloat32); }));
  expect_error<c10::ValueError>("w_rec", with([](Inputs& in) { in.w_rec = in.w_rec[0].narrow(0, 0, 2); }));
  expect_error<c10::ValueError>("bias",
                                with([](Inputs& in) { in.bias = in.bias.narrow(0, 0, 2); }));
  expect_error<c10::ValueError>("alpha", with([](Inputs& in) { in.alpha = in.alpha * 3; }));
  expect_error<c10::ValueError>("alpha",
                                with([](Inputs& in) { in.alpha = in.alpha.view({1, -1}); }));
  expect_error<c10::ValueError>(
      "theta", with([](Inputs& in) { in.theta = torch::ones({2}, torch::kFloat64); }));
  expect_error<c10::ValueError>("u0", with([](Inputs& in) { in.u0 = in.u0.t(); }));
  expect_error<c10::ValueError>("s0", with([](Inputs& in) { in.s0 = in.s0[0]; }));
  expect_error<c10::ValueError>(
      "w_in", with([](Inputs& in) { in.w_in = torch::zeros({5, 3}, torch::kFloat64).to("meta"); }));
  expect_error<c10::ValueError>("reset", good, Opts().reset("hard"));
  expect_error<c10::ValueError>("surrogate", good, Opts().surrogate("relu"));
  expect_error<c10::ValueError>("slope", good, Opts().slope(0.0));
  EXPECT_THROW(torch_ext::recurrent_lif(good.x, good.w_in, good.w_rec, good.bias, 1.5),
               c10::ValueError);
  EXPECT_THROW(torch_ext::RecurrentLIF(torch_ext::RecurrentLIFOptions(3, 4).surrogate("relu")),
               c10::ValueError);
}

TEST(RecurrentLIFModule, ParametersStateAndBatchFirst) {
  torch_ext::RecurrentLIF layer(
      torch_ext::RecurrentLIFOptions(5, 7).learn_alpha(true).per_neuron(true));
  std::vector<std::string> names;
  for (const auto& p : layer->named_parameters()) names.push_back(p.key());
  EXPECT_EQ(names, (std::vector<std::string>{"w_in", "w_rec", "bias", "alpha"}));
  EXPECT_EQ(layer->named_buffers().size(), 1u);  // theta
  EXPECT_EQ(layer->alpha.sizes(), (std::vector<int64_t>{7}));
  EXPECT_LE(layer->w_in.abs().max().item<double>(), 1 / std::sqrt(5.0));

  const Tensor x = torch::randn({9, 3, 5}) * 2;
  const auto [spikes, state] = layer(x);
  EXPECT_EQ(spikes.sizes(), (std::vector<int64_t>{9, 3, 7}));
  // Two halves with the state carried over equal one call.
  const auto [first, mid] = layer(x.narrow(0, 0, 4));
  const auto [second, last] = layer->forward(x.narrow(0, 4, 5), mid);
  EXPECT_TRUE(torch::equal(torch::cat({first, second}), spikes));
  EXPECT_TRUE(torch::allclose(std::get<0>(last), std::get<0>(state)));

  torch_ext::RecurrentLIF batch_first(
      torch_ext::RecurrentLIFOptions(5, 7).learn_alpha(true).per_neuron(true).batch_first(true));
  {
    torch::NoGradGuard no_grad;
    for (const auto& p : layer->named_parameters()) batch_first->named_parameters()[p.key()].copy_(p.value());
  }
  const auto [spikes_bf, state_bf] = batch_first(x.transpose(0, 1));
  EXPECT_TRUE(torch::equal(spikes_bf.transpose(0, 1), spikes));
}

// A short training run: spike counts of the layer, read out linearly, learn
// which of two input channels carries more current.
TEST(RecurrentLIFModule, TrainingLowersTheLoss) {
  torch::manual_seed(0);
  torch_ext::RecurrentLIF layer(torch_ext::RecurrentLIFOptions(2, 16).learn_alpha(true));
  torch::nn::Linear readout(16, 2);
  std::vector<Tensor> params = layer->parameters();
  for (const auto& p : readout->parameters()) params.push_back(p);
  torch::optim::Adam optimizer(params, torch::optim::AdamOptions(0.01));
  const Tensor labels = torch::randint(0, 2, {64});
  const Tensor rates = torch::stack({labels.to(torch::kFloat), 1 - labels.to(torch::kFloat)}, 1);
  const Tensor x = torch::rand({25, 64, 2}) * (0.5 + rates);  // [T, B, F]
  auto loss_now = [&] {
    const auto [spikes, state] = layer(x);
    return torch::nn::functional::cross_entropy(readout(spikes.mean(0)), labels);
  };
  const double first = loss_now().item<double>();
  // 200 steps: the loss is then well below the bar, not at it, so a change of
  // rounding in the gradients (a summation order) cannot move it across.
  for (int step = 0; step < 200; ++step) {
    optimizer.zero_grad();
    const Tensor loss = loss_now();
    loss.backward();
    optimizer.step();
  }
  const double last = loss_now().item<double>();
  EXPECT_LT(last, 0.6 * first) << "loss " << first << " -> " << last;
  torch::NoGradGuard no_grad;
  const auto [spikes, state] = layer(x);
  const double accuracy =
      readout(spikes.mean(0)).argmax(1).eq(labels).to(torch::kFloat).mean().item<double>();
  EXPECT_GE(accuracy, 0.9) << "training accuracy";
}

}  // namespace
