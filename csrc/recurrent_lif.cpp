#include "recurrent_lif.h"

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

namespace torch_ext {

// Every check names the argument, so `TORCH_CHECK_*(cond, ARG(name), ...)`.
#define ARG(name) "recurrent_lif: argument '", name, "' "

// MKL's C entry point (mkl_service.h maps mkl_set_num_threads_local to it), when
// torch links MKL (x86-64 wheels); weak, so builds on other BLAS libraries load
// without it.
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

namespace {
// Makes BLAS calls on this thread single-threaded while alive. MKL picks how to
// split a product from the thread count it may use, even inside a parallel
// region, so a fixed count of one is what makes its results reproducible.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() : previous_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~SingleThreadedBlas() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous_);
  }

 private:
  int previous_;
};
}  // namespace

void deterministic_mm_out(at::Tensor out, const at::Tensor& a, const at::Tensor& b,
                          bool accumulate) {
  if (!out.device().is_cpu()) {
    if (accumulate) {
      out.addmm_(a, b);
    } else {
      at::mm_out(out, a, b);
    }
    return;
  }
  TORCH_INTERNAL_ASSERT(out.is_contiguous());
  const int64_t rows = out.size(0);
  const int64_t block = std::max<int64_t>(16, (rows + 63) / 64);
  const int64_t blocks = (rows + block - 1) / block;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    // Worker threads do not inherit the caller's dispatch state: stay below autograd.
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const SingleThreadedBlas single_threaded;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t first = i * block, count = std::min(block, rows - first);
      at::Tensor out_rows = out.narrow(0, first, count);
      if (accumulate) {
        out_rows.addmm_(a.narrow(0, first, count), b);
      } else {
        at::mm_out(out_rows, a.narrow(0, first, count), b);
      }
    }
  });
}

at::Tensor deterministic_mm(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  deterministic_mm_out(out, a, b);
  return out;
}

Reset parse_reset(c10::string_view name) {
  if (name == "subtract") return Reset::Subtract;
  if (name == "zero") return Reset::Zero;
  if (name == "none") return Reset::None;
  TORCH_CHECK_VALUE(false, ARG("reset"), "must be one of 'subtract', 'zero', 'none', got '",
                    std::string(name), "'");
}

Surrogate parse_surrogate(c10::string_view name) {
  if (name == "sigmoid") return Surrogate::Sigmoid;
  if (name == "fast_sigmoid") return Surrogate::FastSigmoid;
  if (name == "atan") return Surrogate::Atan;
  if (name == "triangle") return Surrogate::Triangle;
  TORCH_CHECK_VALUE(false, ARG("surrogate"),
                    "must be one of 'sigmoid', 'fast_sigmoid', 'atan', 'triangle', got '",
                    std::string(name), "'");
}

namespace {

Surrogate check_surrogate(c10::string_view name, double slope) {
  const Surrogate surrogate = parse_surrogate(name);
  TORCH_CHECK_VALUE(std::isfinite(slope) && slope > 0, ARG("slope"), "must be finite and > 0, got ",
                    slope);
  return surrogate;
}

struct Dims {
  int64_t T, B, F, N;
  at::ScalarType compute;  // float64 for float64 inputs, float32 otherwise
};

std::string shape_str(at::IntArrayRef sizes) { return c10::str(sizes); }

// Same device as x, and either x's dtype or the compute dtype (the latter lets
// float16 runs pass float32 state and parameters).
void check_like_x(const at::Tensor& t, const char* name, const at::Tensor& x,
                  at::ScalarType compute, bool allow_compute_dtype) {
  TORCH_CHECK_VALUE(t.device() == x.device(), ARG(name), "is on ", t.device(), " but x is on ",
                    x.device(), "; all tensors must be on one device");
  const bool ok =
      t.scalar_type() == x.scalar_type() || (allow_compute_dtype && t.scalar_type() == compute);
  TORCH_CHECK_TYPE(ok, ARG(name), "has dtype ", t.scalar_type(), " but x has dtype ",
                   x.scalar_type(),
                   allow_compute_dtype && compute != x.scalar_type()
                       ? c10::str(" (", compute, " is accepted too)")
                       : std::string());
}

void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef expected,
                 const char* meaning) {
  TORCH_CHECK_VALUE(t.sizes() == expected, ARG(name), "must have shape ", shape_str(expected), " ",
                    meaning, ", got ", shape_str(t.sizes()));
}

