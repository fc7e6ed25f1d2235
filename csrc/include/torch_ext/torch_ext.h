// torch_ext: fused recurrent spiking layers for LibTorch: leaky
// integrate-and-fire (LIF), adaptive (SE-adLIF) and current-based (CUBA LIF).
//
//   #include <torch_ext/torch_ext.h>
//
//   auto [spikes, membrane] = torch_ext::recurrent_lif(x, w_in, w_rec, bias);
//   torch_ext::RecurrentLIF layer(torch_ext::RecurrentLIFOptions(64, 128).learn_alpha(true));
//   auto [spikes, state] = layer(x);  // state = (u_last, s_last)
//   auto [s, v, a] = torch_ext::recurrent_adlif(x, w_in, w_rec, bias);
//   torch_ext::RecurrentAdLIF adaptive(torch_ext::RecurrentAdLIFOptions(64, 128));
//   auto [spikes, state] = adaptive(x);  // state = (v_last, a_last, s_last)
//   auto [s, u, j] = torch_ext::recurrent_cubalif(x, w_in, w_rec, bias);
//   torch_ext::RecurrentCubaLIF cuba(torch_ext::RecurrentCubaLIFOptions(64, 128));
//   auto [spikes, state] = cuba(x);  // state = (u_last, j_last, s_last)
//   torch_ext::load_state_dict(*layer, "layer.pt");  // torch.save(dict(python_layer.state_dict()), ...)
//
// All are differentiable through the op's autograd (C++, the same one Python
// uses) and run the fused CPU/CUDA kernels forward and backward. The model, its
// gradients and every option are described in the project's README.
// CMake: find_package(torch_ext) and link torch_ext::torch_ext.
#pragma once

#include <ATen/core/Dict.h>
#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>
#include <torch_ext/buffer_cache.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

// The options every neuron op and module takes, with its model's defaults
// for the reset (chainable setters, as every TORCH_ARG):
//   reset         "subtract", "zero" or "none"
//   detach_reset  if true, no gradient flows through the reset
//   surrogate     "sigmoid" (default), "fast_sigmoid", "atan" or "triangle"
//   slope         the surrogate's slope k > 0; none: the surrogate's default
#define TORCH_EXT_NEURON_OPTIONS(default_reset, default_detach_reset) \
  TORCH_ARG(std::string, reset) = default_reset;                      \
  TORCH_ARG(bool, detach_reset) = default_detach_reset;               \
  TORCH_ARG(std::string, surrogate) = "sigmoid";                      \
  TORCH_ARG(std::optional<double>, slope) = std::nullopt

// The options of every module's layer stack:
//   bias         learn a bias [N] per layer
//   batch_first  x as [B, T, F] (spikes [B, T, N]) instead of [T, B, F]
//   num_layers   L stacked layers: layer 0 maps in_features to hidden_size,
//                the others hidden_size to hidden_size, each fed the spikes
//                of the layer below
//   dropout      with L > 1, the probability of dropping each spike between
//                two layers (kept spikes scaled by 1 / (1 - dropout)), in
//                training mode only
//   recurrent    "all_to_all" (w_rec [N, N]), "one_to_one" (w_rec [N]: each
//                neuron feeds back only its own spike) or "none" (no w_rec)
// and its learnable recurrent delays (CPU; README, "Recurrent delays"):
//   recurrent_delays  "axonal" (a parameter delays [N], one per source
//                neuron; the only kind with "one_to_one") or "synaptic"
//                (delays [N, N]); none: no delays, and the options below
//                keep their defaults
//   max_delay    D >= 1, the longest tap, required with delays
//   delay_sigma  the kernel's spread sigma >= 0, to anneal during training
//   learn_delay_spread  a parameter delay_spread [N] (zeros): sigma_j =
//                2 delay_sigma sigmoid(delay_spread_j)
//   delay_init_std  delays start at 1 + |N(0, std^2)| clamped into [1, D];
//                none: D / 4
// With delays the state's spikes are the spike history of the last D steps,
// oldest first: [D, B, N] ([L, D, B, N] for a stack, [D, N] unbatched).
#define TORCH_EXT_STACK_OPTIONS                                         \
  TORCH_ARG(bool, bias) = true;                                         \
  TORCH_ARG(bool, batch_first) = false;                                 \
  TORCH_ARG(int64_t, num_layers) = 1;                                   \
  TORCH_ARG(double, dropout) = 0.0;                                     \
  TORCH_ARG(std::string, recurrent) = "all_to_all";                     \
  TORCH_ARG(std::optional<std::string>, recurrent_delays) = std::nullopt; \
  TORCH_ARG(std::optional<int64_t>, max_delay) = std::nullopt;          \
  TORCH_ARG(double, delay_sigma) = 0.0;                                 \
  TORCH_ARG(bool, learn_delay_spread) = false;                          \
  TORCH_ARG(std::optional<double>, delay_init_std) = std::nullopt

