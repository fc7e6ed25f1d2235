// The device-independent part of every neuron op (driver.h): the checks,
// the input projection, the states for the backward, the input and weight
// gradients around the backend's time loops, and the Meta kernels' shapes.
#include "driver.h"

#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <limits>

#include "blas.h"
#include "buffers.h"

namespace torch_ext {

// Every check names the op (`op`, in scope) and the argument, so
// `TORCH_CHECK_*(cond, ARG(name), ...)`.
#define ARG(name) op, ": argument '", name, "' "

at::ScalarType compute_dtype(at::ScalarType input_dtype) {
  return input_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

namespace {

#define TORCH_EXT_NAME(name, text, ...) "'" text "', "
constexpr const char* kResetNames = TORCH_EXT_FOR_EACH_RESET(TORCH_EXT_NAME);
constexpr const char* kSurrogateNames = TORCH_EXT_FOR_EACH_SURROGATE(TORCH_EXT_NAME);
#undef TORCH_EXT_NAME

// "'a', 'b', " -> "one of 'a', 'b'"
std::string one_of(const char* names) {
  const std::string list(names);
  return "must be one of " + list.substr(0, list.size() - 2);
}

Reset parse_reset(c10::string_view name, const char* op) {
#define TORCH_EXT_MATCH(enumerator, text) \
  if (name == text) return Reset::enumerator;
  TORCH_EXT_FOR_EACH_RESET(TORCH_EXT_MATCH)
#undef TORCH_EXT_MATCH
  TORCH_CHECK_VALUE(false, ARG("reset"), one_of(kResetNames), ", got '", std::string(name), "'");
}

// The surrogate and its default slope.
std::pair<Surrogate, double> parse_surrogate(c10::string_view name, const char* op) {
#define TORCH_EXT_MATCH(enumerator, text, slope) \
  if (name == text) return {Surrogate::enumerator, slope};
  TORCH_EXT_FOR_EACH_SURROGATE(TORCH_EXT_MATCH)
#undef TORCH_EXT_MATCH
  TORCH_CHECK_VALUE(false, ARG("surrogate"), one_of(kSurrogateNames),
                    " (callables are not supported), got '", std::string(name), "'");
}

}  // namespace

Options check_options(const char* op, c10::string_view reset, bool detach_reset,
                      c10::string_view surrogate, std::optional<double> slope,
                      at::ScalarType compute) {
  const auto [kind, default_slope] = parse_surrogate(surrogate, op);
  const double k = slope.value_or(default_slope);
  // A slope the compute dtype cannot hold would become inf and the gradients NaN.
  const double largest = compute == at::kDouble ? std::numeric_limits<double>::max()
                                                : std::numeric_limits<float>::max();
  TORCH_CHECK_VALUE(std::isfinite(k) && k > 0 && k <= largest, ARG("slope"),
                    "must be finite, > 0 and at most ", largest, " (the largest ", compute,
                    "), got ", k);
  return Options{parse_reset(reset, op), detach_reset, kind, k};
}

namespace {

// Sizes are SymInts so that the same checks serve the Meta kernels, which
// torch.compile and torch.export run with symbolic shapes.
struct Dims {
  c10::SymInt T, B, F, N;
  at::ScalarType compute;
  const char* op;  // for the messages
};

void check_on_x_device(const char* op, const at::Tensor& t, const char* name,
                       const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.device() == x.device(), ARG(name), "is on ", t.device(), " but x is on ",
                    x.device(), "; all tensors must be on one device");
}

// Same device as x, and either x's dtype or the compute dtype (the latter lets
// float16 runs pass float32 state and parameters).
void check_like_x(const char* op, const at::Tensor& t, const char* name, const at::Tensor& x,
                  at::ScalarType compute, bool allow_compute_dtype) {
  check_on_x_device(op, t, name, x);
  const bool ok =
      t.scalar_type() == x.scalar_type() || (allow_compute_dtype && t.scalar_type() == compute);
  TORCH_CHECK_TYPE(ok, ARG(name), "has dtype ", t.scalar_type(), " but x has dtype ",
                   x.scalar_type(),
                   allow_compute_dtype && compute != x.scalar_type()
                       ? c10::str(" (", compute, " is accepted too)")
                       : std::string());
}

void check_shape(const char* op, const at::Tensor& t, const char* name,
                 c10::SymIntArrayRef expected, const char* meaning) {
  TORCH_CHECK_VALUE(t.sym_sizes() == expected, ARG(name), "must have shape ", expected, " ",
                    meaning, ", got ", t.sym_sizes());
}

void check_neuron_param(const at::Tensor& t, const char* name, const at::Tensor& x, const Dims& d) {
  const char* op = d.op;
  check_like_x(op, t, name, x, d.compute, /*allow_compute_dtype=*/true);
  TORCH_CHECK_VALUE(t.dim() == 0 || (t.dim() == 1 && t.sym_size(0) == d.N), ARG(name),
                    "must be a float, a 0-dim tensor or a tensor of shape [N] = [", d.N,
                    "], got shape ", t.sym_sizes());
}

}  // namespace

void check_required(const NeuronInfo& neuron, const at::Tensor& x,
                    const std::vector<at::Tensor>& params) {
  const char* op = neuron.op();
  TORCH_CHECK_VALUE(x.defined(), ARG("x"), "is required, got an undefined tensor");
  for (int k = 0; k < neuron.num_params; ++k) {
    TORCH_CHECK_VALUE(k < static_cast<int>(params.size()) && params[k].defined(),
                      ARG(neuron.params[k].name), "is required, got an undefined tensor");
  }
}

namespace {

// Each weight (w_in, w_rec, bias) has x's dtype or, with a float32 x,
// bfloat16 or float16 (what torch.autocast passes: it casts the weights and
// leaves a float32 x as it is; products_dtype); the low-precision ones share
// one dtype.
void check_weight_dtypes(const char* op, const OpTensors& in) {
  const at::Tensor& x = in.x;
  const char* low_name = nullptr;
  at::ScalarType low = x.scalar_type();
  const std::pair<const OptionalTensor*, const char*> weights[] = {
      {&in.w_in, "w_in"}, {&in.w_rec, "w_rec"}, {&in.bias, "bias"}};
  for (const auto& [weight, name] : weights) {
    if (!weight->has_value()) continue;
    check_on_x_device(op, **weight, name, x);
    const at::ScalarType dtype = (*weight)->scalar_type();
    if (dtype == x.scalar_type()) continue;
    TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat && is_low_precision(dtype), ARG(name),
                     "has dtype ", dtype, " but x has dtype ", x.scalar_type(),
                     x.scalar_type() == at::kFloat
                         ? " (bfloat16 or float16 weights are accepted with a float32 x)"
                         : "");
    TORCH_CHECK_TYPE(low_name == nullptr || dtype == low, ARG(name), "has dtype ", dtype,
                     " but ", low_name, " has dtype ", low,
                     "; the low-precision weights must share one dtype");
    low_name = name;
    low = dtype;
  }
}

// The checks of every op's tensors: x, the weights, the model's parameters
// and its initial states (each [B, N]).
Dims check_inputs(const NeuronInfo& neuron, const OpTensors& in) {
  const char* op = neuron.op();
  const at::Tensor& x = in.x;
  check_required(neuron, x, in.params);
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), ARG("x"),
                   "must be a floating-point tensor (float16, bfloat16, float32 or float64), got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 3, ARG("x"), "must have shape [T, B, F] (3 dims), got ",
                    x.sym_sizes());
  Dims d{x.sym_size(0), x.sym_size(1), x.sym_size(2), x.sym_size(2),
         compute_dtype(x.scalar_type()), op};
  const OptionalTensor &w_in = in.w_in, &w_rec = in.w_rec, &bias = in.bias;
  check_weight_dtypes(op, in);
  if (w_in.has_value()) {
    TORCH_CHECK_VALUE(w_in->dim() == 2 && w_in->sym_size(1) == d.F, ARG("w_in"),
                      "must have shape [N, F] with F = x.shape[2] = ", d.F, ", got ",
                      w_in->sym_sizes());
    d.N = w_in->sym_size(0);
  }
  if (w_rec.has_value()) {
    const bool square = w_rec->dim() == 2 && w_rec->sym_size(0) == d.N && w_rec->sym_size(1) == d.N;
    const bool vector = w_rec->dim() == 1 && w_rec->sym_size(0) == d.N;
    TORCH_CHECK_VALUE(square || vector, ARG("w_rec"), "must have shape [N, N] = [", d.N, ", ", d.N,
                      "] (all-to-all) or [N] = [", d.N, "] (one-to-one) with ",
                      w_in.has_value() ? "N = w_in.shape[0]" : "N = x.shape[2] (w_in is None)",
                      ", got ", w_rec->sym_sizes());
  }
  if (bias.has_value()) {
    check_shape(op, *bias, "bias", {d.N}, "[N]");
  }
  for (int k = 0; k < neuron.num_params; ++k) {
    check_neuron_param(in.params[k], neuron.params[k].name, x, d);
  }
  for (int k = 0; k < neuron.num_params; ++k) {
    const at::Tensor& p = in.params[k];
    if (neuron.params[k].decay && p.device().is_cpu()) {
      // On CUDA this would cost a device sync; the modules keep decays in range there.
      TORCH_CHECK_VALUE(at::logical_and(p >= 0, p <= 1).all().item<bool>(),
                        ARG(neuron.params[k].name), "must lie in [0, 1] (and not be NaN)");
    }
  }
  auto check_state = [&](const OptionalTensor& state, const char* name) {
    if (state.has_value()) {
      check_like_x(op, *state, name, x, d.compute, true);
      check_shape(op, *state, name, {d.B, d.N}, "[B, N]");
    }
  };
  for (int k = 0; k < neuron.num_states; ++k) check_state(in.initial[k], neuron.states[k].initial);
  // (With delays s0 may be the spike history [D, B, N]: check_delays.)
  if (!(in.delays.has_value() && in.s0.has_value() && in.s0->dim() == 3)) check_state(in.s0, "s0");
  return d;
}