void check_neuron_param(const at::Tensor& t, const char* name, const at::Tensor& x, const Dims& d) {
  check_like_x(t, name, x, d.compute, /*allow_compute_dtype=*/true);
  TORCH_CHECK_VALUE(t.dim() == 0 || (t.dim() == 1 && t.size(0) == d.N), ARG(name),
                    "must be a float, a 0-dim tensor or a tensor of shape [N] = [", d.N,
                    "], got shape ", shape_str(t.sizes()));
}

Dims check_inputs(const at::Tensor& x, const c10::optional<at::Tensor>& w_in,
                  const c10::optional<at::Tensor>& w_rec, const c10::optional<at::Tensor>& bias,
                  const at::Tensor& alpha, const at::Tensor& theta,
                  const c10::optional<at::Tensor>& u0, const c10::optional<at::Tensor>& s0) {
  TORCH_CHECK_VALUE(x.defined(), ARG("x"), "is required");
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), ARG("x"),
                   "must be a floating-point tensor (float16, bfloat16, float32 or float64), got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 3, ARG("x"), "must have shape [T, B, F] (3 dims), got ",
                    shape_str(x.sizes()));
  Dims d{x.size(0), x.size(1), x.size(2), x.size(2),
         x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat};
  if (w_in.has_value()) {
    check_like_x(*w_in, "w_in", x, d.compute, false);
    TORCH_CHECK_VALUE(w_in->dim() == 2 && w_in->size(1) == d.F, ARG("w_in"),
                      "must have shape [N, F] with F = x.shape[2] = ", d.F, ", got ",
                      shape_str(w_in->sizes()));
    d.N = w_in->size(0);
  }
  if (w_rec.has_value()) {
    check_like_x(*w_rec, "w_rec", x, d.compute, false);
    check_shape(*w_rec, "w_rec", {d.N, d.N},
                w_in.has_value() ? "[N, N] (N = w_in.shape[0])"
                                 : "[N, N] (w_in is None, so N = x.shape[2])");
  }
  if (bias.has_value()) {
    check_like_x(*bias, "bias", x, d.compute, false);
    check_shape(*bias, "bias", {d.N}, "[N]");
  }
  check_neuron_param(alpha, "alpha", x, d);
  check_neuron_param(theta, "theta", x, d);
  if (alpha.device().is_cpu()) {
    // On CUDA this would cost a device sync; the module keeps alpha in range there.
    TORCH_CHECK_VALUE(at::logical_and(alpha >= 0, alpha <= 1).all().item<bool>(), ARG("alpha"),
                      "must lie in [0, 1] (and not be NaN)");
  }
  for (const auto& [state, name] : {std::make_pair(&u0, "u0"), std::make_pair(&s0, "s0")}) {
    if (state->has_value()) {
      check_like_x(**state, name, x, d.compute, true);
      check_shape(**state, name, {d.B, d.N}, "[B, N]");
    }
  }
  return d;
}

at::Tensor compute_contiguous(const at::Tensor& t, at::ScalarType compute) {
  return t.to(compute).contiguous();
}

LoopInputs loop_inputs(const Dims& d, const at::Tensor& x, const c10::optional<at::Tensor>& w_rec,
                       const at::Tensor& alpha, const at::Tensor& theta,
                       const c10::optional<at::Tensor>& u0, const c10::optional<at::Tensor>& s0,
                       Reset reset) {
  const auto opts = x.options().dtype(d.compute);
  auto state = [&](const c10::optional<at::Tensor>& t) {
    return t.has_value() ? compute_contiguous(*t, d.compute) : at::zeros({d.B, d.N}, opts);
  };
  return LoopInputs{w_rec.has_value() ? compute_contiguous(*w_rec, d.compute) : at::Tensor(),
                    compute_contiguous(alpha, d.compute),
                    compute_contiguous(theta, d.compute),
                    state(u0),
                    state(s0),
                    reset};
}

}  // namespace

