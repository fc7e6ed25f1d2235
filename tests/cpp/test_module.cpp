// The C++ RecurrentLIF module against the Python one (files written by
// tests/cpp/write_python_data.py: the Python module's options, state_dict,
// inputs, outputs and gradients), torch_ext::load_state_dict, and the
// module's options and misuse: every bad input an error naming the argument.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <torch_ext/torch_ext.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <sstream>
#include <string>

#include "lif_reference.h"
#include "python_data.h"

namespace {

using torch::Tensor;
namespace fs = std::filesystem;
using namespace python_data;

class MatchesPython : public ::testing::TestWithParam<std::string> {};

// Same options, same parameters (loaded by name), same inputs: the same
// spikes, final state and gradients as the Python module.
TEST_P(MatchesPython, OutputsStateAndGradients) {
  expect_matches_python<torch_ext::RecurrentLIF>("module_" + GetParam() + ".pt");
}

INSTANTIATE_TEST_SUITE_P(PythonCases, MatchesPython,
                         ::testing::Values("default", "stack_state_lengths",
                                           "one_to_one_zero_reset", "feed_forward_batch_first",
                                           "unbatched_stack", "stack_dropout_eval",
                                           "delays_axonal_stack_state_lengths",
                                           "delays_synaptic_unbatched"));

TEST(LoadStateDict, ReadsWhatPythonSaves) {
  torch_ext::RecurrentLIF module(
      torch_ext::RecurrentLIFOptions(3, 4).num_layers(2).learn_alpha(true));
  torch_ext::load_state_dict(*module, (kData / "state_dict.pt").string());
  std::vector<std::string> names;
  for (const auto& p : module->named_parameters()) names.push_back(p.key());
  EXPECT_EQ(names, (std::vector<std::string>{"w_in_l0", "w_rec_l0", "bias_l0", "alpha_l0",
                                              "w_in_l1", "w_rec_l1", "bias_l1", "alpha_l1"}));
  EXPECT_EQ(module->layers[1].w_in.sizes(), (std::vector<int64_t>{4, 4}));
  EXPECT_TRUE(module->w_in.is_same(module->layers[0].w_in));  // the layer-0 aliases
}

template <typename Error>
void expect_error_naming(const std::function<void()>& call, const std::string& name) {
  try {
    call();
    ADD_FAILURE() << "no error; expected one naming '" << name << "'";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(name), std::string::npos) << error.what();
  }
}

TEST(LoadStateDict, StrictNamesAndShapes) {
  torch_ext::RecurrentLIF module(torch_ext::RecurrentLIFOptions(3, 4));
  auto dict_of = [&] {
    c10::Dict<std::string, Tensor> d;
    for (const auto& p : module->named_parameters()) d.insert(p.key(), p.value().detach().clone());
    for (const auto& b : module->named_buffers()) d.insert(b.key(), b.value().detach().clone());
    return d;
  };
  auto missing = dict_of();
  ASSERT_EQ(missing.erase("w_rec"), 1u);
  expect_error_naming<c10::ValueError>([&] { torch_ext::load_state_dict(*module, missing); },
                                       "'w_rec'");
  auto extra = dict_of();
  extra.insert("w_in_l1", torch::zeros({4, 4}));
  expect_error_naming<c10::ValueError>([&] { torch_ext::load_state_dict(*module, extra); },
                                       "'w_in_l1'");
  auto wrong = dict_of();
  wrong.insert_or_assign("bias", torch::zeros({5}));
  expect_error_naming<c10::ValueError>([&] { torch_ext::load_state_dict(*module, wrong); },
                                       "'bias' has shape [5]");
  expect_error_naming<c10::ValueError>(
      [&] { torch_ext::load_state_dict(*module, std::string("/nonexistent/file.pt")); },
      "cannot open '/nonexistent/file.pt'");
  // A file that is not a torch.save archive, and one that is cut short.
  const fs::path junk = fs::temp_directory_path() / "torch_ext_not_a_state_dict.pt";
  std::ofstream(junk) << "not a pickle";
  expect_error_naming<c10::ValueError>([&] { torch_ext::load_state_dict(*module, junk.string()); },
                                       "is not a file torch.save wrote");
  {
    std::ifstream good(kData / "state_dict.pt", std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(good)), std::istreambuf_iterator<char>());
    std::ofstream(junk, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  }
  expect_error_naming<c10::ValueError>([&] { torch_ext::load_state_dict(*module, junk.string()); },
                                       "is not a file torch.save wrote");
  // A file holding something other than a dict.
  {
    const auto bytes = torch::pickle_save(torch::zeros({2}));
    std::ofstream(junk, std::ios::binary).write(bytes.data(), bytes.size());
  }
  expect_error_naming<c10::ValueError>([&] { torch_ext::load_state_dict(*module, junk.string()); },
                                       "not a state_dict");
  fs::remove(junk);
  // module.state_dict() saved as it is (an OrderedDict): the error says what to save instead.
  expect_error_naming<c10::ValueError>(
      [&] { torch_ext::load_state_dict(*module, (kData / "ordered_state_dict.pt").string()); },
      "torch.save(dict(module.state_dict()), path)");
}

