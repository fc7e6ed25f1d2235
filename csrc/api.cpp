// The public C++ API (include/torch_ext/torch_ext.h): the functional form and
// the RecurrentLIF module, both on top of the op and its C++ autograd.
#include <torch/nn/init.h>
#include <torch/utils.h>

#include <cmath>

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

RecurrentLIFImpl::RecurrentLIFImpl(const RecurrentLIFOptions& options_) : options(options_) {
  for (const auto& [value, name] : {std::make_pair(options.in_features(), "in_features"),
                                    std::make_pair(options.hidden_size(), "hidden_size")}) {
    TORCH_CHECK_VALUE(value > 0, "RecurrentLIF: argument '", name, "' must be a positive int, got ",
                      value);
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
  const int64_t F = options.in_features(), N = options.hidden_size();
  w_in = register_parameter("w_in", torch::empty({N, F}));
  w_rec = register_parameter("w_rec", torch::empty({N, N}));
  bias = options.bias() ? register_parameter("bias", torch::empty({N})) : at::Tensor();
  const std::vector<int64_t> shape =
      options.per_neuron() ? std::vector<int64_t>{N} : std::vector<int64_t>{};
  alpha = options.learn_alpha() ? register_parameter("alpha", torch::empty(shape))
                                : register_buffer("alpha", torch::empty(shape));
  theta = options.learn_theta() ? register_parameter("theta", torch::empty(shape))
                                : register_buffer("theta", torch::empty(shape));
  reset_parameters();
}

void RecurrentLIFImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  const double bound_in = 1.0 / std::sqrt(static_cast<double>(options.in_features()));
  const double bound_rec = 1.0 / std::sqrt(static_cast<double>(options.hidden_size()));
  torch::nn::init::uniform_(w_in, -bound_in, bound_in);
  if (bias.defined()) torch::nn::init::uniform_(bias, -bound_in, bound_in);
  torch::nn::init::uniform_(w_rec, -bound_rec, bound_rec);
  alpha.fill_(options.alpha());
  theta.fill_(options.theta());
}

std::tuple<at::Tensor, RecurrentLIFImpl::State> RecurrentLIFImpl::forward(
    const at::Tensor& input, const std::optional<State>& state) {
  TORCH_CHECK_VALUE(input.defined() && input.dim() == 3, "RecurrentLIF: argument 'x' must have shape ",
                    options.batch_first() ? "[B, T, F]" : "[T, B, F]", ", got ",
                    input.defined() ? c10::str(input.sizes()) : std::string("an undefined tensor"));
  const at::Tensor x = options.batch_first() ? input.transpose(0, 1) : input;
  auto call_options = RecurrentLIFFuncOptions()
                          .reset(options.reset())
                          .detach_reset(options.detach_reset())
                          .surrogate(options.surrogate())
                          .slope(options.slope())
                          .save_membrane(options.save_membrane());
  if (state) call_options.u0(std::get<0>(*state)).s0(std::get<1>(*state));
  auto [spikes, membrane] = recurrent_lif(x, w_in, w_rec, bias.defined() ? bias : OptionalTensor(),
                                          alpha.clamp(0, 1), theta, call_options);
  State last;
  if (x.size(0) > 0) {
    last = {membrane[-1], spikes[-1]};
  } else if (state) {  // no step taken: the state is what was given
    last = *state;
  } else {
    last = {membrane.new_zeros({x.size(1), options.hidden_size()}),
            spikes.new_zeros({x.size(1), options.hidden_size()})};
  }
  if (options.batch_first()) spikes = spikes.transpose(0, 1);
  return {spikes, last};
}

void RecurrentLIFImpl::pretty_print(std::ostream& stream) const {
  stream << "torch_ext::RecurrentLIF(" << options.in_features() << ", " << options.hidden_size()
         << ", bias=" << options.bias() << ", alpha=" << options.alpha()
         << ", theta=" << options.theta() << ", reset=" << options.reset()
         << ", surrogate=" << options.surrogate() << ")";
}

}  // namespace torch_ext
