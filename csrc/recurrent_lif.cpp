#include "recurrent_lif.h"

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace torch_ext {

// Every check names the op (`op`, in scope) and the argument, so
// `TORCH_CHECK_*(cond, ARG(name), ...)`.
#define ARG(name) op, ": argument '", name, "' "

// MKL's C entry point (mkl_service.h maps mkl_set_num_threads_local to it) and
// the Fortran BLAS products, which torch's x86-64 wheels export from their
// statically linked MKL; weak, so builds on other BLAS libraries load without
// them (and use ATen's product instead).
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
extern "C" void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*,
                       const float*, const int*, const float*, const int*, const float*, float*,
                       const int*) __attribute__((weak));
extern "C" void dgemm_(const char*, const char*, const int*, const int*, const int*,
                       const double*, const double*, const int*, const double*, const int*,
                       const double*, double*, const int*) __attribute__((weak));

// MKL's products of bfloat16 / float16 operands into a float32 result with
// float32 accumulation (cblas, row-major), exported by the same wheels; weak
// like the above: without them low-precision inputs compute in float32.
extern "C" void cblas_gemm_bf16bf16f32(int layout, int trans_a, int trans_b, int m, int n, int k,
                                       float alpha, const uint16_t* a, int lda, const uint16_t* b,
                                       int ldb, float beta, float* c, int ldc)
    __attribute__((weak));
extern "C" void cblas_gemm_f16f16f32(int layout, int trans_a, int trans_b, int m, int n, int k,
                                     float alpha, const uint16_t* a, int lda, const uint16_t* b,
                                     int ldb, float beta, float* c, int ldc) __attribute__((weak));

bool low_precision_products(const at::Tensor& x) {
  if (!x.device().is_cpu()) return false;  // CUDA: not yet (no GPU has checked it)
  if (x.scalar_type() == at::kBFloat16) return cblas_gemm_bf16bf16f32 != nullptr;
  if (x.scalar_type() == at::kHalf) return cblas_gemm_f16f16f32 != nullptr;
  return false;
}

namespace {

// out (float32, row-major) = a @ b (+ out with accumulate), a and b bfloat16
// or float16 2-d views with one unit stride each, by one MKL call on this thread.
void low_precision_mm_on_this_thread(at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                                     bool accumulate) {
  constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
  const int64_t m = out.size(0), n = out.size(1), k = a.size(1);
  if (m == 0 || n == 0) return;
  auto layout = [&](const at::Tensor& t) {  // (trans, leading dimension)
    return t.stride(1) == 1 ? std::make_pair(kNoTrans, t.stride(0))
                            : std::make_pair(kTrans, t.stride(1));
  };
  const at::Tensor a_c = a.stride(1) == 1 || a.stride(0) == 1 ? a : a.contiguous();
  const at::Tensor b_c = b.stride(1) == 1 || b.stride(0) == 1 ? b : b.contiguous();
  const auto [trans_a, lda] = layout(a_c);
  const auto [trans_b, ldb] = layout(b_c);
  const int64_t largest = std::max({m, n, k, lda, ldb, out.stride(0)});
  TORCH_INTERNAL_ASSERT(out.stride(1) == 1 && largest <= std::numeric_limits<int>::max());
  const auto gemm =
      a.scalar_type() == at::kBFloat16 ? cblas_gemm_bf16bf16f32 : cblas_gemm_f16f16f32;
  gemm(kRowMajor, trans_a, trans_b, static_cast<int>(m), static_cast<int>(n),
       static_cast<int>(k), 1.0f, reinterpret_cast<const uint16_t*>(a_c.data_ptr()),
       static_cast<int>(std::max<int64_t>(lda, 1)),
       reinterpret_cast<const uint16_t*>(b_c.data_ptr()),
       static_cast<int>(std::max<int64_t>(ldb, 1)), accumulate ? 1.0f : 0.0f,
       out.data_ptr<float>(), static_cast<int>(out.stride(0)));
}

// One piece of deterministic_mm_out: ATen's product, or MKL's for
// low-precision operands (then out is float32).
void product_piece(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  if (a.scalar_type() == at::kBFloat16 || a.scalar_type() == at::kHalf) {
    low_precision_mm_on_this_thread(out, a, b, accumulate);
  } else if (accumulate) {
    out.addmm_(a, b);
  } else {
    at::mm_out(out, a, b);
  }
}

}  // namespace

SingleThreadedBlas::SingleThreadedBlas()
    : previous_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0) {}
SingleThreadedBlas::~SingleThreadedBlas() {
  if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous_);
}

template <typename T>
void gemm_on_this_thread(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                         int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  constexpr bool is_float = std::is_same_v<T, float>;
  const bool have_blas = is_float ? sgemm_ != nullptr : dgemm_ != nullptr;
  const int64_t largest = std::max({m, n, k, lda, ldb, ldc});
  if (have_blas && largest <= std::numeric_limits<int>::max()) {
    // Row-major c = a @ b is column-major c.T = b.T @ a.T: swap the operands.
    const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
    const int LDA = static_cast<int>(ldb), LDB = static_cast<int>(lda), LDC = static_cast<int>(ldc);
    const T one = 1;
    if constexpr (is_float) {
      sgemm_("N", "N", &M, &N, &K, &one, b, &LDA, a, &LDB, &beta, c, &LDC);
    } else {
      dgemm_("N", "N", &M, &N, &K, &one, b, &LDA, a, &LDB, &beta, c, &LDC);
    }
    return;
  }
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  const at::Tensor a_t = at::from_blob(const_cast<T*>(a), {m, k}, {lda, 1}, opts);
  const at::Tensor b_t = at::from_blob(const_cast<T*>(b), {k, n}, {ldb, 1}, opts);
  at::Tensor c_t = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  if (beta == T(0)) {
    at::mm_out(c_t, a_t, b_t);
  } else {
    c_t.mul_(beta).addmm_(a_t, b_t);
  }
}
template void gemm_on_this_thread<float>(int64_t, int64_t, int64_t, const float*, int64_t,
                                         const float*, int64_t, float, float*, int64_t);
