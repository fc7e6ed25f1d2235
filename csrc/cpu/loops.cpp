// CPU time loops of every neuron op: one skeleton (spike gather, lengths,
// replay, blocked reverse loop, sparse w_rec gradient) for all models, with
// each model's per-element step and adjoint (csrc/neurons/) plugged in at
// compile time, and the CPU kernels of every model of the registry.
//
// Forward: batch rows never interact, so each thread runs the whole time loop
// for its own rows (no synchronisation per step, bitwise independent of the
// thread count). Spikes are binary, so the recurrent input S[t-1] @ w_rec.T is
// the sum of the w_rec columns of the neurons that fired: a gather of
// contiguous rows of w_rec.T, costing rate * N^2 instead of N^2 per row.
// Measured against the alternative (one BLAS product S[t-1] @ w_rec.T per step
// over the batch, then the element-wise pass) on the 2-core CI machine, at
// spike rates of 10-24 %, T=300 B=32 N=128 and T=200 B=32 N=512: within the
// run-to-run noise of each other (7-10 ms and 31-43 ms for both). The gather
// stays: it needs no synchronisation per step and gets cheaper as spikes get
// sparser. A source neuron whose weights are not all finite is always added,
// spike or not, so that inf/NaN spread as in the dense product (0 * inf = NaN).
// The exception: on a CPU with bfloat16 matrix instructions (AMX) and
// bfloat16 weights (LoopInputs::w_out_packed), blocks of rows step together
// and a block's dense steps take one product on them, which is several
// times faster than float32 there; whether a step of a row takes the product
// or the gather then depends on the other rows of its block (a split fixed
// by B, not by the thread count), as do its sums' order and last bits.
//
// Backward: gU[t+1] (the gradient of the model's input state, the one the
// recurrent input enters) is dense, so the recurrent term gU[t+1] @
// w_rec_adjoint (w_rec, its rows scaled by the model's input gain) is a BLAS
// product; each block of batch rows runs the whole reverse loop on one thread
// (its rows' product, then one fused element-wise pass per step). The
// per-neuron sums of the parameter gradients and of gU accumulate in a fixed
// order (t, then b), so results do not depend on the number of threads. The gradient of
// an all-to-all w_rec, sum_t gU[t].T @ S[t-1], again uses that spikes are
// binary and sparse: one add of a gU row per spike (product_from_nonzeros).
//
// The sigmoid surrogate's exp vectorises through glibc's vector math library
// (libmvec): the declarations below tell GCC that exp/expf have SIMD variants
// (glibc's headers say so only under -ffast-math, which this file must not use).
extern "C" float expf(float) noexcept __attribute__((simd("notinbranch")));
extern "C" double exp(double) noexcept __attribute__((simd("notinbranch")));
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "../core/blas.h"
#include "../core/buffers.h"
#include "../core/op.h"
#include "../neurons/registry.h"