using Opts = torch_ext::RecurrentLIFOptions;

TEST(RecurrentLIFModuleOptions, ShapesAndNamesPerRecurrence) {
  torch_ext::RecurrentLIF one_to_one(Opts(3, 5).recurrent("one_to_one"));
  EXPECT_EQ(one_to_one->w_rec.sizes(), (std::vector<int64_t>{5}));
  torch_ext::RecurrentLIF none(Opts(3, 5).recurrent("none").bias(false));
  EXPECT_FALSE(none->w_rec.defined());
  EXPECT_FALSE(none->bias.defined());
  std::vector<std::string> names;
  for (const auto& p : none->named_parameters()) names.push_back(p.key());
  EXPECT_EQ(names, (std::vector<std::string>{"w_in"}));
  const auto [spikes, state] = none(torch::randn({4, 2, 3}));
  EXPECT_EQ(spikes.sizes(), (std::vector<int64_t>{4, 2, 5}));
}

// One-to-one: the recurrent term is w_rec * S[t-1], the all-to-all layer
// with the diagonal matrix diag(w_rec).
TEST(RecurrentLIFModuleOptions, OneToOneIsTheDiagonalRecurrence) {
  torch::manual_seed(3);
  torch_ext::RecurrentLIF diagonal(Opts(3, 5).recurrent("one_to_one"));
  torch_ext::RecurrentLIF dense(Opts(3, 5));
  {
    torch::NoGradGuard no_grad;
    diagonal->w_rec.uniform_(-1.0, 1.0);
    dense->w_in.copy_(diagonal->w_in);
    dense->bias.copy_(diagonal->bias);
    dense->w_rec.copy_(torch::diag(diagonal->w_rec));
  }
  const Tensor x = torch::randn({12, 4, 3}) * 2;
  EXPECT_TRUE(torch::equal(std::get<0>(diagonal(x)), std::get<0>(dense(x))));
}

// A stack equals its layers run one after the other, each fed the spikes
// below; the state is [L, B, N] and continues the sequence.
TEST(RecurrentLIFModuleOptions, StackIsItsLayersInTurnAndContinues) {
  torch::manual_seed(4);
  torch_ext::RecurrentLIF stack(Opts(3, 6).num_layers(2));
  stack->to(torch::kFloat64);
  const Tensor x = torch::randn({10, 2, 3}, torch::kFloat64) * 2;
  const auto [spikes, state] = stack(x);
  EXPECT_EQ(std::get<0>(state).sizes(), (std::vector<int64_t>{2, 2, 6}));
  Tensor input = x;
  for (const auto& layer : stack->layers) {
    input = std::get<0>(torch_ext::recurrent_lif(input, layer.w_in, layer.w_rec, layer.bias,
                                                 layer.alpha.clamp(0, 1), layer.theta));
  }
  EXPECT_TRUE(torch::equal(spikes, input));
  const auto [first, mid] = stack(x.narrow(0, 0, 6));
  const auto [second, last] = stack->forward(x.narrow(0, 6, 4), mid);
  EXPECT_TRUE(torch::equal(torch::cat({first, second}), spikes));
  EXPECT_TRUE(torch::allclose(std::get<0>(last), std::get<0>(state)));
}

