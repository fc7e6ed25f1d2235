// Reading what tests/cpp/write_python_data.py writes (a ctest fixture) into
// TORCH_EXT_TEST_DATA: the Python modules' cases the C++ modules must match.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <torch_ext/torch_ext.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

namespace python_data {

using torch::Tensor;
namespace fs = std::filesystem;

inline const fs::path kData = TORCH_EXT_TEST_DATA;

inline c10::impl::GenericDict read_dict(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  EXPECT_TRUE(file) << "cannot open " << path << " (written by write_python_data.py)";
  const std::vector<char> bytes((std::istreambuf_iterator<char>(file)),
                                std::istreambuf_iterator<char>());
  return torch::pickle_load(bytes).toGenericDict();
}

inline std::optional<Tensor> optional_tensor(const c10::IValue& value) {
  return value.isNone() ? std::nullopt : std::optional<Tensor>(value.toTensor());
}

inline c10::Dict<std::string, Tensor> tensor_dict(const c10::IValue& value) {
  c10::Dict<std::string, Tensor> result;
  for (const auto& entry : value.toGenericDict()) {
    result.insert(entry.key().toStringRef(), entry.value().toTensor());
  }
  return result;
}

inline std::vector<double> to_range(const c10::IValue& v) {
  std::vector<double> values;
  for (const auto& item : v.toList()) values.push_back(item.get().toDouble());
  return values;
}

// The C++ options of any module from the Python constructor's keyword
// arguments (the same names): each key is set where Options has it (a
// requires-expression), and a key Options does not have fails the test.
// Every option name of every module is listed once, here.
template <typename Options>
Options options_from(const c10::impl::GenericDict& python) {
  Options o(python.at("in_features").toInt(), python.at("hidden_size").toInt());
  for (const auto& entry : python) {
    const std::string key = entry.key().toStringRef();
    const c10::IValue& v = entry.value();
    bool known = key == "in_features" || key == "hidden_size";
#define TORCH_EXT_OPTION(name, value)                       \
  if constexpr (requires { o.name(value); }) {              \
    if (key == #name) o.name(value), known = true;          \
  }
    TORCH_EXT_OPTION(num_layers, v.toInt())
    TORCH_EXT_OPTION(dropout, v.toDouble())
    TORCH_EXT_OPTION(recurrent, v.toStringRef())
    TORCH_EXT_OPTION(bias, v.toBool())
    TORCH_EXT_OPTION(batch_first, v.toBool())
    TORCH_EXT_OPTION(reset, v.toStringRef())
    TORCH_EXT_OPTION(detach_reset, v.toBool())
    TORCH_EXT_OPTION(surrogate, v.toStringRef())
    TORCH_EXT_OPTION(slope, v.toDouble())
    TORCH_EXT_OPTION(alpha, v.toDouble())
    TORCH_EXT_OPTION(alpha_syn, v.toDouble())
    TORCH_EXT_OPTION(theta, v.toDouble())
    TORCH_EXT_OPTION(learn_alpha, v.toBool())
    TORCH_EXT_OPTION(learn_alpha_syn, v.toBool())
    TORCH_EXT_OPTION(learn_theta, v.toBool())
    TORCH_EXT_OPTION(per_neuron, v.toBool())
    TORCH_EXT_OPTION(save_membrane, v.toBool())
    TORCH_EXT_OPTION(save_state, v.toBool())
    TORCH_EXT_OPTION(tau_u_range, to_range(v))
    TORCH_EXT_OPTION(tau_w_range, to_range(v))
    TORCH_EXT_OPTION(a_range, to_range(v))
    TORCH_EXT_OPTION(b_range, to_range(v))
    TORCH_EXT_OPTION(q, v.toDouble())
    TORCH_EXT_OPTION(dt, v.toDouble())
    TORCH_EXT_OPTION(recurrent_delays, v.toStringRef())
    TORCH_EXT_OPTION(max_delay, v.toInt())
    TORCH_EXT_OPTION(delay_sigma, v.toDouble())
    TORCH_EXT_OPTION(learn_delay_spread, v.toBool())
    TORCH_EXT_OPTION(delay_init_std, v.toDouble())
#undef TORCH_EXT_OPTION
    if (!known) ADD_FAILURE() << "the C++ module has no option '" << key << "'";
  }
  return o;
}

// The C++ Module (a ModuleHolder: RecurrentLIF, ...) built from the Python
// case in `file` (its options; its state_dict loaded by name; float64, eval
// mode) gives the same spikes, final state and gradients of every parameter
// and of x as the Python module did (the tolerance covers summation order
// only: the same kernels run in both).
template <typename Module>
void expect_matches_python(const std::string& file) {
  using Impl = typename Module::ContainedType;
  using State = typename Impl::State;
  constexpr size_t kParts = std::tuple_size_v<State>;
  const auto data = read_dict(kData / file);
  Module module(options_from<decltype(Impl::options)>(data.at("options").toGenericDict()));
  module->to(torch::kFloat64);
  module->eval();
  torch_ext::load_state_dict(*module, tensor_dict(data.at("state_dict")));
  const Tensor x = data.at("x").toTensor().clone().requires_grad_();
  std::optional<State> state;
  if (!data.at("state").isNone()) {
    const auto parts = data.at("state").toList();
    state = [&]<size_t... I>(std::index_sequence<I...>) {
      return State{parts.get(I).toTensor()...};
    }(std::make_index_sequence<kParts>{});
  }
  const auto [spikes, last] = module(x, state, optional_tensor(data.at("lengths")));
  const std::vector<Tensor> final_state =
      std::apply([](const auto&... t) { return std::vector<Tensor>{t...}; }, last);
  EXPECT_TRUE(torch::equal(spikes, data.at("spikes").toTensor()));
  const auto expected_final = data.at("final_state").toList();
  ASSERT_EQ(final_state.size(), expected_final.size());
  std::vector<Tensor> outputs{spikes};
  for (size_t p = 0; p < final_state.size(); ++p) {
    EXPECT_TRUE(torch::allclose(final_state[p], expected_final.get(p).toTensor(), 1e-12, 1e-12))
        << "final state part " << p;
    outputs.push_back(final_state[p]);
  }
  const auto weights = data.at("loss_weights").toList();
  Tensor loss = torch::zeros({}, torch::kFloat64);
  for (size_t i = 0; i < outputs.size(); ++i) {
    loss = loss + (weights.get(i).toTensor() * outputs[i]).sum();
  }
  std::vector<Tensor> inputs;
  std::vector<std::string> names;
  for (const auto& p : module->named_parameters()) {
    names.push_back(p.key());
    inputs.push_back(p.value());
  }
  inputs.push_back(x);
  const auto grads = torch::autograd::grad({loss}, inputs);
  const auto expected = tensor_dict(data.at("grads"));
  ASSERT_EQ(expected.size(), names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    const Tensor want = expected.at(names[i]);
    EXPECT_TRUE(torch::allclose(grads[i], want, 1e-10, 1e-12))
        << names[i] << ": differs by " << (grads[i] - want).abs().max().item<double>();
  }
  EXPECT_TRUE(torch::allclose(grads.back(), data.at("grad_x").toTensor(), 1e-10, 1e-12));
}

}  // namespace python_data