namespace torch_ext {
namespace {

// Elements per task of the per-neuron sums: below this a parallel region costs
// more than it saves.
constexpr int64_t kElementwiseGrain = 2048;

// The row functions below take one __restrict__ pointer per parameter and
// state (GCC trusts restrict on parameters, not on arrays of pointers), up to
// these counts; a model with more needs more of them.
static_assert(kMaxParams == 5 && kMaxStates == 2, "the row functions' pointer lists");

// The model's parameters as [N] arrays (a scalar broadcast), so the
// per-neuron loops below read them contiguously and vectorise.
template <typename scalar_t>
struct NeuronParams {
  std::vector<at::Tensor> arrays;
  std::array<const scalar_t*, kMaxParams> ptr{};
  NeuronParams(const LoopInputs& in, int64_t N) {
    for (size_t k = 0; k < in.params.size(); ++k) {
      arrays.push_back(in.params[k].expand({N}).contiguous());
      ptr[k] = arrays.back().data_ptr<scalar_t>();
    }
  }
};

// Neuron n's parameters, from the per-parameter arrays (those past the
// model's count are never read).
#define TORCH_EXT_PARAMS_AT(n)                                                               \
  {p0[n], P > 1 ? p1[n] : scalar_t(0), P > 2 ? p2[n] : scalar_t(0), P > 3 ? p3[n] : scalar_t(0), \
   P > 4 ? p4[n] : scalar_t(0)}
#define TORCH_EXT_STATES_AT(x, n) \
  { x##0[n], K > 1 ? x##1[n] : scalar_t(0) }

// Bit j % 64 of word j / 64 of a row is set where src[j] != 0 (NaN included).
// Vectorises (a compare and a shift per lane); iterating over the set bits
// then costs per spike, with no branch per source to mispredict.
template <typename scalar_t>
TORCH_EXT_CPU_CLONES void nonzero_bits(const scalar_t* __restrict__ src, int64_t N,
                                       uint64_t* __restrict__ bits) {
  for (int64_t w = 0; w * 64 < N; ++w) {
    const int64_t count = std::min<int64_t>(64, N - w * 64);
    uint64_t word = 0;
    for (int64_t k = 0; k < count; ++k) word |= uint64_t(src[w * 64 + k] != scalar_t(0)) << k;
    bits[w] = word;
  }
}

// rec = the recurrent input of one batch row: the sum, over the neurons j
// that fired (or whose weights are not all finite), of r[j] * row j of
// w_out = w_rec.T, in order of j. For a spike (r = 1) a plain add, exact like
// the sum it stands for; s0 may hold any real value. One cloned function for
// the whole row, so the adds vectorise without a call per spike.
// With `accumulate`, rec += that sum instead.
template <typename scalar_t>
TORCH_EXT_CPU_CLONES void recurrent_input(scalar_t* __restrict__ rec,
                                          const scalar_t* __restrict__ w_out,
                                          const scalar_t* __restrict__ r,
                                          const uint64_t* __restrict__ always_add,
                                          uint64_t* __restrict__ sources, int64_t N,
                                          bool accumulate = false) {
  const int64_t words = (N + 63) / 64;
  nonzero_bits(r, N, sources);
  for (int64_t w = 0; w < words; ++w) sources[w] |= always_add[w];
  if (!accumulate) {
    for (int64_t n = 0; n < N; ++n) rec[n] = scalar_t(0);
  }
  for (int64_t w = 0; w < words; ++w) {
    for (uint64_t m = sources[w]; m != 0; m &= m - 1) {
      const int64_t j = w * 64 + __builtin_ctzll(m);
      const scalar_t v = r[j];
      const scalar_t* __restrict__ row = w_out + j * N;
      if (v == scalar_t(1)) {
        for (int64_t n = 0; n < N; ++n) rec[n] += row[n];
      } else {
        for (int64_t n = 0; n < N; ++n) rec[n] += v * row[n];
      }
    }
  }
}

// Bit j % 64 of word j / 64 set where row j of the [N, N] matrix w (or of
// nothing, if null) holds a value that is not finite: those sources are
// always added, so that inf/NaN spread as in the dense product.
template <typename scalar_t>
std::vector<uint64_t> non_finite_rows(const scalar_t* w, int64_t N, int64_t words) {
  std::vector<uint64_t> bits(words, 0);
  for (int64_t j = 0; w != nullptr && j < N; ++j) {
    bool finite = true;
    for (int64_t i = 0; i < N; ++i) finite &= static_cast<bool>(std::isfinite(w[j * N + i]));
    bits[j / 64] |= uint64_t(!finite) << (j % 64);
  }
  return bits;
}

// Row b of the spikes at `step` [T, B, N] for step >= 0; before step 0, of
// the spike history [D, B, N] (S[1-D..0], oldest first: step -k is slot D - k).
template <typename scalar_t>
inline const scalar_t* spikes_row(const scalar_t* spikes, const scalar_t* history, int64_t step,
                                  int64_t b, int64_t B, int64_t N, int64_t D) {
  return step >= 0 ? spikes + (step * B + b) * N : history + ((D + step) * B + b) * N;
}

// Per-source delays with LoopInputs::spike_events (binary history, D <= 64):
// the sums over the taps k run by events at the spikes, S[t-k] = 1, with the
// taps a neuron uses as the bits of one word (tap_bits); the dense sums'
// other terms are K_k * 0 = +0 and leave the same bits.

// Word n: bit k-1 set where taps[k-1][n] != 0 ([D, N] taps, D <= 64).
template <typename scalar_t>
std::vector<uint64_t> tap_bits(const scalar_t* taps, int64_t D, int64_t N) {
  std::vector<uint64_t> bits(N, 0);
  for (int64_t k = 1; k <= D; ++k) {
    for (int64_t n = 0; n < N; ++n) bits[n] |= uint64_t(taps[(k - 1) * N + n] != 0) << (k - 1);
  }
  return bits;
}

// step mod D in [0, D) for any step >= -D (a ring's slot).
inline int64_t ring_slot(int64_t step, int64_t D) { return step >= 0 ? step % D : step + D; }

// Taps k in [k_min, k_max] as bits (bit k-1), none if k_min > k_max.
inline uint64_t tap_range(int64_t k_min, int64_t k_max) {
  if (k_min > k_max) return 0;
  const uint64_t below_max = k_max == 64 ? ~uint64_t(0) : (uint64_t(1) << k_max) - 1;
  return below_max & ~((uint64_t(1) << (k_min - 1)) - 1);
}

// The events of the spikes of step `source` (a binary row s of N): f(n,
// tap, slot) for each neuron n that fired and each tap (k - 1) of taps[n] &
// in_range, in increasing k, with slot the ring slot of step source + k
// (first: tap k = 1's slot; no division per event).
template <typename scalar_t, typename F>
void for_each_spike_tap(const scalar_t* s, int64_t N, uint64_t* fired, const uint64_t* taps,
                        uint64_t in_range, int64_t first, int64_t D, const F& f) {
  nonzero_bits(s, N, fired);
  for (int64_t w = 0; w * 64 < N; ++w) {
    for (uint64_t m = fired[w]; m != 0; m &= m - 1) {
      const int64_t n = w * 64 + __builtin_ctzll(m);
      for (uint64_t k = taps[n] & in_range; k != 0; k &= k - 1) {
        const int64_t tap = __builtin_ctzll(k);
        f(n, tap, first + tap < D ? first + tap : first + tap - D);
      }
    }
  }
}

// P[t] = sum_k K_k * S[t-k] of one batch row by events: a ring of the next D
// steps' P; a spike of neuron n at step `source` adds K_k[n] to step
// source + k for each tap k it uses. Step t's P thus gets its terms by
// increasing source step, decreasing k: the order of the dense sum
// (add_delayed_spikes), to the bit.
template <typename scalar_t>
class DelayedSpikeRing {
 public:
  DelayedSpikeRing(const scalar_t* taps, const uint64_t* used, int64_t D, int64_t N)
      : taps_(taps), used_(used), D_(D), N_(N), ring_(D * N), fired_((N + 63) / 64) {}
  // Empties the ring and adds the history's spikes S[-D..-1] ([D, N] rows
  // `stride` apart, oldest first): the terms of steps 0..D-1.
  void start(const scalar_t* history, int64_t stride) {
    std::fill(ring_.begin(), ring_.end(), scalar_t(0));
    for (int64_t h = 0; h < D_; ++h) add(h - D_, history + h * stride);
  }
  // P[t], complete once the spikes of every step before t are added.
  const scalar_t* at(int64_t t) const { return ring_.data() + (t % D_) * N_; }
  // After P[t] is read: S[t] (binary) added to steps t+1..t+D, whose slot
  // t+D is t's.
  void step(int64_t t, const scalar_t* s) {
    std::fill_n(ring_.data() + (t % D_) * N_, N_, scalar_t(0));
    add(t, s);
  }

 private:
  void add(int64_t source, const scalar_t* s) {
    for_each_spike_tap(s, N_, fired_.data(), used_, tap_range(std::max<int64_t>(1, -source), D_),
                       ring_slot(source + 1, D_), D_, [&](int64_t n, int64_t tap, int64_t slot) {
                         ring_[slot * N_ + n] += taps_[tap * N_ + n];
                       });
  }
  const scalar_t* taps_;
  const uint64_t* used_;
  int64_t D_, N_;
  std::vector<scalar_t> ring_;
  std::vector<uint64_t> fired_;
};

// out += tap * s, element-wise over N (one tap of the per-source delays).
template <typename scalar_t>
TORCH_EXT_CPU_CLONES void add_tap(scalar_t* __restrict__ out, const scalar_t* __restrict__ tap,
                                  const scalar_t* __restrict__ s, int64_t N) {
  for (int64_t n = 0; n < N; ++n) out[n] += tap[n] * s[n];
}

// P = sum_k K_k * S[t-k] of one batch row, dense, by decreasing k (the
// order of DelayedSpikeRing's events); skips the taps that are all zero
// (tap_used, null: none).
template <typename scalar_t>
void add_delayed_spikes(scalar_t* P, const scalar_t* taps, const char* tap_used, int64_t t,
                        const scalar_t* S, const scalar_t* history, int64_t b, int64_t B,
                        int64_t N, int64_t D) {
  std::fill_n(P, N, scalar_t(0));
  for (int64_t k = D; k >= 1; --k) {
    if (tap_used != nullptr && !tap_used[k - 1]) continue;
    add_tap(P, taps + (k - 1) * N, spikes_row(S, history, t - k, b, B, N, D), N);
  }
}

// One forward step of one batch row (all pointers at (t, b, 0)): the model's
// states at t from those at t-1 (prev), R[t-1], the input current (in the
// input state's row on entry) and the recurrent input; S[t] unless
// replaying. Cloned per SIMD target; restrict parameters, so it vectorises.
template <typename scalar_t, typename M, Reset R, bool Replay>
TORCH_EXT_CPU_CLONES void forward_row(
    const scalar_t* __restrict__ p0, const scalar_t* __restrict__ p1,
    const scalar_t* __restrict__ p2, const scalar_t* __restrict__ p3,
    const scalar_t* __restrict__ p4, const scalar_t* __restrict__ prev0,
    const scalar_t* __restrict__ prev1, const scalar_t* __restrict__ r_prev,
    const scalar_t* __restrict__ rec, scalar_t* __restrict__ now0, scalar_t* __restrict__ now1,
    scalar_t* __restrict__ s, int64_t N) {
  constexpr int P = num_params_of<M>, K = num_states_of<M>, kIn = M::kTraits.input_state;
  for (int64_t n = 0; n < N; ++n) {
    const scalar_t p[kMaxParams] = TORCH_EXT_PARAMS_AT(n);
    const scalar_t prev[kMaxStates] = TORCH_EXT_STATES_AT(prev, n);
    const scalar_t input = kIn == 0 ? now0[n] : now1[n];
    scalar_t now[kMaxStates];
    scalar_t spike = Replay ? s[n] : scalar_t(0);
    M::template forward<scalar_t, R, Replay>(p, prev, r_prev[n], input, rec[n], now, spike);
    now0[n] = now[0];
    if constexpr (K > 1) now1[n] = now[1];
    if constexpr (!Replay) s[n] = spike;
  }
}

// Batch rows per block of the loops that step a block of rows together (the
// backward; the forward on bfloat16 matrix instructions): fixed by the shape
// alone (never by the thread count), so every block's products and sums, and
// the results, are the same however many threads share the blocks. At least
// 16 rows, so that the per-step product is not dominated by the BLAS call's
// own overhead; at most 64, and about B/8 in between, so that large batches
// give every core several blocks.
int64_t backward_rows_per_block(int64_t B) { return std::clamp<int64_t>((B + 7) / 8, 16, 64); }

// The steps row b takes: all T, or its length (clamped to [0, T]).
inline int64_t row_steps(const int64_t* lengths, int64_t b, int64_t T) {
  return lengths == nullptr ? T : std::clamp<int64_t>(lengths[b], 0, T);
}

// The forward time loop.
template <typename scalar_t, typename M, Reset R, bool Replay>
void forward_rows(const LoopInputs& in, std::vector<at::Tensor>& states, at::Tensor& spikes) {
  constexpr int K = num_states_of<M>;
  const int64_t T = spikes.size(0), B = spikes.size(1), N = spikes.size(2);
  std::array<scalar_t*, kMaxStates> X{};  // the state outputs, [T, B, N] each
  std::array<const scalar_t*, kMaxStates> X0{};  // the initial state, [B, N] each
  for (int k = 0; k < K; ++k) {
    X[k] = states[k].data_ptr<scalar_t>();
    X0[k] = in.initial[k].data_ptr<scalar_t>();
  }
  scalar_t* S = spikes.data_ptr<scalar_t>();
  const NeuronParams<scalar_t> params(in, N);
  const auto& p = params.ptr;
  // All-to-all: row j of w_rec.T holds the weights out of neuron j, what its
  // spike adds. One-to-one: neuron n feeds back w_rec[n] * S_n[t-1] to itself.
  const bool one_to_one = in.one_to_one();
  const at::Tensor w_out =
      in.w_rec.defined() && !one_to_one ? in.w_rec.t().contiguous() : at::Tensor();
  const scalar_t* W = w_out.defined() ? w_out.data_ptr<scalar_t>() : nullptr;
  const scalar_t* W1 = one_to_one ? in.w_rec.data_ptr<scalar_t>() : nullptr;
  // Source neurons with a non-finite outgoing weight (one pass over w_rec), as bits.
  const int64_t words = (N + 63) / 64;
  std::vector<uint64_t> always_add = non_finite_rows(W, N, words);

  // Recurrent delays: the taps of the steps before (loop.h, LoopInputs).
  const bool delayed = in.delayed();
  const bool per_synapse = delayed && in.delay_taps.dim() == 3;
  const int64_t D = delayed ? in.delay_taps.size(0) : 0;
  const scalar_t* taps = delayed ? in.delay_taps.data_ptr<scalar_t>() : nullptr;
  const scalar_t* history = delayed ? in.history.data_ptr<scalar_t>() : nullptr;
  const scalar_t* mask = in.rec_mask.defined() ? in.rec_mask.data_ptr<scalar_t>() : nullptr;
  const int64_t tap_size = per_synapse ? N * N : N;
  std::vector<uint64_t> tap_always_add;  // per synapse: per tap, non_finite_rows of W_k.T
  // Taps that are all zero add nothing, unless the history they read holds a
  // non-finite value (0 * NaN spreads, as in the dense sum).
  const bool history_finite = !delayed || at::isfinite(in.history).all().item<bool>();
  std::vector<char> tap_used(D, history_finite ? 0 : 1);
  for (int64_t k = 0; k < D; ++k) {
    const scalar_t* tap = taps + k * tap_size;
    for (int64_t e = 0; e < tap_size && !tap_used[k]; ++e) tap_used[k] = tap[e] != scalar_t(0);
    if (per_synapse) {
      const std::vector<uint64_t> bits = non_finite_rows(tap, N, words);
      tap_always_add.insert(tap_always_add.end(), bits.begin(), bits.end());
    }
  }

  const bool events = delayed && !per_synapse && in.spike_events;
  const std::vector<uint64_t> used_taps = events ? tap_bits(taps, D, N) : std::vector<uint64_t>();

  const int64_t* lengths = in.lengths.defined() ? in.lengths.data_ptr<int64_t>() : nullptr;
  // Row b past its length (steps taken): spikes and states 0.
  auto clear_past_length = [&](int64_t b, int64_t steps) {
    for (int64_t t = steps; t < T; ++t) {
      for (int k = 0; k < K; ++k) std::fill_n(X[k] + (t * B + b) * N, N, scalar_t(0));
      if constexpr (!Replay) std::fill_n(S + (t * B + b) * N, N, scalar_t(0));
    }
  };

  // The recurrent input on the CPU's bfloat16 matrix instructions
  // (LoopInputs::w_out_packed): a block of rows steps together, and at each
  // step t >= 1 their S[t-1] @ w_rec.T is one product where enough of those
  // spikes are ones, else each row's gather.
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (in.w_out_packed.defined() && W != nullptr && !delayed && mask == nullptr) {
      const int64_t block_rows = backward_rows_per_block(B);
      const int64_t blocks = (B + block_rows - 1) / block_rows;
      at::parallel_for(0, blocks, 1, [&](int64_t block_begin, int64_t block_end) {
        std::vector<float> rec_block(block_rows * N);
        std::vector<c10::BFloat16> rounded(block_rows * N);
        std::vector<uint64_t> sources(words);
        for (int64_t block = block_begin; block < block_end; ++block) {
          const int64_t b0 = block * block_rows, rows = std::min(block_rows, B - b0);
          int64_t longest = 0;
          for (int64_t b = b0; b < b0 + rows; ++b) {
            const int64_t steps = row_steps(lengths, b, T);
            longest = std::max(longest, steps);
            clear_past_length(b, steps);
          }
          for (int64_t t = 0; t < longest; ++t) {
            const float* block_prev = t > 0 ? S + ((t - 1) * B + b0) * N : nullptr;
            bool product = false;
            if (t > 0) {
              int64_t ones = 0;
              for (int64_t e = 0; e < rows * N; ++e) ones += block_prev[e] != 0.0f;
              product = static_cast<double>(ones) >=
                        in.w_out_packed_density * static_cast<double>(rows * N);
            }
            if (product) {
              bfloat16_rows_product(block_prev, rows, N, in.w_out_packed, nullptr, rounded.data(),
                                    rec_block.data());
            }
            for (int64_t r = 0; r < rows; ++r) {
              const int64_t b = b0 + r;
              if (t >= row_steps(lengths, b, T)) continue;
              const float* r_prev = t > 0 ? block_prev + r * N : in.s0.data_ptr<float>() + b * N;
              float* rec = rec_block.data() + r * N;
              if (!product) recurrent_input<float>(rec, W, r_prev, always_add.data(), sources.data(), N);
              std::array<const float*, kMaxStates> prev{};
              std::array<float*, kMaxStates> now{};
              for (int k = 0; k < K; ++k) {
                prev[k] = t > 0 ? X[k] + ((t - 1) * B + b) * N : X0[k] + b * N;
                now[k] = X[k] + (t * B + b) * N;  // the input state holds I[t]
              }
              forward_row<float, M, R, Replay>(p[0], p[1], p[2], p[3], p[4], prev[0], prev[1],
                                               r_prev, rec, now[0], now[1], S + (t * B + b) * N,
                                               N);
            }
          }
        }
        release_matrix_instructions();
      });
      return;
    }
  }

  at::parallel_for(0, B, 1, [&](int64_t b_begin, int64_t b_end) {
    std::vector<scalar_t> rec_buffer(N, scalar_t(0));  // stays 0 without recurrence
    scalar_t* __restrict__ rec = rec_buffer.data();
    std::vector<scalar_t> delayed_buffer(per_synapse ? 0 : N);  // per source: P[t]
    DelayedSpikeRing<scalar_t> ring(taps, used_taps.data(), events ? D : 0, events ? N : 0);
    std::vector<uint64_t> sources(words);
    for (int64_t b = b_begin; b < b_end; ++b) {
      std::array<const scalar_t*, kMaxStates> prev{};
      std::array<scalar_t*, kMaxStates> now{};
      for (int k = 0; k < K; ++k) prev[k] = X0[k] + b * N;
      const scalar_t* r_prev = in.s0.data_ptr<scalar_t>() + b * N;
      const int64_t steps = row_steps(lengths, b, T);
      clear_past_length(b, steps);
      auto spikes_at = [&](int64_t step) { return spikes_row(S, history, step, b, B, N, D); };
      if (events) ring.start(history + b * N, B * N);
      for (int64_t t = 0; t < steps; ++t) {
        if (delayed && per_synapse) {  // sum_k S[t-k] @ W_k.T
          std::fill_n(rec, N, scalar_t(0));
          for (int64_t k = 1; k <= D; ++k) {
            if (!tap_used[k - 1]) continue;
            recurrent_input<scalar_t>(rec, taps + (k - 1) * tap_size, spikes_at(t - k),
                                      tap_always_add.data() + (k - 1) * words, sources.data(),
                                      N, /*accumulate=*/true);
          }
        } else if (delayed) {  // P[t] = sum_k K_k * S[t-k], then P[t] @ w_rec.T
          const scalar_t* delayed_spikes = delayed_buffer.data();
          if (events) {
            delayed_spikes = ring.at(t);
          } else {
            add_delayed_spikes(delayed_buffer.data(), taps, tap_used.data(), t, S, history, b, B,
                               N, D);
          }
          if (W1 != nullptr) {
            for (int64_t n = 0; n < N; ++n) rec[n] = W1[n] * delayed_spikes[n];
          } else {
            recurrent_input<scalar_t>(rec, W, delayed_spikes, always_add.data(), sources.data(),
                                      N);
          }
        } else if (W1 != nullptr) {
          for (int64_t n = 0; n < N; ++n) rec[n] = W1[n] * r_prev[n];
        } else if (W != nullptr) {
          recurrent_input<scalar_t>(rec, W, r_prev, always_add.data(), sources.data(), N);
        }
        if (mask != nullptr) {
          for (int64_t n = 0; n < N; ++n) rec[n] *= mask[b * N + n];
        }
        for (int k = 0; k < K; ++k) now[k] = X[k] + (t * B + b) * N;  // the input state holds I[t]
        scalar_t* s = S + (t * B + b) * N;
        forward_row<scalar_t, M, R, Replay>(p[0], p[1], p[2], p[3], p[4], prev[0], prev[1],
                                            r_prev, rec, now[0], now[1], s, N);
        for (int k = 0; k < K; ++k) prev[k] = now[k];
        r_prev = s;
        if (events) ring.step(t, s);
      }
    }
  });
}

template <typename M>
void forward_loop_cpu(const LoopInputs& in, std::vector<at::Tensor>& states, at::Tensor& spikes,
                      bool replay) {
  AT_DISPATCH_FLOATING_TYPES(spikes.scalar_type(), "recurrent_forward_cpu", [&] {
    dispatch_reset(in.reset, [&](auto reset) {
      constexpr Reset R = decltype(reset)::value;
      (replay ? forward_rows<scalar_t, M, R, true>
              : forward_rows<scalar_t, M, R, false>)(in, states, spikes);
    });
  });
}

// Sums acc [B, N] over b in order, per neuron.
template <typename scalar_t>
at::Tensor sum_over_batch(const at::Tensor& acc) {
  const int64_t B = acc.size(0), N = acc.size(1);
  at::Tensor out = at::empty({N}, acc.options());
  const scalar_t* a = acc.data_ptr<scalar_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  at::parallel_for(0, N, kElementwiseGrain, [&](int64_t n_begin, int64_t n_end) {
    for (int64_t n = n_begin; n < n_end; ++n) {
      scalar_t sum = 0;
      for (int64_t b = 0; b < B; ++b) sum += a[b * N + n];
      o[n] = sum;
    }
  });
  return out;
}

// Whether the CPU loops take has_next as a template argument for model M
// (M::kUnrollHasNext, false where absent): twice the instances, which GCC 12
// needs to vectorise the adaptive step (with has_next a run-time bool it left
// that step scalar, a libm expf call per element) and which made the
// current-based step's reverse pass 1.7x faster; the LIF step vectorises with
// it a run-time bool, as it always has (and which vector exp an element gets,
// and so its last bit, depends on the loop's shape).
template <typename M>
constexpr bool unroll_has_next = [] {
  if constexpr (requires { M::kUnrollHasNext; }) return M::kUnrollHasNext;
  return false;
}();

// One reverse step for one batch row (all row pointers at (t, b, 0)): the
// gradients of the model's states at t, then each parameter's term and gX's
// added to the per-neuron sums. Cloned per SIMD target: this is the loop that
// carries the surrogate's exp. The pointers are __restrict__ parameters, so
// the loops vectorise without a run-time overlap check; they are two loops
// because GCC vectorises each but not the two fused; detach_reset and whether
// the spike gets a gradient are template arguments because GCC does not
// vectorise a select on a run-time bool (has_next: see unroll_has_next).
//   g_input: out, gX[t] of the input state; g_input_next: gX[t+1] (a zero
//   row at the row's last step); carried: the other state's gradient, [t+1]
//   on entry, [t] on exit; g_rec: what reaches S[t] through the recurrence.
template <typename scalar_t, typename M, Reset R, Surrogate SG, bool DetachReset,
          bool SpikeHasGrad, bool HasNext>
TORCH_EXT_CPU_CLONES void backward_row(
    const scalar_t* __restrict__ p0, const scalar_t* __restrict__ p1,
    const scalar_t* __restrict__ p2, const scalar_t* __restrict__ p3,
    const scalar_t* __restrict__ p4, scalar_t slope, bool has_next, int64_t N,
    const scalar_t* __restrict__ x0,
    const scalar_t* __restrict__ x1, const scalar_t* __restrict__ s,
    const scalar_t* __restrict__ prev0, const scalar_t* __restrict__ prev1,
    const scalar_t* __restrict__ r_prev, const scalar_t* __restrict__ gs_out,
    const scalar_t* __restrict__ g_out0, const scalar_t* __restrict__ g_out1,
    const scalar_t* __restrict__ g_input_next, const scalar_t* __restrict__ g_rec,
    scalar_t* __restrict__ g_input, scalar_t* __restrict__ carried,
    scalar_t* __restrict__ grad_s_sg, scalar_t* __restrict__ acc0, scalar_t* __restrict__ acc1,
    scalar_t* __restrict__ acc2, scalar_t* __restrict__ acc3, scalar_t* __restrict__ acc4,
    scalar_t* __restrict__ acc_bias) {
  constexpr int P = num_params_of<M>, K = num_states_of<M>, kIn = M::kTraits.input_state;
  const bool next = unroll_has_next<M> ? HasNext : has_next;
  for (int64_t n = 0; n < N; ++n) {
    const scalar_t p[kMaxParams] = TORCH_EXT_PARAMS_AT(n);
    const scalar_t now[kMaxStates] = TORCH_EXT_STATES_AT(x, n);
    const scalar_t g_out[kMaxStates] = TORCH_EXT_STATES_AT(g_out, n);
    scalar_t g_next[kMaxStates], g_now[kMaxStates];
    g_next[kIn] = g_input_next[n];
    if constexpr (K > 1) g_next[1 - kIn] = carried[n];
    grad_s_sg[n] = M::template backward<scalar_t, R, SG>(p, slope, DetachReset, SpikeHasGrad,
                                                         next, now, s[n], gs_out[n], g_out,
                                                         g_next, g_rec[n], g_now);
    g_input[n] = g_now[kIn];
    if constexpr (K > 1) carried[n] = g_now[1 - kIn];
  }
  for (int64_t n = 0; n < N; ++n) {
    const scalar_t p[kMaxParams] = TORCH_EXT_PARAMS_AT(n);
    const scalar_t now[kMaxStates] = TORCH_EXT_STATES_AT(x, n);
    const scalar_t prev[kMaxStates] = TORCH_EXT_STATES_AT(prev, n);
    scalar_t g_now[kMaxStates];
    g_now[kIn] = g_input[n];
    if constexpr (K > 1) g_now[1 - kIn] = carried[n];
    scalar_t terms[kMaxParams];
    M::template param_terms<scalar_t, R>(p, now, s[n], prev, r_prev[n], g_now, grad_s_sg[n],
                                         terms);
    acc0[n] += terms[0];
    if constexpr (P > 1) acc1[n] += terms[1];
    if constexpr (P > 2) acc2[n] += terms[2];
    if constexpr (P > 3) acc3[n] += terms[3];
    if constexpr (P > 4) acc4[n] += terms[4];
    acc_bias[n] += g_now[kIn];
  }
}

// Row pointers (at (t, b, 0)) of one reverse step (backward_row's arguments).
template <typename scalar_t>
struct BackwardRow {
  const scalar_t* const* params;  // [N] each
  const scalar_t* const* now;     // the states at t
  const scalar_t* const* prev;    // the states at t-1 (the initial state at t = 0)
  const scalar_t* s;              // S[t]
  const scalar_t* r_prev;         // S[t-1] (s0 at t = 0)
  const scalar_t* grad_s_out;     // zero rows where no gradient came in
  const scalar_t* const* grad_state_out;
  const scalar_t* grad_input_next;  // gX[t+1] (a zero row at the row's last step)
  const scalar_t* rec_grad;         // gX[t+1] @ w_rec_adjoint (a zero row without one)
  scalar_t* grad_input;             // out: gX[t]
  scalar_t* carried;                // the other state's gradient, in place (or null)
  scalar_t* scratch;                // N scalars
  scalar_t* const* acc;             // per parameter: the sums over t of its terms
  scalar_t* acc_bias;               // the sum over t of gX
  scalar_t slope;
  bool has_next;  // t is not the row's last step
  int64_t N;
};

template <typename scalar_t, typename M, Reset R, Surrogate SG, bool DetachReset,
          bool SpikeHasGrad, bool HasNext>
void run_backward_row(const BackwardRow<scalar_t>& row) {
  const scalar_t* const* p = row.params;
  scalar_t* const* acc = row.acc;
  backward_row<scalar_t, M, R, SG, DetachReset, SpikeHasGrad, HasNext>(
      p[0], p[1], p[2], p[3], p[4], row.slope, row.has_next, row.N, row.now[0], row.now[1], row.s,
      row.prev[0],
      row.prev[1], row.r_prev, row.grad_s_out, row.grad_state_out[0], row.grad_state_out[1],
      row.grad_input_next, row.rec_grad, row.grad_input, row.carried, row.scratch, acc[0], acc[1],
      acc[2], acc[3], acc[4], row.acc_bias);
}

// The instance of backward_row for a row-step's run-time flags.
template <typename scalar_t, typename M, Reset R, Surrogate SG>
auto backward_row_for(bool detach_reset, bool spike_has_grad, bool has_next) {
  return dispatch_bool(detach_reset, [&](auto detach) {
    return dispatch_bool(spike_has_grad, [&](auto spike_grad) {
      constexpr bool D = decltype(detach)::value, S = decltype(spike_grad)::value;
      if constexpr (unroll_has_next<M>) {
        return has_next ? &run_backward_row<scalar_t, M, R, SG, D, S, true>
                        : &run_backward_row<scalar_t, M, R, SG, D, S, false>;
      } else {
        return &run_backward_row<scalar_t, M, R, SG, D, S, false>;  // has_next at run time
      }
    });
  });
}

// sum over rows r of g[r].T @ x[r] ([N, N]: [i][j] = sum_r g[r][i] x[r][j])
// without the products of x's zeros: the gradient of an all-to-all w_rec,
// x[t] = S[t-1] (S[-1] = s0) and g = gU, where spikes are binary and sparse
// (10-20 % in typical training), and of the delayed recurrence, x = P, whose
// non-zeros are the spikes' taps. This costs density * rows*N^2 instead of the
// dense product's rows*N^2. Built transposed: for each row r and each source
// j with x[r][j] != 0, out[j] += x[r][j] * g[r], a contiguous axpy of length N.
// Measured on the 2-core CI machine at a 13 % rate, per core: 11 ms against
// 31 ms for the dense product at T*B=6400, N=512; 0.9 against 3.3 ms at
// T*B=9600, N=128. (Column tiles of out kept in L1 were slower: the cost is
// per update, and long rows amortise it.) Each thread owns a range of sources
// j and sums their rows in order, so the result does not depend on the thread
// count. Only for a finite g: zeros are skipped, which would drop the NaN of
// 0 * inf. Undefined where more than max_density of x is non-zero.
// out[j] += src[j] * g for the sources j set in words [w_begin, w_end) of bits
// (row j of out at out + j * stride).
template <typename scalar_t>
TORCH_EXT_CPU_CLONES void add_row_to_sources(scalar_t* __restrict__ out,
                                             const scalar_t* __restrict__ g,
                                             const scalar_t* __restrict__ src,
                                             const uint64_t* __restrict__ bits, int64_t w_begin,
                                             int64_t w_end, int64_t N, int64_t stride) {
  for (int64_t w = w_begin; w < w_end; ++w) {
    for (uint64_t m = bits[w]; m != 0; m &= m - 1) {
      const int64_t j = w * 64 + __builtin_ctzll(m);
      const scalar_t v = src[j];
      scalar_t* __restrict__ o = out + j * stride;
      for (int64_t i = 0; i < N; ++i) o[i] += v * g[i];
    }
  }
}

// source_row(r): x[r]; grad_row(r, scratch): g[r], or written into scratch
// (N) and returned (a masked row, say).
template <typename scalar_t, typename SourceRow, typename GradRow>
at::Tensor product_from_nonzeros(int64_t rows, int64_t N, const SourceRow& source_row,
                                 const GradRow& grad_row, const at::TensorOptions& opts,
                                 double max_density = 1.0) {
  const int64_t words = (N + 63) / 64;
  std::vector<uint64_t> bits(rows * words);  // bit j of row r: x[r][j] != 0
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) nonzero_bits(source_row(r), N, bits.data() + r * words);
  });
  if (max_density < 1.0) {
    int64_t ones = 0;
    for (const uint64_t word : bits) ones += __builtin_popcountll(word);
    if (static_cast<double>(ones) > max_density * static_cast<double>(rows * N)) return {};
  }
  // [j][i], each row padded by 64 bytes: with rows a multiple of 4 KiB apart
  // (N = 512 floats: 2 KiB) out's rows and g's would sit at the same 4 KiB
  // offsets, and the CPU's store-to-load check (on the low 12 address bits)
  // would stall each load of g behind the store to out before it.
  const int64_t stride = N + 64 / static_cast<int64_t>(sizeof(scalar_t));
  at::Tensor transposed = at::zeros({N, stride}, opts);
  scalar_t* out = transposed.data_ptr<scalar_t>();
  at::parallel_for(0, words, 1, [&](int64_t w_begin, int64_t w_end) {
    std::vector<scalar_t> scratch(N);
    for (int64_t r = 0; r < rows; ++r) {
      const uint64_t* row_bits = bits.data() + r * words;
      if (std::all_of(row_bits + w_begin, row_bits + w_end, [](uint64_t w) { return w == 0; })) {
        continue;
      }
      add_row_to_sources(out, grad_row(r, scratch.data()), source_row(r), row_bits, w_begin,
                         w_end, N, stride);
    }
  });
  return transposed.narrow(1, 0, N).t().contiguous();
}

