// Every neuron model of the registry (csrc/neurons/registry.h), through the
// dispatcher from C++: the forward and torch::autograd::grad of every tensor
// input against the LibTorch autograd loop of lif_reference.h, for every
// reset, detach_reset and surrogate, with lengths; and the low-memory mode
// bitwise equal. A model added to the registry is tested here by adding its
// reference to lif_reference::by_op. Then the current-based layer's own C++
// API: the functional form and RecurrentCubaLIF against the Python module
// (write_python_data.py's cuba cases).
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <torch_ext/torch_ext.h>

#include <cmath>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "error_message.h"
#include "lif_reference.h"
#include "neurons/registry.h"
#include "python_data.h"

namespace {

using torch::Tensor;

std::vector<torch_ext::NeuronInfo> registry() {
  std::vector<torch_ext::NeuronInfo> models;
  torch_ext::for_each_neuron([&]<typename M>() { models.push_back(torch_ext::neuron_info<M>()); });
  return models;
}

// A call's tensors: x, w_in, w_rec, bias, the parameters, the initial states, s0.
struct Inputs {
  Tensor x, w_in, w_rec, bias;
  std::vector<Tensor> params, initial;  // initial: the states, then s0
  std::vector<Tensor> all() const {
    std::vector<Tensor> t{x, w_in, w_rec, bias};
    t.insert(t.end(), params.begin(), params.end());
    t.insert(t.end(), initial.begin(), initial.end());
    return t;
  }
};

// Random inputs with a non-trivial spike rate (the input scales of tests/neurons.py).
Inputs random_inputs(const torch_ext::NeuronInfo& model, int64_t T, int64_t B, int64_t F,
                     int64_t N) {
  torch::manual_seed(2);
  const auto f64 = torch::kFloat64;
  const std::map<std::string, double> scales{
      {"recurrent_lif", 1.0}, {"recurrent_adlif", 2.5}, {"recurrent_cubalif", 0.6}};
  const std::map<std::string, std::pair<double, double>> ranges{
      {"alpha", {0.45, 0.85}}, {"beta", {0.6, 0.95}}, {"a", {-0.3, 0.6}}, {"b", {0.2, 1.2}},
      {"alpha_syn", {0.3, 0.7}}, {"theta", {0.8, 1.2}}};
  const double scale = scales.at(model.op());
  Inputs in;
  in.x = (torch::randn({T, B, F}, f64) * 1.5 * scale + 0.4 * scale).requires_grad_();
  in.w_in = (torch::randn({N, F}, f64) * (1.2 / std::sqrt(F))).requires_grad_();
  in.w_rec = (torch::randn({N, N}, f64) * (0.6 * scale / std::sqrt(N))).requires_grad_();
  in.bias = (torch::randn({N}, f64) * 0.4 * scale + 0.2 * scale).requires_grad_();
  for (int k = 0; k < model.num_params; ++k) {
    const auto [low, high] = ranges.at(model.params[k].name);
    // Per neuron, and a shared 0-dim value for the last.
    const std::vector<int64_t> shape =
        k + 1 < model.num_params ? std::vector<int64_t>{N} : std::vector<int64_t>{};
    in.params.push_back((torch::rand(shape, f64) * (high - low) + low).requires_grad_());
  }
  for (int k = 0; k < model.num_states; ++k) {
    in.initial.push_back((torch::randn({B, N}, f64) * 0.8).requires_grad_());
  }
  in.initial.push_back((torch::rand({B, N}, f64) > 0.5).to(f64).requires_grad_());
  return in;
}

// The op through the dispatcher (autograd, the CPU kernel): (spikes, states...).
std::vector<Tensor> call_op(const std::string& op, const Inputs& in, const std::string& reset,
                            bool detach, const std::string& surrogate, bool save_state,
                            const c10::optional<Tensor>& lengths) {
  const auto handle =
      c10::Dispatcher::singleton().findSchemaOrThrow(("torch_ext::" + op).c_str(), "");
  torch::jit::Stack stack;
  for (const Tensor& t : in.all()) stack.emplace_back(t);
  stack.emplace_back(reset);
  stack.emplace_back(detach);
  stack.emplace_back(surrogate);
  stack.emplace_back(c10::IValue());  // slope: the surrogate's default
  stack.emplace_back(save_state);
  stack.emplace_back(lengths ? c10::IValue(*lengths) : c10::IValue());
  for (int i = 0; i < 4; ++i) stack.emplace_back();  // no delays, max_delay, sigma, mask
  handle.callBoxed(stack);
  std::vector<Tensor> outputs;
  for (const c10::IValue& v : stack) outputs.push_back(v.toTensor());
  return outputs;
}

Tensor loss_of(const std::vector<Tensor>& outputs) {
  torch::manual_seed(7);
  Tensor loss = torch::zeros({}, torch::kFloat64);
  for (const Tensor& out : outputs) loss = loss + (out * torch::randn_like(out)).sum();
  return loss;
}

using Case = std::tuple<int, std::string, bool, std::string>;  // model, reset, detach, surrogate

class EveryModelMatchesAutograd : public ::testing::TestWithParam<Case> {};

TEST_P(EveryModelMatchesAutograd, ForwardAndAllGradients) {
  const auto& [index, reset, detach, surrogate] = GetParam();
  const torch_ext::NeuronInfo model = registry().at(index);
  const double slope = surrogate == "atan" ? 2.0 : (surrogate == "triangle" ? 1.0 : 25.0);
  const int64_t T = 14, B = 3;
  const Inputs in = random_inputs(model, T, B, 5, 6);
  const Tensor lengths = torch::tensor({T, int64_t(9), int64_t(0)});
  const auto fused = call_op(model.op(), in, reset, detach, surrogate, true, lengths);
  // The reference on each row's own length: run it on the full length and
  // zero the steps past it (they take no part in either).
  auto ref = lif_reference::by_op(model.op(), in.x, in.w_in, in.w_rec, in.bias, in.params,
                                  in.initial, reset, detach, surrogate, slope);
  const Tensor taken = (torch::arange(T).view({T, 1, 1}) < lengths.view({1, B, 1}));
  for (Tensor& out : ref) out = torch::where(taken, out, torch::zeros({}, out.options()));
  ASSERT_EQ(fused.size(), ref.size());
  ASSERT_TRUE(torch::equal(fused[0], ref[0])) << model.op();
  for (size_t k = 1; k < fused.size(); ++k) {
    ASSERT_TRUE(torch::allclose(fused[k], ref[k], 1e-10, 1e-10)) << model.states[k - 1].output;
  }
  const double rate = fused[0].mean().item<double>();
  ASSERT_GT(rate, 0.03);
  ASSERT_LT(rate, 0.95);

  // The loss reads only the steps each row takes, and a step depends only on
  // earlier ones: the reference's gradients are those of each row run alone
  // on its own length, what the op computes.
  const auto got = torch::autograd::grad({loss_of(fused)}, in.all());
  const auto want = torch::autograd::grad({loss_of(ref)}, in.all());
  std::vector<std::string> names{"x", "w_in", "w_rec", "bias"};
  for (int k = 0; k < model.num_params; ++k) names.push_back(model.params[k].name);
  for (int k = 0; k < model.num_states; ++k) names.push_back(model.states[k].initial);
  names.push_back("s0");
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_TRUE(torch::allclose(got[i], want[i], 1e-9, 1e-9))
        << model.op() << ": gradient of " << names[i] << ": max difference "
        << (got[i] - want[i]).abs().max().item<double>();
  }