// The stack hands layer 1's spikes to layer 2 as they are, so layer 2
// gathers them (its input is binary and sparse at N = 300): the same spikes
// and, to summation order, the same gradients as with the gather turned off.
TEST(RecurrentLIFModuleOptions, StackGathersTheSpikesBelow) {
  torch::manual_seed(7);
  torch_ext::RecurrentLIF stack(Opts(20, 300).num_layers(2));
  stack->to(torch::kFloat64);
  {
    torch::NoGradGuard no_grad;
    stack->layers[0].bias.zero_();  // layer 1's rate follows its input alone
  }
  const Tensor noise = torch::randn({30, 4, 20}, torch::kFloat64);
  const auto& first = stack->layers[0];
  auto layer_1 = [&](const Tensor& x) {
    torch::NoGradGuard no_grad;
    return std::get<0>(torch_ext::recurrent_lif(x, first.w_in, first.w_rec, first.bias,
                                                first.alpha.clamp(0, 1), first.theta));
  };
  double scale = 0;  // an input scale at which layer 1 fires sparsely
  for (double s : {0.1, 0.15, 0.25, 0.5, 0.7, 1.0, 1.4, 2.0, 3.0, 4.0, 6.0, 10.0, 20.0}) {
    const double rate = layer_1(noise * s).mean().item<double>();
    if (rate > 0.01 && rate < 0.1) {
      scale = s;
      break;
    }
  }
  ASSERT_GT(scale, 0) << "no input scale gives layer 1 a rate in (1 %, 10 %)";
  const Tensor x = noise * scale;
  const auto density = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("torch_ext::_binary_input_density", "")
                           .typed<double(const Tensor&, const Tensor&)>();
  ASSERT_EQ(unsetenv("TORCH_EXT_BINARY_INPUTS"), 0);
  EXPECT_GT(density.call(layer_1(x), stack->layers[1].w_in), 0);  // layer 2 gathers
  auto run = [&] {
    const Tensor input = x.clone().requires_grad_();
    const Tensor spikes = std::get<0>(stack(input));
    std::vector<Tensor> inputs{input};
    for (const auto& p : stack->parameters()) inputs.push_back(p);
    auto grads = torch::autograd::grad({(spikes * torch::arange(300, torch::kFloat64)).sum()},
                                       inputs, {}, {}, {}, /*allow_unused=*/true);
    return std::make_pair(spikes, grads);
  };
  const auto [gathered, gathered_grads] = run();
  ASSERT_EQ(setenv("TORCH_EXT_BINARY_INPUTS", "dense", 1), 0);
  const auto [dense, dense_grads] = run();
  ASSERT_EQ(unsetenv("TORCH_EXT_BINARY_INPUTS"), 0);
  EXPECT_TRUE(torch::equal(gathered, dense));
  ASSERT_EQ(gathered_grads.size(), dense_grads.size());
  for (size_t i = 0; i < gathered_grads.size(); ++i) {
    if (!dense_grads[i].defined()) {
      EXPECT_FALSE(gathered_grads[i].defined());
      continue;
    }
    EXPECT_TRUE(torch::allclose(gathered_grads[i], dense_grads[i], 1e-12, 1e-12)) << "input " << i;
  }
}

TEST(RecurrentLIFModuleOptions, DropoutOnlyBetweenLayersAndOnlyInTraining) {
  torch::manual_seed(5);
  torch_ext::RecurrentLIF with(Opts(3, 6).num_layers(2).dropout(0.5));
  torch_ext::RecurrentLIF without(Opts(3, 6).num_layers(2));
  {
    torch::NoGradGuard no_grad;
    for (const auto& p : with->named_parameters()) without->named_parameters()[p.key()].copy_(p.value());
  }
  const Tensor x = torch::randn({10, 8, 3}) * 3;
  with->eval();
  EXPECT_TRUE(torch::equal(std::get<0>(with(x)), std::get<0>(without(x))));
  with->train();
  EXPECT_FALSE(torch::equal(std::get<0>(with(x)), std::get<0>(without(x))));
  torch_ext::RecurrentLIF all_dropped(Opts(3, 6).num_layers(2).dropout(1.0));
  // Layer 1 sees no spikes: what it does is its bias alone, whatever x is.
  EXPECT_TRUE(torch::equal(std::get<0>(all_dropped(x)), std::get<0>(all_dropped(x * 0))));
}

TEST(RecurrentLIFModuleOptions, LengthsGiveEachRowItsOwnLastState) {
  torch::manual_seed(6);
  torch_ext::RecurrentLIF layer(Opts(3, 4).num_layers(2));
  const Tensor x = torch::randn({7, 3, 3}) * 2;
  const Tensor lengths = torch::tensor({7, 3, 0});
  const auto [spikes, state] = layer(x, std::nullopt, lengths);
  for (int64_t b = 0; b < 3; ++b) {
    const int64_t n = lengths[b].item<int64_t>();
    const auto [row, row_state] = layer(x.narrow(0, 0, n).narrow(1, b, 1));
    EXPECT_TRUE(torch::equal(spikes.narrow(0, 0, n).narrow(1, b, 1), row)) << "row " << b;
    EXPECT_TRUE(torch::equal(spikes.narrow(0, n, 7 - n).narrow(1, b, 1),
                             torch::zeros({7 - n, 1, 4})));
    EXPECT_TRUE(torch::allclose(std::get<0>(state).narrow(1, b, 1), std::get<0>(row_state)));
  }
  EXPECT_TRUE(torch::equal(std::get<0>(state).select(1, 2), torch::zeros({2, 4})));
}

