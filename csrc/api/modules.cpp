// The public C++ API (include/torch_ext/torch_ext.h): the functional forms
// and the modules (RecurrentLIF, RecurrentAdLIF, RecurrentCubaLIF) over one
// layer-stack helper, all on top of the ops and their C++ autograd.
#include <torch/nn/init.h>
#include <torch/serialize.h>
#include <torch/utils.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
#include <functional>
#include <iterator>

#include "../core/op.h"
#include "../neurons/registry.h"
#include "torch_ext/torch_ext.h"

namespace torch_ext {
namespace {

// An optional holding an undefined tensor (torch::Tensor()) means "absent",
// as it does for LibTorch's own functions.
OptionalTensor given(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t : std::nullopt;
}

// The model's op through the dispatcher (autocast, autograd, the device's
// kernel): (spikes, states...). x and the parameters are checked for being
// given first: the dispatcher needs one defined tensor to pick a kernel.
template <typename M>
std::vector<at::Tensor> call_op(const at::Tensor& x, const std::optional<at::Tensor>& w_in,
                                const std::optional<at::Tensor>& w_rec,
                                const std::optional<at::Tensor>& bias,
                                std::vector<at::Tensor> params,
                                const std::vector<std::optional<at::Tensor>>& initial,
                                const std::optional<at::Tensor>& s0, OpSettings settings,
                                const std::optional<at::Tensor>& lengths,
                                const std::optional<at::Tensor>& delays = std::nullopt,
                                const std::optional<at::Tensor>& delay_sigma = std::nullopt,
                                const std::optional<at::Tensor>& rec_mask = std::nullopt) {
  check_required(neuron_info<M>(), x, params);
  OpTensors t{x,          given(w_in),    given(w_rec),        given(bias),
              std::move(params), {},      given(s0),           given(lengths),
              given(delays), given(delay_sigma), given(rec_mask)};
  for (const auto& state : initial) t.initial.push_back(given(state));
  return NeuronOp<M>::call_forward(t, settings);
}

// The model's parameters given as numbers: each checked as the Python API
// checks a float (a decay in [0, 1], anything else finite), then a 0-dim
// tensor in the compute dtype on x's device.
template <typename M>
std::vector<at::Tensor> number_params(const at::Tensor& x, const std::vector<double>& values) {
  const char* op = M::kTraits.op;
  TORCH_CHECK_VALUE(x.defined(), op, ": argument 'x' is required, got an undefined tensor");
  std::vector<at::Tensor> params;
  for (size_t k = 0; k < values.size(); ++k) {
    const ParamSpec& spec = M::kParams[k];
    const double value = values[k];
    TORCH_CHECK_VALUE(spec.decay ? value >= 0.0 && value <= 1.0 : std::isfinite(value), op,
                      ": argument '", spec.name, "' must ",
                      spec.decay ? "lie in [0, 1]" : "be finite", ", got ", value);
    params.push_back(at::full({}, value, x.options().dtype(compute_dtype(x.scalar_type()))));
  }
  return params;
}

template <size_t... I>
auto as_tuple(const std::vector<at::Tensor>& v, std::index_sequence<I...>) {
  return std::make_tuple(v[I]...);
}

// A functional form: model M's op with the options of its FuncOptions
// (initial: its initial states besides s0, save_state: its low-memory flag),
// as a tuple (spikes, states...).
template <typename M, typename FuncOptions>
auto call_functional(const at::Tensor& x, const std::optional<at::Tensor>& w_in,
                     const std::optional<at::Tensor>& w_rec,
                     const std::optional<at::Tensor>& bias, std::vector<at::Tensor> params,
                     const std::vector<std::optional<at::Tensor>>& initial, const FuncOptions& o,
                     bool save_state) {
  return as_tuple(call_op<M>(x, w_in, w_rec, bias, std::move(params), initial, o.s0(),
                             {o.reset(), o.detach_reset(), o.surrogate(), o.slope(), save_state,
                              o.max_delay()},
                             o.lengths(), o.delays(), o.delay_sigma(), o.rec_mask()),
                  std::make_index_sequence<1 + num_states_of<M>>{});
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> recurrent_lif(const at::Tensor& x,
                                                 const std::optional<at::Tensor>& w_in,
                                                 const std::optional<at::Tensor>& w_rec,
                                                 const std::optional<at::Tensor>& bias,
                                                 const at::Tensor& alpha, const at::Tensor& theta,
                                                 const RecurrentLIFFuncOptions& o) {
  return call_functional<LIF>(x, w_in, w_rec, bias, {alpha, theta}, {o.u0()}, o,
                              o.save_membrane());
}

std::tuple<at::Tensor, at::Tensor> recurrent_lif(const at::Tensor& x,
                                                 const std::optional<at::Tensor>& w_in,
                                                 const std::optional<at::Tensor>& w_rec,
                                                 const std::optional<at::Tensor>& bias,
                                                 double alpha, double theta,
                                                 const RecurrentLIFFuncOptions& options) {
  const auto p = number_params<LIF>(x, {alpha, theta});
  return recurrent_lif(x, w_in, w_rec, bias, p[0], p[1], options);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> recurrent_adlif(
    const at::Tensor& x, const std::optional<at::Tensor>& w_in,
    const std::optional<at::Tensor>& w_rec, const std::optional<at::Tensor>& bias,
    const at::Tensor& alpha, const at::Tensor& beta, const at::Tensor& a, const at::Tensor& b,
    const at::Tensor& theta, const RecurrentAdLIFFuncOptions& o) {
  return call_functional<AdLIF>(x, w_in, w_rec, bias, {alpha, beta, a, b, theta},
                                {o.v0(), o.a0()}, o, o.save_state());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> recurrent_adlif(
    const at::Tensor& x, const std::optional<at::Tensor>& w_in,
    const std::optional<at::Tensor>& w_rec, const std::optional<at::Tensor>& bias, double alpha,
    double beta, double a, double b, double theta, const RecurrentAdLIFFuncOptions& options) {
  const auto p = number_params<AdLIF>(x, {alpha, beta, a, b, theta});
  return recurrent_adlif(x, w_in, w_rec, bias, p[0], p[1], p[2], p[3], p[4], options);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> recurrent_cubalif(
    const at::Tensor& x, const std::optional<at::Tensor>& w_in,
    const std::optional<at::Tensor>& w_rec, const std::optional<at::Tensor>& bias,
    const at::Tensor& alpha, const at::Tensor& alpha_syn, const at::Tensor& theta,
    const RecurrentCubaLIFFuncOptions& o) {
  return call_functional<CubaLIF>(x, w_in, w_rec, bias, {alpha, alpha_syn, theta},
                                  {o.u0(), o.j0()}, o, o.save_state());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> recurrent_cubalif(
    const at::Tensor& x, const std::optional<at::Tensor>& w_in,
    const std::optional<at::Tensor>& w_rec, const std::optional<at::Tensor>& bias, double alpha,
    double alpha_syn, double theta, const RecurrentCubaLIFFuncOptions& options) {
  const auto p = number_params<CubaLIF>(x, {alpha, alpha_syn, theta});
  return recurrent_cubalif(x, w_in, w_rec, bias, p[0], p[1], p[2], options);
}

RecurrentLIFOptions::RecurrentLIFOptions(int64_t in_features, int64_t hidden_size)
    : in_features_(in_features), hidden_size_(hidden_size) {}

namespace {

constexpr std::array<const char*, 3> kRecurrent{"all_to_all", "one_to_one", "none"};

// The value of a [T, B, N] sequence after each batch row's own last step:
// at t = lengths[b] - 1, or `first` (the initial value) where lengths[b] = 0.
at::Tensor value_after_last_step(const at::Tensor& lengths, const at::Tensor& sequence,
                                 const at::Tensor& first) {
  // Clamped as the kernels do (on CUDA the op does not check the values).
  const at::Tensor steps = lengths.to(sequence.device(), at::kLong).clamp(0, sequence.size(0));
  const at::Tensor last = (steps - 1).clamp_min(0).view({1, -1, 1}).expand(
      {1, sequence.size(1), sequence.size(2)});
  const at::Tensor took_steps = (steps > 0).unsqueeze(1);
  return at::where(took_steps, sequence.gather(0, last)[0], first.to(sequence.scalar_type()));
}

// One layer's run: its spikes and the sequences of its state's parts, in the
// state's order (spikes last), each [T, B, N].
using LayerRun = std::function<std::vector<at::Tensor>(
    int64_t layer, const at::Tensor& input, const std::vector<OptionalTensor>& initial)>;

// The spike history [D, B, N] after each batch row's own last step: the
// last D of the given history (`first`) followed by the spikes [T, B, N] up
// to t = lengths[b] - 1 (all T steps without lengths), oldest first. Slot k
// of row b holds step ends[b] - D + k: from the spikes where >= 0, else from
// the history's slot D + that (no copy of the whole sequence).
at::Tensor history_after_last_step(const OptionalTensor& lengths, const at::Tensor& spikes,
                                   const at::Tensor& first) {
  const int64_t T = spikes.size(0), B = spikes.size(1), N = spikes.size(2), D = first.size(0);
  const at::Tensor history = first.to(spikes.scalar_type());
  if (T == 0) return history;
  // Clamped as the kernels do (on CUDA the op does not check the values).
  const auto long_options = spikes.options().dtype(at::kLong);
  const at::Tensor ends = lengths ? lengths->to(spikes.device(), at::kLong).clamp(0, T)
                                  : at::full({B}, T, long_options);
  const at::Tensor step =
      (ends.view({1, B, 1}) - D + at::arange(D, long_options).view({D, 1, 1})).expand({D, B, N});
  return at::where(step >= 0, spikes.gather(0, step.clamp_min(0)),
                   history.gather(0, (step + D).clamp_max(D - 1)));
}

// The layer stack of every module, with the Python modules' conventions:
// batch_first and unbatched input, a state of `parts` (named for the
// messages; the spikes last), each [L, B, N] for L > 1, split per layer
// (with history = D > 0, recurrent delays: the spikes are the spike history,
// [L, D, B, N]); dropout between layers in training; each part's final
// value after each row's own last step. Returns the top layer's sequences
// (its states', the spikes last), laid out like the input, and the final
// state.
std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>> run_stack(
    const char* module, const at::Tensor& input, const std::vector<at::Tensor>& state,
    const std::vector<const char*>& parts, int64_t L, int64_t N, bool batch_first, double dropout,
    bool training, const OptionalTensor& lengths, int64_t history, const LayerRun& run_layer) {
  TORCH_CHECK_VALUE(input.defined() && (input.dim() == 2 || input.dim() == 3), module,
                    ": argument 'x' must have shape ", batch_first ? "[B, T, F]" : "[T, B, F]",
                    " (batched) or [T, F] (unbatched), got ",
                    input.defined() ? c10::str(input.sizes()) : std::string("an undefined tensor"));
  const bool batched = input.dim() == 3;
  const at::Tensor x =
      !batched ? input.unsqueeze(1) : (batch_first ? input.transpose(0, 1) : input);
  const int64_t T = x.size(0), B = x.size(1);
  const size_t P = parts.size();

  // Part p's expected shape, as the Python module checks it.
  auto is_history = [&](size_t p) { return history > 0 && p == P - 1; };
  auto expected_shape = [&](size_t p) {
    std::vector<int64_t> shape;
    if (L > 1) shape.push_back(L);
    if (is_history(p)) shape.push_back(history);
    if (batched) shape.push_back(B);
    shape.push_back(N);
    return shape;
  };
  // initial[l][p]: part p of layer l, [B, N] or the history [D, B, N]
  // (absent where not given).
  std::vector<std::vector<OptionalTensor>> initial(L, std::vector<OptionalTensor>(P));
  for (size_t p = 0; p < P && p < state.size(); ++p) {
    const at::Tensor& value = state[p];
    if (!value.defined()) continue;
    const std::vector<int64_t> shape = expected_shape(p);
    TORCH_CHECK_VALUE(value.sizes() == at::IntArrayRef(shape), module, ": argument 'state': ",
                      parts[p], " must have shape ", at::IntArrayRef(shape), " (",
                      L == 1 ? std::string("one layer") : c10::str("num_layers=", L), ", ",
                      batched ? "batched" : "unbatched", " input",
                      is_history(p) ? c10::str(", the spike history of max_delay=", history,
                                               " steps, oldest first")
                                    : std::string(),
                      "), got ", value.sizes());
    for (int64_t l = 0; l < L; ++l) {
      const at::Tensor layer = L > 1 ? value.select(0, l) : value;
      // [N] -> [1, N], [D, N] -> [D, 1, N]
      initial[l][p] = batched ? layer : layer.unsqueeze(-2);
    }
  }

  at::Tensor layer_input = x;
  std::vector<at::Tensor> sequences;
  std::vector<std::vector<at::Tensor>> finals(P);  // finals[p][l]
  for (int64_t l = 0; l < L; ++l) {
    if (l > 0 && dropout > 0 && training) {
      layer_input = at::dropout(layer_input, dropout, /*train=*/true);
    }
    sequences = run_layer(l, layer_input, initial[l]);
    for (size_t p = 0; p < P; ++p) {
      if (is_history(p)) {
        const at::Tensor first =
            initial[l][p] ? *initial[l][p] : sequences[p].new_zeros({history, B, N});
        finals[p].push_back(history_after_last_step(lengths, sequences[p], first));
        continue;
      }
      const at::Tensor first =
          initial[l][p] ? *initial[l][p] : sequences[p].new_zeros({B, N});
      if (T == 0) {  // no step taken: the state is what was given, or zeros
        finals[p].push_back(first);
      } else if (!lengths) {
        finals[p].push_back(sequences[p][-1]);
      } else {  // each row's state after its own last step
        finals[p].push_back(value_after_last_step(*lengths, sequences[p], first));
      }
    }
    layer_input = sequences[P - 1];
  }

  std::vector<at::Tensor> last;
  const bool all_given = state.size() == P && std::all_of(state.begin(), state.end(),
                                                           [](const at::Tensor& t) { return t.defined(); });
  if (T == 0 && all_given) {
    last = state;  // given tensors come back as they are
  } else {
    for (size_t p = 0; p < P; ++p) {
      at::Tensor value = L > 1 ? at::stack(finals[p]) : finals[p][0];
      last.push_back(batched ? value : value.squeeze(-2));  // the batch dimension
    }
  }
  for (at::Tensor& sequence : sequences) {
    if (!batched) {
      sequence = sequence.squeeze(1);
    } else if (batch_first) {
      sequence = sequence.transpose(0, 1);
    }
  }
  return {sequences, last};
}

// The module options all modules share, checked with the same messages.
void check_stack_options(const char* module, int64_t in_features, int64_t hidden_size,
                         int64_t num_layers, double dropout, const std::string& recurrent) {
  for (const auto& [value, name] : {std::make_pair(in_features, "in_features"),
                                    std::make_pair(hidden_size, "hidden_size"),
                                    std::make_pair(num_layers, "num_layers")}) {
    TORCH_CHECK_VALUE(value > 0, module, ": argument '", name, "' must be a positive int, got ",
                      value);
  }
  TORCH_CHECK_VALUE(dropout >= 0.0 && dropout <= 1.0, module,
                    ": argument 'dropout' must be a number in [0, 1] (the probability "
                    "of dropping a spike between layers), got ", dropout);
  TORCH_CHECK_VALUE(std::find(kRecurrent.begin(), kRecurrent.end(), recurrent) != kRecurrent.end(),
                    module, ": argument 'recurrent' must be one of \"all_to_all\", "
                    "\"one_to_one\", \"none\", got \"", recurrent, "\"");
  if (dropout > 0 && num_layers == 1) {
    TORCH_WARN(module, ": dropout applies between stacked layers, so a non-zero dropout "
               "expects num_layers > 1, got dropout=", dropout, " and num_layers=1");
  }
}

// A parameter's name in the Python modules: base for one layer, base_l{l} in a stack.
std::string layer_name(const char* base, int64_t layer, int64_t num_layers) {
  return num_layers == 1 ? std::string(base) : c10::str(base, "_l", layer);
}

// The recurrent delays' options, checked with the Python module's messages.
template <typename Options>
void check_delay_options(const char* module, const Options& o) {
  if (!o.recurrent_delays()) {
    const char* given = o.max_delay()           ? "max_delay"
                        : o.delay_sigma() != 0  ? "delay_sigma"
                        : o.learn_delay_spread() ? "learn_delay_spread"
                        : o.delay_init_std()    ? "delay_init_std"
                                                : nullptr;
    TORCH_CHECK_VALUE(given == nullptr, module, ": argument '", given, "' is given without "
                      "'recurrent_delays' (\"axonal\" or \"synaptic\")");
    return;
  }
  const std::string& kind = *o.recurrent_delays();
  TORCH_CHECK_VALUE(kind == "axonal" || kind == "synaptic", module,
                    ": argument 'recurrent_delays' must be none, \"axonal\" or \"synaptic\", "
                    "got \"", kind, "\"");
  TORCH_CHECK_VALUE(o.recurrent() != "none", module, ": argument 'recurrent_delays' delays the "
                    "recurrent connections, which recurrent='none' does not have");
  TORCH_CHECK_VALUE(!(kind == "synaptic" && o.recurrent() == "one_to_one"), module,
                    ": argument 'recurrent_delays' is \"synaptic\" (one delay per [N, N] "
                    "connection) but recurrent='one_to_one' has one connection per neuron: use "
                    "\"axonal\"");
  TORCH_CHECK_VALUE(o.max_delay() && *o.max_delay() >= 1 && *o.max_delay() < (int64_t{1} << 31),
                    module, ": argument 'max_delay' must be an int >= 1 (the longest delay, in "
                    "steps) with recurrent_delays, got ",
                    o.max_delay() ? std::to_string(*o.max_delay()) : std::string("none"));
  TORCH_CHECK_VALUE(std::isfinite(o.delay_sigma()) && o.delay_sigma() >= 0, module,
                    ": argument 'delay_sigma' must be a finite number >= 0, got ",
                    o.delay_sigma());
  TORCH_CHECK_VALUE(!o.delay_init_std() ||
                        (std::isfinite(*o.delay_init_std()) && *o.delay_init_std() >= 0),
                    module, ": argument 'delay_init_std' must be a finite number >= 0, got ",
                    o.delay_init_std() ? *o.delay_init_std() : 0.0);
}

// Registers layer l's delays (and spread) after its other tensors, under the
// Python module's names; leaves them undefined without delays.
template <typename Options, typename Layer>
void register_delays(torch::nn::Module& m, int64_t l, const Options& o, Layer& layer) {
  if (!o.recurrent_delays()) return;
  const int64_t N = o.hidden_size(), L = o.num_layers();
  layer.delays = m.register_parameter(
      layer_name("delays", l, L),
      *o.recurrent_delays() == "axonal" ? torch::empty({N}) : torch::empty({N, N}));
  if (o.learn_delay_spread()) {
    layer.delay_spread = m.register_parameter(layer_name("delay_spread", l, L), torch::empty({N}));
  }
}

// DelRec's initialisation: delays 1 + |N(0, std^2)| clamped into [1, D]
// (std = D / 4 unless given), the spreads 0.
template <typename Options, typename Layer>
void init_delays(const Options& o, const Layer& layer) {
  if (!layer.delays.defined()) return;
  torch::NoGradGuard no_grad;
  const double D = static_cast<double>(*o.max_delay());
  const double std = o.delay_init_std() ? *o.delay_init_std() : D / 4;
  at::Tensor delays = layer.delays;
  delays.copy_(at::randn(delays.sizes(), delays.options()).abs_().mul_(std).add_(1).clamp_(1, D));
  if (layer.delay_spread.defined()) {
    at::Tensor spread = layer.delay_spread;
    spread.zero_();
  }
}

// clamp_delays_() / round_delays_(): `change` applied to every layer's delays.
template <typename Impl>
void change_delays(Impl& m, const char* module, const char* method,
                   const std::function<void(at::Tensor&)>& change) {
  TORCH_CHECK_VALUE(m.options.recurrent_delays().has_value(), module, ".", method,
                    ": the module has no recurrent delays (recurrent_delays is none)");
  torch::NoGradGuard no_grad;
  for (auto& layer : m.layers) change(layer.delays);
}

// One layer's tensors as model M's op takes them.
struct LayerTensors {
  at::Tensor w_in;
  OptionalTensor w_rec, bias;
  std::vector<at::Tensor> params;  // the model's parameters, in the op's order
  at::Tensor delays, delay_spread;  // undefined without recurrent delays
};

// The op's delay_sigma for a layer's delays: sigma, or 2 sigma
// sigmoid(delay_spread) per neuron with a learnt spread.
template <typename Options>
at::Tensor delay_sigma_for_op(const Options& o, const at::Tensor& x, const at::Tensor& spread) {
  if (spread.defined()) return 2 * o.delay_sigma() * spread.sigmoid();
  return at::full({}, o.delay_sigma(), x.options().dtype(compute_dtype(x.scalar_type())));
}

// Every module's forward: the layer stack (run_stack) over model M's op, each
// layer's tensors from `layer` and the state's parts named `parts` (the
// spikes last). Returns the top layer's sequences (its states', the spikes
// last) and the final state.
template <typename M, typename Options>
std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>> run_model(
    const char* module, const std::vector<const char*>& parts, const Options& o, bool save_state,
    bool training, const at::Tensor& input, const std::vector<at::Tensor>& state,
    const std::optional<at::Tensor>& lengths, const std::function<LayerTensors(int64_t)>& layer) {
  const OptionalTensor given_lengths = given(lengths);
  auto run_layer = [&](int64_t l, const at::Tensor& x, const std::vector<OptionalTensor>& initial) {
    const LayerTensors t = layer(l);
    const std::vector<std::optional<at::Tensor>> states(initial.begin(), initial.end() - 1);
    const bool delayed = t.delays.defined();
    std::vector<at::Tensor> out = call_op<M>(
        x, t.w_in, t.w_rec, t.bias, t.params, states, initial.back(),
        {o.reset(), o.detach_reset(), o.surrogate(), o.slope(), save_state,
         delayed ? o.max_delay() : std::nullopt},
        given_lengths, delayed ? OptionalTensor(t.delays) : std::nullopt,
        delayed ? OptionalTensor(delay_sigma_for_op(o, x, t.delay_spread)) : std::nullopt);
    std::rotate(out.begin(), out.begin() + 1, out.end());  // the spikes last
    return out;
  };
  return run_stack(module, input, state, parts, o.num_layers(), o.hidden_size(), o.batch_first(),
                   o.dropout(), training, given_lengths,
                   o.recurrent_delays() ? *o.max_delay() : 0, run_layer);
}

}  // namespace

// ---------------------------------------------------------------- RecurrentLIF, RecurrentCubaLIF

namespace {

// What the LIF and CUBA modules share: per layer w_in, w_rec and bias, then
// the neuron's parameters (their initial values and learn flags from the
// options, shape [] or [N] with per_neuron), registered under the Python
// module's names in its order; nn.Linear-style initialisation.
struct NeuronValue {
  const char* name;
  double initial;
  bool learn;
};

// Checks the module options and the initial values as the op checks them.
template <typename M>
void check_neuron_module(const char* module, int64_t in_features, int64_t hidden_size,
                         int64_t num_layers, double dropout, const std::string& recurrent,
                         const std::vector<NeuronValue>& values, const std::string& reset,
                         bool detach_reset, const std::string& surrogate,
                         std::optional<double> slope) {
  check_stack_options(module, in_features, hidden_size, num_layers, dropout, recurrent);
  std::vector<double> numbers;
  for (const NeuronValue& v : values) numbers.push_back(v.initial);
  number_params<M>(at::empty({0}), numbers);
  check_options(M::kTraits.op, reset, detach_reset, surrogate, slope, at::kFloat);
}

// Registers layer l's tensors (every module's); returns them: w_in, w_rec,
// bias (undefined when absent), then one per neuron value.
std::vector<at::Tensor> register_layer(torch::nn::Module& m, int64_t l, int64_t L, int64_t F,
                                       int64_t N, bool bias, const std::string& recurrent,
                                       bool per_neuron, const std::vector<NeuronValue>& values) {
  auto name = [&](const char* base) { return layer_name(base, l, L); };
  std::vector<at::Tensor> t(3);
  t[0] = m.register_parameter(name("w_in"), torch::empty({N, l == 0 ? F : N}));
  if (recurrent != "none") {
    t[1] = m.register_parameter(name("w_rec"), recurrent == "one_to_one" ? torch::empty({N})
                                                                          : torch::empty({N, N}));
  }
  if (bias) t[2] = m.register_parameter(name("bias"), torch::empty({N}));
  const std::vector<int64_t> shape = per_neuron ? std::vector<int64_t>{N} : std::vector<int64_t>{};
  for (const NeuronValue& v : values) {
    t.push_back(v.learn ? m.register_parameter(name(v.name), torch::empty(shape))
                        : m.register_buffer(name(v.name), torch::empty(shape)));
  }
  return t;
}

// uniform(+-1/sqrt(fan-in)) for w_in and bias, uniform(+-1/sqrt(N)) for
// w_rec, the neuron values filled with their initial values.
void init_layer(const std::vector<at::Tensor>& t, int64_t N, const std::vector<NeuronValue>& values) {
  torch::NoGradGuard no_grad;
  const double bound_in = 1.0 / std::sqrt(static_cast<double>(t[0].size(1)));
  const double bound_rec = 1.0 / std::sqrt(static_cast<double>(N));
  at::Tensor w_in = t[0], w_rec = t[1], bias = t[2];
  torch::nn::init::uniform_(w_in, -bound_in, bound_in);
  if (bias.defined()) torch::nn::init::uniform_(bias, -bound_in, bound_in);
  if (w_rec.defined()) torch::nn::init::uniform_(w_rec, -bound_rec, bound_rec);
  for (size_t k = 0; k < values.size(); ++k) t[3 + k].fill_(values[k].initial);
}

// The w_rec a layer gives the op: a 0-dim one-to-one weight (one shared
// value, as Python's from_snntorch makes it) is one weight for every neuron.
OptionalTensor w_rec_for_op(const at::Tensor& w_rec, const std::string& recurrent, int64_t N) {
  if (!w_rec.defined()) return std::nullopt;
  return recurrent == "one_to_one" ? w_rec.expand({N}) : w_rec;
}

template <typename Options>
void print_stack_options(std::ostream& stream, const Options& options) {
  stream << ", reset=" << options.reset() << ", surrogate=" << options.surrogate();
  if (options.num_layers() > 1 || options.dropout() > 0) {
    stream << ", num_layers=" << options.num_layers() << ", dropout=" << options.dropout();
  }
  if (options.recurrent() != "all_to_all") stream << ", recurrent=" << options.recurrent();
  if (options.recurrent_delays()) {
    stream << ", recurrent_delays=" << *options.recurrent_delays()
           << ", max_delay=" << *options.max_delay() << ", delay_sigma=" << options.delay_sigma();
    if (options.learn_delay_spread()) stream << ", learn_delay_spread=true";
  }
  stream << ")";
}

std::vector<NeuronValue> lif_values(const RecurrentLIFOptions& o) {
  return {{"alpha", o.alpha(), o.learn_alpha()}, {"theta", o.theta(), o.learn_theta()}};
}

std::vector<NeuronValue> cuba_values(const RecurrentCubaLIFOptions& o) {
  return {{"alpha", o.alpha(), o.learn_alpha()},
          {"alpha_syn", o.alpha_syn(), o.learn_alpha_syn()},
          {"theta", o.theta(), o.learn_theta()}};
}

// A state (u, s) or (u, j, s) as the parts run_stack takes.
template <typename State, size_t... I>
std::vector<at::Tensor> state_parts(const std::optional<State>& state, std::index_sequence<I...>) {
  if (!state) return {};
  return {std::get<I>(*state)...};
}

// The construction of a LIF-like module (RecurrentLIF, RecurrentCubaLIF):
// its options checked as the op checks them, then its layers registered
// (Impl::Layer: w_in, w_rec, bias, then model M's parameters) and
// initialised.
template <typename M, typename Impl>
void construct_module(Impl& m, const char* name, const std::vector<NeuronValue>& values) {
  const auto& o = m.options;
  check_neuron_module<M>(name, o.in_features(), o.hidden_size(), o.num_layers(), o.dropout(),
                         o.recurrent(), values, o.reset(), o.detach_reset(), o.surrogate(),
                         o.slope());
  check_delay_options(name, o);
  m.reset();
}

template <typename Impl, size_t... I>
void register_layers(Impl& m, const std::vector<NeuronValue>& values, std::index_sequence<I...>) {
  const auto& o = m.options;
  const int64_t L = o.num_layers();
  m.layers.assign(L, typename Impl::Layer{});
  for (int64_t l = 0; l < L; ++l) {
    const auto t = register_layer(m, l, L, o.in_features(), o.hidden_size(), o.bias(),
                                  o.recurrent(), o.per_neuron(), values);
    m.layers[l] = typename Impl::Layer{t[I]...};
    register_delays(m, l, o, m.layers[l]);
  }
}

}  // namespace

RecurrentLIFImpl::RecurrentLIFImpl(const RecurrentLIFOptions& options_) : options(options_) {
  construct_module<LIF>(*this, "RecurrentLIF", lif_values(options));
}

void RecurrentLIFImpl::reset() {
  register_layers(*this, lif_values(options), std::make_index_sequence<5>{});
  w_in = layers[0].w_in, w_rec = layers[0].w_rec, bias = layers[0].bias;
  alpha = layers[0].alpha, theta = layers[0].theta;
  reset_parameters();
}

void RecurrentLIFImpl::reset_parameters() {
  for (const Layer& l : layers) {
    init_layer({l.w_in, l.w_rec, l.bias, l.alpha, l.theta}, options.hidden_size(),
               lif_values(options));
    init_delays(options, l);
  }
}

std::tuple<at::Tensor, at::Tensor, RecurrentLIFImpl::State> RecurrentLIFImpl::forward_with_membrane(
    const at::Tensor& input, const std::optional<State>& state,
    const std::optional<at::Tensor>& lengths) {
  const int64_t N = options.hidden_size();
  auto [top, last] = run_model<LIF>(
      "RecurrentLIF", {"u", "s"}, options, options.save_membrane(), is_training(), input,
      state_parts(state, std::make_index_sequence<2>{}), lengths, [&](int64_t l) {
        const Layer& layer = layers[l];
        return LayerTensors{layer.w_in, w_rec_for_op(layer.w_rec, options.recurrent(), N),
                            given(layer.bias), {layer.alpha.clamp(0, 1), layer.theta},
                            layer.delays, layer.delay_spread};
      });
  return {top[1], top[0], State{last[0], last[1]}};
}

std::tuple<at::Tensor, RecurrentLIFImpl::State> RecurrentLIFImpl::forward(
    const at::Tensor& input, const std::optional<State>& state,
    const std::optional<at::Tensor>& lengths) {
  auto [spikes, membrane, last] = forward_with_membrane(input, state, lengths);
  return {spikes, last};
}

void RecurrentLIFImpl::clamp_delays_() {
  const double D = static_cast<double>(options.max_delay().value_or(1));
  change_delays(*this, "RecurrentLIF", "clamp_delays_", [&](at::Tensor& d) { d.clamp_(1, D); });
}

void RecurrentLIFImpl::round_delays_() {
  change_delays(*this, "RecurrentLIF", "round_delays_", [](at::Tensor& d) { d.round_(); });
}

void RecurrentLIFImpl::pretty_print(std::ostream& stream) const {
  stream << "torch_ext::RecurrentLIF(" << options.in_features() << ", " << options.hidden_size()
         << ", bias=" << options.bias() << ", alpha=" << options.alpha()
         << ", theta=" << options.theta();
  print_stack_options(stream, options);
}

RecurrentCubaLIFOptions::RecurrentCubaLIFOptions(int64_t in_features, int64_t hidden_size)
    : in_features_(in_features), hidden_size_(hidden_size) {}

RecurrentCubaLIFImpl::RecurrentCubaLIFImpl(const RecurrentCubaLIFOptions& options_)
    : options(options_) {
  construct_module<CubaLIF>(*this, "RecurrentCubaLIF", cuba_values(options));
}

void RecurrentCubaLIFImpl::reset() {
  register_layers(*this, cuba_values(options), std::make_index_sequence<6>{});
  reset_parameters();
}

void RecurrentCubaLIFImpl::reset_parameters() {
  for (const Layer& l : layers) {
    init_layer({l.w_in, l.w_rec, l.bias, l.alpha, l.alpha_syn, l.theta}, options.hidden_size(),
               cuba_values(options));
    init_delays(options, l);
  }
}

std::tuple<at::Tensor, at::Tensor, RecurrentCubaLIFImpl::State>
RecurrentCubaLIFImpl::forward_with_membrane(const at::Tensor& input,
                                            const std::optional<State>& state,
                                            const std::optional<at::Tensor>& lengths) {
  const int64_t N = options.hidden_size();
  auto [top, last] = run_model<CubaLIF>(
      "RecurrentCubaLIF", {"u", "j", "s"}, options, options.save_state(), is_training(), input,
      state_parts(state, std::make_index_sequence<3>{}), lengths, [&](int64_t l) {
        const Layer& layer = layers[l];
        return LayerTensors{layer.w_in,
                            w_rec_for_op(layer.w_rec, options.recurrent(), N),
                            given(layer.bias),
                            {layer.alpha.clamp(0, 1), layer.alpha_syn.clamp(0, 1), layer.theta},
                            layer.delays, layer.delay_spread};
      });
  return {top[2], top[0], State{last[0], last[1], last[2]}};
}

std::tuple<at::Tensor, RecurrentCubaLIFImpl::State> RecurrentCubaLIFImpl::forward(
    const at::Tensor& input, const std::optional<State>& state,
    const std::optional<at::Tensor>& lengths) {
  auto [spikes, membrane, last] = forward_with_membrane(input, state, lengths);
  return {spikes, last};
}

void RecurrentCubaLIFImpl::clamp_delays_() {
  const double D = static_cast<double>(options.max_delay().value_or(1));
  change_delays(*this, "RecurrentCubaLIF", "clamp_delays_", [&](at::Tensor& d) { d.clamp_(1, D); });
}

void RecurrentCubaLIFImpl::round_delays_() {
  change_delays(*this, "RecurrentCubaLIF", "round_delays_", [](at::Tensor& d) { d.round_(); });
}

void RecurrentCubaLIFImpl::pretty_print(std::ostream& stream) const {
  stream << "torch_ext::RecurrentCubaLIF(" << options.in_features() << ", "
         << options.hidden_size() << ", bias=" << options.bias() << ", alpha=" << options.alpha()
         << ", alpha_syn=" << options.alpha_syn() << ", theta=" << options.theta();
  print_stack_options(stream, options);
}

// ---------------------------------------------------------------- the adaptive layer

RecurrentAdLIFOptions::RecurrentAdLIFOptions(int64_t in_features, int64_t hidden_size)
    : in_features_(in_features), hidden_size_(hidden_size) {}

RecurrentAdLIFImpl::RecurrentAdLIFImpl(const RecurrentAdLIFOptions& options_)
    : options(options_) {
  const char* module = "RecurrentAdLIF";
  check_stack_options(module, options.in_features(), options.hidden_size(), options.num_layers(),
                      options.dropout(), options.recurrent());
  for (const auto& [range, name, positive] :
       {std::make_tuple(&options.tau_u_range(), "tau_u_range", true),
        std::make_tuple(&options.tau_w_range(), "tau_w_range", true),
        std::make_tuple(&options.a_range(), "a_range", false),
        std::make_tuple(&options.b_range(), "b_range", false)}) {
    const bool ok = range->size() == 2 && std::isfinite((*range)[0]) &&
                    std::isfinite((*range)[1]) && (*range)[0] <= (*range)[1] &&
                    (!positive || (*range)[0] > 0);
    TORCH_CHECK_VALUE(ok, module, ": argument '", name, "' must be two finite numbers (low, high) "
                      "with low <= high", positive ? " and low > 0" : "", ", got ",
                      c10::ArrayRef<double>(*range));
  }
  for (const auto& [value, name] : {std::make_pair(options.q(), "q"),
                                    std::make_pair(options.theta(), "theta"),
                                    std::make_pair(options.dt(), "dt")}) {
    TORCH_CHECK_VALUE(std::isfinite(value), module, ": argument '", name,
                      "' must be finite, got ", value);
  }
  TORCH_CHECK_VALUE(options.dt() > 0, module, ": argument 'dt' must be > 0, got ", options.dt());
  check_options("recurrent_adlif", options.reset(), options.detach_reset(), options.surrogate(),
                options.slope(), at::kFloat);
  check_delay_options(module, options);
  reset();
}

void RecurrentAdLIFImpl::reset() {
  const int64_t L = options.num_layers();
  layers.assign(L, Layer{});
  for (int64_t l = 0; l < L; ++l) {
    // Per neuron and learnt, always; their values come from reset_parameters.
    const std::vector<at::Tensor> t = register_layer(
        *this, l, L, options.in_features(), options.hidden_size(), options.bias(),
        options.recurrent(), /*per_neuron=*/true,
        {{"tau_u", 0, true}, {"tau_w", 0, true}, {"a", 0, true}, {"b", 0, true}});
    layers[l] = Layer{t[0], t[1], t[2], t[3], t[4], t[5], t[6]};
    register_delays(*this, l, options, layers[l]);
  }
  reset_parameters();
}

void RecurrentAdLIFImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  for (Layer& layer : layers) {
    const double bound = std::sqrt(1.0 / static_cast<double>(layer.w_in.size(1)));
    torch::nn::init::uniform_(layer.w_in, -bound, bound);
    if (layer.bias.defined()) layer.bias.zero_();
    if (layer.w_rec.defined()) {
      if (layer.w_rec.dim() == 2) {
        // In float32 (QR has no half-precision kernels), then cast.
        at::Tensor w = torch::empty(layer.w_rec.sizes(),
                                    layer.w_rec.options().dtype(compute_dtype(layer.w_rec.scalar_type())));
        torch::nn::init::orthogonal_(w, 1.0);
        layer.w_rec.copy_(w);
      } else {  // one-to-one: one weight per neuron, uniform in [-1, 1]
        torch::nn::init::uniform_(layer.w_rec, -1.0, 1.0);
      }
    }
    torch::nn::init::uniform_(layer.tau_u, 0.0, 1.0);
    torch::nn::init::uniform_(layer.tau_w, 0.0, 1.0);
    torch::nn::init::uniform_(layer.a, options.a_range()[0], options.a_range()[1]);
    torch::nn::init::uniform_(layer.b, options.b_range()[0], options.b_range()[1]);
    init_delays(options, layer);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> RecurrentAdLIFImpl::neuron_params(
    int64_t l) const {
  const Layer& layer = layers.at(l);
  // tau = w tau_max + (1 - w) tau_min with w kept in [0, 1]; decay = exp(-dt / tau).
  auto decay = [&](const at::Tensor& w, const std::vector<double>& range) {
    const at::Tensor weight = w.clamp(0, 1);
    const at::Tensor tau = weight * range[1] + (1 - weight) * range[0];
    return at::exp(-options.dt() / tau);
  };
  return {decay(layer.tau_u, options.tau_u_range()), decay(layer.tau_w, options.tau_w_range()),
          options.q() * layer.a.clamp(options.a_range()[0], options.a_range()[1]),
          options.q() * layer.b.clamp(options.b_range()[0], options.b_range()[1])};
}

std::tuple<at::Tensor, RecurrentAdLIFImpl::State> RecurrentAdLIFImpl::forward(
    const at::Tensor& input, const std::optional<State>& state,
    const std::optional<at::Tensor>& lengths) {
  auto [top, last] = run_model<AdLIF>(
      "RecurrentAdLIF", {"v", "a", "s"}, options, options.save_state(), is_training(), input,
      state_parts(state, std::make_index_sequence<3>{}), lengths, [&](int64_t l) {
        const Layer& layer = layers[l];
        const auto [alpha, beta, a, b] = neuron_params(l);
        const at::Tensor theta = at::full(
            {}, options.theta(), alpha.options().dtype(compute_dtype(alpha.scalar_type())));
        return LayerTensors{layer.w_in, given(layer.w_rec), given(layer.bias),
                            {alpha, beta, a, b, theta}, layer.delays, layer.delay_spread};
      });
  return {top[2], State{last[0], last[1], last[2]}};
}

void RecurrentAdLIFImpl::clamp_delays_() {
  const double D = static_cast<double>(options.max_delay().value_or(1));
  change_delays(*this, "RecurrentAdLIF", "clamp_delays_", [&](at::Tensor& d) { d.clamp_(1, D); });
}

void RecurrentAdLIFImpl::round_delays_() {
  change_delays(*this, "RecurrentAdLIF", "round_delays_", [](at::Tensor& d) { d.round_(); });
}

void RecurrentAdLIFImpl::pretty_print(std::ostream& stream) const {
  stream << "torch_ext::RecurrentAdLIF(" << options.in_features() << ", " << options.hidden_size()
         << ", bias=" << options.bias() << ", theta=" << options.theta();
  print_stack_options(stream, options);
}

void load_state_dict(torch::nn::Module& module, const c10::Dict<std::string, at::Tensor>& state_dict) {
  std::vector<std::pair<std::string, at::Tensor>> targets;
  for (const auto& item : module.named_parameters()) targets.emplace_back(item.key(), item.value());
  for (const auto& item : module.named_buffers()) targets.emplace_back(item.key(), item.value());
  for (const auto& entry : state_dict) {
    const bool known = std::any_of(targets.begin(), targets.end(),
                                   [&](const auto& t) { return t.first == entry.key(); });
    TORCH_CHECK_VALUE(known, "load_state_dict: the state_dict has '", entry.key(), "', which the ",
                      module.name(), " has no parameter or buffer of that name for");
  }
  torch::NoGradGuard no_grad;
  for (auto& [name, target] : targets) {
    TORCH_CHECK_VALUE(state_dict.contains(name), "load_state_dict: the state_dict has no '", name,
                      "', a parameter or buffer of the ", module.name());
    const at::Tensor value = state_dict.at(name);
    TORCH_CHECK_VALUE(value.sizes() == target.sizes(), "load_state_dict: '", name, "' has shape ",
                      value.sizes(), " in the state_dict but ", target.sizes(), " in the ",
                      module.name());
    target.copy_(value);
  }
}

c10::Dict<std::string, at::Tensor> load_tensors(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  TORCH_CHECK_VALUE(file, "load_tensors: cannot open '", path, "'");
  const std::vector<char> bytes((std::istreambuf_iterator<char>(file)),
                                std::istreambuf_iterator<char>());
  c10::IValue loaded;
  try {
    loaded = torch::pickle_load(bytes);
  } catch (const c10::Error& error) {
    // LibTorch's reader cannot rebuild the OrderedDict that module.state_dict()
    // is; a plain dict of it reads.
    TORCH_CHECK_VALUE(false, "load_tensors: '", path, "' is not a file torch.save wrote, "
                      "or not one LibTorch can read (save a state_dict as a plain dict: "
                      "torch.save(dict(module.state_dict()), path)): ",
                      error.what_without_backtrace());
  }
  TORCH_CHECK_VALUE(loaded.isGenericDict(), "load_tensors: '", path, "' holds a ",
                    loaded.tagKind(), ", not a state_dict (a dict of names to tensors)");
  c10::Dict<std::string, at::Tensor> tensors;
  for (const auto& entry : loaded.toGenericDict()) {
    TORCH_CHECK_VALUE(entry.key().isString() && entry.value().isTensor(), "load_tensors: '",
                      path, "' is not a state_dict: it maps a ", entry.key().tagKind(), " to a ",
                      entry.value().tagKind(), ", not names to tensors");
    tensors.insert(entry.key().toStringRef(), entry.value().toTensor());
  }
  return tensors;
}

void load_state_dict(torch::nn::Module& module, const std::string& path) {
  load_state_dict(module, load_tensors(path));
}

}  // namespace torch_ext