  // The low-memory mode: the same bits.
  const auto low = call_op(model.op(), in, reset, detach, surrogate, false, lengths);
  const auto got_low = torch::autograd::grad({loss_of(low)}, in.all());
  for (size_t k = 0; k < fused.size(); ++k) EXPECT_TRUE(torch::equal(fused[k], low[k]));
  for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(torch::equal(got[i], got_low[i])) << names[i];
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const auto& [index, reset, detach, surrogate] = info.param;
  return std::string(registry().at(index).op()) + "_" + reset + (detach ? "_detach_" : "_") +
         surrogate;
}

INSTANTIATE_TEST_SUITE_P(
    Registry, EveryModelMatchesAutograd,
    ::testing::Combine(::testing::Range(0, static_cast<int>(registry().size())),
                       ::testing::Values("subtract", "zero", "none"), ::testing::Bool(),
                       ::testing::Values("sigmoid", "fast_sigmoid", "atan", "triangle")),
    case_name);

using namespace python_data;

TEST(CubaFunctional, NumbersOverloadAlphaSynZeroIsLifAndErrors) {
  torch::manual_seed(3);
  const Tensor x = torch::randn({12, 2, 3}, torch::kFloat64) * 2;
  const Tensor w_in = torch::randn({5, 3}, torch::kFloat64);
  const Tensor w_rec = torch::randn({5, 5}, torch::kFloat64) * 0.3;
  // alpha_syn = 0: J[t] = I[t] + rec[t], the LIF layer exactly.
  const auto [s, u, j] = torch_ext::recurrent_cubalif(x, w_in, w_rec, std::nullopt, 0.9, 0.0, 1.0);
  const auto [s_lif, u_lif] = torch_ext::recurrent_lif(x, w_in, w_rec, std::nullopt, 0.9, 1.0);
  EXPECT_TRUE(torch::equal(s, s_lif));
  EXPECT_TRUE(torch::allclose(u, u_lif, 1e-12, 1e-12));
  EXPECT_GT(s.sum().item<double>(), 0);
  EXPECT_NE(error_message([&] { torch_ext::recurrent_cubalif(x, w_in, w_rec, std::nullopt, 0.9, 1.5); })
                .find("recurrent_cubalif: argument 'alpha_syn' must lie in [0, 1]"),
            std::string::npos);
  const Tensor one = torch::ones({}, torch::kFloat64);
  EXPECT_NE(error_message([&] {
              torch_ext::recurrent_cubalif(x, w_in, w_rec, std::nullopt, one, Tensor(), one);
            }).find("recurrent_cubalif: argument 'alpha_syn' is required"),
            std::string::npos);
  EXPECT_NE(error_message([&] {
              torch_ext::recurrent_cubalif(
                  x, w_in, w_rec, std::nullopt, one, one, one,
                  torch_ext::RecurrentCubaLIFFuncOptions().j0(torch::zeros({3, 5}, torch::kFloat64)));
            }).find("recurrent_cubalif: argument 'j0' must have shape [2, 5]"),
            std::string::npos);
}

