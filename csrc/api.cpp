// The public C++ API (include/torch_ext/torch_ext.h): the functional form and
// the RecurrentLIF module, both on top of the op and its C++ autograd.
#include <torch/nn/init.h>
#include <torch/serialize.h>
#include <torch/utils.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
#include <iterator>

#include "recurrent_lif.h"
#include "torch_ext/torch_ext.h"

namespace torch_ext {
namespace {

// alpha or theta given as a number: checked as the Python API checks a float,
// then a 0-dim tensor in the compute dtype on x's device.
at::Tensor number_param(double value, const char* name, const at::Tensor& x) {
  if (std::string(name) == "alpha") {
    TORCH_CHECK_VALUE(value >= 0.0 && value <= 1.0, "recurrent_lif: argument 'alpha' must lie in "
                      "[0, 1], got ", value);
  } else {
    TORCH_CHECK_VALUE(std::isfinite(value), "recurrent_lif: argument 'theta' must be finite, got ",
                      value);
  }
  TORCH_CHECK_VALUE(x.defined(), "recurrent_lif: argument 'x' is required");
  return at::full({}, value, x.options().dtype(compute_dtype(x.scalar_type())));
}

// An optional holding an undefined tensor (torch::Tensor()) means "absent",
// as it does for LibTorch's own functions.
OptionalTensor given(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t : std::nullopt;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> recurrent_lif(const at::Tensor& x,
                                                 const std::optional<at::Tensor>& w_in,
                                                 const std::optional<at::Tensor>& w_rec,
                                                 const std::optional<at::Tensor>& bias,
                                                 const at::Tensor& alpha, const at::Tensor& theta,
                                                 const RecurrentLIFFuncOptions& options) {
  // Before the dispatcher, which needs one defined tensor to pick a kernel.
  check_required(x, alpha, theta);
  return call_recurrent_lif(x, given(w_in), given(w_rec), given(bias), alpha, theta,
                            given(options.u0()), given(options.s0()), options.reset(),
                            options.detach_reset(), options.surrogate(), options.slope(),
                            options.save_membrane(), given(options.lengths()));
}

std::tuple<at::Tensor, at::Tensor> recurrent_lif(const at::Tensor& x,
                                                 const std::optional<at::Tensor>& w_in,
                                                 const std::optional<at::Tensor>& w_rec,
                                                 const std::optional<at::Tensor>& bias,
                                                 double alpha, double theta,
                                                 const RecurrentLIFFuncOptions& options) {
  return recurrent_lif(x, w_in, w_rec, bias, number_param(alpha, "alpha", x),
                       number_param(theta, "theta", x), options);
}

RecurrentLIFOptions::RecurrentLIFOptions(int64_t in_features, int64_t hidden_size)
    : in_features_(in_features), hidden_size_(hidden_size) {}

namespace {

constexpr std::array<const char*, 3> kRecurrent{"all_to_all", "one_to_one", "none"};

// (u, s) of each batch row after its own last step: membrane and spikes
// [T, B, N] at t = lengths[b] - 1, or the initial state where lengths[b] = 0.
std::pair<at::Tensor, at::Tensor> state_at(const at::Tensor& lengths, const at::Tensor& membrane,
                                           const at::Tensor& spikes, const at::Tensor& u_first,
                                           const at::Tensor& s_first) {
  // Clamped as the kernels do (on CUDA the op does not check the values).
  const at::Tensor steps =
      lengths.to(membrane.device(), at::kLong).clamp(0, membrane.size(0));
  const at::Tensor last = (steps - 1).clamp_min(0).view({1, -1, 1}).expand(
      {1, membrane.size(1), membrane.size(2)});
  const at::Tensor took_steps = (steps > 0).unsqueeze(1);
  return {at::where(took_steps, membrane.gather(0, last)[0], u_first.to(membrane.scalar_type())),
          at::where(took_steps, spikes.gather(0, last)[0], s_first.to(spikes.scalar_type()))};
}

}  // namespace

RecurrentLIFImpl::RecurrentLIFImpl(const RecurrentLIFOptions& options_) : options(options_) {
  for (const auto& [value, name] : {std::make_pair(options.in_features(), "in_features"),
                                    std::make_pair(options.hidden_size(), "hidden_size"),
                                    std::make_pair(options.num_layers(), "num_layers")}) {
    TORCH_CHECK_VALUE(value > 0, "RecurrentLIF: argument '", name, "' must be a positive int, got ",
                      value);
  }
  TORCH_CHECK_VALUE(options.dropout() >= 0.0 && options.dropout() <= 1.0,
                    "RecurrentLIF: argument 'dropout' must be a number in [0, 1] (the probability "
                    "of dropping a spike between layers), got ", options.dropout());
  TORCH_CHECK_VALUE(std::find(kRecurrent.begin(), kRecurrent.end(), options.recurrent()) !=
                        kRecurrent.end(),
                    "RecurrentLIF: argument 'recurrent' must be one of \"all_to_all\", "
                    "\"one_to_one\", \"none\", got \"", options.recurrent(), "\"");
  if (options.dropout() > 0 && options.num_layers() == 1) {
    TORCH_WARN("RecurrentLIF: dropout applies between stacked layers, so a non-zero dropout "
               "expects num_layers > 1, got dropout=", options.dropout(), " and num_layers=1");
  }
  TORCH_CHECK_VALUE(options.alpha() >= 0.0 && options.alpha() <= 1.0,
                    "recurrent_lif: argument 'alpha' must lie in [0, 1], got ", options.alpha());
  TORCH_CHECK_VALUE(std::isfinite(options.theta()),
                    "recurrent_lif: argument 'theta' must be finite, got ", options.theta());
  check_options(options.reset(), options.detach_reset(), options.surrogate(), options.slope(),
                at::kFloat);
  reset();
}

void RecurrentLIFImpl::reset() {
  const int64_t F = options.in_features(), N = options.hidden_size(), L = options.num_layers();
  const std::vector<int64_t> neuron_shape =
      options.per_neuron() ? std::vector<int64_t>{N} : std::vector<int64_t>{};
  const std::vector<int64_t> rec_shape = options.recurrent() == "one_to_one"
                                             ? std::vector<int64_t>{N}
                                             : std::vector<int64_t>{N, N};
  // Registered in the Python module's order, under its names.
  auto name = [L](const char* base, int64_t layer) {
    return L == 1 ? std::string(base) : c10::str(base, "_l", layer);
  };
  layers.assign(L, Layer{});
  for (int64_t l = 0; l < L; ++l) {
    Layer& layer = layers[l];
    layer.w_in = register_parameter(name("w_in", l), torch::empty({N, l == 0 ? F : N}));
    if (options.recurrent() != "none") {
      layer.w_rec = register_parameter(name("w_rec", l), torch::empty(rec_shape));
    }
    if (options.bias()) layer.bias = register_parameter(name("bias", l), torch::empty({N}));
    layer.alpha = options.learn_alpha()
                      ? register_parameter(name("alpha", l), torch::empty(neuron_shape))
                      : register_buffer(name("alpha", l), torch::empty(neuron_shape));
    layer.theta = options.learn_theta()
                      ? register_parameter(name("theta", l), torch::empty(neuron_shape))
                      : register_buffer(name("theta", l), torch::empty(neuron_shape));
  }
  w_in = layers[0].w_in, w_rec = layers[0].w_rec, bias = layers[0].bias;
  alpha = layers[0].alpha, theta = layers[0].theta;
  reset_parameters();
}

void RecurrentLIFImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  const double bound_rec = 1.0 / std::sqrt(static_cast<double>(options.hidden_size()));
  for (Layer& layer : layers) {
    const double bound_in = 1.0 / std::sqrt(static_cast<double>(layer.w_in.size(1)));
    torch::nn::init::uniform_(layer.w_in, -bound_in, bound_in);
    if (layer.bias.defined()) torch::nn::init::uniform_(layer.bias, -bound_in, bound_in);
    if (layer.w_rec.defined()) torch::nn::init::uniform_(layer.w_rec, -bound_rec, bound_rec);
    layer.alpha.fill_(options.alpha());
    layer.theta.fill_(options.theta());
  }
}

std::tuple<at::Tensor, RecurrentLIFImpl::State> RecurrentLIFImpl::forward(
    const at::Tensor& input, const std::optional<State>& state,
    const std::optional<at::Tensor>& lengths) {
  const int64_t L = options.num_layers(), N = options.hidden_size();
  TORCH_CHECK_VALUE(input.defined() && (input.dim() == 2 || input.dim() == 3),
                    "RecurrentLIF: argument 'x' must have shape ",
                    options.batch_first() ? "[B, T, F]" : "[T, B, F]",
                    " (batched) or [T, F] (unbatched), got ",
                    input.defined() ? c10::str(input.sizes()) : std::string("an undefined tensor"));
  const bool batched = input.dim() == 3;
  const at::Tensor x =
      !batched ? input.unsqueeze(1) : (options.batch_first() ? input.transpose(0, 1) : input);
  const int64_t T = x.size(0), B = x.size(1);

  // The state's expected shape, as the Python module checks it.
  std::vector<int64_t> shape;
  if (L > 1) shape.push_back(L);
  if (batched) shape.push_back(B);
  shape.push_back(N);
  // One [B, N] tensor per layer (absent where `value` is undefined).
  auto per_layer = [&](const at::Tensor& value, const char* part) {
    std::vector<OptionalTensor> split(L);
    if (!value.defined()) return split;
    TORCH_CHECK_VALUE(value.sizes() == at::IntArrayRef(shape), "RecurrentLIF: argument "
                      "'state': ", part, " must have shape ", at::IntArrayRef(shape), " (",
                      L == 1 ? std::string("one layer") : c10::str("num_layers=", L), ", ",
                      batched ? "batched" : "unbatched", " input), got ", value.sizes());
    for (int64_t l = 0; l < L; ++l) {
      const at::Tensor layer = L > 1 ? value.select(0, l) : value;
      split[l] = batched ? layer : layer.unsqueeze(0);
    }
    return split;
  };
  const std::vector<OptionalTensor> u0 = per_layer(state ? std::get<0>(*state) : at::Tensor(), "u");
  const std::vector<OptionalTensor> s0 = per_layer(state ? std::get<1>(*state) : at::Tensor(), "s");
  const OptionalTensor given_lengths = given(lengths);

  at::Tensor layer_input = x, spikes;
  std::vector<at::Tensor> us, ss;
  for (int64_t l = 0; l < L; ++l) {
    const Layer& layer = layers[l];
    if (l > 0 && options.dropout() > 0 && is_training()) {
      layer_input = at::dropout(layer_input, options.dropout(), /*train=*/true);
    }
    auto call_options = RecurrentLIFFuncOptions()
                            .reset(options.reset())
                            .detach_reset(options.detach_reset())
                            .surrogate(options.surrogate())
                            .slope(options.slope())
                            .save_membrane(options.save_membrane())
                            .u0(u0[l])
                            .s0(s0[l])
                            .lengths(given_lengths);
    // A 0-dim one-to-one weight (one shared value, as Python's from_snntorch
    // makes it) is one weight for every neuron.
    const OptionalTensor w_rec_for_op =
        !layer.w_rec.defined()
            ? OptionalTensor()
            : (options.recurrent() == "one_to_one" ? layer.w_rec.expand({N}) : layer.w_rec);
    at::Tensor membrane;
    std::tie(spikes, membrane) =
        recurrent_lif(layer_input, layer.w_in, w_rec_for_op, given(layer.bias),
                      layer.alpha.clamp(0, 1), layer.theta, call_options);
    const at::Tensor u_first = u0[l] ? *u0[l] : membrane.new_zeros({B, N});
    const at::Tensor s_first = s0[l] ? *s0[l] : spikes.new_zeros({B, N});
    if (T == 0) {  // no step taken: the state is what was given, or zeros
      us.push_back(u_first), ss.push_back(s_first);
    } else if (!given_lengths) {
      us.push_back(membrane[-1]), ss.push_back(spikes[-1]);
    } else {  // each row's state after its own last step
      auto [u, s] = state_at(*given_lengths, membrane, spikes, u_first, s_first);
      us.push_back(u), ss.push_back(s);
    }
    layer_input = spikes;
  }

  State last;
  if (T == 0 && state && std::get<0>(*state).defined() && std::get<1>(*state).defined()) {
    last = *state;  // given tensors come back as they are
  } else {
    at::Tensor u = L > 1 ? at::stack(us) : us[0], s = L > 1 ? at::stack(ss) : ss[0];
    if (!batched) u = u.squeeze(L > 1 ? 1 : 0), s = s.squeeze(L > 1 ? 1 : 0);
    last = {u, s};
  }
  if (!batched) {
    spikes = spikes.squeeze(1);
  } else if (options.batch_first()) {
    spikes = spikes.transpose(0, 1);
  }
  return {spikes, last};
}

void RecurrentLIFImpl::pretty_print(std::ostream& stream) const {
  stream << "torch_ext::RecurrentLIF(" << options.in_features() << ", " << options.hidden_size()
         << ", bias=" << options.bias() << ", alpha=" << options.alpha()
         << ", theta=" << options.theta() << ", reset=" << options.reset()
         << ", surrogate=" << options.surrogate();
  if (options.num_layers() > 1 || options.dropout() > 0) {
    stream << ", num_layers=" << options.num_layers() << ", dropout=" << options.dropout();
  }
  if (options.recurrent() != "all_to_all") stream << ", recurrent=" << options.recurrent();
  stream << ")";
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