// The recurrent delays' arguments (README, "Recurrent delays"). Their values
// are read on CPU only (on CUDA that would synchronise with the host).
void check_delays(const OpTensors& in, const OpSettings& s, const Dims& d) {
  const char* op = d.op;
  const at::Tensor& x = in.x;
  const OptionalTensor &delays = in.delays, &sigma = in.delay_sigma, &mask = in.rec_mask;
  const bool one_to_one = in.w_rec.has_value() && in.w_rec->dim() == 1;
  auto read_values = [&](const at::Tensor& t) { return t.device().is_cpu() && t.numel() > 0; };
  // The CUDA loops' delays (cuda/loops.cu) have never run on a GPU: off
  // unless TORCH_EXT_CUDA_DELAYS is "1" at the call.
  const char* cuda_delays = std::getenv("TORCH_EXT_CUDA_DELAYS");
  TORCH_CHECK_NOT_IMPLEMENTED(
      !(x.is_cuda() && (delays.has_value() || mask.has_value())) ||
          (cuda_delays != nullptr && std::string(cuda_delays) == "1"),
      op, ": argument '", delays.has_value() ? "delays" : "rec_mask",
      "': recurrent delays and masks on CUDA have never run on a GPU, so they are off; "
      "TORCH_EXT_CUDA_DELAYS=1 turns on the untested kernels");
  if (mask.has_value()) {
    TORCH_CHECK_VALUE(in.w_rec.has_value(), ARG("rec_mask"), "needs a recurrent weight 'w_rec'");
    check_like_x(op, *mask, "rec_mask", x, d.compute, true);
    check_shape(op, *mask, "rec_mask", {d.B, d.N}, "[B, N]");
  }
  if (!delays.has_value()) {
    TORCH_CHECK_VALUE(!s.max_delay.has_value(), ARG("max_delay"), "is given without 'delays'");
    TORCH_CHECK_VALUE(!sigma.has_value(), ARG("delay_sigma"), "is given without 'delays'");
    return;
  }
  TORCH_CHECK_VALUE(in.w_rec.has_value(), ARG("delays"), "needs a recurrent weight 'w_rec'");
  TORCH_CHECK_VALUE(s.max_delay.has_value() && *s.max_delay >= 1, ARG("max_delay"),
                    "must be an int >= 1 with 'delays', got ",
                    s.max_delay.has_value() ? std::to_string(*s.max_delay) : "None");
  const int64_t D = *s.max_delay;
  check_like_x(op, *delays, "delays", x, d.compute, true);
  const bool per_source = delays->dim() == 1 && delays->sym_size(0) == d.N;
  const bool per_synapse =
      delays->dim() == 2 && delays->sym_size(0) == d.N && delays->sym_size(1) == d.N;
  TORCH_CHECK_VALUE(per_source || per_synapse, ARG("delays"),
                    "must have shape [N] (per source neuron) or [N, N] (per synapse) with N = ",
                    d.N, ", got ", delays->sym_sizes());
  TORCH_CHECK_VALUE(!(per_synapse && one_to_one), ARG("delays"),
                    "of shape [N, N] (per synapse) with a one-to-one [N] 'w_rec': use [N] "
                    "delays (per source neuron)");
  TORCH_CHECK_VALUE(!read_values(*delays) || at::isfinite(*delays).all().item<bool>(),
                    ARG("delays"), "must be finite");
  if (sigma.has_value()) {
    check_like_x(op, *sigma, "delay_sigma", x, d.compute, true);
    TORCH_CHECK_VALUE(sigma->dim() == 0 || (sigma->dim() == 1 && sigma->sym_size(0) == d.N),
                      ARG("delay_sigma"), "must be a float, a 0-dim tensor or [N] = [", d.N,
                      "], got shape ", sigma->sym_sizes());
    TORCH_CHECK_VALUE(!read_values(*sigma) ||
                          at::logical_and(at::isfinite(*sigma), *sigma >= 0).all().item<bool>(),
                      ARG("delay_sigma"), "must be finite and >= 0");
  }
  if (in.s0.has_value() && in.s0->dim() == 3) {
    check_like_x(op, *in.s0, "s0", x, d.compute, true);
    check_shape(op, *in.s0, "s0", {D, d.B, d.N},
                "[max_delay, B, N] (the spike history) or [B, N]");
  } else if (in.s0.has_value()) {
    check_like_x(op, *in.s0, "s0", x, d.compute, true);
    check_shape(op, *in.s0, "s0", {d.B, d.N}, "[B, N] or the spike history [max_delay, B, N]");
  }
}

// lengths: [B] integers on x's device; on CPU also their values (on CUDA that
// would cost a device sync: there a length past T acts as T, below 0 as 0).
void check_lengths(const OptionalTensor& lengths, const at::Tensor& x, const Dims& d) {
  if (!lengths.has_value()) return;
  const char* op = d.op;
  check_on_x_device(op, *lengths, "lengths", x);
  TORCH_CHECK_TYPE(at::isIntegralType(lengths->scalar_type(), /*includeBool=*/false),
                   ARG("lengths"), "must hold integers, got dtype ", lengths->scalar_type());
  check_shape(op, *lengths, "lengths", {d.B}, "[B]");
  if (lengths->device().is_cpu() && lengths->numel() > 0) {
    const int64_t T = x.size(0);
    TORCH_CHECK_VALUE(at::logical_and(*lengths >= 0, *lengths <= T).all().item<bool>(),
                      ARG("lengths"), "must lie in [0, T] = [0, ", T, "], got min ",
                      lengths->min().item<int64_t>(), " and max ", lengths->max().item<int64_t>());
  }
}

Options check_settings(const NeuronInfo& neuron, const OpSettings& s, const Dims& d) {
  return check_options(neuron.op(), s.reset, s.detach_reset, s.surrogate, s.slope, d.compute);
}

// Every check of a forward call: its tensors, lengths and options.
std::pair<Dims, Options> check_call(const NeuronInfo& neuron, const OpTensors& t,
                                    const OpSettings& s) {
  const Dims d = check_inputs(neuron, t);
  check_lengths(t.lengths, t.x, d);
  check_delays(t, s, d);
  // TORCH_EXT_LOW_PRECISION_PRODUCTS is checked at every call, whether or
  // not this one has products to run, so a bad value never goes unnoticed.
  low_precision_path(t.x.scalar_type());
  return {d, check_settings(neuron, s, d)};
}

// Every check of a backward call, in the same order for the real and the Meta
// kernels: the forward's tensors and lengths, the backward's own tensors
// (the forward's outputs and the incoming gradients, each [T, B, N] where
// given), the options.
std::pair<Dims, Options> check_backward_call(const NeuronInfo& neuron, const BackwardTensors& t,
                                             const OpSettings& s) {
  const Dims d = check_inputs(neuron, t.inputs);
  const at::Tensor& x = t.inputs.x;
  check_lengths(t.inputs.lengths, x, d);
  check_delays(t.inputs, s, d);
  const char* op = d.op;
  const std::vector<c10::SymInt> out_shape{d.T, d.B, d.N};
  auto check_output = [&](const OptionalTensor& g, const char* name) {
    if (g.has_value()) {
      check_like_x(op, *g, name, x, d.compute, true);
      check_shape(op, *g, name, out_shape, "[T, B, N]");
    }
  };
  check_output(t.spikes, "spikes");
  for (int k = 0; k < neuron.num_states; ++k) check_output(t.states[k], neuron.states[k].output);
  check_output(t.grad_spikes, "grad_spikes");
  for (int k = 0; k < neuron.num_states; ++k) {
    check_output(t.grad_states[k], ("grad_" + std::string(neuron.states[k].output)).c_str());
  }
  return {d, check_settings(neuron, s, d)};
}

at::Tensor compute_contiguous(const at::Tensor& t, at::ScalarType compute) {
  return t.to(compute).contiguous();
}

// An incoming gradient as the loops read it (loop.h): in the compute dtype,
// unit stride along N, and the steps or rows it repeats left repeated (stride
// 0). The gradient of spikes.sum() or spikes.sum(0) is such a broadcast;
// writing it out would cost a pass and T*B*N fresh memory, and fresh memory
// costs page faults at every call once the allocator has returned it.
at::Tensor incoming_gradient(const at::Tensor& g, at::ScalarType compute) {
  at::Tensor distinct = g;
  for (int64_t d = 0; d < 2; ++d) {
    if (g.stride(d) == 0) distinct = distinct.narrow(d, 0, std::min<int64_t>(g.size(d), 1));
  }
  return compute_contiguous(distinct, compute).expand(g.sizes());
}

// The delays' kernel over the taps k = 1..D (README, "Recurrent delays"):
// K = kappa(delta - k; s), and its derivatives by delta (Kx) and by s (Ks)
// with the contract's values at the kinks; [D, N] per source, [D, N, N] per
// synapse (row i = into i), in the compute dtype. A mask without delays: K = 1
// ([1, N]). K is kappa written as max(0, a) / s^2, a = s - |x|: the bits of
// the reference's (a/2 + |a|/2) / (s s).
struct DelayKernel {
  at::Tensor K, Kx, Ks;
  bool per_synapse() const { return K.dim() == 3; }
};
DelayKernel delay_kernel(const OpTensors& t, std::optional<int64_t> max_delay, int64_t N,
                         at::ScalarType compute, bool derivatives) {
  const auto opts = t.x.options().dtype(compute);
  if (!t.delays.has_value()) return {at::ones({1, N}, opts), at::Tensor(), at::Tensor()};
  const at::Tensor delta = t.delays->to(compute);
  const int64_t D = *max_delay;
  std::vector<int64_t> shape{D, 1};
  if (delta.dim() == 2) shape.push_back(1);
  const at::Tensor x = delta.unsqueeze(0) - at::arange(1, D + 1, opts).view(shape);
  at::Tensor s = t.delay_sigma.has_value() ? 1 + t.delay_sigma->to(compute)
                                           : at::ones({}, opts);  // per source j: the last dim
  const at::Tensor a = s - x.abs(), s2 = s * s;
  DelayKernel k{a.clamp_min(0) / s2, at::Tensor(), at::Tensor()};
  if (derivatives) {
    const at::Tensor h = (a > 0).to(compute) + 0.5 * (a == 0).to(compute);
    k.Kx = -x.sign() * h / s2;
    k.Ks = h / s2 - 2 * (k.K / s);  // (2 max(0, a) / s^3 would overflow for a huge s)
  }
  return k;
}