// An incoming gradient's rows (t, b): contiguous along N, any strides along T
// and B (0 where it is a broadcast, loop.h).
template <typename scalar_t>
struct IncomingGrad {
  const scalar_t* data = nullptr;  // null: not given (zero)
  int64_t step_stride = 0, row_stride = 0;
  IncomingGrad() = default;
  explicit IncomingGrad(const at::Tensor& g) {
    if (!g.defined()) return;
    TORCH_INTERNAL_ASSERT(g.size(2) <= 1 || g.stride(2) == 1, "incoming gradient not unit-stride");
    data = g.data_ptr<scalar_t>();
    step_stride = g.stride(0);
    row_stride = g.stride(1);
  }
  bool given() const { return data != nullptr; }
  const scalar_t* row(int64_t t, int64_t b) const { return data + t * step_stride + b * row_stride; }
};

// The reverse step's delayed recurrence for a block of `rows` batch rows
// (loop.h, BackwardLoopInputs::delay_adjoint), with a ring of D slots of
// `rows` x N per block: delayed_slot stores what step `step` contributes
// (g = its gX rows): m * gX[step], and per source its product with
// w_rec_adjoint, gP[step]; delayed_rec_grad then sums the recurrent term of
// step t over the taps k = 1..D with t+k < T: per source K_k * gP[t+k], per
// synapse ring[t+k] (or gX[t+k] itself without a mask, gx_at(t+k)) @
// W_k_adjoint. Called under SingleThreadedBlas; every sum in a fixed order.
template <typename scalar_t>
struct DelayRing {
  int64_t rows, N, D;
  bool per_synapse;
  const scalar_t *mask, *W, *W1, *adjoint;  // mask: the block's rows
  scalar_t *ring, *masked;
  scalar_t* slot(int64_t step) const { return ring + (step % D) * rows * N; }
};