TEST(RecurrentLIFModuleOptions, UnbatchedAndEmpty) {
  torch_ext::RecurrentLIF layer(Opts(3, 4).num_layers(2));
  const Tensor x = torch::randn({5, 3});
  const auto [spikes, state] = layer(x);
  EXPECT_EQ(spikes.sizes(), (std::vector<int64_t>{5, 4}));
  EXPECT_EQ(std::get<0>(state).sizes(), (std::vector<int64_t>{2, 4}));
  EXPECT_TRUE(torch::equal(spikes, std::get<0>(layer(x.unsqueeze(1))).squeeze(1)));
  // T = 0: the given state comes back; B = 0: empty outputs.
  const torch_ext::RecurrentLIFImpl::State given{torch::randn({2, 4}), torch::ones({2, 4})};
  const auto [none, same] = layer(torch::zeros({0, 3}), given);
  EXPECT_EQ(none.sizes(), (std::vector<int64_t>{0, 4}));
  EXPECT_TRUE(std::get<0>(same).is_same(std::get<0>(given)));
  const auto [empty, empty_state] = layer(torch::zeros({5, 0, 3}));
  EXPECT_EQ(empty.sizes(), (std::vector<int64_t>{5, 0, 4}));
  EXPECT_EQ(std::get<1>(empty_state).sizes(), (std::vector<int64_t>{2, 0, 4}));
}

// Meta tensors (shape inference, as torch.compile uses it) through the C++
// API, with one-to-one recurrence and lengths. (LibTorch's Module::to cannot
// move parameters to the meta device, so the module itself is not tried.)
TEST(RecurrentLIFModuleOptions, MetaDeviceGivesShapes) {
  const auto meta = torch::device(torch::kMeta);
  const auto [spikes, membrane] = torch_ext::recurrent_lif(
      torch::empty({6, 2, 3}, meta), torch::empty({4, 3}, meta), torch::empty({4}, meta),
      torch::empty({4}, meta), torch::empty({}, meta), torch::empty({}, meta),
      torch_ext::RecurrentLIFFuncOptions().lengths(torch::empty({2}, meta.dtype(torch::kLong))));
  EXPECT_TRUE(spikes.is_meta());
  EXPECT_EQ(spikes.sizes(), (std::vector<int64_t>{6, 2, 4}));
  EXPECT_EQ(membrane.sizes(), (std::vector<int64_t>{6, 2, 4}));
}

TEST(RecurrentLIFModuleMisuse, BadOptionsNameTheArgument) {
  expect_error_naming<c10::ValueError>([] { torch_ext::RecurrentLIF(Opts(3, 4).num_layers(0)); },
                                       "'num_layers'");
  expect_error_naming<c10::ValueError>([] { torch_ext::RecurrentLIF(Opts(3, 4).dropout(-0.1)); },
                                       "'dropout'");
  expect_error_naming<c10::ValueError>(
      [] { torch_ext::RecurrentLIF(Opts(3, 4).num_layers(2).dropout(1.5)); }, "'dropout'");
  expect_error_naming<c10::ValueError>(
      [] { torch_ext::RecurrentLIF(Opts(3, 4).dropout(std::nan(""))); }, "'dropout'");
  expect_error_naming<c10::ValueError>(
      [] { torch_ext::RecurrentLIF(Opts(3, 4).recurrent("diagonal")); }, "'recurrent'");
  expect_error_naming<c10::ValueError>([] { torch_ext::RecurrentLIF(Opts(0, 4)); },
                                       "'in_features'");
  expect_error_naming<c10::ValueError>([] { torch_ext::RecurrentLIF(Opts(3, -1)); },
                                       "'hidden_size'");
  expect_error_naming<c10::ValueError>([] { torch_ext::RecurrentLIF(Opts(3, 4).alpha(1.5)); },
                                       "'alpha'");
  expect_error_naming<c10::ValueError>(
      [] { torch_ext::RecurrentLIF(Opts(3, 4).theta(INFINITY)); }, "'theta'");
  expect_error_naming<c10::ValueError>([] { torch_ext::RecurrentLIF(Opts(3, 4).slope(0.0)); },
                                       "slope");
}