class CubaMatchesPython : public ::testing::TestWithParam<std::string> {};

// The Python RecurrentCubaLIF's options, state_dict and inputs give the same
// spikes, final state (u, j, s) and gradients in C++.
TEST_P(CubaMatchesPython, OutputsStateAndGradients) {
  expect_matches_python<torch_ext::RecurrentCubaLIF>("cuba_" + GetParam() + ".pt");
}

INSTANTIATE_TEST_SUITE_P(PythonCases, CubaMatchesPython,
                         ::testing::Values("default", "stack_state_lengths",
                                           "one_to_one_zero_reset", "feed_forward_batch_first",
                                           "unbatched_stack", "delays_axonal_one_to_one"));

TEST(CubaModule, ParametersNamesAndErrors) {
  torch_ext::RecurrentCubaLIF layer(
      torch_ext::RecurrentCubaLIFOptions(3, 8).num_layers(2).learn_alpha_syn(true));
  std::vector<std::string> names;
  for (const auto& item : layer->named_parameters()) names.push_back(item.key());
  const std::vector<std::string> expected{"w_in_l0", "w_rec_l0", "bias_l0", "alpha_syn_l0",
                                          "w_in_l1", "w_rec_l1", "bias_l1", "alpha_syn_l1"};
  EXPECT_EQ(names, expected);
  EXPECT_EQ(layer->named_buffers().size(), 4u);  // alpha and theta of each layer
  EXPECT_FLOAT_EQ(layer->layers[1].alpha_syn.item<float>(), 0.8f);  // float32 parameters
  EXPECT_THROW(torch_ext::RecurrentCubaLIF(torch_ext::RecurrentCubaLIFOptions(3, 8).alpha_syn(2.0)),
               c10::ValueError);
  EXPECT_THROW(torch_ext::RecurrentCubaLIF(torch_ext::RecurrentCubaLIFOptions(3, 8).reset("hard")),
               c10::ValueError);
  const Tensor x = torch::randn({7, 2, 3});
  const auto [spikes, state] = layer(x);
  EXPECT_EQ(std::get<1>(state).sizes(), (std::vector<int64_t>{2, 2, 8}));
  // forward_with_membrane: the same, and the top layer's membrane (whose
  // last step is the top layer's u).
  const auto [spikes2, membrane, state2] = layer->forward_with_membrane(x);
  EXPECT_TRUE(torch::equal(spikes, spikes2));
  EXPECT_EQ(membrane.sizes(), spikes.sizes());
  EXPECT_TRUE(torch::equal(membrane[-1], std::get<0>(state2)[1]));
}

}  // namespace