template <typename scalar_t>
void delayed_slot(const DelayRing<scalar_t>& r, int64_t step, const scalar_t* g) {
  const int64_t size = r.rows * r.N;
  const scalar_t* source = g;
  if (r.mask != nullptr) {
    scalar_t* m_out = r.per_synapse ? r.slot(step) : r.masked;
    for (int64_t e = 0; e < size; ++e) m_out[e] = g[e] * r.mask[e];
    source = m_out;
  }
  if (r.per_synapse) return;
  scalar_t* product = r.slot(step);
  if (r.W != nullptr) {
    gemm_on_this_thread<scalar_t>(r.rows, r.N, r.N, source, r.N, r.W, r.N, scalar_t(0), product,
                                  r.N);
  } else {
    for (int64_t e = 0; e < size; ++e) product[e] = source[e] * r.W1[e % r.N];
  }
}

template <typename scalar_t, typename GradAt>
void delayed_rec_grad(const DelayRing<scalar_t>& r, int64_t t, int64_t T, scalar_t* rec,
                      const GradAt& gx_at) {
  const int64_t N = r.N;
  std::fill_n(rec, r.rows * N, scalar_t(0));
  for (int64_t k = 1; k <= r.D && t + k < T; ++k) {
    if (r.per_synapse) {
      const scalar_t* g = r.mask != nullptr ? r.slot(t + k) : gx_at(t + k);
      gemm_on_this_thread<scalar_t>(r.rows, N, N, g, N, r.adjoint + (k - 1) * N * N, N,
                                    scalar_t(1), rec, N);
    } else {
      const scalar_t* tap = r.adjoint + (k - 1) * N;
      const scalar_t* product = r.slot(t + k);
      for (int64_t row = 0; row < r.rows; ++row) add_tap(rec + row * N, tap, product + row * N, N);
    }
  }
}