// A module with recurrent delays: its parameters (DelRec's initialisation),
// the op called with them, the spike history as state continuing a
// sequence, clamp_delays_() and round_delays_(), and bad options and states
// named. (The same outputs and gradients as Python: the delays_* cases of
// MatchesPython and of the adaptive and current-based suites.)
TEST(RecurrentDelaysModule, ParametersHistoryClampAndRound) {
  torch::manual_seed(7);
  const int64_t D = 5, N = 6;
  torch_ext::RecurrentLIF layer(
      Opts(3, N).num_layers(2).recurrent_delays("synaptic").max_delay(D).delay_sigma(0.5)
          .learn_delay_spread(true));
  layer->to(torch::kFloat64);
  const auto params = layer->named_parameters();
  for (const char* name : {"delays_l0", "delays_l1", "delay_spread_l0", "delay_spread_l1"}) {
    ASSERT_TRUE(params.contains(name)) << name;
  }
  const Tensor delays = params["delays_l0"];
  EXPECT_EQ(delays.sizes(), (std::vector<int64_t>{N, N}));
  EXPECT_GE(delays.min().item<double>(), 1.0);
  EXPECT_LE(delays.max().item<double>(), static_cast<double>(D));
  EXPECT_TRUE(torch::equal(params["delay_spread_l1"], torch::zeros({N}, torch::kFloat64)));

  {
    torch::NoGradGuard no_grad;
    for (auto& l : layer->layers) l.w_in.mul_(3.0), l.delay_spread.normal_();
  }
  const Tensor x = torch::rand({11, 2, 3}, torch::kFloat64) * 2;
  const auto [spikes, state] = layer(x);
  ASSERT_GT(spikes.sum().item<double>(), 0);
  // The history [L, D, B, N]: the last D spikes of each layer.
  const Tensor history = std::get<1>(state);
  EXPECT_EQ(history.sizes(), (std::vector<int64_t>{2, D, 2, N}));
  EXPECT_TRUE(torch::equal(history[1], spikes.narrow(0, 11 - D, D)));
  // Layer 0 is the op with its delays and sigma = 2 delay_sigma sigmoid(spread).
  const auto& l0 = layer->layers[0];
  const Tensor below = std::get<0>(torch_ext::recurrent_lif(
      x, l0.w_in, l0.w_rec, l0.bias, l0.alpha.clamp(0, 1), l0.theta,
      torch_ext::RecurrentLIFFuncOptions().delays(l0.delays).max_delay(D).delay_sigma(
          2 * 0.5 * l0.delay_spread.sigmoid())));
  EXPECT_TRUE(torch::equal(history[0], below.narrow(0, 11 - D, D)));
  // Two chunks continued with the state are one run.
  const auto [first, mid] = layer(x.narrow(0, 0, 3));
  const auto [second, last] = layer->forward(x.narrow(0, 3, 8), mid);
  EXPECT_TRUE(torch::equal(torch::cat({first, second}), spikes));
  EXPECT_TRUE(torch::equal(std::get<1>(last), history));
  EXPECT_TRUE(torch::allclose(std::get<0>(last), std::get<0>(state), 1e-12, 1e-12));

  {
    torch::NoGradGuard no_grad;
    delays.uniform_(-3.0, 9.0);
  }
  layer->clamp_delays_();
  EXPECT_EQ(delays.min().item<double>(), 1.0);
  EXPECT_EQ(delays.max().item<double>(), static_cast<double>(D));
  {
    torch::NoGradGuard no_grad;
    delays.uniform_(1.0, 5.0);
  }
  const Tensor before = delays.clone();
  layer->round_delays_();
  EXPECT_TRUE(torch::equal(delays, before.round()));

  std::ostringstream text;
  text << *layer;
  EXPECT_NE(text.str().find("recurrent_delays=synaptic, max_delay=5, delay_sigma=0.5, "
                            "learn_delay_spread=true"),
            std::string::npos)
      << text.str();

  // Without delays: no parameters, and clamp/round say why they cannot run.
  torch_ext::RecurrentAdLIF plain(torch_ext::RecurrentAdLIFOptions(3, N));
  EXPECT_FALSE(plain->named_parameters().contains("delays"));
  expect_error_naming<c10::ValueError>([&] { plain->clamp_delays_(); },
                                       "RecurrentAdLIF.clamp_delays_: the module has no "
                                       "recurrent delays");
  torch_ext::RecurrentCubaLIF cuba(torch_ext::RecurrentCubaLIFOptions(3, N)
                                       .recurrent("one_to_one")
                                       .recurrent_delays("axonal")
                                       .max_delay(2)
                                       .delay_init_std(0.0));
  EXPECT_TRUE(torch::equal(cuba->layers[0].delays, torch::ones({N})));
  // The state's spikes must be the history.
  expect_error_naming<c10::ValueError>(
      [&] {
        cuba->forward(torch::rand({4, 2, 3}),
                      torch_ext::RecurrentCubaLIFImpl::State{Tensor(), Tensor(),
                                                             torch::zeros({2, N})});
      },
      "s must have shape [2, 2, 6] (one layer, batched input, the spike history of "
      "max_delay=2 steps, oldest first), got [2, 6]");
}

