// GoogleTest checks of the adaptive (SE-adLIF) op and module through the
// public C++ API: the numbers overload and argument errors, the module's
// parameterisation and state continuation, and the module against the Python
// one (write_python_data.py's adaptive cases). The op against the LibTorch
// autograd loop: test_neurons.cpp (every model).
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <torch_ext/torch_ext.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "error_message.h"
#include "lif_reference.h"
#include "python_data.h"

namespace {

using torch::Tensor;

TEST(AdaptiveOp, NumbersOverloadAndErrors) {
  const Tensor x = torch::randn({4, 2, 3});
  const Tensor w_in = torch::randn({5, 3});
  const auto [s, v, a] = torch_ext::recurrent_adlif(x, w_in, std::nullopt);
  EXPECT_EQ(s.sizes(), (std::vector<int64_t>{4, 2, 5}));
  EXPECT_EQ(a.sizes(), (std::vector<int64_t>{4, 2, 5}));
  EXPECT_NE(error_message([&] { torch_ext::recurrent_adlif(x, w_in, std::nullopt, std::nullopt, 0.9, 1.5); })
                .find("argument 'beta' must lie in [0, 1]"),
            std::string::npos);
  const Tensor one = torch::ones({});
  EXPECT_NE(error_message([&] {
              torch_ext::recurrent_adlif(x, w_in, std::nullopt, std::nullopt, one * 0.9, one * 0.9,
                                         torch::ones({4}), one, one);
            }).find("recurrent_adlif: argument 'a' must be a float, a 0-dim tensor or a tensor of shape [N]"),
            std::string::npos);
  EXPECT_NE(error_message([&] {
              torch_ext::recurrent_adlif(x, w_in, std::nullopt, std::nullopt, one, one, one, Tensor(), one);
            }).find("argument 'b' is required"),
            std::string::npos);
}

TEST(AdaptiveModule, ParametersStateAndContinuation) {
  torch_ext::RecurrentAdLIF layer(torch_ext::RecurrentAdLIFOptions(3, 8).num_layers(2));
  std::vector<std::string> names;
  for (const auto& item : layer->named_parameters()) names.push_back(item.key());
  const std::vector<std::string> expected{"w_in_l0", "w_rec_l0", "bias_l0", "tau_u_l0", "tau_w_l0",
                                          "a_l0",    "b_l0",     "w_in_l1", "w_rec_l1", "bias_l1",
                                          "tau_u_l1", "tau_w_l1", "a_l1",   "b_l1"};
  EXPECT_EQ(names, expected);
  layer->to(torch::kFloat64);
  {
    // Out-of-range values are kept in range in forward: alpha, beta in the
    // ranges' decays, a and b within q * range.
    torch::NoGradGuard no_grad;
    layer->layers[0].tau_u.fill_(-3.0);
    layer->layers[0].b.fill_(7.0);
  }
  const auto [alpha, beta, a, b] = layer->neuron_params(0);
  EXPECT_TRUE(torch::allclose(alpha, torch::full_like(alpha, std::exp(-1.0 / 5.0))));
  EXPECT_TRUE(torch::allclose(b, torch::full_like(b, 120.0 * 2.0)));
  EXPECT_TRUE((beta >= std::exp(-1.0 / 60.0)).all().item<bool>());
  EXPECT_TRUE((a >= 0).all().item<bool>() && (a <= 120.0).all().item<bool>());

  torch::manual_seed(3);
  const Tensor x = torch::randn({12, 2, 3}, torch::kFloat64) * 3;
  const auto [spikes, state] = layer->forward(x);
  EXPECT_EQ(std::get<1>(state).sizes(), (std::vector<int64_t>{2, 2, 8}));
  // Two chunks with the state carried over give the same as one call.
  const auto [first, state_mid] = layer->forward(x.narrow(0, 0, 5));
  const auto [second, state_end] = layer->forward(x.narrow(0, 5, 7), state_mid);
  EXPECT_TRUE(torch::equal(torch::cat({first, second}), spikes));
  EXPECT_TRUE(torch::allclose(std::get<0>(state_end), std::get<0>(state), 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(std::get<1>(state_end), std::get<1>(state), 1e-12, 1e-12));
  // Every parameter gets a gradient.
  (spikes.sum() + std::get<0>(state).sum()).backward();
  for (const auto& item : layer->named_parameters()) {
    EXPECT_TRUE(item.value().grad().defined()) << item.key();
  }
}

}  // namespace

namespace {

using namespace python_data;

class AdaptiveMatchesPython : public ::testing::TestWithParam<std::string> {};

// The Python RecurrentAdLIF's options, state_dict (loaded by name) and
// inputs give the same spikes, final state (v, a, s) and gradients of every
// parameter and the input in C++.
TEST_P(AdaptiveMatchesPython, OutputsStateAndGradients) {
  expect_matches_python<torch_ext::RecurrentAdLIF>("adaptive_" + GetParam() + ".pt");
}

INSTANTIATE_TEST_SUITE_P(PythonCases, AdaptiveMatchesPython,
                         ::testing::Values("default", "stack_state_lengths", "one_to_one_subtract",
                                           "feed_forward_batch_first", "unbatched_stack",
                                           "delays_synaptic_state_lengths"));

}  // namespace