// Whether every one of the n values is at most `limit` in magnitude
// (vectorises; NaN fails the compare).
template <typename scalar_t>
TORCH_EXT_CPU_CLONES bool all_within(const scalar_t* __restrict__ v, int64_t n, scalar_t limit) {
  bool within = true;
  for (int64_t e = 0; e < n; ++e) within &= std::abs(v[e]) <= limit;
  return within;
}

// E[k] += gP[source + k] * S[source] over the ring's row `row`, by events:
// for each neuron n that fired at `source` (a binary row s of the spikes or
// the history), the ring's gP[source + k][n] for the taps k of sum_taps[n]
// with 0 <= source + k < T. Called for source = T-1 down to -D, it adds to
// each accumulator in the order the dense sum does (descending source), and
// what it leaves out are the dense sum's gP * 0 = +0 terms (gP finite) and
// the taps whose kernel derivatives are all 0. acc: E's row (k = 1, b) with
// tap stride k_stride.
template <typename scalar_t>
void delay_sums_at_spikes(scalar_t* acc, int64_t k_stride, const scalar_t* s,
                          const uint64_t* sum_taps, const DelayRing<scalar_t>& ring, int64_t row,
                          int64_t source, int64_t T, uint64_t* fired) {
  const int64_t N = ring.N, D = ring.D, slot_size = ring.rows * N;
  const uint64_t taps_in_range =
      tap_range(std::max<int64_t>(1, -source), std::min(D, T - 1 - source));
  if (taps_in_range == 0) return;
  const scalar_t* g = ring.ring + row * N;
  for_each_spike_tap(s, N, fired, sum_taps, taps_in_range, ring_slot(source + 1, D), D,
                     [&](int64_t n, int64_t tap, int64_t slot) {
                       acc[tap * k_stride + n] += g[slot * slot_size + n];
                     });
}