// What every module offers with recurrent delays: the delays projected onto
// [1, max_delay] (DelRec: after each optimiser step; the forward does not
// clamp, which would zero their gradient at the bounds) or rounded to
// integers (DelRec: before evaluation, with delay_sigma 0), in place. Both
// throw without delays.
#define TORCH_EXT_DELAY_METHODS \
  void clamp_delays_();         \
  void round_delays_()

// The options of every functional op besides its initial states:
//   s0            initial spikes [B, N] (any real values; default zeros)
//   the neuron options above
//   <save_flag>   false: the low-memory mode. Autograd keeps nothing of size
//                 T*B*N beyond the returned spikes; the backward recomputes
//                 the states (exactly)
//   lengths       [B] integers: row b takes steps t < lengths[b] only (a
//                 variable-length batch); its later steps output 0
//   delays        recurrent delays (README, "Recurrent delays"; on CUDA
//                 only with TORCH_EXT_CUDA_DELAYS=1, never run on a GPU):
//                 [N] per source neuron or [N, N] per synapse, read
//                 through a triangular kernel of spread delay_sigma
//                 (0-dim or [N]; none: 0) over the taps 1..max_delay; s0
//                 may then be the spike history [max_delay, B, N]
//   rec_mask      [B, N]: multiplies every step's recurrent input
#define TORCH_EXT_CALL_OPTIONS(save_flag, default_reset, default_detach_reset) \
  TORCH_ARG(std::optional<at::Tensor>, s0) = std::nullopt;                     \
  TORCH_EXT_NEURON_OPTIONS(default_reset, default_detach_reset);               \
  TORCH_ARG(bool, save_flag) = true;                                           \
  TORCH_ARG(std::optional<at::Tensor>, lengths) = std::nullopt;                \
  TORCH_ARG(std::optional<at::Tensor>, delays) = std::nullopt;                 \
  TORCH_ARG(std::optional<int64_t>, max_delay) = std::nullopt;                 \
  TORCH_ARG(std::optional<at::Tensor>, delay_sigma) = std::nullopt;            \
  TORCH_ARG(std::optional<at::Tensor>, rec_mask) = std::nullopt

namespace torch_ext {

// Options of recurrent_lif beyond its tensors, with chainable setters:
// RecurrentLIFFuncOptions().reset("zero").surrogate("atan").
struct RecurrentLIFFuncOptions {
  // Initial membrane [B, N] (default zeros).
  TORCH_ARG(std::optional<at::Tensor>, u0) = std::nullopt;
  TORCH_EXT_CALL_OPTIONS(save_membrane, "subtract", false);
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
  TORCH_EXT_STACK_OPTIONS;
  // Initial values of the decay (kept in [0, 1] by clamping) and the threshold.
  TORCH_ARG(double, alpha) = 0.9;
  TORCH_ARG(double, theta) = 1.0;
  // Learnable alpha/theta become parameters; otherwise they are buffers.
  TORCH_ARG(bool, learn_alpha) = false;
  TORCH_ARG(bool, learn_theta) = false;
  // One alpha and theta per neuron ([N]) instead of one for the layer.
  TORCH_ARG(bool, per_neuron) = false;
  TORCH_EXT_NEURON_OPTIONS("subtract", false);
  // false: the low-memory mode (see RecurrentLIFFuncOptions).
  TORCH_ARG(bool, save_membrane) = true;
  // The Python module's return_membrane: in C++ call forward_with_membrane.
  TORCH_ARG(bool, return_membrane) = false;
};

// A recurrent layer of LIF neurons, or a stack of L of them, like
// torch::nn::RNN: it keeps no state between calls. Parameters per layer (the
// names of the Python module, so a state_dict saved in Python loads by name:
// w_in, w_rec, bias, alpha, theta for L = 1; w_in_l0, ..., theta_l{L-1} for
// L > 1): w_in [N, F] ([N, N] above layer 0), w_rec [N, N] ([N] one-to-one,
// absent with "none"), bias [N], alpha and theta [] or [N] (parameters when
// learnable, else buffers). Initialised like the Python module: uniform with
// bound 1/sqrt(fan-in) for w_in and bias, 1/sqrt(hidden_size) for w_rec.
class RecurrentLIFImpl : public torch::nn::Cloneable<RecurrentLIFImpl> {
 public:
  // (u, s): membrane and spikes, each [B, N] for one layer, [L, B, N] for
  // L > 1 ([N] and [L, N] for unbatched input). An undefined tensor (or no
  // state) means zeros.
  using State = std::tuple<at::Tensor, at::Tensor>;