// The environment variable TORCH_EXT_BINARY_INPUTS, read at each call:
// "dense" never gathers, "gather" gathers any binary x whatever its density;
// unset (or anything else): below the crossover density, on CPU only. (The
// CUDA gather has never run on a GPU: it stays off unless asked for.)
enum class GatherMode { kNever, kByDensity, kAlways };
GatherMode gather_mode() {
  const char* mode = std::getenv("TORCH_EXT_BINARY_INPUTS");
  if (mode != nullptr && std::string(mode) == "dense") return GatherMode::kNever;
  if (mode != nullptr && std::string(mode) == "gather") return GatherMode::kAlways;
  return GatherMode::kByDensity;
}

// Per source, whether the loops sum over the taps by events at the spikes
// (loop.h, LoopInputs::spike_events; the spikes are binary, the caller checks
// the history and D): always with TORCH_EXT_BINARY_INPUTS=gather, never with
// "dense", by default where they pay. An event costs about what a dense tap
// costs per neuron, with a branch, so they pay from D = 16 taps on with a
// kernel at most D / 4 taps wide (measured, benchmarks/delays.py's case on a
// 2-core AMD EPYC: at D = 5 the events took 5 % longer, at D = 25 10 % less
// time; about even at D = 12 and 16).
bool use_spike_events(const at::Tensor& K, GatherMode mode) {
  if (mode != GatherMode::kByDensity) return mode == GatherMode::kAlways;
  const int64_t D = K.size(0), N = K.size(1);
  const double taps_per_neuron = K.ne(0).sum().item<double>() / static_cast<double>(N);
  return D >= 16 && taps_per_neuron <= D / 4.0;
}

// The loops' inputs: the tensors in the compute dtype, contiguous; with
// delays or a mask the taps (loop.h) and the spike history, s0 then S[0].
LoopInputs loop_inputs(const OpTensors& t, int64_t N, at::ScalarType compute, Reset reset,
                       std::optional<int64_t> max_delay) {
  const int64_t B = t.x.size(1);
  const auto opts = t.x.options().dtype(compute);
  auto state = [&](const OptionalTensor& s) {
    return s.has_value() ? compute_contiguous(*s, compute) : at::zeros({B, N}, opts);
  };
  const bool history_given = t.delays.has_value() && t.s0.has_value() && t.s0->dim() == 3;
  LoopInputs in{t.w_rec.has_value() ? compute_contiguous(*t.w_rec, compute) : at::Tensor(),
                {}, {}, history_given ? compute_contiguous((*t.s0)[-1], compute) : state(t.s0),
                reset,
                t.lengths.has_value() ? t.lengths->to(at::kLong).contiguous() : at::Tensor()};
  for (const at::Tensor& p : t.params) in.params.push_back(compute_contiguous(p, compute));
  for (const OptionalTensor& s : t.initial) in.initial.push_back(state(s));
  if (t.delayed()) {
    const DelayKernel k = delay_kernel(t, max_delay, N, compute, false);
    const int64_t D = k.K.size(0);
    // Per synapse the loop adds rows of W_k.T (the weights out of each source).
    in.delay_taps = k.per_synapse() ? (in.w_rec.unsqueeze(0) * k.K).transpose(1, 2).contiguous()
                                    : k.K.contiguous();
    in.history = history_given ? compute_contiguous(*t.s0, compute)
                               : at::cat({at::zeros({D - 1, B, N}, opts), in.s0.unsqueeze(0)});
    if (t.rec_mask.has_value()) in.rec_mask = compute_contiguous(*t.rec_mask, compute);
    in.spike_events = !k.per_synapse() && D <= kMaxBitDelay && t.x.is_cpu() &&
                      use_spike_events(k.K, gather_mode()) &&
                      in.history.eq(0).logical_or(in.history.eq(1)).all().item<bool>();
  }
  return in;
}

// Binary inputs (spikes: every layer above the first of a stack, event
// data) multiply w_in by gathering: the input current adds the w_in columns
// of the active inputs, grad_w_in sums gU over them (blas.h, BinaryRows).
// Equal to the dense products up to the order of the sum, and cheaper below
// a density of ones that grows with N: per row the dense products cost ~ F*N,
// the gather ~ F (the scan of x) + ones*N, so the crossover is a - b/N.
// Fitted to the op's forward + backward measured both ways on a 2-core AMD
// EPYC (AVX2), float32 (benchmarks/spike_inputs.py, crossover, three runs;
// noisy): about 5 % at N=128, 15 % at N=256, 20 % at N=512 (F from 128 to
// 700); taken at 80 % of that fit, so that a call near it is not made slower.
double binary_input_crossover(int64_t N) { return 0.2 * (1.0 - 100.0 / static_cast<double>(N)); }

bool may_gather(const at::Tensor& x, GatherMode mode) {
  return (x.is_cpu() && mode != GatherMode::kNever) || (x.is_cuda() && mode == GatherMode::kAlways);
}

}  // namespace

bool may_gather(const at::Tensor& x) { return may_gather(x, gather_mode()); }

namespace {

// The index of a binary x (or that x is not one), kept from a forward for
// its backward, which would otherwise scan x again and pay as much as the
// forward did: the last few, each keyed by x's storage (held weakly: an
// entry never matches once x is freed, and dead entries are dropped at the
// next call), data pointer, offset, sizes, strides, dtype and version
// counter, and the density limit it was built under; at most kEntries
// entries and kBytes of indices. Only backward calls read it; a forward
// always scans (x's memory may have changed without a version bump, through
// numpy say, and a forward must read the values it is given). Inference
// tensors (no version counter, and no backward can follow) are not kept.
class BinaryIndexCache {
 public:
  void put(const at::Tensor& x, double max_density, const std::optional<BinaryRows>& index) {
    if (x.is_inference()) return;
    const std::lock_guard<std::mutex> lock(mutex_);
    drop_dead();
    entries_.push_front(Entry{Key(x, max_density), index});
    int64_t bytes = 0;
    size_t kept = 0;
    for (const Entry& entry : entries_) {
      bytes += entry.bytes();
      if (kept > 0 && (kept >= kEntries || bytes > kBytes)) break;
      ++kept;
    }
    entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(kept), entries_.end());
  }
  std::optional<std::optional<BinaryRows>> get(const at::Tensor& x, double max_density) {
    if (x.is_inference()) return std::nullopt;
    const std::lock_guard<std::mutex> lock(mutex_);
    drop_dead();
    const Key key(x, max_density);
    for (const Entry& entry : entries_) {
      if (entry.key.matches(key)) return entry.index;
    }
    return std::nullopt;
  }

 private:
  static constexpr size_t kEntries = 8;             // the layers of a stack between forward and backward
  static constexpr int64_t kBytes = int64_t{256} << 20;
  struct Key {
    c10::weak_intrusive_ptr<c10::StorageImpl> storage;
    const void* data;
    int64_t offset;
    std::vector<int64_t> sizes, strides;
    at::ScalarType dtype;
    uint32_t version;
    double max_density;
    Key(const at::Tensor& x, double max_density)
        : storage(c10::intrusive_ptr<c10::StorageImpl>::reclaim_copy(
              x.storage().unsafeGetStorageImpl())),
          data(x.const_data_ptr()),
          offset(x.storage_offset()),
          sizes(x.sizes().vec()),
          strides(x.strides().vec()),
          dtype(x.scalar_type()),
          version(static_cast<uint32_t>(x._version())),
          max_density(max_density) {}
    bool matches(const Key& other) const {
      const auto alive = storage.lock();
      return alive && alive.get() == other.storage.lock().get() && data == other.data &&
             offset == other.offset && sizes == other.sizes && strides == other.strides &&
             dtype == other.dtype && version == other.version &&
             max_density == other.max_density;
    }
  };
  struct Entry {
    Key key;
    std::optional<BinaryRows> index;
    int64_t bytes() const {
      return index ? index->offsets.nbytes() + index->active.nbytes() : 0;
    }
  };
  void drop_dead() {
    entries_.erase(std::remove_if(entries_.begin(), entries_.end(),
                                  [](const Entry& e) { return e.key.storage.expired(); }),
                   entries_.end());
  }
  std::mutex mutex_;
  std::deque<Entry> entries_;  // newest first
};

BinaryIndexCache& binary_index_cache() {
  static BinaryIndexCache cache;
  return cache;
}

}  // namespace

std::optional<BinaryRows> binary_input(const at::Tensor& x, const at::Tensor& w_in,
                                       bool backward) {
  const GatherMode mode = gather_mode();
  if (!may_gather(x, mode)) return std::nullopt;
  const double max_density =
      mode == GatherMode::kAlways ? 1.0 : binary_input_crossover(w_in.size(0));
  if (max_density < 0) return std::nullopt;
  std::optional<std::optional<BinaryRows>> kept;
  if (backward) kept = binary_index_cache().get(x, max_density);
  if (!kept) {
    kept = binary_rows(x, max_density);
    binary_index_cache().put(x, max_density, *kept);
  }
  // A non-finite weight times a skipped zero input would be NaN in the dense
  // product: such calls stay dense, so that both agree. (Checked only for a
  // binary x: the scan of any other x stops at its first value.)
  if (*kept && !at::isfinite(w_in).all().item<bool>()) return std::nullopt;
  return *kept;
}