TEST(RecurrentDelaysModule, BadOptionsNameTheArgument) {
  using Adaptive = torch_ext::RecurrentAdLIFOptions;
  const std::vector<std::pair<std::function<void()>, std::string>> cases{
      {[] { torch_ext::RecurrentLIF(Opts(3, 4).recurrent_delays("dendritic").max_delay(2)); },
       "argument 'recurrent_delays' must be none, \"axonal\" or \"synaptic\", got "
       "\"dendritic\""},
      {[] { torch_ext::RecurrentLIF(Opts(3, 4).recurrent_delays("axonal")); },
       "argument 'max_delay' must be an int >= 1 (the longest delay, in steps) with "
       "recurrent_delays, got none"},
      {[] { torch_ext::RecurrentLIF(Opts(3, 4).recurrent_delays("axonal").max_delay(0)); },
       "argument 'max_delay' must be an int >= 1"},
      {[] {
         torch_ext::RecurrentLIF(
             Opts(3, 4).recurrent_delays("axonal").max_delay(2).delay_sigma(-1.0));
       },
       "argument 'delay_sigma' must be a finite number >= 0, got -1"},
      {[] {
         torch_ext::RecurrentLIF(
             Opts(3, 4).recurrent_delays("axonal").max_delay(2).delay_init_std(NAN));
       },
       "argument 'delay_init_std' must be a finite number >= 0"},
      {[] { torch_ext::RecurrentLIF(Opts(3, 4).max_delay(3)); },
       "RecurrentLIF: argument 'max_delay' is given without 'recurrent_delays'"},
      {[] { torch_ext::RecurrentAdLIF(Adaptive(3, 4).learn_delay_spread(true)); },
       "RecurrentAdLIF: argument 'learn_delay_spread' is given without 'recurrent_delays'"},
      {[] {
         torch_ext::RecurrentAdLIF(
             Adaptive(3, 4).recurrent("none").recurrent_delays("axonal").max_delay(2));
       },
       "RecurrentAdLIF: argument 'recurrent_delays' delays the recurrent connections, which "
       "recurrent='none' does not have"},
      {[] {
         torch_ext::RecurrentCubaLIF(torch_ext::RecurrentCubaLIFOptions(3, 4)
                                         .recurrent("one_to_one")
                                         .recurrent_delays("synaptic")
                                         .max_delay(2));
       },
       "use \"axonal\""},
  };
  for (const auto& [call, message] : cases) expect_error_naming<c10::ValueError>(call, message);
}

TEST(RecurrentLIFModuleMisuse, BadStateAndLengthsNameTheArgument) {
  torch_ext::RecurrentLIF stack(Opts(3, 4).num_layers(2));
  const Tensor x = torch::randn({5, 2, 3});
  using State = torch_ext::RecurrentLIFImpl::State;
  // A one-layer-shaped state for a stack, and a state with the wrong batch size.
  expect_error_naming<c10::ValueError>(
      [&] { stack(x, State{torch::zeros({2, 4}), Tensor()}); },
      "'state': u must have shape [2, 2, 4] (num_layers=2, batched input), got [2, 4]");
  expect_error_naming<c10::ValueError>(
      [&] { stack(x, State{Tensor(), torch::zeros({2, 3, 4})}); }, "'state': s must have shape");
  expect_error_naming<c10::ValueError>([&] { stack(torch::randn({5, 2, 3, 1})); }, "'x'");
  expect_error_naming<c10::ValueError>([&] { stack(Tensor()); }, "'x'");
  expect_error_naming<c10::ValueError>([&] { stack(torch::randn({5, 2, 7})); },
                                       "F = x.shape[2] = 7");
  expect_error_naming<c10::ValueError>([&] { stack(x, std::nullopt, torch::tensor({6, 1})); },
                                       "'lengths'");
  expect_error_naming<c10::ValueError>([&] { stack(x, std::nullopt, torch::tensor({-1, 1})); },
                                       "'lengths'");
  expect_error_naming<c10::TypeError>([&] { stack(x, std::nullopt, torch::tensor({2.5, 1.0})); },
                                       "'lengths'");
  expect_error_naming<c10::ValueError>([&] { stack(x, std::nullopt, torch::tensor({5, 5, 5})); },
                                       "'lengths'");
  expect_error_naming<c10::ValueError>([&] { stack(x, std::nullopt, torch::full({2, 1}, 2)); },
                                       "'lengths'");
}