  RecurrentLIFImpl(int64_t in_features, int64_t hidden_size)
      : RecurrentLIFImpl(RecurrentLIFOptions(in_features, hidden_size)) {}
  explicit RecurrentLIFImpl(const RecurrentLIFOptions& options);

  // x: [T, B, F] ([B, T, F] with batch_first) or unbatched [T, F].
  // lengths: [B] integers in [0, T]; row b takes steps t < lengths[b] only
  // (its later spikes are 0) and its final state is the one after its own
  // last step (the given one where its length is 0).
  // Returns (spikes of the top layer, shaped like x with N features; the
  // final state of every layer, shaped like `state`). With T = 0 the state
  // returned is the one given (or zeros).
  std::tuple<at::Tensor, State> forward(const at::Tensor& x,
                                        const std::optional<State>& state = std::nullopt,
                                        const std::optional<at::Tensor>& lengths = std::nullopt);
  // The same with the top layer's membrane too, shaped like the spikes (in
  // the compute dtype): (spikes, membrane, state), what the Python module
  // returns with return_membrane=True (options().return_membrane() only
  // records that choice; a C++ function has one return type).
  std::tuple<at::Tensor, at::Tensor, State> forward_with_membrane(
      const at::Tensor& x, const std::optional<State>& state = std::nullopt,
      const std::optional<at::Tensor>& lengths = std::nullopt);

  void reset() override;             // (re)creates the parameters and buffers
  void reset_parameters();           // initial values, as the Python module
  TORCH_EXT_DELAY_METHODS;
  void pretty_print(std::ostream& stream) const override;

  struct Layer {
    at::Tensor w_in, w_rec, bias, alpha, theta;  // w_rec, bias undefined when absent
    at::Tensor delays, delay_spread;  // undefined without recurrent delays
  };

  RecurrentLIFOptions options;
  std::vector<Layer> layers;  // layers[l]: the tensors of layer l
  // Layer 0's tensors (the whole layer for num_layers = 1).
  at::Tensor w_in, w_rec, bias, alpha, theta;
};

TORCH_MODULE(RecurrentLIF);

// Options of recurrent_adlif beyond its tensors (the adaptive neuron's
// defaults: reset "zero", detach_reset true).
struct RecurrentAdLIFFuncOptions {
  // Initial membrane and adaptation, each [B, N] (default zeros).
  TORCH_ARG(std::optional<at::Tensor>, v0) = std::nullopt;
  TORCH_ARG(std::optional<at::Tensor>, a0) = std::nullopt;
  TORCH_EXT_CALL_OPTIONS(save_state, "zero", true);
};

// Runs a recurrent layer of adaptive (SE-adLIF) neurons over a sequence:
//   V[t] = alpha reset(V[t-1]) + (1 - alpha) (I[t] + S[t-1] @ w_rec.T - A[t-1])
//   S[t] = H(V[t] - theta)
//   A[t] = beta A[t-1] + (1 - beta) (a reset(V[t]) + b S[t])
// x, w_in, w_rec and bias as for recurrent_lif; alpha, beta (decays in
// [0, 1]), a, b and theta each 0-dim or [N]. Returns (spikes, membrane V,
// adaptation A), each [T, B, N]; (V[-1], A[-1], S[-1]) passed as (v0, a0, s0)
// continues the sequence.
std::tuple<at::Tensor, at::Tensor, at::Tensor> recurrent_adlif(
    const at::Tensor& x, const std::optional<at::Tensor>& w_in,
    const std::optional<at::Tensor>& w_rec, const std::optional<at::Tensor>& bias,
    const at::Tensor& alpha, const at::Tensor& beta, const at::Tensor& a, const at::Tensor& b,
    const at::Tensor& theta, const RecurrentAdLIFFuncOptions& options = {});

// The same with the parameters as numbers.
std::tuple<at::Tensor, at::Tensor, at::Tensor> recurrent_adlif(
    const at::Tensor& x, const std::optional<at::Tensor>& w_in,
    const std::optional<at::Tensor>& w_rec, const std::optional<at::Tensor>& bias = std::nullopt,
    double alpha = 0.95, double beta = 0.99, double a = 0.5, double b = 1.0, double theta = 1.0,
    const RecurrentAdLIFFuncOptions& options = {});

// Options of the RecurrentAdLIF module, named like the Python constructor's arguments.
struct RecurrentAdLIFOptions {
  RecurrentAdLIFOptions(int64_t in_features, int64_t hidden_size);
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, hidden_size);
  TORCH_EXT_STACK_OPTIONS;
  // The ranges the module keeps the time constants (in steps of dt), a and b in.
  TORCH_ARG(std::vector<double>, tau_u_range) = std::vector<double>{5.0, 25.0};
  TORCH_ARG(std::vector<double>, tau_w_range) = std::vector<double>{60.0, 300.0};
  TORCH_ARG(std::vector<double>, a_range) = std::vector<double>{0.0, 1.0};
  TORCH_ARG(std::vector<double>, b_range) = std::vector<double>{0.0, 2.0};
  // a and b enter the op as q * a and q * b.
  TORCH_ARG(double, q) = 120.0;
  TORCH_ARG(double, theta) = 1.0;
  TORCH_ARG(double, dt) = 1.0;
  TORCH_EXT_NEURON_OPTIONS("zero", true);
  // false: autograd keeps only the spikes; the backward recomputes the states.
  TORCH_ARG(bool, save_state) = true;
};