ForwardResult recurrent_lif_forward(const at::Tensor& x, const c10::optional<at::Tensor>& w_in,
                                    const c10::optional<at::Tensor>& w_rec,
                                    const c10::optional<at::Tensor>& bias, const at::Tensor& alpha,
                                    const at::Tensor& theta, const c10::optional<at::Tensor>& u0,
                                    const c10::optional<at::Tensor>& s0,
                                    c10::string_view reset_name, bool /*detach_reset*/,
                                    c10::string_view surrogate_name, double slope,
                                    ForwardLoop loop) {
  // The matrix products below must stay in the compute dtype even when the
  // caller runs under autocast (which already cast the inputs it wanted cast).
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const Dims d = check_inputs(x, w_in, w_rec, bias, alpha, theta, u0, s0);
  const Reset reset = parse_reset(reset_name);
  check_surrogate(surrogate_name, slope);  // used by backward; checked before any work
  const auto opts = x.options().dtype(d.compute);

  // I[t] = x[t] @ w_in.T + bias for all T steps at once, written straight into
  // the membrane buffer that the time loop then updates in place.
  at::Tensor membrane = at::empty({d.T, d.B, d.N}, opts);
  at::Tensor membrane_2d = membrane.view({d.T * d.B, d.N});
  const at::Tensor x_c = x.to(d.compute);
  if (w_in.has_value()) {
    const at::Tensor x_2d = x_c.reshape({d.T * d.B, d.F});
    const at::Tensor w_in_t = w_in->to(d.compute).t();
    if (bias.has_value()) membrane_2d.copy_(bias->to(d.compute).expand_as(membrane_2d));
    deterministic_mm_out(membrane_2d, x_2d, w_in_t, /*accumulate=*/bias.has_value());
  } else {
    membrane.copy_(x_c);
    if (bias.has_value()) membrane.add_(bias->to(d.compute));
  }

  at::Tensor spikes = at::empty({d.T, d.B, d.N}, opts);
  if (membrane.numel() > 0) {
    loop(loop_inputs(d, x, w_rec, alpha, theta, u0, s0, reset), membrane, spikes);
  }
  return {spikes.to(x.scalar_type()), membrane};
}