// Non-finite values in the input, the state and the weights: no error (they
// are values, not misuse), and what the LibTorch autograd loop of the same
// math computes: a NaN membrane never spikes (NaN > theta is false), inf
// spreads through the weights it meets.
TEST(RecurrentLIFModuleMisuse, NonFiniteValuesComputeWhatAutogradComputes) {
  for (const double bad : {NAN, INFINITY, -INFINITY}) {
    torch::manual_seed(7);
    torch_ext::RecurrentLIF layer(Opts(3, 4));
    layer->to(torch::kFloat64);
    Tensor x = torch::randn({6, 2, 3}, torch::kFloat64) * 2;
    x[2][0][1] = bad;
    Tensor u0 = torch::zeros({2, 4}, torch::kFloat64);
    u0[1][3] = bad;
    {
      torch::NoGradGuard no_grad;
      layer->w_rec[0][2] = bad;
    }
    const auto [spikes, state] = layer(x, torch_ext::RecurrentLIFImpl::State{u0, Tensor()});
    const auto [spikes_ref, membrane_ref] = lif_reference::recurrent_lif(
        x, layer->w_in, layer->w_rec, layer->bias, layer->alpha, layer->theta, u0, Tensor(),
        "subtract", false, "sigmoid", 25.0);
    EXPECT_TRUE(torch::equal(spikes, spikes_ref)) << bad;
    EXPECT_TRUE(torch::allclose(std::get<0>(state), membrane_ref[-1], 1e-12, 1e-12,
                                /*equal_nan=*/true))
        << bad;
  }
}

// An undefined x, alpha or theta in the tensor overload: an error naming it
// (autograd reads the inputs' devices before the op's checks run).
TEST(RecurrentLIFFunctionalMisuse, UndefinedRequiredTensorsNameTheArgument) {
  const Tensor x = torch::randn({4, 2, 3}), w_in = torch::randn({5, 3});
  const Tensor alpha = torch::full({}, 0.9), theta = torch::ones({});
  expect_error_naming<c10::ValueError>(
      [&] { torch_ext::recurrent_lif(x, w_in, std::nullopt, std::nullopt, Tensor(), theta); },
      "argument 'alpha' is required");
  expect_error_naming<c10::ValueError>(
      [&] { torch_ext::recurrent_lif(x, w_in, std::nullopt, std::nullopt, alpha, Tensor()); },
      "argument 'theta' is required");
  expect_error_naming<c10::ValueError>(
      [&] { torch_ext::recurrent_lif(Tensor(), w_in, std::nullopt, std::nullopt, alpha, theta); },
      "argument 'x' is required");
  // All of them undefined: no tensor to dispatch on, still the named error.
  expect_error_naming<c10::ValueError>(
      [&] { torch_ext::recurrent_lif(Tensor(), std::nullopt, std::nullopt, std::nullopt,
                                     Tensor(), Tensor()); },
      "argument 'x' is required");
  // The same through the dispatcher directly (what other C++ code calling the op reaches).
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("torch_ext::recurrent_lif", "")
                             .typed<std::tuple<Tensor, Tensor>(
                                 const Tensor&, const std::optional<Tensor>&,
                                 const std::optional<Tensor>&, const std::optional<Tensor>&,
                                 const Tensor&, const Tensor&, const std::optional<Tensor>&,
                                 const std::optional<Tensor>&, c10::string_view, bool,
                                 c10::string_view, std::optional<double>, bool,
                                 const std::optional<Tensor>&, const std::optional<Tensor>&,
                                 std::optional<int64_t>, const std::optional<Tensor>&,
                                 const std::optional<Tensor>&)>();
  expect_error_naming<c10::ValueError>(
      [&] {
        op.call(x.requires_grad_(), w_in, std::nullopt, std::nullopt, Tensor(), theta,
                std::nullopt, std::nullopt, "subtract", false, "sigmoid", std::nullopt, true,
                std::nullopt, std::nullopt, std::nullopt, std::nullopt, std::nullopt);
      },
      "argument 'alpha' is required");
}

}  // namespace