// A recurrent layer (or a stack of L) of SE-adLIF neurons, with the Python
// module's parameterisation and names: per layer w_in, w_rec, bias and the
// per-neuron tau_u, tau_w (interpolation weights in [0, 1] between the ends
// of tau_u_range / tau_w_range), a and b (kept in a_range / b_range), names
// suffixed _l{l} for L > 1. forward() follows RecurrentLIF's conventions;
// the state is (v, a, s).
class RecurrentAdLIFImpl : public torch::nn::Cloneable<RecurrentAdLIFImpl> {
 public:
  using State = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

  RecurrentAdLIFImpl(int64_t in_features, int64_t hidden_size)
      : RecurrentAdLIFImpl(RecurrentAdLIFOptions(in_features, hidden_size)) {}
  explicit RecurrentAdLIFImpl(const RecurrentAdLIFOptions& options);

  std::tuple<at::Tensor, State> forward(const at::Tensor& x,
                                        const std::optional<State>& state = std::nullopt,
                                        const std::optional<at::Tensor>& lengths = std::nullopt);

  void reset() override;
  void reset_parameters();  // the paper's initialisation, as the Python module
  TORCH_EXT_DELAY_METHODS;
  void pretty_print(std::ostream& stream) const override;

  struct Layer {
    at::Tensor w_in, w_rec, bias, tau_u, tau_w, a, b;  // w_rec, bias undefined when absent
    at::Tensor delays, delay_spread;  // undefined without recurrent delays
  };
  // The op's per-neuron alpha, beta, a and b of layer l, from its parameters
  // kept in range (differentiable).
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> neuron_params(int64_t l) const;

  RecurrentAdLIFOptions options;
  std::vector<Layer> layers;
};

TORCH_MODULE(RecurrentAdLIF);

// Options of recurrent_cubalif beyond its tensors.
struct RecurrentCubaLIFFuncOptions {
  // Initial membrane and synaptic current, each [B, N] (default zeros).
  TORCH_ARG(std::optional<at::Tensor>, u0) = std::nullopt;
  TORCH_ARG(std::optional<at::Tensor>, j0) = std::nullopt;
  TORCH_EXT_CALL_OPTIONS(save_state, "subtract", false);
};

// Runs a recurrent layer of current-based LIF neurons (CUBA; NIR's CubaLIF,
// snnTorch's RSynaptic) over a sequence:
//   J[t] = alpha_syn J[t-1] + I[t] + S[t-1] @ w_rec.T
//   U[t] = alpha U[t-1] + J[t] - theta R[t-1]     (reset "subtract"; "zero", "none" as LIF)
//   S[t] = H(U[t] - theta)
// x, w_in, w_rec and bias as for recurrent_lif; alpha, alpha_syn (decays in
// [0, 1]) and theta each 0-dim or [N]. Returns (spikes, membrane U, current
// J), each [T, B, N]; (U[-1], J[-1], S[-1]) passed as (u0, j0, s0) continues
// the sequence.
std::tuple<at::Tensor, at::Tensor, at::Tensor> recurrent_cubalif(
    const at::Tensor& x, const std::optional<at::Tensor>& w_in,
    const std::optional<at::Tensor>& w_rec, const std::optional<at::Tensor>& bias,
    const at::Tensor& alpha, const at::Tensor& alpha_syn, const at::Tensor& theta,
    const RecurrentCubaLIFFuncOptions& options = {});