BackwardResult recurrent_lif_backward(
    const c10::optional<at::Tensor>& grad_spikes, const c10::optional<at::Tensor>& grad_membrane,
    const at::Tensor& x, const c10::optional<at::Tensor>& w_in,
    const c10::optional<at::Tensor>& w_rec, const at::Tensor& alpha, const at::Tensor& theta,
    const c10::optional<at::Tensor>& u0, const c10::optional<at::Tensor>& s0,
    const at::Tensor& spikes, const at::Tensor& membrane, c10::string_view reset_name,
    bool detach_reset, c10::string_view surrogate_name, double slope,
    std::array<bool, 8> needs_grad, BackwardLoop loop) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const Dims d = check_inputs(x, w_in, w_rec, c10::nullopt, alpha, theta, u0, s0);
  const Reset reset = parse_reset(reset_name);
  const Surrogate surrogate = check_surrogate(surrogate_name, slope);
  const std::vector<int64_t> out_shape{d.T, d.B, d.N};
  for (const auto& [t, name] :
       {std::make_pair(&spikes, "spikes"), std::make_pair(&membrane, "membrane")}) {
    check_like_x(*t, name, x, d.compute, true);
    check_shape(*t, name, out_shape, "[T, B, N]");
  }
  auto incoming = [&](const c10::optional<at::Tensor>& g, const char* name) {
    if (!g.has_value()) return at::Tensor();
    check_like_x(*g, name, x, d.compute, true);
    check_shape(*g, name, out_shape, "[T, B, N]");
    return compute_contiguous(*g, d.compute);
  };
  const auto [need_x, need_w_in, need_w_rec, need_bias, need_alpha, need_theta, need_u0, need_s0] =
      needs_grad;
  const auto opts = x.options().dtype(d.compute);

  BackwardLoopInputs in{loop_inputs(d, x, w_rec, alpha, theta, u0, s0, reset),
                        compute_contiguous(spikes, d.compute),
                        compute_contiguous(membrane, d.compute),
                        incoming(grad_spikes, "grad_spikes"),
                        incoming(grad_membrane, "grad_membrane"),
                        detach_reset,
                        surrogate,
                        slope,
                        need_alpha,
                        need_theta,
                        need_bias};
  BackwardLoopOutputs out;
  if (membrane.numel() > 0) {
    out = loop(in);
  } else {
    out.grad_u = at::zeros(out_shape, opts);
    out.grad_u0 = at::zeros({d.B, d.N}, opts);
    out.grad_s0_reset = at::zeros({d.B, d.N}, opts);
    out.alpha_sum = out.theta_sum = out.bias_sum = at::zeros({d.N}, opts);
  }

  // A fresh empty tensor per unneeded gradient: outputs must not alias each other.
  auto none = [&] { return at::empty({0}, x.options()); };
  const at::Tensor grad_u_2d = out.grad_u.view({d.T * d.B, d.N});
  // gU[1], what reaches the initial state (zero when T = 0).
  const at::Tensor grad_u_first = d.T > 0 ? out.grad_u[0] : at::zeros({d.B, d.N}, opts);
  auto per_neuron_grad = [&](bool needed, const at::Tensor& sum, const at::Tensor& param) {
    if (!needed) return none();
    return (param.dim() == 0 ? sum.sum() : sum).to(param.scalar_type());
  };

  at::Tensor grad_x = none(), grad_w_in = none(), grad_w_rec = none(), grad_s0 = none();
  if (need_x) {
    grad_x =
        (w_in.has_value() ? deterministic_mm(grad_u_2d, w_in->to(d.compute)).view({d.T, d.B, d.F})
                          : out.grad_u)
            .to(x.scalar_type());
  }
  if (need_w_in && w_in.has_value()) {
    grad_w_in = deterministic_mm(grad_u_2d.t(), x.to(d.compute).reshape({d.T * d.B, d.F}))
                    .to(w_in->scalar_type());
  }
  if (need_w_rec && w_rec.has_value()) {
    // sum_t gU[t].T @ S[t-1], with S[0] = s0: two GEMMs instead of a copy of S.
    const at::Tensor& s_first = in.state.s0;
    grad_w_rec = deterministic_mm(grad_u_first.t(), s_first);
    if (d.T > 1) {
      deterministic_mm_out(grad_w_rec, out.grad_u.narrow(0, 1, d.T - 1).reshape({-1, d.N}).t(),
                           in.spikes.narrow(0, 0, d.T - 1).reshape({-1, d.N}), /*accumulate=*/true);
    }
    grad_w_rec = grad_w_rec.to(w_rec->scalar_type());
  }
  if (need_s0 && s0.has_value()) {
    grad_s0 = out.grad_s0_reset;
    if (w_rec.has_value()) grad_s0 = grad_s0 + deterministic_mm(grad_u_first, in.state.w_rec);
    grad_s0 = grad_s0.to(s0->scalar_type());
  }
  return {grad_x,
          grad_w_in,
          grad_w_rec,
          need_bias ? out.bias_sum.to(x.scalar_type()) : none(),
          per_neuron_grad(need_alpha, out.alpha_sum, alpha),
          per_neuron_grad(need_theta, out.theta_sum, theta),
          need_u0 && u0.has_value() ? out.grad_u0.to(u0->scalar_type()) : none(),
          grad_s0};
}

TORCH_LIBRARY(torch_ext, m) {
  m.def(
      "recurrent_lif_forward(Tensor x, Tensor? w_in, Tensor? w_rec, Tensor? bias, "
      "Tensor alpha, Tensor theta, Tensor? u0, Tensor? s0, str reset, bool detach_reset, "
      "str surrogate, float slope) -> (Tensor spikes, Tensor membrane)");
  m.def(
      "recurrent_lif_backward(Tensor? grad_spikes, Tensor? grad_membrane, Tensor x, "
      "Tensor? w_in, Tensor? w_rec, Tensor alpha, Tensor theta, Tensor? u0, Tensor? s0, "
      "Tensor spikes, Tensor membrane, str reset, bool detach_reset, str surrogate, "
      "float slope, bool[8] needs_grad) -> (Tensor grad_x, Tensor grad_w_in, "
      "Tensor grad_w_rec, Tensor grad_bias, Tensor grad_alpha, Tensor grad_theta, "
      "Tensor grad_u0, Tensor grad_s0)");
}

}  // namespace torch_ext