template void gemm_on_this_thread<double>(int64_t, int64_t, int64_t, const double*, int64_t,
                                          const double*, int64_t, double, double*, int64_t);

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
  const int64_t rows = out.size(0), cols = out.size(1), inner = a.size(1);
  // Every split below is fixed by the shape alone, and every piece is one
  // single-threaded BLAS call, so the result does not depend on the thread
  // count. Pieces are few and large: each call packs its operands anew.
  const int64_t out_bytes = rows * cols * static_cast<int64_t>(out.element_size());
  const int64_t inner_chunks = std::min<int64_t>(
      {8, inner / 512, std::max<int64_t>(1, (int64_t{64} << 20) / std::max<int64_t>(out_bytes, 1))});
  if (inner >= 4 * rows && inner_chunks >= 2) {
    // A long reduction into a small output (the weight gradients): split the
    // inner dimension into chunks, one partial product each, summed in order.
    const int64_t chunk = (inner + inner_chunks - 1) / inner_chunks;
    const int64_t chunks = (inner + chunk - 1) / chunk;
    at::Tensor partial = at::empty({chunks, rows, cols}, out.options());
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      // Worker threads do not inherit the caller's dispatch state: stay below autograd.
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      const SingleThreadedBlas single_threaded;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t first = i * chunk, count = std::min(chunk, inner - first);
        at::Tensor partial_i = partial[i];
        product_piece(partial_i, a.narrow(1, first, count), b.narrow(0, first, count), false);
      }
    });
    for (int64_t i = 0; i < chunks; ++i) {
      if (i == 0 && !accumulate) {
        out.copy_(partial[0]);
      } else {
        out.add_(partial[i]);
      }
    }
    return;
  }
  const int64_t block = std::max<int64_t>(64, (rows + 7) / 8);
  const int64_t blocks = (rows + block - 1) / block;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const SingleThreadedBlas single_threaded;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t first = i * block, count = std::min(block, rows - first);
      at::Tensor out_rows = out.narrow(0, first, count);
      product_piece(out_rows, a.narrow(0, first, count), b, accumulate);
    }
  });
}

at::Tensor deterministic_mm(const at::Tensor& a, const at::Tensor& b) {
  const bool low = a.scalar_type() == at::kBFloat16 || a.scalar_type() == at::kHalf;
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options().dtype(low ? at::kFloat : a.scalar_type()));
  deterministic_mm_out(out, a, b);
  return out;
}

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