namespace {

// The products with x take x rounded to w_in's dtype (x's own without
// w_in): a float32 x with bfloat16/float16 weights, as torch.autocast
// passes them, is rounded for the products only. They run in that dtype
// with float32 accumulation where low_precision_products says so, else in
// the compute dtype on the rounded values.
at::ScalarType products_dtype(const at::Tensor& x, const OptionalTensor& w_in) {
  return w_in.has_value() ? w_in->scalar_type() : x.scalar_type();
}
at::ScalarType operands_dtype(at::ScalarType products, const at::Tensor& x,
                              at::ScalarType compute) {
  return is_low_precision(products) && low_precision_products(products, x.device()) ? products
                                                                                    : compute;
}
// Rows [first, first + n) of x viewed as [T*B, F], rounded to the products'
// dtype, in dtype (the operands' or the compute dtype), contiguous: x's own
// rows where nothing changes them (unless `copy`) and they lie as in a fresh
// tensor, else a copy placed as those rows of a fresh x converted whole
// would be. So the blocked products give the bits of the product of x
// converted whole, wherever x lies in memory (MKL's results depend on its
// operands' alignment: x = big[1:] would otherwise give other bits than
// x.clone()).
at::Tensor rows_rounded(const at::Tensor& rows, int64_t first, at::ScalarType products,
                        at::ScalarType dtype, bool copy) {
  const int64_t elem = static_cast<int64_t>(rows.element_size());
  const bool placed_as_fresh =
      !rows.is_cpu() ||
      static_cast<int64_t>(reinterpret_cast<uintptr_t>(rows.const_data_ptr()) % 64) ==
          (first * rows.size(1) * elem) % 64;
  if (!copy && rows.scalar_type() == dtype && dtype == products && rows.is_contiguous() &&
      placed_as_fresh) {
    return rows;
  }
  at::Tensor out =
      empty_rows_aligned_as_whole(rows.size(0), rows.size(1), first, rows.options().dtype(dtype));
  if (rows.is_cpu() && rows.scalar_type() == at::kFloat && is_low_precision(products) &&
      (dtype == products || dtype == at::kFloat)) {
    round_through_into(rows, products, out);  // float32 rounded to the products' dtype
  } else if (rows.scalar_type() == products || dtype == products) {
    out.copy_(rows);  // a conversion, or none
  } else {
    out.copy_(rows.to(products));
  }
  return out;
}

// I[t] = x[t] @ w_in.T + bias for all T steps at once, as a [T, B, N] buffer in
// the compute dtype that the time loop then turns into the membrane in place.
// The forward and the low-memory backward's recomputation (`backward`, which
// may reuse the forward's index of a binary x) both call this, so both get
// the same bits.
at::Tensor input_current(const at::Tensor& x, const OptionalTensor& w_in,
                         const OptionalTensor& bias, int64_t N, at::ScalarType compute,
                         bool backward) {
  const int64_t T = x.size(0), B = x.size(1), F = x.size(2);
  at::Tensor current = empty_buffer({T, B, N}, x.options().dtype(compute));
  at::Tensor current_2d = current.view({T * B, N});
  if (w_in.has_value()) {
    // Contiguous whatever the caller's strides: BLAS picks its kernel by
    // layout, and a different kernel may round differently. Low-precision
    // inputs: the product of the rounded operands with float32 accumulation.
    const at::ScalarType products = products_dtype(x, w_in);
    const at::ScalarType operands = operands_dtype(products, x, compute);
    const at::Tensor bias_c = bias.has_value() ? bias->to(compute) : at::Tensor();
    if (const auto binary = binary_input(x, *w_in, backward)) {
      // The rounded operands' values, summed in the compute dtype.
      const at::Tensor w_in_t = w_in->to(operands).to(compute).t().contiguous();
      if (bias_c.defined()) current_2d.copy_(bias_c.expand_as(current_2d));
      binary_mm_out(current_2d, *binary, w_in_t, /*accumulate=*/bias_c.defined());
    } else {
      // x rounded (and converted) block by block as the product reads it;
      // the bias broadcast into each block of rows just before its product.
      const at::Tensor w_in_t = w_in->to(operands).contiguous().t();
      deterministic_mm_out(current_2d, x.reshape({T * B, F}), w_in_t, /*accumulate=*/false,
                           [&](const at::Tensor& rows, int64_t first) {
                             return rows_rounded(rows, first, products, operands, false);
                           },
                           {}, bias_c);
    }
  } else {
    current.copy_(x);
    if (bias.has_value()) current.add_(bias->to(compute));
  }
  return current;
}

// The model's states with the input current in its input state (the loop's
// input, which it turns into that state in place) and the others empty.
std::vector<at::Tensor> states_with_input(const NeuronInfo& neuron, const OpTensors& t, int64_t N,
                                          at::ScalarType compute, bool backward) {
  const int64_t T = t.x.size(0), B = t.x.size(1);
  std::vector<at::Tensor> states;
  for (int k = 0; k < neuron.num_states; ++k) {
    states.push_back(k == neuron.traits.input_state
                         ? input_current(t.x, t.w_in, t.bias, N, compute, backward)
                         : empty_buffer({T, B, N}, t.x.options().dtype(compute)));
  }
  return states;
}

// The states for the backward: the saved ones, or (the low-memory mode)
// recomputed exactly as the forward computed them, from the input current
// and the known spikes.
// (A partial save, some states given and some not, recomputes them all.)
std::vector<at::Tensor> states_for_backward(const NeuronInfo& neuron, const LoopInputs& in,
                                            const BackwardTensors& t, at::Tensor& spikes,
                                            int64_t N, at::ScalarType compute,
                                            ForwardLoop forward_loop) {
  const bool all_saved = std::all_of(t.states.begin(), t.states.end(),
                                     [](const OptionalTensor& s) { return s.has_value(); });
  if (all_saved) {
    std::vector<at::Tensor> states;
    for (const OptionalTensor& s : t.states) states.push_back(compute_contiguous(*s, compute));
    return states;
  }
  std::vector<at::Tensor> states = states_with_input(neuron, t.inputs, N, compute, true);
  if (spikes.numel() > 0) forward_loop(in, states, spikes, /*replay=*/true);
  return states;
}

// The loop's outputs when it does not run (T, B or N is 0): zeros, each its
// own tensor (outputs never alias).
BackwardLoopOutputs empty_backward(const NeuronInfo& neuron, int64_t T, int64_t B, int64_t N,
                                   const at::TensorOptions& opts) {
  BackwardLoopOutputs out;
  out.grad_input = at::zeros({T, B, N}, opts);
  for (int k = 0; k < neuron.num_states; ++k) out.grad_initial.push_back(at::zeros({B, N}, opts));
  out.grad_s0_reset = at::zeros({B, N}, opts);
  for (int k = 0; k < neuron.num_params; ++k) out.param_sums.push_back(at::zeros({N}, opts));
  out.bias_sum = at::zeros({N}, opts);
  out.w_rec_sum = at::zeros({N}, opts);
  return out;
}

// diag(gain) @ m for gain 0-dim or [N]; m itself where gain is undefined (= 1).
at::Tensor scale_rows(const at::Tensor& gain, const at::Tensor& m) {
  if (!gain.defined()) return m;
  return gain.dim() == 0 ? m * gain : m * gain.unsqueeze(1);
}

// What flows back through the input current I[t] = x[t] @ w_in.T + bias and
// the recurrent input S[t-1] @ w_rec.T, given the loop's gX (the gradient of
// the input state) and the gain with which they enter it (dL/dI[t] = gain *
// gX[t]; gain undefined: 1). (gU below: that gX.)
struct InputGrads {
  at::Tensor x, w_in, w_rec, bias, s0;
  // [N]: sum over t and b of gU[t] * (I[t] + S[t-1] @ w_rec.T), if asked for
  // (for the gain's parameter, NeuronTraits::gain_param).
  at::Tensor drive;
};

struct InputGradsNeeded {
  bool x, w_in, w_rec, bias, s0, drive;
  // false: the recurrence's terms (w_rec's and s0's gradients, its share of
  // the drive) are left to delay_gradients.
  bool recurrence = true;
  // grad_w_rec by one low-precision product (w_rec_grad_by_low_precision_product).
  bool w_rec_low_precision = false;
};

// Spikes at least this dense make grad_w_rec = sum_t gU[t].T @ S[t-1] one
// low-precision product rather than the loop's float32 row adds at the
// spikes. The product's cost is fixed by the shape, the adds' grow with the
// spikes: measured on an Intel Xeon with AMX-BF16 (2 threads, bfloat16,
// python -m benchmarks.mixed_precision --w-rec-crossover, fwd + bwd), at
// T*B = 6400, N = 512 the two tie at 3-5 % (product / adds 1.00-1.04), the
// product wins above (0.96 at 7.6 %, 0.85 at 17 %, 0.76 at 30 %); at N = 128
// they are within noise of each other up to 16 % and 0.88 from 22 %.
constexpr double kLowPrecisionWRecDensity = 0.05;
// The reverse loop's per-step product gX[t+1] @ w_rec on the CPU's bfloat16
// matrix instructions (bfloat16_rows_product) from this N on (packing needs
// a multiple of 64): measured for 16 rows on an AMX Xeon (one thread),
// float32 sgemm 49.5 us at N = 512 against about 30 us (MKL's bfloat16
// product, which repacks w_rec at every call: 37 us). Since the loop's
// rounding of gX also serves the backward's products (grad_input_rounded),
// it pays at smaller N too: LIF under autocast, fwd + bwd, T = 300, B = 32,
// 2 threads, bfloat16 recurrence against float32: 0.88x at N = 64, 0.87x at
// 128, 0.82x at 256 (B = 8, N = 128: 0.87x).
constexpr int64_t kPackedRecurrenceMinN = 64;
// The forward's product needs at least two blocks of rows to keep two
// threads busy as its gather does (blocks of 16 rows for B up to 128).
constexpr int64_t kPackedForwardMinB = 32;
// The forward's recurrent input of a block of rows as one bfloat16 product
// per step (LoopInputs::w_out_packed), from the same N, where at least this
// share of the block's spikes at the step before are ones (below it the
// gather of the columns that fired costs less): measured on an AMX Xeon, 2
// threads, T = 200, B = 32, N = 512 (python -m benchmarks.mixed_precision
// --forward-crossover, LIF, fwd + bwd): product / gather 1.03 at 4 % of
// spikes, 1.02 at 6.7 %, 0.91 at 10 %, 0.83 at 17 %, 0.68 at 30 %.
constexpr double kPackedForwardDensity = 0.08;
// Test hooks (set_low_precision_path_forced): 1 always, 0 never, -1 by the rules.
std::atomic<int> forced_w_rec_product{-1}, forced_packed_recurrence{-1}, forced_packed_forward{-1};

// Whether the dense products take MKL's bfloat16 path (LowPrecisionPath::
// kLowPrecision) with w_rec a bfloat16 parameter too: where the two bfloat16
// paths of the recurrence below may run (a float32 w_rec, next to a bfloat16
// w_in in a direct call, keeps the float32 sums and recurrence).
bool bfloat16_products_and_w_rec(const at::Tensor& x, const OptionalTensor& w_in,
                                 const OptionalTensor& w_rec, at::ScalarType compute) {
  const at::ScalarType products = products_dtype(x, w_in);
  return x.is_cpu() && compute == at::kFloat && products == at::kBFloat16 &&
         operands_dtype(products, x, compute) == products && w_rec.has_value() &&
         w_rec->scalar_type() == products;
}

// Whether grad_w_rec (all-to-all, without delays) is one low-precision
// product: only for bfloat16 products on MKL's path
// (LowPrecisionPath::kLowPrecision: a CPU with instructions for them, by
// default), since gU is then rounded to bfloat16 for them anyway (the spikes
// are exact in it); by the spikes' density (a test hook forces it). Not
// for float16, whose rounding of gU overflows past 65504 (grad_w_rec stays
// the float32 op's). A model whose gain takes a gradient then sums the
// drive's w_rec share from the recurrent input recomputed by a product
// (input_gradients), not from this product of the rounded gU.
bool w_rec_grad_by_low_precision_product(const at::Tensor& x, const OptionalTensor& w_in,
                                         const OptionalTensor& w_rec, const at::Tensor& spikes,
                                         at::ScalarType compute) {
  if (!bfloat16_products_and_w_rec(x, w_in, w_rec, compute)) return false;
  const int forced = forced_w_rec_product.load();
  if (forced >= 0) return forced == 1;
  // The density of every fourth step's spikes (a quarter of a pass over
  // them; float32 sums of 0/1 are exact below 2^24 ones, and close enough above).
  const at::Tensor sample = spikes.slice(0, 0, spikes.size(0), 4);
  return sample.sum().item<double>() >= kLowPrecisionWRecDensity * static_cast<double>(sample.numel());
}

// w_rec packed for the reverse loop's per-step product in bfloat16 (loop.h,
// w_rec_packed; the loop scales gX[t+1] by the model's gain before rounding
// it), or undefined: only where the dense products take MKL's bfloat16 path
// (gX is then rounded for the recurrent term as gU is for them), all-to-all
// without delays, N >= kPackedRecurrenceMinN, and where
// bfloat16_packed_columns can (the bfloat16 parameter packed as it is).
// loop_w_rec: the loop's w_rec, in the compute dtype.
at::Tensor packed_recurrence(const at::Tensor& x, const OptionalTensor& w_in,
                             const OptionalTensor& w_rec, const at::Tensor& loop_w_rec,
                             at::ScalarType compute, bool all_to_all) {
  if (!loop_w_rec.defined() || !all_to_all ||
      !bfloat16_products_and_w_rec(x, w_in, w_rec, compute)) {
    return at::Tensor();
  }
  const int forced = forced_packed_recurrence.load();
  if (forced == 0 || (forced < 0 && loop_w_rec.size(0) < kPackedRecurrenceMinN)) {
    return at::Tensor();
  }
  return bfloat16_packed_columns(*w_rec);  // (bfloat16: as it is)
}

// The forward's (and the low-memory backward's replay's) recurrent input
// by one bfloat16 product per step for a block of rows (LoopInputs::
// w_out_packed): where the reverse loop's may run (packed_recurrence),
// without delays or a mask.
void plan_packed_forward(LoopInputs& in, const OpTensors& t, at::ScalarType compute) {
  if (!in.w_rec.defined() || in.one_to_one() || in.delayed() ||
      !bfloat16_products_and_w_rec(t.x, t.w_in, t.w_rec, compute)) {
    return;
  }
  const int forced = forced_packed_forward.load();
  if (forced == 0 || (forced < 0 && (in.w_rec.size(0) < kPackedRecurrenceMinN ||
                                      t.x.size(1) < kPackedForwardMinB))) {
    return;
  }
  in.w_out_packed = bfloat16_packed_columns(t.w_rec->t().contiguous());  // (bfloat16)
  in.w_out_packed_density = forced == 1 ? 0.0 : kPackedForwardDensity;
}

InputGrads input_gradients(const BackwardLoopInputs& in, const BackwardLoopOutputs& out,
                           const at::Tensor& x, const OptionalTensor& w_in,
                           const OptionalTensor& w_rec, const OptionalTensor& bias,
                           const OptionalTensor& s0, const at::Tensor& gain,
                           InputGradsNeeded need, at::ScalarType compute) {
  const int64_t T = x.size(0), B = x.size(1), F = x.size(2), N = out.grad_input.size(2);
  const auto opts = x.options().dtype(compute);
  // A fresh empty tensor per unneeded gradient: outputs must not alias each other.
  auto none = [&] { return at::empty({0}, x.options()); };
  const at::Tensor grad_u_2d = out.grad_input.view({T * B, N});
  // gU[1], what reaches the initial state (zero when T = 0).
  const at::Tensor grad_u_first = T > 0 ? out.grad_input[0] : at::zeros({B, N}, opts);
  const bool one_to_one = in.state.one_to_one();
  InputGrads g{none(), none(), none(), none(), none(), at::Tensor()};
  const at::Tensor w_in_c =
      w_in.has_value() && ((need.x && gain.defined()) || need.drive)
          ? compute_contiguous(*w_in, compute)
          : at::Tensor();
  // The products' operands: low-precision inputs multiply in their own dtype
  // (gU rounded to it) with float32 accumulation, as the forward's projection.
  const at::ScalarType products = products_dtype(x, w_in);
  const at::ScalarType operands = operands_dtype(products, x, compute);
  // gU rounded to the operands' dtype: the reverse loop's rounding where it
  // kept it, else a pass here.
  auto rounded_grad_u = [&] {
    return out.grad_input_rounded.defined() && operands == at::kBFloat16
               ? out.grad_input_rounded.view({T * B, N})
               : rounded_to(grad_u_2d, operands);
  };
  const at::Tensor grad_u_ops = w_in.has_value() && (need.x || need.w_in || need.drive)
                                    ? rounded_grad_u()
                                    : at::Tensor();
  // [T, B, 1]: the steps past each row's length, which take no part.
  const at::Tensor past_end =
      in.state.lengths.defined()
          ? at::arange(T, in.state.lengths.options()).view({T, 1, 1}) >=
                in.state.lengths.view({1, B, 1})
          : at::Tensor();
  // Binary x: grad_w_in by gathering (a finite gU only: the gather skips the
  // zeros of x, which would drop the NaN of 0 * inf; out.bias_sum, asked for
  // where the call may gather, is finite only if every gU is).
  std::optional<BinaryRows> binary =
      w_in.has_value() && (need.w_in || need.drive) && out.bias_sum.defined()
          ? binary_input(x, *w_in, /*backward=*/true)
          : std::nullopt;
  // (Low-precision operands: gU rounded to them may overflow where the
  // float32 sum does not.)
  if (binary && !(at::isfinite(out.bias_sum).all().item<bool>() &&
                  (operands == compute || at::isfinite(grad_u_ops).all().item<bool>()))) {
    binary.reset();
  }
  // x in dtype for a product with gU, with the steps past each row's length
  // zeroed: their x (padding, possibly NaN) must not reach grad_w_in or the
  // drive through gU = 0 times it. Rows [first, first + n) of x as [T*B, F],
  // converted where the product reads them.
  const at::Tensor past_end_rows = past_end.defined() ? past_end.view({T * B, 1}) : at::Tensor();
  auto x_rows_for_products = [&](at::ScalarType dtype) -> OperandRows {
    return [&, dtype](const at::Tensor& rows, int64_t first) {
      const bool mask = past_end_rows.defined();
      at::Tensor converted = rows_rounded(rows, first, products, dtype, /*copy=*/mask);
      if (mask) converted.masked_fill_(past_end_rows.narrow(0, first, rows.size(0)), 0);
      return converted;
    };
  };
  const at::Tensor x_2d = x.reshape({T * B, F});
  // Where grad_w_rec is the product of the rounded gU, the drive's w_rec
  // share is not taken from it: it is sum gU * rec, rec[t] = S[t-1] @ w_rec.T
  // (S[0] = s0) recomputed as the forward sums it, up to order (the spikes
  // are exact in the low-precision dtype, the products accumulate in
  // float32; s0, which may be any value, in float32), added into current_2d.
  const bool drive_rec_by_product =
      need.drive && need.recurrence && need.w_rec_low_precision && w_rec.has_value();
  // The spikes S[0..T-2] as [(T-1) * B, N] in the products' dtype (exact),
  // converted once where grad_w_rec's product and the drive's recurrent
  // input both read them.
  const at::Tensor spikes_ops =
      drive_rec_by_product && need.w_rec && T > 1
          ? rows_rounded(in.spikes.narrow(0, 0, T - 1).reshape({(T - 1) * B, N}), 0, products,
                         operands, false)
          : at::Tensor();
  auto add_recurrent_input = [&](at::Tensor current_2d) {
    if (T == 0) return;
    deterministic_mm_out(current_2d.narrow(0, 0, B), in.state.s0, in.state.w_rec.t(),
                         /*accumulate=*/true);
    if (T > 1) {
      deterministic_mm_out(current_2d.narrow(0, B, (T - 1) * B),
                           spikes_ops.defined()
                               ? spikes_ops
                               : in.spikes.narrow(0, 0, T - 1).reshape({(T - 1) * B, N}),
                           w_rec->to(operands).contiguous().t(), /*accumulate=*/true,
                           [&](const at::Tensor& piece, int64_t first) {
                             return rows_rounded(piece, first, products, operands, false);
                           });
    }
  };
  bool drive_has_rec = false;
  if (need.x) {
    g.x = (w_in.has_value()
               ? deterministic_mm(grad_u_ops,
                                  gain.defined() ? scale_rows(gain, w_in_c).to(operands).contiguous()
                                                 : w_in->to(operands).contiguous())
                     .view({T, B, F})
               : (gain.defined() ? out.grad_input * gain : out.grad_input))
              .to(x.scalar_type());
    if (w_in.has_value() && past_end.defined()) {
      // They pass no gradient, also where gX = 0 meets a non-finite weight.
      g.x = g.x.masked_fill(past_end, 0);
    }
  }
  at::Tensor drive;
  if (w_in.has_value() && (need.w_in || need.drive)) {
    // sum_t gU[t].T @ x[t]: one product over all T*B rows. (A binary x's
    // steps past a row's length add nothing: gU is 0 there.)
    const bool drive_shares_product = operands == compute;
    // Where both grad_w_in's product and the drive's input current (below)
    // read x rounded, it is rounded once, whole (a pass over memory saved;
    // the same bits: the products' pieces are those of x rounded whole).
    const at::Tensor x_ops = !binary && !drive_shares_product && need.w_in && need.drive
                                 ? x_rows_for_products(operands)(x_2d, 0)
                                 : at::Tensor();
    auto input_product = [&](const at::Tensor& grad_u, at::ScalarType dtype) {
      if (binary) return binary_t_mm(*binary, grad_u.to(compute)).t().contiguous();
      at::Tensor m = at::empty({N, F}, opts);
      if (x_ops.defined()) {
        deterministic_mm_out(m, grad_u.t(), x_ops, /*accumulate=*/false);
      } else {
        deterministic_mm_out(m, grad_u.t(), x_2d, /*accumulate=*/false, {},
                             x_rows_for_products(dtype));
      }
      return m;
    };
    // The drive belongs to a float32 parameter, whose sums take gU as it is:
    // where the products round gU, the drive is the float32 sum of gU times
    // the input current (sum_t,b gU * (x @ w_in.T), what w_in * (gU.T @ x)
    // sums in another order), recomputed by the forward's low-precision
    // product, rather than a float32 product of gU with x (several times
    // the low-precision one's cost on a CPU with instructions for it).
    at::Tensor m;
    if (need.w_in || drive_shares_product) m = input_product(grad_u_ops, operands);
    if (need.w_in) g.w_in = scale_rows(gain, m).to(w_in->scalar_type());
    if (need.drive && drive_shares_product) {
      drive = (w_in_c * m).sum(1);
    } else if (need.drive) {
      at::Tensor current;
      if (x_ops.defined()) {  // (the dense branch of input_current, on x_ops)
        current = empty_buffer({T, B, N}, opts);
        deterministic_mm_out(current.view({T * B, N}), x_ops, w_in->to(operands).contiguous().t());
      } else {
        current = input_current(x, w_in, std::nullopt, N, compute, /*backward=*/true);
      }
      if (drive_rec_by_product) add_recurrent_input(current.view({T * B, N}));
      drive_has_rec = drive_rec_by_product;
      if (past_end.defined()) current.masked_fill_(past_end, 0);  // (padding: any value)
      drive = current.mul_(out.grad_input).sum(0).sum(0);
    }
  } else if (need.drive) {
    drive = (out.grad_input * x_rows_for_products(compute)(x_2d, 0).view({T, B, F})).sum(0).sum(0);
  }
  if (drive_rec_by_product && !drive_has_rec) {
    at::Tensor rec = at::zeros({T * B, N}, opts);
    add_recurrent_input(rec);
    if (past_end_rows.defined()) rec.masked_fill_(past_end_rows, 0);
    drive = drive + rec.mul_(grad_u_2d).sum(0);
  }
  if (need.drive && bias.has_value()) drive = drive + bias->to(compute) * out.bias_sum;
  if (need.bias) {
    const at::Tensor sum = gain.defined() ? out.bias_sum * gain : out.bias_sum;
    g.bias = sum.to(bias.has_value() ? bias->scalar_type() : x.scalar_type());
  }
  const bool want_w_rec = need.recurrence && w_rec.has_value() && (need.w_rec || need.drive);
  if (want_w_rec && one_to_one) {  // sum over t, b of gU[t] * S[t-1]
    if (need.w_rec) {
      const at::Tensor sum = gain.defined() ? out.w_rec_sum * gain : out.w_rec_sum;
      g.w_rec = sum.to(w_rec->scalar_type());
    }
    if (need.drive) drive = drive + in.state.w_rec * out.w_rec_sum;
  } else if (want_w_rec && (need.w_rec || !drive_rec_by_product)) {
    at::Tensor m = out.w_rec_grad;
    if (!m.defined()) {
      // sum_t gU[t].T @ S[t-1], with S[0] = s0: two GEMMs instead of a copy of S.
      m = deterministic_mm(grad_u_first.t(), in.state.s0);
      if (T > 1) {
        const int64_t rows = (T - 1) * B;
        const at::Tensor spikes = in.spikes.narrow(0, 0, T - 1).reshape({rows, N});
        if (need.w_rec_low_precision) {
          // gU rounded as for grad_w_in, the spikes converted (exactly) as read.
          const at::Tensor g = grad_u_ops.defined() ? grad_u_ops : rounded_grad_u();
          deterministic_mm_out(m, g.narrow(0, B, rows).t(),
                               spikes_ops.defined() ? spikes_ops : spikes, /*accumulate=*/true,
                               {}, [&](const at::Tensor& piece, int64_t first) {
                                 return rows_rounded(piece, first, products, operands, false);
                               });
        } else {
          deterministic_mm_out(m, grad_u_2d.narrow(0, B, rows).t(), spikes, /*accumulate=*/true);
        }
      }
    }
    if (need.w_rec) g.w_rec = scale_rows(gain, m).to(w_rec->scalar_type());
    if (need.drive && !drive_rec_by_product) drive = drive + (in.state.w_rec * m).sum(1);
  }
  if (need.recurrence && need.s0 && s0.has_value()) {
    at::Tensor grad_s0 = out.grad_s0_reset;
    if (one_to_one) {
      grad_s0 = grad_s0 + grad_u_first * in.w_rec_adjoint;
    } else if (w_rec.has_value()) {
      grad_s0 = grad_s0 + deterministic_mm(grad_u_first, in.w_rec_adjoint);
    }
    if (in.state.lengths.defined()) {
      // A row that takes no step passes nothing back (its zero gU[1] times a
      // non-finite w_rec would be NaN).
      grad_s0 = grad_s0.masked_fill(in.state.lengths.le(0).unsqueeze(1), 0);
    }
    g.s0 = grad_s0.to(s0->scalar_type());
  }
  g.drive = drive;
  return g;
}

// What flows back through the delayed recurrent input (README, "Recurrent
// delays"), given the loop's gX: with gR = gain * gX (the gradient reaching
// rec[t]), g~ = m * gR and S[t-k] from the history before step 0, per source
// gP = g~ @ w_rec, P[t] = sum_k K_k * S[t-k], E[k] = sum_{t,b} gP[t] * S[t-k]:
//   grad_w_rec = sum_t g~[t].T @ P[t], grad_delays = sum_k Kx_k * E[k],
//   grad_sigma = sum_k Ks_k * E[k], history: sum_k K_k * gP[t+k];
// per synapse W_k = w_rec * K_k and C[k] = sum_t g~[t].T @ S[t-k]:
//   grad_w_rec = sum_k K_k * C[k], grad_delays = w_rec * sum_k Kx_k * C[k],
//   grad_sigma = sum_{i,k} w_rec * Ks_k * C[k], history: sum_k g~[t+k] @ W_k;
// and grad_rec_mask = sum_t gR[t] * rec[t] with m = 1; drive: sum gX * m * rec.
// Taps whose kernel and derivatives are all zero are skipped.
struct DelayGrads {
  at::Tensor w_rec, delays, sigma, mask, history, drive;
};
struct DelayGradsNeeded {
  bool w_rec, delays, sigma, mask, s0, drive;
  bool full_history;  // s0 was given as the history [D, B, N]
};
// The history and spikes S[1-D..T] ([D + T, B, N]) as an index of their
// ones, for products gM.T @ S[t-k] that add gM's rows at the spikes; nullopt
// where they must stay dense: the history or spikes not binary, gM not
// finite, TORCH_EXT_BINARY_INPUTS=dense, or the spikes denser than the
// crossover (the binary inputs' own: the products have the same shape).
std::optional<BinaryRows> spike_rows(const at::Tensor& spikes, const at::Tensor& gM) {
  const GatherMode mode = gather_mode();
  if (!may_gather(gM, mode)) return std::nullopt;
  const int64_t N = gM.size(-1);
  const double max_density = mode == GatherMode::kAlways ? 1.0 : binary_input_crossover(N);
  if (max_density < 0 || !at::isfinite(gM).all().item<bool>()) return std::nullopt;
  return binary_rows(spikes, max_density);
}

DelayGrads delay_gradients(const BackwardLoopInputs& in, const BackwardLoopOutputs& loop_out,
                           const at::Tensor& gain, const DelayKernel& kernel,
                           DelayGradsNeeded need) {
  const at::Tensor& grad_input = loop_out.grad_input;
  const LoopInputs& st = in.state;
  const int64_t T = grad_input.size(0), B = grad_input.size(1), N = grad_input.size(2);
  const int64_t D = kernel.K.size(0), TB = T * B;
  const bool one_to_one = st.one_to_one(), per_synapse = kernel.per_synapse();
  const at::Tensor& w_rec = st.w_rec;
  // gR, g~ and gM (below), [T, B, N], built where needed: a pass and fresh
  // memory each, which the loop's sums usually make unnecessary.
  at::Tensor gR_, g_tilde_, gM_;
  auto gR = [&]() -> const at::Tensor& {
    if (!gR_.defined()) gR_ = gain.defined() ? grad_input * gain : grad_input;
    return gR_;
  };
  auto g_tilde = [&]() -> const at::Tensor& {
    if (!g_tilde_.defined()) g_tilde_ = st.rec_mask.defined() ? gR() * st.rec_mask : gR();
    return g_tilde_;
  };
  at::Tensor spikes_x;  // S[1-D..T], built where needed
  auto all_spikes = [&]() -> const at::Tensor& {
    if (!spikes_x.defined()) spikes_x = at::cat({st.history, in.spikes});
    return spikes_x;
  };
  auto S_k = [&](int64_t k) { return all_spikes().narrow(0, D - k, T); };  // S[t-k], t = 1..T
  // A tap adds nothing where its kernel and derivatives are all zero, unless
  // the history holds a non-finite value (0 * NaN spreads, as in the reference).
  const bool history_finite = at::isfinite(st.history).all().item<bool>();
  auto used = [&](int64_t k) {
    bool u = !history_finite || kernel.K[k - 1].ne(0).any().item<bool>();
    if (kernel.Kx.defined()) u = u || kernel.Kx[k - 1].ne(0).any().item<bool>();
    if (kernel.Ks.defined()) u = u || kernel.Ks[k - 1].ne(0).any().item<bool>();
    return u;
  };
  // The history's steps h = 0..D-1 are t = h - D (0-based); tap k reads them
  // from step h - D + k when that lies in [0, T).
  auto history_grad = [&](auto&& term) {
    at::Tensor g = at::zeros({D, B, N}, grad_input.options());
    // (An s0 [B, N] is the history's last step: the others are not needed.)
    for (int64_t h = need.full_history ? 0 : D - 1; h < D; ++h) {
      for (int64_t k = D - h; k <= D && h - D + k < T; ++k) g[h].add_(term(k, h - D + k));
    }
    return g;
  };
  DelayGrads out;
  // With gM = m * gX (no gain): grad_w_rec = diag(gain) M and the drive's
  // recurrent part sum_j w_rec * M, M = sum_t gM[t].T @ P[t] (per synapse
  // sum_k K_k * C'[k], C'[k] = sum_t gM[t].T @ S[t-k]): one product for both.
  auto gM = [&]() -> const at::Tensor& {
    if (!gM_.defined()) gM_ = st.rec_mask.defined() ? grad_input * st.rec_mask : grad_input;
    return gM_;
  };
  auto gM2 = [&]() { return gM().reshape({TB, N}); };
  at::Tensor rec;  // [T, B, N], m = 1: for the mask's gradient only
  if (!per_synapse) {
    // (The loop may have summed E and the history's gradient from its gP,
    // and M from P's non-zeros.)
    const at::Tensor& loop_E = loop_out.delay_sums;
    const bool need_E = (need.delays || need.sigma) && !loop_E.defined();
    const bool need_history = need.s0 && !loop_out.history_grad.defined();
    const at::Tensor gP = !(need_E || need_history) ? at::Tensor()
                          : one_to_one ? g_tilde() * w_rec
                                       : deterministic_mm(g_tilde().reshape({TB, N}), w_rec)
                                             .view({T, B, N});
    at::Tensor P = loop_out.delayed_spikes;
    if ((need.w_rec || need.drive || need.mask) && !P.defined()) {
      P = zeros_buffer({T, B, N}, grad_input.options());
      for (int64_t k = D; k >= 1; --k) {  // the CPU forward's order
        if (used(k)) P.addcmul_(S_k(k), kernel.K[k - 1]);
      }
    }
    if (need.w_rec || need.drive) {
      const at::Tensor M = one_to_one                          ? (gM() * P).sum({0, 1})
                           : loop_out.delayed_w_rec_grad.defined() ? loop_out.delayed_w_rec_grad
                                 : deterministic_mm(gM2().t(), P.reshape({TB, N}));
      if (need.w_rec) {
        out.w_rec = !gain.defined() ? M : one_to_one ? M * gain : scale_rows(gain, M);
      }
      if (need.drive) out.drive = one_to_one ? w_rec * M : (w_rec * M).sum(1);
    }
    if (need.delays || need.sigma) {
      at::Tensor E = loop_E;
      if (need_E) {
        // Every tap: the loop leaves E here where a gP is not finite or
        // large, where an E at an unused tap may be NaN or inf (0 * that: NaN).
        E = at::zeros({D, N}, grad_input.options());
        for (int64_t k = 1; k <= D; ++k) E[k - 1] = (gP * S_k(k)).sum({0, 1});
      }
      if (need.delays) out.delays = (kernel.Kx * E).sum(0);
      if (need.sigma) out.sigma = (kernel.Ks * E).sum(0);
    }
    if (need.mask) {
      rec = one_to_one ? P * w_rec
                       : deterministic_mm(P.reshape({TB, N}), w_rec.t().contiguous())
                             .view({T, B, N});
    }
    if (need.s0) {
      out.history = need_history ? history_grad([&](int64_t k, int64_t t) {
                                     return kernel.K[k - 1] * gP[t];
                                   })
                                 : loop_out.history_grad;
    }
  } else {
    // W_k.T is the forward's tap k (loop.h): W_k = w_rec * K_k.
    auto W_k = [&](int64_t k) { return st.delay_taps[k - 1].t(); };
    const bool weights = need.w_rec || need.drive;
    at::Tensor grad_w = weights ? at::zeros({N, N}, grad_input.options()) : at::Tensor();
    at::Tensor by_x = need.delays ? at::zeros({N, N}, grad_input.options()) : at::Tensor();
    at::Tensor by_s = need.sigma ? at::zeros({N, N}, grad_input.options()) : at::Tensor();
    if (need.mask) rec = zeros_buffer({TB, N}, grad_input.options());
    // C'[k] = gM.T @ S[t-k] from the spikes that fired: gM's rows added at
    // each spike (one index of S[1-D..T] for every tap), the dense product's
    // sum up to its order, where the spikes and the history are binary and gM
    // is finite (a skipped 0 would drop the NaN of 0 * inf).
    const bool products = weights || need.delays || need.sigma;
    std::optional<BinaryRows> spike_index;
    if (products) spike_index = spike_rows(all_spikes(), gM());
    for (int64_t k = 1; k <= D; ++k) {
      if (!used(k)) continue;
      const at::Tensor s_k = S_k(k).reshape({TB, N});
      if (products) {
        const at::Tensor C = spike_index  // C'[k], no gain
                                 ? binary_t_mm(spike_index->slice((D - k) * B, TB), gM2()).t()
                                 : deterministic_mm(gM2().t(), s_k);
        if (weights) grad_w.addcmul_(kernel.K[k - 1], C);
        if (need.delays) by_x.addcmul_(kernel.Kx[k - 1], C);
        if (need.sigma) by_s.addcmul_(kernel.Ks[k - 1], C);
      }
      if (need.mask) rec.add_(deterministic_mm(s_k, st.delay_taps[k - 1]));
    }
    if (need.w_rec) out.w_rec = scale_rows(gain, grad_w);
    if (need.drive) out.drive = (w_rec * grad_w).sum(1);
    if (need.delays) out.delays = w_rec * scale_rows(gain, by_x);
    if (need.sigma) out.sigma = (w_rec * scale_rows(gain, by_s)).sum(0);
    if (need.mask) rec = rec.view({T, B, N});
    if (need.s0) {
      out.history = history_grad([&](int64_t k, int64_t t) {
        return deterministic_mm(g_tilde()[t], W_k(k));
      });
    }
  }
  if (need.mask) {
    // A step a row does not take passes nothing back, even where its rec is
    // not finite (gR = 0 there, and 0 * inf would be NaN).
    if (st.lengths.defined()) {
      const at::Tensor untaken = at::arange(T, st.lengths.options()).view({T, 1, 1}) >=
                                 st.lengths.view({1, B, 1});
      rec.masked_fill_(untaken, 0);  // (rec is this function's own buffer)
    }
    out.mask = (gR() * rec).sum(0);
  }
  return out;
}

// A parameter's gradient from its [N] sum: summed once more for a 0-dim parameter.
at::Tensor param_grad(bool needed, const at::Tensor& sum, const at::Tensor& param,
                      const at::Tensor& x) {
  if (!needed) return at::empty({0}, x.options());
  return (param.dim() == 0 ? sum.sum() : sum).to(param.scalar_type());
}

}  // namespace

