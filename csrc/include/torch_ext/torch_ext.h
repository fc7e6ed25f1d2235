// torch_ext: a fused recurrent leaky integrate-and-fire (LIF) layer for LibTorch.
//
//   #include <torch_ext/torch_ext.h>
//
//   auto [spikes, membrane] = torch_ext::recurrent_lif(x, w_in, w_rec, bias);
//   torch_ext::RecurrentLIF layer(torch_ext::RecurrentLIFOptions(64, 128).learn_alpha(true));
//   auto [spikes, state] = layer(x);  // state = (u_last, s_last)
//
// Both are differentiable through the op's autograd (C++, the same one Python
// uses) and run the fused CPU/CUDA kernels forward and backward. The model, its
// gradients and every option are described in the project's README.
// CMake: find_package(torch_ext) and link torch_ext::torch_ext.
#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <optional>
#include <string>
#include <tuple>

namespace torch_ext {

// Options of recurrent_lif beyond its tensors, with chainable setters:
// RecurrentLIFFuncOptions().reset("zero").surrogate("atan").
struct RecurrentLIFFuncOptions {
  // Initial membrane and spikes, each [B, N] (default zeros).
  TORCH_ARG(std::optional<at::Tensor>, u0) = std::nullopt;
  TORCH_ARG(std::optional<at::Tensor>, s0) = std::nullopt;
  // "subtract" (default), "zero" or "none".
  TORCH_ARG(std::string, reset) = "subtract";
  // If true, no gradient flows through the reset.
  TORCH_ARG(bool, detach_reset) = false;
  // "sigmoid" (default), "fast_sigmoid", "atan" or "triangle".
  TORCH_ARG(std::string, surrogate) = "sigmoid";
  // Surrogate slope k > 0; none: the surrogate's default.
  TORCH_ARG(std::optional<double>, slope) = std::nullopt;
  // false: the low-memory mode. Autograd keeps nothing of size T*B*N beyond
  // the returned spikes; the backward recomputes the membrane (exactly).
  TORCH_ARG(bool, save_membrane) = true;
  // [B] integers: row b takes steps t < lengths[b] only (a variable-length
  // batch); its later steps output spikes and membrane 0.
  TORCH_ARG(std::optional<at::Tensor>, lengths) = std::nullopt;
};

// Runs a recurrent LIF layer over a whole sequence.
//   x      [T, B, F] (time-major)
//   w_in   [N, F], or none (then F == N and I[t] = x[t] + bias)
//   w_rec  [N, N] (row i = weights into neuron i), or none
//   bias   [N], or none
//   alpha  membrane decay in [0, 1]: 0-dim or [N]
//   theta  threshold: 0-dim or [N]
// Returns (spikes, membrane), each [T, B, N]; (membrane[-1], spikes[-1])
// passed as (u0, s0) continues the sequence. Errors (c10::Error subclasses)
// name the offending argument.
std::tuple<at::Tensor, at::Tensor> recurrent_lif(
    const at::Tensor& x, const std::optional<at::Tensor>& w_in,
    const std::optional<at::Tensor>& w_rec, const std::optional<at::Tensor>& bias,
    const at::Tensor& alpha, const at::Tensor& theta,
    const RecurrentLIFFuncOptions& options = {});

// The same with alpha and theta as numbers (default 0.9 and 1.0).
std::tuple<at::Tensor, at::Tensor> recurrent_lif(
    const at::Tensor& x, const std::optional<at::Tensor>& w_in,
    const std::optional<at::Tensor>& w_rec, const std::optional<at::Tensor>& bias = std::nullopt,
    double alpha = 0.9, double theta = 1.0, const RecurrentLIFFuncOptions& options = {});

// Options of the RecurrentLIF module, named like the Python constructor's arguments.
struct RecurrentLIFOptions {
  RecurrentLIFOptions(int64_t in_features, int64_t hidden_size);
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, hidden_size);
  TORCH_ARG(bool, bias) = true;
  // Initial values of the decay (kept in [0, 1] by clamping) and the threshold.
  TORCH_ARG(double, alpha) = 0.9;
  TORCH_ARG(double, theta) = 1.0;
  // Learnable alpha/theta become parameters; otherwise they are buffers.
  TORCH_ARG(bool, learn_alpha) = false;
  TORCH_ARG(bool, learn_theta) = false;
  // One alpha and theta per neuron ([N]) instead of one for the layer.
  TORCH_ARG(bool, per_neuron) = false;
  TORCH_ARG(std::string, reset) = "subtract";
  TORCH_ARG(bool, detach_reset) = false;
  TORCH_ARG(std::string, surrogate) = "sigmoid";
  TORCH_ARG(std::optional<double>, slope) = std::nullopt;
  // x as [B, T, F] (spikes [B, T, N]) instead of [T, B, F].
  TORCH_ARG(bool, batch_first) = false;
  // false: the low-memory mode (see RecurrentLIFFuncOptions).
  TORCH_ARG(bool, save_membrane) = true;
};

// A recurrent layer of LIF neurons, like torch::nn::RNN: it keeps no state
// between calls. Parameters w_in [N, F], w_rec [N, N], bias [N] (and alpha,
// theta when learnable), initialised like the Python module: uniform with
// bound 1/sqrt(in_features) for w_in and bias, 1/sqrt(hidden_size) for w_rec.
class RecurrentLIFImpl : public torch::nn::Cloneable<RecurrentLIFImpl> {
 public:
  using State = std::tuple<at::Tensor, at::Tensor>;  // (u, s), each [B, N]

  RecurrentLIFImpl(int64_t in_features, int64_t hidden_size)
      : RecurrentLIFImpl(RecurrentLIFOptions(in_features, hidden_size)) {}
  explicit RecurrentLIFImpl(const RecurrentLIFOptions& options);

  // (spikes, (u_last, s_last)); with no state the layer starts from zeros,
  // with T = 0 the state returned is the one given.
  std::tuple<at::Tensor, State> forward(const at::Tensor& x,
                                        const std::optional<State>& state = std::nullopt);

  void reset() override;             // (re)creates the parameters and buffers
  void reset_parameters();           // initial values, as the Python module
  void pretty_print(std::ostream& stream) const override;

  RecurrentLIFOptions options;
  at::Tensor w_in, w_rec, bias, alpha, theta;
};

TORCH_MODULE(RecurrentLIF);

}  // namespace torch_ext