Options check_options(c10::string_view reset, bool detach_reset, c10::string_view surrogate,
                      std::optional<double> slope, at::ScalarType compute, const char* op) {
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

// Same device as x, and either x's dtype or the compute dtype (the latter lets
// float16 runs pass float32 state and parameters).
void check_like_x(const char* op, const at::Tensor& t, const char* name, const at::Tensor& x,
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

void check_required(const char* op, const at::Tensor& x,
                    std::initializer_list<std::pair<const at::Tensor*, const char*>> params) {
  TORCH_CHECK_VALUE(x.defined(), ARG("x"), "is required, got an undefined tensor");
  for (const auto& [t, name] : params) {
    TORCH_CHECK_VALUE(t->defined(), ARG(name), "is required, got an undefined tensor");
  }
}

void check_required(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& theta) {
  check_required("recurrent_lif", x, {{&alpha, "alpha"}, {&theta, "theta"}});
}

namespace {

// A per-neuron parameter and whether its values must lie in [0, 1] (a decay).
struct NamedParam {
  const at::Tensor* tensor;
  const char* name;
  bool decay;
};
using NamedState = std::pair<const OptionalTensor*, const char*>;

// The checks of every op's tensors: x, the weights, the model's parameters
// and its initial states (each [B, N]).
Dims check_inputs(const char* op, const at::Tensor& x, const OptionalTensor& w_in,
                  const OptionalTensor& w_rec, const OptionalTensor& bias,
                  std::initializer_list<NamedParam> params,
                  std::initializer_list<NamedState> states) {
  TORCH_CHECK_VALUE(x.defined(), ARG("x"), "is required, got an undefined tensor");
  for (const NamedParam& p : params) {
    TORCH_CHECK_VALUE(p.tensor->defined(), ARG(p.name), "is required, got an undefined tensor");
  }
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), ARG("x"),
                   "must be a floating-point tensor (float16, bfloat16, float32 or float64), got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 3, ARG("x"), "must have shape [T, B, F] (3 dims), got ",
                    x.sym_sizes());
  Dims d{x.sym_size(0), x.sym_size(1), x.sym_size(2), x.sym_size(2),
         compute_dtype(x.scalar_type()), op};
  if (w_in.has_value()) {
    check_like_x(op, *w_in, "w_in", x, d.compute, false);
    TORCH_CHECK_VALUE(w_in->dim() == 2 && w_in->sym_size(1) == d.F, ARG("w_in"),
                      "must have shape [N, F] with F = x.shape[2] = ", d.F, ", got ",
                      w_in->sym_sizes());
    d.N = w_in->sym_size(0);
  }
  if (w_rec.has_value()) {
    check_like_x(op, *w_rec, "w_rec", x, d.compute, false);
    const bool square = w_rec->dim() == 2 && w_rec->sym_size(0) == d.N && w_rec->sym_size(1) == d.N;
    const bool vector = w_rec->dim() == 1 && w_rec->sym_size(0) == d.N;
    TORCH_CHECK_VALUE(square || vector, ARG("w_rec"), "must have shape [N, N] = [", d.N, ", ", d.N,
                      "] (all-to-all) or [N] = [", d.N, "] (one-to-one) with ",
                      w_in.has_value() ? "N = w_in.shape[0]" : "N = x.shape[2] (w_in is None)",
                      ", got ", w_rec->sym_sizes());
  }
  if (bias.has_value()) {
    check_like_x(op, *bias, "bias", x, d.compute, false);
    check_shape(op, *bias, "bias", {d.N}, "[N]");
  }
  for (const NamedParam& p : params) check_neuron_param(*p.tensor, p.name, x, d);
  for (const NamedParam& p : params) {
    if (p.decay && p.tensor->device().is_cpu()) {
      // On CUDA this would cost a device sync; the modules keep decays in range there.
      TORCH_CHECK_VALUE(at::logical_and(*p.tensor >= 0, *p.tensor <= 1).all().item<bool>(),
                        ARG(p.name), "must lie in [0, 1] (and not be NaN)");
    }
  }
  for (const auto& [state, name] : states) {
    if (state->has_value()) {
      check_like_x(op, **state, name, x, d.compute, true);
      check_shape(op, **state, name, {d.B, d.N}, "[B, N]");
    }
  }
  return d;
}

Dims check_lif_inputs(const at::Tensor& x, const OptionalTensor& w_in, const OptionalTensor& w_rec,
                      const OptionalTensor& bias, const at::Tensor& alpha, const at::Tensor& theta,
                      const OptionalTensor& u0, const OptionalTensor& s0) {
  return check_inputs("recurrent_lif", x, w_in, w_rec, bias,
                      {{&alpha, "alpha", true}, {&theta, "theta", false}},
                      {{&u0, "u0"}, {&s0, "s0"}});
}

Dims check_adaptive_inputs(const at::Tensor& x, const OptionalTensor& w_in,
                           const OptionalTensor& w_rec, const OptionalTensor& bias,
                           const at::Tensor& alpha, const at::Tensor& beta, const at::Tensor& a,
                           const at::Tensor& b, const at::Tensor& theta, const OptionalTensor& v0,
                           const OptionalTensor& a0, const OptionalTensor& s0) {
  return check_inputs("recurrent_adlif", x, w_in, w_rec, bias,
                      {{&alpha, "alpha", true},
                       {&beta, "beta", true},
                       {&a, "a", false},
                       {&b, "b", false},
                       {&theta, "theta", false}},
                      {{&v0, "v0"}, {&a0, "a0"}, {&s0, "s0"}});
}

// lengths: [B] integers on x's device; on CPU also their values (on CUDA that
// would cost a device sync: there a length past T acts as T, below 0 as 0).
void check_lengths(const OptionalTensor& lengths, const at::Tensor& x, const Dims& d) {
  if (!lengths.has_value()) return;
  const char* op = d.op;
  TORCH_CHECK_VALUE(lengths->device() == x.device(), ARG("lengths"), "is on ", lengths->device(),
                    " but x is on ", x.device(), "; all tensors must be on one device");
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

// Every check of a LIF forward call: its tensors, lengths and options.
std::pair<Dims, Options> check_call(const at::Tensor& x, const OptionalTensor& w_in,
                                    const OptionalTensor& w_rec, const OptionalTensor& bias,
                                    const at::Tensor& alpha, const at::Tensor& theta,
                                    const OptionalTensor& u0, const OptionalTensor& s0,
                                    c10::string_view reset, bool detach_reset,
                                    c10::string_view surrogate, std::optional<double> slope,
                                    const OptionalTensor& lengths) {
  const Dims d = check_lif_inputs(x, w_in, w_rec, bias, alpha, theta, u0, s0);
  check_lengths(lengths, x, d);
  return {d, check_options(reset, detach_reset, surrogate, slope, d.compute, d.op)};
}

// The same for an adaptive call.
std::pair<Dims, Options> check_adaptive_call(
    const at::Tensor& x, const OptionalTensor& w_in, const OptionalTensor& w_rec,
    const OptionalTensor& bias, const at::Tensor& alpha, const at::Tensor& beta,
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& theta, const OptionalTensor& v0,
    const OptionalTensor& a0, const OptionalTensor& s0, c10::string_view reset,
    bool detach_reset, c10::string_view surrogate, std::optional<double> slope,
    const OptionalTensor& lengths) {
  const Dims d = check_adaptive_inputs(x, w_in, w_rec, bias, alpha, beta, a, b, theta, v0, a0, s0);
  check_lengths(lengths, x, d);
  return {d, check_options(reset, detach_reset, surrogate, slope, d.compute, d.op)};
}

// The backward's own arguments: the forward's outputs and the incoming
// gradients, each [T, B, N] where given.
void check_backward_inputs(const Dims& d, const at::Tensor& x, const at::Tensor& spikes,
                           std::initializer_list<NamedState> given) {
  const char* op = d.op;
  const std::vector<c10::SymInt> out_shape{d.T, d.B, d.N};
  check_like_x(op, spikes, "spikes", x, d.compute, true);
  check_shape(op, spikes, "spikes", out_shape, "[T, B, N]");
  for (const auto& [g, name] : given) {
    if (g->has_value()) {
      check_like_x(op, **g, name, x, d.compute, true);
      check_shape(op, **g, name, out_shape, "[T, B, N]");
    }
  }
}

// Every check of a backward call, in the same order for the real and the Meta
// kernels: the forward's tensors and lengths, the backward's own tensors, the options.
std::pair<Dims, Options> check_lif_backward_call(
    const at::Tensor& x, const OptionalTensor& w_in, const OptionalTensor& w_rec,
    const OptionalTensor& bias, const at::Tensor& alpha, const at::Tensor& theta,
    const OptionalTensor& u0, const OptionalTensor& s0, const at::Tensor& spikes,
    const OptionalTensor& membrane, const OptionalTensor& grad_spikes,
    const OptionalTensor& grad_membrane, c10::string_view reset, bool detach_reset,
    c10::string_view surrogate, std::optional<double> slope, const OptionalTensor& lengths) {
  const Dims d = check_lif_inputs(x, w_in, w_rec, bias, alpha, theta, u0, s0);
  check_lengths(lengths, x, d);
  check_backward_inputs(
      d, x, spikes,
      {{&membrane, "membrane"}, {&grad_spikes, "grad_spikes"}, {&grad_membrane, "grad_membrane"}});
  return {d, check_options(reset, detach_reset, surrogate, slope, d.compute, d.op)};
}

std::pair<Dims, Options> check_adaptive_backward_call(
    const OptionalTensor& grad_spikes, const OptionalTensor& grad_membrane,
    const OptionalTensor& grad_adaptation, const at::Tensor& x, const OptionalTensor& w_in,
    const OptionalTensor& w_rec, const OptionalTensor& bias, const at::Tensor& alpha,
    const at::Tensor& beta, const at::Tensor& a, const at::Tensor& b, const at::Tensor& theta,
    const OptionalTensor& v0, const OptionalTensor& a0, const OptionalTensor& s0,
    const at::Tensor& spikes, const OptionalTensor& membrane, const OptionalTensor& adaptation,
    c10::string_view reset, bool detach_reset, c10::string_view surrogate,
    std::optional<double> slope, const OptionalTensor& lengths) {
  const Dims d = check_adaptive_inputs(x, w_in, w_rec, bias, alpha, beta, a, b, theta, v0, a0, s0);
  check_lengths(lengths, x, d);
  check_backward_inputs(d, x, spikes,
                        {{&membrane, "membrane"},
                         {&adaptation, "adaptation"},
                         {&grad_spikes, "grad_spikes"},
                         {&grad_membrane, "grad_membrane"},
                         {&grad_adaptation, "grad_adaptation"}});
  return {d, check_options(reset, detach_reset, surrogate, slope, d.compute, d.op)};
}

at::Tensor compute_contiguous(const at::Tensor& t, at::ScalarType compute) {
  return t.to(compute).contiguous();
}

LoopInputs loop_inputs(Model model, int64_t B, int64_t N, at::ScalarType compute,
                       const at::Tensor& x, const OptionalTensor& w_rec,
                       std::initializer_list<const at::Tensor*> params,
                       std::initializer_list<const OptionalTensor*> initial,
                       const OptionalTensor& s0, Reset reset, const OptionalTensor& lengths) {
  const auto opts = x.options().dtype(compute);
  auto state = [&](const OptionalTensor& t) {
    return t.has_value() ? compute_contiguous(*t, compute) : at::zeros({B, N}, opts);
  };
  LoopInputs in{model, w_rec.has_value() ? compute_contiguous(*w_rec, compute) : at::Tensor(),
                {}, {}, state(s0), reset,
                lengths.has_value() ? lengths->to(at::kLong).contiguous() : at::Tensor()};
  for (const at::Tensor* p : params) in.params.push_back(compute_contiguous(*p, compute));
  for (const OptionalTensor* t : initial) in.initial.push_back(state(*t));
  return in;
}

}  // namespace

namespace {

// I[t] = x[t] @ w_in.T + bias for all T steps at once, as a [T, B, N] buffer in
// the compute dtype that the time loop then turns into the membrane in place.
// The forward and the low-memory backward's recomputation both call this, so
// both get the same bits.
at::Tensor input_current(const at::Tensor& x, const OptionalTensor& w_in,
                         const OptionalTensor& bias, int64_t N, at::ScalarType compute) {
  const int64_t T = x.size(0), B = x.size(1), F = x.size(2);
  at::Tensor current = at::empty({T, B, N}, x.options().dtype(compute));
  at::Tensor current_2d = current.view({T * B, N});
  if (w_in.has_value()) {
    // Contiguous whatever the caller's strides: BLAS picks its kernel by
    // layout, and a different kernel may round differently. Low-precision
    // inputs: the product of the rounded operands with float32 accumulation.
    const at::ScalarType operands = low_precision_products(x) ? x.scalar_type() : compute;
    const at::Tensor x_2d = x.to(operands).reshape({T * B, F}).contiguous();
    const at::Tensor w_in_t = w_in->to(operands).contiguous().t();
    if (bias.has_value()) current_2d.copy_(bias->to(compute).expand_as(current_2d));
    deterministic_mm_out(current_2d, x_2d, w_in_t, /*accumulate=*/bias.has_value());
  } else {
    current.copy_(x);
    if (bias.has_value()) current.add_(bias->to(compute));
  }
  return current;
}

}  // namespace

namespace {

// The forward of either model: the input current by one product, then the
// model's time loop. Returns the spikes (compute dtype) and the states.
std::pair<at::Tensor, std::vector<at::Tensor>> run_forward(const LoopInputs& in, const at::Tensor& x,
                                                          const OptionalTensor& w_in,
                                                          const OptionalTensor& bias, int64_t N,
                                                          at::ScalarType compute,
                                                          ForwardLoop loop) {
  const int64_t T = x.size(0), B = x.size(1);
  std::vector<at::Tensor> states{input_current(x, w_in, bias, N, compute)};
  for (int k = 1; k < num_states(in.model); ++k) {
    states.push_back(at::empty({T, B, N}, x.options().dtype(compute)));
  }
  at::Tensor spikes = at::empty({T, B, N}, x.options().dtype(compute));
  if (spikes.numel() > 0) loop(in, states, spikes, /*replay=*/false);
  return {spikes, states};
}

// The states for the backward: the saved ones, or (the low-memory mode)
// recomputed exactly as the forward computed them, from the input current
// and the known spikes.
// (A partial save, some states given and some not, recomputes them all.)
std::vector<at::Tensor> states_for_backward(const LoopInputs& in,
                                            std::vector<OptionalTensor> saved,
                                            at::Tensor& spikes, const at::Tensor& x,
                                            const OptionalTensor& w_in, const OptionalTensor& bias,
                                            int64_t N, at::ScalarType compute,
                                            ForwardLoop forward_loop) {
  std::vector<at::Tensor> states;
  const bool all_saved =
      std::all_of(saved.begin(), saved.end(), [](const OptionalTensor& t) { return t.has_value(); });
  if (all_saved) {
    for (const OptionalTensor& t : saved) states.push_back(compute_contiguous(*t, compute));
    return states;
  }
  const int64_t T = x.size(0), B = x.size(1);
  states.push_back(input_current(x, w_in, bias, N, compute));
  for (size_t k = 1; k < saved.size(); ++k) {
    states.push_back(at::empty({T, B, N}, x.options().dtype(compute)));
  }
  if (spikes.numel() > 0) forward_loop(in, states, spikes, /*replay=*/true);
  return states;
}

// The loop's outputs when it does not run (T, B or N is 0): zeros, each its
// own tensor (outputs never alias).
BackwardLoopOutputs empty_backward(Model model, int64_t T, int64_t B, int64_t N,
                                   const at::TensorOptions& opts) {
  BackwardLoopOutputs out;
  out.grad_u = at::zeros({T, B, N}, opts);
  for (int k = 0; k < num_states(model); ++k) out.grad_initial.push_back(at::zeros({B, N}, opts));
  out.grad_s0_reset = at::zeros({B, N}, opts);
  for (int k = 0; k < num_params(model); ++k) out.param_sums.push_back(at::zeros({N}, opts));
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
// the recurrent input S[t-1] @ w_rec.T, given the loop's gU and the gain with
// which they enter gU's state (dL/dI[t] = gain * gU[t]; gain undefined: 1).
struct InputGrads {
  at::Tensor x, w_in, w_rec, bias, s0;
  // [N]: sum over t and b of gU[t] * (I[t] + S[t-1] @ w_rec.T), if asked for
  // (the adaptive model's alpha gradient needs it).
  at::Tensor drive;
};

struct InputGradsNeeded {
  bool x, w_in, w_rec, bias, s0, drive;
};

InputGrads input_gradients(const BackwardLoopInputs& in, const BackwardLoopOutputs& out,
                           const at::Tensor& x, const OptionalTensor& w_in,
                           const OptionalTensor& w_rec, const OptionalTensor& bias,
                           const OptionalTensor& s0, const at::Tensor& gain,
                           InputGradsNeeded need, at::ScalarType compute) {
  const int64_t T = x.size(0), B = x.size(1), F = x.size(2), N = out.grad_u.size(2);
  const auto opts = x.options().dtype(compute);
  // A fresh empty tensor per unneeded gradient: outputs must not alias each other.
  auto none = [&] { return at::empty({0}, x.options()); };
  const at::Tensor grad_u_2d = out.grad_u.view({T * B, N});
  // gU[1], what reaches the initial state (zero when T = 0).
  const at::Tensor grad_u_first = T > 0 ? out.grad_u[0] : at::zeros({B, N}, opts);
  const bool one_to_one = in.state.one_to_one();
  InputGrads g{none(), none(), none(), none(), none(), at::Tensor()};
  const at::Tensor w_in_c =
      w_in.has_value() && (need.x || need.drive) ? compute_contiguous(*w_in, compute)
                                                 : at::Tensor();
  // The products' operands: low-precision inputs multiply in their own dtype
  // (gU rounded to it) with float32 accumulation, as the forward's projection.
  const at::ScalarType operands =
      w_in.has_value() && low_precision_products(x) ? x.scalar_type() : compute;
  const at::Tensor grad_u_ops =
      w_in.has_value() && (need.x || need.w_in || need.drive) ? grad_u_2d.to(operands)
                                                             : at::Tensor();
  at::Tensor x_ops = need.w_in || need.drive ? x.to(operands) : at::Tensor();
  if (need.drive && in.state.lengths.defined()) {
    // Steps past a row's length take no part: their x (padding, possibly
    // NaN) must not reach the drive through gU = 0 times it.
    const at::Tensor steps = at::arange(T, in.state.lengths.options()).view({T, 1, 1});
    x_ops = x_ops.masked_fill(steps >= in.state.lengths.view({1, B, 1}), 0);
  }
  if (need.x) {
    g.x = (w_in.has_value()
               ? deterministic_mm(grad_u_ops, scale_rows(gain, w_in_c).to(operands).contiguous())
                     .view({T, B, F})
               : (gain.defined() ? out.grad_u * gain : out.grad_u))
              .to(x.scalar_type());
  }
  at::Tensor drive;
  if (w_in.has_value() && (need.w_in || need.drive)) {
    // sum_t gU[t].T @ x[t]: one product over all T*B rows.
    const at::Tensor m = deterministic_mm(grad_u_ops.t(), x_ops.reshape({T * B, F}).contiguous());
    if (need.w_in) g.w_in = scale_rows(gain, m).to(w_in->scalar_type());
    if (need.drive) drive = (w_in_c * m).sum(1);
  } else if (need.drive) {
    drive = (out.grad_u * x_ops).sum(0).sum(0);
  }
  if (need.drive && bias.has_value()) drive = drive + bias->to(compute) * out.bias_sum;
  if (need.bias) {
    const at::Tensor sum = gain.defined() ? out.bias_sum * gain : out.bias_sum;
    g.bias = sum.to(x.scalar_type());
  }
  const bool want_w_rec = w_rec.has_value() && (need.w_rec || need.drive);
  if (want_w_rec && one_to_one) {  // sum over t, b of gU[t] * S[t-1]
    if (need.w_rec) {
      const at::Tensor sum = gain.defined() ? out.w_rec_sum * gain : out.w_rec_sum;
      g.w_rec = sum.to(w_rec->scalar_type());
    }
    if (need.drive) drive = drive + in.state.w_rec * out.w_rec_sum;
  } else if (want_w_rec) {
    at::Tensor m = out.w_rec_grad;
    if (!m.defined()) {
      // sum_t gU[t].T @ S[t-1], with S[0] = s0: two GEMMs instead of a copy of S.
      m = deterministic_mm(grad_u_first.t(), in.state.s0);
      if (T > 1) {
        const int64_t rows = (T - 1) * B;
        deterministic_mm_out(m, out.grad_u.narrow(0, 1, T - 1).reshape({rows, N}).t(),
                             in.spikes.narrow(0, 0, T - 1).reshape({rows, N}),
                             /*accumulate=*/true);
      }
    }
    if (need.w_rec) g.w_rec = scale_rows(gain, m).to(w_rec->scalar_type());
    if (need.drive) drive = drive + (in.state.w_rec * m).sum(1);
  }
  if (need.s0 && s0.has_value()) {
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

// A parameter's gradient from its [N] sum: summed once more for a 0-dim parameter.
at::Tensor param_grad(bool needed, const at::Tensor& sum, const at::Tensor& param,
                      const at::Tensor& x) {
  if (!needed) return at::empty({0}, x.options());
  return (param.dim() == 0 ? sum.sum() : sum).to(param.scalar_type());
}

}  // namespace

ForwardResult recurrent_lif_forward(const at::Tensor& x, const OptionalTensor& w_in,
                                    const OptionalTensor& w_rec, const OptionalTensor& bias,
                                    const at::Tensor& alpha, const at::Tensor& theta,
                                    const OptionalTensor& u0, const OptionalTensor& s0,
                                    c10::string_view reset_name, bool detach_reset,
                                    c10::string_view surrogate_name, std::optional<double> slope,
                                    bool /*save_membrane: for the autograd kernel*/,
                                    const OptionalTensor& lengths, ForwardLoop loop) {
  // The matrix products below stay in the compute dtype even under autocast
  // (whose kernel for this op already cast the inputs it casts).
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto [sym, options] = check_call(x, w_in, w_rec, bias, alpha, theta, u0, s0, reset_name,
                                         detach_reset, surrogate_name, slope, lengths);
  const int64_t B = x.size(1), N = sym.N.expect_int();
  const LoopInputs in = loop_inputs(Model::LIF, B, N, sym.compute, x, w_rec, {&alpha, &theta},
                                    {&u0}, s0, options.reset, lengths);
  auto [spikes, states] = run_forward(in, x, w_in, bias, N, sym.compute, loop);
  return {spikes.to(x.scalar_type()), states[0]};
}

BackwardResult recurrent_lif_backward(const OptionalTensor& grad_spikes,
                                      const OptionalTensor& grad_membrane, const at::Tensor& x,
                                      const OptionalTensor& w_in, const OptionalTensor& w_rec,
                                      const at::Tensor& alpha, const at::Tensor& theta,
                                      const OptionalTensor& u0, const OptionalTensor& s0,
                                      const at::Tensor& spikes, const OptionalTensor& membrane,
                                      c10::string_view reset_name, bool detach_reset,
                                      c10::string_view surrogate_name,
                                      std::optional<double> slope,
                                      std::array<bool, 8> needs_grad, const OptionalTensor& bias,
                                      const OptionalTensor& lengths, ForwardLoop forward_loop,
                                      BackwardLoop loop) {
  // The matrix products below stay in the compute dtype even under autocast
  // (whose kernel for this op already cast the inputs it casts).
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto [sym, options] = check_lif_backward_call(
      x, w_in, w_rec, bias, alpha, theta, u0, s0, spikes, membrane, grad_spikes, grad_membrane,
      reset_name, detach_reset, surrogate_name, slope, lengths);
  const int64_t T = x.size(0), B = x.size(1), N = sym.N.expect_int();
  const at::ScalarType compute = sym.compute;
  auto incoming = [&](const OptionalTensor& g) {
    return g.has_value() ? compute_contiguous(*g, compute) : at::Tensor();
  };
  const auto [need_x, need_w_in, need_w_rec, need_bias, need_alpha, need_theta, need_u0, need_s0] =
      needs_grad;

  LoopInputs state = loop_inputs(Model::LIF, B, N, compute, x, w_rec, {&alpha, &theta}, {&u0}, s0,
                                 options.reset, lengths);
  at::Tensor spikes_c = compute_contiguous(spikes, compute);
  std::vector<at::Tensor> states = states_for_backward(state, {membrane}, spikes_c, x, w_in, bias,
                                                       N, compute, forward_loop);
  const bool one_to_one = state.one_to_one();
  const at::Tensor w_rec_adjoint = state.w_rec;
  BackwardLoopInputs in{std::move(state),
                        spikes_c,
                        std::move(states),
                        incoming(grad_spikes),
                        {incoming(grad_membrane)},
                        w_rec_adjoint,
                        options.detach_reset,
                        options.surrogate,
                        options.slope,
                        {need_alpha, need_theta},
                        need_bias,
                        need_w_rec && one_to_one,
                        need_w_rec && w_rec.has_value() && !one_to_one};
  const BackwardLoopOutputs out = spikes_c.numel() > 0
                                      ? loop(in)
                                      : empty_backward(Model::LIF, T, B, N, x.options().dtype(compute));
  const InputGrads g = input_gradients(in, out, x, w_in, w_rec, bias, s0, at::Tensor(),
                                       {need_x, need_w_in, need_w_rec, need_bias, need_s0, false},
                                       compute);
  return {g.x,
          g.w_in,
          g.w_rec,
          g.bias,
          param_grad(need_alpha, out.param_sums[0], alpha, x),
          param_grad(need_theta, out.param_sums[1], theta, x),
          need_u0 && u0.has_value() ? out.grad_initial[0].to(u0->scalar_type())
                                    : at::empty({0}, x.options()),
          g.s0};
}

AdaptiveForwardResult recurrent_adlif_forward(
    const at::Tensor& x, const OptionalTensor& w_in, const OptionalTensor& w_rec,
    const OptionalTensor& bias, const at::Tensor& alpha, const at::Tensor& beta,
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& theta, const OptionalTensor& v0,
    const OptionalTensor& a0, const OptionalTensor& s0, c10::string_view reset_name,
    bool detach_reset, c10::string_view surrogate_name, std::optional<double> slope,
    bool /*save_state: for the autograd kernel*/, const OptionalTensor& lengths,
    ForwardLoop loop) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto [sym, options] =
      check_adaptive_call(x, w_in, w_rec, bias, alpha, beta, a, b, theta, v0, a0, s0, reset_name,
                          detach_reset, surrogate_name, slope, lengths);
  const int64_t B = x.size(1), N = sym.N.expect_int();
  const LoopInputs in =
      loop_inputs(Model::Adaptive, B, N, sym.compute, x, w_rec, {&alpha, &beta, &a, &b, &theta},
                  {&v0, &a0}, s0, options.reset, lengths);
  auto [spikes, states] = run_forward(in, x, w_in, bias, N, sym.compute, loop);
  return {spikes.to(x.scalar_type()), states[0], states[1]};
}

std::vector<at::Tensor> recurrent_adlif_backward(
    const OptionalTensor& grad_spikes, const OptionalTensor& grad_membrane,
    const OptionalTensor& grad_adaptation, const at::Tensor& x, const OptionalTensor& w_in,
    const OptionalTensor& w_rec, const OptionalTensor& bias, const at::Tensor& alpha,
    const at::Tensor& beta, const at::Tensor& a, const at::Tensor& b, const at::Tensor& theta,
    const OptionalTensor& v0, const OptionalTensor& a0, const OptionalTensor& s0,
    const at::Tensor& spikes, const OptionalTensor& membrane, const OptionalTensor& adaptation,
    c10::string_view reset_name, bool detach_reset, c10::string_view surrogate_name,
    std::optional<double> slope, std::array<bool, kAdaptiveInputs> needs_grad,
    const OptionalTensor& lengths, ForwardLoop forward_loop, BackwardLoop loop) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto [sym, options] = check_adaptive_backward_call(
      grad_spikes, grad_membrane, grad_adaptation, x, w_in, w_rec, bias, alpha, beta, a, b, theta,
      v0, a0, s0, spikes, membrane, adaptation, reset_name, detach_reset, surrogate_name, slope,
      lengths);
  const int64_t T = x.size(0), B = x.size(1), N = sym.N.expect_int();
  const at::ScalarType compute = sym.compute;
  auto incoming = [&](const OptionalTensor& g) {
    return g.has_value() ? compute_contiguous(*g, compute) : at::Tensor();
  };
  const auto [need_x, need_w_in, need_w_rec, need_bias, need_alpha, need_beta, need_a, need_b,
              need_theta, need_v0, need_a0, need_s0] = needs_grad;

  LoopInputs state =
      loop_inputs(Model::Adaptive, B, N, compute, x, w_rec, {&alpha, &beta, &a, &b, &theta},
                  {&v0, &a0}, s0, options.reset, lengths);
  at::Tensor spikes_c = compute_contiguous(spikes, compute);
  std::vector<at::Tensor> states = states_for_backward(state, {membrane, adaptation}, spikes_c, x,
                                                       w_in, bias, N, compute, forward_loop);
  // The input current and the recurrent input enter V with the gain 1 - alpha.
  const at::Tensor gain = 1 - state.params[0];
  const bool one_to_one = state.one_to_one();
  const at::Tensor w_rec_adjoint =
      !state.w_rec.defined()
          ? at::Tensor()
          : (one_to_one ? state.w_rec * gain : scale_rows(gain, state.w_rec)).contiguous();
  // alpha's gradient needs the sums of gV * (I + rec) (input_gradients' drive),
  // so the sums behind the bias and w_rec gradients too.
  BackwardLoopInputs in{std::move(state),
                        spikes_c,
                        std::move(states),
                        incoming(grad_spikes),
                        {incoming(grad_membrane), incoming(grad_adaptation)},
                        w_rec_adjoint,
                        options.detach_reset,
                        options.surrogate,
                        options.slope,
                        {need_alpha, need_beta, need_a, need_b, need_theta},
                        need_bias || (need_alpha && bias.has_value()),
                        (need_w_rec || need_alpha) && one_to_one,
                        (need_w_rec || need_alpha) && w_rec.has_value() && !one_to_one};
  const BackwardLoopOutputs out =
      spikes_c.numel() > 0 ? loop(in)
                           : empty_backward(Model::Adaptive, T, B, N, x.options().dtype(compute));
  const InputGrads g =
      input_gradients(in, out, x, w_in, w_rec, bias, s0, gain,
                      {need_x, need_w_in, need_w_rec, need_bias, need_s0, need_alpha}, compute);
  auto state_grad = [&](bool needed, const OptionalTensor& given, const at::Tensor& grad) {
    return needed && given.has_value() ? grad.to(given->scalar_type()) : at::empty({0}, x.options());
  };
  return {g.x,
          g.w_in,
          g.w_rec,
          g.bias,
          param_grad(need_alpha, need_alpha ? out.param_sums[0] - g.drive : at::Tensor(), alpha, x),
          param_grad(need_beta, out.param_sums[1], beta, x),
          param_grad(need_a, out.param_sums[2], a, x),
          param_grad(need_b, out.param_sums[3], b, x),
          param_grad(need_theta, out.param_sums[4], theta, x),
          state_grad(need_v0, v0, out.grad_initial[0]),
          state_grad(need_a0, a0, out.grad_initial[1]),
          g.s0};
}

namespace {

// Meta kernels: the same checks as the real kernels, then outputs of the right
// shapes and dtypes and nothing computed. torch.compile, torch.export and
// opcheck run them on fake tensors (with symbolic shapes), and they are what a
// call with meta tensors reaches, so a meta tensor among real ones gets the
// same "all tensors must be on one device" error as any other mix.
ForwardResult forward_meta(const at::Tensor& x, const OptionalTensor& w_in,
                           const OptionalTensor& w_rec, const OptionalTensor& bias,
                           const at::Tensor& alpha, const at::Tensor& theta,
                           const OptionalTensor& u0, const OptionalTensor& s0,
                           c10::string_view reset, bool detach_reset, c10::string_view surrogate,
                           std::optional<double> slope, bool /*save_membrane*/,
                           const OptionalTensor& lengths) {
  const Dims d = check_call(x, w_in, w_rec, bias, alpha, theta, u0, s0, reset, detach_reset,
                            surrogate, slope, lengths)
                     .first;
  const std::vector<c10::SymInt> shape{d.T, d.B, d.N};
  return {at::empty_symint(shape, x.options()),
          at::empty_symint(shape, x.options().dtype(d.compute))};
}

// The checks alone, as the op `_recurrent_lif_check`: the plain-PyTorch
// reference runs them, so it accepts and rejects exactly what the op does.
void check_call_kernel(const at::Tensor& x, const OptionalTensor& w_in, const OptionalTensor& w_rec,
                       const OptionalTensor& bias, const at::Tensor& alpha,
                       const at::Tensor& theta, const OptionalTensor& u0,
                       const OptionalTensor& s0, c10::string_view reset, bool detach_reset,
                       c10::string_view surrogate, std::optional<double> slope,
                       const OptionalTensor& lengths) {
  check_call(x, w_in, w_rec, bias, alpha, theta, u0, s0, reset, detach_reset, surrogate, slope,
             lengths);
}

BackwardResult backward_meta(const OptionalTensor& grad_spikes,
                             const OptionalTensor& grad_membrane, const at::Tensor& x,
                             const OptionalTensor& w_in, const OptionalTensor& w_rec,
                             const at::Tensor& alpha, const at::Tensor& theta,
                             const OptionalTensor& u0, const OptionalTensor& s0,
                             const at::Tensor& spikes, const OptionalTensor& membrane,
                             c10::string_view reset, bool detach_reset, c10::string_view surrogate,
                             std::optional<double> slope, std::array<bool, 8> needs_grad,
                             const OptionalTensor& bias, const OptionalTensor& lengths) {
  const Dims d = check_lif_backward_call(x, w_in, w_rec, bias, alpha, theta, u0, s0, spikes,
                                         membrane, grad_spikes, grad_membrane, reset,
                                         detach_reset, surrogate, slope, lengths)
                     .first;
  // Gradient i is shaped like input i (bias: [N] in x's dtype); one not needed
  // is empty, as in the real kernels.
  auto like = [&](int i, const OptionalTensor& t) {
    return needs_grad[i] && t.has_value() ? at::empty_symint(t->sym_sizes(), t->options())
                                          : at::empty({0}, x.options());
  };
  return {like(0, x),
          like(1, w_in),
          like(2, w_rec),
          needs_grad[3] ? at::empty_symint({d.N}, x.options()) : at::empty({0}, x.options()),
          like(4, alpha),
          like(5, theta),
          like(6, u0),
          like(7, s0)};
}

AdaptiveForwardResult adaptive_forward_meta(
    const at::Tensor& x, const OptionalTensor& w_in, const OptionalTensor& w_rec,
    const OptionalTensor& bias, const at::Tensor& alpha, const at::Tensor& beta,
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& theta, const OptionalTensor& v0,
    const OptionalTensor& a0, const OptionalTensor& s0, c10::string_view reset,
    bool detach_reset, c10::string_view surrogate, std::optional<double> slope,
    bool /*save_state*/, const OptionalTensor& lengths) {
  const Dims d = check_adaptive_call(x, w_in, w_rec, bias, alpha, beta, a, b, theta, v0, a0, s0,
                                     reset, detach_reset, surrogate, slope, lengths)
                     .first;
  const std::vector<c10::SymInt> shape{d.T, d.B, d.N};
  return {at::empty_symint(shape, x.options()),
          at::empty_symint(shape, x.options().dtype(d.compute)),
          at::empty_symint(shape, x.options().dtype(d.compute))};
}

void adaptive_check_kernel(const at::Tensor& x, const OptionalTensor& w_in,
                           const OptionalTensor& w_rec, const OptionalTensor& bias,
                           const at::Tensor& alpha, const at::Tensor& beta, const at::Tensor& a,
                           const at::Tensor& b, const at::Tensor& theta, const OptionalTensor& v0,
                           const OptionalTensor& a0, const OptionalTensor& s0,
                           c10::string_view reset, bool detach_reset, c10::string_view surrogate,
                           std::optional<double> slope, const OptionalTensor& lengths) {
  check_adaptive_call(x, w_in, w_rec, bias, alpha, beta, a, b, theta, v0, a0, s0, reset,
                      detach_reset, surrogate, slope, lengths);
}

std::vector<at::Tensor> adaptive_backward_meta(
    const OptionalTensor& grad_spikes, const OptionalTensor& grad_membrane,
    const OptionalTensor& grad_adaptation, const at::Tensor& x, const OptionalTensor& w_in,
    const OptionalTensor& w_rec, const OptionalTensor& bias, const at::Tensor& alpha,
    const at::Tensor& beta, const at::Tensor& a, const at::Tensor& b, const at::Tensor& theta,
    const OptionalTensor& v0, const OptionalTensor& a0, const OptionalTensor& s0,
    const at::Tensor& spikes, const OptionalTensor& membrane, const OptionalTensor& adaptation,
    c10::string_view reset, bool detach_reset, c10::string_view surrogate,
    std::optional<double> slope, std::array<bool, kAdaptiveInputs> needs_grad,
    const OptionalTensor& lengths) {
  const Dims d = check_adaptive_backward_call(grad_spikes, grad_membrane, grad_adaptation, x,
                                              w_in, w_rec, bias, alpha, beta, a, b, theta, v0, a0,
                                              s0, spikes, membrane, adaptation, reset,
                                              detach_reset, surrogate, slope, lengths)
                     .first;
  const std::array<OptionalTensor, kAdaptiveInputs> inputs{x, w_in, w_rec, bias, alpha, beta,
                                                           a, b, theta, v0, a0, s0};
  std::vector<at::Tensor> grads;
  for (int i = 0; i < kAdaptiveInputs; ++i) {
    const OptionalTensor& t = inputs[i];
    if (!needs_grad[i] || !t.has_value()) {
      grads.push_back(at::empty({0}, x.options()));
    } else if (i == 3) {  // bias: [N] in x's dtype
      grads.push_back(at::empty_symint({d.N}, x.options()));
    } else {
      grads.push_back(at::empty_symint(t->sym_sizes(), t->options()));
    }
  }
  return grads;
}

}  // namespace

TORCH_LIBRARY(torch_ext, m) {
  m.def(
      "recurrent_lif(Tensor x, Tensor? w_in, Tensor? w_rec, Tensor? bias, Tensor alpha, "
      "Tensor theta, Tensor? u0=None, Tensor? s0=None, str reset=\"subtract\", "
      "bool detach_reset=False, str surrogate=\"sigmoid\", float? slope=None, "
      "bool save_membrane=True, Tensor? lengths=None) -> (Tensor spikes, Tensor membrane)");
  m.def(
      "_recurrent_lif_backward(Tensor? grad_spikes, Tensor? grad_membrane, Tensor x, "
      "Tensor? w_in, Tensor? w_rec, Tensor alpha, Tensor theta, Tensor? u0, Tensor? s0, "
      "Tensor spikes, Tensor? membrane, str reset, bool detach_reset, str surrogate, "
      "float? slope, bool[8] needs_grad, Tensor? bias=None, Tensor? lengths=None) "
      "-> (Tensor grad_x, Tensor grad_w_in, "
      "Tensor grad_w_rec, Tensor grad_bias, Tensor grad_alpha, Tensor grad_theta, "
      "Tensor grad_u0, Tensor grad_s0)");
  // The forward's checks without the computation (for the reference).
  m.def(
      "_recurrent_lif_check(Tensor x, Tensor? w_in, Tensor? w_rec, Tensor? bias, Tensor alpha, "
      "Tensor theta, Tensor? u0, Tensor? s0, str reset, bool detach_reset, str surrogate, "
      "float? slope, Tensor? lengths) -> ()");
  // The adaptive (SE-adLIF) layer: the same machinery with a second state.
  m.def(
      "recurrent_adlif(Tensor x, Tensor? w_in, Tensor? w_rec, Tensor? bias, Tensor alpha, "
      "Tensor beta, Tensor a, Tensor b, Tensor theta, Tensor? v0=None, Tensor? a0=None, "
      "Tensor? s0=None, str reset=\"zero\", bool detach_reset=True, str surrogate=\"sigmoid\", "
      "float? slope=None, bool save_state=True, Tensor? lengths=None) "
      "-> (Tensor spikes, Tensor membrane, Tensor adaptation)");
  m.def(
      "_recurrent_adlif_backward(Tensor? grad_spikes, Tensor? grad_membrane, "
      "Tensor? grad_adaptation, Tensor x, Tensor? w_in, Tensor? w_rec, Tensor? bias, "
      "Tensor alpha, Tensor beta, Tensor a, Tensor b, Tensor theta, Tensor? v0, Tensor? a0, "
      "Tensor? s0, Tensor spikes, Tensor? membrane, Tensor? adaptation, str reset, "
      "bool detach_reset, str surrogate, float? slope, bool[12] needs_grad, "
      "Tensor? lengths=None) -> Tensor[]");
  m.def(
      "_recurrent_adlif_check(Tensor x, Tensor? w_in, Tensor? w_rec, Tensor? bias, "
      "Tensor alpha, Tensor beta, Tensor a, Tensor b, Tensor theta, Tensor? v0, Tensor? a0, "
      "Tensor? s0, str reset, bool detach_reset, str surrogate, float? slope, "
      "Tensor? lengths) -> ()");
}

// One kernel for every device (Meta, and so fake tensors, included): it reads
// values only where check_inputs/check_lengths do, on CPU.
TORCH_LIBRARY_IMPL(torch_ext, CompositeExplicitAutograd, m) {
  m.impl("_recurrent_lif_check", &check_call_kernel);
  m.impl("_recurrent_adlif_check", &adaptive_check_kernel);
}

TORCH_LIBRARY_IMPL(torch_ext, Meta, m) {
  m.impl("recurrent_lif", &forward_meta);
  m.impl("_recurrent_lif_backward", &backward_meta);
  m.impl("recurrent_adlif", &adaptive_forward_meta);
  m.impl("_recurrent_adlif_backward", &adaptive_backward_meta);
}

}  // namespace torch_ext