std::vector<at::Tensor> neuron_forward(const NeuronInfo& neuron, const OpTensors& t,
                                       const OpSettings& s, ForwardLoop loop) {
  // The matrix products below stay in the compute dtype even under autocast
  // (whose kernel for this op already cast the inputs it casts).
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto [d, options] = check_call(neuron, t, s);
  const int64_t T = t.x.size(0), B = t.x.size(1), N = d.N.expect_int();
  LoopInputs in = loop_inputs(t, N, d.compute, options.reset, s.max_delay);
  plan_packed_forward(in, t, d.compute);
  std::vector<at::Tensor> states = states_with_input(neuron, t, N, d.compute, false);
  at::Tensor spikes = empty_buffer({T, B, N}, t.x.options().dtype(d.compute));
  if (spikes.numel() > 0) loop(in, states, spikes, /*replay=*/false);
  std::vector<at::Tensor> out{spikes.to(t.x.scalar_type())};
  out.insert(out.end(), states.begin(), states.end());
  return out;
}

std::vector<at::Tensor> neuron_backward(const NeuronInfo& neuron, const BackwardTensors& t,
                                        const OpSettings& s, const std::vector<bool>& needs,
                                        ForwardLoop forward_loop, BackwardLoop loop) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto [d, options] = check_backward_call(neuron, t, s);
  const OpTensors& in_t = t.inputs;
  const at::Tensor& x = in_t.x;
  const int64_t T = x.size(0), B = x.size(1), N = d.N.expect_int();
  const at::ScalarType compute = d.compute;
  const int P = neuron.num_params, K = neuron.num_states;
  auto incoming = [&](const OptionalTensor& g) {
    return g.has_value() ? incoming_gradient(*g, compute) : at::Tensor();
  };
  // needs: x, w_in, w_rec, bias, the parameters, the initial states, s0.
  const bool need_x = needs[0], need_w_in = needs[1], need_w_rec = needs[2],
             need_bias = needs[3], need_s0 = needs[4 + P + K];
  std::vector<bool> need_params(needs.begin() + 4, needs.begin() + 4 + P);
  // The gain's parameter: its gradient needs the drive, sum gX (I + rec).
  const int drive_param = neuron.traits.gain_param;
  const bool need_drive = drive_param >= 0 && need_params[drive_param];

  LoopInputs state = loop_inputs(in_t, N, compute, options.reset, s.max_delay);
  if (state.lengths.defined()) {
    // A row that takes no step passes nothing back: its s0 (any value, NaN
    // included) must not reach the w_rec gradient through gX = 0 times it.
    state.s0 = state.s0.masked_fill(state.lengths.le(0).unsqueeze(1), 0);
    if (state.delayed()) {
      state.history = state.history.masked_fill(state.lengths.le(0).view({1, B, 1}), 0);
    }
  }
  // Recurrent delays (or a mask): the delays' gradients come after the loop.
  const bool delayed = in_t.delayed();
  const int delay_at = 5 + P + K;  // needs: ..., s0, delays, delay_sigma, rec_mask
  const bool need_delays = needs[delay_at] && in_t.delays.has_value(),
             need_sigma = needs[delay_at + 1] && in_t.delay_sigma.has_value(),
             need_mask = needs[delay_at + 2] && in_t.rec_mask.has_value();
  const DelayKernel kernel =
      delayed ? delay_kernel(in_t, s.max_delay, N, compute, need_delays || need_sigma)
              : DelayKernel{};
  at::Tensor spikes_c = compute_contiguous(t.spikes, compute);
  const bool replay = std::any_of(t.states.begin(), t.states.end(),
                                  [](const OptionalTensor& s) { return !s.has_value(); });
  if (replay) plan_packed_forward(state, in_t, compute);  // (the forward's arithmetic)
  std::vector<at::Tensor> states =
      states_for_backward(neuron, state, t, spikes_c, N, compute, forward_loop);
  // The input current and the recurrent input enter the input state with this gain.
  const at::Tensor gain =
      neuron.traits.gain_param >= 0 ? 1 - state.params[neuron.traits.gain_param] : at::Tensor();
  const bool one_to_one = state.one_to_one();
  const at::Tensor w_rec_adjoint =
      !state.w_rec.defined() || !gain.defined()
          ? state.w_rec
          : (one_to_one ? state.w_rec * gain : scale_rows(gain, state.w_rec)).contiguous();
  // Per synapse the reverse step multiplies by w_rec_adjoint * K_k (loop.h).
  const at::Tensor delay_adjoint =
      !delayed ? at::Tensor()
               : (kernel.per_synapse() ? w_rec_adjoint.unsqueeze(0) * kernel.K : kernel.K)
                     .contiguous();
  std::vector<at::Tensor> grad_states;
  for (const OptionalTensor& g : t.grad_states) grad_states.push_back(incoming(g));
  const bool w_rec_low_precision =
      (need_w_rec || need_drive) && in_t.w_rec.has_value() && !one_to_one && !delayed &&
      w_rec_grad_by_low_precision_product(x, in_t.w_in, in_t.w_rec, spikes_c, compute);
  // The drive (sum gX * (I + rec)) needs the sums behind the bias and w_rec gradients too.
  BackwardLoopInputs in{std::move(state),
                        spikes_c,
                        std::move(states),
                        incoming(t.grad_spikes),
                        std::move(grad_states),
                        w_rec_adjoint,
                        delay_adjoint,
                        at::Tensor(),  // delay_sum_taps, below
                        options.detach_reset,
                        options.surrogate,
                        options.slope,
                        need_params,
                        // (the sum of gU also tells whether a binary x may gather grad_w_in)
                        need_bias || (need_drive && in_t.bias.has_value()) ||
                            (in_t.w_in.has_value() && (need_w_in || need_drive) &&
                             may_gather(x)),
                        (need_w_rec || need_drive) && one_to_one && !delayed,
                        (need_w_rec || need_drive) && in_t.w_rec.has_value() && !one_to_one &&
                            !delayed && !w_rec_low_precision};
  in.w_rec_packed =
      packed_recurrence(x, in_t.w_in, in_t.w_rec, in.state.w_rec, compute, !one_to_one && !delayed);
  if (in.w_rec_packed.defined() && gain.defined()) {
    in.w_rec_packed_gain = gain.expand({N}).contiguous();  // (a parameter may be one value)
  }
  in.need_grad_input_rounded =
      (in_t.w_in.has_value() && (need_x || need_w_in || need_drive)) || w_rec_low_precision;
  in.need_delay_sums = need_delays || need_sigma;
  if (in.need_delay_sums && !kernel.per_synapse()) {
    in.delay_sum_taps = kernel.Kx.ne(0).logical_or(kernel.Ks.ne(0)).to(compute);
  }
  in.need_history_grad = need_s0 && in_t.s0.has_value();
  in.need_delayed_spikes = need_w_rec || need_mask || need_drive;
  in.need_delayed_w_rec_grad = need_w_rec || need_drive;
  // (Row adds against one product, as for binary inputs: the same crossover.)
  in.max_delayed_spike_density =
      gather_mode() == GatherMode::kAlways ? 1.0 : binary_input_crossover(N);
  const BackwardLoopOutputs out =
      spikes_c.numel() > 0 ? loop(in) : empty_backward(neuron, T, B, N, x.options().dtype(compute));
  InputGrads g =
      input_gradients(in, out, x, in_t.w_in, in_t.w_rec, in_t.bias, in_t.s0, gain,
                      {need_x, need_w_in, need_w_rec, need_bias, need_s0, need_drive, !delayed,
                       w_rec_low_precision},
                      compute);
  at::Tensor grad_delays = at::empty({0}, x.options()), grad_sigma = at::empty({0}, x.options()),
             grad_mask = at::empty({0}, x.options());
  if (delayed) {
    const DelayGrads dg = delay_gradients(
        in, out, gain, kernel,
        {need_w_rec, need_delays, need_sigma, need_mask, need_s0 && in_t.s0.has_value(),
         need_drive, in_t.s0.has_value() && in_t.s0->dim() == 3});
    if (need_w_rec) g.w_rec = dg.w_rec.to(in_t.w_rec->scalar_type());
    if (need_drive) g.drive = g.drive.defined() ? g.drive + dg.drive : dg.drive;
    if (need_delays) grad_delays = dg.delays.to(in_t.delays->scalar_type());
    if (need_sigma) {
      const at::Tensor& sigma = *in_t.delay_sigma;
      grad_sigma = (sigma.dim() == 0 ? dg.sigma.sum() : dg.sigma).to(sigma.scalar_type());
    }
    if (need_mask) grad_mask = dg.mask.to(in_t.rec_mask->scalar_type());
    if (need_s0 && in_t.s0.has_value()) {
      // The history's gradient, and through R[0] = S[0] the reset's.
      at::Tensor history = dg.history.clone();  // (the loop's own output is const)
      history[-1].add_(out.grad_s0_reset);
      if (in.state.lengths.defined()) {
        history = history.masked_fill(in.state.lengths.le(0).view({1, B, 1}), 0);
      }
      const at::Tensor& s0 = *in_t.s0;
      g.s0 = (s0.dim() == 3 ? history : history[-1].clone()).to(s0.scalar_type());
    }
  }
  std::vector<at::Tensor> grads{g.x, g.w_in, g.w_rec, g.bias};
  for (int k = 0; k < P; ++k) {
    const bool needed = need_params[k];
    const at::Tensor sum =
        needed && k == drive_param ? out.param_sums[k] - g.drive : out.param_sums[k];
    grads.push_back(param_grad(needed, sum, in_t.params[k], x));
  }
  for (int k = 0; k < K; ++k) {
    const OptionalTensor& given = in_t.initial[k];
    grads.push_back(needs[4 + P + k] && given.has_value()
                        ? out.grad_initial[k].to(given->scalar_type())
                        : at::empty({0}, x.options()));
  }
  grads.insert(grads.end(), {g.s0, grad_delays, grad_sigma, grad_mask});
  return grads;
}