// out += a * b, element-wise over N.
template <typename scalar_t>
TORCH_EXT_CPU_CLONES void add_product(scalar_t* __restrict__ out, const scalar_t* __restrict__ a,
                                      const scalar_t* __restrict__ b, int64_t N) {
  for (int64_t n = 0; n < N; ++n) out[n] += a[n] * b[n];
}

template <typename scalar_t, typename M, Reset R, Surrogate SG>
BackwardLoopOutputs backward_steps(const BackwardLoopInputs& in) {
  constexpr int K = num_states_of<M>, P = num_params_of<M>, kIn = M::kTraits.input_state;
  const int64_t T = in.spikes.size(0), B = in.spikes.size(1), N = in.spikes.size(2);
  const int64_t BN = B * N;
  const auto opts = in.spikes.options();
  const LoopInputs& st = in.state;
  auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };

  BackwardLoopOutputs out;
  out.grad_input = empty_buffer({T, B, N}, opts);
  for (int k = 0; k < K; ++k) out.grad_initial.push_back(at::empty({B, N}, opts));
  out.grad_s0_reset = at::empty({B, N}, opts);
  // Per-(b, n) sums over t, always kept: unconditional adds vectorise, and
  // each costs less than a branch would.
  std::vector<at::Tensor> acc_params;
  std::array<scalar_t*, kMaxParams> acc{};
  for (int k = 0; k < P; ++k) {
    acc_params.push_back(at::zeros({B, N}, opts));
    acc[k] = ptr(acc_params.back());
  }
  const at::Tensor acc_bias = at::zeros({B, N}, opts);
  // Stands in for an absent incoming gradient, so the inner loop has no branch.
  const at::Tensor zeros = at::zeros({N}, opts);
  const scalar_t* zero_row = ptr(zeros);

  const NeuronParams<scalar_t> params(st, N);
  const scalar_t slope = static_cast<scalar_t>(in.slope);
  const bool detach_reset = in.detach_reset;
  std::array<const scalar_t*, kMaxStates> X{}, X0{};
  std::array<IncomingGrad<scalar_t>, kMaxStates> gX_out{};
  unsigned grad_states_given = 0;  // bit k: an incoming gradient of state k
  for (int k = 0; k < K; ++k) {
    X[k] = ptr(in.states[k]);
    X0[k] = ptr(st.initial[k]);
    gX_out[k] = IncomingGrad<scalar_t>(in.grad_states[k]);
    if (gX_out[k].given()) grad_states_given |= 1u << k;
  }
  const scalar_t* S = ptr(in.spikes);
  const scalar_t* s0 = ptr(st.s0);
  // The recurrent term of the reverse step: gX[t+1] @ w_rec_adjoint
  // (all-to-all, [N, N]) or gX[t+1] * w_rec_adjoint (one-to-one, [N]).
  const bool one_to_one = st.one_to_one();
  const scalar_t* W = one_to_one ? nullptr : ptr(in.w_rec_adjoint);
  const scalar_t* W1 = one_to_one ? ptr(in.w_rec_adjoint) : nullptr;
  // Recurrent delays (loop.h): the next D steps' masked gX (per synapse, only
  // with a mask) or their products (per source) in a ring per block.
  const bool delayed = st.delayed();
  const bool per_synapse = delayed && in.delay_adjoint.dim() == 3;
  const int64_t D = delayed ? in.delay_adjoint.size(0) : 0;
  const scalar_t* delay_adj = delayed ? ptr(in.delay_adjoint) : nullptr;
  const scalar_t* mask = ptr(st.rec_mask);
  const bool ring_needed = delayed && (!per_synapse || mask != nullptr);
  // Per source, from the ring's gP: E[k] = sum_{t,b} gP[t] * S[t-k] (the
  // delays' and sigma's sums, per (b, n) here, over b at the end) and the
  // history's gradient, K_k * gP[t] added to the history's step t-k < 0.
  const bool delay_sums = delayed && !per_synapse && in.need_delay_sums;
  const bool history_grad = delayed && !per_synapse && in.need_history_grad;
  const scalar_t* history = delayed ? ptr(st.history) : nullptr;
  // With spike_events (loop.h): P[t] and E by events at the spikes
  // (DelayedSpikeRing, delay_sums_at_spikes). E's events stand for the dense
  // sums where no gP is larger than max / (T * B), so that no sum of them
  // overflows; where one is (or is not finite), the loop returns no E and the
  // driver sums it (a skipped 0 * gP, or 0 times an E that overflowed at a
  // tap the events skip, would drop a NaN).
  const bool events = delayed && !per_synapse && st.spike_events;
  const bool event_sums = delay_sums && events;
  const std::vector<uint64_t> used_taps =
      events ? tap_bits(delay_adj, D, N) : std::vector<uint64_t>();
  const std::vector<uint64_t> sum_taps =
      event_sums ? tap_bits(ptr(in.delay_sum_taps), D, N) : std::vector<uint64_t>();
  std::atomic<bool> gP_small{true};
  const scalar_t gP_limit =
      std::numeric_limits<scalar_t>::max() / static_cast<scalar_t>(std::max<int64_t>(T * B, 1));
  const at::Tensor acc_delay = delay_sums ? at::zeros({D, B, N}, opts) : at::Tensor();
  if (history_grad) out.history_grad = at::zeros({D, B, N}, opts);
  if (delayed && !per_synapse && in.need_delayed_spikes) {
    out.delayed_spikes = empty_buffer({T, B, N}, opts);
  }
  scalar_t* delayed_spikes = ptr(out.delayed_spikes);
  scalar_t* acc_E = ptr(acc_delay);
  scalar_t* g_history = ptr(out.history_grad);
  const at::Tensor acc_w_rec = in.need_w_rec_sum ? at::zeros({B, N}, opts) : at::Tensor();
  scalar_t* acc_w = ptr(acc_w_rec);
  const IncomingGrad<scalar_t> gS_out(in.grad_spikes);
  scalar_t* gU = ptr(out.grad_input);
  scalar_t* acc_b = ptr(acc_bias);
  std::array<scalar_t*, kMaxStates> g_initial_all{};
  for (int k = 0; k < K; ++k) g_initial_all[k] = ptr(out.grad_initial[k]);
  scalar_t* g_s0_all = ptr(out.grad_s0_reset);
  const int64_t* lengths = st.lengths.defined() ? st.lengths.data_ptr<int64_t>() : nullptr;

  // Batch rows never interact: each block of rows runs the whole reverse time
  // loop on one thread, with its rows' recurrent product by single-threaded
  // BLAS, then the element-wise pass while the rows are in cache. No barrier
  // and no dispatcher call per step.
  const int64_t block_rows = backward_rows_per_block(B);
  const int64_t blocks = (B + block_rows - 1) / block_rows;
  // The per-step product on bfloat16 matrix instructions (float32 only;
  // w_rec_packed is set for all-to-all w_rec without delays only).
  const bool packed_product = std::is_same_v<scalar_t, float> && in.w_rec_packed.defined();
  const float* packed_gain =
      packed_product ? in.w_rec_packed_gain.defined() ? in.w_rec_packed_gain.const_data_ptr<float>()
                                                      : nullptr
                     : nullptr;
  // gX rounded: the per-step product rounds rows 1..T-1 into it as it reads
  // them (without a gain), row 0 is rounded after the loop.
  if (packed_product && packed_gain == nullptr && in.need_grad_input_rounded) {
    out.grad_input_rounded = empty_buffer({T, B, N}, opts.dtype(at::kBFloat16));
  }
  c10::BFloat16* gX_rounded =
      out.grad_input_rounded.defined() ? out.grad_input_rounded.data_ptr<c10::BFloat16>() : nullptr;
  at::parallel_for(0, blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    const SingleThreadedBlas single_threaded;
    std::vector<scalar_t> rec_buffer(W != nullptr || W1 != nullptr ? block_rows * N : 0);
    std::vector<c10::BFloat16> rounded_rows(packed_product && gX_rounded == nullptr ? block_rows * N
                                                                                  : 0);
    std::vector<scalar_t> ring(ring_needed ? D * block_rows * N : 0);
    std::vector<scalar_t> masked(delayed && mask != nullptr ? block_rows * N : 0);
    std::vector<scalar_t> scratch(N);
    const bool ring_events = events && delayed_spikes != nullptr;
    DelayedSpikeRing<scalar_t> spike_ring(delay_adj, used_taps.data(), ring_events ? D : 0,
                                          ring_events ? N : 0);
    std::vector<uint64_t> fired(event_sums ? (N + 63) / 64 : 0);
    // The gradient of the state other than the input state, carried from
    // step t+1 to step t, per row of the block.
    std::vector<scalar_t> carried((K - 1) * block_rows * N);
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t b0 = block * block_rows;
      const int64_t rows = std::min(block_rows, B - b0);
      std::fill(carried.begin(), carried.end(), scalar_t(0));
      const DelayRing<scalar_t> delay_ring{rows, N, D, per_synapse, mask ? mask + b0 * N : nullptr,
                                           W, W1, delay_adj, ring.data(), masked.data()};
      auto gx_at = [&](int64_t step) { return gU + step * BN + b0 * N; };
      // Step `step`'s slot, and per source its share of E and of the history's gradient.
      auto take_slot = [&](int64_t step) {
        delayed_slot(delay_ring, step, gx_at(step));
        if (event_sums && !all_within(delay_ring.slot(step), rows * N, gP_limit)) gP_small = false;
        if (!(delay_sums && !event_sums) && !history_grad) return;
        const scalar_t* gP = delay_ring.slot(step);
        for (int64_t k = 1; k <= D; ++k) {
          const int64_t source = step - k;  // S[step-k]: spikes or the history
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t b = b0 + r;
            if (delay_sums && !event_sums) {
              add_product(acc_E + ((k - 1) * B + b) * N, gP + r * N,
                          spikes_row(S, history, source, b, B, N, D), N);
            }
            if (history_grad && source < 0) {
              add_product(g_history + ((D + source) * B + b) * N, delay_adj + (k - 1) * N,
                          gP + r * N, N);
            }
          }
        }
      };
      // E's events at the spikes of step `source` (a step of S or of the history).
      auto sums_at_spikes = [&](int64_t source) {
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t b = b0 + r;
          delay_sums_at_spikes(acc_E + b * N, B * N, spikes_row(S, history, source, b, B, N, D),
                               sum_taps.data(), delay_ring, r, source, T, fired.data());
        }
      };
      if (delayed_spikes != nullptr) {  // P[t] = sum_k K_k * S[t-k], as the forward sums it
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t b = b0 + r;
          if (ring_events) spike_ring.start(history + b * N, BN);
          for (int64_t t = 0; t < T; ++t) {
            scalar_t* p_row = delayed_spikes + (t * B + b) * N;
            if (ring_events) {
              std::copy_n(spike_ring.at(t), N, p_row);
              spike_ring.step(t, S + (t * B + b) * N);
            } else {
              add_delayed_spikes(p_row, delay_adj, nullptr, t, S, history, b, B, N, D);
            }
          }
        }
      }
      for (int64_t t = T - 1; t >= 0; --t) {
        const bool has_next = t < T - 1;
        const bool has_rec_grad = (W != nullptr || W1 != nullptr) && has_next;
        if (has_rec_grad && delayed) {
          take_slot(t + 1);
          delayed_rec_grad(delay_ring, t, T, rec_buffer.data(), gx_at);
          if (event_sums) sums_at_spikes(t);
        } else if (has_rec_grad && W != nullptr) {  // rec[b] = gX[t+1][b] @ w_rec for the block's rows
          if (packed_product) {
            if constexpr (std::is_same_v<scalar_t, float>) {
              bfloat16_rows_product(gU + (t + 1) * BN + b0 * N, rows, N, in.w_rec_packed,
                                    packed_gain,
                                    gX_rounded != nullptr ? gX_rounded + (t + 1) * BN + b0 * N
                                                          : rounded_rows.data(),
                                    rec_buffer.data());
            }
          } else {
            gemm_on_this_thread<scalar_t>(rows, N, N, gU + (t + 1) * BN + b0 * N, N, W, N,
                                          scalar_t(0), rec_buffer.data(), N);
          }
        } else if (has_rec_grad) {  // rec[b] = gX[t+1][b] * w_rec
          const scalar_t* g_next = gU + (t + 1) * BN + b0 * N;
          for (int64_t r = 0; r < rows; ++r) {
            for (int64_t n = 0; n < N; ++n) rec_buffer[r * N + n] = g_next[r * N + n] * W1[n];
          }
        }
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t b = b0 + r;
          const int64_t row = t * BN + b * N;  // offset of (t, b, 0)
          const int64_t steps = row_steps(lengths, b, T);
          scalar_t* g_carried = K > 1 ? carried.data() + r * N : nullptr;
          scalar_t* gu = gU + row;
          if (t >= steps) {  // a step the row does not take: nothing flows through it
            std::fill_n(gu, N, scalar_t(0));
            if (g_carried != nullptr) std::fill_n(g_carried, N, scalar_t(0));
            if (t == 0) {
              for (int k = 0; k < K; ++k) std::fill_n(g_initial_all[k] + b * N, N, scalar_t(0));
              std::fill_n(g_s0_all + b * N, N, scalar_t(0));
            }
            continue;
          }
          const bool row_has_next = t < steps - 1;
          const bool spike_has_grad =
              M::spike_gets_grad(gS_out.given(), grad_states_given, row_has_next,
                                 W != nullptr || W1 != nullptr, R, detach_reset);
          std::array<const scalar_t*, kMaxStates> now{}, prev{}, g_out{};
          for (int k = 0; k < K; ++k) {
            now[k] = X[k] + row;
            prev[k] = t > 0 ? X[k] + row - BN : X0[k] + b * N;
            g_out[k] = gX_out[k].given() ? gX_out[k].row(t, b) : zero_row;
          }
          std::array<scalar_t*, kMaxParams> acc_row{};
          for (int k = 0; k < P; ++k) acc_row[k] = acc[k] + b * N;
          const scalar_t* s = S + row;
          const scalar_t* r_prev = t > 0 ? s - BN : s0 + b * N;
          const BackwardRow<scalar_t> view{
              params.ptr.data(), now.data(), prev.data(), s, r_prev,
              gS_out.given() ? gS_out.row(t, b) : zero_row, g_out.data(),
              row_has_next ? gu + BN : zero_row,
              has_rec_grad && row_has_next ? rec_buffer.data() + r * N : zero_row, gu,
              g_carried, scratch.data(), acc_row.data(), acc_b + b * N, slope, row_has_next, N};
          backward_row_for<scalar_t, M, R, SG>(detach_reset, spike_has_grad, row_has_next)(view);
          if (acc_w != nullptr) {  // one-to-one w_rec: gX[t] * S[t-1]
            for (int64_t n = 0; n < N; ++n) acc_w[b * N + n] += gu[n] * r_prev[n];
          }
          if (t == 0) {  // what reaches the initial state
            scalar_t* g_s0 = g_s0_all + b * N;
            for (int64_t n = 0; n < N; ++n) {
              scalar_t p[kMaxParams], initial[kMaxStates], g_first[kMaxStates], g_init[kMaxStates];
              for (int k = 0; k < P; ++k) p[k] = params.ptr[k][n];
              for (int k = 0; k < K; ++k) initial[k] = X0[k][b * N + n];
              g_first[kIn] = gu[n];
              if constexpr (K > 1) g_first[1 - kIn] = g_carried[n];
              g_s0[n] = M::template initial_grads<scalar_t, R>(detach_reset, p, initial,
                                                              r_prev[n], g_first, g_init);
              for (int k = 0; k < K; ++k) g_initial_all[k][b * N + n] = g_init[k];
            }
          }
        }
      }
      if (delayed && (delay_sums || history_grad)) take_slot(0);  // gP[0]'s shares
      if (event_sums) {
        for (int64_t source = -1; source >= -D; --source) sums_at_spikes(source);
      }
    }
    if (packed_product) release_matrix_instructions();
  });
  if (gX_rounded != nullptr) out.grad_input_rounded[0].copy_(out.grad_input[0]);
  if (delay_sums && gP_small) {
    out.delay_sums = at::empty({D, N}, opts);
    for (int64_t k = 0; k < D; ++k) out.delay_sums[k] = sum_over_batch<scalar_t>(acc_delay[k]);
  }
  out.param_sums.resize(P);
  for (int k = 0; k < P; ++k) {
    if (in.need_params[k]) out.param_sums[k] = sum_over_batch<scalar_t>(acc_params[k]);
  }
  if (in.need_bias) out.bias_sum = sum_over_batch<scalar_t>(acc_bias);
  if (in.need_w_rec_sum) out.w_rec_sum = sum_over_batch<scalar_t>(acc_w_rec);
  // acc_bias sums gX over t: all finite only if every gX entry is.
  if (in.need_w_rec_grad && at::isfinite(acc_bias).all().item<bool>()) {
    out.w_rec_grad = product_from_nonzeros<scalar_t>(
        T * B, N, [&](int64_t r) { return r < B ? s0 + r * N : S + (r - B) * N; },
        [&](int64_t r, scalar_t*) { return gU + r * N; }, opts);
  }
  // Per source with spike_events: sum_t (m * gX[t]).T @ P[t] from P's
  // non-zeros (each spike's taps), where every m * gX is finite and P is
  // sparse enough to pay (loop.h).
  if (events && delayed_spikes != nullptr && W != nullptr && in.need_delayed_w_rec_grad &&
      in.max_delayed_spike_density >= 0 && at::isfinite(acc_bias).all().item<bool>()) {
    auto masked_row = [&](int64_t r, scalar_t* scratch) -> const scalar_t* {
      if (mask == nullptr) return gU + r * N;
      const scalar_t* m = mask + (r % B) * N;
      for (int64_t n = 0; n < N; ++n) scratch[n] = gU[r * N + n] * m[n];
      return scratch;
    };
    std::atomic<bool> finite{true};
    if (mask != nullptr) {
      at::parallel_for(0, T * B, 64, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> scratch(N);
        for (int64_t r = begin; r < end && finite; ++r) {
          if (!all_within(masked_row(r, scratch.data()), N, std::numeric_limits<scalar_t>::max())) {
            finite = false;
          }
        }
      });
    }
    if (finite) {
      out.delayed_w_rec_grad = product_from_nonzeros<scalar_t>(
          T * B, N, [&](int64_t r) { return delayed_spikes + r * N; }, masked_row, opts,
          in.max_delayed_spike_density);
    }
  }
  return out;
}

template <typename M>
BackwardLoopOutputs backward_loop_cpu(const BackwardLoopInputs& in) {
  return AT_DISPATCH_FLOATING_TYPES(in.spikes.scalar_type(), "recurrent_backward_cpu", [&] {
    return dispatch_options(in.state.reset, in.surrogate, [&](auto reset, auto surrogate) {
      return backward_steps<scalar_t, M, decltype(reset)::value, decltype(surrogate)::value>(in);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_ext, CPU, m) {
  for_each_neuron([&]<typename M>() {
    register_backend<M, forward_loop_cpu<M>, backward_loop_cpu<M>>(m);
  });
}

}  // namespace torch_ext