namespace {

// Recurrent delays through the C++ API: integer delays with sigma 0 are a
// pure shift, rec[t] = S[t - delays[j]]_j @ w_rec.T, checked against that
// loop written with LibTorch autograd (values, and the gradients of x and
// w_rec); bad delay arguments raise errors naming them.
TEST(RecurrentDelays, IntegerDelaysAreAShiftAgainstALibTorchLoop) {
  torch::manual_seed(3);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const int64_t T = 12, B = 3, F = 5, N = 4, D = 3;
  const Tensor x = (torch::randn({T, B, F}, f64) * 1.2 + 0.3).requires_grad_();
  const Tensor w_in = (torch::randn({N, F}, f64) * 0.6).requires_grad_();
  const Tensor w_rec = (torch::randn({N, N}, f64) * 0.4).requires_grad_();
  const std::vector<int64_t> shift{1, 3, 2, 1};
  const Tensor delays = torch::tensor({1.0, 3.0, 2.0, 1.0}, f64).requires_grad_();
  const double alpha = 0.8, theta = 1.0;
  auto [spikes, membrane] = torch_ext::recurrent_lif(
      x, w_in, w_rec, std::nullopt, alpha, theta,
      torch_ext::RecurrentLIFFuncOptions().delays(delays).max_delay(D));
  // The same layer (reset subtract) as a loop: S[t-k] from the past outputs.
  std::vector<Tensor> S, U;
  Tensor u = torch::zeros({B, N}, f64);
  const Tensor zero = torch::zeros({B, N}, f64);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<Tensor> columns;
    for (int64_t j = 0; j < N; ++j) {
      const int64_t step = t - shift[j];
      columns.push_back((step >= 0 ? S[step] : zero).select(1, j));
    }
    const Tensor delayed = torch::stack(columns, 1);
    const Tensor r = t > 0 ? S[t - 1] : zero;
    u = alpha * u + torch::matmul(x[t], w_in.t()) + torch::matmul(delayed, w_rec.t()) - theta * r;
    U.push_back(u);
    S.push_back((u > theta).to(torch::kFloat64).detach() + 0 * u);  // values only past here
  }
  const Tensor want_u = torch::stack(U);
  ASSERT_TRUE(torch::equal(spikes, torch::stack(S).detach()));
  ASSERT_TRUE(torch::allclose(membrane, want_u, 1e-12, 1e-12));
  const Tensor g = torch::randn({T, B, N}, f64);
  // Gradients through the C++ autograd: with a threshold never reached (no
  // spike, none before), the membrane is the leaky sum of the input, whose
  // gradients the LibTorch loop gives, and nothing reaches the delays.
  // (Every gradient with spikes: tests/test_delays.py against the reference.)
  auto [spikes2, membrane2] = torch_ext::recurrent_lif(
      x, w_in, w_rec, std::nullopt, alpha, 1e4,
      torch_ext::RecurrentLIFFuncOptions().delays(delays).max_delay(D));
  std::vector<Tensor> U2;
  u = torch::zeros({B, N}, f64);
  for (int64_t t = 0; t < T; ++t) {
    u = alpha * u + torch::matmul(x[t], w_in.t());
    U2.push_back(u);
  }
  ASSERT_TRUE(torch::allclose(membrane2, torch::stack(U2), 1e-12, 1e-12));
  const auto got = torch::autograd::grad({(membrane2 * g).sum()}, {x, w_in, delays},
                                         /*grad_outputs=*/{}, /*retain_graph=*/false,
                                         /*create_graph=*/false, /*allow_unused=*/true);
  const auto want = torch::autograd::grad({(torch::stack(U2) * g).sum()}, {x, w_in});
  EXPECT_TRUE(torch::allclose(got[0], want[0], 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(got[1], want[1], 1e-12, 1e-12));
  // No spike in the run and none before: nothing reaches the delays.
  EXPECT_TRUE(torch::equal(got[2], torch::zeros_like(delays)));

  expect_error_naming<c10::ValueError>(
      [&] {
        torch_ext::recurrent_lif(x, w_in, w_rec, std::nullopt, alpha, theta,
                                 torch_ext::RecurrentLIFFuncOptions().delays(delays));
      },
      "'max_delay'");
  expect_error_naming<c10::ValueError>(
      [&] {
        torch_ext::recurrent_lif(x, w_in, w_rec.diagonal(), std::nullopt, alpha, theta,
                                 torch_ext::RecurrentLIFFuncOptions()
                                     .delays(torch::ones({N, N}, f64))
                                     .max_delay(D));
      },
      "'delays'");
  expect_error_naming<c10::ValueError>(
      [&] {
        torch_ext::recurrent_lif(x, w_in, w_rec, std::nullopt, alpha, theta,
                                 torch_ext::RecurrentLIFFuncOptions()
                                     .delays(delays)
                                     .max_delay(D)
                                     .s0(torch::zeros({D + 1, B, N}, f64)));
      },
      "'s0'");
}

}  // namespace