std::vector<at::Tensor> neuron_forward_meta(const NeuronInfo& neuron, const OpTensors& t,
                                            const OpSettings& s) {
  const Dims d = check_call(neuron, t, s).first;
  const std::vector<c10::SymInt> shape{d.T, d.B, d.N};
  std::vector<at::Tensor> out{at::empty_symint(shape, t.x.options())};
  for (int k = 0; k < neuron.num_states; ++k) {
    out.push_back(at::empty_symint(shape, t.x.options().dtype(d.compute)));
  }
  return out;
}

std::vector<at::Tensor> neuron_backward_meta(const NeuronInfo& neuron, const BackwardTensors& t,
                                             const OpSettings& s, const std::vector<bool>& needs) {
  const Dims d = check_backward_call(neuron, t, s).first;
  const std::vector<OptionalTensor> inputs = t.inputs.grad_inputs();
  // Gradient i is shaped like input i (bias: [N]); one not needed
  // is empty, as in the real kernels.
  std::vector<at::Tensor> grads;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const OptionalTensor& input = inputs[i];
    if (!needs[i] || !input.has_value()) {
      grads.push_back(at::empty({0}, t.inputs.x.options()));
    } else if (i == 3) {
      grads.push_back(at::empty_symint({d.N}, input->options()));
    } else {
      grads.push_back(at::empty_symint(input->sym_sizes(), input->options()));
    }
  }
  return grads;
}

void neuron_check(const NeuronInfo& neuron, const OpTensors& t, const OpSettings& s) {
  check_call(neuron, t, s);
}

void set_low_precision_path_forced(const std::string& path, int forced) {
  TORCH_CHECK_VALUE(forced >= -1 && forced <= 1, "forced must be -1, 0 or 1, got ", forced);
  TORCH_CHECK_VALUE(path == "w_rec_grad" || path == "recurrence" || path == "forward_recurrence",
                    "path must be 'w_rec_grad', 'recurrence' or 'forward_recurrence', got '", path,
                    "'");
  (path == "w_rec_grad"   ? forced_w_rec_product
   : path == "recurrence" ? forced_packed_recurrence
                          : forced_packed_forward) = forced;
}

}  // namespace torch_ext