// The same with the parameters as numbers.
std::tuple<at::Tensor, at::Tensor, at::Tensor> recurrent_cubalif(
    const at::Tensor& x, const std::optional<at::Tensor>& w_in,
    const std::optional<at::Tensor>& w_rec, const std::optional<at::Tensor>& bias = std::nullopt,
    double alpha = 0.9, double alpha_syn = 0.8, double theta = 1.0,
    const RecurrentCubaLIFFuncOptions& options = {});

// Options of the RecurrentCubaLIF module: RecurrentLIF's, plus the synaptic decay.
struct RecurrentCubaLIFOptions {
  RecurrentCubaLIFOptions(int64_t in_features, int64_t hidden_size);
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, hidden_size);
  TORCH_EXT_STACK_OPTIONS;
  // Initial values of the decays (kept in [0, 1] by clamping) and the
  // threshold; learnable ones are parameters, the others buffers; [N] with
  // per_neuron.
  TORCH_ARG(double, alpha) = 0.9;
  TORCH_ARG(double, alpha_syn) = 0.8;
  TORCH_ARG(double, theta) = 1.0;
  TORCH_ARG(bool, learn_alpha) = false;
  TORCH_ARG(bool, learn_alpha_syn) = false;
  TORCH_ARG(bool, learn_theta) = false;
  TORCH_ARG(bool, per_neuron) = false;
  TORCH_EXT_NEURON_OPTIONS("subtract", false);
  // false: the low-memory mode (the backward recomputes U and J).
  TORCH_ARG(bool, save_state) = true;
  // The Python module's return_membrane: in C++ call forward_with_membrane.
  TORCH_ARG(bool, return_membrane) = false;
};

// A recurrent layer (or a stack of L) of current-based LIF neurons, with
// RecurrentLIF's conventions, parameters (plus alpha_syn, [] or [N], a
// parameter with learn_alpha_syn) and names; the state is (u, j, s).
class RecurrentCubaLIFImpl : public torch::nn::Cloneable<RecurrentCubaLIFImpl> {
 public:
  using State = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

  RecurrentCubaLIFImpl(int64_t in_features, int64_t hidden_size)
      : RecurrentCubaLIFImpl(RecurrentCubaLIFOptions(in_features, hidden_size)) {}
  explicit RecurrentCubaLIFImpl(const RecurrentCubaLIFOptions& options);

  std::tuple<at::Tensor, State> forward(const at::Tensor& x,
                                        const std::optional<State>& state = std::nullopt,
                                        const std::optional<at::Tensor>& lengths = std::nullopt);
  std::tuple<at::Tensor, at::Tensor, State> forward_with_membrane(
      const at::Tensor& x, const std::optional<State>& state = std::nullopt,
      const std::optional<at::Tensor>& lengths = std::nullopt);

  void reset() override;
  void reset_parameters();  // as RecurrentLIF's (alpha_syn filled with its option)
  TORCH_EXT_DELAY_METHODS;
  void pretty_print(std::ostream& stream) const override;

  struct Layer {
    at::Tensor w_in, w_rec, bias, alpha, alpha_syn, theta;  // w_rec, bias undefined when absent
    at::Tensor delays, delay_spread;  // undefined without recurrent delays
  };

  RecurrentCubaLIFOptions options;
  std::vector<Layer> layers;
};

TORCH_MODULE(RecurrentCubaLIF);

// Copies a state_dict into a module's parameters and buffers by name (each
// converted to the module tensor's dtype and device), strictly: a missing or
// unexpected name, or a shape that differs, raises an error naming it. The
// file form reads what Python writes with torch.save(dict(module.state_dict()),
// path), so a RecurrentLIF trained in Python runs in C++ (dict(): LibTorch's
// reader cannot read the OrderedDict that state_dict() returns itself).
void load_state_dict(torch::nn::Module& module, const c10::Dict<std::string, at::Tensor>& state_dict);
void load_state_dict(torch::nn::Module& module, const std::string& path);

// A dict of names to tensors that Python wrote with torch.save (a plain
// dict: see load_state_dict), e.g. a data set. A file that is not one raises
// an error saying what it holds.
c10::Dict<std::string, at::Tensor> load_tensors(const std::string& path);

}  // namespace torch_ext
